"""`tokenagent enroll --config scep+http://...` (RFC 8894) against micromdm scepserver and a small SCEP CA that pends.

scepserver (tests/peers/scep.py `ScepServer`) runs in a private network namespace, so `tokenagent`
runs there too (nsenter). The pending path, RA certificates and failInfo answers come from
`PendingScepCa`, which reads our pkiMessages with the openssl CLI. Keys live on this module's own
SoftHSM token ta-scep; every test has its own pending store. What was issued is checked with
pkcs11-tool (the token, the key's CKA_DECRYPT), openssl (certificates, our pkiMessage's CMS
signature) and pkcs11-spy (C_Decrypt on the token), not with tokenagent.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import USER_PIN, SoftHSM, make_softhsm
from tests.peers.faulty import closed_port
from tests.peers.scep import PendingScepCa, ScepServer

CHALLENGE = "scep-Challenge-7f3a"
TOKEN = "ta-scep"
SPY = Path("/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so")

pytestmark = pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v scepserver && unshare -n true"], capture_output=True).returncode != 0,
    reason="needs scepserver and unshare -n (root)",
)


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHSM:
    return make_softhsm(tmp_path_factory.mktemp("scep-softhsm"), [TOKEN])


@pytest.fixture(scope="module")
def scepserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScepServer]:
    server = ScepServer(tmp_path_factory.mktemp("scepserver"), CHALLENGE)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pending_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PendingScepCa]:
    peer = PendingScepCa(tmp_path_factory.mktemp("scep-peer"), CHALLENGE)
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture()
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


# -- helpers ---------------------------------------------------------------------------------------


def rsa_inf(directory: Path, name: str, algorithm: str = "KeyAlgorithm = RSA\nKeyLength = 2048") -> Path:
    inf = directory / f"{name}.inf"
    inf.write_text(
        "[NewRequest]\n"
        f'Subject = "CN={name},O=tokenagent SCEP tests"\n'
        f"{algorithm}\n"
        f"KeyContainer = {name}\n"
        "[EnhancedKeyUsageExtension]\n"
        "OID = 1.3.6.1.5.5.7.3.2\n"
    )
    return inf


def tokenagent(
    hsm: SoftHSM, state: Path, *args: str, netns: list[str] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    variables = hsm.env(TA_PIN=USER_PIN, TOKENAGENT_STATE_DIR=str(state), SCEP_CHALLENGE=CHALLENGE, **env)
    command = [*(netns or []), sys.executable, "-m", "tokenagent", *args]
    return subprocess.run(command, capture_output=True, text=True, env=variables, timeout=120, check=False)


def enroll(
    hsm: SoftHSM,
    state: Path,
    inf: Path,
    url: str,
    *extra: str,
    challenge_source: str = "env:SCEP_CHALLENGE",
    netns: list[str] | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """enroll with the profile [ca.lab] of a cas.toml next to the INF: ``url`` and its challenge source."""
    cas = inf.with_suffix(".toml")
    cas.write_text(f'[ca.lab]\nurl = "scep+{url}"\nchallenge_source = "{challenge_source}"\n')
    user = ["--token", TOKEN, "--pin-source", "env:TA_PIN"]
    return tokenagent(
        hsm, state, "enroll", str(inf), "--cas", str(cas), "--config", "lab", *user, *extra, netns=netns, **env
    )


def pkcs11_tool(hsm: SoftHSM, *args: str) -> str:
    command = ["pkcs11-tool", "--module", hsm.module, "--token-label", TOKEN, "--login", "--pin", USER_PIN, *args]
    done = subprocess.run(command, capture_output=True, text=True, env=hsm.env(), check=True)
    return done.stdout


def key_block(hsm: SoftHSM, label: str, kind: str = "privkey") -> str | None:
    """pkcs11-tool's listing of the object labelled ``label`` (None when there is none)."""
    listing = pkcs11_tool(hsm, "-O", "--type", kind)
    heading = {"privkey": "Private Key Object", "cert": "Certificate Object"}[kind]
    for block in listing.split(heading)[1:]:
        if re.search(rf"label:\s+{re.escape(label)}\s*$", block, re.M):
            return block
    return None


def certificate_of(hsm: SoftHSM, label: str, tmp_path: Path) -> Path:
    """The certificate next to the key ``label`` (same CKA_ID), read with pkcs11-tool, as PEM."""
    block = key_block(hsm, label)
    assert block is not None, f"no key {label}"
    key_id = re.search(r"ID:\s+([0-9a-f]+)", block)
    assert key_id
    der = subprocess.run(
        ["pkcs11-tool", "--module", hsm.module, "--token-label", TOKEN, "--read-object", "--type", "cert",
         "--id", key_id.group(1)],
        capture_output=True, env=hsm.env(), check=True,
    ).stdout  # fmt: skip
    assert der, f"no certificate with the CKA_ID of {label}"
    pem = tmp_path / f"{label}.pem"
    pem.write_bytes(subprocess.run(["openssl", "x509", "-inform", "DER"], input=der, capture_output=True).stdout)
    return pem


def openssl_verify(ca: Path, certificate: Path, untrusted: Path | None = None) -> None:
    extra = ["-untrusted", str(untrusted)] if untrusted else []
    done = subprocess.run(["openssl", "verify", "-CAfile", str(ca), *extra, str(certificate)], capture_output=True)
    assert done.returncode == 0, done.stderr


def pending(hsm: SoftHSM, state: Path) -> list[dict[str, Any]]:
    listing = tokenagent(hsm, state, "pending", "--json")
    assert listing.returncode == 0, listing.stderr
    return list(json.loads(listing.stdout)["pending"])


def one_error_line(run: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith("tokenagent: error:")]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert CHALLENGE not in run.stderr + run.stdout
    return lines[0]


def assert_kept_pending(hsm: SoftHSM, state: Path, run: subprocess.CompletedProcess[str], name: str) -> None:
    line = one_error_line(run)
    assert "stay as pending request" in line and "enroll --resume" in line, line
    records = pending(hsm, state)
    assert [r["subject"] for r in records] == [f"CN={name}, O=tokenagent SCEP tests"], records
    assert key_block(hsm, name, "cert") is None  # nothing installed


# -- micromdm scepserver ----------------------------------------------------------------------------


def test_scepserver_issues_and_the_certificate_is_decrypted_on_the_token(
    hsm: SoftHSM, scepserver: ScepServer, state: Path, tmp_path: Path
) -> None:
    spy_log = tmp_path / "spy.log"
    started = time.monotonic()
    run = enroll(
        hsm, state, rsa_inf(tmp_path, "scep-ada"), scepserver.url, "--module", str(SPY),
        netns=scepserver.enter(), PKCS11SPY=hsm.module, PKCS11SPY_OUTPUT=str(spy_log),
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    assert "certificate: installed on the token next to its key" in run.stdout
    print(f"scepserver enrollment (key generation included): {seconds:.2f} s")

    # the key was generated with CKA_DECRYPT (pkcs11-tool), and the CertRep was decrypted there (pkcs11-spy)
    block = key_block(hsm, "scep-ada")
    assert block is not None and re.search(r"Usage:.*decrypt", block), block
    spy = spy_log.read_text(errors="replace")
    assert "C_DecryptInit" in spy and re.search(r"C_Decrypt\b", spy), "pkcs11-spy saw no C_Decrypt"
    assert "CKM_RSA_PKCS" in spy[spy.index("C_DecryptInit") :]

    # the certificate on the token is scepserver's, for the request's subject
    certificate = certificate_of(hsm, "scep-ada", tmp_path)
    openssl_verify(scepserver.ca_pem, certificate)
    text = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(certificate)], capture_output=True)
    assert b"CN = scep-ada" in text.stdout
    assert pending(hsm, state) == []


def test_wrong_challenge_is_bad_request_and_the_request_stays(
    hsm: SoftHSM, scepserver: ScepServer, state: Path, tmp_path: Path
) -> None:
    run = enroll(
        hsm, state, rsa_inf(tmp_path, "scep-wrong"), scepserver.url, challenge_source="env:WRONG",
        netns=scepserver.enter(), WRONG="not-the-challenge",
    )  # fmt: skip
    assert run.returncode == 12, run.stderr
    assert "badRequest" in one_error_line(run)
    assert_kept_pending(hsm, state, run, "scep-wrong")


def test_ec_key_is_refused_before_generation(hsm: SoftHSM, state: Path, tmp_path: Path) -> None:
    inf = rsa_inf(tmp_path, "scep-ec", "KeyAlgorithm = ECDSA_P256")
    run = enroll(hsm, state, inf, f"http://127.0.0.1:{closed_port()}/scep")
    assert run.returncode == 3, run.stderr
    line = one_error_line(run)
    assert "SCEP needs RSA" in line and "nothing was generated" in line, line
    assert key_block(hsm, "scep-ec") is None
    assert pending(hsm, state) == []


# -- the small SCEP CA: RA certificate, pending, failInfo ---------------------------------------------


def test_pending_then_resume_installs_the_certificate(
    hsm: SoftHSM, pending_ca: PendingScepCa, state: Path, tmp_path: Path
) -> None:
    url = pending_ca.url()
    trust = ["--ca-trust", str(pending_ca.trust_pem)]
    first = enroll(hsm, state, rsa_inf(tmp_path, "scep-pend"), url, *trust)
    assert first.returncode == 14, first.stderr
    assert "holds the request pending" in one_error_line(first)
    records = pending(hsm, state)
    assert len(records) == 1

    # what we sent: a CMS signature openssl verifies, and a PKCS#10 with the challenge inside
    sent = pending_ca.received[-1]
    assert sent.message_type == "19"
    message = tmp_path / "pkcsreq.der"
    message.write_bytes(sent.message)
    verified = subprocess.run(
        ["openssl", "cms", "-verify", "-inform", "DER", "-in", str(message), "-noverify", "-binary", "-out",
         str(tmp_path / "envelope.der")],
        capture_output=True,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    parsed = subprocess.run(
        ["openssl", "req", "-inform", "DER", "-noout", "-text"], input=sent.content, capture_output=True
    )
    assert b"challengePassword" in parsed.stdout and b"CN = scep-pend" in parsed.stdout

    # still pending when asked again (CertPoll), then issued once the CA approves
    again = tokenagent(hsm, state, "enroll", "--resume", "--now", "--pin-source", "env:TA_PIN")
    assert again.returncode == 14, again.stderr
    assert pending_ca.received[-1].message_type == "20"
    assert pending_ca.received[-1].transaction_id == sent.transaction_id  # stable across polls
    pending_ca.approve(sent.transaction_id)
    done = tokenagent(hsm, state, "enroll", "--resume", str(records[0]["id"]), "--pin-source", "env:TA_PIN")
    assert done.returncode == 0, done.stderr + done.stdout
    certificate = certificate_of(hsm, "scep-pend", tmp_path)
    openssl_verify(pending_ca.trust_pem, certificate, untrusted=pending_ca.ca.sub_cert)
    assert pending(hsm, state) == []


@pytest.mark.parametrize(
    ("fail_info", "name"),
    [("0", "badAlg"), ("1", "badMessageCheck"), ("2", "badRequest"), ("3", "badTime"), ("4", "badCertId")],
)
def test_failure_fail_info_is_a_rejection_and_the_request_stays(
    hsm: SoftHSM, pending_ca: PendingScepCa, state: Path, tmp_path: Path, fail_info: str, name: str
) -> None:
    url = pending_ca.url(f"fail-{fail_info}")
    label = f"scep-fail{fail_info}"
    run = enroll(hsm, state, rsa_inf(tmp_path, label), url)
    assert run.returncode == 12, run.stderr
    assert name in one_error_line(run)
    assert_kept_pending(hsm, state, run, label)


@pytest.mark.parametrize(
    ("mode", "code", "words"),
    [
        ("forge", 11, "the signature does not verify"),
        ("stranger", 11, "not signed by the CA or RA certificate"),
        ("nonce", 11, "recipientNonce is not our senderNonce"),
        ("garbage", 17, "is not a pkiMessage"),
        ("500", 16, "HTTP 500"),
        ("refused", 16, "refused"),
    ],
)
def test_bad_answers_give_one_line_and_the_request_stays(
    hsm: SoftHSM, pending_ca: PendingScepCa, state: Path, tmp_path: Path, mode: str, code: int, words: str
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/scep" if mode == "refused" else pending_ca.url(mode)
    label = f"scep-{mode}"
    run = enroll(hsm, state, rsa_inf(tmp_path, label), url)
    assert run.returncode == code, run.stderr
    assert words in one_error_line(run)
    assert_kept_pending(hsm, state, run, label)


def test_submit_without_the_key_says_to_use_enroll(
    hsm: SoftHSM, pending_ca: PendingScepCa, state: Path, tmp_path: Path
) -> None:
    request = tmp_path / "scep-submit.req"
    made = tokenagent(
        hsm, state, "new", str(rsa_inf(tmp_path, "scep-submit")), str(request), "--token", TOKEN,
        "--pin-source", "env:TA_PIN",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    before = len(pending_ca.received)
    run = tokenagent(hsm, state, "submit", str(request), "--config", f"scep+{pending_ca.url()}")
    assert run.returncode == 18, run.stderr
    assert "use tokenagent enroll" in one_error_line(run)
    assert len(pending_ca.received) == before  # nothing was sent


def test_a_server_without_post_gets_the_message_by_get_with_3des(
    hsm: SoftHSM, pending_ca: PendingScepCa, state: Path, tmp_path: Path
) -> None:
    before = pending_ca.gets
    run = enroll(hsm, state, rsa_inf(tmp_path, "scep-get"), pending_ca.url("get"))
    assert run.returncode == 14, run.stderr  # read (openssl cms -decrypt with 3DES) and held
    assert pending_ca.gets == before + 1
    envelope = subprocess.run(
        ["openssl", "cms", "-verify", "-inform", "DER", "-noverify", "-binary"],
        input=pending_ca.received[-1].message,
        capture_output=True,
        check=True,
    ).stdout
    printed = subprocess.run(
        ["openssl", "cms", "-cmsout", "-inform", "DER", "-print"], input=envelope, capture_output=True, check=True
    ).stdout
    assert b"des-ede3-cbc" in printed


# -- RenewalReq (messageType 17): signed with the certificate being renewed and its key -----------------


def thumbprint(certificate: Path) -> str:
    """The SHA-1 thumbprint of a PEM certificate, by openssl (what INF RenewalCert names)."""
    done = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha1", "-in", str(certificate)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip().split("=", 1)[1].replace(":", "")


def renewal_inf(directory: Path, name: str, renewed: str) -> Path:
    """A NEW RSA key (not UseExistingKeySet) whose request renews the certificate ``renewed`` (thumbprint)."""
    inf = rsa_inf(directory, name)
    inf.write_text(
        inf.read_text().replace("[EnhancedKeyUsageExtension]", f"RenewalCert = {renewed}\n[EnhancedKeyUsageExtension]")
    )
    return inf


def signer_of(message: bytes, tmp_path: Path) -> str:
    """The signer certificate of a pkiMessage as openssl cms -verify reports it (its SHA-1 thumbprint)."""
    path, signer = tmp_path / "sent.der", tmp_path / "signer.pem"
    path.write_bytes(message)
    done = subprocess.run(
        ["openssl", "cms", "-verify", "-inform", "DER", "-in", str(path), "-noverify", "-binary",
         "-signer", str(signer), "-out", str(tmp_path / "envelope.der")],
        capture_output=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return thumbprint(signer)


@pytest.fixture(scope="module")
def renewed(hsm: SoftHSM, scepserver: ScepServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A certificate from scepserver on the token, to be renewed: (its PEM, its SHA-1 thumbprint)."""
    work = tmp_path_factory.mktemp("scep-renewed")
    run = enroll(hsm, work / "state", rsa_inf(work, "scep-old"), scepserver.url, netns=scepserver.enter())
    assert run.returncode == 0, run.stderr
    certificate = certificate_of(hsm, "scep-old", work)
    return certificate, thumbprint(certificate)


def test_renewal_req_is_signed_with_the_old_certificate_and_a_new_key_is_certified(
    hsm: SoftHSM, scepserver: ScepServer, renewed: tuple[Path, str], state: Path, tmp_path: Path
) -> None:
    old, old_thumbprint = renewed
    started = time.monotonic()
    run = enroll(
        hsm, state, renewal_inf(tmp_path, "scep-new", old_thumbprint), scepserver.url, netns=scepserver.enter()
    )
    seconds = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    print(f"scepserver RenewalReq enrollment (key generation included): {seconds:.2f} s\n{run.stdout}")
    certificate = certificate_of(hsm, "scep-new", tmp_path)
    openssl_verify(scepserver.ca_pem, certificate)
    keys = [
        subprocess.run(["openssl", "x509", "-noout", "-pubkey", "-in", str(p)], capture_output=True, check=True).stdout
        for p in (old, certificate)
    ]
    assert keys[0] != keys[1]  # a new key, certified; the old certificate is still on the token
    assert key_block(hsm, "scep-old", "privkey") is not None
    assert pending(hsm, state) == []


def test_renewal_req_as_sent_and_resumed_with_cert_poll(
    hsm: SoftHSM, pending_ca: PendingScepCa, renewed: tuple[Path, str], state: Path, tmp_path: Path
) -> None:
    _old, old_thumbprint = renewed
    trust = ["--ca-trust", str(pending_ca.trust_pem)]
    first = enroll(hsm, state, renewal_inf(tmp_path, "scep-renew-pend", old_thumbprint), pending_ca.url(), *trust)
    assert first.returncode == 14, first.stderr
    sent = pending_ca.received[-1]
    assert sent.message_type == "17"  # RenewalReq
    assert signer_of(sent.message, tmp_path) == old_thumbprint  # openssl: signed by the old certificate
    parsed = subprocess.run(
        ["openssl", "req", "-inform", "DER", "-noout", "-subject"], input=sent.content, capture_output=True
    )
    assert b"CN = scep-renew-pend" in parsed.stdout

    # enroll --resume has no old key lent: CertPoll is signed by the new key (self-signed certificate)
    pending_ca.approve(sent.transaction_id)
    done = tokenagent(hsm, state, "enroll", "--resume", "--now", "--pin-source", "env:TA_PIN")
    assert done.returncode == 0, done.stderr + done.stdout
    poll = pending_ca.received[-1]
    assert poll.message_type == "20" and poll.transaction_id == sent.transaction_id
    assert signer_of(poll.message, tmp_path) != old_thumbprint
    openssl_verify(
        pending_ca.trust_pem, certificate_of(hsm, "scep-renew-pend", tmp_path), untrusted=pending_ca.ca.sub_cert
    )


def test_renewal_of_a_certificate_not_on_the_token_fails_and_the_request_stays(
    hsm: SoftHSM, pending_ca: PendingScepCa, state: Path, tmp_path: Path
) -> None:
    before = len(pending_ca.received)
    inf = renewal_inf(tmp_path, "scep-renew-missing", "00" * 20)
    run = enroll(hsm, state, inf, pending_ca.url())
    assert run.returncode == 9, run.stderr  # ObjectNotFoundError: looked up after generation, before sending
    assert "no certificate with SHA-1 thumbprint" in one_error_line(run)
    assert_kept_pending(hsm, state, run, "scep-renew-missing")
    assert len(pending_ca.received) == before  # nothing was sent
