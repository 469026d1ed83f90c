"""CMC, Certificate Management over CMS: RFC 5272 as updated by RFC 6402 (ASN.1 module in RFC 6402 appendix A).

The classes follow the RFC's ASN.1 one to one (asn1crypto field names in snake_case), so they build
PKIData requests as well as they read PKIResponse answers. Importing this module registers the two
CMC content types with asn1crypto's `cms.ContentInfo` and `cms.EncapsulatedContentInfo`.

Building a request, with the controls Dogtag's CMCRequest sends: `pki_data` (one PKCS #10 and/or a
`revoke_request`, `CmcControls`), `pop_link_witness_attribute` (goes inside the PKCS #10 before it
is signed) and `reg_info_value` (AD CS's RequesterName=DOMAIN%5Cuser&). `cms.sign_content` signs it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar
from urllib.parse import quote

from asn1crypto import algos, cms, core, crl, csr, x509

from tokenagent.errors import InputError
from tokenagent.request.algorithms import digest_algorithm
from tokenagent.request.attributes import Attribute

# -- object identifiers ---------------------------------------------------------------------------

OID_ID_CMC = "1.3.6.1.5.5.7.7"  # id-cmc, RFC 5272 section 6
OID_STATUS_INFO = "1.3.6.1.5.5.7.7.1"
OID_IDENTIFICATION = "1.3.6.1.5.5.7.7.2"
OID_IDENTITY_PROOF = "1.3.6.1.5.5.7.7.3"
OID_TRANSACTION_ID = "1.3.6.1.5.5.7.7.5"
OID_SENDER_NONCE = "1.3.6.1.5.5.7.7.6"
OID_RECIPIENT_NONCE = "1.3.6.1.5.5.7.7.7"
OID_ADD_EXTENSIONS = "1.3.6.1.5.5.7.7.8"
OID_GET_CERT = "1.3.6.1.5.5.7.7.15"
OID_REVOKE_REQUEST = "1.3.6.1.5.5.7.7.17"
OID_REG_INFO = "1.3.6.1.5.5.7.7.18"
OID_RESPONSE_INFO = "1.3.6.1.5.5.7.7.19"
OID_QUERY_PENDING = "1.3.6.1.5.5.7.7.21"
OID_POP_LINK_RANDOM = "1.3.6.1.5.5.7.7.22"
OID_POP_LINK_WITNESS = "1.3.6.1.5.5.7.7.23"
OID_STATUS_INFO_V2 = "1.3.6.1.5.5.7.7.25"
OID_BATCH_REQUESTS = "1.3.6.1.5.5.7.7.28"
OID_POP_LINK_WITNESS_V2 = "1.3.6.1.5.5.7.7.33"
OID_IDENTITY_PROOF_V2 = "1.3.6.1.5.5.7.7.34"

OID_PKI_DATA = "1.3.6.1.5.5.7.12.2"  # id-cct-PKIData, RFC 5272 section 3.2
OID_PKI_RESPONSE = "1.3.6.1.5.5.7.12.3"  # id-cct-PKIResponse, RFC 5272 section 3.3

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

#: asn1crypto's `cms.ContentType` names for the CMC content types (its own names are snake_case too).
CONTENT_TYPE_NAMES: dict[str, str] = {
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


def control(body_part_id: int, attr_type: str, *values: core.Asn1Value) -> TaggedAttribute:
    """A TaggedAttribute holding ``values`` (already of the control's class, e.g. `CMCStatusInfoV2`)."""
    return TaggedAttribute(
        {
            "body_part_id": body_part_id,
            "attr_type": attr_type,
            "attr_values": [core.Any(v) for v in values],
        }
    )


def control_values(attribute: TaggedAttribute) -> list[core.Asn1Value]:
    """The attribute's values parsed as `CONTROL_VALUES` says; an unknown control's stay `core.Any`.

    Raises ValueError (or another asn1crypto parse error) when a value does not match its class.
    """
    spec = CONTROL_VALUES.get(attribute["attr_type"].dotted)
    values: list[core.Asn1Value] = list(attribute["attr_values"])
    if spec is None:
        return values
    # from the encoding: a value set in Python is not always a core.Any that could .parse()
    return [spec.load(value.dump(), strict=True) for value in values]


# -- building a PKIData (RFC 5272 / RFC 6402, the controls Dogtag's CMCRequest sends) ---------------

REQUEST_BODY_PART_ID = 1  # the request's tcr; the controls follow from 2 on (`pki_data`)

#: HMAC identifiers (RFC 4231, PKCS #5 appendix B.1.2) for the hashes Dogtag's CMCRequest offers.
HMAC_OIDS: dict[str, str] = {
    "sha256": "1.2.840.113549.2.9",  # hmacWithSHA256
    "sha384": "1.2.840.113549.2.10",  # hmacWithSHA384
    "sha512": "1.2.840.113549.2.11",  # hmacWithSHA512
}

#: RFC 5280 5.3.1 CRLReason names and values (7 is not used).
CRL_REASONS: dict[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "removeFromCRL": 8,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}

REQUESTER_NAME = "RequesterName"


@dataclass(frozen=True)
class CmcControls:
    """The controls of a CMC request; None or empty leaves a control out.

    ``shared_secret`` adds identityProofV2 (RFC 6402 2.4) and, with ``pop_link_random``, is the key
    of the popLinkWitnessV2 attribute the PKCS #10 must already carry (`pop_link_witness_attribute`).
    ``identification`` is also mixed into both witnesses' keys (Dogtag finds the secret by it).
    ``requester_name`` (DOMAIN\\user) and ``reg_info`` go into one regInfo control, AD CS's way of
    enrolling on behalf of someone in CMC (wire-formats.md 1b).
    """

    transaction_id: int | None = None
    sender_nonce: bytes | None = None
    identification: str | None = None
    shared_secret: bytes | None = None
    reg_info: tuple[tuple[str, str], ...] = ()
    requester_name: str | None = None
    pop_link_random: bytes | None = None
    identity_proof_hash: str = "sha256"


def _witness_hash(hash_name: str) -> str:
    if hash_name not in HMAC_OIDS:
        raise InputError(f"unsupported witness hash '{hash_name}' (one of: {', '.join(HMAC_OIDS)})")
    return hash_name


def hmac_algorithm(hash_name: str) -> algos.HmacAlgorithm:
    """hmacWithSHA*, parameters NULL as PKCS #5 (RFC 8018 B.1.2) writes them.

    Dogtag's CMCRequest leaves both witness identifiers without parameters; a receiver compares
    the OIDs (RFC 5754 section 2 has it accept NULL for the hash too).
    """
    return algos.HmacAlgorithm({"algorithm": HMAC_OIDS[_witness_hash(hash_name)], "parameters": core.Null()})


def witness_key(shared_secret: bytes, identification: str | None, hash_name: str = "sha256") -> bytes:
    """HASH(sharedSecret || identification): RFC 6402 2.4 and 2.5; the identification's UTF-8
    bytes only when an identification control is sent (Dogtag: secret + ident)."""
    if not shared_secret:
        raise InputError("the CMC shared secret is empty")
    data = shared_secret + (identification.encode("utf-8") if identification is not None else b"")
    return hashlib.new(_witness_hash(hash_name), data).digest()


def identity_proof_v2(
    shared_secret: bytes, identification: str | None, req_sequence_der: bytes, hash_name: str = "sha256"
) -> IdentifyProofV2:
    """identityProofV2: witness = HMAC(key, DER of reqSequence, SEQUENCE header included)."""
    key = witness_key(shared_secret, identification, hash_name)
    return IdentifyProofV2(
        {
            "proof_alg_id": digest_algorithm(hash_name),
            "mac_alg_id": hmac_algorithm(hash_name),
            "witness": hmac.new(key, req_sequence_der, hash_name).digest(),
        }
    )


def pop_link_witness_attribute(
    shared_secret: bytes, identification: str | None, random: bytes, hash: str = "sha256"
) -> csr.CRIAttribute:
    """id-cmc-popLinkWitnessV2 = SET { PopLinkWitnessV2 }: a PKCS #10 attribute (RFC 6402 2.5).

    witness = HMAC(HASH(secret || identification), random), where ``random`` is what the
    popLinkRandom control sends. It goes INSIDE the request before the request key signs it
    (`pkcs10.build_request(extra_attributes=...)`), which links the proof of possession to the
    proof of identity.
    """
    if len(random) < 1:
        raise InputError("popLinkRandom is empty (Dogtag sends 64 random bytes)")
    key = witness_key(shared_secret, identification, hash)
    value = PopLinkWitnessV2(
        {
            "key_gen_algorithm": digest_algorithm(hash),
            "mac_algorithm": hmac_algorithm(hash),
            "witness": hmac.new(key, random, hash).digest(),
        }
    )
    return csr.CRIAttribute.load(Attribute({"type": OID_POP_LINK_WITNESS_V2, "values": [core.Any(value)]}).dump())


def _percent(text: str, what: str) -> str:
    # Every byte but RFC 3986's unreserved characters: "\\" -> %5C as certreq writes RequesterName
    if not text:
        raise InputError(f"regInfo: the {what} is empty")
    return quote(text, safe="")


def reg_info_value(pairs: Sequence[tuple[str, str]]) -> bytes:
    """The regInfo OCTET STRING AD CS reads: "name=value&" per pair, both percent-encoded, UTF-8.

    CertEnroll's IX509NameValuePair: each string escaped ("%5C" for a backslash), name and value
    joined by "=", every pair followed by "&": RequesterName=DOMAIN%5Cuser& (wire-formats.md 1b).
    """
    return "".join(f"{_percent(n, 'name')}={_percent(v, f'value of {n}')}&" for n, v in pairs).encode("ascii")


def revoke_request(
    issuer: bytes,
    serial: int,
    reason: str,
    invalidity: datetime | None = None,
    comment: str | None = None,
    *,
    passphrase: bytes | None = None,
) -> RevokeRequest:
    """RevokeRequest (RFC 5272 6.11) for the certificate ``serial`` of ``issuer`` (DER Name).

    ``reason`` is an RFC 5280 CRLReason name, case-insensitive (Dogtag's "caCompromise" too).
    ``passphrase`` is the shared secret of a revocation not signed by the certificate's owner
    (Dogtag's revRequest.sharedSecret).
    """
    try:
        issuer_name = x509.Name.load(issuer, strict=True)
        issuer_name.native  # noqa: B018 -- parse now: garbage fails here, not in a later dump
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise InputError(f"cannot read the issuer name of the certificate to revoke: {exc}") from None
    by_lower = {name.lower(): value for name, value in CRL_REASONS.items()}
    if reason.lower() not in by_lower:
        raise InputError(f"unknown revocation reason '{reason}' (one of: {', '.join(CRL_REASONS)})")
    if serial < 0:
        raise InputError(f"a certificate serial number is not negative: {serial}")
    fields: dict[str, object] = {
        "issuer_name": issuer_name,
        "serial_number": serial,
        "reason": by_lower[reason.lower()],
    }
    if invalidity is not None:
        if invalidity.tzinfo is None:
            raise InputError("the invalidity date needs a time zone (GeneralizedTime is UTC)")
        # DER GeneralizedTime: UTC, "Z", no fraction of a second needed
        fields["invalidity_date"] = invalidity.astimezone(UTC).replace(microsecond=0)
    if passphrase is not None:
        fields["passphrase"] = passphrase
    if comment is not None:
        fields["comment"] = comment
    return RevokeRequest(fields)


def _check_pop_link(request: csr.CertificationRequest, controls: CmcControls) -> None:
    """popLinkRandom without the matching witness inside the request would only fail at the CA."""
    if controls.shared_secret is None:
        raise InputError("popLinkRandom needs the shared secret (its witness is keyed with it)")
    # asn1crypto keeps an unknown attribute's values as one Any: re-read them as SET OF ANY
    witnesses = [
        value
        for attribute in request["certification_request_info"]["attributes"]
        if attribute["type"].dotted == OID_POP_LINK_WITNESS_V2
        for value in Attribute.load(attribute.dump())["values"]
    ]
    if len(witnesses) != 1:
        raise InputError(
            f"the request has {len(witnesses)} popLinkWitnessV2 attributes; popLinkRandom needs exactly one "
            "(add pop_link_witness_attribute() before the request is signed)"
        )
    witness = PopLinkWitnessV2.load(witnesses[0].dump())
    hash_name = witness["key_gen_algorithm"]["algorithm"].native
    expected = pop_link_witness_attribute(
        controls.shared_secret, controls.identification, controls.pop_link_random or b"", _witness_hash(hash_name)
    )
    expected_value = Attribute.load(expected.dump())["values"][0]
    if PopLinkWitnessV2.load(expected_value.dump())["witness"].native != witness["witness"].native:
        raise InputError(
            "the request's popLinkWitnessV2 was not made from this shared secret, identification and popLinkRandom"
        )


def pki_data(request_der: bytes | None, controls: CmcControls, *, revoke: RevokeRequest | None = None) -> PKIData:
    """PKIData for one PKCS #10 request and/or a revocation.

    bodyPartIDs: the request's tcr is 1 (`REQUEST_BODY_PART_ID`); the controls present are numbered
    2, 3, ... in this fixed order: transactionId, senderNonce, identification, regInfo,
    popLinkRandom, revokeRequest, identityProofV2. identityProofV2 comes last because its witness
    is the HMAC of the final reqSequence. cmsSequence and otherMsgSequence stay empty.
    """
    if request_der is None and revoke is None:
        raise InputError("a CMC request needs a certification request or a revocation")
    requests: list[TaggedRequest] = []
    if request_der is not None:
        try:
            request = csr.CertificationRequest.load(request_der, strict=True)
            # parse now, so garbage fails here and not in a later dump; `.native` would also try to
            # parse open-type attribute values (MS name-value pairs) that asn1crypto cannot read
            from tokenagent.request.cms import parse_all

            parse_all(request)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise InputError(f"cannot read the certification request for CMC: {exc}") from None
        if controls.pop_link_random is not None:
            _check_pop_link(request, controls)
        tcr = TaggedCertificationRequest({"body_part_id": REQUEST_BODY_PART_ID, "certification_request": request})
        requests.append(TaggedRequest(name="tcr", value=tcr))
    elif controls.pop_link_random is not None:
        raise InputError("popLinkRandom needs a certification request carrying the witness")
    req_sequence = ReqSequence(requests)

    values: list[tuple[str, core.Asn1Value]] = []
    if controls.transaction_id is not None:
        values.append((OID_TRANSACTION_ID, core.Integer(controls.transaction_id)))
    if controls.sender_nonce is not None:
        if not controls.sender_nonce:
            raise InputError("the CMC senderNonce is empty")
        values.append((OID_SENDER_NONCE, core.OctetString(controls.sender_nonce)))
    if controls.identification is not None:
        values.append((OID_IDENTIFICATION, core.UTF8String(controls.identification)))
    pairs = ((REQUESTER_NAME, controls.requester_name),) if controls.requester_name is not None else ()
    pairs += controls.reg_info
    if pairs:
        values.append((OID_REG_INFO, core.OctetString(reg_info_value(pairs))))
    if controls.pop_link_random is not None:
        values.append((OID_POP_LINK_RANDOM, core.OctetString(controls.pop_link_random)))
    if revoke is not None:
        values.append((OID_REVOKE_REQUEST, revoke))
    if controls.shared_secret is not None:
        proof = identity_proof_v2(
            controls.shared_secret, controls.identification, req_sequence.dump(), controls.identity_proof_hash
        )
        values.append((OID_IDENTITY_PROOF_V2, proof))
    first = REQUEST_BODY_PART_ID + 1
    return PKIData(
        {
            "control_sequence": [control(first + n, oid, value) for n, (oid, value) in enumerate(values)],
            "req_sequence": req_sequence,
            "cms_sequence": [],
            "other_msg_sequence": [],
        }
    )


# -- registration with asn1crypto.cms ---------------------------------------------------------------


def register_content_types() -> None:
    """Teach asn1crypto the CMC content types; safe to call any number of times.

    asn1crypto finds a content's class by the content type's mapped name: `ContentType._map` gives
    the name, `_oid_specs` the class. `_reverse_map` is built lazily on first use, so a name added
    later must be added there as well or building ContentInfo({"content_type": "pki_data"}) fails.
    """
    classes: dict[str, type[core.Asn1Value]] = {OID_PKI_DATA: PKIData, OID_PKI_RESPONSE: PKIResponse}
    for oid, spec in classes.items():
        name = cms.ContentType._map.setdefault(oid, CONTENT_TYPE_NAMES[oid])
        if cms.ContentType._reverse_map is not None:
            cms.ContentType._reverse_map[name] = oid
        cms.ContentInfo._oid_specs[name] = spec
        cms.EncapsulatedContentInfo._oid_specs[name] = spec


register_content_types()
