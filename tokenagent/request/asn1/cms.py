"""CMS SignedData (RFC 5652 sections 3 and 5), declared so that tokenagent keeps signer order.

asn1crypto's SetOf sorts its children's encodings whenever it encodes (DER's rule for SET OF).
For SignerInfos that would move the agent's SignerInfo, the one with RequesterName, away from the
front where AD CS looks for it (MS-WCCE), and an appended signer could land anywhere. CMS asks
for DER only inside signed attributes (RFC 5652 5.4, which CMSAttributes still sorts), so the
three sets of SignedData keep the order they are given in; loaded elements keep their bytes.
"""

from __future__ import annotations

from typing import ClassVar

from asn1crypto import cms, core


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
