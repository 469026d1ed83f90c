"""SCEP, the Simple Certificate Enrolment Protocol (RFC 8894): PKCSReq and CertPoll over HTTP.

An exchange is one HTTP request to ``URL?operation=...``:

- ``GetCACaps``: what the server can do, one word a line (POSTPKIOperation, AES, DES3, SHA-256, ...).
- ``GetCACert``: the CA certificate (``application/x-x509-ca-cert``), or a certs-only PKCS #7 with
  the CA and its RA certificates (``application/x-x509-ca-ra-cert``). The request is encrypted to
  the RA's encryption certificate when there is one, else to the CA's; the CertRep must be signed by
  one of them. With ``trust`` configured they must lead to it (plain HTTP can be intercepted).
- ``PKIOperation``: a pkiMessage, CMS SignedData around an EnvelopedData (RFC 8894 3.2). PKCSReq
  (messageType 19) envelopes the PKCS #10, CertPoll (20) an IssuerAndSubject. It is signed by the
  request's own key on the token, through a self-signed certificate made in memory for the message
  (3.2.2: the requester has no certificate yet); the CA encrypts its answer to that certificate's
  key, so the CertRep's content key is decrypted on the token (C_Decrypt, CKM_RSA_PKCS) and only
  the content itself (DES, 3DES or AES-CBC) in software. Hence RSA only, and CKA_DECRYPT
  (`key_needs`): EC keys have no key transport in SCEP.

The CertRep (messageType 3) is checked before it is read: signature by a GetCACert certificate,
transactionID ours, recipientNonce our senderNonce; anything else is `VerificationError`. Its
pkiStatus gives the answer: SUCCESS -> `Issued`, PENDING -> `Pending` (the cookie is the
transactionID; `poll` sends CertPoll), FAILURE -> `Rejected` with the failInfo.

The challenge password (RFC 8894 2.2) belongs inside the PKCS #10, which is signed before any
connector runs: `tokenagent enroll` reads ``challenge_source`` before the key is generated and
`request_attributes` puts the challengePassword attribute into the request (the pending store
therefore holds it inside the stored request, as every SCEP client's CSR file does; `show` prints
"(present, not shown)"). A request without one is sent as it is: a server that wants a challenge
answers FAILURE badRequest.

Content encryption of the request: AES-128-CBC when GetCACaps says AES, else DES3 (RFC 8894's
minimum), never single DES. Single DES-CBC is decrypted (micromdm scepserver answers with it
whatever the request used) with `cryptography`'s TripleDES with K1 = K2 = K3, which is DES; the
decrepit module is used for TripleDES where the installed `cryptography` has it.

Peer notes (tests: Debian scep 2.1.0, micromdm scepserver): it re-encodes the signed attributes
before checking the signature, so they must be DER-sorted (asn1crypto's SetOf sorts them);
GetCACaps ``Renewal SHA-1 SHA-256 AES DES3 SCEPStandard POSTPKIOperation``; GetCACert one DER
certificate; the CertRep is encrypted with single DES-CBC; a wrong challenge and an EC key are
FAILURE badRequest; a body that is no pkiMessage is HTTP 500 with a text reason; it never pends.

RenewalReq (messageType 17, RFC 8894 3.3.1.2): when `enroll` lends the certificate being renewed
(INF ``RenewalCert``, `CaRequest.renewal`), the pkiMessage around the NEW key's PKCS #10 is signed
with that old certificate and its key instead of a self-signed certificate. The CA encrypts its
CertRep to the signer's certificate, so the OLD key decrypts the content key (C_Decrypt on the
token): it must be RSA with CKA_DECRYPT, as a key SCEP certified is. scepserver (``-allowrenew 0``)
issues it and still wants the challenge in the PKCS #10. `enroll --resume` lends no old key: a
CertPoll is signed by the new key (self-signed), which RFC 8894 allows; a RenewalReq that never
reached the CA is then sent as a PKCSReq.
"""

from __future__ import annotations

import base64
import logging
import secrets
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from asn1crypto import algos, cms, core, csr, parser, x509
from cryptography import x509 as crypto_x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES  # 64-bit block ciphers live here
from cryptography.hazmat.primitives import padding as symmetric_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from tokenagent.ca.answers import Answer, Issued, Misconfigured, Pending, Rejected, Unreachable
from tokenagent.ca.connector import CaRequest, KeyNeeds, RequesterKey, certificate_key_sha256
from tokenagent.ca.http import HttpClient, HttpFailure, HttpResponse, HttpSettings, said_text, transport_failure
from tokenagent.ca.profiles import CaProfile
from tokenagent.ca.trust import check_issued_under
from tokenagent.errors import CAConfigError, TokenAgentError, VerificationError
from tokenagent.request.algorithms import digest, digest_algorithm
from tokenagent.request.asn1.cms import EncapsulatedContentInfo
from tokenagent.request.cms_verify import verify_signature
from tokenagent.request.oids import OID_CHALLENGE_PASSWORD

log = logging.getLogger("tokenagent")

PKI_MESSAGE_TYPE = "application/x-pki-message"
CA_CERT_TYPE = "application/x-x509-ca-cert"
CA_RA_CERT_TYPE = "application/x-x509-ca-ra-cert"

# RFC 8894 3.2.1 (id-VeriSign 2.16.840.1.113733 . pki(1) . attributes(9))
OID_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
OID_PKI_STATUS = "2.16.840.1.113733.1.9.3"
OID_FAIL_INFO = "2.16.840.1.113733.1.9.4"
OID_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
OID_RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
OID_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
OID_FAIL_INFO_TEXT = "1.3.6.1.5.5.7.24.1"  # RFC 8894 3.2.1.4.1

# RFC 8894 3.2.1.2 messageType
CERT_REP, RENEWAL_REQ, PKCS_REQ, CERT_POLL = "3", "17", "19", "20"
# RFC 8894 3.2.1.3 pkiStatus
SUCCESS, FAILURE, PENDING = "0", "2", "3"

#: RFC 8894 3.2.1.4 failInfo, in plain words.
FAIL_INFO: dict[str, tuple[str, str]] = {
    "0": ("badAlg", "the CA does not accept an algorithm of the message"),
    "1": ("badMessageCheck", "the message's signature did not verify at the CA (integrity check failed)"),
    "2": (
        "badRequest",
        "the CA refuses the request: a wrong or used challenge password, a key type it does not issue "
        "(RSA only for many), or a request it does not permit",
    ),
    "3": ("badTime", "the message's signingTime is too far from the CA's time"),
    "4": ("badCertId", "no certificate matches the message's identifier"),
}

WHY = (
    "SCEP signs its messages with the request's key and the CA encrypts the certificate back to it by RSA key "
    "transport (RFC 8894 3.1): SCEP has no way to encrypt to an EC key"
)


# -- ASN.1 (RFC 8894 3.2) ---------------------------------------------------------------------------


class ScepAttributeType(core.ObjectIdentifier):
    """The signed attributes of a pkiMessage: CMS's own and SCEP's (RFC 8894 3.2.1)."""

    _map: ClassVar[dict[str, str]] = {
        "1.2.840.113549.1.9.3": "content_type",
        "1.2.840.113549.1.9.4": "message_digest",
        "1.2.840.113549.1.9.5": "signing_time",
        OID_MESSAGE_TYPE: "message_type",
        OID_PKI_STATUS: "pki_status",
        OID_FAIL_INFO: "fail_info",
        OID_SENDER_NONCE: "sender_nonce",
        OID_RECIPIENT_NONCE: "recipient_nonce",
        OID_TRANSACTION_ID: "transaction_id",
        OID_FAIL_INFO_TEXT: "fail_info_text",
    }


class SetOfPrintableString(core.SetOf):
    """messageType, pkiStatus, failInfo, transactionID: PrintableString (decimal or hex text)."""

    _child_spec = core.PrintableString


class SetOfOctetString(core.SetOf):
    """senderNonce, recipientNonce (16 random bytes), messageDigest."""

    _child_spec = core.OctetString


class SetOfUTF8String(core.SetOf):
    """failInfoText."""

    _child_spec = core.UTF8String


class ScepAttribute(core.Sequence):
    """Attribute ::= SEQUENCE { attrType OBJECT IDENTIFIER, attrValues SET OF ANY DEFINED BY attrType }."""

    _fields: ClassVar[list[Any]] = [("type", ScepAttributeType), ("values", None)]
    _oid_specs: ClassVar[dict[str, type[core.Asn1Value]]] = {
        "content_type": cms.SetOfContentType,
        "message_digest": SetOfOctetString,
        "signing_time": cms.SetOfTime,
        "message_type": SetOfPrintableString,
        "pki_status": SetOfPrintableString,
        "fail_info": SetOfPrintableString,
        "sender_nonce": SetOfOctetString,
        "recipient_nonce": SetOfOctetString,
        "transaction_id": SetOfPrintableString,
        "fail_info_text": SetOfUTF8String,
    }

    def _values_spec(self) -> type[core.Asn1Value]:
        return self._oid_specs.get(self["type"].native, cms.SetOfAny)

    _spec_callbacks: ClassVar[dict[str, Any]] = {"values": _values_spec}


class ScepAttributes(core.SetOf):
    """SignedAttributes ::= SET OF Attribute: DER-sorted when encoded (scepserver re-encodes to verify)."""

    _child_spec = ScepAttribute


class ScepSignerInfo(core.Sequence):
    """SignerInfo (RFC 5652 5.3) with the SCEP attributes declared."""

    _fields: ClassVar[list[Any]] = [
        ("version", cms.CMSVersion),
        ("sid", cms.SignerIdentifier),
        ("digest_algorithm", algos.DigestAlgorithm),
        ("signed_attrs", ScepAttributes, {"implicit": 0, "optional": True}),
        ("signature_algorithm", algos.SignedDigestAlgorithm),
        ("signature", core.OctetString),
        ("unsigned_attrs", cms.CMSAttributes, {"implicit": 1, "optional": True}),
    ]


class ScepSignerInfos(core.SetOf):
    _child_spec = ScepSignerInfo


class ScepSignedData(core.Sequence):
    """SignedData (RFC 5652 5.1); the content (id-data) is the DER of a pkcsPKIEnvelope, or absent."""

    _fields: ClassVar[list[Any]] = [
        ("version", cms.CMSVersion),
        ("digest_algorithms", cms.DigestAlgorithms),
        ("encap_content_info", EncapsulatedContentInfo),
        ("certificates", cms.CertificateSet, {"implicit": 0, "optional": True}),
        ("crls", cms.RevocationInfoChoices, {"implicit": 1, "optional": True}),
        ("signer_infos", ScepSignerInfos),
    ]


class PkiMessage(core.Sequence):
    """pkiMessage: ContentInfo { id-signedData, SignedData } (RFC 8894 3.2)."""

    _fields: ClassVar[list[Any]] = [
        ("content_type", cms.ContentType),
        ("content", ScepSignedData, {"explicit": 0}),
    ]


class ScepEncryptedContentInfo(core.Sequence):
    """EncryptedContentInfo (RFC 5652 6.1). encryptedContent [0] IMPLICIT OCTET STRING may come in
    BER's constructed form with a definite length (micromdm scepserver), which asn1crypto's
    OctetString refuses: it is read as raw bytes and its chunks joined by `_encrypted_content`."""

    _fields: ClassVar[list[Any]] = [
        ("content_type", cms.ContentType),
        ("content_encryption_algorithm", cms.EncryptionAlgorithm),
        ("encrypted_content", core.Any, {"implicit": 0, "optional": True}),
    ]


class ScepEnvelopedData(core.Sequence):
    """EnvelopedData (RFC 5652 6.1) with the encryptedContent above."""

    _fields: ClassVar[list[Any]] = [
        ("version", cms.CMSVersion),
        ("originator_info", cms.OriginatorInfo, {"implicit": 0, "optional": True}),
        ("recipient_infos", cms.RecipientInfos),
        ("encrypted_content_info", ScepEncryptedContentInfo),
        ("unprotected_attrs", cms.CMSAttributes, {"implicit": 1, "optional": True}),
    ]


class PkiEnvelope(core.Sequence):
    """pkcsPKIEnvelope: ContentInfo { id-envelopedData, EnvelopedData } (RFC 8894 3.2.2)."""

    _fields: ClassVar[list[Any]] = [
        ("content_type", cms.ContentType),
        ("content", ScepEnvelopedData, {"explicit": 0}),
    ]


class IssuerAndSubject(core.Sequence):
    """CertPoll's messageData (RFC 8894 3.3.3): the CA's name and the request's subject."""

    _fields: ClassVar[list[Any]] = [("issuer", x509.Name), ("subject", x509.Name)]


# -- the protocol module's hooks -------------------------------------------------------------------


def key_needs(profile: CaProfile) -> KeyNeeds:
    return KeyNeeds("SCEP", families=("RSA",), decrypt=True, signs_messages=True, why=WHY)


def request_attributes(profile: CaProfile) -> list[csr.CRIAttribute]:
    """The challengePassword attribute (PKCS #9, RFC 2985 5.4.1) from ``challenge_source``, or none.

    Read once, before the key is generated (a source that cannot be read stops `enroll` early)."""
    text = profile.option("challenge_source")
    if text is None:
        return []
    from tokenagent.secret_sources import parse_secret_source

    source = parse_secret_source(text, "challenge password", "challenge_source")
    secret = source.read(f"SCEP challenge password for {profile.describe()}: ", CAConfigError).reveal()
    value: core.Asn1Value = core.PrintableString(secret) if _printable(secret) else core.UTF8String(secret)
    return [csr.CRIAttribute({"type": OID_CHALLENGE_PASSWORD, "values": [value]})]


def connector_for(profile: CaProfile, settings: HttpSettings, trust: tuple[bytes, ...]) -> ScepConnector:
    return ScepConnector(profile.url, settings, trust=trust)


def _printable(text: str) -> bool:
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")
    return all(char in allowed for char in text)


# -- the connector -----------------------------------------------------------------------------------


class _Failed(Exception):
    """An answer reached before the exchange could finish (carried out of helper functions)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.state)
        self.answer = answer


@dataclass(frozen=True)
class CaCertificates:
    """What GetCACert said: the CA, the certificate to encrypt to, everything it sent."""

    ca: bytes
    recipient: bytes
    all: tuple[bytes, ...]


@dataclass(frozen=True)
class _Sent:
    """What the CertRep must match: our transactionID and senderNonce, and the signer certificate."""

    transaction_id: str
    sender_nonce: bytes
    signer: bytes


class ScepConnector:
    protocol = "scep"

    def __init__(self, url: str, settings: HttpSettings, *, trust: tuple[bytes, ...]) -> None:
        self.http = HttpClient(url, settings)
        self.trust = trust
        self._caps: frozenset[str] | None = None
        self._ca: CaCertificates | None = None

    def describe(self) -> str:
        return self.http.url_for("")

    def close(self) -> None:
        self.http.close()

    def ca_certificates(self) -> tuple[bytes, ...]:
        try:
            ca = self._ca_certs()
        except (_Failed, VerificationError):
            return self.trust
        return (ca.ca, *(der for der in ca.all if der != ca.ca))

    def submit(self, request: CaRequest) -> Answer:
        return self._exchange(request, PKCS_REQ, request.der)

    def poll(self, cookie: str, request: CaRequest | None) -> Answer:
        if request is None:
            return Misconfigured(
                "a pending SCEP request is asked about with CertPoll, signed by its key: run tokenagent enroll "
                "--resume ID (the request is not in the pending store here)"
            )
        try:
            ca = self._ca_certs()
        except _Failed as failed:
            return failed.answer
        subject = csr.CertificationRequest.load(request.der)["certification_request_info"]["subject"]
        issuer = crypto_x509.load_der_x509_certificate(ca.ca).subject.public_bytes()
        content = IssuerAndSubject({"issuer": x509.Name.load(issuer), "subject": subject}).dump()
        return self._exchange(request, CERT_POLL, content)

    # -- one PKIOperation -----------------------------------------------------------------------------

    def _exchange(self, request: CaRequest, message_type: str, content: bytes) -> Answer:
        refused = _unusable(request)
        if refused is not None:
            return refused
        assert request.key is not None
        key = request.key
        signer = _signer_certificate(request, key)
        if message_type == PKCS_REQ and request.renewal is not None:
            # RFC 8894 3.3.1.2: a renewal is signed with the certificate being renewed and its key; the
            # CA encrypts its CertRep to that signer certificate, so the OLD key decrypts it too
            if request.renewal.key.family != "RSA":
                return Misconfigured(
                    f"SCEP RenewalReq is signed with the renewed certificate's key and the CA encrypts to it: "
                    f"it must be RSA, not {request.renewal.key.family}"
                )
            message_type, key, signer = RENEWAL_REQ, request.renewal.key, request.renewal.certificate
        try:
            caps = self._capabilities()
            ca = self._ca_certs()
            hash_name = "sha256" if caps & {"SHA-256", "SCEPSTANDARD"} else "sha1"
            sent = _Sent(_transaction_id(request), secrets.token_bytes(16), signer)
            envelope = _envelope(content, ca.recipient, caps)
            message = _pki_message(envelope, message_type, sent, key, hash_name)
            response = self._send(message, caps)
            return self._answer(response, sent, ca, key, request)
        except _Failed as failed:
            return failed.answer

    def _capabilities(self) -> frozenset[str]:
        if self._caps is None:
            response = self._get("GetCACaps")
            failure = transport_failure(response, self.describe())
            if failure is not None and response.status != 404:
                raise _Failed(failure)
            # RFC 8894 3.5.2: a server without GetCACaps has none of the capabilities
            text = response.body.decode("ascii", "replace") if response.status == 200 else ""
            self._caps = frozenset(word.strip().upper() for word in text.split() if word.strip())
            log.debug("SCEP capabilities of %s: %s", self.describe(), " ".join(sorted(self._caps)) or "none")
        return self._caps

    def _ca_certs(self) -> CaCertificates:
        if self._ca is None:
            response = self._get("GetCACert")
            failure = transport_failure(response, self.describe())
            if failure is not None:
                raise _Failed(failure)
            if response.status != 200:
                raise _Failed(Misconfigured(f"GetCACert: {response.describe()}; is {self.describe()} a SCEP URL?"))
            self._ca = _read_ca_certs(response, self.trust)
        return self._ca

    def _get(self, operation: str, message: str | None = None) -> HttpResponse:
        query = {"operation": operation, **({"message": message} if message is not None else {})}
        try:
            return self.http.request("GET", self._path(query))
        except HttpFailure as failed:
            raise _Failed(failed.answer) from None

    def _path(self, query: dict[str, str]) -> str:
        # the query goes onto the configured path itself (/scep?operation=...), not below it
        return (self.http.parts.path or "/") + "?" + urllib.parse.urlencode(query)

    def _send(self, message: bytes, caps: frozenset[str]) -> HttpResponse:
        if caps & {"POSTPKIOPERATION", "SCEPSTANDARD"}:
            path = self._path({"operation": "PKIOperation"})
            try:
                response = self.http.request("POST", path, message, {"Content-Type": PKI_MESSAGE_TYPE})
            except HttpFailure as failed:
                raise _Failed(failed.answer) from None
        else:
            response = self._get("PKIOperation", base64.b64encode(message).decode("ascii"))
        failure = transport_failure(response, self.describe())
        if failure is not None:
            raise _Failed(failure)
        if response.status != 200:
            said = said_text(response)
            raise _Failed(Rejected(said or response.reason, response.describe(), "the SCEP server refused the message"))
        if response.content_type != PKI_MESSAGE_TYPE:
            typed = response.content_type or "untyped"
            raise _Failed(Unreachable(f"the PKIOperation answer is {typed}, not {PKI_MESSAGE_TYPE}", True))
        return response

    def _answer(
        self, response: HttpResponse, sent: _Sent, ca: CaCertificates, key: RequesterKey, request: CaRequest
    ) -> Answer:
        where = f"the CertRep of {self.describe()}"
        signed, attributes = _verified_cert_rep(response.body, ca, sent, where)
        status = attributes.get("pki_status")
        if status == PENDING:
            message = "the CA holds the request for approval (SCEP PENDING); ask again with tokenagent enroll --resume"
            return Pending(sent.transaction_id, sent.transaction_id, response.retry_after(), message)
        if status == FAILURE:
            code, meaning = FAIL_INFO.get(
                str(attributes.get("fail_info")), (f"failInfo {attributes.get('fail_info')}", "")
            )
            said = str(attributes.get("fail_info_text") or f"SCEP FAILURE {code}")
            return Rejected(said, code, meaning or None)
        if status != SUCCESS:
            return Unreachable(f"{where} has pkiStatus {status!r}, not SUCCESS, FAILURE or PENDING", True)
        envelope = _octets(signed["encap_content_info"]["content"])
        if not envelope:
            return Unreachable(f"{where} says SUCCESS but holds no pkcsPKIEnvelope", True)
        certificates = _decrypted_certificates(envelope, key, sent.signer, where)
        leaf = next((der for der in certificates if certificate_key_sha256(der) == request.public_key_sha256), None)
        if leaf is None:
            return Unreachable(f"{where} holds no certificate for the request's key", True)
        path = check_issued_under(
            leaf, [*certificates, *ca.all], [*ca.all, *self.trust], "the certificate in the CA's answer"
        )
        chain = tuple(der for der in dict.fromkeys([*path[1:], ca.ca]) if der != leaf)
        return Issued.certs_only(leaf, chain)


# -- building a pkiMessage ----------------------------------------------------------------------------


def _unusable(request: CaRequest) -> Answer | None:
    if request.form != "PKCS10":
        return Misconfigured(
            f"SCEP carries a PKCS#10 request, not {request.form}: make it with RequestType = PKCS10 (the default)"
        )
    if request.attributes:
        return Misconfigured(
            "SCEP has no request attributes outside the PKCS#10: --attrib and profile attributes cannot be sent"
        )
    if request.key is None:
        return Misconfigured(
            "SCEP signs its messages with the request's key and the CA encrypts the certificate to it: "
            "use tokenagent enroll (or enroll --resume), which opens the key's token; submit and retrieve cannot"
        )
    if request.key.family != "RSA":
        return Misconfigured(f"SCEP needs an RSA key (RSA key transport, RFC 8894 3.1), not {request.key.family}")
    return None


def _transaction_id(request: CaRequest) -> str:
    """RFC 8894 3.2.1.1: a hash of the public key, so that it stays the same for every poll."""
    return request.public_key_sha256.upper()


def _signer_certificate(request: CaRequest, key: RequesterKey) -> bytes:
    """The self-signed certificate for the request's key that signs the message (RFC 8894 2.3),
    made in memory and signed on the token; never stored."""
    subject = csr.CertificationRequest.load(request.der)["certification_request_info"]["subject"]
    if not subject.chosen.native:
        subject = x509.Name.build({"common_name": _transaction_id(request)[:64]})
    now = datetime.now(UTC).replace(microsecond=0)
    tbs = x509.TbsCertificate(
        {
            "version": "v1",
            "serial_number": secrets.randbits(63) | 1,
            "signature": {"algorithm": "sha256_rsa"},
            "issuer": subject,
            "validity": {
                "not_before": x509.Time({"utc_time": now - timedelta(hours=1)}),
                "not_after": x509.Time({"utc_time": now + timedelta(days=1)}),
            },
            "subject": subject,
            "subject_public_key_info": x509.PublicKeyInfo.load(key.public_key_info),
        }
    )
    signature = key.sign(tbs.dump(), "sha256")
    return x509.Certificate(
        {"tbs_certificate": tbs, "signature_algorithm": {"algorithm": "sha256_rsa"}, "signature_value": signature}
    ).dump()


def _envelope(content: bytes, recipient_der: bytes, caps: frozenset[str]) -> bytes:
    """pkcsPKIEnvelope: EnvelopedData (RFC 5652 6) of ``content`` to the CA/RA's RSA key."""
    recipient = crypto_x509.load_der_x509_certificate(recipient_der)
    public_key = recipient.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise _Failed(Misconfigured("the SCEP CA's certificate has no RSA key to encrypt the request to"))
    if "AES" in caps:
        name, key, iv = "aes128_cbc", secrets.token_bytes(16), secrets.token_bytes(16)
        encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        block = 128
    else:
        name, key, iv = "tripledes_3key", secrets.token_bytes(24), secrets.token_bytes(8)
        encryptor = Cipher(TripleDES(key), modes.CBC(iv)).encryptor()
        block = 64
    padder = symmetric_padding.PKCS7(block).padder()
    encrypted = encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()
    certificate = x509.Certificate.load(recipient_der)
    info = cms.KeyTransRecipientInfo(
        {
            "version": "v0",
            "rid": cms.RecipientIdentifier(
                name="issuer_and_serial_number",
                value=cms.IssuerAndSerialNumber(
                    {"issuer": certificate.issuer, "serial_number": certificate.serial_number}
                ),
            ),
            "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
            "encrypted_key": public_key.encrypt(key, padding.PKCS1v15()),
        }
    )
    enveloped = cms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": [cms.RecipientInfo(name="ktri", value=info)],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {"algorithm": name, "parameters": core.OctetString(iv)},
                "encrypted_content": encrypted,
            },
        }
    )
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


def _pki_message(envelope: bytes, message_type: str, sent: _Sent, key: RequesterKey, hash_name: str) -> bytes:
    attributes = ScepAttributes(
        [
            ScepAttribute({"type": "content_type", "values": ["data"]}),
            ScepAttribute({"type": "message_digest", "values": [digest(hash_name, envelope)]}),
            ScepAttribute({"type": "message_type", "values": [message_type]}),
            ScepAttribute({"type": "transaction_id", "values": [sent.transaction_id]}),
            ScepAttribute({"type": "sender_nonce", "values": [sent.sender_nonce]}),
        ]
    )
    # RFC 5652 5.4: the signature covers the DER of the SET OF attributes (sorted, tag 0x31)
    to_sign = attributes.dump()
    signer = x509.Certificate.load(sent.signer)
    info = ScepSignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                name="issuer_and_serial_number",
                value=cms.IssuerAndSerialNumber({"issuer": signer.issuer, "serial_number": signer.serial_number}),
            ),
            "digest_algorithm": digest_algorithm(hash_name),
            "signed_attrs": attributes,
            "signature_algorithm": {"algorithm": f"{hash_name}_rsa"},
            "signature": key.sign(to_sign, hash_name),
        }
    )
    signed = ScepSignedData(
        {
            "version": "v1",
            "digest_algorithms": [digest_algorithm(hash_name)],
            "encap_content_info": {"content_type": "data", "content": envelope},
            "certificates": [cms.CertificateChoices(name="certificate", value=signer)],
            "signer_infos": [info],
        }
    )
    return PkiMessage({"content_type": "signed_data", "content": signed}).dump()


# -- reading answers ------------------------------------------------------------------------------------


def _read_ca_certs(response: HttpResponse, trust: tuple[bytes, ...]) -> CaCertificates:
    """GetCACert: one certificate, or a certs-only PKCS #7 with the CA and its RA certificates."""
    body = response.body
    try:
        if response.content_type == CA_RA_CERT_TYPE or _is_content_info(body):
            found = tuple(c.public_bytes(Encoding.DER) for c in pkcs7.load_der_pkcs7_certificates(body))
        else:
            found = (crypto_x509.load_der_x509_certificate(body).public_bytes(Encoding.DER),)
    except ValueError as exc:
        raise _Failed(Unreachable(f"GetCACert answered no readable certificate ({exc})", True)) from None
    if not found:
        raise _Failed(Unreachable("GetCACert answered no certificate", True))
    loaded = {der: crypto_x509.load_der_x509_certificate(der) for der in found}
    authorities = [der for der, cert in loaded.items() if _is_ca(cert)]
    ras = [der for der, cert in loaded.items() if not _is_ca(cert)]
    # the CA is the one that issued the RA certificates; without RAs, the lowest CA (its root may come along)
    over_ras = [der for der in authorities if any(loaded[ra].issuer == loaded[der].subject for ra in ras)]
    lowest = [
        der for der in authorities if not any(loaded[o].issuer == loaded[der].subject for o in authorities if o != der)
    ]
    ca = (over_ras or lowest or authorities or list(found))[0]
    encrypting = [der for der in ras if _may_encrypt(loaded[der])]
    recipient = (encrypting or ras or [ca])[0]
    if trust:
        for der in found:
            check_issued_under(der, found, trust, "the SCEP CA certificate from GetCACert")
    return CaCertificates(ca, recipient, found)


def _is_content_info(body: bytes) -> bool:
    try:
        return cms.ContentInfo.load(body)["content_type"].native == "signed_data"
    except (ValueError, TypeError):
        return False


def _is_ca(certificate: crypto_x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(crypto_x509.BasicConstraints).value.ca)
    except crypto_x509.ExtensionNotFound:
        return certificate.issuer == certificate.subject
    except ValueError:
        return False


def _may_encrypt(certificate: crypto_x509.Certificate) -> bool:
    try:
        usage = certificate.extensions.get_extension_for_class(crypto_x509.KeyUsage).value
    except crypto_x509.ExtensionNotFound:
        return True
    except ValueError:
        return False
    return bool(usage.key_encipherment)


def _verified_cert_rep(
    body: bytes, ca: CaCertificates, sent: _Sent, where: str
) -> tuple[ScepSignedData, dict[str, Any]]:
    """The CertRep's SignedData and signed attributes, once its signature, transactionID and
    recipientNonce are ours; `VerificationError` otherwise (it is not our CA's answer)."""
    try:
        message = PkiMessage.load(body)
        signed = message["content"]
        infos = list(signed["signer_infos"])
        if message["content_type"].native != "signed_data" or len(infos) != 1:
            raise ValueError("not a SignedData with one signer")
        info = infos[0]
        attributes = {attr["type"].native: attr["values"][0].native for attr in info["signed_attrs"]}
        certificates = [c.chosen.dump() for c in signed["certificates"] or [] if c.name == "certificate"]
        sid = info["sid"]
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise _Failed(Unreachable(f"{where} is not a pkiMessage ({str(exc).splitlines()[0]})", True)) from None
    signer = _signer_of(sid, [*ca.all, *certificates])
    if signer is None or (signer not in ca.all and not _issued_by_any(signer, ca.all)):
        raise VerificationError(f"{where}: not signed by the CA or RA certificate of GetCACert; nothing was installed")
    hash_name = info["digest_algorithm"]["algorithm"].native
    content_bytes = _octets(signed["encap_content_info"]["content"])
    if attributes.get("message_digest") != _digest_or_none(hash_name, content_bytes):
        raise VerificationError(f"{where}: its messageDigest does not match its content; nothing was installed")
    public_key = crypto_x509.load_der_x509_certificate(signer).public_key()
    signed_attrs = b"\x31" + info["signed_attrs"].dump()[1:]
    ok, why = verify_signature(
        public_key, info["signature_algorithm"], hash_name, bytes(info["signature"].native), signed_attrs
    )
    if ok is not True:
        raise VerificationError(f"{where}: {why}; nothing was installed")
    if attributes.get("message_type") != CERT_REP:
        raise VerificationError(f"{where}: messageType {attributes.get('message_type')!r} is not CertRep (3)")
    if attributes.get("transaction_id") != sent.transaction_id:
        raise VerificationError(f"{where}: its transactionID is not the request's (an answer to another request)")
    if attributes.get("recipient_nonce") != sent.sender_nonce:
        raise VerificationError(
            f"{where}: its recipientNonce is not our senderNonce (an answer to another message, or a replay); "
            "nothing was installed"
        )
    return signed, attributes


def _octets(value: core.Asn1Value) -> bytes:
    """An optional eContent's bytes (b"" when absent: FAILURE and PENDING carry none)."""
    return bytes(value.native) if isinstance(value, core.OctetString) and value.native is not None else b""


def _digest_or_none(hash_name: str, content: bytes) -> bytes | None:
    try:
        return digest(hash_name, content)
    except (ValueError, KeyError, TokenAgentError):
        return None


def _signer_of(sid: cms.SignerIdentifier, candidates: list[bytes]) -> bytes | None:
    for der in candidates:
        certificate = x509.Certificate.load(der)
        if sid.name == "issuer_and_serial_number":
            wanted = sid.chosen
            if certificate.issuer == wanted["issuer"] and certificate.serial_number == wanted["serial_number"].native:
                return der
        elif certificate.key_identifier == sid.chosen.native:
            return der
    return None


def _issued_by_any(der: bytes, authorities: tuple[bytes, ...]) -> bool:
    try:
        check_issued_under(der, authorities, authorities, "the CertRep's signer")
    except VerificationError:
        return False
    return True


def _decrypted_certificates(envelope: bytes, key: RequesterKey, signer: bytes, where: str) -> list[bytes]:
    """The certs-only SignedData inside the CertRep's EnvelopedData: the content key by C_Decrypt on
    the token, the content in software."""
    try:
        info = PkiEnvelope.load(envelope)
        enveloped = info["content"]
        if info["content_type"].native != "enveloped_data":
            raise ValueError(f"a {info['content_type'].native}, not EnvelopedData")
        recipients = [r.chosen for r in enveloped["recipient_infos"] if r.name == "ktri"]
        content_info = enveloped["encrypted_content_info"]
        algorithm = content_info["content_encryption_algorithm"]
        cipher, iv = algorithm.encryption_cipher, algorithm.encryption_iv
        encrypted = _encrypted_content(content_info)
    except (ValueError, TypeError, KeyError) as exc:
        unreadable = f"{where}: its pkcsPKIEnvelope is unreadable ({str(exc).splitlines()[0]})"
        raise _Failed(Unreachable(unreadable, True)) from None
    ours = x509.Certificate.load(signer)
    recipient = next(
        (
            r
            for r in recipients
            if r["rid"].name == "issuer_and_serial_number"
            and r["rid"].chosen["serial_number"].native == ours.serial_number
        ),
        recipients[0] if len(recipients) == 1 else None,
    )
    if recipient is None:
        raise _Failed(Unreachable(f"{where}: its envelope is not encrypted to the request's key", True))
    content_key = key.decrypt(bytes(recipient["encrypted_key"].native))  # on the token
    plain = _decrypt(cipher, content_key, iv, encrypted, where)
    try:
        return [c.public_bytes(Encoding.DER) for c in pkcs7.load_der_pkcs7_certificates(plain)]
    except ValueError as exc:
        raise _Failed(Unreachable(f"{where}: the decrypted content is no certs-only PKCS #7 ({exc})", True)) from None


def _encrypted_content(info: ScepEncryptedContentInfo) -> bytes:
    """encryptedContent's octets, primitive or constructed (BER: a series of OCTET STRING chunks)."""
    fields = _elements(bytes(info.contents))
    if len(fields) < 3:
        return b""
    _class, method, _tag, _header, contents, _trailer = fields[2]
    if method == 0:
        return contents
    chunks = []
    for chunk in _elements(contents):
        if chunk[2] != 4 or chunk[1] != 0:
            raise ValueError("a constructed encryptedContent holds something else than OCTET STRING chunks")
        chunks.append(chunk[4])
    return b"".join(chunks)


def _elements(data: bytes) -> list[tuple[int, int, int, bytes, bytes, bytes]]:
    """The TLVs one after another in ``data`` (class, method, tag, header, contents, trailer)."""
    found = []
    while data:
        length = parser.peek(data)
        found.append(parser.parse(data[:length]))
        data = data[length:]
    return found


def _decrypt(cipher: str, key: bytes, iv: bytes, data: bytes, where: str) -> bytes:
    """CBC decryption in software: DES (TripleDES with K1 = K2 = K3), 3DES or AES."""
    if cipher == "des" and len(key) == 8:
        algorithm: Any = TripleDES(key * 3)
    elif cipher == "tripledes" and len(key) in (16, 24):
        algorithm = TripleDES(key)
    elif cipher == "aes" and len(key) in (16, 24, 32):
        algorithm = algorithms.AES(key)
    else:
        raise _Failed(Unreachable(f"{where}: content encrypted with {cipher} and a {len(key)}-byte key", True))
    try:
        decryptor = Cipher(algorithm, modes.CBC(iv)).decryptor()
        padded = decryptor.update(data) + decryptor.finalize()
        unpadder = symmetric_padding.PKCS7(algorithm.block_size).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise _Failed(Unreachable(f"{where}: its content does not decrypt ({exc})", True)) from None
