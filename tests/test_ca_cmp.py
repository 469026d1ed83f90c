"""`tokenagent enroll` against a real CMP server: OpenSSL 3.0's `openssl cmp` mock server (tests/peers/cmpserver.py).

The mock server always answers with one fixed certificate, so the module makes one EC key on its own
SoftHSM token with pkcs11-tool, a certificate for exactly that key with openssl (tests/ca.py's CA), and
then the servers, each in a private network namespace; every `tokenagent` run joins the namespace of
the server it talks to (nsenter). The requests name the existing key (UseExistingKeySet = TRUE), so
every test enrolls the same key. What was issued is checked with pkcs11-tool and openssl; what
tokenagent sends is decoded with `openssl asn1parse`, and the server itself verifies the MAC
protection and the proof of possession signed on the token.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.ca import OpenSslCA
from tests.conftest import USER_PIN, Run, SoftHSM, make_softhsm, pkcs11_tool
from tests.peers.cmpserver import PORT, CmpServer, Servers
from tests.peers.faulty import FaultyServer
from tokenagent.ca import cmp_asn1
from tokenagent.ca.answers import error_for
from tokenagent.ca.cmp import FAIL_INFO, failure_answer

TOKEN = "ta-cmp"
KEY_ID = "c1"
SECRET = "cmp-Shared-Secret-7d2e"  # distinctive: a leak check cannot match anything else by chance
REFERENCE = "4711"
SUBJECT = "CN=CMP Test User,O=tokenagent tests"
INF = f"""\
[NewRequest]
Subject = "{SUBJECT}"
KeyAlgorithm = ECDSA_P256
KeyContainer = cmp-key
UseExistingKeySet = TRUE
"""


@dataclass
class CmpPeer:
    softhsm: SoftHSM
    servers: Servers
    ca: OpenSslCA
    certificate: Path  # the one certificate every server answers with (PEM)
    trust: Path  # root + issuing CA (PEM)

    def server(self, name: str, *extra: str, mac: bool = True) -> CmpServer:
        return self.servers.get(name, *extra, mac=mac)

    def signing_server(self) -> CmpServer:
        """A server without the shared secret: it signs its answers (and accepts our MAC unverified)."""
        key, certificate = self.certificate.parent / "srv.key", self.certificate.parent / "srv.pem"
        if not certificate.exists():
            _openssl(
                "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
                "-subj", "/O=tokenagent tests/CN=CMP server", "-out", str(key.with_suffix(".csr")),
            )  # fmt: skip
            self.ca.issue(key.with_suffix(".csr"), certificate, extensions="keyUsage = critical,digitalSignature")
        options = ("-srv_cert", str(certificate), "-srv_key", str(key), "-accept_unprotected")
        return self.server("signed", *options, mac=False)


@pytest.fixture(scope="module")
def cmp_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CmpPeer]:
    base = tmp_path_factory.mktemp("cmp")
    softhsm = make_softhsm(base / "softhsm", [TOKEN])
    pkcs11_tool(
        softhsm, "--keypairgen", "--key-type", "EC:prime256v1", "--id", KEY_ID, "--label", "cmp-key",
        "--usage-sign", token=TOKEN,
    )  # fmt: skip
    public_der = base / "key.der"
    pkcs11_tool(softhsm, "--read-object", "--type", "pubkey", "--id", KEY_ID, "-o", str(public_der), token=TOKEN)
    public_pem = base / "key.pem"
    _openssl("pkey", "-pubin", "-inform", "DER", "-in", str(public_der), "-out", str(public_pem))
    ca = OpenSslCA.create(base / "ca")
    extensions = base / "ee.ext"
    extensions.write_text(
        "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
        "extendedKeyUsage = clientAuth\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
    )
    certificate = base / "ee.pem"
    _openssl(
        "x509", "-new", "-force_pubkey", str(public_pem), "-subj", "/O=tokenagent tests/CN=CMP Test User",
        "-CA", str(ca.sub_cert), "-CAkey", str(ca.sub_key), "-days", "30", "-extfile", str(extensions),
        "-set_serial", "4711", "-out", str(certificate),
    )  # fmt: skip
    trust = base / "trust.pem"
    trust.write_text(ca.sub_cert.read_text() + ca.root_cert.read_text())
    servers = Servers(base / "servers", certificate, trust, SECRET, REFERENCE)
    try:
        yield CmpPeer(softhsm, servers, ca, certificate, trust)
    finally:
        servers.stop()


# -- helpers -------------------------------------------------------------------------------------------


def _openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done


def write_cas(tmp_path: Path, url: str = f"http://127.0.0.1:{PORT}/pkix/", **keys: object) -> Path:
    """A cas.toml with the profile [ca.cmp]; ``keys`` override the defaults (None drops one)."""
    values: dict[str, object] = {
        "url": f"cmp+{url}",
        "secret_source": "env:CMP_SECRET",
        "reference": REFERENCE,
        **keys,
    }
    lines = ["[ca.cmp]"]
    for key, value in values.items():
        if value is None:
            continue
        lines.append(f"{key} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}")
    path = tmp_path / "cas.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def tokenagent(
    peer: CmpPeer,
    tmp_path: Path,
    *args: str,
    server: CmpServer | None = None,
    secret: str = SECRET,
    verbose: tuple[str, ...] = (),
) -> Run:
    """The CLI in the server's network namespace (or the host's), with this test's own pending store."""
    env = peer.softhsm.env(TA_PIN=USER_PIN, CMP_SECRET=secret, TOKENAGENT_STATE_DIR=str(tmp_path / "state"))
    prefix = server.netns() if server is not None else []
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "tokenagent", *verbose, *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert SECRET not in done.stdout + done.stderr, "the shared secret leaked"
    return Run(done.returncode, done.stdout, done.stderr)


def enroll(
    peer: CmpPeer, tmp_path: Path, server: CmpServer | None, *extra: str, verbose: tuple[str, ...] = (), **keys: object
) -> Run:
    tmp_path.mkdir(parents=True, exist_ok=True)
    inf = tmp_path / "cmp.inf"
    inf.write_text(INF)
    cas = write_cas(tmp_path, **keys)
    user = ["--token", TOKEN, "--pin-source", "env:TA_PIN"]
    return tokenagent(
        peer, tmp_path, "enroll", str(inf), "--config", "cmp", "--cas", str(cas), *user, *extra, server=server,
        verbose=verbose,
    )  # fmt: skip


def one_error_line(run: Run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith("tokenagent: error:")]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    return lines[0]


def pending(peer: CmpPeer, tmp_path: Path) -> list[dict[str, object]]:
    listing = tokenagent(peer, tmp_path, "pending", "--json")
    assert listing.returncode == 0, listing.stderr
    return list(json.loads(listing.stdout)["pending"])


def token_certificate(peer: CmpPeer) -> bytes | None:
    """The certificate with the key's CKA_ID on the token, as pkcs11-tool reads it."""
    listing = pkcs11_tool(peer.softhsm, "-O", "--type", "cert", token=TOKEN, login=False)
    if not re.search(rf"ID:\s+{KEY_ID}\b", listing):
        return None
    done = subprocess.run(
        ["pkcs11-tool", "--module", peer.softhsm.module, "--token-label", TOKEN, "--read-object", "--type", "cert",
         "--id", KEY_ID],
        capture_output=True, env=peer.softhsm.env(), check=True,
    )  # fmt: skip
    return done.stdout


def remove_certificate(peer: CmpPeer) -> None:
    if token_certificate(peer) is not None:
        pkcs11_tool(peer.softhsm, "--delete-object", "--type", "cert", "--id", KEY_ID, token=TOKEN)


def assert_installed(peer: CmpPeer, tmp_path: Path) -> None:
    """pkcs11-tool finds the server's certificate next to the key, and openssl verifies it under the CA."""
    der = token_certificate(peer)
    assert der is not None, "no certificate with the key's CKA_ID on the token"
    expected = _openssl("x509", "-in", str(peer.certificate), "-outform", "DER").stdout
    assert der == expected
    pem = _openssl("x509", "-inform", "DER", stdin=der).stdout
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(peer.ca.root_cert), "-untrusted", str(peer.ca.sub_cert)],
        input=pem, capture_output=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr


# -- issued --------------------------------------------------------------------------------------------


def test_p10cr_with_mac_protection_and_cert_conf_installs_the_certificate(cmp_peer: CmpPeer, tmp_path: Path) -> None:
    server = cmp_peer.server("normal")
    remove_certificate(cmp_peer)
    before = server.requests()
    run = enroll(cmp_peer, tmp_path, server, "--json", trust=str(cmp_peer.trust), verbose=("-vv",))
    assert run.returncode == 0, run.stderr
    assert "POST http://127.0.0.1:8080/pkix/" in run.stderr  # -vv logs each message, never the secret
    assert_installed(cmp_peer, tmp_path)
    assert server.requests() - before == 2  # p10cr, then certConf (answered by pkiConf)
    data = json.loads(run.stdout)
    assert data["answer"]["state"] == "issued" and re.fullmatch(r"[0-9a-f]{32}", data["answer"]["request_id"])
    assert not pending(cmp_peer, tmp_path)  # nothing left once installed


def test_implicit_confirm_granted_needs_one_message(cmp_peer: CmpPeer, tmp_path: Path) -> None:
    server = cmp_peer.server("implicit", "-grant_implicitconf")
    remove_certificate(cmp_peer)
    before = server.requests()
    run = enroll(cmp_peer, tmp_path, server, implicit_confirm=True)
    assert run.returncode == 0, run.stderr
    assert server.requests() - before == 1  # the CA granted implicitConfirm: no certConf
    assert_installed(cmp_peer, tmp_path)
    # asked for, not granted: certConf all the same
    normal = cmp_peer.server("normal")
    before = normal.requests()
    run = enroll(cmp_peer, tmp_path / "not-granted", normal, implicit_confirm=True)
    assert run.returncode == 0, run.stderr
    assert normal.requests() - before == 2


@pytest.mark.parametrize("body", ["ir", "cr"])
def test_ir_and_cr_carry_a_proof_of_possession_signed_on_the_token(
    cmp_peer: CmpPeer, tmp_path: Path, body: str
) -> None:
    server = cmp_peer.server("normal")
    remove_certificate(cmp_peer)
    run = enroll(cmp_peer, tmp_path, server, "--chain", body=body)
    assert run.returncode == 0, run.stderr  # the server verified the POPO (else badPOP)
    assert_installed(cmp_peer, tmp_path)
    listing = pkcs11_tool(cmp_peer.softhsm, "-O", "--type", "cert", token=TOKEN, login=False)
    if body == "ir":  # caPubs come only with an ip: --chain put the CA certificates on the token
        assert "Test Issuing CA" in listing, run.stdout + run.stderr


def test_submit_sends_p10cr_without_the_token_and_cr_needs_enroll(cmp_peer: CmpPeer, tmp_path: Path) -> None:
    server = cmp_peer.server("normal")
    inf = tmp_path / "cmp.inf"
    inf.write_text(INF)
    request = tmp_path / "cmp.req"
    made = tokenagent(cmp_peer, tmp_path, "new", str(inf), str(request), "--token", TOKEN, "--pin-source", "env:TA_PIN")
    assert made.returncode == 0, made.stderr
    cas = write_cas(tmp_path, body="cr")
    refused = tokenagent(
        cmp_peer, tmp_path, "submit", str(request), "--config", "cmp", "--cas", str(cas), server=server
    )
    assert refused.returncode == 18
    assert "use tokenagent enroll" in one_error_line(refused)

    cas = write_cas(tmp_path)
    cert = tmp_path / "cmp.pem"
    submitted = tokenagent(
        cmp_peer, tmp_path, "submit", str(request), str(cert), "--config", "cmp", "--cas", str(cas), server=server
    )
    assert submitted.returncode == 0, submitted.stderr
    assert (
        _openssl("x509", "-in", str(cert), "-noout", "-pubkey").stdout
        == _openssl("x509", "-in", str(cmp_peer.certificate), "-noout", "-pubkey").stdout
    )


def test_granted_with_mods_and_warnings_are_issued(cmp_peer: CmpPeer, tmp_path: Path) -> None:
    for status in ("1", "4"):  # grantedWithMods, revocationWarning
        server = cmp_peer.server(f"status{status}", "-pkistatus", status)
        remove_certificate(cmp_peer)
        run = enroll(cmp_peer, tmp_path / status, server)
        assert run.returncode == 0, run.stderr
        assert_installed(cmp_peer, tmp_path)
    assert "revocationWarning" in run.stderr  # said, as a warning


# -- waiting and polling --------------------------------------------------------------------------------


def test_waiting_is_pending_and_poll_req_finishes_it(cmp_peer: CmpPeer, tmp_path: Path) -> None:
    server = cmp_peer.server("poll", "-poll_count", "2", "-check_after", "1")
    remove_certificate(cmp_peer)
    run = enroll(cmp_peer, tmp_path, server, "--json")
    assert run.returncode == 14, run.stderr
    details = json.loads(run.stdout)["details"]
    pending_id = details["pending_id"]
    assert details["state"] == "pending" and re.fullmatch(r"[0-9a-f]{32}", details["request_id"])

    # retrieve asks without the token (p10cr needs no key): pollReq -> pollRep, ask again after checkAfter
    polled = tokenagent(cmp_peer, tmp_path, "retrieve", "--pending", str(pending_id), "--json", server=server)
    assert polled.returncode == 14, polled.stderr + polled.stdout
    assert "ask again in 1 s" in one_error_line(polled)
    assert json.loads(polled.stdout)["details"]["retry_after"]
    assert token_certificate(cmp_peer) is None

    resume = ["enroll", "--resume", str(pending_id), "--pin-source", "env:TA_PIN"]

    done = tokenagent(cmp_peer, tmp_path, *resume, server=server)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "installed" in done.stdout
    assert_installed(cmp_peer, tmp_path)
    assert not pending(cmp_peer, tmp_path)


@pytest.mark.parametrize("bit", sorted(FAIL_INFO))
def test_every_fail_info_bit_has_a_stable_exit_code(bit: str) -> None:
    """The mapping table itself (docs/ca.md, CMP), bit by bit: no bit falls through to a crash."""
    status = cmp_asn1.PKIStatusInfo({"status": "rejection", "status_string": ["said"], "fail_info": {bit}})
    answer = failure_answer(cmp_asn1.PKIStatusInfo.load(status.dump()), "said")
    kind = FAIL_INFO[bit][0]
    expected = {"rejected": 12, "credentials": 19, "config": 18, "rekey": 20, "unreachable": 16}[kind]
    assert error_for(answer, "ca").exit_code == expected
    assert bit in error_for(answer, "ca").one_line()


# -- refused: every answer keeps the request pending ------------------------------------------------------

REFUSALS = [
    # (server, its options, exit code, what the one line says)
    ("badpop", ("-pkistatus", "2", "-failure", "9", "-statusstring", "POP does not verify"), 12, "badPOP"),
    ("duplicate", ("-pkistatus", "2", "-failure", "26"), 20, "duplicateCertReq"),
    ("unavailable", ("-pkistatus", "2", "-failure", "24"), 16, "systemUnavail"),
    ("notauthorized", ("-pkistatus", "2", "-failure", "23"), 12, "notAuthorized"),
    ("wrongauthority", ("-pkistatus", "2", "-failure", "6"), 18, "wrongAuthority"),
    ("badcheck", ("-pkistatus", "2", "-failure", "1"), 19, "badMessageCheck"),
    ("error", ("-send_error",), 12, "error processing message"),
]


@pytest.mark.parametrize(("name", "options", "code", "says"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_map_to_stable_exit_codes_and_keep_the_request(
    cmp_peer: CmpPeer, tmp_path: Path, name: str, options: tuple[str, ...], code: int, says: str
) -> None:
    server = cmp_peer.server(name, *options)
    remove_certificate(cmp_peer)
    run = enroll(cmp_peer, tmp_path, server, "--json")
    assert run.returncode == code, run.stderr
    assert says in one_error_line(run)
    assert token_certificate(cmp_peer) is None
    pending_id = json.loads(run.stdout)["details"]["pending_id"]
    assert [r["id"] for r in pending(cmp_peer, tmp_path)] == [pending_id]


def test_wrong_shared_secret_is_refused_credentials_and_resume_finishes(cmp_peer: CmpPeer, tmp_path: Path) -> None:
    server = cmp_peer.server("normal")
    remove_certificate(cmp_peer)
    inf = tmp_path / "cmp.inf"
    inf.write_text(INF)
    cas = write_cas(tmp_path)
    args = ["enroll", str(inf), "--config", "cmp", "--cas", str(cas), "--token", TOKEN, "--pin-source", "env:TA_PIN"]
    run = tokenagent(cmp_peer, tmp_path, *args, "--json", server=server, secret="not-the-secret")
    assert run.returncode == 19, run.stderr
    assert "shared secret" in one_error_line(run)
    pending_id = json.loads(run.stdout)["details"]["pending_id"]

    resumed = tokenagent(
        cmp_peer, tmp_path, "enroll", "--resume", str(pending_id), "--config", "cmp", "--cas", str(cas),
        "--pin-source", "env:TA_PIN", server=server,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert_installed(cmp_peer, tmp_path)


def test_answers_that_do_not_verify_are_refused(cmp_peer: CmpPeer, tmp_path: Path) -> None:
    remove_certificate(cmp_peer)
    # another secret at the server, which accepts our request anyway: its cp's MAC does not verify
    forged = cmp_peer.server("forged", "-srv_secret", "pass:another-secret", "-accept_unprotected")
    run = enroll(cmp_peer, tmp_path / "mac", forged)
    assert run.returncode == 11, run.stderr
    assert "MAC does not verify" in one_error_line(run)
    unprotected = cmp_peer.server("unprotected", "-send_unprotected")
    run = enroll(cmp_peer, tmp_path / "none", unprotected)
    assert run.returncode == 11, run.stderr
    assert "not protected" in one_error_line(run)
    other = tmp_path / "other.pem"
    other.write_text(OpenSslCA.create(tmp_path / "other-ca").root_cert.read_text())
    run = enroll(cmp_peer, tmp_path / "trust", cmp_peer.server("normal"), trust=str(other))
    assert run.returncode == 11, run.stderr
    assert "does not lead to a certificate of the CA trust" in one_error_line(run)
    assert token_certificate(cmp_peer) is None


def test_signed_answers_verify_against_the_trust(cmp_peer: CmpPeer, tmp_path: Path) -> None:
    server = cmp_peer.signing_server()
    remove_certificate(cmp_peer)
    run = enroll(cmp_peer, tmp_path / "untrusted", server)
    assert run.returncode == 11, run.stderr
    assert "no trust" in one_error_line(run)
    run = enroll(cmp_peer, tmp_path / "trusted", server, "--chain", trust=str(cmp_peer.trust), body="ir")
    assert run.returncode == 0, run.stderr
    assert_installed(cmp_peer, tmp_path)


REVOKE = """\
import sys
from tokenagent.ca.profiles import open_connector, resolve_config
connector = open_connector(resolve_config("cmp", cas_files=[sys.argv[1]]))
for path in sys.argv[2:]:
    answer = connector.revoke(open(path, "rb").read(), 1)  # keyCompromise
    print(answer.state, answer.message)
connector.close()
"""


def test_rr_revokes_the_certificate_the_ca_knows_and_not_another(cmp_peer: CmpPeer, tmp_path: Path) -> None:
    server = cmp_peer.server("normal")
    ours, other = tmp_path / "ours.der", tmp_path / "other.der"
    ours.write_bytes(_openssl("x509", "-in", str(cmp_peer.certificate), "-outform", "DER").stdout)
    other.write_bytes(cmp_peer.ca.sub_der)
    env = cmp_peer.softhsm.env(CMP_SECRET=SECRET)
    done = subprocess.run(
        [*server.netns(), sys.executable, "-c", REVOKE, str(write_cas(tmp_path)), str(ours), str(other)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    revoked, refused = done.stdout.splitlines()
    assert revoked == "revoked revoked"
    assert refused.startswith("rejected") and "wrong certificate to revoke" in refused


# -- the way to the CA fails ----------------------------------------------------------------------------


class CaptureServer:
    """127.0.0.1: records each POST body; answers random bytes typed application/pkixcmp."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                owner.bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                owner.content_types.append(self.headers.get("Content-Type") or "")
                body = os.urandom(300)
                self.send_response(200)
                self.send_header("Content-Type", "application/pkixcmp")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.content_types: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def capture() -> Iterator[CaptureServer]:
    server = CaptureServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyServer]:
    server = FaultyServer()
    yield server
    server.stop()


def test_what_is_sent_decodes_with_openssl_asn1parse(cmp_peer: CmpPeer, capture: CaptureServer, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{capture.port}/garbage/"
    run = enroll(cmp_peer, tmp_path / "p10cr", None, url=url)
    assert run.returncode == 17, run.stderr  # garbage typed application/pkixcmp: not a CMP message
    assert "not a CMP message" in one_error_line(run)
    run = enroll(cmp_peer, tmp_path / "ir", None, url=url, body="ir", implicit_confirm=True)
    assert run.returncode == 17, run.stderr
    p10cr, ir = capture.bodies[-2:]
    assert set(capture.content_types) == {"application/pkixcmp"}
    for message, tag in ((p10cr, "cont [ 4 ]"), (ir, "cont [ 0 ]")):
        parsed = _openssl("asn1parse", "-inform", "DER", "-i", stdin=message).stdout.decode()
        assert ":password based MAC" in parsed and ":sha256" in parsed and ":hmacWithSHA256" in parsed
        assert f":{REFERENCE}" in parsed  # senderKID
        assert re.search(rf"d=1 .*{re.escape(tag)}", parsed), parsed  # the body: p10cr [4], ir [0]
    ir_parsed = _openssl("asn1parse", "-inform", "DER", "-i", stdin=ir).stdout.decode()
    assert ":1.3.6.1.5.5.7.4.13" in ir_parsed or "implicitConfirm" in ir_parsed  # generalInfo
    assert ":ecdsa-with-SHA256" in ir_parsed  # the POPO's algorithm


FAILURES = [("refused", 16, "refused"), ("500", 16, "HTTP 500"), ("nothttp", 17, "not an HTTP answer")]


@pytest.mark.parametrize(("mode", "code", "says"), FAILURES, ids=[f[0] for f in FAILURES])
def test_transport_failures_keep_the_request_and_resume_finishes(
    cmp_peer: CmpPeer, faulty: FaultyServer, tmp_path: Path, mode: str, code: int, says: str
) -> None:
    remove_certificate(cmp_peer)
    server = cmp_peer.server("normal")
    # "refused": a port nothing listens on in the server's namespace; the others: the faulty server
    url = f"http://127.0.0.1:{PORT + 1}/pkix/" if mode == "refused" else faulty.url(mode, "pkix/")
    run = enroll(cmp_peer, tmp_path, server if mode == "refused" else None, "--json", url=url)
    assert run.returncode == code, run.stderr
    assert says in one_error_line(run)
    pending_id = json.loads(run.stdout)["details"]["pending_id"]
    (tmp_path / "good").mkdir()
    cas = write_cas(tmp_path / "good")
    resumed = tokenagent(
        cmp_peer, tmp_path, "enroll", "--resume", str(pending_id), "--config", "cmp", "--cas", str(cas),
        "--pin-source", "env:TA_PIN", server=server,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert_installed(cmp_peer, tmp_path)


# -- configuration ---------------------------------------------------------------------------------------


def test_configuration_mistakes_are_one_line_errors_before_anything_is_sent(cmp_peer: CmpPeer, tmp_path: Path) -> None:
    server = cmp_peer.server("normal")
    before = server.requests()
    run = enroll(cmp_peer, tmp_path / "body", server, body="rr")
    assert run.returncode == 18 and "body = 'rr'" in one_error_line(run)
    run = enroll(cmp_peer, tmp_path / "secret", server, secret_source=None)
    assert run.returncode == 18 and "secret_source and reference" in one_error_line(run)
    run = enroll(cmp_peer, tmp_path / "recipient", server, recipient="not a name")
    assert run.returncode == 18 and "recipient" in one_error_line(run)
    assert server.requests() == before
