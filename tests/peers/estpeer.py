"""An EST server (RFC 7030, with RFC 8951's clarifications) for the test suite: no EST server is
packaged for Debian, so this one follows the RFC and issues with the `openssl ca` command line
(tests/ca.py). Nothing here imports tokenagent: the peer must stay independent of the code it tests.

- TLS (1.2 or newer) with its own server certificate for IP 127.0.0.1, issued by the test root;
  a client certificate is asked for but optional (RFC 7030 3.3.2), and verified against the CA.
- ``GET  /.well-known/est[/LABEL]/cacerts``: the CA certificates, certs-only PKCS#7, base64
  (``application/pkcs7-mime; smime-type=certs-only``, ``Content-Transfer-Encoding: base64``),
  without authentication (RFC 7030 4.1.1).
- ``GET  .../csrattrs``: the label's CsrAttrs (``application/csrattrs``, base64 DER), or 204;
  ``csrattrs_fail`` answers it with that status instead (a text/plain reason).
- ``POST .../simpleenroll``: a base64 PKCS#10 (``application/pkcs10``). The client must be
  authenticated, by a verified TLS client certificate or by HTTP Basic (RFC 7030 3.2.3); else
  401 with ``WWW-Authenticate: Basic``. The CSR's signature is checked with ``openssl req -verify``.
- ``POST .../simplereenroll``: as simpleenroll, but the client must authenticate with the TLS
  client certificate being renewed, and the CSR's subject and subjectAltName must be that
  certificate's (RFC 7030 4.2.2): no certificate 403, another subject 400.
- 200 with the issued certificate alone in a certs-only PKCS#7 (RFC 7030 4.2.3); 202 with
  Retry-After while a request is held (the label's ``pend``: how many times the same CSR is held;
  re-polling is sending the same request again); errors are 4xx/5xx with a text/plain reason
  (RFC 7030 4.2.3, erratum 5108); 404 for unknown operations; 415 for another content type.

Labels are configured with `Label` (``peer.labels["name"] = Label(...)``); the empty label is the
default CA. ``fail`` answers every enrollment with that status, ``garbage`` with a 200 whose body
is not base64 PKCS#7, ``basic=False`` refuses Basic (certificate only).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pyasn1.codec.der import decoder, encoder
from pyasn1.type import namedtype, univ
from pyasn1_modules import rfc2986, rfc5280

from tests.ca import OpenSslCA, openssl

PREFIX = "/.well-known/est"
OID_SUBJECT_ALT_NAME = "2.5.29.17"
OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"


class AttrOrOID(univ.Choice):
    """RFC 7030 4.5.2: AttrOrOID ::= CHOICE { oid OBJECT IDENTIFIER, attribute Attribute }."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("oid", univ.ObjectIdentifier()),
        namedtype.NamedType("attribute", rfc5280.Attribute()),
    )


class CsrAttrs(univ.SequenceOf):
    """RFC 7030 4.5.2: CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID."""

    componentType = AttrOrOID()


def csr_attrs(*items: str | tuple[str, list[str | bytes]]) -> bytes:
    """DER CsrAttrs: an OID as a string, an attribute as (type OID, [values]); a value is an OID
    (a string) or the DER of any other value (e.g. `extensions`, RFC 9908's extensionRequest form)."""
    attrs = CsrAttrs()
    for item in items:
        choice = AttrOrOID()
        if isinstance(item, str):
            choice["oid"] = univ.ObjectIdentifier(item)
        else:
            kind, values = item
            attribute = rfc5280.Attribute()
            attribute["type"] = univ.ObjectIdentifier(kind)
            for value in values:
                der = value if isinstance(value, bytes) else encoder.encode(univ.ObjectIdentifier(value))
                attribute["values"].append(der)
            choice["attribute"] = attribute
        attrs.append(choice)
    return encoder.encode(attrs)


def extensions(*items: tuple[str, bool, bytes]) -> bytes:
    """DER Extensions (RFC 5280) from (OID, critical, the extnValue's DER) triples."""
    result = rfc5280.Extensions()
    for oid, critical, value in items:
        extension = rfc5280.Extension()
        extension["extnID"] = univ.ObjectIdentifier(oid)
        extension["critical"] = critical
        extension["extnValue"] = value
        result.append(extension)
    return encoder.encode(result)


@dataclass
class Label:
    pend: int = 0  # how many times a CSR is answered 202 before it is issued
    retry_after: int = 1  # seconds, in the 202's Retry-After
    fail: int | None = None  # answer enrollments with this HTTP status
    garbage: bool = False  # answer enrollments 200 with a body that is not base64 PKCS#7
    basic: bool = True  # HTTP Basic is accepted (else only a TLS client certificate)
    csrattrs: bytes | None = None  # DER CsrAttrs; None: 204 No Content
    csrattrs_fail: int | None = None  # answer csrattrs with this HTTP status


@dataclass
class Seen:
    """One enrollment request as the peer received it, for the tests' assertions."""

    operation: str
    label: str
    headers: dict[str, str]
    csr: bytes | None
    client_subject: str | None  # the verified TLS client certificate's subject, openssl's one-line form
    status: int


@dataclass
class EstPeer:
    directory: Path
    user: str
    password: str
    ca: OpenSslCA = field(init=False)
    labels: dict[str, Label] = field(default_factory=lambda: {"": Label()})
    seen: list[Seen] = field(default_factory=list)
    gets: list[tuple[str, str]] = field(default_factory=list)  # (label, operation) of each GET served

    def __post_init__(self) -> None:
        self.ca = OpenSslCA.create(self.directory / "ca", key="ec")
        self._issue_lock = threading.Lock()
        self._held: dict[tuple[str, str], int] = {}
        self.tls_bundle = self.ca.root_cert  # what a client trusts for the TLS server certificate
        self._server_tls()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(self.directory / "server-chain.pem", self.directory / "server.key")
        self.context.load_verify_locations(cafile=str(self.directory / "client-trust.pem"))
        self.context.verify_mode = ssl.CERT_OPTIONAL
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="est-peer", daemon=True)
        self.thread.start()

    def url(self, label: str = "") -> str:
        return f"https://127.0.0.1:{self.port}" + (f"/{label}" if label else "")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def issue_client_certificate(self, csr: bytes, out: Path) -> bytes:
        """A certificate from the EST CA for a CSR (what a first enrollment gave); DER returned."""
        with self._issue_lock:
            return self.ca.issue(csr, out)

    def _server_tls(self) -> None:
        key, csr = self.directory / "server.key", self.directory / "server.csr"
        openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
            "-out", csr, "-subj", "/O=tokenagent tests/CN=est peer", "-config", self.ca.config,
        )  # fmt: skip
        cert = self.directory / "server.pem"
        self.ca.issue(
            csr.read_bytes(),
            cert,
            extensions="subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n"
            "keyUsage = critical,digitalSignature",
            copy_extensions=False,
        )
        (self.directory / "server-chain.pem").write_bytes(cert.read_bytes() + self.ca.sub_cert.read_bytes())
        trust = self.ca.sub_cert.read_bytes() + self.ca.root_cert.read_bytes()
        (self.directory / "client-trust.pem").write_bytes(trust)

    # -- operations ----------------------------------------------------------------------------------

    def certs_only(self, certificates: list[bytes]) -> bytes:
        """A certs-only SignedData (DER) with ``certificates`` (DER), made by openssl crl2pkcs7."""
        with tempfile.TemporaryDirectory() as work:
            args: list[str | Path] = ["crl2pkcs7", "-nocrl", "-outform", "DER"]
            for number, der in enumerate(certificates):
                path = Path(work) / f"{number}.pem"
                path.write_bytes(openssl("x509", "-inform", "DER", stdin=der))
                args += ["-certfile", path]
            return openssl(*args)

    def enroll(self, label: str, csr: bytes, client: bytes | None, reenroll: bool) -> tuple[int, bytes, str]:
        """(status, body, content type) for a verified, authenticated CSR."""
        settings = self.labels[label]
        if reenroll:
            problem = _renewal_problem(csr, client)
            if problem:
                return 400, problem.encode(), "text/plain"
        key = (label, hashlib.sha256(csr).hexdigest())
        with self._issue_lock:
            held = self._held.get(key, 0)
            if held < settings.pend:
                self._held[key] = held + 1
                return 202, b"the request waits for a CA operator's approval\n", "text/plain"
            with tempfile.TemporaryDirectory() as work:
                leaf = self.ca.issue(csr, Path(work) / "leaf.pem")
        return 200, _base64(self.certs_only([leaf])), "application/pkcs7-mime; smime-type=certs-only"


def _base64(der: bytes) -> bytes:
    """RFC 2045 base64 in lines of 64 characters, as RFC 8951 clarifies EST's transfer encoding."""
    text = base64.b64encode(der)
    return b"\r\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + b"\r\n"


def _subject_and_san(certificate_info: Any, extensions: Any) -> tuple[bytes, bytes | None]:
    san = None
    for extension in extensions or []:
        if str(extension["extnID"]) == OID_SUBJECT_ALT_NAME:
            san = bytes(extension["extnValue"])
    return encoder.encode(certificate_info["subject"]), san


def _renewal_problem(csr_der: bytes, client_der: bytes | None) -> str:
    """RFC 7030 4.2.2: the renewal's subject and subjectAltName are those of the certificate renewed."""
    assert client_der is not None
    certificate = decoder.decode(client_der, asn1Spec=rfc5280.Certificate())[0]["tbsCertificate"]
    wanted = _subject_and_san(certificate, certificate["extensions"] if certificate["extensions"].isValue else None)
    info = decoder.decode(csr_der, asn1Spec=rfc2986.CertificationRequest())[0]["certificationRequestInfo"]
    requested: list[Any] = []
    for attribute in info["attributes"]:
        if str(attribute["type"]) == OID_EXTENSION_REQUEST:
            requested = list(decoder.decode(bytes(attribute["values"][0]), asn1Spec=rfc5280.Extensions())[0])
    got = _subject_and_san(info, requested)
    if got[0] != wanted[0]:
        return "the subject of a re-enrollment must be the subject of the certificate renewed\n"
    if got[1] != wanted[1]:
        return "the subjectAltName of a re-enrollment must be that of the certificate renewed\n"
    return ""


def _verified_csr(body: bytes) -> bytes | str:
    """The DER PKCS#10 of a base64 body whose signature openssl verifies, or the reason why not."""
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return "the body is not base64 (Content-Transfer-Encoding: base64)\n"
    checked = subprocess.run(
        ["openssl", "req", "-inform", "DER", "-noout", "-verify"], input=der, capture_output=True, check=False
    )
    if checked.returncode != 0:
        return "the body is not a PKCS#10 request whose signature verifies\n"
    return der


def _handler(peer: EstPeer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "estpeer/1"

        def setup(self) -> None:
            # TLS per connection, in the connection's thread: a failed handshake ends only it
            self.request = peer.context.wrap_socket(self.request, server_side=True)
            super().setup()

        def handle(self) -> None:
            with contextlib.suppress(OSError):
                super().handle()

        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            label, operation = self._route()
            if operation is None:
                return
            peer.gets.append((label, operation))
            if operation == "cacerts":
                body = _base64(peer.certs_only([peer.ca.sub_der, peer.ca.root_der]))
                self._send(200, body, "application/pkcs7-mime; smime-type=certs-only", base64=True)
            elif operation == "csrattrs":
                attrs = peer.labels[label].csrattrs
                failed = peer.labels[label].csrattrs_fail
                if failed is not None:
                    self._send(failed, b"csrattrs are not available\n", "text/plain")
                elif attrs is None:
                    self._send(204, b"", None)
                else:
                    self._send(200, _base64(attrs), "application/csrattrs", base64=True)
            else:
                self._send(405, b"use POST\n", "text/plain", {"Allow": "POST"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            label, operation = self._route()
            if operation is None:
                return
            if operation not in ("simpleenroll", "simplereenroll"):
                self._send(405, b"use GET\n", "text/plain", {"Allow": "GET"})
                return
            self.csr: bytes | None = None
            status = self._enroll(label, operation, body)
            peer.seen.append(
                Seen(operation, label, dict(self.headers.items()), self.csr, self._client_subject(), status)
            )

        def _enroll(self, label: str, operation: str, body: bytes) -> int:
            settings = peer.labels[label]
            client = self.request.getpeercert(binary_form=True)
            if operation == "simplereenroll" and client is None:
                return self._send(403, b"re-enrollment needs the certificate being renewed (TLS)\n", "text/plain")
            if client is None and not self._basic_ok(settings):
                return self._send(
                    401, b"authentication required\n", "text/plain", {"WWW-Authenticate": 'Basic realm="est"'}
                )
            media = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if media != "application/pkcs10":
                return self._send(415, b"send application/pkcs10\n", "text/plain")
            if settings.fail is not None:
                return self._send(settings.fail, b"the CA failed (configured)\n", "text/plain")
            if settings.garbage:
                return self._send(200, b"%%% this is not base64 %%%\n", "application/pkcs7-mime; smime-type=certs-only")
            csr = _verified_csr(body)
            if isinstance(csr, str):
                return self._send(400, csr.encode(), "text/plain")
            self.csr = csr
            status, answer, content_type = peer.enroll(label, csr, client, operation == "simplereenroll")
            extra = {"Retry-After": str(settings.retry_after)} if status == 202 else {}
            return self._send(status, answer, content_type, extra, base64=status == 200)

        def _basic_ok(self, settings: Label) -> bool:
            said = self.headers.get("Authorization") or ""
            if not settings.basic or not said.lower().startswith("basic "):
                return False
            try:
                user, _, password = base64.b64decode(said[6:].strip()).decode().partition(":")
            except (binascii.Error, ValueError):
                return False
            good_user = hmac.compare_digest(user.encode(), peer.user.encode())
            return good_user and hmac.compare_digest(password.encode(), peer.password.encode())

        def _client_subject(self) -> str | None:
            client = self.request.getpeercert()
            if not client:
                return None
            return ",".join(f"{k}={v}" for rdn in client.get("subject", ()) for k, v in rdn)

        def _route(self) -> tuple[str, str | None]:
            path = self.path.split("?", 1)[0]
            parts = path[len(PREFIX) :].strip("/").split("/") if path.startswith(PREFIX + "/") else []
            label, operation = ("", parts[0]) if len(parts) == 1 else (tuple(parts) if len(parts) == 2 else ("", ""))
            known = ("cacerts", "csrattrs", "simpleenroll", "simplereenroll")
            if label not in peer.labels or operation not in known:
                self._send(404, b"no such EST operation or label\n", "text/plain")
                return label, None
            return label, operation

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str | None,
            extra: dict[str, str] | None = None,
            *,
            base64: bool = False,
        ) -> int:
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            if base64:
                self.send_header("Content-Transfer-Encoding", "base64")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
            return status

    return Handler


@contextlib.contextmanager
def running(directory: Path, user: str, password: str) -> Iterator[EstPeer]:
    peer = EstPeer(directory, user, password)
    try:
        yield peer
    finally:
        peer.stop()


if __name__ == "__main__":  # manual use: python -m tests.peers.estpeer DIR USER PASSWORD
    import sys

    with running(Path(sys.argv[1]), sys.argv[2], sys.argv[3]) as server:
        print(f"EST at {server.url()} (TLS trust: {server.tls_bundle})", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
