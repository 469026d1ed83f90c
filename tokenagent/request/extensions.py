"""X.509 extensions for requests and self-signed certificates: the INF's [Extensions] and the defaults.

Builders return asn1crypto `x509.Extension` objects whose extnValue is the exact DER we mean:
GeneralNames are declared here with plain IA5String/OCTET STRING alternatives because
asn1crypto's own URI, DNSName and IPAddress classes rewrite their input (IRI escaping, IDNA),
and certreq writes names verbatim. Problems are reported as `ValueProblem` (no file:line: the
caller knows which INF line the value came from).
"""

from __future__ import annotations

from asn1crypto import core, keys, x509

from tokenagent.inf.extensions import ExtensionSpec, GeneralNameSpec
from tokenagent.inf.names import OID_PATTERN
from tokenagent.inf.policy import KEY_USAGE_NAMES
from tokenagent.inf.values import ValueProblem
from tokenagent.request.algorithms import digest
from tokenagent.request.asn1.extensions import CertificateTemplate, GeneralName, GeneralNames, SMIMECapabilities
from tokenagent.request.names import x509_name
from tokenagent.request.oids import (
    OID_AUTHORITY_KEY_IDENTIFIER,
    OID_BASIC_CONSTRAINTS,
    OID_DS_GUID,
    OID_EXTENDED_KEY_USAGE,
    OID_KEY_USAGE,
    OID_SMIME_CAPABILITIES,
    OID_SUBJECT_ALT_NAME,
    OID_SUBJECT_KEY_IDENTIFIER,
    OID_TEMPLATE_INFO,
    OID_TEMPLATE_NAME,
    OID_UPN,
)

EXTENSION_NAMES = {
    OID_KEY_USAGE: "Key Usage",
    OID_SUBJECT_KEY_IDENTIFIER: "Subject Key Identifier",
    OID_SUBJECT_ALT_NAME: "Subject Alternative Name",
    "2.5.29.18": "Issuer Alternative Name",
    OID_BASIC_CONSTRAINTS: "Basic Constraints",
    "2.5.29.30": "Name Constraints",
    "2.5.29.31": "CRL Distribution Points",
    "2.5.29.32": "Certificate Policies",
    OID_AUTHORITY_KEY_IDENTIFIER: "Authority Key Identifier",
    OID_EXTENDED_KEY_USAGE: "Extended Key Usage",
    "1.3.6.1.5.5.7.1.1": "Authority Information Access",
    "1.3.6.1.5.5.7.1.24": "TLS Feature",
    OID_SMIME_CAPABILITIES: "S/MIME Capabilities",
    OID_TEMPLATE_NAME: "Certificate Template Name",
    OID_TEMPLATE_INFO: "Certificate Template Information",
    "1.3.6.1.4.1.311.21.10": "Application Policies",
    "1.3.6.1.4.1.311.25.2": "NTDS CA Security (SID)",
}
KEY_PURPOSE_NAMES = {
    "1.3.6.1.5.5.7.3.1": "serverAuth",
    "1.3.6.1.5.5.7.3.2": "clientAuth",
    "1.3.6.1.5.5.7.3.3": "codeSigning",
    "1.3.6.1.5.5.7.3.4": "emailProtection",
    "1.3.6.1.5.5.7.3.8": "timeStamping",
    "1.3.6.1.5.5.7.3.9": "OCSPSigning",
    "1.3.6.1.4.1.311.20.2.2": "smartcardLogon",
    "1.3.6.1.4.1.311.20.2.1": "certificateRequestAgent",
    "1.3.6.1.4.1.311.10.3.4": "encryptingFileSystem",
    "1.3.6.1.4.1.311.10.3.12": "documentSigning",
    "2.5.29.37.0": "anyExtendedKeyUsage",
}
_KEY_USAGE_TEXT = {  # RFC 5280 4.2.1.3 names
    "digital_signature": "digitalSignature",
    "non_repudiation": "nonRepudiation",
    "key_encipherment": "keyEncipherment",
    "data_encipherment": "dataEncipherment",
    "key_agreement": "keyAgreement",
    "key_cert_sign": "keyCertSign",
    "crl_sign": "cRLSign",
    "encipher_only": "encipherOnly",
    "decipher_only": "decipherOnly",
}
_KEY_USAGE_MASK = sum(bit for _, bit in KEY_USAGE_NAMES)

# EncryptionAlgorithm -> S/MIME capability: (OID, name, whether the key length is its parameter)
_AES = {
    128: ("2.16.840.1.101.3.4.1.2", "aes128-CBC"),
    192: ("2.16.840.1.101.3.4.1.22", "aes192-CBC"),
    256: ("2.16.840.1.101.3.4.1.42", "aes256-CBC"),
}
_CIPHERS = {
    "3des": ("1.2.840.113549.3.7", "des-ede3-cbc", False),
    "des": ("1.3.14.3.2.7", "desCBC", False),
    "rc2": ("1.2.840.113549.3.2", "rc2-cbc", True),
    "rc4": ("1.2.840.113549.3.4", "rc4", True),
}


# -- builders -------------------------------------------------------------------------------------


def extension(oid: str, critical: bool, value_der: bytes) -> x509.Extension:
    # DER leaves critical out when FALSE (its DEFAULT); asn1crypto does that for us
    try:
        ext = x509.Extension({"extn_id": oid, "critical": critical, "extn_value": core.ParsableOctetString(value_der)})
    except (ValueError, TypeError) as exc:
        # asn1crypto parses the value of an extension it knows (e.g. raw {hex} DER given for
        # 2.5.29.19) as that extension's type, and refuses one that is not
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueProblem(f"the DER value is not a valid {extension_name(oid)} ({reason})") from None
    try:
        # the same bytes, read back: a structure built from values is re-encoded on every dump
        # (request/der.py `tlv`), and requests and certificates dump their extensions often
        return x509.Extension.load(ext.dump())
    except (ValueError, TypeError):
        return ext  # its encoding fails where the request is encoded, with that error


def _ia5(what: str, text: str) -> core.IA5String:
    if not text.isascii():
        raise ValueProblem(f"{what} '{text}' must be ASCII (IA5String)")
    return core.IA5String(text)


def _explicit_zero(what: str, der: bytes) -> core.Asn1Value:
    """An already-encoded value for otherName's [0] EXPLICIT, kept byte for byte."""
    try:
        value = core.load(der, strict=True).retag({"explicit": 0})
    except (ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0]
        raise ValueProblem(f"{what}: the value is not DER asn1crypto can carry ({reason})") from None
    if value.dump()[-len(der) :] != der:  # asn1crypto re-tags only universal types faithfully
        raise ValueProblem(f"{what}: the value must be a universal ASN.1 type, not tag 0x{der[0]:02x}")
    return value


def _general_name(spec: GeneralNameSpec, name_flags: int) -> GeneralName:
    kind, value = spec.kind, spec.value
    if kind == "upn":
        assert isinstance(value, str)
        return GeneralName(name="other_name", value={"type_id": OID_UPN, "value": core.UTF8String(value, explicit=0)})
    if kind == "guid":
        assert isinstance(value, bytes)
        return GeneralName(
            name="other_name", value={"type_id": OID_DS_GUID, "value": core.OctetString(value, explicit=0)}
        )
    if kind == "other_name":
        assert isinstance(value, bytes) and spec.other_oid
        what = f"otherName {spec.other_oid}"
        return GeneralName(name="other_name", value={"type_id": spec.other_oid, "value": _explicit_zero(what, value)})
    if kind == "email":
        return GeneralName(name="rfc822_name", value=_ia5("EMail", str(value)))
    if kind == "dns":
        return GeneralName(name="dns_name", value=_ia5("DNS", str(value)))
    if kind == "url":
        return GeneralName(name="uniform_resource_identifier", value=_ia5("URL (percent-encode it)", str(value)))
    if kind == "ip_address":
        assert isinstance(value, bytes)
        return GeneralName(name="ip_address", value=core.OctetString(value))
    if kind == "registered_id":
        return GeneralName(name="registered_id", value=core.ObjectIdentifier(str(value)))
    if kind == "directory_name":
        assert not isinstance(value, str | bytes)
        try:
            return GeneralName(name="directory_name", value=x509_name(value, name_flags))
        except ValueProblem as exc:
            raise ValueProblem(f"DirectoryName: {exc}") from None
    raise ValueProblem(f"unknown SAN entry kind '{kind}'")


def general_name(spec: GeneralNameSpec, name_flags: int = 0) -> x509.GeneralName:
    return x509.GeneralName.load(_general_name(spec, name_flags).dump())


def general_names_der(names: tuple[GeneralNameSpec, ...], name_flags: int = 0) -> bytes:
    return GeneralNames([_general_name(n, name_flags) for n in names]).dump()


def from_spec(spec: ExtensionSpec, name_flags: int = 0) -> x509.Extension:
    """An [Extensions] line as an extension."""
    if spec.kind == "subject_alt_name":
        value = general_names_der(spec.alt_names, name_flags)
    elif spec.kind == "extended_key_usage":
        value = x509.ExtKeyUsageSyntax(list(spec.usages)).dump()
    elif spec.kind == "basic_constraints":
        constraints: dict[str, object] = {"ca": bool(spec.ca)}
        if spec.path_length is not None:
            constraints["path_len_constraint"] = spec.path_length
        value = x509.BasicConstraints(constraints).dump()
    elif spec.kind == "raw" and spec.der is not None:
        value = spec.der
    else:
        raise ValueProblem(f"extension {spec.oid} has no value")
    return extension(spec.oid, spec.critical, value)


def key_usage(bits: int, critical: bool = True) -> x509.Extension:
    """KeyUsage from wincrypt bits (0x80 digitalSignature ... 0x01 encipherOnly, 0x8000 decipherOnly)."""
    if bits & ~_KEY_USAGE_MASK:
        raise ValueProblem(f"KeyUsage 0x{bits:x} has bits that are no key usage (0x{bits & ~_KEY_USAGE_MASK:x})")
    names = {name for name, bit in KEY_USAGE_NAMES if bits & bit}
    return extension(OID_KEY_USAGE, critical, x509.KeyUsage(names).dump())


def key_usage_text(bits: int) -> str:
    return ", ".join(_KEY_USAGE_TEXT[name] for name, bit in KEY_USAGE_NAMES if bits & bit) or "(none)"


def key_identifier(spki_der: bytes) -> bytes:
    """RFC 5280 4.2.1.2 method (1): SHA-1 of the subjectPublicKey BIT STRING value (no unused-bits octet)."""
    info = keys.PublicKeyInfo.load(spki_der)
    return digest("sha1", bytes(info["public_key"]))


def subject_key_identifier(key_id: bytes) -> x509.Extension:
    return extension(OID_SUBJECT_KEY_IDENTIFIER, False, core.OctetString(key_id).dump())


def authority_key_identifier(key_id: bytes) -> x509.Extension:
    value = x509.AuthorityKeyIdentifier({"key_identifier": key_id})
    return extension(OID_AUTHORITY_KEY_IDENTIFIER, False, value.dump())


def smime_capability_list(algorithm: str, length: int) -> list[tuple[str, str, int | None]]:
    """(OID, name, key length parameter or None): EncryptionAlgorithm first, then AES-256/192/128."""
    chosen: tuple[str, str, int | None]
    if algorithm == "aes":
        if length not in _AES:
            raise ValueProblem(f"EncryptionLength {length} is not an AES key size (128, 192 or 256)")
        chosen = (*_AES[length], None)
    elif algorithm in _CIPHERS:
        oid, name, takes_length = _CIPHERS[algorithm]
        chosen = (oid, name, length if takes_length else None)
    elif OID_PATTERN.fullmatch(algorithm):
        chosen = (algorithm, algorithm, None)
    else:
        raise ValueProblem(
            f"EncryptionAlgorithm '{algorithm}' has no S/MIME capability (aes, 3des, des, rc2, rc4 or an OID)"
        )
    capabilities = [chosen]
    for size in (256, 192, 128):
        oid, name = _AES[size]
        if all(c[0] != oid for c in capabilities):
            capabilities.append((oid, name, None))
    return capabilities


def smime_capabilities(algorithm: str, length: int) -> x509.Extension:
    items = []
    for oid, _name, key_length in smime_capability_list(algorithm, length):
        item: dict[str, object] = {"capability_id": oid}
        if key_length is not None:  # RFC 4262: RC2 (and RC4) carry their key length in bits
            item["parameters"] = core.Integer(key_length)
        items.append(item)
    return extension(OID_SMIME_CAPABILITIES, False, SMIMECapabilities(items).dump())


def smime_text(algorithm: str, length: int) -> str:
    parts = []
    for _oid, name, key_length in smime_capability_list(algorithm, length):
        parts.append(f"{name} ({key_length} bits)" if key_length is not None else name)
    return ", ".join(parts)


def template_extension(template: str) -> x509.Extension:
    """A dotted OID -> szOID_CERTIFICATE_TEMPLATE; a name -> szOID_ENROLL_CERTTYPE_EXTENSION.

    The name form is a bare BMPString: MS-WCCE documents a UTF8String, but certreq and AD CS
    write and read BMPString.
    """
    if OID_PATTERN.fullmatch(template):
        return extension(OID_TEMPLATE_INFO, False, CertificateTemplate({"template_id": template}).dump())
    if any(ord(c) > 0xFFFF for c in template):
        raise ValueProblem(f"CertificateTemplate '{template}' has characters a BMPString cannot hold")
    return extension(OID_TEMPLATE_NAME, False, core.BMPString(template).dump())


def template_oid(template: str) -> str:
    return OID_TEMPLATE_INFO if OID_PATTERN.fullmatch(template) else OID_TEMPLATE_NAME


def describe_spec(spec: ExtensionSpec) -> str:
    """A one-line summary of an [Extensions] line, for `new --dry-run`."""
    if spec.kind == "subject_alt_name":
        return ", ".join(n.describe() for n in spec.alt_names)
    if spec.kind == "extended_key_usage":
        return ", ".join(f"{KEY_PURPOSE_NAMES[u]} ({u})" if u in KEY_PURPOSE_NAMES else u for u in spec.usages)
    if spec.kind == "basic_constraints":
        text = f"CA={'TRUE' if spec.ca else 'FALSE'}"
        return text + (f", pathLength={spec.path_length}" if spec.path_length is not None else "")
    der = spec.der or b""
    shown = der[:32].hex(" ")
    return f"DER, {len(der)} bytes: {shown}{' ...' if len(der) > 32 else ''}"


def extension_name(oid: str) -> str:
    return EXTENSION_NAMES.get(oid, oid)
