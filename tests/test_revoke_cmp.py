"""`tokenagent revoke-request --config CMP-CA`: a CMP rr (RFC 4210 5.3.9) against OpenSSL 3.0's `openssl cmp`
mock server.

The mock server (tests/peers/cmpserver.py, in a private network namespace; every `tokenagent` run
joins it with nsenter) revokes only its own ``-rsp_cert``: the module issues that certificate and a
second one from the same CA (same issuer, another serial number), which the server refuses. No
token is involved: the rr is protected with the profile's shared secret (PasswordBasedMac). What
tokenagent sends is decoded with `openssl asn1parse` from a capture server on 127.0.0.1.
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

from tests.ca import OpenSslCA, openssl
from tests.conftest import Run
from tests.peers.cmpserver import PORT, CmpServer, Servers
from tests.peers.faulty import FaultyServer

SECRET = "rr-Shared-Secret-3f9a"  # distinctive: the leak check cannot match anything else by chance
REFERENCE = "8150"
CMP_URL = f"http://127.0.0.1:{PORT}/pkix/"


@dataclass
class RrPeer:
    servers: Servers
    ca: OpenSslCA
    ours: Path  # the server's -rsp_cert, the one certificate it revokes (PEM)
    other: Path  # issued by the same CA, another serial number: refused
    base: Path

    def server(self, name: str = "normal", *extra: str) -> CmpServer:
        return self.servers.get(name, *extra)


@pytest.fixture(scope="module")
def rr_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RrPeer]:
    base = tmp_path_factory.mktemp("rr")
    ca = OpenSslCA.create(base / "ca")
    certificates = []
    for name in ("ours", "other"):
        key, csr = base / f"{name}.key", base / f"{name}.csr"
        openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
            "-subj", f"/O=tokenagent tests/CN=rr {name}", "-out", csr,
        )  # fmt: skip
        ca.issue(csr, base / f"{name}.pem")
        certificates.append(base / f"{name}.pem")
    trust = base / "trust.pem"
    trust.write_text(ca.sub_cert.read_text() + ca.root_cert.read_text())
    servers = Servers(base / "servers", certificates[0], trust, SECRET, REFERENCE)
    try:
        yield RrPeer(servers, ca, certificates[0], certificates[1], base)
    finally:
        servers.stop()


# -- helpers -------------------------------------------------------------------------------------------


def write_cas(tmp_path: Path, url: str = CMP_URL, **keys: object) -> Path:
    """A cas.toml with the profile [ca.cmp]; ``keys`` override the defaults (None drops one)."""
    values: dict[str, object] = {"url": f"cmp+{url}", "secret_source": "env:CMP_SECRET", "reference": REFERENCE}
    values.update(keys)
    lines = ["[ca.cmp]", *(f"{key} = {json.dumps(value)}" for key, value in values.items() if value is not None)]
    path = tmp_path / "cas.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def revoke(
    tmp_path: Path, certificate: Path, *args: str, server: CmpServer | None = None, secret: str = SECRET, **keys: object
) -> Run:
    """`tokenagent revoke-request --cert CERTIFICATE --config cmp --cas ...` (in the server's namespace)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cas = write_cas(tmp_path, **keys)
    command = ["revoke-request", "--cert", str(certificate), "--config", "cmp", "--cas", str(cas), *args]
    return tokenagent(tmp_path, *command, server=server, secret=secret)


def tokenagent(tmp_path: Path, *args: str, server: CmpServer | None = None, secret: str = SECRET) -> Run:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOKENAGENT_")}
    env.update(
        CMP_SECRET=secret, TOKENAGENT_STATE_DIR=str(tmp_path / "state"), XDG_CONFIG_HOME=str(tmp_path / "config")
    )
    prefix = server.netns() if server is not None else []
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "tokenagent", *args],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip
    assert SECRET not in done.stdout + done.stderr, "the shared secret leaked"
    return Run(done.returncode, done.stdout, done.stderr)


def one_error_line(run: Run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith("tokenagent: error:")]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    return lines[0]


def serial_of(certificate: Path) -> int:
    text = openssl("x509", "-in", certificate, "-noout", "-serial").decode()
    return int(text.strip().split("=", 1)[1], 16)


# -- revoked and refused -------------------------------------------------------------------------------


def test_rr_revokes_the_certificate_the_ca_issued(rr_peer: RrPeer, tmp_path: Path) -> None:
    server = rr_peer.server()
    before = server.requests()
    run = revoke(tmp_path, rr_peer.ours, "--reason", "keyCompromise", server=server)
    assert run.returncode == 0, run.stderr
    serial = serial_of(rr_peer.ours)
    assert run.stdout.startswith(f"revoked by cmp ({CMP_URL}) (keyCompromise): ")
    said = f"serial number 0x{serial:x} issued by O=tokenagent tests, CN=Test Issuing CA\n"
    assert said in run.stdout
    assert server.requests() - before == 1  # rr -> rp: one message, no confirmation

    run = revoke(tmp_path / "json", rr_peer.ours, "--json", server=server)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["state"] == "revoked" and data["serial"] == f"{serial:x}" and data["reason"] == "unspecified"
    assert data["ca"] == f"cmp ({CMP_URL})"
    assert not (tmp_path / "json" / "state" / "pending.sqlite3").exists()  # nothing to keep


def test_another_certificate_is_refused_with_the_ca_s_words(rr_peer: RrPeer, tmp_path: Path) -> None:
    run = revoke(tmp_path, rr_peer.other, "--reason", "superseded", "--json", server=rr_peer.server())
    assert run.returncode == 12, run.stderr
    line = one_error_line(run)
    # an error message, not an rp: its statusString, errorDetails and failInfo
    assert "rejected the request: request not accepted" in line
    assert "wrong certificate to revoke" in line and "(badRequest)" in line
    details = json.loads(run.stdout)["details"]
    assert details["state"] == "rejected" and details["serial"] == f"{serial_of(rr_peer.other):x}"
    assert details["reason"] == "superseded"


def test_a_rejection_status_maps_by_fail_info(rr_peer: RrPeer, tmp_path: Path) -> None:
    server = rr_peer.server("certrevoked", "-pkistatus", "2", "-failure", "10", "-statusstring", "already revoked")
    run = revoke(tmp_path, rr_peer.ours, server=server)
    assert run.returncode == 12, run.stderr
    line = one_error_line(run)
    assert "already revoked (certRevoked)" in line and "the certificate is already revoked" in line


def test_wrong_shared_secret_is_refused_credentials(rr_peer: RrPeer, tmp_path: Path) -> None:
    run = revoke(tmp_path, rr_peer.ours, server=rr_peer.server(), secret="not-the-secret")
    assert run.returncode == 19, run.stderr
    assert "the CA holds another secret (check secret_source and reference)" in one_error_line(run)


# -- the way to the CA fails -----------------------------------------------------------------------------


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
                body = os.urandom(300)
                self.send_response(200)
                self.send_header("Content-Type", "application/pkixcmp")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/pkix/"
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


def test_the_rr_decodes_with_openssl_asn1parse(rr_peer: RrPeer, capture: CaptureServer, tmp_path: Path) -> None:
    run = revoke(tmp_path / "reason", rr_peer.ours, "--reason", "keyCompromise", url=capture.url)
    assert run.returncode == 17, run.stderr  # garbage typed application/pkixcmp: not a CMP message
    assert "not a CMP message" in one_error_line(run)
    run = revoke(tmp_path / "none", rr_peer.ours, url=capture.url)
    assert run.returncode == 17, run.stderr
    with_reason, unspecified = capture.bodies[-2:]

    parsed = openssl("asn1parse", "-inform", "DER", "-i", stdin=with_reason).decode()
    assert ":password based MAC" in parsed and ":hmacWithSHA256" in parsed and f":{REFERENCE}" in parsed
    assert re.search(r"d=1 .*cont \[ 11 \]", parsed), parsed  # the body: rr [11]
    # certDetails: issuer [3] (explicit: a Name), serialNumber [1] (implicit INTEGER)
    issuer = re.search(r"d=5 .*cons: +cont \[ 3 \] *\n((.*d=([6-9]|\d\d) .*\n)+)", parsed)  # all below it
    assert issuer is not None, parsed
    values = re.findall(r"prim: +\S+ +:(.*?) *$", issuer[1], re.M)
    assert values == ["organizationName", "tokenagent tests", "commonName", "Test Issuing CA"], parsed
    # asn1parse shows an implicitly tagged value only as "prim: cont [ 1 ]": take its bytes where it says they are
    found = re.search(r"^\s*(\d+):d=5\s+hl=(\d+) l=\s*(\d+) prim:\s+cont \[ 1 \]", parsed, re.M)
    assert found is not None, parsed
    start = int(found[1]) + int(found[2])
    assert int.from_bytes(with_reason[start : start + int(found[3])], "big") == serial_of(rr_peer.ours)
    # crlEntryDetails: the reasonCode extension, ENUMERATED 1 (keyCompromise)
    assert ":X509v3 CRL Reason Code" in parsed
    assert re.search(r"OCTET STRING\s+\[HEX DUMP\]:0A0101", parsed), parsed
    # RFC 5280 5.3.1: "unspecified" leaves the reason code out
    assert ":X509v3 CRL Reason Code" not in openssl("asn1parse", "-inform", "DER", "-i", stdin=unspecified).decode()


FAILURES = [("refused", 16, "refused"), ("500", 16, "HTTP 500"), ("nothttp", 17, "not an HTTP answer")]


@pytest.mark.parametrize(("mode", "code", "says"), FAILURES, ids=[f[0] for f in FAILURES])
def test_transport_failures_are_one_line_errors(
    rr_peer: RrPeer, faulty: FaultyServer, tmp_path: Path, mode: str, code: int, says: str
) -> None:
    # "refused": a port nothing listens on in the server's namespace; the others: the faulty server
    url = f"http://127.0.0.1:{PORT + 1}/pkix/" if mode == "refused" else faulty.url(mode, "pkix/")
    server = rr_peer.server() if mode == "refused" else None
    run = revoke(tmp_path, rr_peer.ours, "--json", server=server, url=url)
    assert run.returncode == code, run.stderr
    assert says in one_error_line(run)
    assert json.loads(run.stdout)["exit_code"] == code


# -- usage and configuration -------------------------------------------------------------------------------


def test_usage_and_configuration_mistakes_send_nothing(rr_peer: RrPeer, tmp_path: Path) -> None:
    server = rr_peer.server()
    before = server.requests()
    cas = write_cas(tmp_path)
    run = tokenagent(tmp_path, "revoke-request", "--cert", str(rr_peer.ours), "--config", "scep+http://127.0.0.1/scep")
    assert run.returncode == 2, run.stderr
    assert "tokenagent sends revocation requests only to cmp CAs" in one_error_line(run)
    run = tokenagent(
        tmp_path, "revoke-request", "--serial", "5", "--issuer", "CN=Test Issuing CA", "--config", "cmp", "--cas",
        str(cas),
    )  # fmt: skip
    assert run.returncode == 2 and "--cert FILE" in one_error_line(run)
    run = revoke(tmp_path, rr_peer.ours, "out.cmc", "--agent", "agent-key", server=server)
    assert run.returncode == 2 and "OUT, --agent: not with --config" in one_error_line(run)
    run = tokenagent(tmp_path, "revoke-request", "--cert", str(rr_peer.ours), "--cas", str(cas))
    assert run.returncode == 2 and "go with --config" in one_error_line(run)
    run = revoke(tmp_path / "nosecret", rr_peer.ours, server=server, secret_source=None)
    assert run.returncode == 18 and "shared secret" in one_error_line(run)  # without it, no protection for the rr
    assert server.requests() == before
