"""Verifying CMS SignedData (RFC 5652 5.6) and PKCS #10 self-signatures.

`verify_signers` checks every SignerInfo, in order, against the certificates the message carries,
keys given by the caller, and the key of the PKCS #10 inside (selfSign CMC). A "valid" signature
means unaltered since the holder of that key signed, not that the signer is trusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import algos, cms, core, csr
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tokenagent.display import dn_text
from tokenagent.errors import InputError
from tokenagent.request.der import LOAD_ERRORS, PARSE_ERRORS, reason_of
from tokenagent.request.extensions import key_identifier
from tokenagent.request.names import name_text
from tokenagent.request.oids import OID_CONTENT_TYPE, OID_MESSAGE_DIGEST, OID_SUBJECT_KEY_IDENTIFIER
from tokenagent.request.signed_data import (
    SignedData,
    certificates_of,
    econtent,
    load_certification_request,
    load_signed_data,
    request_from_content,
)

# Digest algorithms a SignerInfo may name, by asn1crypto's names (RFC 5754 and SHA-1).
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


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
        subject = dn_text(certificate.subject)
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
        request_der = request_from_content(content_type, content, what)
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
    content_type, content = econtent(signed, what)
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
