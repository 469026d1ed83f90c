"""SCEP (RFC 8894) peers for the tests: the real micromdm scepserver, and a small SCEP CA that pends.

`ScepServer` runs Debian's ``scepserver`` (2.1.0): it has only ``-port`` and listens on every
interface, so it runs in a private network namespace of its own with only loopback (``unshare -n``,
we are root); clients reach it with ``nsenter --net=/proc/PID/ns/net`` (`ScepServer.enter`).

`PendingScepCa` is a protocol-faithful SCEP server for what scepserver never does (it never pends):
an RA certificate next to the CA in GetCACert (``application/x-x509-ca-ra-cert``), PENDING then
SUCCESS after `approve`, and FAILURE with a chosen failInfo. It reads pkiMessages with the openssl
CLI (``cms -verify`` checks the requester's signature, ``cms -decrypt`` opens the envelope with the
RA key), issues with ``openssl ca`` (tests/ca.py) and encrypts the CertRep's certificate with
``openssl cms -encrypt -aes128``; only the CertRep's SignedData, whose SCEP attributes openssl
cannot add, is put together here with asn1crypto and signed by the RA key with cryptography.

The first path segment picks how it answers (the SCEP path is what follows):

  /scep/...          PENDING, then SUCCESS on CertPoll once `approve` was called for the transaction
  /fail-N/...        FAILURE with failInfo N (0 badAlg, 1 badMessageCheck, 2 badRequest, 3 badTime, 4 badCertId)
  /forge/...         a CertRep naming the RA as signer, signed by another key (must not verify)
  /stranger/...      a CertRep signed by a certificate GetCACert did not give
  /nonce/...         a CertRep whose recipientNonce is not the request's senderNonce
  /garbage/...       HTTP 200 application/x-pki-message with bytes that are no pkiMessage
  /500/...           HTTP 500 for PKIOperation
  /get/...           as /scep/, but GetCACaps offers neither POSTPKIOperation nor AES (GET, 3DES)
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from asn1crypto import algos, cms, core, csr, x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.ca import OpenSslCA, openssl

OID_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
OID_PKI_STATUS = "2.16.840.1.113733.1.9.3"
OID_FAIL_INFO = "2.16.840.1.113733.1.9.4"
OID_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
OID_RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
OID_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
OID_CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"


# -- micromdm scepserver ---------------------------------------------------------------------------


class ScepServer:
    """``scepserver`` in a private network namespace; its CA in DIR/depot."""

    def __init__(self, directory: Path, challenge: str, port: int = 8080) -> None:
        self.directory = directory
        self.challenge = challenge
        self.port = port
        self.depot = directory / "depot"
        self.log = directory / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        subprocess.run(
            ["scepserver", "ca", "-init", "-depot", str(self.depot), "-keySize", "2048"],
            check=True,
            capture_output=True,
            cwd=directory,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/scep"

    @property
    def ca_pem(self) -> Path:
        return self.depot / "ca.pem"

    def enter(self) -> list[str]:
        """The command prefix that runs a client inside the server's network namespace."""
        assert self.process is not None
        return ["nsenter", f"--net=/proc/{self.process.pid}/ns/net", "--"]

    def start(self) -> None:
        server = f"scepserver -depot {self.depot} -port {self.port} -challenge {self.challenge} -allowrenew 0 -debug"
        with self.log.open("wb") as log:
            # exec: the namespace's first process is scepserver itself, so its PID names the namespace
            self.process = subprocess.Popen(
                ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {server}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [*self.enter(), "curl", "-sf", f"{self.url}?operation=GetCACaps"], capture_output=True, check=False
            )
            if probe.returncode == 0 and b"POSTPKIOperation" in probe.stdout:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"scepserver did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


# -- the small SCEP CA that pends ---------------------------------------------------------------------


@dataclass
class Received:
    """One pkiMessage the peer read: for the tests' own checks."""

    path: str
    message: bytes  # the pkiMessage as sent (DER)
    message_type: str
    transaction_id: str
    content: bytes  # the decrypted messageData (PKCS#10 or IssuerAndSubject)


@dataclass
class PendingScepCa:
    directory: Path
    challenge: str
    ca: OpenSslCA = field(init=False)
    ra_cert: Path = field(init=False)
    ra_key: Path = field(init=False)
    forger_key: rsa.RSAPrivateKey = field(init=False)
    approved: set[str] = field(default_factory=set)
    held: dict[str, bytes] = field(default_factory=dict)  # transactionID -> the PKCS#10 (DER)
    received: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    gets: int = 0  # PKIOperations that came as GET ...&message=

    def __post_init__(self) -> None:
        self.ca = OpenSslCA.create(self.directory / "ca", key="rsa")
        self.ra_key = self.directory / "ra.key"
        self.ra_cert = self.directory / "ra.pem"
        ra_csr = self.directory / "ra.csr"
        openssl(
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", self.ra_key, "-out", ra_csr,
            "-subj", "/O=tokenagent tests/CN=Test SCEP RA",
        )  # fmt: skip
        self.ca.issue(
            ra_csr,
            self.ra_cert,
            days=365,
            extensions="keyUsage = critical,digitalSignature,keyEncipherment",
            copy_extensions=False,
        )
        self.forger_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def url(self, mode: str = "scep") -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/pkiclient.exe"

    @property
    def trust_pem(self) -> Path:
        return self.ca.root_cert

    def approve(self, transaction_id: str) -> None:
        with self.lock:
            self.approved.add(transaction_id)

    def start(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="scep-peer", daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # -- the protocol ---------------------------------------------------------------------------------

    def ca_ra_certs(self) -> bytes:
        # the issuing CA, its RA and the root above it: the client must tell them apart
        certificates = [self.ca.sub_cert, self.ra_cert, self.ca.root_cert]
        return self.ca.p7b(certificates, self.directory / "getcacert.p7b")

    def operation(self, mode: str, message: bytes) -> tuple[int, str, bytes]:
        if mode == "500":
            return 500, "text/plain", b"internal error\n"
        if mode == "garbage":
            return 200, "application/x-pki-message", secrets.token_bytes(200)
        with _work_dir(self.directory) as work:
            request = self._read(message, work, mode)
            if mode == "get":
                mode = "scep"
            if mode.startswith("fail-"):
                return 200, "application/x-pki-message", self._cert_rep(request, "2", fail_info=mode[5:])
            if request.message_type in ("19", "17"):  # PKCSReq, RenewalReq (signed with the renewed certificate)
                challenge = _challenge(request.content)
                if challenge != self.challenge:
                    return 200, "application/x-pki-message", self._cert_rep(request, "2", fail_info="2")
                with self.lock:
                    self.held[request.transaction_id] = request.content
                return 200, "application/x-pki-message", self._cert_rep(request, "3", mode=mode)
            if request.message_type == "20":  # CertPoll
                with self.lock:
                    held = self.held.get(request.transaction_id)
                    approved = request.transaction_id in self.approved
                if held is None:
                    return 200, "application/x-pki-message", self._cert_rep(request, "2", fail_info="4")
                if not approved:
                    return 200, "application/x-pki-message", self._cert_rep(request, "3", mode=mode)
                self.ca.issue(held, work / "issued.pem", days=30)
                degenerate = self.ca.p7b([work / "issued.pem"], work / "issued.p7b")
                signer = work / "requester.pem"
                envelope = openssl(
                    "cms", "-encrypt", "-binary", "-aes128", "-outform", "DER", "-recip", signer, stdin=degenerate
                )
                return 200, "application/x-pki-message", self._cert_rep(request, "0", envelope=envelope, mode=mode)
            return 200, "application/x-pki-message", self._cert_rep(request, "2", fail_info="2")

    def _read(self, message: bytes, work: Path, path: str) -> _Request:
        """Check the requester's signature and open the envelope with openssl; the attributes with asn1crypto."""
        (work / "message.der").write_bytes(message)
        signed = cms.ContentInfo.load(message)["content"]
        certificate = signed["certificates"][0].chosen
        (work / "requester.pem").write_bytes(_pem(certificate.dump()))
        # a self-signed requester certificate is its own trust anchor; a RenewalReq's signer is the
        # renewed certificate, issued by another CA here: its signature is checked, not its chain
        anchor = ["-CAfile", work / "requester.pem"] if certificate.self_signed != "no" else ["-noverify"]
        envelope = openssl(
            "cms", "-verify", "-inform", "DER", "-in", work / "message.der", "-binary", *anchor, "-purpose", "any",
        )  # fmt: skip
        content = openssl(
            "cms", "-decrypt", "-inform", "DER", "-binary", "-recip", self.ra_cert, "-inkey", self.ra_key,
            stdin=envelope,
        )  # fmt: skip
        info = signed["signer_infos"][0]
        attributes = {a["type"].dotted: core.load(a["values"][0].dump()).native for a in info["signed_attrs"]}
        request = _Request(
            message_type=str(attributes[OID_MESSAGE_TYPE]),
            transaction_id=str(attributes[OID_TRANSACTION_ID]),
            sender_nonce=bytes(attributes[OID_SENDER_NONCE]),
            requester=certificate.dump(),
            content=content,
        )
        with self.lock:
            self.received.append(Received(path, message, request.message_type, request.transaction_id, content))
        return request

    def _cert_rep(
        self,
        request: _Request,
        status: str,
        *,
        fail_info: str | None = None,
        envelope: bytes | None = None,
        mode: str = "scep",
    ) -> bytes:
        """CertRep (RFC 8894 3.3.2): SignedData by the RA, the envelope as id-data content."""
        ra = x509.Certificate.load(openssl("x509", "-in", self.ra_cert, "-outform", "DER"))
        key = serialization.load_pem_private_key(self.ra_key.read_bytes(), None)
        if mode in ("forge", "stranger"):
            key = self.forger_key
        if mode == "stranger":
            ra = x509.Certificate.load(_self_signed(self.forger_key))
        assert isinstance(key, rsa.RSAPrivateKey)
        nonce = secrets.token_bytes(16) if mode == "nonce" else request.sender_nonce
        content = envelope or b""
        values: list[tuple[str, core.Asn1Value]] = [
            ("1.2.840.113549.1.9.3", cms.ContentType("data")),
            ("1.2.840.113549.1.9.4", core.OctetString(hashes_sha256(content))),
            (OID_MESSAGE_TYPE, core.PrintableString("3")),
            (OID_PKI_STATUS, core.PrintableString(status)),
            (OID_TRANSACTION_ID, core.PrintableString(request.transaction_id)),
            (OID_SENDER_NONCE, core.OctetString(secrets.token_bytes(16))),
            (OID_RECIPIENT_NONCE, core.OctetString(nonce)),
        ]
        if fail_info is not None:
            values.append((OID_FAIL_INFO, core.PrintableString(fail_info)))
        attributes = _Attributes([_Attribute({"type": oid, "values": [value]}) for oid, value in values])
        signature = key.sign(attributes.dump(), padding.PKCS1v15(), hashes.SHA256())
        signer_info = cms.SignerInfo(
            {
                "version": "v1",
                "sid": cms.SignerIdentifier(
                    name="issuer_and_serial_number",
                    value={"issuer": ra.issuer, "serial_number": ra.serial_number},
                ),
                "digest_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
                "signed_attrs": cms.CMSAttributes.load(attributes.dump()),
                "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"}),
                "signature": signature,
            }
        )
        signed = cms.SignedData(
            {
                "version": "v1",
                "digest_algorithms": [algos.DigestAlgorithm({"algorithm": "sha256"})],
                "encap_content_info": {"content_type": "data", "content": content if envelope else None},
                "certificates": [ra],
                "signer_infos": [signer_info],
            }
        )
        return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


class _Attribute(core.Sequence):
    """Attribute { attrType, attrValues SET OF ANY } (RFC 5652 5.3), values taken as they are given."""

    _fields: ClassVar[list[Any]] = [("type", core.ObjectIdentifier), ("values", cms.SetOfAny)]


class _Attributes(core.SetOf):
    _child_spec = _Attribute


@dataclass(frozen=True)
class _Request:
    message_type: str
    transaction_id: str
    sender_nonce: bytes
    requester: bytes
    content: bytes


def _self_signed(key: rsa.RSAPrivateKey) -> bytes:
    """A certificate GetCACert never named, for the forger's key."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509 as crypto_x509
    from cryptography.x509.oid import NameOID

    name = crypto_x509.Name([crypto_x509.NameAttribute(NameOID.COMMON_NAME, "Not the SCEP RA")])
    now = datetime.now(UTC)
    builder = (
        crypto_x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(crypto_x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def hashes_sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def _challenge(request_der: bytes) -> str | None:
    for attribute in csr.CertificationRequest.load(request_der)["certification_request_info"]["attributes"]:
        if attribute["type"].dotted == OID_CHALLENGE_PASSWORD:
            return str(core.load(attribute["values"][0].dump()).native)
    return None


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode("ascii")


@contextlib.contextmanager
def _work_dir(parent: Path) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(dir=parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _handler(peer: PendingScepCa) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parts.query))
            mode = parts.path.strip("/").split("/")[0]
            operation = query.get("operation")
            if operation == "GetCACaps" and mode == "get":
                self._send(200, "text/plain", b"SHA-256\nDES3\n")  # an old server: GET only, 3DES
            elif operation == "GetCACaps":
                self._send(200, "text/plain", b"POSTPKIOperation\nSHA-256\nAES\nDES3\nSCEPStandard\n")
            elif operation == "GetCACert":
                self._send(200, "application/x-x509-ca-ra-cert", peer.ca_ra_certs())
            elif operation == "PKIOperation" and "message" in query:
                peer.gets += 1
                self._operate(mode, base64.b64decode(query["message"]))
            else:
                self._send(400, "text/plain", b"unknown operation\n")

        def do_POST(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if dict(urllib.parse.parse_qsl(parts.query)).get("operation") != "PKIOperation":
                self._send(400, "text/plain", b"unknown operation\n")
                return
            self._operate(parts.path.strip("/").split("/")[0], body)

        def _operate(self, mode: str, message: bytes) -> None:
            try:
                status, content_type, body = peer.operation(mode, message)
            except Exception as exc:
                status, content_type, body = 400, "text/plain", f"bad message: {exc}\n".encode()
            self._send(status, content_type, body)

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
