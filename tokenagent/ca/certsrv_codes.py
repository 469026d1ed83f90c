"""AD CS denial codes (winerror.h CERTSRV_E_*, and the few others a denial page shows) in plain words.

The certsrv pages give a request's denial as "The disposition message is "Denied by Policy Module
0x80094800, ..."": the HRESULT names what went wrong, but only to people who know the list. Each
entry says what it means for someone enrolling smart cards, and what to change. docs/ca.md prints
this table (a test keeps the two equal).
"""

from __future__ import annotations

from typing import NamedTuple


class CertsrvCode(NamedTuple):
    name: str
    meaning: str
    rekey: bool = False  # a new key is the fix (certmonger's NEED_NEW_KEY)


CODES: dict[int, CertsrvCode] = {
    0x80094001: CertsrvCode("CERTSRV_E_BAD_REQUESTSUBJECT", "the subject name is invalid or too long for the CA"),
    0x80094002: CertsrvCode("CERTSRV_E_NO_REQUEST", "the CA has no request with that ID"),
    0x80094003: CertsrvCode(
        "CERTSRV_E_BAD_REQUESTSTATUS", "the request's state does not allow this (e.g. it was already denied)"
    ),
    0x80094004: CertsrvCode(
        "CERTSRV_E_PROPERTY_EMPTY", "the CA has nothing under that request ID (no such request, or no certificate)"
    ),
    0x80094009: CertsrvCode(
        "CERTSRV_E_RESTRICTEDOFFICER",
        "the enrollment agent is restricted and may not enroll for this user or template (CA restrictions)",
    ),
    0x80094011: CertsrvCode(
        "CERTSRV_E_ENROLL_DENIED", "the requester has no Enroll permission on the CA or the template"
    ),
    0x80094012: CertsrvCode("CERTSRV_E_TEMPLATE_DENIED", "the requester has no Enroll permission on the template"),
    0x80094014: CertsrvCode("CERTSRV_E_ADMIN_DENIED_REQUEST", "a CA officer denied the request"),
    0x80094016: CertsrvCode(
        "CERTSRV_E_WEAK_SIGNATURE_OR_KEY",
        "the CA refuses the request's key or signature algorithm as too weak",
        rekey=True,
    ),
    0x80094800: CertsrvCode(
        "CERTSRV_E_UNSUPPORTED_CERT_TYPE",
        "the template is not published on this CA (or does not exist): publish it, or use another CA",
    ),
    0x80094801: CertsrvCode(
        "CERTSRV_E_NO_CERT_TYPE",
        "the request names no template: set CertificateTemplate in the INF, or --attrib CertificateTemplate:NAME",
    ),
    0x80094802: CertsrvCode(
        "CERTSRV_E_TEMPLATE_CONFLICT",
        "the request names two different templates (its own and the CertificateTemplate attribute)",
    ),
    0x80094803: CertsrvCode(
        "CERTSRV_E_SUBJECT_ALT_NAME_REQUIRED", "the template needs a subject alternative name the request lacks"
    ),
    0x80094804: CertsrvCode("CERTSRV_E_ARCHIVED_KEY_REQUIRED", "the template requires key archival"),
    0x80094805: CertsrvCode("CERTSRV_E_SMIME_REQUIRED", "the template requires the S/MIME capabilities extension"),
    0x80094806: CertsrvCode(
        "CERTSRV_E_BAD_RENEWAL_SUBJECT",
        "an on-behalf-of request (RequesterName) for a template that does not require an enrollment agent "
        "signature: set 'authorized signatures required' to 1 on the template, or enroll the user directly",
    ),
    0x80094807: CertsrvCode("CERTSRV_E_BAD_TEMPLATE_VERSION", "the template's version is newer than the CA supports"),
    0x80094808: CertsrvCode("CERTSRV_E_TEMPLATE_POLICY_REQUIRED", "the template lacks a signature policy it needs"),
    0x80094809: CertsrvCode(
        "CERTSRV_E_SIGNATURE_POLICY_REQUIRED",
        "the template requires an enrollment agent signature: co-sign with --agent (RequestType = CMC or PKCS7)",
    ),
    0x8009480A: CertsrvCode(
        "CERTSRV_E_SIGNATURE_COUNT",
        "the template requires more enrollment agent signatures than the request has: add one with tokenagent sign",
    ),
    0x8009480B: CertsrvCode(
        "CERTSRV_E_SIGNATURE_REJECTED",
        "an agent signature was refused: the agent certificate lacks the Certificate Request Agent EKU or the "
        "issuance policy the template requires, or the signature does not verify",
    ),
    0x8009480C: CertsrvCode(
        "CERTSRV_E_ISSUANCE_POLICY_REQUIRED", "the agent certificate lacks an issuance policy the template requires"
    ),
    0x8009480D: CertsrvCode(
        "CERTSRV_E_SUBJECT_UPN_REQUIRED", "the user has no UPN in Active Directory, which the template puts in the SAN"
    ),
    0x8009480E: CertsrvCode("CERTSRV_E_SUBJECT_DIRECTORY_GUID_REQUIRED", "the template needs the AD object GUID"),
    0x8009480F: CertsrvCode(
        "CERTSRV_E_SUBJECT_DNS_REQUIRED", "the computer has no DNS name in Active Directory, which the template needs"
    ),
    0x80094810: CertsrvCode(
        "CERTSRV_E_ARCHIVED_KEY_UNEXPECTED", "the request archives a key, which the template does not allow"
    ),
    0x80094811: CertsrvCode(
        "CERTSRV_E_KEY_LENGTH", "the key is shorter than the template's minimum: make a new key (KeyLength)", rekey=True
    ),
    0x80094812: CertsrvCode(
        "CERTSRV_E_SUBJECT_EMAIL_REQUIRED", "the user has no e-mail address in AD, which the template needs"
    ),
    0x80094813: CertsrvCode("CERTSRV_E_UNKNOWN_CERT_TYPE", "one of the request's templates is unknown to the CA"),
    0x80094814: CertsrvCode("CERTSRV_E_CERT_TYPE_OVERLAP", "the request names templates that overlap"),
    0x80094815: CertsrvCode("CERTSRV_E_TOO_MANY_SIGNATURES", "more signatures than the template allows"),
    0x80094816: CertsrvCode(
        "CERTSRV_E_RENEWAL_BAD_PUBLIC_KEY", "the template requires a new key on renewal", rekey=True
    ),
    0x80090006: CertsrvCode("NTE_BAD_SIGNATURE", "the request's own signature does not verify (it was altered)"),
    0x8009310B: CertsrvCode("CRYPT_E_ASN1_BADTAG", "the CA could not parse the request"),
    0x80070057: CertsrvCode("E_INVALIDARG", "the CA refused a request attribute or value"),
}


def lookup(hresult: int) -> CertsrvCode | None:
    return CODES.get(hresult & 0xFFFFFFFF)
