"""What an enrollment agent is asked to vouch for: a PKCS#10, or a PKCS7/CMC request that already
carries signatures, summarised for the confirmation screen after every signature in it is checked.

Pure: no token. `enroll/sign.py` co-signs what this accepts; `dump.py` shows requests in full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenagent.display import dn_text, escape, has_hidden
from tokenagent.errors import InputError, VerificationError
from tokenagent.request.asn1.attributes import EnrollmentNameValuePair
from tokenagent.request.cmc import control_values
from tokenagent.request.cms_verify import verify_signers
from tokenagent.request.der import LOAD_ERRORS, PARSE_ERRORS, content_type_of, reason_of
from tokenagent.request.oids import (
    OID_ENROLLMENT_NAME_VALUE_PAIR,
    OID_PKI_DATA,
    OID_REG_INFO,
    OID_SIGNED_DATA,
    OID_TEMPLATE_NAME,
)
from tokenagent.request.signed_data import encapsulated, inner_certification_request, load_pki_data

#: Names longer than this are pointed out on the confirmation screen (a CN is at most 64 by RFC 5280).
LONG_NAME = 256


@dataclass(frozen=True)
class RequestSummary:
    """What the agent is asked to vouch for, shown before signing."""

    form: str  # pkcs10 | pkcs7 | cmc
    subject: str
    sans: tuple[str, ...]
    template: str | None
    key: str  # e.g. "EC 256-bit", "RSA 2048-bit"
    signers: int  # SignerInfos already on a CMS/CMC request
    requester: str | None  # RequesterName already in a CMS/CMC request
    #: the subject's attribute values as they are: RFC 4514 text escapes some characters (NUL as
    #: \00) in its own way, and the warning below must not depend on that
    subject_values: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """The confirmation screen: every value from the request escaped (tokenagent/display.py),
        then a plain warning for each name that holds hidden characters or is unusually long."""
        lines = [f"request ({self.form}): {escape(self.subject) or '(empty subject)'}", f"  key: {self.key}"]
        lines += [f"  SAN: {escape(san)}" for san in self.sans]
        if self.template:
            lines.append(f"  template: {escape(self.template)}")
        if self.signers:
            requester = escape(self.requester) if self.requester else "(none)"
            lines.append(f"  already signed by {self.signers} signer(s); requester {requester}")
        return lines + [f"  WARNING: {warning}" for warning in self.warnings()]

    def warnings(self) -> list[str]:
        """Plain words for what the escaped lines cannot say by themselves."""
        found = []
        if has_hidden(self.subject) or any(has_hidden(value) for value in self.subject_values):
            found.append(f"the subject {_HIDDEN}")
        if len(self.subject) > LONG_NAME:
            found.append(f"the subject is {len(self.subject):,} characters long")
        others = [("a SAN", san) for san in self.sans]
        others += [("the template", self.template or ""), ("the requester", self.requester or "")]
        for what, text in others:
            if has_hidden(text):
                found.append(f"{what} {_HIDDEN}")
            if len(text) > LONG_NAME:
                found.append(f"{what} is {len(text):,} characters long")
        return found


_HIDDEN = (
    "holds control or invisible characters (shown as \\x.. / \\u.... escapes above); the request holds them as they are"
)


def inspect_request(der: bytes, what: str, template: str | None = None) -> tuple[RequestSummary, str | None]:
    """The summary to confirm, and the CMS form ("pkcs7"/"cmc") when `der` is already signed.

    Checks the inner PKCS#10's signature and, for CMS/CMC input, every existing SignerInfo whose
    signer can be found (a digest mismatch or a bad signature is refused)."""

    form: str | None = None
    requester: str | None = None
    signers = 0
    inner = der
    if content_type_of(der) == OID_SIGNED_DATA:
        content_type, _ = encapsulated(der, what)
        form = "cmc" if content_type == OID_PKI_DATA else "pkcs7"
        inner = inner_certification_request(der, what)
        checks = verify_signers(der, what=what)
        if form == "pkcs7" and not checks:
            # the first SignerInfo carries RequesterName (docs/wire-formats.md 1a): appending one to an
            # empty SignerInfos would drop --requester without a word
            raise InputError(f"{what}: a PKCS7 request without any SignerInfo; give the PKCS#10 inside it to sign")
        for check in checks:
            if not check.digest_ok or check.signature_ok is False:
                raise VerificationError(
                    f"{what}: signature {check.index + 1} ({check.sid}) does not verify: {check.reason}"
                )
        signers = len(checks)
        requester = _existing_requester(der, form, what)
    csr = _load_csr(inner, what)
    if not _proof_of_possession(csr, what):
        raise VerificationError(
            f"{what}: the request's own signature (the user's proof of possession) does not verify; not signing"
        )
    summary = RequestSummary(
        form=form or "pkcs10",
        subject=dn_text(csr.subject),
        subject_values=tuple(str(attribute.value) for attribute in csr.subject),
        sans=_sans(csr),
        template=template or _template(csr),
        key=_key_text(csr),
        signers=signers,
        requester=requester,
    )
    return summary, form


def _load_csr(der: bytes, what: str) -> Any:
    from cryptography import x509

    try:
        return x509.load_der_x509_csr(der)
    except LOAD_ERRORS as exc:
        reason = reason_of(exc)
    try:
        x509.load_der_x509_certificate(der)
    except LOAD_ERRORS:
        raise InputError(f"{what}: not a PKCS#10 request nor a CMS/CMC request ({reason})") from None
    raise InputError(f"{what} is an X.509 certificate, not a request to sign")


def _proof_of_possession(csr: Any, what: str) -> bool:
    """Whether the request's self-signature verifies. cryptography loads the public key only here:
    a damaged key is an `InputError`, one of a type or curve it does not know a `VerificationError`
    (the signature cannot be checked, so the agent does not vouch for it)."""
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        return bool(csr.is_signature_valid)
    except UnsupportedAlgorithm as exc:
        raise VerificationError(
            f"{what}: the request's own signature cannot be checked ({reason_of(exc)}); not signing"
        ) from None
    except ValueError as exc:
        raise InputError(f"{what}: the request's public key cannot be read ({reason_of(exc)})") from None


def _sans(csr: Any) -> tuple[str, ...]:
    from cryptography import x509

    try:
        names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return ()
    shown = []
    for name in names:
        if isinstance(name, x509.OtherName):
            shown.append(f"otherName {name.type_id.dotted_string}: {name.value.hex()}")
        else:
            shown.append(f"{type(name).__name__}: {name.value}")
    return tuple(shown)


def _template(csr: Any) -> str | None:
    """The template the request names: the template-name extension, else a CertificateTemplate pair."""
    from asn1crypto import core

    for extension in _extensions(csr):
        if extension.oid.dotted_string == OID_TEMPLATE_NAME:
            try:
                return str(core.BMPString.load(extension.value.value).native)
            except (ValueError, TypeError):
                return None
    for attribute in csr.attributes:
        if attribute.oid.dotted_string != OID_ENROLLMENT_NAME_VALUE_PAIR:
            continue
        try:
            pair = EnrollmentNameValuePair.load(attribute.value)
        except (ValueError, TypeError):
            continue
        if str(pair["name"].native).lower() == "certificatetemplate":
            return str(pair["value"].native)
    return None


def _extensions(csr: Any) -> list[Any]:
    try:
        return list(csr.extensions)
    except ValueError:
        return []


def _key_text(csr: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__


def _existing_requester(der: bytes, form: str, what: str) -> str | None:
    """RequesterName of the first SignerInfo (PKCS7) or of the regInfo control (CMC)."""
    if form == "pkcs7":
        return _signer_requester(der, what)
    # the raw eContent: asn1crypto's .native would also decode the inner PKCS#10, whose Microsoft
    # name-value attributes it cannot read
    _, content = encapsulated(der, what)
    for control in load_pki_data(content, what)["control_sequence"]:
        if control["attr_type"].dotted != OID_REG_INFO:
            continue
        try:
            values = [bytes(value.native) for value in control_values(control)]
        except PARSE_ERRORS as exc:
            raise InputError(f"cannot read {what}: a damaged regInfo control ({reason_of(exc)})") from None
        for value in values:
            found = _reg_info_requester(value.decode("utf-8", "replace"))
            if found is not None:
                return found
    return None


def _signer_requester(der: bytes, what: str) -> str | None:
    """RequesterName among the first SignerInfo's signed attributes (wire format of a PKCS7 EOBO)."""
    from asn1crypto import cms

    first = cms.ContentInfo.load(der)["content"]["signer_infos"][0]  # inspect_request refuses none
    try:
        for attribute in first["signed_attrs"] or []:
            if attribute["type"].dotted != OID_ENROLLMENT_NAME_VALUE_PAIR:
                continue
            for value in attribute["values"]:
                pair = EnrollmentNameValuePair.load(value.dump(), strict=True)
                if str(pair["name"].native).lower() == "requestername":
                    return str(pair["value"].native)
    except PARSE_ERRORS as exc:
        # a signature that verifies says nothing about the form of what it covers (and a
        # signer without a certificate is not checked at all)
        raise InputError(
            f"cannot read {what}: a damaged name-value pair in the first signer's attributes ({reason_of(exc)})"
        ) from None
    return None


def _reg_info_requester(text: str) -> str | None:
    """RequesterName in AD CS's regInfo text, name=value pairs joined by '&' and percent-encoded."""
    from urllib.parse import unquote

    for pair in text.split("&"):
        name, _, rest = pair.partition("=")
        if unquote(name).lower() == "requestername":
            return unquote(rest)
    return None
