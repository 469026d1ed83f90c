"""`tokenagent enroll`, `submit` and `enroll --resume` against a real ACME CA: Debian pebble 2.4.0.

pebble runs once for this module (tests/peers/pebble.py) on 127.0.0.1 and validates for real:
pebble-challtestsrv is its DNS (every name is 127.0.0.1), HTTP-01 answers come from tokenagent's
built-in responder on pebble's httpPort, DNS-01 TXT records are published by a hook script that
calls challtestsrv's management API, as an operator's DNS hook would. The keys go on a SoftHSM
instance of this module's own. What pebble issued is checked with openssl (the chain up to the
root from pebble's management API) and pkcs11-tool (the certificate beside its key on the token).
An account key on the token (account_key_uri) is made there by pkcs11-tool; that pebble holds an
account for it is asked with a newAccount/onlyReturnExisting JWS signed by pkcs11-tool.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from acme import messages

from tests.conftest import USER_PIN, Run, SoftHSM, make_softhsm, run_cli
from tests.peers.faulty import FaultyServer, closed_port
from tests.peers.pebble import BLOCKED_DOMAIN, Pebble
from tokenagent.ca.acme import problem_answer
from tokenagent.ca.answers import Misconfigured, NeedsRekey, Rejected, Unreachable

TOKEN = "ta-acme"

INF = """\
[NewRequest]
Subject = "CN={name}"
KeyAlgorithm = {algorithm}
{length}
KeyContainer = {container}
ProviderName = "Microsoft Software Key Storage Provider"
RequestType = PKCS10

[Extensions]
2.5.29.17 = "{{text}}"
_continue_ = "dns={name}&"
_continue_ = "dns=alt.{name}"

[EnhancedKeyUsageExtension]
OID = 1.3.6.1.5.5.7.3.1
"""

#: The operator's DNS hook: publishes and removes the TXT record at pebble-challtestsrv.
DNS_HOOK = """\
#!/bin/sh
set -e
echo "$TOKENAGENT_ACME_ACTION $TOKENAGENT_ACME_TYPE $TOKENAGENT_ACME_DOMAIN $TOKENAGENT_ACME_RECORD" >> "{log}"
if [ "$TOKENAGENT_ACME_ACTION" = deploy ]; then
  curl -sf -d "{{\\"host\\": \\"$TOKENAGENT_ACME_RECORD.\\", \\"value\\": \\"$TOKENAGENT_ACME_VALIDATION\\"}}" \\
    http://127.0.0.1:{port}/set-txt
else
  curl -sf -d "{{\\"host\\": \\"$TOKENAGENT_ACME_RECORD.\\"}}" http://127.0.0.1:{port}/clear-txt
fi
"""


#: The operator's web server hook: writes the key authorization where the web server serves it.
WEB_HOOK = """\
#!/bin/sh
set -e
file="{root}$TOKENAGENT_ACME_PATH"
if [ "$TOKENAGENT_ACME_ACTION" = deploy ]; then
  mkdir -p "$(dirname "$file")"
  printf %s "$TOKENAGENT_ACME_VALIDATION" > "$file"
else
  rm -f "$file"
fi
"""


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> SoftHSM:
    return make_softhsm(tmp_path_factory.mktemp("acme-hsm"), [TOKEN])


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    running = Pebble.start(tmp_path_factory.mktemp("pebble"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyServer]:
    running = FaultyServer()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def issuers(pebble: Pebble, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """pebble's root and intermediate (management API), as files for openssl verify."""
    root, intermediate = pebble.issuer_pems()
    directory = tmp_path_factory.mktemp("pebble-roots")
    (directory / "root.pem").write_bytes(root)
    (directory / "intermediate.pem").write_bytes(intermediate)
    return directory / "root.pem", directory / "intermediate.pem"


# -- helpers -------------------------------------------------------------------------------------------


def inf(directory: Path, name: str, algorithm: str = "ECDSA_P256") -> Path:
    container = name.split(".")[0]
    path = directory / f"{container}.inf"
    length = "KeyLength = 2048" if algorithm == "RSA" else ""
    path.write_text(INF.format(name=name, algorithm=algorithm, length=length, container=container))
    return path


def tokenagent(token: SoftHSM, state: Path, *args: str) -> Run:
    return run_cli(*args, env=token.env(TA_PIN=USER_PIN, TOKENAGENT_STATE_DIR=str(state)))


def enroll(token: SoftHSM, state: Path, policy: Path, *ca: str) -> Run:
    return tokenagent(token, state, "enroll", str(policy), *ca, "--token", TOKEN, "--pin-source", "env:TA_PIN")


def cas_toml(directory: Path, pebble: Pebble, **keys: object) -> list[str]:
    """A [ca.pebble] profile; the options that select it (--config pebble --cas FILE)."""
    values = {"url": f"acme+{pebble.url}", "ca_bundle": str(pebble.tls_ca), **keys}
    lines = ["[ca.pebble]"] + [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = directory / "cas.toml"
    path.write_text("\n".join(lines) + "\n")
    return ["--config", "pebble", "--cas", str(path)]


def responder(directory: Path, pebble: Pebble, **keys: object) -> list[str]:
    return cas_toml(directory, pebble, http_port=pebble.http_port, http_address="127.0.0.1", **keys)


def openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)


def certificate_on_token(token: SoftHSM, label: str) -> bytes | None:
    """The certificate object whose CKA_ID is the private key ``label``'s, read by pkcs11-tool."""
    tool = ["pkcs11-tool", "--module", token.module, "--token-label", TOKEN]
    keys = subprocess.run(
        [*tool, "--login", "--pin", USER_PIN, "-O", "--type", "privkey"],
        capture_output=True, text=True, env=token.env(), check=True,
    ).stdout  # fmt: skip
    block = next(b for b in keys.split("Private Key Object")[1:] if re.search(rf"label:\s+{label}\s*$", b, re.M))
    key_id = re.search(r"ID:\s+([0-9a-f]+)", block)
    assert key_id, block
    read = subprocess.run(
        [*tool, "--read-object", "--type", "cert", "--id", key_id.group(1)],
        capture_output=True, env=token.env(), check=False,
    )  # fmt: skip
    return read.stdout if read.returncode == 0 and read.stdout else None


def verified_text(issuers: tuple[Path, Path], der: bytes) -> str:
    """openssl verifies ``der`` up to pebble's root through its intermediate; the certificate's text."""
    root, intermediate = issuers
    pem = openssl("x509", "-inform", "DER", stdin=der).stdout
    assert b"BEGIN CERTIFICATE" in pem
    checked = openssl("verify", "-CAfile", str(root), "-untrusted", str(intermediate), stdin=pem)
    assert checked.returncode == 0, checked.stderr
    return openssl("x509", "-noout", "-text", stdin=pem).stdout.decode()


def pending(token: SoftHSM, state: Path) -> list[dict[str, object]]:
    listing = tokenagent(token, state, "pending", "--json")
    assert listing.returncode == 0, listing.stderr
    return list(json.loads(listing.stdout)["pending"])


def one_error_line(run: Run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith("tokenagent: error:")]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    return lines[0]


def token_objects(token: SoftHSM) -> str:
    return subprocess.run(
        ["pkcs11-tool", "--module", token.module, "--token-label", TOKEN, "--login", "--pin", USER_PIN, "-O"],
        capture_output=True, text=True, env=token.env(), check=True,
    ).stdout  # fmt: skip


# -- issued and installed -------------------------------------------------------------------------------


def test_enroll_with_the_directory_url_and_port_80(token: SoftHSM, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The acceptance command: --config acme+https://.../dir --ca-bundle, the responder on port 80.

    pebble runs in a network namespace of its own for this (port 80 is nobody else's there), and so
    does the tokenagent client."""
    peer = Pebble.start(tmp_path_factory.mktemp("pebble-ns"), namespace=True)
    try:
        directory = tmp_path_factory.mktemp("acme-url")
        command = [
            *peer.inside(), sys.executable, "-m", "tokenagent", "enroll", str(inf(directory, "url.example.test")),
            "--config", f"acme+{peer.url}", "--ca-bundle", str(peer.tls_ca),
            "--token", TOKEN, "--pin-source", "env:TA_PIN",
        ]  # fmt: skip
        env = token.env(TA_PIN=USER_PIN, TOKENAGENT_STATE_DIR=str(directory / "state"))
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert "certificate: installed on the token next to its key" in done.stdout
        (directory / "enroll.out").write_text(done.stdout)  # docs/ca.md (ACME) shows this output
        root, intermediate = peer.issuer_pems()
        (directory / "root.pem").write_bytes(root)
        (directory / "intermediate.pem").write_bytes(intermediate)
        certificate = certificate_on_token(token, "url")
        assert certificate is not None
        text = verified_text((directory / "root.pem", directory / "intermediate.pem"), certificate)
        assert "DNS:url.example.test" in text
    finally:
        peer.stop()


def test_enroll_over_http01_installs_a_certificate_pebble_issued(
    token: SoftHSM, pebble: Pebble, issuers: tuple[Path, Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    # the URL form (--config acme+https://...) has no place for http_port: a cas.toml profile gives it
    started = time.monotonic()
    run = enroll(token, state, inf(tmp_path, "www.example.test"), *responder(tmp_path, pebble))
    seconds = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    assert "certificate: installed on the token next to its key" in run.stdout
    print(f"enroll over ACME (P-256, http-01, new account): {seconds:.2f} s")

    certificate = certificate_on_token(token, "www")
    assert certificate is not None, "pkcs11-tool finds no certificate with the key's CKA_ID"
    text = verified_text(issuers, certificate)
    assert "DNS:www.example.test" in text and "DNS:alt.www.example.test" in text
    assert not pending(token, state)

    # the account key: software, in the state directory, 0600 in a 0700 directory; never on the token
    keys = list((state / "acme").glob("*.key"))
    assert len(keys) == 1
    assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "acme").stat().st_mode) == 0o700
    assert openssl("pkey", "-in", str(keys[0]), "-noout").returncode == 0
    labels = re.findall(r"label:\s+(\S+)", token_objects(token).split("Private Key Object", 1)[1])
    assert "www" in labels and not any("acme" in label for label in labels)


def test_submit_then_accept_an_rsa_request(
    token: SoftHSM, pebble: Pebble, issuers: tuple[Path, Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    request = tmp_path / "rsa.req"
    made = tokenagent(
        token, state, "new", str(inf(tmp_path, "rsa.example.test", "RSA")), str(request),
        "--token", TOKEN, "--pin-source", "env:TA_PIN",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    cert, chain, response = tmp_path / "rsa.pem", tmp_path / "rsa.p7b", tmp_path / "rsa.rsp"
    ca = responder(tmp_path, pebble, contact="ops@example.test")
    submitted = tokenagent(token, state, "submit", str(request), str(cert), str(chain), str(response), *ca)
    assert submitted.returncode == 0, submitted.stderr
    # the response is a certs-only PKCS#7 of the leaf and pebble's intermediate (openssl reads it)
    listed = openssl("pkcs7", "-inform", "DER", "-in", str(response), "-print_certs", "-noout")
    assert listed.returncode == 0 and listed.stdout.count(b"subject=") == 2, listed.stderr
    root, intermediate = issuers
    checked = openssl("verify", "-CAfile", str(root), "-untrusted", str(intermediate), str(cert))
    assert checked.returncode == 0, checked.stderr

    accepted = tokenagent(token, state, "accept", str(cert), "--token", TOKEN, "--pin-source", "env:TA_PIN")
    assert accepted.returncode == 0, accepted.stderr
    assert certificate_on_token(token, "rsa") == openssl("x509", "-in", str(cert), "-outform", "DER").stdout


def test_http01_hook_publishes_through_the_operators_web_server(
    token: SoftHSM, pebble: Pebble, issuers: tuple[Path, Path], tmp_path: Path
) -> None:
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    hook = tmp_path / "web-hook.sh"
    hook.write_text(WEB_HOOK.format(root=webroot))
    hook.chmod(0o755)
    handler = functools.partial(QuietFiles, directory=str(webroot))
    server = ThreadingHTTPServer(("127.0.0.1", pebble.http_port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        state = tmp_path / "state"
        run = enroll(token, state, inf(tmp_path, "web.example.test"), *cas_toml(tmp_path, pebble, hook=str(hook)))
    finally:
        server.shutdown()
        server.server_close()
    assert run.returncode == 0, run.stderr
    certificate = certificate_on_token(token, "web")
    assert certificate is not None and "DNS:web.example.test" in verified_text(issuers, certificate)
    assert not list((webroot / ".well-known" / "acme-challenge").iterdir())  # cleaned up


# -- pending, then finished by enroll --resume -------------------------------------------------------------


def test_dns01_hook_pending_order_is_finished_by_resume(
    token: SoftHSM, pebble: Pebble, issuers: tuple[Path, Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    log = tmp_path / "hook.log"
    hook = tmp_path / "dns-hook.sh"
    hook.write_text(DNS_HOOK.format(log=log, port=pebble.challtestsrv_port))
    hook.chmod(0o755)
    # wait = 0: answer Pending as soon as the challenges are answered (a DNS change takes its time)
    ca = cas_toml(tmp_path, pebble, challenge="dns-01", hook=str(hook), wait=0, contact="mailto:ops@example.test")
    run = enroll(token, state, inf(tmp_path, "dns.example.test"), *ca)
    assert run.returncode == 14, run.stderr
    line = one_error_line(run)
    assert "holds the request pending" in line and "dns.example.test" in line and "enroll --resume" in line
    assert len(pending(token, state)) == 1
    assert certificate_on_token(token, "dns") is None
    with sqlite3.connect(state / "pending.sqlite3") as db:
        [(cookie, ca_state)] = db.execute("SELECT cookie, state FROM ca_submissions").fetchall()
    assert ca_state == "pending" and re.fullmatch(rf"https://127\.0\.0\.1:{pebble.port}/my-order/\S+", cookie)
    deployed = log.read_text().splitlines()
    assert sorted(deployed) == [
        "deploy dns-01 alt.dns.example.test _acme-challenge.alt.dns.example.test",
        "deploy dns-01 dns.example.test _acme-challenge.dns.example.test",
    ]

    resumed = tokenagent(token, state, "enroll", "--resume", "--pin-source", "env:TA_PIN")
    assert resumed.returncode == 0, resumed.stderr
    certificate = certificate_on_token(token, "dns")
    assert certificate is not None
    assert "DNS:dns.example.test" in verified_text(issuers, certificate)
    assert not pending(token, state)
    cleaned = log.read_text().splitlines()[2:]
    assert sorted(cleaned) == [
        "cleanup dns-01 alt.dns.example.test _acme-challenge.alt.dns.example.test",
        "cleanup dns-01 dns.example.test _acme-challenge.dns.example.test",
    ]


# -- refused -------------------------------------------------------------------------------------------------


def test_blocked_name_is_rejected_identifier_and_the_request_stays(
    token: SoftHSM, pebble: Pebble, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    run = enroll(token, state, inf(tmp_path, BLOCKED_DOMAIN), *responder(tmp_path, pebble))
    assert run.returncode == 12, run.stderr
    line = one_error_line(run)
    assert "rejectedIdentifier" in line and BLOCKED_DOMAIN in line and "pending request" in line
    assert len(pending(token, state)) == 1


def test_failed_validation_is_a_rejection_naming_the_domain(token: SoftHSM, pebble: Pebble, tmp_path: Path) -> None:
    state = tmp_path / "state"
    hook = tmp_path / "forgetful-hook.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")  # says it published the answer, and did not
    hook.chmod(0o755)
    run = enroll(token, state, inf(tmp_path, "nothere.example.test"), *cas_toml(tmp_path, pebble, hook=str(hook)))
    assert run.returncode == 12, run.stderr
    line = one_error_line(run)
    assert "could not validate control of" in line and "nothere.example.test" in line and "http-01" in line
    assert len(pending(token, state)) == 1


def test_failing_hook_is_a_configuration_error(token: SoftHSM, pebble: Pebble, tmp_path: Path) -> None:
    state = tmp_path / "state"
    hook = tmp_path / "broken-hook.sh"
    hook.write_text("#!/bin/sh\necho 'nsupdate: permission denied' >&2\nexit 3\n")
    hook.chmod(0o755)
    ca = cas_toml(tmp_path, pebble, challenge="dns-01", hook=str(hook))
    run = enroll(token, state, inf(tmp_path, "hookfail.example.test"), *ca)
    assert run.returncode == 18, run.stderr
    line = one_error_line(run)
    assert "exited with status 3: nsupdate: permission denied" in line
    assert len(pending(token, state)) == 1


def test_deactivated_account_is_refused_credentials(token: SoftHSM, pebble: Pebble, tmp_path: Path) -> None:
    import josepy
    from acme import client
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    state = tmp_path / "state"
    account_key = tmp_path / "account.pem"  # a profile's own account key file, made on first use
    ca = responder(tmp_path, pebble, account_key=str(account_key))
    first = enroll(token, state, inf(tmp_path, "acct1.example.test"), *ca)
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(account_key.stat().st_mode) == 0o600
    assert not (state / "acme").exists()

    # the CA's operator (here: the account's owner) deactivates the account
    key = josepy.JWKEC(key=load_pem_private_key(account_key.read_bytes(), None))
    network = client.ClientNetwork(key, alg=josepy.ES256, verify_ssl=str(pebble.tls_ca))  # type: ignore[arg-type]
    acme = client.ClientV2(client.ClientV2.get_directory(pebble.url, network), network)
    registration = acme.query_registration(messages.RegistrationResource(body=messages.Registration(), uri=None))
    acme.deactivate_registration(registration)

    second = enroll(token, state, inf(tmp_path, "acct2.example.test"), *ca)
    assert second.returncode == 19, second.stderr
    line = one_error_line(second)
    assert "ACME account was refused (unauthorized)" in line
    assert len(pending(token, state)) == 1


def test_certificate_outside_the_configured_trust_is_not_installed(
    token: SoftHSM, pebble: Pebble, issuers: tuple[Path, Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    wrong = responder(tmp_path, pebble, trust=str(pebble.tls_ca))  # pebble's TLS CA issued no certificate
    run = enroll(token, state, inf(tmp_path, "trust.example.test"), *wrong)
    assert run.returncode == 11, run.stderr
    one_error_line(run)
    assert certificate_on_token(token, "trust") is None
    assert len(pending(token, state)) == 1
    # the right trust anchor, pebble's root: the same pending request is finished
    right = responder(tmp_path, pebble, trust=str(issuers[0]))
    resumed = tokenagent(token, state, "enroll", "--resume", "1", *right, "--pin-source", "env:TA_PIN")
    assert resumed.returncode == 0, resumed.stderr
    assert certificate_on_token(token, "trust") is not None


def test_configuration_problems_are_found_before_the_ca_is_asked(
    token: SoftHSM, pebble: Pebble, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    no_hook = enroll(token, state, inf(tmp_path, "conf.example.test"), *cas_toml(tmp_path, pebble, challenge="dns-01"))
    assert no_hook.returncode == 18, no_hook.stderr
    assert "dns-01 needs a hook program" in one_error_line(no_hook)
    alpn = enroll(
        token, state, inf(tmp_path, "conf2.example.test"), *cas_toml(tmp_path, pebble, challenge="tls-alpn-01")
    )
    assert alpn.returncode == 18, alpn.stderr
    assert "use one of http-01, dns-01" in one_error_line(alpn)
    assert len(pending(token, state)) == 2


# -- the way to the CA fails -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "code", "said"),
    [
        ("refused", 16, "refused"),
        ("500", 16, "HTTP 500"),
        ("garbage", 17, "not a CA answer"),
        ("notls", 18, "does not verify"),
    ],
)
def test_unreachable_or_broken_server_is_one_line_and_the_request_stays(
    token: SoftHSM, pebble: Pebble, faulty: FaultyServer, tmp_path: Path, where: str, code: int, said: str
) -> None:
    state = tmp_path / "state"
    urls = {
        "refused": f"acme+http://127.0.0.1:{closed_port()}/dir",
        "500": f"acme+{faulty.url('500', 'dir')}",
        "garbage": f"acme+{faulty.url('garbage', 'dir')}",
        "notls": f"acme+{pebble.url}",  # no --ca-bundle: pebble's TLS CA is in no trust store
    }
    lines = ["[ca.broken]", f'url = "{urls[where]}"', f"http_port = {pebble.http_port}", 'http_address = "127.0.0.1"']
    (tmp_path / "cas.toml").write_text("\n".join(lines) + "\n")
    run = enroll(
        token, state, inf(tmp_path, f"{where}.example.test"), "--config", "broken", "--cas", str(tmp_path / "cas.toml")
    )
    assert run.returncode == code, run.stderr
    line = one_error_line(run)
    assert said in line and "enroll --resume" in line
    assert len(pending(token, state)) == 1


def test_bad_nonce_is_retried_then_a_temporary_failure(
    token: SoftHSM, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A pebble that rejects every nonce: the library retries once, then the answer is "try later"."""
    peer = Pebble.start(tmp_path_factory.mktemp("pebble-nonce"), nonce_reject=100)
    try:
        state = tmp_path / "state"
        run = enroll(token, state, inf(tmp_path, "nonce.example.test"), *responder(tmp_path, peer))
    finally:
        peer.stop()
    assert run.returncode == 16, run.stderr
    line = one_error_line(run)
    assert "badNonce" in line and "enroll --resume" in line
    assert len(pending(token, state)) == 1
    log = (peer.directory / "server.log").read_text()
    assert log.count("POST /sign-me-up") >= 2  # newAccount, and the library's retry with a fresh nonce


# -- problem documents without a server that sends them (pebble has no rate limits) ------------------------------


def test_problem_documents_map_to_answers() -> None:
    def problem(code: str, detail: str = "said") -> messages.Error:
        return messages.Error.with_code(code, detail=detail)

    later = datetime.now(UTC) + timedelta(minutes=5)
    limited = problem_answer(problem("rateLimited"), "order", later)
    assert isinstance(limited, Unreachable) and limited.retry_after == later and not limited.garbled
    assert isinstance(problem_answer(problem("serverInternal"), "finalize"), Unreachable)
    assert isinstance(problem_answer(problem("badNonce"), "order"), Unreachable)
    for code in ("rejectedIdentifier", "unauthorized", "caa", "badCSR", "unsupportedIdentifier"):
        answer = problem_answer(problem(code), "order")
        assert isinstance(answer, Rejected) and answer.code == code
    assert isinstance(problem_answer(problem("badPublicKey"), "finalize"), NeedsRekey)
    for code, phase in (
        ("unauthorized", "account"),
        ("externalAccountRequired", "account"),
        ("accountDoesNotExist", "order"),
    ):
        answer = problem_answer(problem(code), phase)
        assert isinstance(answer, Misconfigured) and answer.authentication


# -- the account key on the token ------------------------------------------------------------------------------

ACCOUNT_EC = "account-p256"  # labels without "acme": the software-key test checks no such key is on the token
ACCOUNT_RSA = "account-rsa"
ACCOUNT_IDS = {ACCOUNT_EC: "a1", ACCOUNT_RSA: "a2"}


def account_uri(label: str) -> str:
    return f"pkcs11:token={TOKEN};object={label};type=private"


@pytest.fixture(scope="module")
def account_keys(token: SoftHSM) -> dict[str, bytes]:
    """ACME account keys made on the token once, by pkcs11-tool (the connector never makes one): label -> SPKI."""
    made: dict[str, bytes] = {}
    for label, key_type in ((ACCOUNT_EC, "EC:prime256v1"), (ACCOUNT_RSA, "rsa:2048")):
        tool = ["pkcs11-tool", "--module", token.module, "--token-label", TOKEN, "--login", "--pin", USER_PIN]
        generated = subprocess.run(
            [*tool, "--keypairgen", "--key-type", key_type, "--label", label, "--id", ACCOUNT_IDS[label]],
            capture_output=True, env=token.env(), check=False,
        )  # fmt: skip
        assert generated.returncode == 0, generated.stderr
        read = subprocess.run(
            [*tool, "--read-object", "--type", "pubkey", "--label", label],
            capture_output=True, env=token.env(), check=True,
        )  # fmt: skip
        made[label] = read.stdout
    return made


def pkcs11_tool_sign(token: SoftHSM, label: str, data: bytes, mechanism: str) -> bytes:
    # a file and --id: from a pipe, or with --label, pkcs11-tool 0.23 fails C_SignUpdate
    signed = token.directory / "to-sign.bin"
    signed.write_bytes(data)
    done = subprocess.run(
        [
            "pkcs11-tool", "--module", token.module, "--token-label", TOKEN, "--login", "--pin", USER_PIN,
            "--sign", "--mechanism", mechanism, "--id", ACCOUNT_IDS[label], "--input-file", str(signed),
        ],
        capture_output=True, env=token.env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def existing_account(pebble: Pebble, token: SoftHSM, label: str, spki: bytes) -> tuple[int, dict[str, object]]:
    """newAccount with onlyReturnExisting (RFC 8555 7.3.1), signed by pkcs11-tool with the token's key and
    carrying the JWK of the public key pkcs11-tool read: pebble's status and account (200: it has one)."""
    import base64
    import ssl
    import urllib.error
    import urllib.request

    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    context = ssl.create_default_context(cafile=str(pebble.tls_ca))
    directory = json.loads(urllib.request.urlopen(pebble.url, context=context, timeout=5).read())
    with urllib.request.urlopen(
        urllib.request.Request(directory["newNonce"], method="HEAD"), context=context, timeout=5
    ) as answer:
        nonce = answer.headers["Replay-Nonce"]
    public = load_der_public_key(spki)
    ec_key = isinstance(public, ec.EllipticCurvePublicKey)
    jwk = _public_jwk(public)
    header = {"alg": "ES256" if ec_key else "RS256", "jwk": jwk, "nonce": nonce, "url": directory["newAccount"]}
    protected = b64(json.dumps(header).encode())
    payload = b64(json.dumps({"onlyReturnExisting": True}).encode())
    # pkcs11-tool's ECDSA signature is r || s, which is JWS's form (SoftHSM has CKM_ECDSA only: hashed
    # here); RSA PKCS#1 v1.5 is the same in both
    signed = f"{protected}.{payload}".encode()
    if ec_key:
        signature = pkcs11_tool_sign(token, label, hashlib.sha256(signed).digest(), "ECDSA")
    else:
        signature = pkcs11_tool_sign(token, label, signed, "SHA256-RSA-PKCS")
    body = json.dumps({"protected": protected, "payload": payload, "signature": b64(signature)}).encode()
    request = urllib.request.Request(
        directory["newAccount"], data=body, headers={"Content-Type": "application/jose+json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _public_jwk(public: object) -> dict[str, object]:
    import josepy
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(public, ec.EllipticCurvePublicKey):
        return dict(josepy.JWKEC(key=public).to_partial_json())
    return dict(josepy.JWKRSA(key=public).to_partial_json())


def test_account_key_on_the_token_signs_every_jws(
    token: SoftHSM, pebble: Pebble, issuers: tuple[Path, Path], account_keys: dict[str, bytes], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    spki = account_keys[ACCOUNT_EC]
    # no account of this key before the run (pebble answers accountDoesNotExist)
    status, said = existing_account(pebble, token, ACCOUNT_EC, spki)
    assert status == 400 and "accountDoesNotExist" in str(said.get("type")), said

    started = time.monotonic()
    ca = responder(tmp_path, pebble, account_key_uri=account_uri(ACCOUNT_EC))
    run = enroll(token, state, inf(tmp_path, "tokenacct.example.test"), *ca)
    seconds = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    print(f"enroll over ACME with the account key on the token (P-256): {seconds:.2f} s")
    (tmp_path / "enroll.out").write_text(run.stdout)  # docs/ca.md (ACME) shows this output
    certificate = certificate_on_token(token, "tokenacct")
    assert certificate is not None
    assert "DNS:tokenacct.example.test" in verified_text(issuers, certificate)
    assert not pending(token, state)
    assert not (state / "acme").exists()  # no software account key was made

    # pebble now has an account whose JWK is the token key's public key, as pkcs11-tool reads it
    status, account = existing_account(pebble, token, ACCOUNT_EC, spki)
    assert status == 200, account
    assert account["status"] == "valid"
    assert account["key"] == _public_jwk(load_spki(spki))

    # a second run finds the same account again (newAccount answers 200 with its URL)
    again = enroll(token, state, inf(tmp_path, "tokenacct2.example.test"), *ca)
    assert again.returncode == 0, again.stderr
    assert certificate_on_token(token, "tokenacct2") is not None


def load_spki(spki: bytes) -> object:
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    return load_der_public_key(spki)


def test_rsa_account_key_on_the_token_and_a_pending_order_finished_by_resume(
    token: SoftHSM, pebble: Pebble, issuers: tuple[Path, Path], account_keys: dict[str, bytes], tmp_path: Path
) -> None:
    """enroll --resume opens the token again: the order is carried on with the same account key."""
    state = tmp_path / "state"
    hook = tmp_path / "dns-hook.sh"
    hook.write_text(DNS_HOOK.format(log=tmp_path / "hook.log", port=pebble.challtestsrv_port))
    hook.chmod(0o755)
    ca = cas_toml(
        tmp_path, pebble, challenge="dns-01", hook=str(hook), wait=0, account_key_uri=account_uri(ACCOUNT_RSA)
    )
    run = enroll(token, state, inf(tmp_path, "rsaacct.example.test"), *ca)
    assert run.returncode == 14, run.stderr
    assert "holds the request pending" in one_error_line(run)

    resumed = tokenagent(token, state, "enroll", "--resume", "--pin-source", "env:TA_PIN")
    assert resumed.returncode == 0, resumed.stderr
    certificate = certificate_on_token(token, "rsaacct")
    assert certificate is not None and "DNS:rsaacct.example.test" in verified_text(issuers, certificate)
    assert not pending(token, state)
    assert not (state / "acme").exists()
    status, account = existing_account(pebble, token, ACCOUNT_RSA, account_keys[ACCOUNT_RSA])
    assert status == 200 and account["key"] == _public_jwk(load_spki(account_keys[ACCOUNT_RSA])), account


@pytest.mark.parametrize(
    ("uri", "said"),
    [
        (f"pkcs11:token={TOKEN};object=no-such-key;type=private", "holds no private key"),
        (f"pkcs11:token=another-token;object={ACCOUNT_EC};type=private", "names another token"),
        (f"pkcs11:token={TOKEN};object={ACCOUNT_EC};type=cert", "names a cert object"),
        (f"pkcs11:token={TOKEN};object={ACCOUNT_EC};type=private?pin-value=9876", "holds a pin-value"),
    ],
)
def test_account_key_uri_naming_no_key_fails_before_anything_is_sent(
    token: SoftHSM, account_keys: dict[str, bytes], tmp_path: Path, uri: str, said: str
) -> None:
    """The CA is a closed port: had anything been sent, the answer would be "refused" (exit 16)."""
    state = tmp_path / "state"
    lines = [
        "[ca.closed]",
        f'url = "acme+http://127.0.0.1:{closed_port()}/dir"',
        f"account_key_uri = {json.dumps(uri)}",
    ]
    (tmp_path / "cas.toml").write_text("\n".join(lines) + "\n")
    name = f"{said.split()[-1]}.example.test"
    run = enroll(token, state, inf(tmp_path, name), "--config", "closed", "--cas", str(tmp_path / "cas.toml"))
    assert run.returncode == 18, run.stderr
    line = one_error_line(run)
    assert "the ACME account key" in line and said in line and "enroll --resume" in line
    assert "9876" not in run.stderr + run.stdout
    assert len(pending(token, state)) == 1
    assert not (state / "acme").exists()


def test_submit_has_no_session_to_sign_with_the_account_key(
    token: SoftHSM, account_keys: dict[str, bytes], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    request = tmp_path / "nosession.req"
    made = tokenagent(
        token, state, "new", str(inf(tmp_path, "nosession.example.test")), str(request),
        "--token", TOKEN, "--pin-source", "env:TA_PIN",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    lines = [
        "[ca.closed]",
        f'url = "acme+http://127.0.0.1:{closed_port()}/dir"',
        f"account_key_uri = {json.dumps(account_uri(ACCOUNT_EC))}",
    ]
    (tmp_path / "cas.toml").write_text("\n".join(lines) + "\n")
    submitted = tokenagent(
        token, state, "submit", str(request), str(tmp_path / "out.pem"), "--config", "closed",
        "--cas", str(tmp_path / "cas.toml"),
    )  # fmt: skip
    assert submitted.returncode == 18, submitted.stderr
    assert "has no session on it: use tokenagent enroll" in one_error_line(submitted)
