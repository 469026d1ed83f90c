"""PKCS #10 attributes (RFC 2986) and the Microsoft enrollment attributes (MS-WCCE 2.2.2.7)."""

from __future__ import annotations

from typing import ClassVar

from asn1crypto import core


class AttributeValues(core.SetOf):
    _child_spec = core.Any


class Attribute(core.Sequence):
    """RFC 2986: Attribute { type OBJECT IDENTIFIER, values SET SIZE(1..MAX) OF ANY DEFINED BY type }."""

    _fields: ClassVar[list] = [
        ("type", core.ObjectIdentifier),
        ("values", AttributeValues),
    ]


class EnrollmentNameValuePair(core.Sequence):
    """MS-WCCE 2.2.2.7.10: one [RequestAttributes] line."""

    _fields: ClassVar[list] = [
        ("name", core.BMPString),
        ("value", core.BMPString),
    ]


class CspProvider(core.Sequence):
    """MS-WCCE 2.2.2.7.5 (CSPProvider): the key's KeySpec and provider name; the signature stays empty."""

    _fields: ClassVar[list] = [
        ("key_spec", core.Integer),
        ("csp_name", core.BMPString),
        ("signature", core.BitString),
    ]
