"""Building CMS SignedData (RFC 5652) around a request: enroll on behalf of (EOBO), CMC, co-signatures.

`sign_content` builds a SignedData, `append_signer` adds one more SignerInfo without touching the
earlier ones (CMS signatures are independent of each other). Signing goes through the `Signer`
protocol, so a token key and a software key are used the same way; each new SignerInfo is checked
against its certificate's key before it is returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import algos, cms, core, csr
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from tokenagent.display import escape
from tokenagent.errors import InputError, VerificationError
from tokenagent.request.algorithms import digest, digest_algorithm
from tokenagent.request.asn1.attributes import Attribute, EnrollmentNameValuePair
from tokenagent.request.asn1.cms import (
    CertificateSet,
    ContentInfo,
    DigestAlgorithms,
    EncapsulatedContentInfo,
    SignedData,
    SignerInfos,
)
from tokenagent.request.attributes import requester_name_problem
from tokenagent.request.cms_verify import verify_signature
from tokenagent.request.der import LOAD_ERRORS, PARSE_ERRORS, parse_all, reason_of
from tokenagent.request.oids import (
    OID_CONTENT_TYPE,
    OID_DATA,
    OID_ENROLLMENT_NAME_VALUE_PAIR,
    OID_MESSAGE_DIGEST,
    OID_RENEWAL_CERTIFICATE,
    REQUESTER_NAME,
)
from tokenagent.request.signed_data import SIGNED_ATTRIBUTE_NAMES, certificate_choices, econtent, load_signed_data
from tokenagent.request.signer import Signer


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
    name the user it enrolls for, as DOMAIN\\user (docs/wire-formats.md 1a).
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


def name_value_attribute(pairs: Sequence[tuple[str, str]]) -> cms.CMSAttribute:
    """szOID_ENROLLMENT_NAME_VALUE_PAIR with one SEQUENCE { BMPString, BMPString } per pair, as a
    signed attribute (RequesterName first, then e.g. CertificateTemplate)."""
    first = requester_name_attribute(pairs[0][1])  # checks the name can be a BMPString
    values = list(first["values"])
    for name, value in pairs[1:]:
        pair = EnrollmentNameValuePair({"name": core.BMPString(name), "value": core.BMPString(value)})
        values.append(core.Any(pair))
    return cms.CMSAttribute({"type": OID_ENROLLMENT_NAME_VALUE_PAIR, "values": values})


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
    """``signed`` with one more SignerInfo at the end (docs/wire-formats.md 1c: one per `sign` pass).

    The earlier SignerInfos, the encapsulated content and the CRLs are copied byte for byte; the
    signer's digest algorithm and certificate (and ``certificates``) are added when not yet there,
    and the version is raised when the new SignerInfo needs it (never lowered).
    """
    data = load_signed_data(signed, what)
    content_type, content = econtent(data, what)
    existing = list(data["signer_infos"])
    info = _signer_info(spec, len(existing) + 1, content_type, content)
    infos = [*existing, info]
    added = ([spec.certificate] if spec.certificate is not None else []) + list(certificates)
    chosen = _certificate_set(certificate_choices(data), added)
    # int(), not .native: asn1crypto names versions 0 to 5 ("v3") and leaves any other one a number
    version = max(int(data["version"]), _version(content_type, chosen, data["crls"], infos))
    digests = _digest_algorithms(list(data["digest_algorithms"]), [info])
    return _signed_data(version, digests, data["encap_content_info"], chosen, data["crls"], infos)
