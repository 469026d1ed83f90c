"""`DistinguishedName` (tokenagent.inf.names) -> asn1crypto `x509.Name`, with the string types certreq uses.

String types, per attribute (X.520 / RFC 5280 / RFC 4519 syntaxes):
  C                                    PrintableString, two letters
  serialNumber, dnQualifier, telephoneNumber   PrintableString when the value is printable, else UTF8String
  E (emailAddress), DC                 IA5String
  x121Address                          NumericString
  every other attribute                UTF8String (RFC 5280's choice for DirectoryString)
  ``#hex`` values                      OCTET STRING of those bytes (CertStrToName's CERT_RDN_OCTET_STRING)

X500NameFlags: CERT_NAME_STR_DISABLE_UTF8_DIR_STR_FLAG or CERT_NAME_STR_ENABLE_T61_UNICODE_FLAG
select CryptoAPI's older choice for the UTF8String attributes: PrintableString when printable,
else T61String when ENABLE_T61 is set and every character is Latin-1, else UTF8String with
CERT_NAME_STR_ENABLE_UTF8_UNICODE_FLAG, else BMPString. CERT_NAME_STR_FORCE_UTF8_DIR_STR_FLAG
overrides them: UTF8String.
"""

from __future__ import annotations

import re

from asn1crypto import core, x509

from tokenagent.inf.names import DistinguishedName, NameAttribute
from tokenagent.inf.policy import X500_NAME_FLAGS
from tokenagent.inf.values import ValueProblem
from tokenagent.request.asn1.names import LatinT61String
from tokenagent.request.der import PARSE_ERRORS, der_set, oid_der, tlv
from tokenagent.request.oids import OID_COUNTRY

ENABLE_T61_UNICODE_FLAG = X500_NAME_FLAGS["CERT_NAME_STR_ENABLE_T61_UNICODE_FLAG"]
ENABLE_UTF8_UNICODE_FLAG = X500_NAME_FLAGS["CERT_NAME_STR_ENABLE_UTF8_UNICODE_FLAG"]
FORCE_UTF8_DIR_STR_FLAG = X500_NAME_FLAGS["CERT_NAME_STR_FORCE_UTF8_DIR_STR_FLAG"]
DISABLE_UTF8_DIR_STR_FLAG = X500_NAME_FLAGS["CERT_NAME_STR_DISABLE_UTF8_DIR_STR_FLAG"]

_PRINTABLE_SYNTAX = {"2.5.4.5", "2.5.4.46", "2.5.4.20"}  # serialNumber, dnQualifier, telephoneNumber
_IA5_SYNTAX = {"1.2.840.113549.1.9.1", "0.9.2342.19200300.100.1.25"}  # emailAddress (PKCS #9), DC (RFC 4519)
_NUMERIC_SYNTAX = {"2.5.4.24"}  # x121Address
_PRINTABLE = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]+")  # X.680 41.4


def is_printable(text: str) -> bool:
    return bool(_PRINTABLE.fullmatch(text))


def x509_name(dn: DistinguishedName | None, flags: int = 0) -> x509.Name:
    """The Name in RDN order as written; `ValueProblem` names an attribute that cannot be encoded.

    None is the empty Name (SEQUENCE {}), which RFC 2986 allows when the SAN names the subject.
    """
    rdns = []
    for rdn in dn.rdns if dn is not None else ():
        # an RDN is a SET OF AttributeTypeAndValue { type, value }: DER sorts a multi-valued one;
        # the RDNs keep their order. Joined as bytes: the same as asn1crypto's RDNSequence makes,
        # several times faster (request/der.py `tlv`)
        rdns.append(der_set([tlv(0x30, oid_der(a.oid) + attribute_value(a, flags).dump()) for a in rdn]))
    return x509.Name.load(tlv(0x30, b"".join(rdns)))


def attribute_value(attribute: NameAttribute, flags: int = 0) -> core.Asn1Value:
    name, value = attribute.short_name, attribute.value
    if isinstance(value, bytes):
        return core.OctetString(value)
    if not value:
        raise ValueProblem(f"{name} is empty")
    oid = attribute.oid
    if oid == OID_COUNTRY:
        if not re.fullmatch(r"[A-Za-z]{2}", value):
            raise ValueProblem(f"C must be a two-letter country code (ISO 3166), not '{value}'")
        return core.PrintableString(value)
    if oid in _IA5_SYNTAX:
        if not value.isascii():
            raise ValueProblem(f"{name} '{value}' must be ASCII (IA5String)")
        return core.IA5String(value)
    if oid in _NUMERIC_SYNTAX:
        if not re.fullmatch(r"[0-9 ]+", value):
            raise ValueProblem(f"{name} '{value}' must be digits and spaces (NumericString)")
        return core.NumericString(value)
    if oid in _PRINTABLE_SYNTAX and is_printable(value):
        return core.PrintableString(value)
    return _directory_string(name, value, flags)


def _directory_string(name: str, value: str, flags: int) -> core.Asn1Value:
    legacy = flags & (DISABLE_UTF8_DIR_STR_FLAG | ENABLE_T61_UNICODE_FLAG)
    if flags & FORCE_UTF8_DIR_STR_FLAG or not legacy:
        return core.UTF8String(value)
    if is_printable(value):
        return core.PrintableString(value)
    if flags & ENABLE_T61_UNICODE_FLAG and all(ord(c) <= 0xFF for c in value):
        return LatinT61String(value)
    if flags & ENABLE_UTF8_UNICODE_FLAG:
        return core.UTF8String(value)
    if any(ord(c) > 0xFFFF for c in value):
        raise ValueProblem(
            f"{name} '{value}' has characters outside the BMP, which BMPString cannot hold "
            "(add CERT_NAME_STR_ENABLE_UTF8_UNICODE_FLAG to X500NameFlags)"
        )
    return core.BMPString(value)


# -- names as text (RFC 4514) ---------------------------------------------------------------------

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


def name_text(name: x509.Name) -> str:
    """A Name as people see it everywhere in tokenagent: RFC 4514 escaping, the RDNs in the order
    they are encoded, which is certreq's order (the order of the INF's Subject, as CertStrToName
    encodes it and certutil and `openssl x509 -subject` print it). RFC 4514's own string reverses
    them, so that a certreq subject would read DC=com, ..., CN=... there."""
    rdns: list[str] = []
    for rdn in list(name.chosen):
        parts: list[str] = []
        for pair in rdn:
            try:  # a hostile certificate's value may not even parse as its declared string type
                oid = pair["type"].dotted
                value = pair["value"]
                native = value.native
            except PARSE_ERRORS:
                parts.append("#" + pair.dump().hex())
                continue
            text = _escape(native) if isinstance(native, str) else "#" + value.dump().hex()
            parts.append(f"{_NAME_KEYS.get(oid, oid)}={text}")
        rdns.append("+".join(parts))
    return ", ".join(rdns)
