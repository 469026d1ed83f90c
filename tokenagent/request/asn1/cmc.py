"""CMC, Certificate Management over CMS: RFC 5272 as updated by RFC 6402 (ASN.1 module in RFC 6402 appendix A).

The classes follow the RFC's ASN.1 one to one (asn1crypto field names in snake_case), so they build
PKIData requests as well as they read PKIResponse answers. Importing this module registers the two
CMC content types with asn1crypto's `cms.ContentInfo` and `cms.EncapsulatedContentInfo`.
"""

from __future__ import annotations

from typing import ClassVar

from asn1crypto import algos, cms, core, crl, csr, x509

from tokenagent.request.oids import (
    OID_ADD_EXTENSIONS,
    OID_BATCH_REQUESTS,
    OID_GET_CERT,
    OID_IDENTIFICATION,
    OID_IDENTITY_PROOF,
    OID_IDENTITY_PROOF_V2,
    OID_PKI_DATA,
    OID_PKI_RESPONSE,
    OID_POP_LINK_RANDOM,
    OID_POP_LINK_WITNESS,
    OID_POP_LINK_WITNESS_V2,
    OID_QUERY_PENDING,
    OID_RECIPIENT_NONCE,
    OID_REG_INFO,
    OID_RESPONSE_INFO,
    OID_REVOKE_REQUEST,
    OID_SENDER_NONCE,
    OID_STATUS_INFO,
    OID_STATUS_INFO_V2,
    OID_TRANSACTION_ID,
)

#: asn1crypto's `cms.ContentType` names for the CMC content types (its own names are snake_case too).
ASN1CRYPTO_NAMES: dict[str, str] = {
    OID_PKI_DATA: "pki_data",
    OID_PKI_RESPONSE: "pki_response",
}

BODY_PART_ID_MAX = 4294967295  # bodyIdMax, RFC 5272 section 3.2.1


# -- body part identifiers (RFC 5272 section 3.2.1, RFC 6402 section 2.2) ------------------------------


class BodyPartID(core.Integer):
    """BodyPartID ::= INTEGER(0..bodyIdMax): unique within one PKIData; 0 names the whole message."""

    def set(self, value: int | str) -> None:
        # Checked when building only: a value read from DER is reported, not refused.
        if isinstance(value, int) and not 0 <= value <= BODY_PART_ID_MAX:
            raise ValueError(f"a BodyPartID is 0..{BODY_PART_ID_MAX}, not {value}")
        super().set(value)


class BodyPartPath(core.SequenceOf):
    """BodyPartPath ::= SEQUENCE SIZE (1..MAX) OF BodyPartID: outermost PKIData first (RFC 6402 2.2)."""

    _child_spec = BodyPartID


class BodyPartReference(core.Choice):
    """BodyPartReference ::= CHOICE { bodyPartID BodyPartID, bodyPartPath BodyPartPath } (RFC 6402 2.2)."""

    _alternatives: ClassVar[list] = [
        ("body_part_id", BodyPartID),
        ("body_part_path", BodyPartPath),
    ]


class BodyPartList(core.SequenceOf):
    """BodyPartList ::= SEQUENCE SIZE (1..MAX) OF BodyPartID (batchRequests, statusInfo's bodyList)."""

    _child_spec = BodyPartID


class BodyPartReferences(core.SequenceOf):
    """SEQUENCE SIZE (1..MAX) OF BodyPartReference (statusInfoV2's bodyList)."""

    _child_spec = BodyPartReference


# -- PKIData and PKIResponse (RFC 5272 sections 3.2 and 3.3) ----------------------------------------


class AttributeValues(core.SetOf):
    """SET OF AttributeValue: a control's values, each ANY DEFINED BY attrType (see `CONTROL_VALUES`)."""

    _child_spec = core.Any


class TaggedAttribute(core.Sequence):
    """TaggedAttribute ::= SEQUENCE { bodyPartID, attrType OBJECT IDENTIFIER, attrValues SET OF ANY } (3.2.1.1)."""

    _fields: ClassVar[list] = [
        ("body_part_id", BodyPartID),
        ("attr_type", core.ObjectIdentifier),
        ("attr_values", AttributeValues),
    ]


class TaggedCertificationRequest(core.Sequence):
    """TaggedCertificationRequest ::= SEQUENCE { bodyPartID, certificationRequest PKCS #10 } (3.2.1.2.1)."""

    _fields: ClassVar[list] = [
        ("body_part_id", BodyPartID),
        ("certification_request", csr.CertificationRequest),
    ]


class CertReqMsg(core.Asn1Value):
    """RFC 4211 CertReqMsg (CRMF), kept opaque: tokenagent sends PKCS #10, never CRMF.

    `contents` holds the SEQUENCE's contents. It is not a `core.Any` because TaggedRequest tags it
    [1] IMPLICIT, which asn1crypto cannot re-encode for an Any.
    """

    class_ = 0
    tag = 16  # SEQUENCE
    method = 1  # constructed

    @property
    def native(self) -> bytes:
        return self.contents or b""


class OtherRequestMsg(core.Sequence):
    """orm: SEQUENCE { bodyPartID, requestMessageType OBJECT IDENTIFIER, requestMessageValue ANY } (3.2.1.2)."""

    _fields: ClassVar[list] = [
        ("body_part_id", BodyPartID),
        ("request_message_type", core.ObjectIdentifier),
        ("request_message_value", core.Any),
    ]


class TaggedRequest(core.Choice):
    """TaggedRequest ::= CHOICE { tcr [0], crm [1], orm [2] }; the module uses IMPLICIT TAGS (3.2.1.2)."""

    _alternatives: ClassVar[list] = [
        ("tcr", TaggedCertificationRequest, {"implicit": 0}),
        ("crm", CertReqMsg, {"implicit": 1}),
        ("orm", OtherRequestMsg, {"implicit": 2}),
    ]


class TaggedContentInfo(core.Sequence):
    """TaggedContentInfo ::= SEQUENCE { bodyPartID, contentInfo ContentInfo } (3.2.1.3)."""

    _fields: ClassVar[list] = [
        ("body_part_id", BodyPartID),
        ("content_info", cms.ContentInfo),
    ]


class OtherMsg(core.Sequence):
    """OtherMsg ::= SEQUENCE { bodyPartID, otherMsgType OBJECT IDENTIFIER, otherMsgValue ANY } (3.2.1.4)."""

    _fields: ClassVar[list] = [
        ("body_part_id", BodyPartID),
        ("other_msg_type", core.ObjectIdentifier),
        ("other_msg_value", core.Any),
    ]


class ControlSequence(core.SequenceOf):
    _child_spec = TaggedAttribute


class ReqSequence(core.SequenceOf):
    _child_spec = TaggedRequest


class CmsSequence(core.SequenceOf):
    _child_spec = TaggedContentInfo


class OtherMsgSequence(core.SequenceOf):
    _child_spec = OtherMsg


class PKIData(core.Sequence):
    """PKIData ::= SEQUENCE { controlSequence, reqSequence, cmsSequence, otherMsgSequence } (3.2).

    Every sequence is mandatory, even when empty (DER then writes 30 00).
    """

    _fields: ClassVar[list] = [
        ("control_sequence", ControlSequence),
        ("req_sequence", ReqSequence),
        ("cms_sequence", CmsSequence),
        ("other_msg_sequence", OtherMsgSequence),
    ]


class PKIResponse(core.Sequence):
    """PKIResponse ::= SEQUENCE { controlSequence, cmsSequence, otherMsgSequence } (3.3)."""

    _fields: ClassVar[list] = [
        ("control_sequence", ControlSequence),
        ("cms_sequence", CmsSequence),
        ("other_msg_sequence", OtherMsgSequence),
    ]


# -- status controls (RFC 5272 sections 6.1.1 and 6.1.2, RFC 6402 section 2.6) --------------------


class CMCStatus(core.Integer):
    """CMCStatus ::= INTEGER; 1 is not used (it was "failed" in drafts)."""

    _map: ClassVar[dict[int, str]] = {
        0: "success",
        2: "failed",
        3: "pending",
        4: "noSupport",
        5: "confirmRequired",
        6: "popRequired",
        7: "partial",
    }


class CMCFailInfo(core.Integer):
    """CMCFailInfo ::= INTEGER: why the CA failed a request (only with cMCStatus failed)."""

    _map: ClassVar[dict[int, str]] = {
        0: "badAlg",
        1: "badMessageCheck",
        2: "badRequest",
        3: "badTime",
        4: "badCertId",
        5: "unsupportedExt",
        6: "mustArchiveKeys",
        7: "badIdentity",
        8: "popRequired",
        9: "popFailed",
        10: "noKeyReuse",
        11: "internalCAError",
        12: "tryLater",
        13: "authDataFail",
    }


class PendInfo(core.Sequence):
    """PendInfo ::= SEQUENCE { pendToken OCTET STRING, pendTime GeneralizedTime }: ask again after pendTime."""

    _fields: ClassVar[list] = [
        ("pend_token", core.OctetString),
        ("pend_time", core.GeneralizedTime),
    ]


class CMCStatusInfoOtherInfo(core.Choice):
    """CMCStatusInfo's otherInfo CHOICE { failInfo CMCFailInfo, pendInfo PendInfo } (RFC 5272 6.1.1)."""

    _alternatives: ClassVar[list] = [
        ("fail_info", CMCFailInfo),
        ("pend_info", PendInfo),
    ]


class CMCStatusInfo(core.Sequence):
    """CMCStatusInfo (id-cmc-statusInfo, version 1): bodyList holds plain BodyPartIDs (RFC 5272 6.1.1)."""

    _fields: ClassVar[list] = [
        ("cmc_status", CMCStatus),
        ("body_list", BodyPartList),
        ("status_string", core.UTF8String, {"optional": True}),
        ("other_info", CMCStatusInfoOtherInfo, {"optional": True}),
    ]


class ExtendedFailInfo(core.Sequence):
    """ExtendedFailInfo ::= SEQUENCE { failInfoOID OBJECT IDENTIFIER, failInfoValue ANY } (RFC 6402 2.6)."""

    _fields: ClassVar[list] = [
        ("fail_info_oid", core.ObjectIdentifier),
        ("fail_info_value", core.Any),
    ]


class OtherStatusInfo(core.Choice):
    """OtherStatusInfo ::= CHOICE { failInfo, pendInfo, extendedFailInfo } (RFC 6402 2.6).

    pendInfo and extendedFailInfo are both untagged SEQUENCEs, so the CHOICE is ambiguous by tag;
    the first element tells them apart: OCTET STRING (pendToken) or OBJECT IDENTIFIER (failInfoOID).
    """

    _alternatives: ClassVar[list] = [
        ("fail_info", CMCFailInfo),
        ("pend_info", PendInfo),
        ("extended_fail_info", ExtendedFailInfo),
    ]

    def validate(self, class_: int, tag: int, contents: bytes) -> None:
        super().validate(class_, tag, contents)
        if (class_, tag) == (0, 16):
            self._choice = 2 if contents[:1] == b"\x06" else 1


class CMCStatusInfoV2(core.Sequence):
    """CMCStatusInfoV2 (id-cmc-statusInfoV2): bodyList holds BodyPartReferences (RFC 6402 2.6)."""

    _fields: ClassVar[list] = [
        ("cmc_status", CMCStatus),
        ("body_list", BodyPartReferences),
        ("status_string", core.UTF8String, {"optional": True}),
        ("other_info", OtherStatusInfo, {"optional": True}),
    ]


# -- other control values ------------------------------------------------------------------------------


class IdentifyProofV2(core.Sequence):
    """IdentifyProofV2 (id-cmc-identityProofV2, RFC 6402 2.4; the RFC spells it "Identify").

    proofAlgID hashes the shared secret into the MAC key; macAlgId MACs the reqSequence into witness.
    asn1crypto's DigestAlgorithm writes SHA-2 with NULL parameters, as Windows does (RFC 5754 asks
    receivers to accept both NULL and absent).
    """

    _fields: ClassVar[list] = [
        ("proof_alg_id", algos.DigestAlgorithm),
        ("mac_alg_id", algos.HmacAlgorithm),
        ("witness", core.OctetString),
    ]


class PopLinkWitnessV2(core.Sequence):
    """PopLinkWitnessV2 (id-cmc-popLinkWitnessV2, RFC 6402 2.5): an attribute inside the PKCS #10."""

    _fields: ClassVar[list] = [
        ("key_gen_algorithm", algos.DigestAlgorithm),
        ("mac_algorithm", algos.HmacAlgorithm),
        ("witness", core.OctetString),
    ]


class RevokeRequest(core.Sequence):
    """RevokeRequest (id-cmc-revokeRequest, RFC 5272 6.11)."""

    _fields: ClassVar[list] = [
        ("issuer_name", x509.Name),
        ("serial_number", core.Integer),
        ("reason", crl.CRLReason),
        ("invalidity_date", core.GeneralizedTime, {"optional": True}),
        ("passphrase", core.OctetString, {"optional": True}),
        ("comment", core.UTF8String, {"optional": True}),
    ]


class GetCert(core.Sequence):
    """GetCert (id-cmc-getCert, RFC 5272 6.9): { issuerName GeneralName, serialNumber INTEGER }."""

    _fields: ClassVar[list] = [
        ("issuer_name", x509.GeneralName),
        ("serial_number", core.Integer),
    ]


class AddExtensions(core.Sequence):
    """AddExtensions (id-cmc-addExtensions, RFC 5272 6.5.2)."""

    _fields: ClassVar[list] = [
        ("pki_data_reference", BodyPartID),
        ("cert_references", BodyPartList),
        ("extensions", x509.Extensions),
    ]


#: The control names of RFC 5272 section 6 (id-cmc-<name>), for display.
CONTROL_NAMES: dict[str, str] = {
    OID_STATUS_INFO: "statusInfo",
    OID_IDENTIFICATION: "identification",
    OID_IDENTITY_PROOF: "identityProof",
    OID_TRANSACTION_ID: "transactionId",
    OID_SENDER_NONCE: "senderNonce",
    OID_RECIPIENT_NONCE: "recipientNonce",
    OID_ADD_EXTENSIONS: "addExtensions",
    OID_GET_CERT: "getCert",
    OID_REVOKE_REQUEST: "revokeRequest",
    OID_REG_INFO: "regInfo",
    OID_RESPONSE_INFO: "responseInfo",
    OID_QUERY_PENDING: "queryPending",
    OID_POP_LINK_RANDOM: "popLinkRandom",
    OID_POP_LINK_WITNESS: "popLinkWitness",
    OID_STATUS_INFO_V2: "statusInfoV2",
    OID_BATCH_REQUESTS: "batchRequests",
    OID_POP_LINK_WITNESS_V2: "popLinkWitnessV2",
    OID_IDENTITY_PROOF_V2: "identityProofV2",
}


#: The value class of each control (its attrValues are SET OF this), for reading and display.
CONTROL_VALUES: dict[str, type[core.Asn1Value]] = {
    OID_STATUS_INFO: CMCStatusInfo,
    OID_IDENTIFICATION: core.UTF8String,
    OID_IDENTITY_PROOF: core.OctetString,
    OID_TRANSACTION_ID: core.Integer,
    OID_SENDER_NONCE: core.OctetString,
    OID_RECIPIENT_NONCE: core.OctetString,
    OID_ADD_EXTENSIONS: AddExtensions,
    OID_GET_CERT: GetCert,
    OID_REVOKE_REQUEST: RevokeRequest,
    OID_REG_INFO: core.OctetString,
    OID_RESPONSE_INFO: core.OctetString,
    OID_QUERY_PENDING: core.OctetString,
    OID_POP_LINK_RANDOM: core.OctetString,
    OID_POP_LINK_WITNESS: core.OctetString,
    OID_STATUS_INFO_V2: CMCStatusInfoV2,
    OID_BATCH_REQUESTS: BodyPartList,
    OID_POP_LINK_WITNESS_V2: PopLinkWitnessV2,
    OID_IDENTITY_PROOF_V2: IdentifyProofV2,
}


# -- registration with asn1crypto.cms ---------------------------------------------------------------


def register_content_types() -> None:
    """Teach asn1crypto the CMC content types; safe to call any number of times.

    asn1crypto finds a content's class by the content type's mapped name: `ContentType._map` gives
    the name, `_oid_specs` the class. `_reverse_map` is built lazily on first use, so a name added
    later must be added there as well or building ContentInfo({"content_type": "pki_data"}) fails.
    """
    classes: dict[str, type[core.Asn1Value]] = {OID_PKI_DATA: PKIData, OID_PKI_RESPONSE: PKIResponse}
    for oid, spec in classes.items():
        name = cms.ContentType._map.setdefault(oid, ASN1CRYPTO_NAMES[oid])
        if cms.ContentType._reverse_map is not None:
            cms.ContentType._reverse_map[name] = oid
        cms.ContentInfo._oid_specs[name] = spec
        cms.EncapsulatedContentInfo._oid_specs[name] = spec


register_content_types()
