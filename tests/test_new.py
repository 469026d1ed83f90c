"""`tokenagent new` on real SoftHSM tokens, checked with tools we did not write.

Keys are expensive (RSA-3072 takes seconds on SoftHSM), so each key type is generated once per
session by `made()` and several tests read the same result. Tests that are about rollback
compare the token's object list (pkcs11-tool -O) before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from tests.conftest import USER_PIN, SoftHSM, pkcs11_tool
from tokenagent.enroll.new import NewOptions, NewResult, new_request
from tokenagent.errors import PolicyError
from tokenagent.token.pins import literal_pin_source
from tokenagent.token.target import TokenTarget

TOKEN = "ta-new"

FULL_INF = """[Version]
Signature = "$Windows NT$"

[NewRequest]
Subject = "CN=Ada Lovelace,OU=Engineering,O=Example Corp,C=GB"
{key}
KeyContainer = {container}
FriendlyName = "Ada's key"
Smime = TRUE

[Extensions]
2.5.29.17 = "{{text}}"
_continue_ = "UPN=ada@example.com&"
_continue_ = "EMail=ada@example.com&"
_continue_ = "DNS=ada.example.com&"
_continue_ = "IPAddress=192.0.2.7&"
_continue_ = "URL=https://example.com/ada"
2.5.29.19 = "{{text}}ca=0"
1.2.3.4.5 = "{{utf8}}custom value"
Critical = 2.5.29.19

[EnhancedKeyUsageExtension]
OID = 1.3.6.1.5.5.7.3.2
OID = 1.3.6.1.4.1.311.20.2.2

[RequestAttributes]
CertificateTemplate = SmartcardLogon
Department = R&D
"""

KEY_LINES = {
    "rsa2048": "KeyLength = 2048",
    "rsa3072": "KeyLength = 3072\nHashAlgorithm = sha384",
    "rsapss": "KeyLength = 2048\nAlternateSignatureAlgorithm = TRUE",
    "p256": "KeyAlgorithm = ECDSA_P256",
    "p384": "KeyAlgorithm = ECDSA_P384\nHashAlgorithm = sha384",
    "p521": "KeyAlgorithm = ECDSA_P521\nHashAlgorithm = sha512",
}


@dataclass
class Made:
    result: NewResult
    request: Path
    csr: x509.CertificateSigningRequest


_MADE: dict[str, Made] = {}


def options(policy: Path, output: Path | None, **extra: object) -> NewOptions:
    values: dict[str, object] = {"target": TokenTarget(TOKEN, (), literal_pin_source(USER_PIN))}
    values.update(extra)
    return NewOptions(policy=policy, output=output, **values)  # type: ignore[arg-type]


def made(kind: str, softhsm: SoftHSM, tmp_path_factory: pytest.TempPathFactory) -> Made:
    if kind not in _MADE:
        work = tmp_path_factory.mktemp(f"new-{kind}")
        policy = work / "policy.inf"
        policy.write_text(FULL_INF.format(key=KEY_LINES[kind], container=f"ada-{kind}"))
        request = work / "ada.req"
        result = new_request(options(policy, request))
        csr = x509.load_pem_x509_csr(request.read_bytes())
        _MADE[kind] = Made(result, request, csr)
    return _MADE[kind]


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def private_key_blocks(softhsm: SoftHSM, token: str = TOKEN) -> dict[str, str]:
    """pkcs11-tool -O private key blocks by CKA_ID (hex)."""
    listing = pkcs11_tool(softhsm, "-O", "--type", "privkey", token=token)
    blocks = {}
    for block in re.split(r"\n(?=Private Key Object)", listing):
        found = re.search(r"ID:\s+([0-9a-f]+)", block)
        if found:
            blocks[found.group(1)] = block
    return blocks


def object_list(softhsm: SoftHSM, token: str = TOKEN) -> str:
    """pkcs11-tool -O, its object blocks sorted so that comparisons do not depend on listing order."""
    listing = pkcs11_tool(softhsm, "-O", token=token)
    return "\n".join(sorted(re.split(r"\n(?=\S)", listing)))


ALL_KINDS = list(KEY_LINES)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_request_verifies_with_openssl(kind: str, softhsm: SoftHSM, tmp_path_factory: pytest.TempPathFactory) -> None:
    m = made(kind, softhsm, tmp_path_factory)
    assert m.request.read_bytes().startswith(b"-----BEGIN NEW CERTIFICATE REQUEST-----\r\n")  # certreq's CRLF
    result = openssl("req", "-verify", "-noout", "-in", str(m.request))
    assert result.returncode == 0, result.stderr
    assert "verify OK" in (result.stdout + result.stderr)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_openssl_shows_everything_the_inf_asked_for(
    kind: str, softhsm: SoftHSM, tmp_path_factory: pytest.TempPathFactory
) -> None:
    m = made(kind, softhsm, tmp_path_factory)
    text = openssl("req", "-text", "-noout", "-in", str(m.request)).stdout
    assert re.search(r"Subject: CN\s?=\s?Ada Lovelace, OU\s?=\s?Engineering, O\s?=\s?Example Corp, C\s?=\s?GB", text)
    assert re.search(r"X509v3 Key Usage: critical\n\s+Digital Signature, Non Repudiation", text)
    assert re.search(r"X509v3 Basic Constraints: critical\n\s+CA:FALSE", text)
    assert re.search(r"Extended Key Usage: \n\s+TLS Web Client Authentication, Microsoft Smartcard Login", text)
    for name in ("email:ada@example.com", "DNS:ada.example.com", "IP Address:192.0.2.7", "URI:https://example.com/ada"):
        assert name in text
    assert re.search(r"othername:\s?(UPN|msUPN|1\.3\.6\.1\.4\.1\.311\.20\.2\.3)::?\s?ada@example.com", text, re.I)
    assert "1.2.3.4.5" in text and "custom value" in text
    assert "X509v3 Subject Key Identifier" in text
    assert "1.2.840.113549.1.9.15" in text or "S/MIME Capabilities" in text
    # the enrollment name-value pairs and the CSP attribute, as OpenSSL prints unknown attributes
    assert "1.3.6.1.4.1.311.13.2.1" in text and "1.3.6.1.4.1.311.13.2.2" in text
    names = {e.oid.dotted_string for e in m.csr.extensions}
    assert {"2.5.29.15", "2.5.29.17", "2.5.29.19", "2.5.29.37", "1.2.3.4.5", "2.5.29.14"} <= names
    if kind == "rsapss":
        assert re.search(r"Signature Algorithm: rsassaPss", text)
        assert re.search(r"Hash Algorithm: sha256", text) and re.search(r"Salt Length: 0x20", text)
    if kind.startswith("p"):
        assert "ecdsa-with-SHA" in text


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_private_key_attributes_on_the_token(
    kind: str, softhsm: SoftHSM, tmp_path_factory: pytest.TempPathFactory
) -> None:
    m = made(kind, softhsm, tmp_path_factory)
    key_id = m.result.key_id.hex()
    block = private_key_blocks(softhsm)[key_id]
    assert f"label:      ada-{kind}" in block
    usage = re.search(r"Usage:\s+(.*)", block).group(1)
    assert usage.strip() == "sign"  # AT_SIGNATURE: exactly CKA_SIGN, nothing else
    access = re.search(r"Access:\s+(.*)", block).group(1)
    assert {a.strip() for a in access.split(",")} == {"sensitive", "always sensitive", "never extractable", "local"}
    # and read back through the token by our own code
    from tokenagent.token.library import find_token
    from tokenagent.token.objects import list_objects
    from tokenagent.token.session import open_session

    handle = find_token(TOKEN)
    with open_session(handle, login=True, pin_source=literal_pin_source(USER_PIN)) as ts:
        info = next(
            o for o in list_objects(ts.session, handle) if o.object_class == "private-key" and o.id == m.result.key_id
        )
    assert info.flags["sensitive"] is True and info.flags["extractable"] is False
    assert info.flags["never_extractable"] is True and info.flags["local"] is True
    assert info.usage == ["sign"]


@pytest.mark.parametrize("kind", ["rsa2048", "p384"])
def test_m26_key_id_is_sha1_of_the_public_key(
    kind: str, softhsm: SoftHSM, tmp_path_factory: pytest.TempPathFactory
) -> None:
    m = made(kind, softhsm, tmp_path_factory)
    # computed independently: cryptography's RFC 5280 method-1 SKI of the request's public key
    ski = x509.SubjectKeyIdentifier.from_public_key(m.csr.public_key()).digest
    assert m.result.key_id == ski
    assert m.csr.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER).value.digest == ski
    listing = pkcs11_tool(softhsm, "-O", token=TOKEN)
    assert listing.count(f"ID:         {ski.hex()}") == 2  # both halves


def test_pending_record_and_pending_command(softhsm: SoftHSM, tmp_path_factory: pytest.TempPathFactory, cli) -> None:
    m = made("p256", softhsm, tmp_path_factory)
    record = m.result.pending
    assert record is not None and record.key_id == m.result.key_id.hex()
    assert record.request_der == m.csr.public_bytes(serialization.Encoding.DER)
    listed = cli("pending", "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    ids = [r["id"] for r in data["pending"]]
    assert record.id in ids
    entry = next(r for r in data["pending"] if r["id"] == record.id)
    assert entry["token_label"] == TOKEN and entry["friendly_name"] == "Ada's key"
    assert (
        entry["public_key_sha256"]
        == hashlib.sha256(
            m.csr.public_key().public_bytes(
                serialization.Encoding.DER,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
        ).hexdigest()
    )
    # the store is a real SQLite file readable without our code
    with sqlite3.connect(softhsm.state_dir / "pending.sqlite3") as db:
        row = db.execute("SELECT key_label FROM pending_requests WHERE id = ?", (record.id,)).fetchone()
    assert row == ("ada-p256",)


# -- the CLI ------------------------------------------------------------------------------------------


def write_inf(path: Path, body: str) -> Path:
    path.write_text(f'[NewRequest]\nSubject = "CN=cli test"\n{body}\n')
    return path


def test_cli_new_der_and_json(tmp_path: Path, cli, softhsm: SoftHSM) -> None:
    policy = write_inf(tmp_path / "p.inf", "KeyAlgorithm = ECDSA_P256\nKeyContainer = cli-der")
    out = tmp_path / "r.der"
    run = cli(
        "new", str(policy), str(out), "--binary", "--token", TOKEN, "--pin-source", "env:PIN", "--json", PIN=USER_PIN
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["format_version"] == 1 and data["output"] == str(out) and data["key_generated"] is True
    assert data["private_key_uri"].startswith("pkcs11:") and f"token={TOKEN}" in data["private_key_uri"]
    assert USER_PIN not in run.stdout + run.stderr
    verify = openssl("req", "-verify", "-noout", "-inform", "DER", "-in", str(out))
    assert verify.returncode == 0, verify.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == data["sha256"]
    # OpenSSL finds the new key through the printed URI's id (independent check of CKA_ID + label)
    block = private_key_blocks(softhsm)[data["key_id"]]
    assert "cli-der" in block


def test_cli_new_to_stdout(tmp_path: Path, cli) -> None:
    policy = write_inf(tmp_path / "p.inf", "KeyAlgorithm = ECDSA_P256")
    run = cli("new", str(policy), "--token", TOKEN, "--pin-source", "env:PIN", PIN=USER_PIN)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("-----BEGIN NEW CERTIFICATE REQUEST-----")
    (tmp_path / "o.req").write_text(run.stdout)
    assert openssl("req", "-verify", "-noout", "-in", str(tmp_path / "o.req")).returncode == 0
    assert "pending request ID" in run.stderr


def test_dry_run_touches_nothing(tmp_path: Path, cli, softhsm: SoftHSM) -> None:
    policy = write_inf(tmp_path / "p.inf", "KeyLength = 3072\nKeyContainer = dry\nAlternateSignatureAlgorithm = TRUE")
    before = object_list(softhsm)
    run = cli(
        "new",
        str(policy),
        str(tmp_path / "x.req"),
        "--dry-run",
        "--token",
        TOKEN,
        "--pin-source",
        "env:PIN",
        PIN=USER_PIN,
    )
    assert run.returncode == 0, run.stderr
    for expected in (
        "CKM_RSA_PKCS_KEY_PAIR_GEN",
        "CKA_SENSITIVE = TRUE",
        "CKA_EXTRACTABLE = FALSE",
        "CKA_MODULUS_BITS = 3072",
        "CKM_SHA256_RSA_PKCS_PSS",
        "capacity: OK",
        "2.5.29.15",
    ):
        assert expected in run.stdout
    data = json.loads(
        cli("new", str(policy), "--dry-run", "--json", "--token", TOKEN, "--pin-source", "env:PIN", PIN=USER_PIN).stdout
    )
    assert data["dry_run"] is True and data["capacity"]["ok"] is True
    assert data["plan"]["private_template"]["CKA_EXTRACTABLE"] is False
    assert object_list(softhsm) == before
    assert not (tmp_path / "x.req").exists()


def test_key_size_outside_mechanism_range_refused(tmp_path: Path, cli, softhsm: SoftHSM) -> None:
    policy = write_inf(tmp_path / "p.inf", "KeyLength = 32768")
    before = object_list(softhsm)
    run = cli("new", str(policy), str(tmp_path / "x.req"), "--token", TOKEN, "--pin-source", "env:PIN", PIN=USER_PIN)
    assert run.returncode == 8
    assert "32768-bit keys are outside CKM_RSA_PKCS_KEY_PAIR_GEN's range 512..16384" in run.stderr
    assert run.stderr.count("\n") == 1
    dry = cli("new", str(policy), "--dry-run", "--token", TOKEN, "--pin-source", "env:PIN", PIN=USER_PIN)
    assert dry.returncode == 8 and "[NO] key size" in dry.stdout
    assert object_list(softhsm) == before


def test_key_containers_limit(tmp_path: Path, cli, softhsm: SoftHSM) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text('[providers."Tiny Card KSP"]\nprofile = "piv"\nkey_containers = 2\n')
    policy = write_inf(tmp_path / "p.inf", 'ProviderName = "Tiny Card KSP"\nKeyAlgorithm = ECDSA_P256')
    args = ("--token", "ta-cap", "--pin-source", "env:PIN", "--providers", str(providers))
    for n in (1, 2):
        run = cli("new", str(policy), str(tmp_path / f"{n}.req"), *args, PIN=USER_PIN)
        assert run.returncode == 0, run.stderr
    before = object_list(softhsm, "ta-cap")
    run = cli("new", str(policy), str(tmp_path / "3.req"), *args, PIN=USER_PIN)
    assert run.returncode == 8
    assert "all 2 key containers of profile 'piv+Tiny Card KSP' are used" in run.stderr
    assert "nothing was created" in run.stderr
    assert object_list(softhsm, "ta-cap") == before
    assert not (tmp_path / "3.req").exists()


def test_failure_after_generation_rolls_back(tmp_path: Path, cli, softhsm: SoftHSM) -> None:
    """The pending store cannot be written (its directory is a file): detected only after the key
    pair was generated and the request signed, so everything must be undone."""
    policy = write_inf(tmp_path / "p.inf", "KeyAlgorithm = ECDSA_P256\nKeyContainer = doomed")
    blocker = tmp_path / "state-is-a-file"
    blocker.write_text("")
    before = object_list(softhsm)
    out = tmp_path / "x.req"
    run = cli(
        "new",
        str(policy),
        str(out),
        "--token",
        TOKEN,
        "--pin-source",
        "env:PIN",
        "--state-dir",
        str(blocker),
        PIN=USER_PIN,
    )
    assert run.returncode == 13, run.stderr
    assert str(blocker) in run.stderr
    assert object_list(softhsm) == before
    assert "doomed" not in object_list(softhsm)
    assert not out.exists() and not list(tmp_path.glob(".x.req.*"))


_FAILING_SIGNER = """
import sys
from tokenagent.enroll import signer
from tokenagent.errors import TokenOperationError

def refuse(self, data):
    raise TokenOperationError("token 'ta-new': signing failed (made to fail by the test)")

signer.TokenSigner.sign = refuse
from tokenagent.entry import main
main()
"""


def test_failed_signature_after_the_final_cka_id_rolls_back(tmp_path: Path, softhsm: SoftHSM) -> None:
    """The token refuses the signature after the key pair got its final CKA_ID (tpm2-pkcs11 does,
    with P-521 keys): the rollback finds the pair by that ID, not by the temporary one it was born
    with, and the token is as before. The failing signature is Python's (a real token that refuses
    to sign on request does not exist); generation and rollback run on SoftHSM."""
    policy = write_inf(tmp_path / "p.inf", "KeyAlgorithm = ECDSA_P256\nKeyContainer = unsigned")
    before = object_list(softhsm)
    run = subprocess.run(
        [sys.executable, "-c", _FAILING_SIGNER, "new", str(policy), str(tmp_path / "x.req"), "--token", TOKEN,
         "--pin-source", "env:PIN", "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, env=softhsm.env(PIN=USER_PIN), check=False,
    )  # fmt: skip
    assert run.returncode == 10 and "made to fail by the test" in run.stderr, run.stderr
    assert "unsigned" not in object_list(softhsm)
    assert object_list(softhsm) == before
    pending = subprocess.run(
        [sys.executable, "-m", "tokenagent", "pending", "--json", "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, env=softhsm.env(), check=False,
    )  # fmt: skip
    assert pending.returncode == 0 and "unsigned" not in pending.stdout, pending.stdout


@pytest.mark.slow
def test_ctrl_c_after_generation_rolls_back(tmp_path: Path, softhsm: SoftHSM) -> None:
    """SIGINT while `new` waits for the state store (held locked here) right after generating the key.

    The store is written before C_GenerateKeyPair (the intent) and right after it (the final
    CKA_ID): the test lets the first write through, then locks the store while the token generates
    an RSA-4096 key (a second or more on SoftHSM), so the run is caught just after generation."""
    policy = write_inf(tmp_path / "p.inf", "KeyLength = 4096\nKeyContainer = interrupted")
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "pending.sqlite3", isolation_level=None)
    before = object_list(softhsm)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokenagent",
            "new",
            str(policy),
            str(tmp_path / "x.req"),
            "--token",
            TOKEN,
            "--pin-source",
            "env:PIN",
            "--state-dir",
            str(state),
        ],
        env=softhsm.env(PIN=USER_PIN),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120  # RSA-4096 generation on SoftHSM takes 1 to 30 s or more
        while not _open_intents(db):
            assert time.monotonic() < deadline and process.poll() is None, "no intent was recorded"
            time.sleep(0.005)
        db.execute("BEGIN EXCLUSIVE")  # the run is generating; its next write will wait
        while "interrupted" not in object_list(softhsm):
            assert time.monotonic() < deadline, "the key pair never appeared"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        time.sleep(0.2)
        db.rollback()  # the run notices the signal once its wait for the store ends
        _, stderr = process.communicate(timeout=30)
    finally:
        db.rollback() if db.in_transaction else None
        db.close()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted: the new key pair was deleted" in stderr
    assert object_list(softhsm) == before
    assert not (tmp_path / "x.req").exists()
    assert not _open_intents(sqlite3.connect(state / "pending.sqlite3"))  # the undo ended its intent


def _open_intents(db: sqlite3.Connection) -> int:
    try:
        return int(db.execute("SELECT count(*) FROM key_intents").fetchone()[0])
    except sqlite3.OperationalError:  # no table yet, or the run holds the write lock
        return 0


@pytest.mark.parametrize(
    ("args", "body", "code", "message"),
    [
        (("--token", "no-such-token"), "", 6, "no token matches 'no-such-token'"),
        ((), "KeyLength = banana", 3, "p.inf:3: KeyLength"),
        ((), 'ProviderName = "Acme KSP"', 3, "unknown ProviderName 'Acme KSP'"),
        (
            (),
            'Exportable = TRUE\nProviderName = "Microsoft Smart Card Key Storage Provider"',
            3,
            "smart cards cannot export private keys",
        ),
        ((), "RequestType = PKCS7", 3, "give --agent"),
        ((), "KeyAlgorithm = DSA", 3, "not supported"),
        (("--token", TOKEN, "--overwrite"), "", 13, "does not exist"),
    ],
)
def test_errors_are_one_line_with_stable_codes(
    tmp_path: Path, cli, softhsm: SoftHSM, args: tuple[str, ...], body: str, code: int, message: str
) -> None:
    policy = write_inf(tmp_path / "p.inf", body)
    before = object_list(softhsm)
    output = tmp_path / ("no-such-dir/x.req" if code == 13 else "x.req")
    run = cli(
        "new",
        str(policy),
        str(output),
        *(args or ("--token", TOKEN)),
        "--pin-source",
        "env:PIN",
        PIN=USER_PIN,
    )
    assert run.returncode == code, run.stderr
    assert message in run.stderr and run.stderr.strip().count("\n") == 0
    assert object_list(softhsm) == before


def test_wrong_pin_one_try_nothing_created(tmp_path: Path, cli, softhsm: SoftHSM) -> None:
    policy = write_inf(tmp_path / "p.inf", "KeyAlgorithm = ECDSA_P256")
    before = object_list(softhsm)
    run = cli("new", str(policy), str(tmp_path / "x.req"), "--token", TOKEN, "--pin-source", "env:PIN", PIN="99999999")
    assert run.returncode == 7 and "wrong PIN" in run.stderr and "99999999" not in run.stderr
    assert object_list(softhsm) == before
    ok = cli(
        "new", str(policy), "--dry-run", "--token", TOKEN, "--pin-source", "env:PIN", PIN=USER_PIN
    )  # clears COUNT_LOW
    assert ok.returncode == 0, ok.stderr


def test_existing_output_needs_overwrite(tmp_path: Path, cli, softhsm: SoftHSM) -> None:
    policy = write_inf(tmp_path / "p.inf", "KeyAlgorithm = ECDSA_P256")
    out = tmp_path / "x.req"
    out.write_text("keep me")
    before = object_list(softhsm)
    run = cli("new", str(policy), str(out), "--token", TOKEN, "--pin-source", "env:PIN", PIN=USER_PIN)
    assert run.returncode == 13 and "--overwrite" in run.stderr
    assert out.read_text() == "keep me" and object_list(softhsm) == before


def test_silent_without_pin_source_refused(tmp_path: Path, cli, softhsm: SoftHSM) -> None:
    policy = write_inf(tmp_path / "p.inf", "Silent = TRUE")
    run = cli("new", str(policy), str(tmp_path / "x.req"), "--token", TOKEN)
    assert run.returncode == 7 and "Silent = TRUE forbids prompting" in run.stderr


def test_force_high_protection_gives_always_authenticate(tmp_path: Path, softhsm: SoftHSM) -> None:
    policy = write_inf(
        tmp_path / "p.inf",
        "KeyAlgorithm = ECDSA_P256\nKeyContainer = high\nKeyProtection = NCRYPT_UI_FORCE_HIGH_PROTECTION_FLAG",
    )
    result = new_request(options(policy, tmp_path / "h.req"))
    block = private_key_blocks(softhsm)[result.key_id.hex()]
    assert "always authenticate" in block  # pkcs11-tool reads CKA_ALWAYS_AUTHENTICATE
    # the request was signed through a context-specific login and verifies
    assert openssl("req", "-verify", "-noout", "-in", str(tmp_path / "h.req")).returncode == 0


def test_m27_use_existing_key_set_by_container(tmp_path: Path, softhsm: SoftHSM) -> None:
    first = new_request(
        options(write_inf(tmp_path / "a.inf", "KeyAlgorithm = ECDSA_P256\nKeyContainer = reuse-me"), tmp_path / "a.req")
    )
    before = object_list(softhsm)
    second = new_request(
        options(
            write_inf(
                tmp_path / "b.inf", "KeyAlgorithm = ECDSA_P256\nKeyContainer = reuse-me\nUseExistingKeySet = TRUE"
            ),
            tmp_path / "b.req",
        )
    )
    assert second.key_generated is False and second.key_id == first.key_id
    a = x509.load_pem_x509_csr((tmp_path / "a.req").read_bytes())
    b = x509.load_pem_x509_csr((tmp_path / "b.req").read_bytes())
    assert a.public_key() == b.public_key() and b.is_signature_valid
    assert object_list(softhsm) == before  # no new objects
    with pytest.raises(
        PolicyError, match="the existing key 'reuse-me' is EC 256-bit but KeyAlgorithm/KeyLength say RSA"
    ):
        new_request(
            options(
                write_inf(tmp_path / "c.inf", "KeyContainer = reuse-me\nUseExistingKeySet = TRUE"), tmp_path / "c.req"
            )
        )
    assert object_list(softhsm) == before and not (tmp_path / "c.req").exists()


def test_m28_renewal_cert_after_request_type_cert(tmp_path: Path, softhsm: SoftHSM) -> None:
    cert_inf = write_inf(
        tmp_path / "c.inf",
        "RequestType = Cert\nKeyAlgorithm = ECDSA_P256\nKeyContainer = selfsigned\nFriendlyName = My Self Signed\n"
        "ValidityPeriod = Days\nValidityPeriodUnits = 10",
    )
    result = new_request(options(cert_inf, tmp_path / "c.cer"))
    assert result.pending is None  # certreq makes no pending request for a self-signed certificate
    listing = pkcs11_tool(softhsm, "-O", "--type", "cert", token=TOKEN)
    block = next(b for b in listing.split("Certificate Object") if "My Self Signed" in b)
    assert f"ID:         {result.key_id.hex()}" in block
    cert_pem = tmp_path / "c.cer"
    assert cert_pem.read_text().startswith("-----BEGIN CERTIFICATE-----")
    verify = openssl("verify", "-CAfile", str(cert_pem), "-partial_chain", str(cert_pem))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    certificate = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    assert (certificate.not_valid_after_utc - certificate.not_valid_before_utc).days == 10

    thumbprint = hashlib.sha1(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    before = object_list(softhsm)
    renewal = new_request(
        options(
            write_inf(
                tmp_path / "r.inf", f"UseExistingKeySet = TRUE\nRenewalCert = {thumbprint}\nKeyAlgorithm = ECDSA_P256"
            ),
            tmp_path / "r.req",
        )
    )
    assert renewal.key_id == result.key_id and not renewal.key_generated
    csr = x509.load_pem_x509_csr((tmp_path / "r.req").read_bytes())
    assert csr.public_key() == certificate.public_key() and csr.is_signature_valid
    assert object_list(softhsm) == before


def test_pending_delete_with_key(tmp_path: Path, cli, softhsm: SoftHSM) -> None:
    policy = write_inf(tmp_path / "p.inf", "KeyAlgorithm = ECDSA_P256\nKeyContainer = to-delete")
    before = object_list(softhsm)
    made_run = cli(
        "new", str(policy), str(tmp_path / "d.req"), "--token", TOKEN, "--pin-source", "env:PIN", "--json", PIN=USER_PIN
    )
    pending_id = json.loads(made_run.stdout)["pending_id"]
    assert "to-delete" in object_list(softhsm)
    refused = cli("pending", "--delete", str(pending_id), "--with-key", "--pin-source", "env:PIN", PIN=USER_PIN)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    run = cli("pending", "--delete", str(pending_id), "--with-key", "--yes", "--pin-source", "env:PIN", PIN=USER_PIN)
    assert run.returncode == 0, run.stderr
    assert "2 objects" in run.stdout
    assert object_list(softhsm) == before
    again = cli("pending", "--delete", str(pending_id))
    assert again.returncode == 9 and f"no pending request with ID {pending_id}" in again.stderr


SEEDS = sorted((Path(__file__).parent / "data" / "inf" / "seeds").glob("*.inf"))


@pytest.mark.parametrize("seed", SEEDS, ids=[s.stem for s in SEEDS])
def test_seed_examples(seed: Path, tmp_path: Path, cli, softhsm: SoftHSM) -> None:
    """Each seed INF makes a request OpenSSL verifies, or fails with a clear one-line error."""
    out = tmp_path / "seed.req"
    before = object_list(softhsm)
    run = cli("new", str(seed), str(out), "--token", TOKEN, "--user", "--pin-source", "env:PIN", "--json", PIN=USER_PIN)
    if run.returncode == 0:
        data = json.loads(run.stdout)
        if data["request_type"] == "CERT":
            assert openssl("x509", "-noout", "-in", str(out)).returncode == 0
        else:
            verify = openssl("req", "-verify", "-noout", "-in", str(out))
            assert verify.returncode == 0, verify.stderr
    else:
        error = json.loads(run.stdout)
        assert run.returncode in (3, 8), run.stderr
        assert error["message"] and "\n" not in error["message"]
        assert object_list(softhsm) == before
    assert os.path.exists(out) == (run.returncode == 0)


def test_token_info_read_directly_matches_python_pkcs11(softhsm: SoftHSM) -> None:
    """The ctypes CK_TOKEN_INFO layout used for free memory is right: label and serial agree."""
    from tokenagent.token.library import find_token
    from tokenagent.token.tokeninfo import read_token_info

    handle = find_token(TOKEN)
    info = read_token_info(handle)
    assert info is not None
    assert info.label.decode().rstrip() == handle.label
    assert info.serialNumber.decode().rstrip() == handle.serial
    assert info.ulMaxPinLen >= info.ulMinPinLen > 0


def test_pin_pad_profile_uses_the_pin_pad(tmp_path: Path, cli, softhsm: SoftHSM) -> None:
    """A profile with pin_pad = true asks the reader's PIN pad instead of prompting; SoftHSM has
    none, so the run stops at login (exit 7) with nothing created, and Silent is satisfied."""
    providers = tmp_path / "providers.toml"
    providers.write_text('[providers."Pad Reader KSP"]\nprofile = "smartcard"\npin_pad = true\n')
    policy = write_inf(tmp_path / "p.inf", 'ProviderName = "Pad Reader KSP"\nSilent = TRUE')
    before = object_list(softhsm)
    run = cli("new", str(policy), str(tmp_path / "x.req"), "--token", TOKEN, "--providers", str(providers))
    assert run.returncode == 7, run.stderr
    assert "has no PIN pad" in run.stderr and "Silent" not in run.stderr
    assert object_list(softhsm) == before


@pytest.mark.parametrize(
    ("body", "usage", "extractable"),
    [
        ("KeySpec = AT_KEYEXCHANGE", {"decrypt", "sign", "unwrap"}, False),  # M06 on the token
        ("KeyAlgorithm = ECDH_P256", {"derive", "sign"}, False),  # M03
        ("KeyAlgorithm = ECDSA_P256\nExportable = TRUE", {"sign"}, True),  # M13: software profile honours it
    ],
)
def test_mapped_usage_and_export_read_back_from_the_token(
    body: str, usage: set[str], extractable: bool, tmp_path: Path, softhsm: SoftHSM
) -> None:
    from tokenagent.token.library import find_token
    from tokenagent.token.objects import list_objects
    from tokenagent.token.session import open_session

    result = new_request(options(write_inf(tmp_path / "p.inf", body), tmp_path / "u.req"))
    handle = find_token(TOKEN)
    with open_session(handle, login=True, pin_source=literal_pin_source(USER_PIN)) as ts:
        info = next(
            o for o in list_objects(ts.session, handle) if o.object_class == "private-key" and o.id == result.key_id
        )
    assert set(info.usage) == usage
    assert info.flags["extractable"] is extractable and info.flags["sensitive"] is True
    block = private_key_blocks(softhsm)[result.key_id.hex()]
    listed = {u.strip() for u in re.search(r"Usage:\s+(.*)", block).group(1).split(",")}
    assert listed == usage  # pkcs11-tool agrees
    assert ("never extractable" in block) is not extractable
