"""EST, Enrollment over Secure Transport (RFC 7030, clarified by RFC 8951): PKCS#10 over HTTPS.

``est+https://HOST[:PORT][/LABEL]`` is the server's ``/.well-known/est[/LABEL]/``:

- ``cacerts`` (GET): the CA certificates, a certs-only PKCS#7 (`ca_certificates`).
- ``simpleenroll`` / ``simplereenroll`` (POST): the PKCS#10, base64 (``application/pkcs10``,
  ``Content-Transfer-Encoding: base64``). 200 brings the certificate in a certs-only PKCS#7
  (`Issued`, response_form "pkcs7"); 202 + Retry-After means "ask again by sending the same
  request" (`Pending` with the cookie "resend"; `poll` sends it again, as RFC 7030 4.2.3 says);
  4xx/5xx carry a human-readable reason (text/plain, erratum 5108), shown as the CA's words.
- ``csrattrs`` (GET): what the CA wants in the request (CsrAttrs, RFC 7030 4.5). The request is
  already signed on the token when a connector sees it, so nothing can be added there: each
  attribute the request lacks or contradicts is reported before sending (``csrattrs = "warn"``,
  the default: a warning; ``"require"``: not sent, `Misconfigured`; ``"off"``: not asked).
  ``csrattrs = "merge"`` (opt-in) also asks BEFORE the key is generated (`request_attributes`):
  the extensions the CA gives with values (an extensionRequest attribute holding Extensions) go
  into the request's extensionRequest, except those whose OID the INF sets (the INF wins); each
  merged one is warned. What cannot be filled in (a bare OID such as challengePassword or
  macAddress, another attribute) and what contradicts the INF (key type, curve, signature
  algorithm, an extension's value) is then warned about at submission, as with ``"warn"``. A
  csrattrs that fails (404, 500, garbage, a 401) is warned about and the request made without
  it (csrattrs is optional); a CA that cannot be reached stops `enroll` before any key exists.
  Not the default: what goes into the request would change with what a server says.

Authentication (RFC 7030 3.2.3, 3.3.2): HTTP Basic (``--ca-user``, ``--ca-password-source``;
asked for by a 401, sent once, a refusal never retried), and/or a TLS client certificate:

- ``client_auth = "file"``: ``client_certificate`` and ``client_key`` PEM files (unencrypted key),
  through the standard library's TLS;
- ``client_auth = "token"``: the request's own key on the token signs the TLS handshake, and the
  operation is ``simplereenroll`` (renewing a certificate with its key: INF UseExistingKeySet with
  RenewalCert or KeyContainer). Python's ssl module cannot sign with a PKCS#11 key, so the exchange
  runs in ``curl`` (OpenSSL 3) with libp11's ``pkcs11`` engine (Debian libengine-pkcs11-openssl):
  ``--engine pkcs11 --key-type ENG --key pkcs11:...`` and the certificate from
  ``client_certificate`` or, by the key's CKA_ID, from the token (``--cert-type ENG``). The PIN
  reaches libp11 as ``pin-source=/dev/fd/N``, an inherited pipe; the Basic password reaches curl
  in its configuration on stdin: neither is ever in argv. Only `enroll` and `enroll --resume`
  have the key (a token session); `submit` and `retrieve` answer `Misconfigured`.

Peer notes: there is no EST server packaged for Debian; tests run tests/peers/estpeer.py, which
follows RFC 7030/8951 and issues with ``openssl ca``. Some older servers answer DER instead of
base64 (before RFC 8951): a body that is DER PKCS#7 is accepted too.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Protocol

from asn1crypto import core, csr, x509

from tokenagent.ca.answers import Answer, Issued, Misconfigured, Pending, Rejected, Unreachable, error_for
from tokenagent.ca.connector import CaRequest, KeyNeeds, RequesterKey, certificate_key_sha256
from tokenagent.ca.http import (
    MAX_BODY,
    HttpClient,
    HttpFailure,
    HttpResponse,
    HttpSettings,
    parse_base_url,
    transport_failure,
)
from tokenagent.ca.profiles import CaProfile
from tokenagent.ca.trust import check_issued_under
from tokenagent.errors import CAConfigError, TokenAgentError
from tokenagent.request.asn1.attributes import Attribute
from tokenagent.request.oids import OID_EXTENSION_REQUEST
from tokenagent.request.response import CertificateResponse, read_response
from tokenagent.token.uri import Pkcs11Uri, parse_uri

log = logging.getLogger("tokenagent")

CLIENT_AUTH = ("none", "file", "token")
CSRATTRS_MODES = ("warn", "require", "merge", "off")
PKCS7_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
#: the cookie of a pending EST request: asking again is sending the same request (RFC 7030 4.2.3)
RESEND = "resend"
#: OpenSSL's pkcs11 engine (libp11) understands these URI path attributes, not slot-id or library-*
_LIBP11_ATTRIBUTES = ("token", "manufacturer", "serial", "model", "object", "type")

OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
OID_CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"


# -- RFC 7030 4.5.2 ---------------------------------------------------------------------------------


class AttrOrOID(core.Choice):
    """AttrOrOID ::= CHOICE { oid OBJECT IDENTIFIER, attribute Attribute }"""

    _alternatives: ClassVar[list] = [
        ("oid", core.ObjectIdentifier),
        ("attribute", Attribute),
    ]


class CsrAttrs(core.SequenceOf):
    """CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID"""

    _child_spec = AttrOrOID


class Extension(core.Sequence):
    """RFC 5280 Extension, with the value left as bytes (only its OID is compared here)."""

    _fields: ClassVar[list] = [
        ("extn_id", core.ObjectIdentifier),
        ("critical", core.Boolean, {"default": False}),
        ("extn_value", core.OctetString),
    ]


class Extensions(core.SequenceOf):
    _child_spec = Extension


# -- the protocol's plug-in functions ---------------------------------------------------------------


def key_needs(profile: CaProfile) -> KeyNeeds | None:
    if profile.option("client_auth", "none") != "token":
        return None
    return KeyNeeds(
        "EST",
        signs_messages=True,
        why="EST re-enrollment (client_auth = token) signs the TLS handshake with the key being renewed",
    )


def request_attributes(profile: CaProfile) -> list[csr.CRIAttribute]:
    """With ``csrattrs = "merge"``: the extensionRequest of the extensions the CA's csrattrs give,
    asked for before the key is generated (RFC 7030 4.5.1).

    Asked without the Basic password (a secret source is read once, by the enrollment) and, with
    client_auth = token, without a client certificate (the key does not exist yet): a CA that wants
    authentication for csrattrs gets none, and nothing is merged."""
    if profile.option("csrattrs", "warn") != "merge":
        return []
    from tokenagent.ca.profiles import http_settings

    connector = EstConnector(profile, replace(http_settings(profile), user=None, password=None), ())
    where = connector.describe()
    try:
        response = connector.http.request("GET", f"{connector.prefix}/csrattrs")
    except HttpFailure as failed:
        answer = failed.answer
        unreachable = isinstance(answer, Unreachable) and not answer.garbled
        if unreachable or (isinstance(answer, Misconfigured) and not answer.authentication):
            raise error_for(answer, where) from None  # the enrollment would fail the same way: no key made
        log.warning("EST csrattrs of %s: %s; the request is made without them", where, answer.message)
        return []
    finally:
        connector.close()
    if response.status == 204:
        log.info("EST csrattrs: %s asks for nothing", where)
        return []
    if response.status != 200:
        log.warning("EST csrattrs of %s: %s; the request is made without them", where, response.describe())
        return []
    try:
        extensions = csr_attribute_extensions(_body_der(response.body) or b"")
    except ValueError as exc:
        log.warning("EST csrattrs of %s cannot be read (%s); the request is made without them", where, exc)
        return []
    for extension in extensions:
        critical = ", critical" if extension["critical"].native else ""
        log.warning(
            "EST csrattrs: the CA asks for the extension %s%s: added to the request unless the INF sets it",
            _name(extension["extn_id"].dotted),
            critical,
        )
    if not extensions:
        return []
    return [csr.CRIAttribute({"type": OID_EXTENSION_REQUEST, "values": [x509.Extensions(extensions)]})]


def csr_attribute_extensions(csrattrs_der: bytes) -> list[x509.Extension]:
    """The extensions CsrAttrs gives with values (extensionRequest attributes holding Extensions,
    RFC 7030 4.5.2 / RFC 9908), in order, one per OID. `ValueError` for unreadable CsrAttrs."""
    found: dict[str, x509.Extension] = {}
    for item in _csr_attrs(csrattrs_der):
        if item.name != "attribute" or item.chosen["type"].dotted != OID_EXTENSION_REQUEST:
            continue
        for value in item.chosen["values"]:
            der = bytes(value.dump())
            if der[:1] == b"\x06":  # an OID alone: the CA wants the extension but gives no value
                continue
            for extension in Extensions.load(der):
                loaded = x509.Extension.load(extension.dump())
                found.setdefault(loaded["extn_id"].dotted, loaded)
    return list(found.values())


def _csr_attrs(csrattrs_der: bytes) -> CsrAttrs:
    try:
        wanted = CsrAttrs.load(csrattrs_der, strict=True)
        wanted.native  # noqa: B018 -- parses every element now, so damage is a ValueError here
        for item in wanted:
            if item.name == "attribute" and item.chosen["type"].dotted == OID_EXTENSION_REQUEST:
                for value in item.chosen["values"]:
                    _extension_values(bytes(value.dump()))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not DER CsrAttrs: {exc}") from None
    return wanted


def connector_for(profile: CaProfile, settings: HttpSettings, trust: tuple[bytes, ...]) -> EstConnector:
    return EstConnector(profile, settings, trust)


class _Transport(Protocol):
    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> HttpResponse: ...

    def close(self) -> None: ...


class EstConnector:
    protocol = "est"

    def __init__(self, profile: CaProfile, settings: HttpSettings, trust: tuple[bytes, ...]) -> None:
        parts = parse_base_url(profile.url)
        label = parts.path.strip("/")
        if "/" in label:
            raise CAConfigError(
                f"{profile.url}: an EST URL is https://HOST[:PORT][/LABEL], the label one path segment "
                "(tokenagent adds /.well-known/est itself)"
            )
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.prefix = "/.well-known/est" + (f"/{label}" if label else "")
        self.settings = settings
        self.trust = trust
        self.client_auth = str(profile.option("client_auth", "none"))
        self.csrattrs = str(profile.option("csrattrs", "warn"))
        certificate = profile.option("client_certificate")
        key = profile.option("client_key")
        self.client_certificate = Path(certificate) if certificate else None
        self.client_key = Path(key) if key else None
        where = profile.describe()
        if self.client_auth not in CLIENT_AUTH:
            raise CAConfigError(f"{where}: client_auth = {self.client_auth!r}: use one of {', '.join(CLIENT_AUTH)}")
        if self.csrattrs not in CSRATTRS_MODES:
            raise CAConfigError(f"{where}: csrattrs = {self.csrattrs!r}: use one of {', '.join(CSRATTRS_MODES)}")
        if self.client_auth != "none" and parts.scheme != "https":
            raise CAConfigError(f"{where}: a TLS client certificate (client_auth = {self.client_auth}) needs https")
        if self.client_auth == "file" and (self.client_certificate is None or self.client_key is None):
            raise CAConfigError(f"{where}: client_auth = file needs client_certificate and client_key (PEM files)")
        self.operation = "simplereenroll" if self.client_auth == "token" else "simpleenroll"
        self.http: _Transport = (
            _ClientCertHttp(self.origin, settings, self.client_certificate, self.client_key)
            if self.client_auth == "file"
            else HttpClient(self.origin, settings)
        )
        self._curl: CurlTransport | None = None

    def describe(self) -> str:
        return self.origin + self.prefix

    def close(self) -> None:
        self.http.close()
        if self._curl is not None:
            self._curl.close()

    # -- cacerts ------------------------------------------------------------------------------------

    def ca_certificates(self) -> tuple[bytes, ...]:
        """The certificates of ``cacerts``, the issuing CA first; empty when the CA did not give them."""
        try:
            response = self.http.request("GET", f"{self.prefix}/cacerts")
        except HttpFailure as failed:
            log.info("EST cacerts: %s", failed.answer.message)
            return ()
        bundle = _certs_only(response, "the CA certificates (EST cacerts)") if response.status == 200 else None
        if bundle is None:
            log.info("EST cacerts: %s gave no certificates", response.describe())
            return ()
        leaves = bundle.end_entities()
        ordered = [*leaves[:1], *(bundle.chain_for(leaves[0]) if leaves else [])]
        return tuple(ordered + [c for c in bundle.certificates if c not in ordered])

    # -- enrollment ---------------------------------------------------------------------------------

    def poll(self, cookie: str, request: CaRequest | None) -> Answer:
        if request is None:
            return Misconfigured(
                "a pending EST request is asked about by sending it again, and this one is not in the pending "
                "store: run tokenagent enroll --resume, or submit the request file again"
            )
        transport = self._transport(request)
        if isinstance(transport, Misconfigured):
            return transport
        return self._enroll(request, transport)

    def submit(self, request: CaRequest) -> Answer:
        if request.form != "PKCS10":
            return Misconfigured(
                f"EST's simpleenroll takes a PKCS#10 request, not {request.form} (fullcmc is not supported): "
                "make it with RequestType = PKCS10"
            )
        if request.attributes:
            return Misconfigured(
                "EST has no request attributes besides the PKCS#10's own: put them into the INF, "
                "not --attrib or the profile's attributes"
            )
        transport = self._transport(request)
        if isinstance(transport, Misconfigured):
            return transport
        if self.csrattrs != "off":
            refused = self._check_csrattrs(request, transport)
            if refused is not None:
                return refused
        return self._enroll(request, transport)

    def _transport(self, request: CaRequest) -> _Transport | Misconfigured:
        if self.client_auth != "token":
            return self.http
        if request.key is None:
            return Misconfigured(
                "EST re-enrollment with client_auth = token signs the TLS handshake with the key on the token, "
                "and this command has no token session: use tokenagent enroll (or enroll --resume)"
            )
        if self._curl is None:
            self._curl = CurlTransport(self.origin, self.settings, request.key, self.client_certificate)
        return self._curl

    def _enroll(self, request: CaRequest, transport: _Transport) -> Answer:
        headers = {"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"}
        try:
            response = transport.request("POST", f"{self.prefix}/{self.operation}", _base64(request.der), headers)
        except HttpFailure as failed:
            return failed.answer
        failure = transport_failure(response, self.describe())
        if failure is not None:
            return failure
        if response.status == 202:
            said = _said(response) or "the CA holds the request"
            return Pending(RESEND, None, response.retry_after(), said)
        if response.status != 200:
            return _refusal(response, self.operation)
        return self._issued(response, request)

    def _issued(self, response: HttpResponse, request: CaRequest) -> Answer:
        if response.content_type not in PKCS7_TYPES:
            typed = response.content_type or "untyped"
            return Unreachable(f"the answer to {self.operation} is {typed}, not application/pkcs7-mime", True)
        der = _body_der(response.body)
        if der is None:
            return Unreachable(f"the answer to {self.operation} is neither base64 nor DER", True)
        try:
            answer = read_response(der, f"the EST response of {self.describe()}")
        except TokenAgentError as exc:
            return Unreachable(exc.one_line(), True)
        if answer.form != "pkcs7":
            return Unreachable(f"the answer to {self.operation} is a {answer.form}, not a certs-only PKCS#7", True)
        leaf = next((c for c in answer.end_entities() if certificate_key_sha256(c) == request.public_key_sha256), None)
        if leaf is None:
            return Unreachable("the CA's answer holds no certificate for the request's key", True)
        if self.trust:  # TLS authenticated the CA; --ca-trust asks for the issued certificate's path too
            others = (*answer.certificates, *self.ca_certificates())
            check_issued_under(leaf, others, self.trust, "the certificate in the CA's answer")
        return Issued(leaf, tuple(answer.chain_for(leaf)), der, "pkcs7")

    # -- csrattrs -----------------------------------------------------------------------------------

    def _check_csrattrs(self, request: CaRequest, transport: _Transport) -> Answer | None:
        """Warn about (or, with csrattrs = require, refuse) what the CA asks for and the request lacks.

        Asked with the same authentication as the enrollment (the CA may want it for csrattrs too),
        so a password is read once and a refused one is not sent again."""
        try:
            response = transport.request("GET", f"{self.prefix}/csrattrs")
        except HttpFailure as failed:
            return failed.answer
        if response.status != 200:  # 204/404: the CA asks for nothing (RFC 7030 4.5.2)
            log.info("EST csrattrs: %s, nothing checked", response.describe())
            return None
        der = _body_der(response.body)
        try:
            problems = csr_attribute_problems(request.der, der or b"")
        except ValueError as exc:
            log.warning("EST csrattrs of %s cannot be read (%s); the request is sent unchecked", self.describe(), exc)
            return None
        for problem in problems:
            if self.csrattrs in ("warn", "merge"):
                log.warning("EST csrattrs: %s", problem)
        if problems and self.csrattrs == "require":
            return Misconfigured(
                f"the request does not give what the CA's csrattrs ask for ({'; '.join(problems)}); "
                "change the INF, or set csrattrs = warn to send it anyway"
            )
        return None


@dataclass(frozen=True)
class _RequestFacts:
    """What of a PKCS#10 csrattrs can ask about."""

    signature: str  # the signature algorithm's OID
    key: str  # the key algorithm's OID
    curve: str | None  # the named curve's OID of an EC key
    attributes: frozenset[str]  # attribute types
    extensions: dict[str, bytes]  # its extensionRequest's extensions: OID -> the Extension's DER

    @classmethod
    def of(cls, request_der: bytes) -> _RequestFacts:
        request = csr.CertificationRequest.load(request_der)
        info = request["certification_request_info"]
        key = info["subject_pk_info"]["algorithm"]
        extensions = {
            extension["extn_id"].dotted: bytes(extension.dump())
            for attribute in info["attributes"]
            if attribute["type"].dotted == OID_EXTENSION_REQUEST
            for value in attribute["values"]
            for extension in value
        }
        return cls(
            signature=request["signature_algorithm"]["algorithm"].dotted,
            key=key["algorithm"].dotted,
            curve=key["parameters"].chosen.dotted if key["algorithm"].dotted == OID_EC_PUBLIC_KEY else None,
            attributes=frozenset(a["type"].dotted for a in info["attributes"]),
            extensions=extensions,
        )


def csr_attribute_problems(request_der: bytes, csrattrs_der: bytes) -> list[str]:
    """What CsrAttrs (RFC 7030 4.5.2) asks for that the PKCS#10 lacks or contradicts, in plain words.

    An OID names a signature algorithm the request must be signed with, a key algorithm, or an
    attribute or extension it must carry; an attribute constrains the key (ecPublicKey: the curves)
    or lists the extensions an extensionRequest must hold. `ValueError` for unreadable CsrAttrs.
    """
    wanted = _csr_attrs(csrattrs_der)
    facts = _RequestFacts.of(request_der)
    problems: list[str] = []
    for item in wanted:
        if item.name == "oid":
            problems += _oid_problems(item.chosen.dotted, facts)
        else:
            values = [bytes(v.dump()) for v in item.chosen["values"]]
            problems += _attribute_problems(item.chosen["type"].dotted, values, facts)
    return problems


def _oid_problems(oid: str, facts: _RequestFacts) -> list[str]:
    if oid in _SIGNATURE_ALGORITHMS:
        if oid != facts.signature:
            return [f"signature algorithm {_name(oid)}, the request is signed with {_name(facts.signature)}"]
    elif oid in (OID_EC_PUBLIC_KEY, OID_RSA_ENCRYPTION):
        if oid != facts.key:
            return [f"a {_name(oid)} key, the request's is {_name(facts.key)}"]
    elif oid not in facts.attributes and oid not in facts.extensions:
        if oid == OID_CHALLENGE_PASSWORD:  # EST authenticates with TLS or Basic; the INF has no such field
            return [f"{_name(oid)}, which the request does not carry (tokenagent cannot fill it in)"]
        return [f"{_name(oid)}, which the request does not carry"]
    return []


def _attribute_problems(kind: str, values: list[bytes], facts: _RequestFacts) -> list[str]:
    if kind == OID_EC_PUBLIC_KEY:
        curves = [core.ObjectIdentifier.load(v).dotted for v in values]
        named = ", ".join(map(_name, curves))
        if facts.key != OID_EC_PUBLIC_KEY:
            return [f"an EC key on {named}, the request's is {_name(facts.key)}"]
        if curves and facts.curve not in curves:
            return [f"an EC key on {named}, the request's is on {_name(facts.curve)}"]
        return []
    if kind == OID_EXTENSION_REQUEST:
        problems = []
        for oid, der in (pair for value in values for pair in _extension_values(value)):
            if oid not in facts.extensions:
                problems.append(f"the extension {_name(oid)}, which the request does not carry")
            elif der is not None and _normalized(der) != _normalized(facts.extensions[oid]):
                problems.append(f"the extension {_name(oid)} with another value than the request's (the INF's)")
        return problems
    if kind not in facts.attributes:
        return [f"the attribute {_name(kind)}, which the request does not carry"]
    return []


def _extension_values(value: bytes) -> list[tuple[str, bytes | None]]:
    """An extensionRequest value in CsrAttrs: an extension's OID (RFC 7030's example; no value) or
    Extensions (RFC 9908), as (OID, the Extension's DER)."""
    if value[:1] == b"\x06":
        return [(core.ObjectIdentifier.load(value).dotted, None)]
    return [(e["extn_id"].dotted, bytes(e.dump())) for e in Extensions.load(value, strict=True)]


def _normalized(extension_der: bytes) -> tuple[str, bool, bytes]:
    """An Extension as (OID, critical, value): a DEFAULT FALSE written out compares equal."""
    extension = Extension.load(extension_der)
    return extension["extn_id"].dotted, bool(extension["critical"].native), bytes(extension["extn_value"].native)


_SIGNATURE_ALGORITHMS = {
    "1.2.840.113549.1.1.11": "sha256WithRSAEncryption",
    "1.2.840.113549.1.1.12": "sha384WithRSAEncryption",
    "1.2.840.113549.1.1.13": "sha512WithRSAEncryption",
    "1.2.840.113549.1.1.10": "RSASSA-PSS",
    "1.2.840.10045.4.3.2": "ecdsa-with-SHA256",
    "1.2.840.10045.4.3.3": "ecdsa-with-SHA384",
    "1.2.840.10045.4.3.4": "ecdsa-with-SHA512",
    "1.3.101.112": "Ed25519",
}
_NAMES = {
    **_SIGNATURE_ALGORITHMS,
    OID_EC_PUBLIC_KEY: "ecPublicKey",
    OID_RSA_ENCRYPTION: "rsaEncryption",
    "1.2.840.10045.3.1.7": "P-256",
    "1.3.132.0.34": "P-384",
    "1.3.132.0.35": "P-521",
    OID_CHALLENGE_PASSWORD: "challengePassword",
    OID_EXTENSION_REQUEST: "extensionRequest",
    "1.3.6.1.1.1.1.22": "macAddress",
    "2.5.29.17": "subjectAltName",
    "2.5.29.15": "keyUsage",
    "2.5.29.37": "extKeyUsage",
}


def _name(oid: str | None) -> str:
    if oid is None:
        return "(none)"
    return f"{_NAMES[oid]} ({oid})" if oid in _NAMES else oid


# -- answers ----------------------------------------------------------------------------------------


def _refusal(response: HttpResponse, operation: str) -> Answer:
    said = _said(response) or response.reason
    code = response.describe()
    if response.status == 403:
        hint = "the CA knows the client but does not let it enroll"
        if operation == "simplereenroll":
            hint += " (re-enrollment needs the TLS client certificate being renewed)"
        return Rejected(said, code, hint)
    if response.status == 400:
        return Rejected(said, code, "the CA could not use the request (its csrattrs may say what it wants)")
    if response.status in (405, 415, 501):
        return Misconfigured(f"{code} for {response.url}: {said} (is it an EST server?)")
    return Rejected(said, code, None)


def _certs_only(response: HttpResponse, what: str) -> CertificateResponse | None:
    if response.content_type not in PKCS7_TYPES:
        return None
    der = _body_der(response.body)
    if der is None:
        return None
    try:
        return read_response(der, what)
    except TokenAgentError:
        return None


def _body_der(body: bytes) -> bytes | None:
    """The DER of a base64 body (RFC 8951), or a DER body as some servers before it sent."""
    if body[:1] == b"\x30":
        return body
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return der or None


def _base64(der: bytes) -> bytes:
    text = base64.b64encode(der)
    return b"\r\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + b"\r\n"


def _said(response: HttpResponse) -> str:
    """What an error body says, when it is short text."""
    if response.content_type not in ("", "text/plain", "text/html"):
        return ""
    text = response.body[:300].decode("utf-8", "replace")
    if "\x00" in text:
        return ""
    return " ".join(re.sub(r"<[^>]*>", " ", text).split())


# -- transports -------------------------------------------------------------------------------------


class _ClientCertHttp(HttpClient):
    """The HTTP client with a TLS client certificate and key from PEM files (client_auth = file)."""

    def __init__(self, base_url: str, settings: HttpSettings, certificate: Path | None, key: Path | None) -> None:
        super().__init__(base_url, settings)
        self.certificate = certificate
        self.key = key

    def _tls_context(self) -> ssl.SSLContext:
        context = super()._tls_context()
        try:
            # a password callback that gives none: an encrypted key fails instead of prompting
            context.load_cert_chain(str(self.certificate), str(self.key), password=lambda: b"")
        except (OSError, ssl.SSLError) as exc:
            raise CAConfigError(
                f"cannot use the TLS client certificate {self.certificate} with the key {self.key} "
                f"({getattr(exc, 'reason', None) or exc}); the key must be an unencrypted PEM file"
            ) from None
        return context


class CurlTransport:
    """One HTTPS request per curl run, its TLS client key on the token through libp11's engine.

    Nothing secret goes into argv: the PIN goes through a pipe libp11 reads (``pin-source``), the
    Basic password into curl's configuration on stdin. Basic is sent with the first request
    (preemptively) when a user is configured, because each curl run logs in on the token again.
    """

    def __init__(self, origin: str, settings: HttpSettings, key: RequesterKey, certificate: Path | None) -> None:
        self.origin = origin
        self.settings = settings
        self.key = key
        self.certificate = certificate
        self._basic: str | None = None
        self._refused = False

    def close(self) -> None:
        return

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> HttpResponse:
        if self._refused:
            raise HttpFailure(self._refusal())
        curl = shutil.which("curl")
        if curl is None:
            raise HttpFailure(
                Misconfigured("client_auth = token needs curl and OpenSSL's pkcs11 engine (libengine-pkcs11-openssl)")
            )
        url = self.origin + path
        private, certificate = _engine_uris(self.key.uri)
        pin = self.key.external_pin()
        if pin is None:
            raise HttpFailure(
                Misconfigured("client_auth = token cannot use a PIN pad token: curl's pkcs11 engine needs the PIN")
            )
        config = self._config(url)
        with tempfile.TemporaryDirectory(prefix="tokenagent-est-") as work:
            head = Path(work) / "headers"
            pin_read = _pipe_with(pin)
            body_file = Path(work) / "body"
            body_file.write_bytes(body or b"")
            args = [
                curl, "--config", "-", "--silent", "--show-error", "--proto", "=https", "--tlsv1.2",
                "--max-time", f"{self.settings.timeout:g}", "--max-filesize", str(MAX_BODY),
                "--dump-header", str(head), "--user-agent", self.settings.user_agent,
                "--engine", "pkcs11", "--key-type", "ENG", "--key", f"{private}?pin-source=/dev/fd/{pin_read}",
            ]  # fmt: skip
            if self.certificate is not None:
                args += ["--cert-type", "PEM", "--cert", str(self.certificate)]
            else:
                args += ["--cert-type", "ENG", "--cert", certificate]
            if self.settings.ca_bundle is not None:
                args += ["--cacert", str(self.settings.ca_bundle)]
            args += ["--request", method, "--header", "Expect:"]
            for name, value in (headers or {}).items():
                args += ["--header", f"{name}: {value}"]
            if body is not None:
                args += ["--data-binary", f"@{body_file}"]
            env = {**os.environ, "PKCS11_MODULE_PATH": self.key.module_path}
            try:
                done = subprocess.run(
                    args,
                    input=config.encode("utf-8"),
                    capture_output=True,
                    pass_fds=(pin_read,),
                    env=env,
                    timeout=self.settings.timeout + 30,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise HttpFailure(Unreachable(f"no answer from {url} within {self.settings.timeout:g} s")) from None
            finally:
                os.close(pin_read)
            if done.returncode != 0:
                raise HttpFailure(self._failure(done.returncode, done.stderr.decode("utf-8", "replace"), url))
            response = _response(head.read_bytes(), done.stdout, url)
        log.debug(
            "%s %s (curl, TLS key on the token) -> %s (%d bytes, %s)",
            method, url, response.describe(), len(response.body), response.content_type or "-",
        )  # fmt: skip
        if response.status == 401:
            self._refused = True
            raise HttpFailure(self._refusal())
        return response

    def _config(self, url: str) -> str:
        """curl's configuration (read from stdin): the URL and, with a user, Basic credentials."""
        lines = [f'url = "{_quoted(url)}"']
        user = self.settings.user
        if user is not None:
            if self._basic is None:
                source = self.settings.password
                if source is None:
                    raise HttpFailure(
                        Misconfigured(f"give --ca-password-source for {user} (or password_source in cas.toml)", True)
                    )
                secret = source.read(f"Password for {user} at {self.origin}: ", CAConfigError)
                self._basic = f"{user}:{secret.reveal()}"
            lines += ["basic", f'user = "{_quoted(self._basic)}"']
        return "\n".join(lines) + "\n"

    def _refusal(self) -> Misconfigured:
        if self.settings.user is None:
            return Misconfigured(
                "the CA did not accept the TLS client certificate and asks for a password (HTTP 401): "
                "give --ca-user and --ca-password-source, or check the certificate being renewed",
                True,
            )
        return Misconfigured(
            f"the CA refused the credentials of {self.settings.user} (HTTP 401); not tried again, "
            "so that the account does not lock",
            True,
        )

    def _failure(self, code: int, stderr: str, url: str) -> Unreachable | Misconfigured:
        said = next((line for line in reversed(stderr.splitlines()) if line.startswith("curl: (")), "")
        said = said.split(")", 1)[-1].strip() or f"curl exit code {code}"
        where = url.split("/", 3)[2] if url.count("/") >= 2 else url
        if code == 7:
            return Unreachable(f"connection to {where} refused or failed ({said})")
        if code == 6:
            return Unreachable(f"cannot resolve {where} ({said})")
        if code == 28:
            return Unreachable(f"no answer from {where} within {self.settings.timeout:g} s")
        if code == 60:
            trust = f"the certificates in {self.settings.ca_bundle}" if self.settings.ca_bundle else "the system store"
            return Misconfigured(
                f"the TLS certificate of {where} does not verify against {trust} ({said}); give --ca-bundle "
                "(or ca_bundle in cas.toml) with the CA that issued it"
            )
        if code in (53, 54, 58):
            return Misconfigured(
                f"the TLS client key on the token or its certificate cannot be used through OpenSSL's pkcs11 "
                f"engine ({said}); needs libengine-pkcs11-openssl and the certificate being renewed on the token "
                "(same CKA_ID as the key) or client_certificate"
            )
        if code in (35, 56) and "alert" in stderr.lower():
            return Misconfigured(f"the CA ended the TLS handshake ({said}): it does not accept the client certificate")
        if code == 63:
            return Unreachable(f"{url} answered more than {MAX_BODY} bytes", garbled=True)
        return Unreachable(f"curl could not talk to {where} ({said})")


def _engine_uris(uri: str) -> tuple[str, str]:
    """The key's URI, and its certificate's (same CKA_ID), with only what libp11 understands."""
    try:
        parsed = parse_uri(uri)
    except TokenAgentError:
        raise HttpFailure(Misconfigured(f"the key's pkcs11: URI cannot be used: {uri!r}")) from None
    path = {k: v for k, v in parsed.path.items() if k in _LIBP11_ATTRIBUTES}
    key = str(Pkcs11Uri(path={**path, "type": "private"}, object_id=parsed.object_id))
    # the certificate by CKA_ID: its label may differ from the key's
    without_label = {k: v for k, v in path.items() if k != "object"} if parsed.object_id else path
    certificate = str(Pkcs11Uri(path={**without_label, "type": "cert"}, object_id=parsed.object_id))
    return key, certificate


def _pipe_with(data: bytes) -> int:
    """The read end of a pipe that holds ``data`` (a PIN: far below the pipe's buffer)."""
    read, write = os.pipe()
    try:
        os.write(write, data)
    finally:
        os.close(write)
    return read


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _response(head: bytes, body: bytes, url: str) -> HttpResponse:
    """curl's dumped header block (the last one, after any 1xx) and body as an `HttpResponse`."""
    blocks = [b for b in head.replace(b"\r\n", b"\n").split(b"\n\n") if b.strip()]
    if not blocks:
        raise HttpFailure(Unreachable(f"not an HTTP answer from {url}", garbled=True))
    lines = blocks[-1].decode("iso-8859-1").split("\n")
    status_line = lines[0].split(None, 2)
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise HttpFailure(Unreachable(f"not an HTTP answer from {url}", garbled=True))
    headers = tuple(
        (name.strip(), value.strip()) for name, sep, value in (line.partition(":") for line in lines[1:]) if sep
    )
    reason = status_line[2].strip() if len(status_line) > 2 else ""
    return HttpResponse(int(status_line[1]), reason, headers, body, url)
