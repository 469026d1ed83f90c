"""Reading CMS SignedData (RFC 5652): the message, what it encapsulates, the certificates it carries,
and the PKCS #10 inside a PKCS7 (id-data) or CMC (id-cct-PKIData) request.

What the wrappers look like:

  PKCS7 request   SignedData v1 { id-data eContent = the PKCS #10, the agent's SignerInfo first,
                  with RequesterName among its signed attributes }
  CMC request     SignedData v3 { id-cct-PKIData eContent (see `cmc.pki_data`), SignerInfos by the
                  request key (sid = subjectKeyIdentifier) and/or agents (sid = issuerAndSerial) }

Every damaged, truncated or unexpected input is an `InputError` naming the input (``what``).
"""

from __future__ import annotations

from typing import TypeVar

from asn1crypto import cms, core, csr
from cryptography import x509

from tokenagent.errors import InputError
from tokenagent.inf.extensions import check_der
from tokenagent.inf.values import ValueProblem
from tokenagent.request.armor import read_der
from tokenagent.request.asn1.cmc import PKIData, PKIResponse
from tokenagent.request.asn1.cms import ContentInfo, SignedData
from tokenagent.request.der import LOAD_ERRORS, PARSE_ERRORS, kind_of, parse_all, reason_of
from tokenagent.request.oids import (
    OID_CONTENT_TYPE,
    OID_DATA,
    OID_ENROLLMENT_NAME_VALUE_PAIR,
    OID_MESSAGE_DIGEST,
    OID_PKI_DATA,
    OID_PKI_RESPONSE,
    OID_SIGNED_DATA,
    OID_SIGNING_TIME,
)

#: Content type names (RFC 5652 section 4 ff., RFC 5272 3.2 and 3.3), for messages and display.
CONTENT_TYPE_NAMES: dict[str, str] = {
    OID_DATA: "id-data",
    OID_SIGNED_DATA: "id-signedData",
    "1.2.840.113549.1.7.3": "id-envelopedData",
    "1.2.840.113549.1.7.5": "id-digestedData",
    "1.2.840.113549.1.7.6": "id-encryptedData",
    "1.2.840.113549.1.9.16.1.2": "id-ct-authData",
    OID_PKI_DATA: "id-cct-PKIData",
    OID_PKI_RESPONSE: "id-cct-PKIResponse",
}

#: Signed attribute names for display (RFC 5652 section 11 and the Microsoft ones requests carry).
SIGNED_ATTRIBUTE_NAMES: dict[str, str] = {
    OID_CONTENT_TYPE: "contentType",
    OID_MESSAGE_DIGEST: "messageDigest",
    OID_SIGNING_TIME: "signingTime",
    "1.2.840.113549.1.9.15": "smimeCapabilities",
    "1.2.840.113549.1.9.52": "cmsAlgorithmProtection",
    OID_ENROLLMENT_NAME_VALUE_PAIR: "enrollmentNameValuePair",
}


#: What a well-formed DER value that is not a CMS message is, for error messages.
_NOT_CMS = {
    "certification-request": "a PKCS #10 certificate request",
    "certificate": "an X.509 certificate",
}


def load_signed_data(data: bytes | str, what: str) -> SignedData:
    """The SignedData of a CMS ContentInfo in ``data`` (any form `read_der` reads), fully parsed."""
    der = read_der(data, what)
    kind = kind_of(der)
    if kind != "content-info":
        raise InputError(f"{what} is not a CMS message: {_NOT_CMS.get(kind, 'neither a PKCS #7 nor a CMC message')}")
    try:
        info = ContentInfo.load(der, strict=True)
        content_type = info["content_type"]
        if content_type.dotted != OID_SIGNED_DATA:
            name = CONTENT_TYPE_NAMES.get(content_type.dotted, "content")
            raise InputError(f"{what} is a CMS {name} ({content_type.dotted}) message, not signed data")
        signed = info["content"]
        if not isinstance(signed, SignedData):
            raise InputError(f"{what} is a signedData ContentInfo without its content")
        parse_all(signed)
        for choice in certificate_choices(signed):
            if choice.name == "certificate":
                x509.load_der_x509_certificate(choice.chosen.dump())
    except LOAD_ERRORS + PARSE_ERRORS as exc:
        raise InputError(f"cannot read {what}: damaged CMS signed data ({reason_of(exc)})") from None
    return signed


def certificate_choices(signed: SignedData) -> list[cms.CertificateChoices]:
    certificates = signed["certificates"]
    return [] if isinstance(certificates, core.Void) else list(certificates)


def econtent(signed: SignedData, what: str) -> tuple[str, bytes]:
    encapsulated = signed["encap_content_info"]
    content = encapsulated["content"]
    if isinstance(content, core.Void):
        raise InputError(f"{what} has no encapsulated content (a detached signature or a certificate bag)")
    return encapsulated["content_type"].dotted, content.native


def certificates_of(signed: SignedData) -> list[bytes]:
    """SignedData.certificates, the X.509 ones (attribute certificates are not for us), DER."""
    return [choice.chosen.dump() for choice in certificate_choices(signed) if choice.name == "certificate"]


def encapsulated(signed: bytes | str, what: str) -> tuple[str, bytes]:
    """(eContentType as a dotted OID, eContent) of a CMS SignedData; `InputError` when detached."""
    return econtent(load_signed_data(signed, what), what)


def check_inner_der(der: bytes, what: str, name: str) -> None:
    """`InputError` unless ``der`` is one complete DER value nested at most `check_der`'s bound deep.

    An eContent is DER inside an OCTET STRING, which `read_der`'s walk over the message does not
    enter. asn1crypto parses recursively (``.native`` of an ANY value, such as an unknown control
    or attribute, follows every level), so a deep nesting in there would end in a RecursionError.
    """
    try:
        check_der(der)
    except ValueProblem as exc:
        raise InputError(f"cannot read {what}: damaged DER in the {name}: {exc}") from None


def load_pki_data(content: bytes, what: str) -> PKIData:
    return _load_cmc(PKIData, content, what, "CMC PKIData")


def load_pki_response(content: bytes, what: str) -> PKIResponse:
    return _load_cmc(PKIResponse, content, what, "CMC PKIResponse")


_Cmc = TypeVar("_Cmc", PKIData, PKIResponse)


def _load_cmc(spec: type[_Cmc], content: bytes, what: str, name: str) -> _Cmc:
    """An eContent as ``spec``, walked first (`check_inner_der`) and parsed in full."""
    check_inner_der(content, what, name)
    try:
        value = spec.load(content, strict=True)
        parse_all(value)
    except PARSE_ERRORS as exc:
        raise InputError(f"cannot read {what}: damaged {name} ({reason_of(exc)})") from None
    return value


def load_certification_request(der: bytes, what: str) -> csr.CertificationRequest:
    check_inner_der(der, what, "certification request")
    try:
        request = csr.CertificationRequest.load(der, strict=True)
        parse_all(request)
        x509.load_der_x509_csr(der)
    except LOAD_ERRORS + PARSE_ERRORS as exc:
        raise InputError(f"cannot read the certification request in {what}: {reason_of(exc)}") from None
    return request


def request_from_content(content_type: str, content: bytes, what: str) -> bytes:
    if content_type == OID_DATA:
        der = content
    elif content_type == OID_PKI_DATA:
        requests = [r for r in load_pki_data(content, what)["req_sequence"] if r.name == "tcr"]
        if not requests:
            raise InputError(f"{what}: the CMC reqSequence holds no PKCS #10 request")
        if len(requests) > 1:
            raise InputError(f"{what}: the CMC reqSequence holds {len(requests)} PKCS #10 requests; expected one")
        der = requests[0].chosen["certification_request"].dump()
    else:
        raise InputError(f"{what}: content type {content_type} does not carry a certification request")
    load_certification_request(der, what)
    return der


def inner_certification_request(signed: bytes | str, what: str) -> bytes:
    """The PKCS #10 DER inside a PKCS7 request (id-data) or a CMC request (the one tcr of reqSequence)."""
    content_type, content = encapsulated(signed, what)
    return request_from_content(content_type, content, what)
