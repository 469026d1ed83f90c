"""PKCS#10 attributes: extensionRequest (RFC 2985) and the Microsoft enrollment attributes (MS-WCCE).

Each attribute is built with the classes below and handed back as asn1crypto's `csr.CRIAttribute`.
"""

from __future__ import annotations

from asn1crypto import core, csr, x509

from tokenagent.display import has_hidden
from tokenagent.inf.values import ValueProblem
from tokenagent.request.asn1.attributes import CspProvider, EnrollmentNameValuePair
from tokenagent.request.der import der_set, oid_der, tlv
from tokenagent.request.oids import OID_ENROLLMENT_CSP_PROVIDER, OID_ENROLLMENT_NAME_VALUE_PAIR, OID_EXTENSION_REQUEST

ATTRIBUTE_NAMES = {
    OID_EXTENSION_REQUEST: "Extension Request",
    OID_ENROLLMENT_NAME_VALUE_PAIR: "Enrollment Name-Value Pair",
    OID_ENROLLMENT_CSP_PROVIDER: "Enrollment CSP Provider",
}


# -- builders -------------------------------------------------------------------------------------


def _attribute(oid: str, values: list[core.Asn1Value]) -> csr.CRIAttribute:
    return csr.CRIAttribute.load(attribute_der(oid, [v.dump() for v in values]))


def attribute_der(oid: str, values: list[bytes]) -> bytes:
    """An Attribute (RFC 2986) from its values' DER: the same bytes as asn1crypto's `Attribute`
    built from them (values sorted, a DER SET OF), without its cost (der.tlv says why)."""
    return tlv(0x30, oid_der(oid) + der_set(values))


def _bmp(what: str, text: str) -> core.BMPString:
    if any(ord(c) > 0xFFFF for c in text):
        raise ValueProblem(f"{what} '{text}' has characters a BMPString cannot hold (outside the BMP)")
    return core.BMPString(text)


def extension_request(extensions: list[x509.Extension]) -> csr.CRIAttribute:
    return csr.CRIAttribute.load(extension_request_der([e.dump() for e in extensions]))


def extension_request_der(extensions: list[bytes]) -> bytes:
    """The extensionRequest attribute around the extensions' DER (one Extensions value)."""
    return attribute_der(OID_EXTENSION_REQUEST, [tlv(0x30, b"".join(extensions))])


def name_value_pairs(pairs: tuple[tuple[str, str], ...]) -> csr.CRIAttribute:
    """One attribute whose SET holds every pair (DER sorts the SET by encoding, so file order is lost)."""
    values = [
        EnrollmentNameValuePair({"name": _bmp("[RequestAttributes] name", n), "value": _bmp(f"{n} value", v)})
        for n, v in pairs
    ]
    return _attribute(OID_ENROLLMENT_NAME_VALUE_PAIR, values)


def csp_provider(key_spec: int, provider_name: str) -> csr.CRIAttribute:
    value = CspProvider(
        {"key_spec": key_spec, "csp_name": _bmp("ProviderName", provider_name), "signature": core.BitString(())}
    )
    return _attribute(OID_ENROLLMENT_CSP_PROVIDER, [value])


def requester_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a RequesterName (DOMAIN\\user), or None.

    Control, bidi and invisible characters are refused in every format: the CA's logs and the
    agent's screens would show a different name from the one the CA acts on (a newline, for one,
    would make a second "RequesterName=" line in `tokenagent show`).
    """
    if not name.strip():
        return "the requester name is empty (expected DOMAIN\\user)"
    if has_hidden(name):
        return "the requester name holds control or invisible characters (shown escaped)"
    if any(ord(c) > 0xFFFF for c in name):
        return "the requester name has characters a BMPString cannot hold"
    return None
