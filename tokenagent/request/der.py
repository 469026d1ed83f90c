"""DER plumbing every reader shares: what asn1crypto and cryptography raise on damaged input,
parsing a value completely now rather than in a later dump, and telling what a DER value is.

Imports nothing else from tokenagent, so any room can use it.
"""

from __future__ import annotations

import functools
from typing import Literal

from asn1crypto import core
from cryptography import x509

# What asn1crypto raises from lazily parsed, damaged DER (it has no exception class of its own).
PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, NotImplementedError)
# cryptography's certificate and request loaders: InvalidVersion is not a ValueError.
LOAD_ERRORS = (ValueError, x509.InvalidVersion)
# ...and what it raises when a loaded certificate's extensions are read (it parses them lazily).
CERTIFICATE_ERRORS = (*LOAD_ERRORS, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)

Kind = Literal["content-info", "certificate", "certification-request", "unknown"]


def reason_of(exc: BaseException) -> str:
    """The first line of an exception's message (asn1crypto's go on with "while parsing ..." lines)."""
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


def parse_native(value: core.Asn1Value) -> None:
    """Parse ``value`` and everything inside it, open types included (asn1crypto's ``.native``).

    Stricter than `parse_all`: for what a CA sends back, where an unreadable value anywhere is a
    damaged response. Raises ValueError for an element asn1crypto has no native form for.
    """
    try:
        value.native  # noqa: B018
    except AttributeError as exc:  # e.g. an ObjectDescriptor inside an ANY: asn1crypto has no .native for it
        raise ValueError(f"an element asn1crypto cannot read ({exc})") from None


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element from its (one-byte) tag and its contents.

    For structures whose parts are already DER: asn1crypto re-encodes a structure built from
    Python values on every dump (it never clears its "mutated" mark), recursively, so joining
    the parts' bytes is many times cheaper than asn1crypto for the same bytes.
    """
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def der_set(elements: list[bytes], tag: int = 0x31) -> bytes:
    """A DER SET OF: the elements' encodings in ascending order (as asn1crypto's SetOf sorts them)."""
    return tlv(tag, b"".join(sorted(elements)))


@functools.lru_cache(maxsize=256)
def oid_der(oid: str) -> bytes:
    """An OBJECT IDENTIFIER's DER (a few OIDs recur in every request: encoded once each)."""
    return core.ObjectIdentifier(oid).dump()


def _first_inner_tag(der: bytes) -> int | None:
    """The tag of the first element inside the outer SEQUENCE (`read_der` checked its length)."""
    header = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    return der[header] if len(der) > header else None


def kind_of(der: bytes) -> Kind:
    """What one complete DER SEQUENCE is: a CMS ContentInfo (it starts with its contentType OID,
    where a certificate or a request starts with a SEQUENCE), a certificate, a request, or else."""
    if _first_inner_tag(der) == 0x06:
        return "content-info"
    for loader, kind in (
        (x509.load_der_x509_certificate, "certificate"),
        (x509.load_der_x509_csr, "certification-request"),
    ):
        try:
            loader(der)
        except LOAD_ERRORS:
            continue
        return kind  # type: ignore[return-value]
    return "unknown"


def content_type_of(der: bytes) -> str | None:
    """The contentType (dotted OID) of a CMS ContentInfo, or None for anything else."""
    if kind_of(der) != "content-info":
        return None
    from asn1crypto import cms  # here: it imports ocsp and crl, which a PKCS#10 `new` never needs

    try:
        return str(cms.ContentInfo.load(der)["content_type"].dotted)
    except (*PARSE_ERRORS, *LOAD_ERRORS):
        return None
