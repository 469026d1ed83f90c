"""A stand-in for Microsoft AD CS web enrollment ("certsrv") that runs on Linux, for the test suite.

It serves the IIS pages a certsrv client talks to (certfnsh.asp, certnew.cer, certnew.p7b,
certcarc.asp) with the phrases, status codes and content types of the real server, behind Basic
and/or NTLM authentication (NTLM with Extended Protection over TLS), and decides like the AD CS
enterprise policy module from a small template table. Certificates come from the `openssl ca`
command line; requests are parsed with pyasn1 and checked with openssl. Nothing here imports
tokenagent: the peer must stay independent of the code it tests.

The server runs in its own process (``python certsrv.py serve DIR``); everything it knows lives in
DIR (configuration, CA, TLS material, the request database), so a test can act as the CA
administrator (``resubmit``, ``deny``, ``issue_agent``) while the server runs.

Template table: ``{"Name": {...}}`` with the optional keys ``signatures`` (enrollment agent
signatures required, like "This number of authorized signatures"), ``pend`` (CA certificate manager
approval), ``extensions`` (openssl extfile lines that win over the request's extensions), ``days``
(validity, default 365) and ``oid`` (the template's OID, matched against the v2 template extension).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import hmac
import html
import json
import os
import re
import signal
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pyasn1_modules import rfc2986, rfc5280, rfc5652, rfc6402

DEFAULT_PASSWORD = "Passw0rd!"
DEFAULT_USERS: Mapping[str, str] = {"EXAMPLE\\operator": DEFAULT_PASSWORD}
DEFAULT_TEMPLATES: Mapping[str, Mapping[str, Any]] = {
    "User": {},
    "SmartcardLogon": {"signatures": 1},
    "ManualApproval": {"pend": True},
    "SmartcardLogonTwoAgents": {"signatures": 2},
}
ADMINISTRATOR = "EXAMPLE\\Administrator"
CA_NAME = "Example Issuing CA"

OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_DATA = "1.2.840.113549.1.7.1"
OID_PKI_DATA = "1.3.6.1.5.5.7.12.2"
OID_REG_INFO = "1.3.6.1.5.5.7.7.18"
OID_ENROLLMENT_NAME_VALUE_PAIR = "1.3.6.1.4.1.311.13.2.1"
OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
OID_TEMPLATE_NAME = "1.3.6.1.4.1.311.20.2"
OID_TEMPLATE_V2 = "1.3.6.1.4.1.311.21.7"
OID_REQUEST_AGENT = "1.3.6.1.4.1.311.20.2.1"
OID_EKU = "2.5.29.37"
OID_SKI = "2.5.29.14"

# HRESULT -> (symbol, message text), as winerror.h and certutil print them.
HRESULTS: dict[int, tuple[str, str]] = {
    0x80094002: ("CERTSRV_E_NO_REQUEST", "The request does not exist."),
    0x80094003: ("CERTSRV_E_BAD_REQUESTSTATUS", "The request's current status does not allow this operation."),
    0x80094004: ("CERTSRV_E_PROPERTY_EMPTY", "The requested property value is empty."),
    0x80094014: (
        "CERTSRV_E_ADMIN_DENIED_REQUEST",
        "The request was denied by a certificate manager or CA administrator.",
    ),
    0x80094800: ("CERTSRV_E_UNSUPPORTED_CERT_TYPE", "The requested certificate template is not supported by this CA."),
    0x80094801: ("CERTSRV_E_NO_CERT_TYPE", "The request contains no certificate template information."),
    0x80094802: ("CERTSRV_E_TEMPLATE_CONFLICT", "The request contains conflicting template information."),
    0x80094806: (
        "CERTSRV_E_BAD_RENEWAL_SUBJECT",
        "The request was made on behalf of a subject other than the caller. The certificate template must be"
        " configured to require at least one signature to authorize the request.",
    ),
    0x8009480A: ("CERTSRV_E_SIGNATURE_COUNT", "The request is missing one or more required signatures."),
    0x8009480B: (
        "CERTSRV_E_SIGNATURE_REJECTED",
        "One or more signatures did not include the required application or issuance policies. The request is"
        " missing one or more required valid signatures.",
    ),
    0x80090006: ("NTE_BAD_SIGNATURE", "Invalid Signature."),
    0x8009310B: ("CRYPT_E_ASN1_BADTAG", "ASN1 bad tag value met."),
    0x80093102: ("CRYPT_E_ASN1_EOD", "ASN1 unexpected end of data."),
    0x80093106: ("CRYPT_E_ASN1_CORRUPT", "ASN1 corrupted data."),
    0x80070057: ("ERROR_INVALID_PARAMETER", "The parameter is incorrect."),
}
E_UNSUPPORTED_CERT_TYPE = 0x80094800
E_NO_CERT_TYPE = 0x80094801
E_TEMPLATE_CONFLICT = 0x80094802
E_BAD_RENEWAL_SUBJECT = 0x80094806
E_SIGNATURE_COUNT = 0x8009480A
E_SIGNATURE_REJECTED = 0x8009480B
E_ADMIN_DENIED = 0x80094014
E_PROPERTY_EMPTY = 0x80094004
E_BAD_REQUESTSTATUS = 0x80094003
E_BAD_SIGNATURE = 0x80090006
E_ASN1_BADTAG = 0x8009310B
E_ASN1_EOD = 0x80093102
E_ASN1_CORRUPT = 0x80093106
E_INVALIDARG = 0x80070057


def hresult_text(hresult: int) -> str:
    """'<message> 0x%08x (<decimal or facility> <symbol>)', the way certutil and the certsrv pages print an error."""
    symbol, message = HRESULTS.get(hresult, ("", "Unknown error."))
    if 0x80093000 <= hresult < 0x80094000:
        code = f"ASN: {hresult - 0x80093000}"
    elif hresult & 0xFFFF0000 == 0x80070000:
        code = f"WIN32: {hresult & 0xFFFF}"
    else:
        code = str(hresult - (1 << 32) if hresult >= 0x80000000 else hresult)
    return f"{message} 0x{hresult:08x} ({code} {symbol})".replace(" )", ")")


def policy_denial(hresult: int, template: str | None = None) -> str:
    if hresult == E_UNSUPPORTED_CERT_TYPE:
        text = (
            "The request was for a certificate template that is not supported by the Active Directory Certificate"
            f" Services policy: {template}."
        )
    else:
        text = HRESULTS.get(hresult, ("", "Unknown error."))[1]
    return f"Denied by Policy Module  0x{hresult:08x}, {text}"


# ---------------------------------------------------------------------------------------------------------------
# openssl and files


def openssl(*args: str | Path, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(["openssl", *map(str, args)], input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


def _openssl_ok(*args: str | Path) -> tuple[bool, str]:
    """(exit status 0, stdout and stderr)."""
    result = subprocess.run(["openssl", *map(str, args)], capture_output=True, check=False)
    return result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")


def _pem_to_der(pem: bytes) -> bytes:
    body = re.search(rb"-----BEGIN [A-Z0-9 ]+-----(.*?)-----END", pem, re.S)
    if body is None:
        raise ValueError("no PEM block")
    return base64.b64decode(b"".join(body.group(1).split()))


def _der_to_pem(der: bytes, label: str) -> str:
    b64 = base64.b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


_CA_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused

[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ca_copy]
dir = {directory}
database = $dir/index.txt
new_certs_dir = $dir/issued
serial = $dir/serial
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = yes
copy_extensions = copy

[ca_nocopy]
dir = {directory}
database = $dir/index.txt
new_certs_dir = $dir/issued
serial = $dir/serial
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = yes
copy_extensions = none

[policy_any]
commonName = optional

[tls_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

_END_ENTITY = """\
basicConstraints = critical,CA:FALSE
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

_AGENT = "keyUsage = critical,digitalSignature\nextendedKeyUsage = 1.3.6.1.4.1.311.20.2.1\n"

_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")


def _make_pki(directory: Path, *, tls: bool) -> None:
    """Root + issuing CA in directory/ca, TLS CA + server certificate in directory/tls (each once)."""
    ca = directory / "ca"
    if not (ca / "chain.pem").exists():
        ca.mkdir(parents=True, exist_ok=True)
        (ca / "issued").mkdir(exist_ok=True)
        (ca / "work").mkdir(exist_ok=True)
        (ca / "index.txt").write_text("")
        (ca / "serial").write_text("1000\n")
        config = ca / "openssl.cnf"
        config.write_text(_CA_CONFIG.format(directory=ca))
        openssl(
            "req", "-x509", "-config", config, "-extensions", "v3_ca", *_EC, "-nodes", "-keyout", ca / "root.key",
            "-out", ca / "root.pem", "-days", "3650", "-sha256", "-subj", "/DC=com/DC=example/CN=Example Root CA",
        )  # fmt: skip
        openssl(
            "req", "-new", "-config", config, *_EC, "-nodes", "-keyout", ca / "sub.key", "-out", ca / "sub.csr",
            "-subj", f"/DC=com/DC=example/CN={CA_NAME}",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", ca / "sub.csr", "-CA", ca / "root.pem", "-CAkey", ca / "root.key", "-set_serial",
            "2", "-days", "3650", "-sha256", "-extfile", config, "-extensions", "v3_ca", "-out", ca / "sub.pem",
        )  # fmt: skip
        _write_atomic(ca / "chain.pem", (ca / "sub.pem").read_text() + (ca / "root.pem").read_text())
    tls_dir = directory / "tls"
    if tls and not (tls_dir / "server.pem").exists():
        tls_dir.mkdir(parents=True, exist_ok=True)
        config = ca / "openssl.cnf"
        openssl(
            "req", "-x509", "-config", config, "-extensions", "v3_ca", *_EC, "-nodes", "-keyout", tls_dir / "ca.key",
            "-out", tls_dir / "ca.pem", "-days", "3650", "-sha256", "-subj", "/O=certsrv peer/CN=certsrv peer TLS CA",
        )  # fmt: skip
        openssl(
            "req", "-new", "-config", config, *_EC, "-nodes", "-keyout", tls_dir / "server.key",
            "-out", tls_dir / "server.csr", "-subj", "/O=certsrv peer/CN=127.0.0.1",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", tls_dir / "server.csr", "-CA", tls_dir / "ca.pem", "-CAkey", tls_dir / "ca.key",
            "-set_serial", "3", "-days", "3650", "-sha256", "-extfile", config, "-extensions", "tls_server",
            "-out", tls_dir / "server.tmp",
        )  # fmt: skip
        os.replace(tls_dir / "server.tmp", tls_dir / "server.pem")


# ---------------------------------------------------------------------------------------------------------------
# DER walking: the raw bytes of SignerInfos and the inner PKCS #10 are kept as received (signatures cover them)


class _Asn1Failure(Exception):
    def __init__(self, hresult: int) -> None:
        super().__init__(hex(hresult))
        self.hresult = hresult


def _tlv(data: bytes, pos: int = 0) -> tuple[int, int, int]:
    """(tag byte, start of the contents, end) of the DER element at pos."""
    if pos + 2 > len(data):
        raise _Asn1Failure(E_ASN1_EOD)
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _Asn1Failure(E_ASN1_BADTAG)
    length = data[pos + 1]
    start = pos + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4:
            raise _Asn1Failure(E_ASN1_CORRUPT)
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise _Asn1Failure(E_ASN1_EOD)
    return tag, start, end


def _children(element: bytes) -> list[bytes]:
    _, start, end = _tlv(element)
    out = []
    pos = start
    while pos < end:
        _, _, child_end = _tlv(element, pos)
        out.append(element[pos:child_end])
        pos = child_end
    return out


def _wrap(tag: int, contents: bytes) -> bytes:
    size = len(contents)
    if size < 0x80:
        return bytes([tag, size]) + contents
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + contents


def _decode(der: bytes, spec: Any) -> Any:
    value, rest = decoder.decode(der, asn1Spec=spec)
    if rest:
        raise _Asn1Failure(E_ASN1_CORRUPT)
    return value


def _any_string(der: bytes) -> str:
    value, _ = decoder.decode(der)
    return str(value)


def _name_value_pair(der: bytes) -> tuple[str, str]:
    value, _ = decoder.decode(der)
    return str(value[0]).rstrip("\x00"), str(value[1]).rstrip("\x00")


# ---------------------------------------------------------------------------------------------------------------
# Requests


@dataclass
class _Signer:
    raw: bytes
    info: Any  # rfc5652.SignerInfo
    certificate: bytes | None  # DER of the certificate the sid names, when the SignedData carries it


@dataclass
class ParsedRequest:
    kind: str  # "pkcs10", "pkcs7" (CMS around a PKCS #10) or "cmc"
    pkcs10: bytes
    template: str | None = None
    template_oid: str | None = None
    requester: str | None = None
    signers: list[_Signer] = field(default_factory=list)
    signed_data_prefix: bytes = b""  # SignedData contents before signerInfos, raw
    econtent: bytes = b""


def decode_request_text(text: str) -> bytes:
    """CertRequest as certsrv reads it: base64 with or without armor, else the bytes themselves (CRYPT_STRING_ANY)."""
    stripped = re.sub(r"-----(BEGIN|END)[^-]*-----", "", text)
    compact = "".join(stripped.split())
    with contextlib.suppress(ValueError):
        if compact:
            return base64.b64decode(compact, validate=True)
    return text.encode("utf-8", errors="replace")


def parse_request(der: bytes) -> ParsedRequest:
    if not der:
        raise _Asn1Failure(E_ASN1_EOD)
    if der[0] != 0x30:
        raise _Asn1Failure(E_ASN1_BADTAG)
    _, _, end = _tlv(der)
    if end != len(der):
        raise _Asn1Failure(E_ASN1_CORRUPT)
    kids = _children(der)
    if kids and kids[0][:1] == b"\x06" and str(decoder.decode(kids[0])[0]) == OID_SIGNED_DATA:
        return _parse_cms(kids)
    request = ParsedRequest(kind="pkcs10", pkcs10=der)
    _read_pkcs10_attributes(request)
    return request


def _read_pkcs10_attributes(request: ParsedRequest) -> None:
    csr = _decode(request.pkcs10, rfc2986.CertificationRequest())
    for attribute in csr["certificationRequestInfo"]["attributes"]:
        oid = str(attribute["type"])
        for value in attribute["values"]:
            raw = bytes(value)
            if oid == OID_ENROLLMENT_NAME_VALUE_PAIR:
                name, text = _name_value_pair(raw)
                if name.lower() == "certificatetemplate":
                    request.template = request.template or text
            elif oid == OID_EXTENSION_REQUEST:
                for extension in _decode(raw, rfc5280.Extensions()):
                    _read_template_extension(request, str(extension["extnID"]), bytes(extension["extnValue"]))


def _read_template_extension(request: ParsedRequest, oid: str, value: bytes) -> None:
    if oid == OID_TEMPLATE_NAME:
        request.template = request.template or _any_string(value)
    elif oid == OID_TEMPLATE_V2:
        decoded, _ = decoder.decode(value)
        request.template_oid = str(decoded[0])


def _parse_cms(content_info_kids: list[bytes]) -> ParsedRequest:
    if len(content_info_kids) != 2 or content_info_kids[1][:1] != b"\xa0":
        raise _Asn1Failure(E_ASN1_BADTAG)
    (signed_data_raw,) = _children(content_info_kids[1])
    signed_data = _decode(signed_data_raw, rfc5652.SignedData())
    econtent_type = str(signed_data["encapContentInfo"]["eContentType"])
    econtent = bytes(signed_data["encapContentInfo"]["eContent"])
    parts = _children(signed_data_raw)
    if parts[-1][:1] != b"\x31":
        raise _Asn1Failure(E_ASN1_BADTAG)
    certificates = [c for p in parts if p[:1] == b"\xa0" for c in _children(p) if c[:1] == b"\x30"]
    if econtent_type == OID_DATA:
        request = ParsedRequest(kind="pkcs7", pkcs10=econtent)
    elif econtent_type == OID_PKI_DATA:
        request = ParsedRequest(kind="cmc", pkcs10=_cmc_pkcs10(econtent))
        _read_cmc_controls(request, econtent)
    else:
        raise _Asn1Failure(E_ASN1_BADTAG)
    request.econtent = econtent
    request.signed_data_prefix = b"".join(parts[:-1])
    for raw in _children(parts[-1]):
        info = _decode(raw, rfc5652.SignerInfo())
        request.signers.append(_Signer(raw=raw, info=info, certificate=_find_signer_certificate(info, certificates)))
        _read_signer_attributes(request, info)
    _read_pkcs10_attributes(request)
    return request


def _cmc_pkcs10(pki_data: bytes) -> bytes:
    _decode(pki_data, rfc6402.PKIData())
    parts = _children(pki_data)
    for tagged in _children(parts[1]):
        if tagged[:1] == b"\xa0":  # tcr [0] TaggedCertificationRequest: bodyPartID, certificationRequest
            return _children(tagged)[1]
    raise _Asn1Failure(E_ASN1_BADTAG)


def _read_cmc_controls(request: ParsedRequest, pki_data: bytes) -> None:
    decoded = _decode(pki_data, rfc6402.PKIData())
    for control in decoded["controlSequence"]:
        oid = str(control["attrType"])
        for value in control["attrValues"]:
            raw = bytes(value)
            if oid == OID_REG_INFO:
                text = bytes(decoder.decode(raw, asn1Spec=univ.OctetString())[0]).decode("utf-8", errors="replace")
                pairs = [urllib.parse.unquote(p).split("=", 1) for p in text.split("&") if "=" in p]
            elif oid == OID_ENROLLMENT_NAME_VALUE_PAIR:
                pairs = [list(_name_value_pair(raw))]
            else:
                continue
            for name, text in pairs:
                if name.lower() == "requestername":
                    request.requester = text
                elif name.lower() == "certificatetemplate":
                    request.template = request.template or text


def _read_signer_attributes(request: ParsedRequest, info: Any) -> None:
    if not info["signedAttrs"].isValue:
        return
    for attribute in info["signedAttrs"]:
        if str(attribute["attrType"]) != OID_ENROLLMENT_NAME_VALUE_PAIR:
            continue
        for value in attribute["attrValues"]:
            name, text = _name_value_pair(bytes(value))
            if name.lower() == "requestername":
                request.requester = text


def _certificate_extension(certificate: Any, oid: str) -> bytes | None:
    extensions = certificate["tbsCertificate"]["extensions"]
    if not extensions.isValue:
        return None
    for extension in extensions:
        if str(extension["extnID"]) == oid:
            return bytes(extension["extnValue"])
    return None


def _find_signer_certificate(info: Any, certificates: list[bytes]) -> bytes | None:
    sid = info["sid"]
    for der in certificates:
        certificate = _decode(der, rfc5280.Certificate())
        tbs = certificate["tbsCertificate"]
        if sid.getName() == "issuerAndSerialNumber":
            wanted = sid["issuerAndSerialNumber"]
            same_issuer = encoder.encode(wanted["issuer"]) == encoder.encode(tbs["issuer"])
            if same_issuer and int(wanted["serialNumber"]) == int(tbs["serialNumber"]):
                return der
        else:
            ski = _certificate_extension(certificate, OID_SKI)
            if ski is not None and bytes(decoder.decode(ski)[0]) == bytes(sid["subjectKeyIdentifier"]):
                return der
    return None


def _has_agent_eku(certificate_der: bytes) -> bool:
    certificate = _decode(certificate_der, rfc5280.Certificate())
    value = _certificate_extension(certificate, OID_EKU)
    if value is None:
        return False
    return OID_REQUEST_AGENT in {str(oid) for oid in _decode(value, rfc5280.ExtKeyUsageSyntax())}


_DIGESTS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}


# ---------------------------------------------------------------------------------------------------------------
# The CA: policy, database, issuance. Used by the server process and by the test (admin actions).


@dataclass
class _Decision:
    disposition: str  # issued, pending, denied, failed
    hresult: int
    message: str


class Authority:
    """The CA behind the web pages, working on the peer's directory under a file lock."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = directory / "ca"
        self.db_path = directory / "requests.json"

    # -- state ----------------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return json.loads((self.directory / "config.json").read_text())

    @contextlib.contextmanager
    def locked(self, *, write: bool = True) -> Iterator[dict[str, Any]]:
        """The request database, locked against the other process; saved when a writing block ends normally."""
        with open(self.directory / "db.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                db = json.loads(self.db_path.read_text())
                yield db
                if write:
                    _write_atomic(self.db_path, json.dumps(db, indent=1))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def initialize(self, first_request_id: int) -> None:
        with open(self.directory / "db.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.db_path.exists():
                db = json.loads(self.db_path.read_text())
                db["next_id"] = max(db["next_id"], first_request_id)
            else:
                db = {"next_id": first_request_id, "requests": []}
            _write_atomic(self.db_path, json.dumps(db, indent=1))
            fcntl.flock(lock, fcntl.LOCK_UN)

    def records(self) -> list[dict[str, Any]]:
        with self.locked(write=False) as db:
            return [dict(r) for r in db["requests"]]

    def lookup(self, req_id: int) -> dict[str, Any] | None:
        with self.locked(write=False) as db:
            return next((dict(r) for r in db["requests"] if r["id"] == req_id), None)

    # -- submission -----------------------------------------------------------------------------------------

    def submit(self, request_text: str, cert_attrib: str, caller: str) -> dict[str, Any]:
        attributes = parse_cert_attrib(cert_attrib)
        templates = self.config()["templates"]
        parsed: ParsedRequest | None = None
        template: str | None = attributes.get("certificatetemplate")
        signatures = 0
        try:
            parsed = parse_request(decode_request_text(request_text))
        except (_Asn1Failure, PyAsn1Error, IndexError, ValueError, TypeError) as failure:
            hresult = failure.hresult if isinstance(failure, _Asn1Failure) else E_ASN1_BADTAG
            decision = _Decision("failed", hresult, f"Error Parsing Request  {hresult_text(hresult)}")
        else:
            with tempfile.TemporaryDirectory(dir=self.ca / "work") as work:
                decision, template, signatures = self._policy(parsed, attributes, templates, Path(work))
        with self.locked() as db:
            record = {
                "id": db["next_id"],
                "submitted": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "caller": caller,
                "requester": (parsed.requester if parsed and parsed.requester else caller),
                "request_type": parsed.kind if parsed else None,
                "template": template,
                "attributes": attributes,
                "signatures": signatures,
                "disposition": decision.disposition,
                "hresult": decision.hresult,
                "message": decision.message,
                "certificate": None,
                "request": base64.b64encode(parsed.pkcs10).decode() if parsed else None,
            }
            db["next_id"] += 1
            if decision.disposition == "issued":
                record["certificate"] = self._issue_locked(parsed.pkcs10 if parsed else b"", template or "", templates)
            db["requests"].append(record)
        return record

    def _policy(
        self, parsed: ParsedRequest, attributes: dict[str, str], templates: dict[str, Any], work: Path
    ) -> tuple[_Decision, str | None, int]:
        """Rules in the order of the brief: template, request signature, agent signatures, pending, issue."""
        named = attributes.get("certificatetemplate")
        from_request = parsed.template or self._template_by_oid(parsed.template_oid, templates)
        if named is None and from_request is None:
            return _Decision("denied", E_NO_CERT_TYPE, policy_denial(E_NO_CERT_TYPE)), None, 0
        if named and from_request and self._canonical(named, templates) != self._canonical(from_request, templates):
            return _Decision("denied", E_TEMPLATE_CONFLICT, policy_denial(E_TEMPLATE_CONFLICT)), named, 0
        requested = named or from_request or ""
        template = self._canonical(requested, templates)
        if template is None:
            denial = _Decision("denied", E_UNSUPPORTED_CERT_TYPE, policy_denial(E_UNSUPPORTED_CERT_TYPE, requested))
            return denial, requested, 0
        settings = templates[template]
        (work / "req.der").write_bytes(parsed.pkcs10)
        # OpenSSL 3.0's `req -verify` exits 0 even on a bad signature: read what it says
        ok, said = _openssl_ok("req", "-verify", "-noout", "-inform", "DER", "-in", work / "req.der")
        if not ok or "verify OK" not in said or not self._self_signatures_ok(parsed, work):
            message = f"Error Verifying Request Signature or Signing Certificate  {hresult_text(E_BAD_SIGNATURE)}"
            return _Decision("failed", E_BAD_SIGNATURE, message), template, 0
        required = int(settings.get("signatures", 0))
        if parsed.requester and required == 0:
            return _Decision("denied", E_BAD_RENEWAL_SUBJECT, policy_denial(E_BAD_RENEWAL_SUBJECT)), template, 0
        accepted, rejected, broken = self._count_agent_signatures(parsed, work)
        if broken or accepted < required:
            hresult = E_SIGNATURE_REJECTED if broken or rejected else E_SIGNATURE_COUNT
            return _Decision("denied", hresult, policy_denial(hresult)), template, accepted
        if settings.get("pend"):
            return _Decision("pending", 0, "Taken Under Submission"), template, accepted
        return _Decision("issued", 0, "Issued"), template, accepted

    @staticmethod
    def _canonical(name: str, templates: dict[str, Any]) -> str | None:
        for known, settings in templates.items():
            if name.lower() == known.lower() or name == settings.get("oid"):
                return known
        return None

    @staticmethod
    def _template_by_oid(oid: str | None, templates: dict[str, Any]) -> str | None:
        if oid is None:
            return None
        return next((name for name, settings in templates.items() if settings.get("oid") == oid), oid)

    def _self_signatures_ok(self, parsed: ParsedRequest, work: Path) -> bool:
        """CMC's signature by the request key itself (sid = subjectKeyIdentifier, no certificate)."""
        for index, signer in enumerate(parsed.signers):
            if signer.certificate is not None or signer.info["sid"].getName() != "subjectKeyIdentifier":
                continue
            if not self._verify_with_request_key(parsed, signer, work / f"self{index}"):
                return False
        return True

    @staticmethod
    def _verify_with_request_key(parsed: ParsedRequest, signer: _Signer, base: Path) -> bool:
        info = signer.info
        digest = _DIGESTS.get(str(info["digestAlgorithm"]["algorithm"]))
        if digest is None:
            return False
        data = parsed.econtent
        if info["signedAttrs"].isValue:
            attrs_raw = next(c for c in _children(signer.raw) if c[:1] == b"\xa0")
            data = b"\x31" + attrs_raw[1:]
            digests = [
                bytes(decoder.decode(bytes(v), asn1Spec=univ.OctetString())[0])
                for a in info["signedAttrs"]
                if str(a["attrType"]) == OID_MESSAGE_DIGEST
                for v in a["attrValues"]
            ]
            if digests != [hashlib.new(digest, parsed.econtent).digest()]:
                return False
        base.with_suffix(".data").write_bytes(data)
        base.with_suffix(".sig").write_bytes(bytes(info["signature"]))
        base.with_suffix(".pub").write_bytes(
            openssl("req", "-pubkey", "-noout", "-inform", "DER", "-in", base.parent / "req.der")
        )
        options: list[str] = []
        if str(info["signatureAlgorithm"]["algorithm"]) == "1.2.840.113549.1.1.10":
            options = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:auto"]
        ok, _ = _openssl_ok(
            "dgst", f"-{digest}", "-verify", base.with_suffix(".pub"), *options,
            "-signature", base.with_suffix(".sig"), base.with_suffix(".data"),
        )  # fmt: skip
        return ok

    def _count_agent_signatures(self, parsed: ParsedRequest, work: Path) -> tuple[int, int, int]:
        """(accepted: verified with the Certificate Request Agent EKU, rejected: verified without it, broken)."""
        accepted = rejected = broken = 0
        content_type = _wrap(0x06, encoder.encode(univ.ObjectIdentifier(OID_SIGNED_DATA))[2:])
        for index, signer in enumerate(parsed.signers):
            if signer.certificate is None and signer.info["sid"].getName() == "subjectKeyIdentifier":
                continue  # the request key's own signature, checked with the request
            single = _wrap(0x30, parsed.signed_data_prefix + _wrap(0x31, signer.raw))
            path = work / f"signer{index}.der"
            path.write_bytes(_wrap(0x30, content_type + _wrap(0xA0, single)))
            ok, _ = _openssl_ok(
                "cms", "-verify", "-inform", "DER", "-in", path, "-CAfile", self.ca / "chain.pem", "-purpose", "any",
                "-binary", "-out", os.devnull,
            )  # fmt: skip
            if not ok or signer.certificate is None:
                broken += 1
            elif _has_agent_eku(signer.certificate):
                accepted += 1
            else:
                rejected += 1
        return accepted, rejected, broken

    # -- issuance and admin actions -------------------------------------------------------------------------

    def _issue_locked(self, pkcs10: bytes, template: str, templates: dict[str, Any]) -> str:
        settings = templates.get(template, {})
        extensions = _END_ENTITY
        if re.fullmatch(r"[A-Za-z0-9 _.-]+", template):
            extensions += f"{OID_TEMPLATE_NAME} = ASN1:BMPSTRING:{template}\n"
        extensions += settings.get("extensions", "")
        return self._sign(pkcs10, extensions, copy=True, days=int(settings.get("days", 365)))

    def _sign(self, pkcs10: bytes, extensions: str, *, copy: bool, days: int) -> str:
        """`openssl ca` with the issuing CA; AD CS backdates the start by 10 minutes for clock skew."""
        with tempfile.TemporaryDirectory(dir=self.ca / "work") as work_dir:
            work = Path(work_dir)
            inform = "PEM" if pkcs10.lstrip().startswith(b"-----") else "DER"
            openssl("req", "-inform", inform, "-in", "/dev/stdin", "-out", work / "req.pem", stdin=pkcs10)
            (work / "ext").write_text(extensions + "\n")
            start = datetime.now(UTC) - timedelta(minutes=10)
            end = start + timedelta(days=days)
            ok, said = _openssl_ok(
                "ca", "-batch", "-config", self.ca / "openssl.cnf", "-name", "ca_copy" if copy else "ca_nocopy",
                "-cert", self.ca / "sub.pem", "-keyfile", self.ca / "sub.key", "-in", work / "req.pem",
                "-out", work / "cert.pem", "-notext", "-preserveDN", "-rand_serial", "-extfile", work / "ext",
                "-startdate", start.strftime("%Y%m%d%H%M%SZ"), "-enddate", end.strftime("%Y%m%d%H%M%SZ"),
            )  # fmt: skip
            cert = work / "cert.pem"
            if not ok or not cert.exists() or not cert.stat().st_size:  # `openssl ca` may exit 0 and sign nothing
                raise RuntimeError(f"openssl ca did not sign: {said}")
            return cert.read_text()

    def resubmit(self, req_id: int) -> dict[str, Any]:
        templates = self.config()["templates"]
        with self.locked() as db:
            record = _find(db, req_id)
            if record["disposition"] not in ("pending", "denied") or not record["request"]:
                raise RuntimeError(f"request {req_id}: {hresult_text(E_BAD_REQUESTSTATUS)}")
            pkcs10 = base64.b64decode(record["request"])
            record["certificate"] = self._issue_locked(pkcs10, record["template"] or "", templates)
            record.update(disposition="issued", hresult=0, message=f"Resubmitted by {ADMINISTRATOR}")
            return dict(record)

    def deny(self, req_id: int, hresult: int, message: str) -> dict[str, Any]:
        with self.locked() as db:
            record = _find(db, req_id)
            if record["disposition"] != "pending":
                raise RuntimeError(f"request {req_id}: {hresult_text(E_BAD_REQUESTSTATUS)}")
            record.update(disposition="denied", hresult=hresult, message=message)
            return dict(record)

    def issue_agent(self, csr: bytes) -> bytes:
        with self.locked(write=False):
            return self._sign(csr, _END_ENTITY + _AGENT, copy=False, days=365).encode()


def _find(db: dict[str, Any], req_id: int) -> dict[str, Any]:
    for record in db["requests"]:
        if record["id"] == req_id:
            return record
    raise KeyError(f"request {req_id}: {hresult_text(E_PROPERTY_EMPTY)}")


def parse_cert_attrib(text: str) -> dict[str, str]:
    """CertAttrib "name:value" pairs, one a line (CRLF or LF); names compared case-insensitively (lower-cased)."""
    attributes: dict[str, str] = {}
    for line in re.split(r"\r\n|\n|\r", text):
        name, sep, value = line.partition(":")
        if sep and name.strip():
            attributes[name.strip().lower()] = value.strip()
    return attributes


# ---------------------------------------------------------------------------------------------------------------
# Pages


def _page(title: str, body: str) -> bytes:
    return _crlf(
        '<HTML>\n<Head>\n<Meta HTTP-Equiv="Content-Type" Content="text/html; charset=UTF-8">\n'
        f"<Title>Microsoft Active Directory Certificate Services</Title>\n</Head>\n<Body BgColor=#FFFFFF>\n"
        f"<Font ID=locPageTitle><B>Microsoft</B> Active Directory Certificate Services  --  {CA_NAME}</Font>\n"
        f"<P ID=locPageTitle> <B> {title}</B>\n{body}\n</Body>\n</HTML>\n"
    ).encode()


def page_for_record(record: dict[str, Any]) -> bytes:
    """What certfnsh.asp shows after a submission (or Mode=chkpnd)."""
    req_id = record["id"]
    message = html.escape(record["message"])
    if record["disposition"] == "issued":
        links = "".join(
            f'<a href="certnew.{ext}?ReqID={req_id}&amp;Enc={enc}">{label}</a><BR>\n'
            for ext, enc, label in (
                ("cer", "bin", "Download certificate (DER encoded)"),
                ("cer", "b64", "Download certificate (Base 64 encoded)"),
                ("p7b", "bin", "Download certificate chain (DER encoded)"),
                ("p7b", "b64", "Download certificate chain (Base 64 encoded)"),
            )
        )
        return _page("Certificate Issued", f"<P ID=locIssued>The certificate you requested was issued to you.\n{links}")
    if record["disposition"] == "pending":
        return _page(
            "Certificate Pending",
            "<P ID=locPendInfo1>Your certificate request has been received. However, you must wait for an"
            " administrator to issue the certificate you requested.\n"
            f"<P ID=locPendInfo2>Your Request Id is {req_id}.\n"
            "<P ID=locPendInfo3>Please return to this web site in a day or two to retrieve your certificate.",
        )
    reason = f'<P ID=locInfoReqIDandReason>Your Request Id is {req_id}. The disposition message is "{message}".'
    contact = "<P ID=locContactAdmin>Contact your administrator for further information."
    if record["disposition"] == "denied":
        return _page(
            "Certificate Request Denied", f"<P ID=locDenied>Your certificate request was denied.\n{reason}\n{contact}"
        )
    return _page(
        "Certificate Request Error", f"<P ID=locError>Your certificate request was not processed.\n{reason}\n{contact}"
    )


def error_page(disposition_message: str | None, hresult: int | None) -> bytes:
    """What certnew.cer / certnew.p7b show when there is no certificate to give."""
    lines = []
    if hresult:
        lines.append(f"<LocID ID=locErrorCode>Error:</LocID> {html.escape(hresult_text(hresult))}<BR>")
    if disposition_message is not None:
        lines.append(f"<LocID ID=locDispMsg>Disposition message:</LocID>\t\t{html.escape(disposition_message)}")
    body = "<P ID=locErrorMsg>An unexpected error has occurred:\n<Code><Font Color=#FF0000>\n" + "\n".join(lines)
    return _page("Error", body + "\n</Font></Code>")


_UNAUTHORIZED = _crlf(
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
    "<html><head><title>401 - Unauthorized: Access is denied due to invalid credentials.</title></head>\n"
    "<body><h2>401 - Unauthorized: Access is denied due to invalid credentials.</h2>\n"
    "<h3>You do not have permission to view this directory or page using the credentials that you supplied.</h3>\n"
    "</body></html>\n"
).encode()

_NOT_FOUND = _crlf(
    "<html><head><title>404 - File or directory not found.</title></head>\n"
    "<body><h2>404 - File or directory not found.</h2></body></html>\n"
).encode()


# ---------------------------------------------------------------------------------------------------------------
# HTTP server (child process)

_SIGNATURE_HASHES = {
    "1.2.840.10045.4.3.2": "sha256",
    "1.2.840.10045.4.3.3": "sha384",
    "1.2.840.10045.4.3.4": "sha512",
    "1.2.840.113549.1.1.11": "sha256",
    "1.2.840.113549.1.1.12": "sha384",
    "1.2.840.113549.1.1.13": "sha512",
}


def tls_server_end_point(certificate_der: bytes) -> bytes:
    """RFC 5929 channel binding: the certificate's signature hash (SHA-256 for MD5, SHA-1 or unknown)."""
    certificate = _decode(certificate_der, rfc5280.Certificate())
    name = _SIGNATURE_HASHES.get(str(certificate["signatureAlgorithm"]["algorithm"]), "sha256")
    return b"tls-server-end-point:" + hashlib.new(name, certificate_der).digest()


def ntlm_channel_binding(authenticate: bytes) -> bytes | None:
    """MsvAvChannelBindings from an NTLMv2 AUTHENTICATE message (None: NTLMv1 or absent)."""
    if len(authenticate) < 28:
        return None
    length, _, offset = struct.unpack_from("<HHI", authenticate, 20)
    response = authenticate[offset : offset + length]
    pos = 16 + 28  # NTProofStr, then the blob's fixed header, then the AV pairs
    while pos + 4 <= len(response):
        av_id, av_len = struct.unpack_from("<HH", response, pos)
        pos += 4
        if av_id == 0:
            break
        if av_id == 0x000A:
            return response[pos : pos + av_len]
        pos += av_len
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, directory: Path) -> None:
        self.authority = Authority(directory)
        config = self.authority.config()
        self.auth: list[str] = config["auth"]
        self.users: dict[str, str] = config["users"]
        self.ssl_context: ssl.SSLContext | None = None
        self.channel_bindings: Any = None  # set when TLS with Extended Protection
        self._log_lock = threading.Lock()
        self._log = open(directory / "server.log", "a", buffering=1)  # noqa: SIM115 (lives as long as the server)
        super().__init__(("127.0.0.1", 0), _Handler)
        if config["tls"]:
            from spnego.channel_bindings import GssChannelBindings

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(directory / "tls" / "server.pem", directory / "tls" / "server.key")
            self.ssl_context = context
            if config["extended_protection"]:
                der = _pem_to_der((directory / "tls" / "server.pem").read_bytes())
                self.channel_bindings = GssChannelBindings(application_data=tls_server_end_point(der))

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would call getfqdn (reverse DNS)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        import traceback

        self.log(f"{client_address}: connection error\n{traceback.format_exc()}")

    def log(self, text: str) -> None:
        with self._log_lock:
            self._log.write(f"{datetime.now(UTC).strftime('%H:%M:%S.%f')} {text}\n")

    def check_basic(self, value: str) -> str | None:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        name, sep, password = decoded.partition(":")
        user = self.canonical_user(name) if sep else None
        if user is not None and hmac.compare_digest(self.users[user].encode(), password.encode()):
            return user
        return None

    def canonical_user(self, name: str) -> str | None:
        """The configured account for DOMAIN\\user or user (case-insensitive, like Windows)."""
        domain, _, user = name.rpartition("\\")
        for known in self.users:
            known_domain, _, known_user = known.rpartition("\\")
            if user.lower() == known_user.lower() and (not domain or domain.lower() == known_domain.lower()):
                return known
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-IIS/10.0"
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        self.request.settimeout(60)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()
        self._ntlm: Any = None
        self._ntlm_user: str | None = None

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log(f"{self.client_address[0]}:{self.client_address[1]} {format % args}")

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, content_type: str = "text/html", headers: tuple = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private")
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("X-Powered-By", "ASP.NET")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _unauthorized(self, reason: str) -> None:
        self.server.log(f"401 {self.path}: {reason}")
        realm = (self.headers.get("Host") or "127.0.0.1").rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
        names = {"ntlm": "NTLM", "negotiate": "Negotiate"}
        challenges = [("WWW-Authenticate", names.get(s, f'Basic realm="{realm}"')) for s in self.server.auth]
        self._send(401, _UNAUTHORIZED, headers=tuple(challenges))

    # -- authentication ------------------------------------------------------------------------------------------

    def _authenticate(self) -> str | None:
        scheme, _, value = self.headers.get("Authorization", "").strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and "basic" in self.server.auth:
            user = self.server.check_basic(value.strip())
            if user is None:
                self._unauthorized("Basic: wrong user name or password")
            return user
        if scheme == "ntlm" and "ntlm" in self.server.auth:
            return self._ntlm_step(value.strip())
        if scheme == "negotiate" and "negotiate" in self.server.auth:
            return self._negotiate(value.strip())
        if not scheme and self._ntlm_user is not None:
            return self._ntlm_user  # NTLM authenticates the connection (IIS authPersistSingleRequest=false)
        self._unauthorized(f"no usable Authorization ({scheme or 'none'})")
        return None

    def _negotiate(self, value: str) -> str | None:
        """SPNEGO with Kerberos (one leg; the server's mutual-authentication token goes back on the answer)."""
        import spnego

        try:
            token = base64.b64decode(value, validate=True)
            context = spnego.server(
                hostname="localhost", service="HTTP", protocol="negotiate",
                channel_bindings=self.server.channel_bindings,
            )  # fmt: skip
            context.step(token)
        except Exception as error:  # pyspnego raises GSSError, BadBindingsError, InvalidTokenError...
            self._unauthorized(f"Negotiate: {type(error).__name__}: {error}")
            return None
        if not context.complete:
            self._unauthorized("Negotiate: the handshake needs more than one leg (NTLM inside SPNEGO is not offered)")
            return None
        principal = context.client_principal or ""
        user = self.server.canonical_user(principal.partition("@")[0])
        if user is None:
            self._unauthorized(f"Negotiate: unknown principal {principal}")
            return None
        self._ntlm_user = user  # the connection is authenticated, as with NTLM
        self.server.log(f"Negotiate: {principal} authenticated as {user}")
        return user

    def _ntlm_step(self, value: str) -> str | None:
        import spnego

        try:
            token = base64.b64decode(value, validate=True)
        except ValueError:
            token = b""
        kind = int.from_bytes(token[8:12], "little") if token.startswith(b"NTLMSSP\x00") else 0
        if kind == 1:
            self._ntlm_user = None
            self._ntlm = spnego.server(
                hostname="127.0.0.1", service="HTTP", protocol="ntlm", channel_bindings=self.server.channel_bindings,
                options=spnego.NegotiateOptions.use_ntlm,
            )  # fmt: skip
            challenge = self._ntlm.step(token)
            self.server.log(f"NTLM challenge on {self.client_address}")
            self._send(
                401, _UNAUTHORIZED, headers=(("WWW-Authenticate", "NTLM " + base64.b64encode(challenge).decode()),)
            )
            return None
        if kind == 3 and self._ntlm is not None:
            context, self._ntlm = self._ntlm, None
            if self.server.channel_bindings is not None:
                binding = ntlm_channel_binding(token)
                if binding is None or binding == b"\x00" * len(binding):
                    self._unauthorized("NTLM: Extended Protection requires a channel binding, none was sent")
                    return None
            try:
                context.step(token)
            except Exception as error:  # pyspnego raises BadBindingsError, InvalidTokenError, SpnegoError...
                self._unauthorized(f"NTLM: {type(error).__name__}: {error}")
                return None
            user = self.server.canonical_user(context.client_principal or "")
            if user is None:
                self._unauthorized(f"NTLM: unknown account {context.client_principal}")
                return None
            self._ntlm_user = user
            return user
        self._ntlm = None
        self._unauthorized(f"NTLM: unexpected message type {kind}")
        return None

    # -- routes --------------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        body = self._read_body()
        user = self._authenticate()
        if user is None:
            return
        url = urllib.parse.urlsplit(self.path)
        path = url.path.lower()
        query = {k.lower(): v for k, v in urllib.parse.parse_qsl(url.query, keep_blank_values=True)}
        try:
            self._route(path, query, body, user)
        except Exception:
            import traceback

            self.server.log(f"500 {self.path}\n{traceback.format_exc()}")
            self._send(500, b"<html><body><h2>500 - Internal server error.</h2></body></html>")

    def _route(self, path: str, query: dict[str, str], body: bytes, user: str) -> None:
        if path == "/certsrv":
            self._send(301, b"", headers=(("Location", "/certsrv/"),))
        elif path in ("/certsrv/", "/certsrv/default.asp"):
            self._send(200, _page("Welcome", f"<P ID=locWelcome>Use this Web site to request a certificate. ({user})"))
        elif path == "/certsrv/certfnsh.asp":
            self._certfnsh(body if self.command == "POST" else b"", user)
        elif path in ("/certsrv/certnew.cer", "/certsrv/certnew.p7b"):
            self._certnew(path.endswith(".p7b"), query)
        elif path == "/certsrv/certcarc.asp":
            self._send(200, _page("Download a CA Certificate, Certificate Chain, or CRL", _CERTCARC))
        else:
            self._send(404, _NOT_FOUND)

    def _certfnsh(self, body: bytes, user: str) -> None:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        form = {k.lower(): v for k, v in pairs}  # ASP's Request.Form names are case-insensitive
        mode = form.get("mode", "").lower()
        authority = self.server.authority
        if mode == "newreq":
            record = authority.submit(form.get("certrequest", ""), form.get("certattrib", ""), user)
            self.server.log(f"request {record['id']}: {record['disposition']} {record['message']}")
            self._send(200, page_for_record(record))
        elif mode == "chkpnd" and form.get("reqid", "").isdigit():
            record = authority.lookup(int(form["reqid"]))
            if record is None:
                self._send(200, error_page(None, E_PROPERTY_EMPTY))
            else:
                self._send(200, page_for_record(record))
        else:
            self._send(200, error_page(None, E_INVALIDARG))

    def _certnew(self, p7b: bool, query: dict[str, str]) -> None:
        authority = self.server.authority
        encoding = query.get("enc", "b64").lower()
        req_id = query.get("reqid", "")
        if req_id.lower() == "cacert":
            if query.get("renewal", "0") not in ("0", ""):
                self._send(200, error_page(None, E_INVALIDARG))
                return
            certificates = [authority.ca / "sub.pem"] + ([authority.ca / "root.pem"] if p7b else [])
            self._send_certificates(certificates, p7b, encoding)
            return
        record = authority.lookup(int(req_id)) if req_id.isdigit() else None
        if record is None:
            self._send(200, error_page(None, E_PROPERTY_EMPTY if req_id.isdigit() else E_INVALIDARG))
        elif record["disposition"] != "issued":
            self._send(200, error_page(record["message"], record["hresult"] or None))
        else:
            with tempfile.TemporaryDirectory(dir=authority.ca / "work") as work:
                issued = Path(work) / "issued.pem"
                issued.write_text(record["certificate"])
                self._send_certificates([issued, authority.ca / "sub.pem", authority.ca / "root.pem"], p7b, encoding)

    def _send_certificates(self, certificates: list[Path], p7b: bool, encoding: str) -> None:
        if p7b:
            args: list[str | Path] = ["crl2pkcs7", "-nocrl", "-outform", "DER"]
            for certificate in certificates:
                args += ["-certfile", certificate]
            der = openssl(*args)
            content_type = "application/x-pkcs7-certificates"
        else:
            der = _pem_to_der(certificates[0].read_bytes())
            content_type = "application/pkix-cert"
        # Windows armors base64 PKCS #7 with CERTIFICATE lines too (CryptBinaryToString, CRYPT_STRING_BASE64HEADER)
        body = _crlf(_der_to_pem(der, "CERTIFICATE")).encode() if encoding == "b64" else der
        self._send(200, body, content_type)


_CERTCARC = (
    "<P ID=locInfo>To trust certificates issued from this certification authority, install this CA certificate.\n"
    "<Script Language=JavaScript>\nvar nRenewals=0;\n</Script>\n"
    '<a href="certnew.cer?ReqID=CACert&amp;Renewal=0&amp;Enc=bin">Download CA certificate</a><BR>\n'
    '<a href="certnew.p7b?ReqID=CACert&amp;Renewal=0&amp;Enc=bin">Download CA certificate chain</a>'
)


def _serve(directory: Path, parent_pid: int) -> None:
    server = _Server(directory)

    def stop(*_: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)

    def watch_parent() -> None:  # never outlive the test process
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    server.log(f"listening on 127.0.0.1:{server.server_port} tls={server.ssl_context is not None} auth={server.auth}")
    _write_atomic(directory / "port", str(server.server_port))
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.log("stopped")


# ---------------------------------------------------------------------------------------------------------------
# Test-side API


class CertsrvPeer:
    """A running certsrv stand-in; see the module docstring."""

    def __init__(self, directory: Path, process: subprocess.Popen, port: int, tls: bool) -> None:
        self.directory = directory
        self.process = process
        self.port = port
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/certsrv"
        self.tls_ca_pem: Path | None = directory / "tls" / "ca.pem" if tls else None
        self.ca_chain_pem: Path = directory / "ca" / "chain.pem"
        self.authority = Authority(directory)

    @classmethod
    def start(
        cls,
        directory: Path,
        *,
        tls: bool = True,
        auth: tuple[str, ...] = ("basic", "ntlm"),
        users: Mapping[str, str] | None = None,
        templates: Mapping[str, Mapping[str, Any]] | None = None,
        first_request_id: int = 1,
        extended_protection: bool = True,
        timeout: float = 15.0,
        env: Mapping[str, str] | None = None,
    ) -> CertsrvPeer:
        """Make the CAs (once per directory), write the configuration and run the server.

        ``extended_protection`` (TLS only): NTLM must carry the tls-server-end-point channel binding
        (IIS "Extended Protection: Required"); False accepts NTLM without one (IIS "Off").
        ``auth`` may include "negotiate" (Kerberos through python-gssapi): ``env`` then gives the
        server its KRB5_CONFIG and KRB5_KTNAME (tests/peers/kdc.py), and a Kerberos principal
        user@REALM is the configured account DOMAIN\\user.
        """
        directory = Path(directory).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        unknown = set(auth) - {"basic", "ntlm", "negotiate"}
        if unknown or not auth:
            raise ValueError(f"auth is a non-empty tuple of 'basic', 'ntlm', 'negotiate', not {auth!r}")
        users = dict(DEFAULT_USERS if users is None else users)
        templates = {k: dict(v) for k, v in (DEFAULT_TEMPLATES if templates is None else templates).items()}
        _make_pki(directory, tls=tls)
        config = {
            "tls": tls,
            "extended_protection": extended_protection,
            "auth": list(auth),
            "users": users,
            "templates": templates,
        }
        _write_atomic(directory / "config.json", json.dumps(config, indent=1))
        ntlm_lines = []
        for name, password in users.items():
            domain, _, user = name.rpartition("\\")
            ntlm_lines.append(f"{domain}:{user}:{password}")
            if domain:  # a client may leave the domain empty
                ntlm_lines.append(f":{user}:{password}")
        _write_private(directory / "ntlm_users", "\n".join(ntlm_lines) + "\n")
        Authority(directory).initialize(first_request_id)
        (directory / "port").unlink(missing_ok=True)
        child_env = dict(os.environ, NTLM_USER_FILE=str(directory / "ntlm_users"), LM_COMPAT_LEVEL="5", **(env or {}))
        with open(directory / "server.stdout", "ab") as out, open(directory / "server.stderr", "ab") as err:
            process = subprocess.Popen(
                [sys.executable, __file__, "serve", str(directory), "--parent", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=child_env, cwd=directory,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not (directory / "port").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                stderr = (directory / "server.stderr").read_text(errors="replace")
                raise RuntimeError(f"certsrv peer did not start (exit {process.returncode}):\n{stderr}")
            time.sleep(0.02)
        return cls(directory, process, int((directory / "port").read_text()), tls)

    def resubmit(self, req_id: int) -> None:
        """Issue a pending (or denied) request, like `certutil -resubmit`."""
        self.authority.resubmit(req_id)

    def deny(self, req_id: int, hresult: int = E_ADMIN_DENIED, message: str = f"Denied by {ADMINISTRATOR}") -> None:
        """Deny a pending request, like `certutil -deny`."""
        self.authority.deny(req_id, hresult, message)

    def issue_agent(self, csr: bytes) -> bytes:
        """An enrollment agent certificate (EKU Certificate Request Agent, digitalSignature) for a CSR, PEM."""
        return self.authority.issue_agent(csr)

    def requests(self) -> list[dict[str, Any]]:
        return self.authority.records()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> CertsrvPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="certsrv peer for tests")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("directory", type=Path)
    serve.add_argument("--parent", type=int, default=os.getppid())
    args = parser.parse_args(argv)
    _serve(args.directory, args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
