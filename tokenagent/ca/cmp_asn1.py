"""CMP (RFC 4210, updated by RFC 9480) and CRMF (RFC 4211) structures, as asn1crypto classes.

The CMP module (PKIXCMP) is written with EXPLICIT TAGS, the CRMF module (PKIXCRMF-2005) with
IMPLICIT TAGS; the tags below follow each module (a CHOICE such as Name or Time is always tagged
explicitly, whatever the module default). Only the message bodies tokenagent sends or reads are
declared in `PKIBody`; any other body fails to load and is treated as garbage.
"""

from __future__ import annotations

from typing import ClassVar

from asn1crypto import algos, core, csr, keys, x509

OID_PASSWORD_BASED_MAC = "1.2.840.113533.7.66.13"  # RFC 4210 5.1.3.1 PasswordBasedMac
OID_IMPLICIT_CONFIRM = "1.3.6.1.5.5.7.4.13"  # id-it-implicitConfirm
OID_HMAC_SHA1 = "1.3.6.1.5.5.8.1.2"  # RFC 2104 via RFC 4211's list
OID_HMAC_SHA256 = "1.2.840.113549.2.9"  # RFC 4231 / RFC 9481 hmac-sha256
OID_REG_CTRL_OLD_CERT_ID = "1.3.6.1.5.5.7.5.1.5"  # RFC 4211 6.5 id-regCtrl-oldCertID


class AlgorithmIdentifier(core.Sequence):
    """RFC 5280 AlgorithmIdentifier with the OID left unnamed (PBM, its OWF and MAC are compared by OID)."""

    _fields: ClassVar[list] = [
        ("algorithm", core.ObjectIdentifier),
        ("parameters", core.Any, {"optional": True}),
    ]


class PKIFreeText(core.SequenceOf):
    """PKIFreeText ::= SEQUENCE SIZE (1..MAX) OF UTF8String"""

    _child_spec = core.UTF8String


class PKIStatus(core.Integer):
    _map: ClassVar[dict[int, str]] = {
        0: "accepted",
        1: "grantedWithMods",
        2: "rejection",
        3: "waiting",
        4: "revocationWarning",
        5: "revocationNotification",
        6: "keyUpdateWarning",
    }


class PKIFailureInfo(core.BitString):
    """RFC 4210 5.2.3 PKIFailureInfo, the named bits 0..26."""

    _map: ClassVar[dict[int, str]] = {
        0: "badAlg",
        1: "badMessageCheck",
        2: "badRequest",
        3: "badTime",
        4: "badCertId",
        5: "badDataFormat",
        6: "wrongAuthority",
        7: "incorrectData",
        8: "missingTimeStamp",
        9: "badPOP",
        10: "certRevoked",
        11: "certConfirmed",
        12: "wrongIntegrity",
        13: "badRecipientNonce",
        14: "timeNotAvailable",
        15: "unacceptedPolicy",
        16: "unacceptedExtension",
        17: "addInfoNotAvailable",
        18: "badSenderNonce",
        19: "badCertTemplate",
        20: "signerNotTrusted",
        21: "transactionIdInUse",
        22: "unsupportedVersion",
        23: "notAuthorized",
        24: "systemUnavail",
        25: "systemFailure",
        26: "duplicateCertReq",
    }


class PKIStatusInfo(core.Sequence):
    """PKIStatusInfo ::= SEQUENCE { status PKIStatus, statusString PKIFreeText OPTIONAL,
    failInfo PKIFailureInfo OPTIONAL }"""

    _fields: ClassVar[list] = [
        ("status", PKIStatus),
        ("status_string", PKIFreeText, {"optional": True}),
        ("fail_info", PKIFailureInfo, {"optional": True}),
    ]


class InfoTypeAndValue(core.Sequence):
    """InfoTypeAndValue ::= SEQUENCE { infoType OBJECT IDENTIFIER, infoValue ANY DEFINED BY infoType OPTIONAL }"""

    _fields: ClassVar[list] = [
        ("info_type", core.ObjectIdentifier),
        ("info_value", core.Any, {"optional": True}),
    ]


class GeneralInfo(core.SequenceOf):
    _child_spec = InfoTypeAndValue


class PKIHeader(core.Sequence):
    """RFC 4210 5.1.1 PKIHeader (EXPLICIT tags)."""

    _fields: ClassVar[list] = [
        ("pvno", core.Integer),  # cmp1999(1), cmp2000(2), cmp2021(3)
        ("sender", x509.GeneralName),
        ("recipient", x509.GeneralName),
        ("message_time", core.GeneralizedTime, {"explicit": 0, "optional": True}),
        ("protection_alg", AlgorithmIdentifier, {"explicit": 1, "optional": True}),
        ("sender_kid", core.OctetString, {"explicit": 2, "optional": True}),
        ("recip_kid", core.OctetString, {"explicit": 3, "optional": True}),
        ("transaction_id", core.OctetString, {"explicit": 4, "optional": True}),
        ("sender_nonce", core.OctetString, {"explicit": 5, "optional": True}),
        ("recip_nonce", core.OctetString, {"explicit": 6, "optional": True}),
        ("free_text", PKIFreeText, {"explicit": 7, "optional": True}),
        ("general_info", GeneralInfo, {"explicit": 8, "optional": True}),
    ]


# -- CRMF (RFC 4211, IMPLICIT TAGS) ------------------------------------------------------------------


class OptionalValidity(core.Sequence):
    _fields: ClassVar[list] = [
        ("not_before", x509.Time, {"explicit": 0, "optional": True}),
        ("not_after", x509.Time, {"explicit": 1, "optional": True}),
    ]


class CertTemplate(core.Sequence):
    """RFC 4211 5 CertTemplate: every field optional; tokenagent fills subject, publicKey, extensions."""

    _fields: ClassVar[list] = [
        ("version", core.Integer, {"implicit": 0, "optional": True}),
        ("serial_number", core.Integer, {"implicit": 1, "optional": True}),
        ("signing_alg", algos.SignedDigestAlgorithm, {"implicit": 2, "optional": True}),
        ("issuer", x509.Name, {"explicit": 3, "optional": True}),
        ("validity", OptionalValidity, {"implicit": 4, "optional": True}),
        ("subject", x509.Name, {"explicit": 5, "optional": True}),
        ("public_key", keys.PublicKeyInfo, {"implicit": 6, "optional": True}),
        ("issuer_uid", core.OctetBitString, {"implicit": 7, "optional": True}),
        ("subject_uid", core.OctetBitString, {"implicit": 8, "optional": True}),
        ("extensions", x509.Extensions, {"implicit": 9, "optional": True}),
    ]


class AttributeTypeAndValue(core.Sequence):
    _fields: ClassVar[list] = [("type", core.ObjectIdentifier), ("value", core.Any)]


class Controls(core.SequenceOf):
    _child_spec = AttributeTypeAndValue


class CertId(core.Sequence):
    """RFC 4211 6.5 CertId ::= SEQUENCE { issuer GeneralName, serialNumber INTEGER }"""

    _fields: ClassVar[list] = [("issuer", x509.GeneralName), ("serial_number", core.Integer)]


class CertRequest(core.Sequence):
    _fields: ClassVar[list] = [
        ("cert_req_id", core.Integer),
        ("cert_template", CertTemplate),
        ("controls", Controls, {"optional": True}),
    ]


class POPOSigningKey(core.Sequence):
    """RFC 4211 4.1: without poposkInput the signature is over the DER of the CertRequest."""

    _fields: ClassVar[list] = [
        ("poposk_input", core.Any, {"implicit": 0, "optional": True}),
        ("algorithm_identifier", algos.SignedDigestAlgorithm),
        ("signature", core.OctetBitString),
    ]


class ProofOfPossession(core.Choice):
    _alternatives: ClassVar[list] = [
        ("ra_verified", core.Null, {"implicit": 0}),
        ("signature", POPOSigningKey, {"implicit": 1}),
        ("key_encipherment", core.Any, {"explicit": 2}),  # POPOPrivKey is a CHOICE: explicitly tagged
        ("key_agreement", core.Any, {"explicit": 3}),
    ]


class CertReqMsg(core.Sequence):
    _fields: ClassVar[list] = [
        ("cert_req", CertRequest),
        ("popo", ProofOfPossession, {"optional": True}),
        ("reg_info", Controls, {"optional": True}),
    ]


class CertReqMessages(core.SequenceOf):
    _child_spec = CertReqMsg


# -- CMP bodies (EXPLICIT TAGS) ----------------------------------------------------------------------


class CMPCertificates(core.SequenceOf):
    _child_spec = x509.Certificate


class CertOrEncCert(core.Choice):
    _alternatives: ClassVar[list] = [
        ("certificate", x509.Certificate, {"explicit": 0}),
        ("encrypted_cert", core.Any, {"explicit": 1}),  # EncryptedValue / EnvelopedData: not supported
    ]


class CertifiedKeyPair(core.Sequence):
    _fields: ClassVar[list] = [
        ("cert_or_enc_cert", CertOrEncCert),
        ("private_key", core.Any, {"explicit": 0, "optional": True}),
        ("publication_info", core.Any, {"explicit": 1, "optional": True}),
    ]


class CertResponse(core.Sequence):
    _fields: ClassVar[list] = [
        ("cert_req_id", core.Integer),
        ("status", PKIStatusInfo),
        ("certified_key_pair", CertifiedKeyPair, {"optional": True}),
        ("rsp_info", core.OctetString, {"optional": True}),
    ]


class CertResponses(core.SequenceOf):
    _child_spec = CertResponse


class CertRepMessage(core.Sequence):
    _fields: ClassVar[list] = [
        ("ca_pubs", CMPCertificates, {"explicit": 1, "optional": True}),
        ("response", CertResponses),
    ]


class CertStatus(core.Sequence):
    """RFC 4210 5.3.18 CertStatus; hashAlg [0] came with RFC 9480 (pvno 3)."""

    _fields: ClassVar[list] = [
        ("cert_hash", core.OctetString),
        ("cert_req_id", core.Integer),
        ("status_info", PKIStatusInfo, {"optional": True}),
        ("hash_alg", algos.DigestAlgorithm, {"explicit": 0, "optional": True}),
    ]


class CertConfirmContent(core.SequenceOf):
    _child_spec = CertStatus


class PKIConfirmContent(core.Null):
    pass


class PollReq(core.Sequence):
    _fields: ClassVar[list] = [("cert_req_id", core.Integer)]


class PollReqContent(core.SequenceOf):
    _child_spec = PollReq


class PollRep(core.Sequence):
    _fields: ClassVar[list] = [
        ("cert_req_id", core.Integer),
        ("check_after", core.Integer),  # seconds
        ("reason", PKIFreeText, {"optional": True}),
    ]


class PollRepContent(core.SequenceOf):
    _child_spec = PollRep


class ErrorMsgContent(core.Sequence):
    _fields: ClassVar[list] = [
        ("pki_status_info", PKIStatusInfo),
        ("error_code", core.Integer, {"optional": True}),
        ("error_details", PKIFreeText, {"optional": True}),
    ]


class RevDetails(core.Sequence):
    _fields: ClassVar[list] = [
        ("cert_details", CertTemplate),
        ("crl_entry_details", x509.Extensions, {"optional": True}),
    ]


class RevReqContent(core.SequenceOf):
    _child_spec = RevDetails


class PKIStatusInfos(core.SequenceOf):
    _child_spec = PKIStatusInfo


class CertIds(core.SequenceOf):
    _child_spec = CertId


class RevRepContent(core.Sequence):
    _fields: ClassVar[list] = [
        ("status", PKIStatusInfos),
        ("rev_certs", CertIds, {"explicit": 0, "optional": True}),
        ("crls", core.Any, {"explicit": 1, "optional": True}),
    ]


class PKIBody(core.Choice):
    """RFC 4210 5.1.2 PKIBody: the alternatives tokenagent sends or reads (others do not load)."""

    _alternatives: ClassVar[list] = [
        ("ir", CertReqMessages, {"explicit": 0}),
        ("ip", CertRepMessage, {"explicit": 1}),
        ("cr", CertReqMessages, {"explicit": 2}),
        ("cp", CertRepMessage, {"explicit": 3}),
        ("p10cr", csr.CertificationRequest, {"explicit": 4}),
        ("kur", CertReqMessages, {"explicit": 7}),
        ("kup", CertRepMessage, {"explicit": 8}),
        ("rr", RevReqContent, {"explicit": 11}),
        ("rp", RevRepContent, {"explicit": 12}),
        ("pkiconf", PKIConfirmContent, {"explicit": 19}),
        ("error", ErrorMsgContent, {"explicit": 23}),
        ("cert_conf", CertConfirmContent, {"explicit": 24}),
        ("poll_req", PollReqContent, {"explicit": 25}),
        ("poll_rep", PollRepContent, {"explicit": 26}),
    ]


class PKIMessage(core.Sequence):
    """PKIMessage ::= SEQUENCE { header, body, protection [0] PKIProtection OPTIONAL,
    extraCerts [1] SEQUENCE SIZE (1..MAX) OF CMPCertificate OPTIONAL }"""

    _fields: ClassVar[list] = [
        ("header", PKIHeader),
        ("body", PKIBody),
        ("protection", core.OctetBitString, {"explicit": 0, "optional": True}),
        ("extra_certs", CMPCertificates, {"explicit": 1, "optional": True}),
    ]


class ProtectedPart(core.Sequence):
    """RFC 4210 5.1.3: what the protection is computed over."""

    _fields: ClassVar[list] = [("header", PKIHeader), ("body", PKIBody)]


class PBMParameter(core.Sequence):
    """RFC 4211 4.4 / RFC 4210 5.1.3.1 PBMParameter."""

    _fields: ClassVar[list] = [
        ("salt", core.OctetString),
        ("owf", AlgorithmIdentifier),
        ("iteration_count", core.Integer),
        ("mac", AlgorithmIdentifier),
    ]
