"""cfssl's JSON API: ``POST /api/v1/cfssl/sign`` (or ``/authsign``), ``/api/v1/cfssl/info``.

cfssl (CloudFlare's PKI toolkit) signs a PKCS#10 in PEM as the named signing profile says; it
answers at once, never pending. Every answer is the same envelope::

    {"success": true|false, "result": {...}, "errors": [{"code": N, "message": "..."}], "messages": []}

``/authsign`` is ``/sign`` for profiles that carry an ``auth_key``: the body is
``{"token": base64(HMAC-SHA256(key, request)), "request": base64(request)}``, the HMAC over the exact
bytes of the inner JSON request; the key is the hex string of the server's ``auth_keys`` entry
(its type "standard"), read from ``auth_key_source`` (never from cas.toml itself).

cfssl's answer is JSON, which `accept` does not read: the connector keeps it as a certs-only
PKCS #7 of the certificate and the CA certificate from ``/info``, which `accept` and the pending
store read like any CA's answer. Nothing in cfssl's JSON is signed, so the certificate must lead
to the configured trust (``trust``), or else to the certificate ``/info`` names (over https, its TLS
certificate is what vouches for that).

cfssl's error codes (its errors package) are category × 1000 + reason; the categories that say
"this request will not be signed" are rejections, the rest a CA problem:

=====  =====================  =========================================
code   category               tokenagent answer
=====  =====================  =========================================
1xxx   CertificateError       rejected (exit 12)
2xxx   PrivateKeyError        the CA's own key: unreachable (exit 16)
3xxx   IntermediatesError     unreachable (16)
4xxx   RootError              unreachable (16)
5xxx   PolicyError            rejected (12): the signing profile refuses
6xxx   DialError              unreachable (16)
7xxx   APIClientError         rejected (12); "authentication required" /
                              "invalid token": refused credentials (19)
9xxx   CSRError               rejected (12)
=====  =====================  =========================================

Peer notes (the tests run Debian's golang-cfssl, a 2016 snapshot): an unknown profile name falls
back to the default profile silently; a profile with ``auth_key`` answers /sign with 400
"authentication required" and a wrong HMAC with 400 "invalid token"; Ed25519 requests are refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from typing import Any

from tokenagent.ca.answers import Answer, Issued, Misconfigured, Rejected, Unreachable
from tokenagent.ca.connector import CaRequest, Connector, certificate_key_sha256
from tokenagent.ca.http import HttpClient, HttpFailure, HttpResponse, HttpSettings, transport_failure
from tokenagent.ca.profiles import CaProfile
from tokenagent.ca.trust import check_issued_under
from tokenagent.errors import CAConfigError
from tokenagent.secret_sources import SecretSource, parse_secret_source

log = logging.getLogger("tokenagent")

API = "api/v1/cfssl/"
AUTH_REFUSALS = ("authentication required", "invalid token")
#: cfssl's error categories (code // 1000) that mean "not this request"; the others are the CA's trouble
REJECTING_CATEGORIES = {1: "certificate", 5: "policy", 7: "API client", 9: "CSR"}


def connector_for(profile: CaProfile, settings: HttpSettings, trust: tuple[bytes, ...]) -> Connector:
    source = profile.option("auth_key_source")
    auth_key = parse_secret_source(source, "cfssl auth key", "auth_key_source") if source else None
    return CfsslConnector(
        profile.url,
        settings,
        signing_profile=profile.option("profile"),
        label=profile.option("label"),
        auth_key=auth_key,
        trust=trust,
    )


class CfsslConnector:
    protocol = "cfssl"

    def __init__(
        self,
        url: str,
        settings: HttpSettings,
        *,
        signing_profile: str | None = None,
        label: str | None = None,
        auth_key: SecretSource | None = None,
        trust: tuple[bytes, ...] = (),
    ) -> None:
        self.http = HttpClient(url.rstrip("/") + "/", settings)
        self.signing_profile = signing_profile
        self.label = label
        self.auth_key = auth_key
        self.trust = trust
        self._ca: bytes | None = None

    def describe(self) -> str:
        return self.http.url_for("")

    def close(self) -> None:
        self.http.close()

    def poll(self, cookie: str, request: CaRequest | None) -> Answer:
        """cfssl never holds a request: asking again is signing again (a new certificate)."""
        if request is None:
            return Misconfigured("cfssl keeps no requests to ask about: submit the request again")
        return self.submit(request)

    def ca_certificates(self) -> tuple[bytes, ...]:
        try:
            return (self._ca_certificate(),)
        except _Failed:
            return ()

    def submit(self, request: CaRequest) -> Answer:
        if request.form != "PKCS10":
            return Misconfigured(
                f"cfssl signs a PKCS#10 request, and this one is {request.form}: make it with RequestType = PKCS10"
            )
        if request.attributes:
            return Misconfigured(
                "cfssl takes no request attributes (--attrib, attributes in cas.toml); its signing profile "
                "(profile = ... in cas.toml) decides the certificate's contents"
            )
        body: dict[str, Any] = {"certificate_request": _pem_request(request.der)}
        if self.signing_profile:
            body["profile"] = self.signing_profile
        if self.label:
            body["label"] = self.label
        try:
            ca = self._ca_certificate()
            result = self._call("authsign" if self.auth_key else "sign", self._sign_body(body))
        except _Failed as failed:
            return failed.answer
        return self._issued(result, request, ca)

    # -- the API ---------------------------------------------------------------------------------------

    def _sign_body(self, body: dict[str, Any]) -> bytes:
        encoded = json.dumps(body).encode("utf-8")
        if self.auth_key is None:
            return encoded
        key_text = self.auth_key.read("cfssl auth key: ", CAConfigError).reveal().strip()
        try:
            key = bytes.fromhex(key_text)
        except ValueError:
            raise _Failed(
                Misconfigured(f"the cfssl auth key from {self.auth_key.describe()} is not hex (cfssl's auth_keys form)")
            ) from None
        token = hmac.new(key, encoded, hashlib.sha256).digest()
        wrapped = {"token": base64.b64encode(token).decode("ascii"), "request": base64.b64encode(encoded).decode()}
        return json.dumps(wrapped).encode("utf-8")

    def _ca_certificate(self) -> bytes:
        """The CA certificate of the signing profile (``/info``), asked once per connector."""
        if self._ca is None:
            body = {"profile": self.signing_profile} if self.signing_profile else {}
            result = self._call("info", json.dumps(body).encode("utf-8"))
            self._ca = _certificate_der(result.get("certificate"), "/info")
        return self._ca

    def _call(self, endpoint: str, body: bytes) -> dict[str, Any]:
        """POST to an API endpoint; its ``result`` on success, `_Failed` with the answer otherwise."""
        try:
            response = self.http.request("POST", API + endpoint, body, {"Content-Type": "application/json"})
        except HttpFailure as failed:
            raise _Failed(failed.answer) from None
        envelope = _envelope(response)
        if envelope is None:
            failure = transport_failure(response, self.describe())
            if failure is not None:
                raise _Failed(failure)
            said = f"{response.describe()}, {response.content_type or 'untyped'}"
            raise _Failed(Unreachable(f"/{API}{endpoint} answered something that is not cfssl's JSON ({said})", True))
        if envelope.get("success") is True and isinstance(envelope.get("result"), dict):
            return dict(envelope["result"])
        raise _Failed(self._error(envelope, response))

    def _error(self, envelope: dict[str, Any], response: HttpResponse) -> Answer:
        errors = envelope.get("errors") or []
        first = errors[0] if errors and isinstance(errors[0], dict) else {}
        message = str(first.get("message") or response.describe())
        code = first.get("code")
        number = code if isinstance(code, int) and not isinstance(code, bool) else None
        label = f"cfssl {number}" if number is not None else response.describe()
        if message.lower() in AUTH_REFUSALS:
            return Misconfigured(
                f"the CA refused the request's authentication ({message}): the signing profile needs auth_key_source "
                "with its auth_keys entry (hex), and that key must be right",
                True,
            )
        category = number // 1000 if number is not None and number >= 1000 else None
        if category in REJECTING_CATEGORIES:
            return Rejected(message, label, f"cfssl's {REJECTING_CATEGORIES[category]} check refuses the request")
        if category is not None or response.status >= 500:
            return Unreachable(f"the CA failed: {message} ({label})", retry_after=response.retry_after())
        if response.status == 404:
            return Misconfigured(f"{response.describe()} for {response.url}: is this a cfssl URL?")
        return Rejected(message, label, None)

    def _issued(self, result: dict[str, Any], request: CaRequest, ca: bytes) -> Answer:
        try:
            leaf = _certificate_der(result.get("certificate"), "/sign")
        except _Failed as failed:
            return failed.answer
        if certificate_key_sha256(leaf) != request.public_key_sha256:
            return Unreachable("cfssl answered with a certificate for another key than the request's", True)
        anchors = self.trust or (ca,)
        check_issued_under(leaf, (ca,), anchors, "the certificate cfssl signed")
        chain = (ca,) if ca != leaf else ()
        return Issued.certs_only(leaf, chain)


class _Failed(Exception):
    def __init__(self, answer: Answer) -> None:
        super().__init__(getattr(answer, "message", ""))
        self.answer = answer


def _envelope(response: HttpResponse) -> dict[str, Any] | None:
    """cfssl's JSON envelope, or None when the body is not one."""
    try:
        data = json.loads(response.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or "success" not in data:
        return None
    return data


def _certificate_der(pem: object, where: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    if not isinstance(pem, str):
        raise _Failed(Unreachable(f"cfssl's {where} answer holds no certificate", True))
    try:
        return x509.load_pem_x509_certificate(pem.encode("ascii")).public_bytes(Encoding.DER)
    except (ValueError, UnicodeEncodeError) as exc:
        raise _Failed(Unreachable(f"cfssl's {where} answer holds no readable certificate ({exc})", True)) from None


def _pem_request(der: bytes) -> str:
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
