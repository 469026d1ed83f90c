"""The EST peer itself, checked with independent clients only: curl and openssl (RFC 7030 / 8951)."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.estpeer import EstPeer, Label

USER, PASSWORD = "peer-user", "Peer-Pass-5d21"


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EstPeer]:
    server = EstPeer(tmp_path_factory.mktemp("estpeer-self"), USER, PASSWORD)
    server.labels["pend"] = Label(pend=1, retry_after=7)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def csr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base64 PKCS#10 made by openssl."""
    work = tmp_path_factory.mktemp("estpeer-csr")
    der = subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(work / "k.pem"), "-subj", "/CN=peer check", "-outform", "DER"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    path = work / "csr.b64"
    path.write_bytes(base64.encodebytes(der))
    return path


def curl(peer: EstPeer, path: str, *args: str) -> tuple[str, bytes]:
    """(status line and headers, body) of one curl request."""
    done = subprocess.run(
        ["curl", "-sS", "-i", "--cacert", str(peer.tls_bundle), *args, f"{peer.url()}/.well-known/est{path}"],
        capture_output=True,
        check=True,
    )
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    return head.decode(), body


def post(peer: EstPeer, path: str, csr: Path, *args: str) -> tuple[str, bytes]:
    return curl(peer, path, "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{csr}", *args)


def test_simpleenroll_with_basic_answers_a_base64_certs_only_pkcs7(peer: EstPeer, csr: Path, tmp_path: Path) -> None:
    head, body = post(peer, "/simpleenroll", csr, "-u", f"{USER}:{PASSWORD}")
    assert head.startswith("HTTP/1.1 200")
    assert "Content-Type: application/pkcs7-mime; smime-type=certs-only" in head
    assert "Content-Transfer-Encoding: base64" in head
    der = base64.b64decode(body)
    certs = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-print_certs"], input=der, capture_output=True, check=True
    ).stdout
    assert certs.count(b"BEGIN CERTIFICATE") == 1 and b"CN = peer check" in certs
    (tmp_path / "leaf.pem").write_bytes(certs)
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(peer.ca.root_cert), "-untrusted", str(peer.ca.sub_cert),
         str(tmp_path / "leaf.pem")],
        capture_output=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr


def test_authentication_content_type_and_routes(peer: EstPeer, csr: Path) -> None:
    head, _ = post(peer, "/simpleenroll", csr)
    assert head.startswith("HTTP/1.1 401") and 'WWW-Authenticate: Basic realm="est"' in head
    head, _ = post(peer, "/simpleenroll", csr, "-u", f"{USER}:wrong")
    assert head.startswith("HTTP/1.1 401")
    head, _ = post(peer, "/simplereenroll", csr, "-u", f"{USER}:{PASSWORD}")
    assert head.startswith("HTTP/1.1 403")  # re-enrollment needs the certificate being renewed
    head, _ = curl(peer, "/simpleenroll", "-u", f"{USER}:{PASSWORD}", "--data-binary", "x", "-H", "Content-Type: a/b")
    assert head.startswith("HTTP/1.1 415")
    head, body = post(peer, "/simpleenroll", Path("/dev/null"), "-u", f"{USER}:{PASSWORD}")
    assert head.startswith("HTTP/1.1 400") and b"PKCS#10" in body
    assert curl(peer, "/serverkeygen")[0].startswith("HTTP/1.1 404")
    assert curl(peer, "/nolabel/cacerts")[0].startswith("HTTP/1.1 404")
    assert curl(peer, "/csrattrs")[0].startswith("HTTP/1.1 204")


def test_a_held_request_is_202_with_retry_after_then_issued(peer: EstPeer, csr: Path) -> None:
    first, _ = curl(
        peer, "/pend/simpleenroll", "-u", f"{USER}:{PASSWORD}", "-H", "Content-Type: application/pkcs10",
        "--data-binary", f"@{csr}",
    )  # fmt: skip
    assert first.startswith("HTTP/1.1 202") and "Retry-After: 7" in first
    again, _ = curl(
        peer, "/pend/simpleenroll", "-u", f"{USER}:{PASSWORD}", "-H", "Content-Type: application/pkcs10",
        "--data-binary", f"@{csr}",
    )  # fmt: skip
    assert again.startswith("HTTP/1.1 200")
