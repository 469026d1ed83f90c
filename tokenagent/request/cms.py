"""CMS SignedData (RFC 5652) around a request: enroll on behalf of (EOBO), CMC, co-signatures.

What the wrappers look like is in ../shared/reference/wire-formats.md sections 1 and 3:

  PKCS7 request   SignedData v1 { id-data eContent = the PKCS #10, the agent's SignerInfo first,
                  with RequesterName among its signed attributes }
  CMC request     SignedData v3 { id-cct-PKIData eContent (see `cmc.pki_data`), SignerInfos by the
                  request key (sid = subjectKeyIdentifier) and/or agents (sid = issuerAndSerial) }

`sign_content` builds a SignedData, `append_signer` adds one more SignerInfo without touching the
earlier ones (CMS signatures are independent of each other), `verify_signers` checks every
SignerInfo, and `encapsulated` / `inner_certification_request` read what was signed. Signing goes
through the `Signer` protocol, so a token key and a software key are used the same way.

Every damaged, truncated or unexpected input is an `InputError` naming the input (``what``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from asn1crypto import algos, cms, core, csr
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tokenagent.display import escape
from tokenagent.errors import InputError, VerificationError
from tokenagent.inf.extensions import check_der
from tokenagent.inf.values import ValueProblem
from tokenagent.request import cmc
from tokenagent.request.algorithms import digest, digest_algorithm
from tokenagent.request.armor import read_der
from tokenagent.request.attributes import (
    OID_ENROLLMENT_NAME_VALUE_PAIR,
    Attribute,
    EnrollmentNameValuePair,
    requester_name_problem,
)
from tokenagent.request.extensions import OID_SUBJECT_KEY_IDENTIFIER, key_identifier
from tokenagent.request.signer import Signer

OID_DATA = "1.2.840.113549.1.7.1"  # id-data
OID_SIGNED_DATA = "1.2.840.113549.1.7.2"  # id-signedData
OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"  # RFC 5652 11.1
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"  # RFC 5652 11.2
OID_SIGNING_TIME = "1.2.840.113549.1.9.5"  # RFC 5652 11.3
OID_RENEWAL_CERTIFICATE = "1.3.6.1.4.1.311.13.1"  # szOID_RENEWAL_CERTIFICATE, MS-WCCE 2.2.2.7.3
REQUESTER_NAME = "RequesterName"

#: Content type names (RFC 5652 section 4 ff., RFC 5272 3.2 and 3.3), for messages and display.
CONTENT_TYPE_NAMES: dict[str, str] = {
    OID_DATA: "id-data",
    OID_SIGNED_DATA: "id-signedData",
    "1.2.840.113549.1.7.3": "id-envelopedData",
    "1.2.840.113549.1.7.5": "id-digestedData",
    "1.2.840.113549.1.7.6": "id-encryptedData",
    "1.2.840.113549.1.9.16.1.2": "id-ct-authData",
    cmc.OID_PKI_DATA: "id-cct-PKIData",
    cmc.OID_PKI_RESPONSE: "id-cct-PKIResponse",
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

# What asn1crypto raises from lazily parsed, damaged DER (it has no exception class of its own).
PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, NotImplementedError)
# cryptography's certificate and request loaders: InvalidVersion is not a ValueError.
LOAD_ERRORS = (ValueError, x509.InvalidVersion)

# Digest algorithms a SignerInfo may name, by asn1crypto's names (RFC 5754 and SHA-1).
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


# -- ASN.1 (RFC 5652 sections 3 and 5) --------------------------------------------------------------
#
# asn1crypto's SetOf sorts its children's encodings whenever it encodes (DER's rule for SET OF).
# For SignerInfos that would move the agent's SignerInfo, the one with RequesterName, away from the
# front where AD CS looks for it (MS-WCCE), and an appended signer could land anywhere. CMS asks
# for DER only inside signed attributes (RFC 5652 5.4, which CMSAttributes still sorts), so the
# three sets of SignedData keep the order they are given in; loaded elements keep their bytes.


class DigestAlgorithms(cms.DigestAlgorithms):
    """DigestAlgorithmIdentifiers ::= SET OF DigestAlgorithmIdentifier, in the order given."""

    _set_contents = core.SequenceOf._set_contents


class CertificateSet(cms.CertificateSet):
    """CertificateSet ::= SET OF CertificateChoices, in the order given."""

    _set_contents = core.SequenceOf._set_contents


class SignerInfos(cms.SignerInfos):
    """SignerInfos ::= SET OF SignerInfo, in the order given: the first signer stays first."""

    _set_contents = core.SequenceOf._set_contents


class EncapsulatedContentInfo(core.Sequence):
    """EncapsulatedContentInfo ::= SEQUENCE { eContentType, eContent [0] EXPLICIT OCTET STRING OPTIONAL }.

    Read the CMS way whatever the SignedData version: asn1crypto reads a version 1 SignedData's
    content as PKCS #7's [0] EXPLICIT ANY, but the signature covers the OCTET STRING's contents.
    """

    _fields: ClassVar[list] = [
        ("content_type", cms.ContentType),
        ("content", core.OctetString, {"explicit": 0, "optional": True}),
    ]


class SignedData(core.Sequence):
    """SignedData (RFC 5652 5.1) with the order-keeping sets above."""

    _fields: ClassVar[list] = [
        ("version", cms.CMSVersion),
        ("digest_algorithms", DigestAlgorithms),
        ("encap_content_info", EncapsulatedContentInfo),
        ("certificates", CertificateSet, {"implicit": 0, "optional": True}),
        ("crls", cms.RevocationInfoChoices, {"implicit": 1, "optional": True}),
        ("signer_infos", SignerInfos),
    ]


class ContentInfo(core.Sequence):
    """ContentInfo ::= SEQUENCE { contentType, content [0] EXPLICIT ANY DEFINED BY contentType } (3)."""

    _fields: ClassVar[list] = [
        ("content_type", cms.ContentType),
        ("content", core.Any, {"explicit": 0, "optional": True}),
    ]
    _oid_pair = ("content_type", "content")
    _oid_specs: ClassVar[dict[str, type[core.Asn1Value]]] = {"signed_data": SignedData}


# -- parsing helpers ----------------------------------------------------------------------------------


def reason_of(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_all(value: core.Asn1Value) -> None:
    """Parse every element asn1crypto has a class for, so damage shows now and not in a later dump.

    Open types (ANY: unknown attribute values, otherName values) stay as they are: asn1crypto's
    generic loader cannot read context-specific tags, and `read_der` already checked their TLVs.
    """
    if isinstance(value, core.Any | core.Void):
        return
    if isinstance(value, core.Choice):
        parse_all(value.chosen)
    elif isinstance(value, core.Sequence):
        for name in value:
            parse_all(value[name])
    elif isinstance(value, core.SequenceOf):
        for child in value:
            parse_all(child)
    else:
        value.native  # noqa: B018 -- integers, OIDs, times, strings are parsed on first use


def _kind_of(der: bytes) -> str:
    """What a well-formed DER value that is not a CMS message is, for error messages."""
    for loader, name in (
        (x509.load_der_x509_csr, "a PKCS #10 certificate request"),
        (x509.load_der_x509_certificate, "an X.509 certificate"),
    ):
        try:
            loader(der)
        except LOAD_ERRORS:
            continue
        return name
    return "neither a PKCS #7 nor a CMC message"


def load_signed_data(data: bytes | str, what: str) -> SignedData:
    """The SignedData of a CMS ContentInfo in ``data`` (any form `read_der` reads), fully parsed."""
    der = read_der(data, what)
    header = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    if der[header : header + 1] != b"\x06":  # ContentInfo starts with its contentType OID
        raise InputError(f"{what} is not a CMS message: {_kind_of(der)}")
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
        for choice in _certificate_choices(signed):
            if choice.name == "certificate":
                x509.load_der_x509_certificate(choice.chosen.dump())
    except LOAD_ERRORS + PARSE_ERRORS as exc:
        raise InputError(f"cannot read {what}: damaged CMS signed data ({reason_of(exc)})") from None
    return signed


def _certificate_choices(signed: SignedData) -> list[cms.CertificateChoices]:
    certificates = signed["certificates"]
    return [] if isinstance(certificates, core.Void) else list(certificates)


def _econtent(signed: SignedData, what: str) -> tuple[str, bytes]:
    encapsulated = signed["encap_content_info"]
    content = encapsulated["content"]
    if isinstance(content, core.Void):
        raise InputError(f"{what} has no encapsulated content (a detached signature or a certificate bag)")
    return encapsulated["content_type"].dotted, content.native


def certificates_of(signed: SignedData) -> list[bytes]:
    """SignedData.certificates, the X.509 ones (attribute certificates are not for us), DER."""
    return [choice.chosen.dump() for choice in _certificate_choices(signed) if choice.name == "certificate"]


# -- building --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignerSpec:
    """Who signs and how the SignerInfo names them.

    ``subject_key_identifier`` given: sid = subjectKeyIdentifier (SignerInfo version 3), e.g. the
    request key of a CMC request, which has no certificate yet. Otherwise sid = issuerAndSerialNumber
    of ``certificate`` (version 1). The certificate, when given, goes into SignedData.certificates.
    Signed attributes: contentType, messageDigest, then ``extra_signed_attributes``.
    """

    signer: Signer
    certificate: bytes | None = None
    subject_key_identifier: bytes | None = None
    extra_signed_attributes: tuple[cms.CMSAttribute, ...] = ()


def requester_name_attribute(name: str) -> cms.CMSAttribute:
    """szOID_ENROLLMENT_NAME_VALUE_PAIR = SET { SEQUENCE { BMPString "RequesterName", BMPString name } }.

    The signed attribute an enrollment agent puts in the FIRST SignerInfo of a PKCS7 request to
    name the user it enrolls for, as DOMAIN\\user (wire-formats.md 1a).
    """
    problem = requester_name_problem(name)
    if problem is not None:
        raise InputError(f"{problem}: {escape(name)}")
    pair = EnrollmentNameValuePair({"name": core.BMPString(REQUESTER_NAME), "value": core.BMPString(name)})
    return cms.CMSAttribute({"type": OID_ENROLLMENT_NAME_VALUE_PAIR, "values": [core.Any(pair)]})


def renewal_certificate_attribute(certificate_der: bytes) -> csr.CRIAttribute:
    """szOID_RENEWAL_CERTIFICATE (1.3.6.1.4.1.311.13.1) = SET { Certificate }: a PKCS #10 attribute.

    MS-WCCE 3.1.1.4.3.2.1 (renewal with CMS and PKCS #10) and 3.1.1.4.3.2.2 (CMS and CMC): "The
    client MUST add an attribute to the Attributes field in the PKCS #10", its value the DER of the
    certificate being renewed (2.2.2.7.3). It is therefore an attribute of the inner request (pass
    it to `pkcs10.build_request(extra_attributes=...)`), not a signed attribute of the SignerInfo.
    The same certificate goes into SignedData.certificates, and the FIRST SignerInfo is made with
    the key of that certificate; without the attribute AD CS treats the request as a new one, with
    a different certificate there it answers 0x8009400E (CERTSRV_E_BAD_RENEWAL_CERT_ATTRIBUTE).
    CertEnroll's IX509AttributeRenewalCertificate also goes "in the PKCS #10 attribute collection".
    """
    try:
        certificate = asn1_x509.Certificate.load(certificate_der, strict=True)
        parse_all(certificate)
    except PARSE_ERRORS as exc:
        raise InputError(f"cannot read the certificate to renew: {reason_of(exc)}") from None
    value = Attribute({"type": OID_RENEWAL_CERTIFICATE, "values": [core.Any(certificate)]})
    return csr.CRIAttribute.load(value.dump())


#: Certificates already checked in full: an agent signing a batch names the same one every time,
#: and the full parse was a third of a co-signature's host work (benchmarks: docs/performance.md).
_CHECKED: dict[bytes, None] = {}
_CHECKED_MAX = 64


def _load_certificate(der: bytes, what: str) -> asn1_x509.Certificate:
    if der in _CHECKED:
        return asn1_x509.Certificate.load(der)
    try:
        x509.load_der_x509_certificate(der)
        certificate = asn1_x509.Certificate.load(der, strict=True)
        parse_all(certificate)
    except LOAD_ERRORS + PARSE_ERRORS as exc:
        raise InputError(f"cannot read {what}: {reason_of(exc)}") from None
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.pop(next(iter(_CHECKED)))
    _CHECKED[der] = None
    return certificate


def _sid(spec: SignerSpec, number: int) -> tuple[cms.SignerIdentifier, str]:
    if spec.subject_key_identifier is not None:
        if not spec.subject_key_identifier:
            raise InputError(f"signer {number}: the subject key identifier is empty")
        return cms.SignerIdentifier(name="subject_key_identifier", value=spec.subject_key_identifier), "v3"
    if spec.certificate is None:
        raise InputError(f"signer {number} has neither a certificate nor a subject key identifier")
    certificate = _load_certificate(spec.certificate, f"the certificate of signer {number}")
    serial = cms.IssuerAndSerialNumber(
        {"issuer": certificate.issuer, "serial_number": certificate["tbs_certificate"]["serial_number"]}
    )
    return cms.SignerIdentifier(name="issuer_and_serial_number", value=serial), "v1"


def _signer_info(spec: SignerSpec, number: int, content_type: str, content: bytes) -> cms.SignerInfo:
    algorithm = spec.signer.algorithm
    for extra in spec.extra_signed_attributes:
        if extra["type"].dotted in (OID_CONTENT_TYPE, OID_MESSAGE_DIGEST):
            name = SIGNED_ATTRIBUTE_NAMES[extra["type"].dotted]
            raise InputError(f"signer {number}: {name} is added by tokenagent, not an extra signed attribute")
    sid, version = _sid(spec, number)
    attributes = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": [content_type]}),
            cms.CMSAttribute({"type": "message_digest", "values": [digest(algorithm.hash, content)]}),
            *spec.extra_signed_attributes,
        ]
    )
    # RFC 5652 5.4: the signature covers the DER of the SET OF attributes (sorted, tag 0x31)
    to_sign = attributes.dump()
    signature = spec.signer.sign(to_sign)
    info = cms.SignerInfo(
        {
            "version": version,
            "sid": sid,
            "digest_algorithm": digest_algorithm(algorithm.hash),
            "signed_attrs": attributes,
            "signature_algorithm": algorithm.identifier(),
            "signature": signature,
        }
    )
    assert b"\x31" + info["signed_attrs"].dump()[1:] == to_sign, "signed attributes re-encoded differently"
    if spec.certificate is not None:
        # A token key that does not belong to the certificate would give a request the CA rejects
        # much later: check now, as `new` checks a request's self-signature.
        try:
            public_key = x509.load_der_x509_certificate(spec.certificate).public_key()
        except (ValueError, UnsupportedAlgorithm):
            return info  # a key cryptography cannot load: the CA will be the judge
        ok, why = verify_signature(public_key, info["signature_algorithm"], algorithm.hash, signature, to_sign)
        if ok is False:
            raise VerificationError(f"signer {number}: {why} with the public key of its certificate (wrong key?)")
    return info


def _content_type_oid(content_type: str) -> str:
    try:
        return cms.ContentType(content_type).dotted
    except ValueError:
        raise InputError(f"'{content_type}' is not a content type (a dotted OID)") from None


def _digest_algorithms(existing: list[algos.DigestAlgorithm], infos: list[cms.SignerInfo]) -> list:
    """The existing identifiers, then each signer's hash not yet named (compared by OID)."""
    result = list(existing)
    seen = {algorithm["algorithm"].dotted for algorithm in existing}
    for info in infos:
        algorithm = info["digest_algorithm"]
        if algorithm["algorithm"].dotted not in seen:
            seen.add(algorithm["algorithm"].dotted)
            result.append(algorithm)
    return result


def _certificate_set(existing: list[cms.CertificateChoices], added: list[bytes]) -> list[cms.CertificateChoices]:
    result = list(existing)
    seen = {choice.chosen.dump() for choice in existing}
    for number, der in enumerate(added, 1):
        if der in seen:
            continue
        seen.add(der)
        certificate = _load_certificate(der, f"certificate {number}")
        result.append(cms.CertificateChoices(name="certificate", value=certificate))
    return result


def _version(
    content_type: str,
    certificates: list[cms.CertificateChoices],
    crls: cms.RevocationInfoChoices | core.Void,
    infos: Sequence[cms.SignerInfo],
) -> int:
    """SignedData.version by the rules of RFC 5652 section 5.1."""
    kinds = {choice.name for choice in certificates}
    crl_kinds = set() if isinstance(crls, core.Void) else {choice.name for choice in crls}
    if "other" in kinds or "other" in crl_kinds:
        return 5
    if "v2_attr_cert" in kinds:
        return 4
    if "v1_attr_cert" in kinds or content_type != OID_DATA or any(i["version"].native == "v3" for i in infos):
        return 3
    return 1


def _signed_data(
    version: int,
    digests: list,
    encapsulated: EncapsulatedContentInfo | dict,
    certificates: list[cms.CertificateChoices],
    crls: cms.RevocationInfoChoices | core.Void,
    infos: list[cms.SignerInfo],
) -> bytes:
    fields: dict[str, object] = {
        "version": version,
        "digest_algorithms": DigestAlgorithms(digests),
        "encap_content_info": encapsulated,
        "signer_infos": SignerInfos(infos),
    }
    if certificates:
        fields["certificates"] = CertificateSet(certificates)
    if not isinstance(crls, core.Void):
        fields["crls"] = crls
    return ContentInfo({"content_type": "signed_data", "content": SignedData(fields)}).dump()


def sign_content(
    content_type: str, content: bytes, signers: Sequence[SignerSpec], certificates: Sequence[bytes] = ()
) -> bytes:
    """DER ContentInfo(signedData) over ``content``, one SignerInfo per signer in the order given.

    ``content_type`` is the eContentType as a dotted OID (id-data for a PKCS7 request, id-cct-PKIData
    for CMC). SignedData.certificates: each signer's certificate, then ``certificates`` (e.g. the
    agent's chain), each once.
    """
    oid = _content_type_oid(content_type)
    infos = [_signer_info(spec, number, oid, content) for number, spec in enumerate(signers, 1)]
    added = [spec.certificate for spec in signers if spec.certificate is not None] + list(certificates)
    chosen = _certificate_set([], added)
    version = _version(oid, chosen, core.Void(), infos)
    encapsulated = {"content_type": oid, "content": content}
    return _signed_data(version, _digest_algorithms([], infos), encapsulated, chosen, core.Void(), infos)


def append_signer(
    signed: bytes | str, spec: SignerSpec, certificates: Sequence[bytes] = (), *, what: str = "signed request"
) -> bytes:
    """``signed`` with one more SignerInfo at the end (wire-formats.md 1c: one per `sign` pass).

    The earlier SignerInfos, the encapsulated content and the CRLs are copied byte for byte; the
    signer's digest algorithm and certificate (and ``certificates``) are added when not yet there,
    and the version is raised when the new SignerInfo needs it (never lowered).
    """
    data = load_signed_data(signed, what)
    content_type, content = _econtent(data, what)
    existing = list(data["signer_infos"])
    info = _signer_info(spec, len(existing) + 1, content_type, content)
    infos = [*existing, info]
    added = ([spec.certificate] if spec.certificate is not None else []) + list(certificates)
    chosen = _certificate_set(_certificate_choices(data), added)
    # int(), not .native: asn1crypto names versions 0 to 5 ("v3") and leaves any other one a number
    version = max(int(data["version"]), _version(content_type, chosen, data["crls"], infos))
    digests = _digest_algorithms(list(data["digest_algorithms"]), [info])
    return _signed_data(version, digests, data["encap_content_info"], chosen, data["crls"], infos)


# -- reading ---------------------------------------------------------------------------------------------


def encapsulated(signed: bytes | str, what: str) -> tuple[str, bytes]:
    """(eContentType as a dotted OID, eContent) of a CMS SignedData; `InputError` when detached."""
    return _econtent(load_signed_data(signed, what), what)


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


def load_pki_data(content: bytes, what: str) -> cmc.PKIData:
    check_inner_der(content, what, "CMC PKIData")
    try:
        pki_data = cmc.PKIData.load(content, strict=True)
        parse_all(pki_data)
    except PARSE_ERRORS as exc:
        raise InputError(f"cannot read {what}: damaged CMC PKIData ({reason_of(exc)})") from None
    return pki_data


def load_certification_request(der: bytes, what: str) -> csr.CertificationRequest:
    check_inner_der(der, what, "certification request")
    try:
        request = csr.CertificationRequest.load(der, strict=True)
        parse_all(request)
        x509.load_der_x509_csr(der)
    except LOAD_ERRORS + PARSE_ERRORS as exc:
        raise InputError(f"cannot read the certification request in {what}: {reason_of(exc)}") from None
    return request


def _request_from_content(content_type: str, content: bytes, what: str) -> bytes:
    if content_type == OID_DATA:
        der = content
    elif content_type == cmc.OID_PKI_DATA:
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
    return _request_from_content(content_type, content, what)


# -- verifying --------------------------------------------------------------------------------------------


def _pss(parameters: core.Asn1Value) -> tuple[padding.PSS, hashes.HashAlgorithm] | None:
    """RSASSA-PSS-params (RFC 4055 3.1) as cryptography's padding and hash; None if unsupported."""
    if isinstance(parameters, core.Void):
        return None  # RFC 4055 3.1: signatures carry the parameters
    hash_class = _HASHES.get(parameters["hash_algorithm"]["algorithm"].native)
    mask = parameters["mask_gen_algorithm"]
    mgf_hash = _HASHES.get(mask["parameters"]["algorithm"].native) if mask["algorithm"].native == "mgf1" else None
    if hash_class is None or mgf_hash is None or parameters["trailer_field"].native != "trailer_field_bc":
        return None
    return padding.PSS(mgf=padding.MGF1(mgf_hash()), salt_length=parameters["salt_length"].native), hash_class()


def verify_signature(
    public_key: object, algorithm: algos.SignedDigestAlgorithm, hash_name: str | None, signature: bytes, message: bytes
) -> tuple[bool | None, str]:
    """(True/False, why) for RSA PKCS #1 v1.5, RSASSA-PSS and ECDSA; (None, why) when not checkable.

    ``hash_name`` is the hash for PKCS #1 and ECDSA: a SignerInfo's digestAlgorithm (RFC 5652 5.4),
    or the hash a PKCS #10's signature algorithm names. PSS takes its hash from its parameters.
    """
    try:
        family = algorithm.signature_algo
    except ValueError:
        return None, f"unsupported signature algorithm {algorithm['algorithm'].dotted}"
    try:
        if family == "rsassa_pss":
            pss = _pss(algorithm["parameters"])
            if pss is None:
                return None, "unsupported RSASSA-PSS parameters"
            if not isinstance(public_key, rsa.RSAPublicKey):
                return False, "an RSASSA-PSS signature, but the key is not an RSA key"
            public_key.verify(signature, message, pss[0], pss[1])
        elif family in ("rsassa_pkcs1v15", "ecdsa"):
            hash_class = _HASHES.get(hash_name or "")
            if hash_class is None:
                return None, f"unsupported hash {hash_name}"
            if family == "ecdsa":
                if not isinstance(public_key, ec.EllipticCurvePublicKey):
                    return False, "an ECDSA signature, but the key is not an EC key"
                public_key.verify(signature, message, ec.ECDSA(hash_class()))
            else:
                if not isinstance(public_key, rsa.RSAPublicKey):
                    return False, "an RSA signature, but the key is not an RSA key"
                public_key.verify(signature, message, padding.PKCS1v15(), hash_class())
        else:
            return None, f"unsupported signature algorithm {family}"
    except InvalidSignature:
        return False, "the signature does not verify"
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return False, f"the signature cannot be checked ({reason_of(exc)})"
    return True, "the signature verifies"


def verify_certification_request(request: bytes, what: str = "certification request") -> tuple[bool | None, str]:
    """The self-signature of a PKCS #10 (its proof of possession): (True/False/None, why)."""
    parsed = load_certification_request(request, what)
    info = parsed["certification_request_info"]
    algorithm = parsed["signature_algorithm"]
    try:
        public_key = serialization.load_der_public_key(info["subject_pk_info"].dump())
        hash_name = algorithm.hash_algo
    except (ValueError, UnsupportedAlgorithm) as exc:
        return None, f"cannot check the signature ({reason_of(exc)})"
    return verify_signature(public_key, algorithm, hash_name, parsed["signature"].native, info.dump())


@dataclass(frozen=True)
class SignerCheck:
    """The outcome of checking one SignerInfo (RFC 5652 5.6).

    ``digest_ok``: the signed attributes bind the content (exactly one contentType equal to the
    eContentType, exactly one messageDigest equal to the content's hash), or there are no signed
    attributes (the signature then covers the content itself). ``signature_ok`` None: no
    certificate or public key to check with, or an algorithm tokenagent does not check.
    ``status``: "valid", "invalid" (a check failed) or "unverifiable" (none failed, one could not run).
    "valid" means unaltered since the holder of that key signed, not that the signer is trusted.
    """

    index: int  # position in SignerInfos, 0 = the first
    sid: str
    signer_subject: str | None  # RFC 4514 subject of the signer's certificate, when found
    certificate: bytes | None
    digest_ok: bool
    signature_ok: bool | None
    reason: str
    status: str


@dataclass(frozen=True)
class _Candidate:
    public_key: object | None  # None: a certificate whose key cryptography cannot load
    key_ids: frozenset[bytes]
    source: str
    certificate: bytes | None = None
    parsed: asn1_x509.Certificate | None = None
    subject: str | None = None


def _request_key_ids(request: csr.CertificationRequest) -> set[bytes]:
    """RFC 5280 method 1 over the request's key, and its Subject Key Identifier extension if any."""
    info = request["certification_request_info"]
    ids = {key_identifier(info["subject_pk_info"].dump())}
    for attribute in info["attributes"]:
        if attribute["type"].native != "extension_request":
            continue
        for extensions in attribute["values"]:
            for extension in extensions:
                if extension["extn_id"].dotted == OID_SUBJECT_KEY_IDENTIFIER:
                    ids.add(extension["extn_value"].parsed.native)
    return ids


def _candidates(
    signed: SignedData, content_type: str, content: bytes, extra_public_keys: Sequence[bytes], what: str
) -> list[_Candidate]:
    found: list[_Candidate] = []
    for der in certificates_of(signed):
        parsed = asn1_x509.Certificate.load(der)
        certificate = x509.load_der_x509_certificate(der)
        try:
            public_key: object | None = certificate.public_key()
        except (ValueError, UnsupportedAlgorithm):
            public_key = None
        ids = {parsed.public_key.sha1}
        if parsed.key_identifier is not None:
            ids.add(parsed.key_identifier)
        subject = certificate.subject.rfc4514_string()
        found.append(_Candidate(public_key, frozenset(ids), f"the certificate {subject}", der, parsed, subject))
    for number, spki in enumerate(extra_public_keys, 1):
        try:
            public_key = serialization.load_der_public_key(spki)
            ids = {key_identifier(spki)}
        except (*PARSE_ERRORS, UnsupportedAlgorithm) as exc:
            raise InputError(f"cannot read public key {number} given to check {what}: {reason_of(exc)}") from None
        found.append(_Candidate(public_key, frozenset(ids), f"public key {number} given"))
    # selfSign CMC and request-key co-signatures: the signer is the key of the request inside
    try:
        request_der = _request_from_content(content_type, content, what)
    except InputError:
        return found
    request = load_certification_request(request_der, what)
    spki = request["certification_request_info"]["subject_pk_info"].dump()
    try:
        public_key = serialization.load_der_public_key(spki)
    except (ValueError, UnsupportedAlgorithm):
        return found
    found.append(_Candidate(public_key, frozenset(_request_key_ids(request)), "the key of the request inside"))
    return found


def describe_sid(sid: cms.SignerIdentifier) -> str:
    if sid.name == "issuer_and_serial_number":
        issuer = sid.chosen["issuer"]
        serial = sid.chosen["serial_number"].native
        return f"issuer {name_text(issuer)}, serial 0x{serial:x}"
    return f"subjectKeyIdentifier {sid.chosen.native.hex()}"


# The short names cryptography's rfc4514_string uses; other attributes are written as dotted OIDs.
_NAME_KEYS = {
    "2.5.4.3": "CN",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "STREET",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
}


def _escape(text: str) -> str:
    """RFC 4514 2.4 escaping of an attribute value."""
    escaped = "".join("\\" + c if c in '"+,;<>\\' else "\\00" if c == "\0" else c for c in text)
    if escaped.startswith(("#", " ")):
        escaped = "\\" + escaped
    if escaped.endswith(" ") and not escaped.endswith("\\ "):
        escaped = escaped[:-1] + "\\ "
    return escaped


def name_text(name: asn1_x509.Name) -> str:
    """A Name as RFC 4514 text, most specific RDN first, the way cryptography writes subjects."""
    rdns: list[str] = []
    for rdn in reversed(list(name.chosen)):
        parts: list[str] = []
        for pair in rdn:
            oid = pair["type"].dotted
            value = pair["value"]
            try:
                native = value.native
            except PARSE_ERRORS:
                native = None
            text = _escape(native) if isinstance(native, str) else "#" + value.dump().hex()
            parts.append(f"{_NAME_KEYS.get(oid, oid)}={text}")
        rdns.append("+".join(parts))
    return ",".join(rdns)


def _match(sid: cms.SignerIdentifier, candidates: list[_Candidate]) -> _Candidate | None:
    for candidate in candidates:
        if sid.name == "issuer_and_serial_number":
            if candidate.parsed is None:
                continue
            wanted = sid.chosen
            if (
                candidate.parsed.serial_number == wanted["serial_number"].native
                and candidate.parsed.issuer == wanted["issuer"]
            ):
                return candidate
        elif sid.chosen.native in candidate.key_ids:
            # RFC 5652 5.3: the certificate's SKI extension value; without one, RFC 5280 method 1
            return candidate
    return None


def _attribute_values(attributes: cms.CMSAttributes) -> dict[str, list[core.Asn1Value]]:
    values: dict[str, list[core.Asn1Value]] = {}
    for attribute in attributes:
        values.setdefault(attribute["type"].dotted, []).extend(attribute["values"])
    return values


def _check_digest(info: cms.SignerInfo, content_type: str, content: bytes) -> tuple[bool | None, str, bytes]:
    """(bound?, why, the bytes the signature covers); None when the digest algorithm is unknown."""
    hash_name = info["digest_algorithm"]["algorithm"].native
    attributes = info["signed_attrs"]
    if isinstance(attributes, core.Void):
        return True, "no signed attributes: the signature covers the content", content
    # 5.4: the signature covers the DER of the attributes with the SET OF tag, not the [0] IMPLICIT one
    message = b"\x31" + attributes.dump()[1:]
    values = _attribute_values(attributes)
    content_types = values.get(OID_CONTENT_TYPE, [])
    digests = values.get(OID_MESSAGE_DIGEST, [])
    # RFC 5652 5.3: both required with signed attributes, each with exactly one value
    if len(content_types) != 1:
        return False, f"{len(content_types)} contentType values in the signed attributes (RFC 5652: one)", message
    if content_types[0].dotted != content_type:
        return False, f"the signed contentType {content_types[0].dotted} is not the eContentType", message
    if len(digests) != 1:
        return False, f"{len(digests)} messageDigest values in the signed attributes (RFC 5652: one)", message
    if hash_name not in _HASHES:
        return None, f"unsupported digest algorithm {info['digest_algorithm']['algorithm'].dotted}", message
    hasher = hashes.Hash(_HASHES[hash_name]())
    hasher.update(content)
    if digests[0].native != hasher.finalize():
        return False, "the messageDigest does not match the content", message
    return True, "", message


def _check(index: int, info: cms.SignerInfo, content_type: str, content: bytes, found: list[_Candidate]) -> SignerCheck:
    sid = info["sid"]
    digest_ok, why, message = _check_digest(info, content_type, content)
    candidate = _match(sid, found)
    signature_ok: bool | None = None
    if candidate is None:
        reasons = [why] if why else []
        reasons.append("no certificate or public key for this signer")
    elif candidate.public_key is None:
        reasons = [why] if why else []
        reasons.append(f"{candidate.source} has a key tokenagent cannot load")
    else:
        hash_name = info["digest_algorithm"]["algorithm"].native
        signature_ok, checked = verify_signature(
            candidate.public_key, info["signature_algorithm"], hash_name, info["signature"].native, message
        )
        reasons = [why] if why else []
        reasons.append(f"{checked} with {candidate.source}")
    if digest_ok is False or signature_ok is False:
        status = "invalid"
    elif digest_ok is None or signature_ok is None:
        status = "unverifiable"
    else:
        status = "valid"
    return SignerCheck(
        index=index,
        sid=describe_sid(sid),
        signer_subject=candidate.subject if candidate else None,
        certificate=candidate.certificate if candidate else None,
        digest_ok=digest_ok is True,
        signature_ok=signature_ok,
        reason="; ".join(reasons),
        status=status,
    )


def check_signed_data(
    signed: SignedData, extra_public_keys: Sequence[bytes] = (), *, what: str = "signed request"
) -> list[SignerCheck]:
    """`verify_signers` for an already loaded SignedData (see `load_signed_data`)."""
    content_type, content = _econtent(signed, what)
    try:
        found = _candidates(signed, content_type, content, extra_public_keys, what)
        infos = list(signed["signer_infos"])
        return [_check(index, info, content_type, content, found) for index, info in enumerate(infos)]
    except LOAD_ERRORS + PARSE_ERRORS as exc:  # e.g. a certificate extension asn1crypto reads only now
        raise InputError(f"cannot read {what}: damaged CMS signed data ({reason_of(exc)})") from None


def verify_signers(
    signed: bytes | str, extra_public_keys: Sequence[bytes] = (), *, what: str = "signed request"
) -> list[SignerCheck]:
    """Check every SignerInfo, in order, against the certificates the message carries.

    A SignerInfo named by subjectKeyIdentifier is also matched against ``extra_public_keys``
    (DER SubjectPublicKeyInfos) and against the key of the PKCS #10 inside (selfSign CMC: the
    request key signs and no certificate is included).
    """
    return check_signed_data(load_signed_data(signed, what), extra_public_keys, what=what)
