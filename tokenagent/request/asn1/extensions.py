"""GeneralNames as certreq writes them (RFC 5280 4.2.1.6), S/MIME capabilities (RFC 4262) and the
certificate template extension (MS-WCCE 2.2.2.7.7.2).

GeneralName is declared with plain IA5String/OCTET STRING alternatives because asn1crypto's own URI,
DNSName and IPAddress classes rewrite their input (IRI escaping, IDNA), and certreq writes names
verbatim.
"""

from __future__ import annotations

from typing import ClassVar

from asn1crypto import core, x509


class OtherName(core.Sequence):
    _fields: ClassVar[list] = [
        ("type_id", core.ObjectIdentifier),
        ("value", core.Any, {"explicit": 0}),
    ]


class GeneralName(core.Choice):
    """RFC 5280 GeneralName, the alternatives certreq writes, each as its underlying string type."""

    _alternatives: ClassVar[list] = [
        ("other_name", OtherName, {"implicit": 0}),
        ("rfc822_name", core.IA5String, {"implicit": 1}),
        ("dns_name", core.IA5String, {"implicit": 2}),
        ("directory_name", x509.Name, {"explicit": 4}),
        ("uniform_resource_identifier", core.IA5String, {"implicit": 6}),
        ("ip_address", core.OctetString, {"implicit": 7}),
        ("registered_id", core.ObjectIdentifier, {"implicit": 8}),
    ]


class GeneralNames(core.SequenceOf):
    _child_spec = GeneralName


class SMIMECapability(core.Sequence):
    _fields: ClassVar[list] = [
        ("capability_id", core.ObjectIdentifier),
        ("parameters", core.Any, {"optional": True}),
    ]


class SMIMECapabilities(core.SequenceOf):
    _child_spec = SMIMECapability


class CertificateTemplate(core.Sequence):
    """szOID_CERTIFICATE_TEMPLATE (MS-WCCE 2.2.2.7.7.2)."""

    _fields: ClassVar[list] = [
        ("template_id", core.ObjectIdentifier),
        ("major_version", core.Integer, {"optional": True}),
        ("minor_version", core.Integer, {"optional": True}),
    ]
