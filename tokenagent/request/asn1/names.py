"""Names (RFC 5280 4.1.2.4) with the value left open: its string type depends on the attribute."""

from __future__ import annotations

from typing import ClassVar

from asn1crypto import core


# RFC 5280 4.1.2.4; the value is ANY because its type depends on the attribute
class AttributeTypeAndValue(core.Sequence):
    _fields: ClassVar[list] = [
        ("type", core.ObjectIdentifier),
        ("value", core.Any),
    ]


class RelativeDistinguishedName(core.SetOf):
    _child_spec = AttributeTypeAndValue


class RDNSequence(core.SequenceOf):
    _child_spec = RelativeDistinguishedName


class LatinT61String(core.AbstractString):
    """T61String as Windows writes it: Latin-1 bytes (asn1crypto's own codec is strict T.61)."""

    tag = 20
    _encoding = "latin1"
