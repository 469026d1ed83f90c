"""What a CA answers: a certificate (.cer), a certs-only PKCS #7 (.p7b) or a full CMC response (.rsp).

certreq -submit writes whichever the CA sent. `read_response` tells them apart, collects the
certificates and, for CMC (RFC 5272 section 3.3), the status controls, and checks the CMS signature
(RFC 5652 section 5.6) with a certificate the response itself carries. "valid" therefore means the
response was not altered after the holder of that certificate signed it, not that the signer is
trusted: trust is the caller's decision. Every input that is not one of the three is an `InputError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from asn1crypto import cms, core
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from tokenagent.errors import CAError, InputError, RequestPendingError
from tokenagent.request.armor import read_der
from tokenagent.request.asn1.cmc import PKIData, PKIResponse
from tokenagent.request.asn1.cms import EncapsulatedContentInfo
from tokenagent.request.cmc import control_values
from tokenagent.request.cms_verify import verify_signers
from tokenagent.request.der import CERTIFICATE_ERRORS, PARSE_ERRORS, kind_of, parse_native, reason_of
from tokenagent.request.oids import (
    OID_DATA,
    OID_PKI_DATA,
    OID_PKI_RESPONSE,
    OID_RECIPIENT_NONCE,
    OID_SIGNED_DATA,
    OID_STATUS_INFO,
    OID_STATUS_INFO_V2,
    OID_TRANSACTION_ID,
)
from tokenagent.request.signed_data import check_inner_der


@dataclass(frozen=True)
class CmcStatus:
    """One CMCStatusInfo (version 1) or CMCStatusInfoV2 (version 2) value."""

    status: str  # "success" | "failed" | "pending" | "noSupport" | "confirmRequired" | "popRequired" | "partial"
    body_list: tuple[int, ...]  # the bodyPartIDs it is about (of a bodyPartPath: its last element)
    status_string: str | None
    fail_info: str | None  # CMCFailInfo name, e.g. "badRequest"; of an extendedFailInfo: its OID
    pend_token: bytes | None
    pend_time: datetime | None  # UTC
    version: int  # 1 (id-cmc-statusInfo) or 2 (id-cmc-statusInfoV2)


@dataclass(frozen=True)
class CertificateResponse:
    form: str  # "certificate" | "pkcs7" | "cmc"
    certificates: tuple[bytes, ...]  # DER, in the order found
    statuses: tuple[CmcStatus, ...]  # CMC only, in controlSequence order
    signature: str  # "unsigned" | "valid" | "invalid" | "unverifiable"
    signers: tuple[str, ...]  # RFC 4514 subjects of the signer certificates found in the response
    signer_certificates: tuple[bytes, ...] = ()  # their certificates (DER), for a trust decision
    recipient_nonce: bytes | None = None  # CMC recipientNonce: the request's senderNonce echoed
    transaction_id: int | None = None  # CMC transactionId echoed

    def end_entities(self) -> list[bytes]:
        """The certificates that issued no other certificate of the response, in response order.

        "Issued" means issuer name and signature both match, so a CA certificate sent alone, which
        HSM users enroll for sub-CA keys, is a leaf; a self-signed certificate issuing only itself too.
        """
        loaded = _load_all(self.certificates)
        leaves: list[bytes] = []
        for der, cert in loaded:
            issues_another = any(other_der != der and _issued_by(other, cert) for other_der, other in loaded)
            if not issues_another and der not in leaves:
                leaves.append(der)
        return leaves

    def chain_for(self, der: bytes) -> list[bytes]:
        """The response's CA certificates above ``der``, nearest first, up to a self-signed root.

        Each step needs the issuer name and the signature to match; it stops where no issuer is in
        the response, and a certificate is never used twice, so cross-signed loops end.
        """
        loaded = _load_all(self.certificates)
        current = _load(der, 0)
        chain: list[bytes] = []
        seen = {der}
        while not _issued_by(current, current):
            issuer = next(
                ((d, c) for d, c in loaded if d not in seen and _issued_by(current, c)),
                None,
            )
            if issuer is None:
                break
            chain.append(issuer[0])
            seen.add(issuer[0])
            current = issuer[1]
        return chain

    def raise_for_status(self) -> None:
        """`CAError` for a refusal or a response without certificate, `RequestPendingError` if pending."""
        for status in self.statuses:
            if status.status == "confirmRequired":
                raise CAError(
                    "the CA issued the certificate but requires a confirmation (confirmRequired) "
                    f"that tokenagent does not send{_details(status)}"
                )
            if status.status not in ("success", "pending"):
                raise CAError(f"the CA refused the request: {status.status}{_details(status)}")
        for status in self.statuses:
            if status.status == "pending":
                parts = []
                if status.pend_token is not None:
                    parts.append(f"pendToken {status.pend_token.hex()}")
                if status.pend_time is not None:
                    parts.append(f"check again after {status.pend_time.strftime('%Y-%m-%d %H:%M:%S UTC')}")
                when = f" ({', '.join(parts)})" if parts else ""
                text = f": {_one_line(status.status_string)}" if status.status_string else ""
                raise RequestPendingError(f"the CA holds the request pending{when}{text}")
        if not self.certificates:
            if self.form == "cmc":
                raise CAError("the CA answered success but its CMC response holds no certificate")
            raise CAError("the CA's response holds no certificate")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _details(status: CmcStatus) -> str:
    fail = f" ({status.fail_info})" if status.fail_info else ""
    text = f": {_one_line(status.status_string)}" if status.status_string else ""
    return fail + text


# -- reading ----------------------------------------------------------------------------------------


class _NotAResponse(Exception):
    """Well-formed DER that is something else; the message says what."""


def read_response(data: bytes | str, what: str = "response") -> CertificateResponse:
    """The CA's answer in ``data`` (DER, PEM, bare or UTF-16 base64); `InputError` for anything else."""
    der = read_der(data, what)
    try:
        return _read(der, what)
    except _NotAResponse as exc:
        raise InputError(f"{what}: {exc}") from None
    except PARSE_ERRORS as exc:
        raise InputError(f"cannot read {what}: damaged DER ({reason_of(exc)})") from None


def _read(der: bytes, what: str) -> CertificateResponse:
    if kind_of(der) == "content-info":
        return _read_content_info(der, what)
    try:
        x509.load_der_x509_certificate(der)
    except CERTIFICATE_ERRORS:
        raise _NotAResponse(_what_else(der)) from None
    try:
        _check_certificate(der)
    except CERTIFICATE_ERRORS as exc:
        raise ValueError(f"the certificate cannot be read: {exc}") from None
    return CertificateResponse("certificate", (der,), (), "unsigned", ())


def _what_else(der: bytes) -> str:
    """Name a well-formed DER value that is not a CA response, for the error message."""
    try:
        x509.load_der_x509_csr(der)
    except CERTIFICATE_ERRORS:
        pass
    else:
        return "a certificate request, not a CA response"
    # PKIData first: asn1crypto keeps extra trailing elements, so PKIResponse would read a PKIData too
    bare: list[tuple[type[core.Sequence], str]] = [
        (PKIData, "a CMC request (PKIData), not a CA response"),
        (PKIResponse, "a bare CMC PKIResponse without its CMS SignedData"),
    ]
    for spec, name in bare:
        try:
            parse_native(spec.load(der, strict=True))
        except PARSE_ERRORS:
            continue
        return name
    return "not a certificate, PKCS #7 or CMC response (neither an X.509 certificate nor a CMS ContentInfo)"


def _read_content_info(der: bytes, what: str) -> CertificateResponse:
    info = cms.ContentInfo.load(der, strict=True)
    content_type = info["content_type"].dotted
    if content_type != OID_SIGNED_DATA:
        raise _NotAResponse(f"a CMS {info['content_type'].native} ContentInfo, not signed data from a CA")
    signed = info["content"]
    if not isinstance(signed, cms.SignedData):
        raise _NotAResponse("a signedData ContentInfo without its content")
    encapsulated = EncapsulatedContentInfo.load(signed["encap_content_info"].dump(), strict=True)
    econtent_type = encapsulated["content_type"].dotted
    econtent: bytes | None = encapsulated["content"].native  # None when absent
    certificates = _certificates(signed)
    parse_native(signed["version"])
    parse_native(signed["digest_algorithms"])
    signer_infos = list(signed["signer_infos"])
    for signer_info in signer_infos:
        parse_native(signer_info)

    if econtent_type == OID_DATA:
        if econtent:
            raise _NotAResponse("signed data with content (id-data), not a CA response")
        # certs-only ("degenerate") SignedData, RFC 5272 section 4.1; a SignerInfo would be detached
        signature = "unverifiable" if signer_infos else "unsigned"
        return CertificateResponse("pkcs7", certificates, (), signature, ())
    if econtent_type == OID_PKI_DATA:
        raise _NotAResponse("a CMC request (PKIData), not a CA response")
    if econtent_type != OID_PKI_RESPONSE:
        raise _NotAResponse(f"signed data with content type {econtent_type}, not a CA response")
    if econtent is None:
        raise _NotAResponse("a CMC response without its PKIResponse content (detached)")
    check_inner_der(econtent, what, "CMC PKIResponse")  # before `_parse_all` recurses into it
    response = PKIResponse.load(econtent, strict=True)
    parse_native(response)
    statuses = tuple(_statuses(response))
    signature, signers, signer_certificates = _check_signatures(der, what)
    nonce, transaction = _identifiers(response)
    return CertificateResponse(
        "cmc", certificates, statuses, signature, signers, signer_certificates, nonce, transaction
    )


def _certificates(signed: cms.SignedData) -> tuple[bytes, ...]:
    """SignedData.certificates, X.509 choice only (attribute certificates are not for us)."""
    found: list[bytes] = []
    certificate_set = signed["certificates"]
    if isinstance(certificate_set, core.Void):
        return ()
    for number, choice in enumerate(certificate_set, 1):
        if choice.name != "certificate":
            continue
        der = choice.chosen.dump()
        try:
            _check_certificate(der)
        except CERTIFICATE_ERRORS as exc:
            raise ValueError(f"certificate {number} of the SignedData cannot be read: {exc}") from None
        found.append(der)
    return tuple(found)


def _statuses(response: PKIResponse) -> list[CmcStatus]:
    statuses: list[CmcStatus] = []
    for attribute in response["control_sequence"]:
        oid = attribute["attr_type"].dotted
        if oid not in (OID_STATUS_INFO, OID_STATUS_INFO_V2):
            continue
        for value in control_values(attribute):
            statuses.append(_status(value, 2 if oid == OID_STATUS_INFO_V2 else 1))
    return statuses


def _status(value: core.Asn1Value, version: int) -> CmcStatus:
    status = value["cmc_status"].native
    body_list: list[int] = []
    for reference in value["body_list"]:
        if version == 1:
            body_list.append(reference.native)
        elif reference.name == "body_part_id":
            body_list.append(reference.chosen.native)
        else:
            path = reference.chosen.native
            if not path:
                raise ValueError("an empty bodyPartPath (RFC 6402: SIZE (1..MAX))")
            body_list.append(path[-1])
    fail_info: str | None = None
    pend_token: bytes | None = None
    pend_time: datetime | None = None
    other = value["other_info"]
    if not isinstance(other, core.Void):
        if other.name == "fail_info":
            name = other.chosen.native
            fail_info = name if isinstance(name, str) else f"failInfo {name}"
        elif other.name == "pend_info":
            pend_token = other.chosen["pend_token"].native
            pend_time = _utc(other.chosen["pend_time"].native)
        else:
            fail_info = other.chosen["fail_info_oid"].dotted
    return CmcStatus(
        status=status if isinstance(status, str) else f"cMCStatus {status}",
        body_list=tuple(body_list),
        status_string=value["status_string"].native,
        fail_info=fail_info,
        pend_token=pend_token,
        pend_time=pend_time,
        version=version,
    )


def _utc(value: object) -> datetime:
    if not isinstance(value, datetime):  # asn1crypto's extended_datetime: year 0
        raise ValueError(f"pendTime {value} is out of range")
    # RFC 5272 says GeneralizedTime in UTC ("Z"); a time without zone is taken as UTC too
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# -- certificates -------------------------------------------------------------------------------------


def _check_certificate(der: bytes) -> None:
    """Load the certificate and read now the parts cryptography reads only on first use.

    cryptography checks names and extensions when they are first asked for; accept, repair,
    revoke-request and sign ask for them after the response was read (labels, KeyUsage warnings,
    the agent EKU), so a damaged one must be refused here, as damaged DER of the response.
    """
    certificate = x509.load_der_x509_certificate(der)
    certificate.subject  # noqa: B018 -- parsed on first use
    certificate.issuer  # noqa: B018
    certificate.extensions  # noqa: B018


def _load(der: bytes, number: int) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except CERTIFICATE_ERRORS as exc:
        where = f"certificate {number}" if number else "the certificate"
        raise InputError(f"cannot read {where}: {exc}") from None


def _load_all(certificates: tuple[bytes, ...]) -> list[tuple[bytes, x509.Certificate]]:
    return [(der, _load(der, number)) for number, der in enumerate(certificates, 1)]


def _issued_by(subject: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Issuer name matches and ``issuer``'s key verifies the signature (RSA, PSS, ECDSA, EdDSA)."""
    try:
        subject.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


# -- CMS signatures (RFC 5652 section 5.6) ------------------------------------------------------------


def _check_signatures(der: bytes, what: str) -> tuple[str, tuple[str, ...], tuple[bytes, ...]]:
    """The response's verdict ("invalid" beats "unverifiable" beats "valid"), the signers found and
    their certificates.

    `cms.verify_signers` checks each SignerInfo; a signer counts as found when its certificate is
    in the response.
    """
    checks = verify_signers(der, what=what)
    if not checks:
        return "unsigned", (), ()
    signers = tuple(check.signer_subject for check in checks if check.signer_subject is not None)
    certificates = tuple(check.certificate for check in checks if check.certificate is not None)
    verdicts = {check.status for check in checks}
    for verdict in ("invalid", "unverifiable"):
        if verdict in verdicts:
            return verdict, signers, certificates
    return "valid", signers, certificates


def _identifiers(response: PKIResponse) -> tuple[bytes | None, int | None]:
    """recipientNonce and transactionId from the response's controls (RFC 5272 6.6, 6.5)."""
    nonce: bytes | None = None
    transaction: int | None = None
    for attribute in response["control_sequence"]:
        oid = attribute["attr_type"].dotted
        if oid not in (OID_RECIPIENT_NONCE, OID_TRANSACTION_ID):
            continue
        values = control_values(attribute)
        if not values:
            continue
        if oid == OID_RECIPIENT_NONCE:
            nonce = bytes(values[0].native)
        else:
            transaction = int(values[0].native)
    return nonce, transaction
