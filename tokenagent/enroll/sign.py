"""The `sign` use case: an enrollment agent co-signs a request on behalf of a user (EOBO).

The agent's key and its Certificate Request Agent certificate live on the agent's own token. One
`Agent` holds one logged-in session on that token, so a batch of requests costs one login, one key
look-up and one certificate check; each `co_sign` then costs one C_Sign.

Before signing, the inner PKCS#10's own signature (the user's proof of possession) must verify,
and so must every signature already on a CMS/CMC request: the agent vouches for what it signs.
Wire formats: ../shared/reference/wire-formats.md section 1 (and section 3 for CMC).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tokenagent.display import escape, has_hidden
from tokenagent.enroll.linkage import certificate_spki, display_name, load_certificate
from tokenagent.enroll.signer import TokenSigner
from tokenagent.errors import (
    AmbiguousTokenError,
    CapacityError,
    InputError,
    KeyMismatchError,
    ObjectNotFoundError,
    UsageError,
    VerificationError,
)
from tokenagent.inputs import read_input
from tokenagent.providers.plan import sign_mechanisms
from tokenagent.request import cms as cms_room
from tokenagent.request.algorithms import SignatureAlgorithm
from tokenagent.request.armor import read_der
from tokenagent.request.attributes import requester_name_problem
from tokenagent.request.cmc import OID_PKI_DATA, CmcControls, pki_data
from tokenagent.request.response import read_response
from tokenagent.token.certs import certificate_objects, key_id_of
from tokenagent.token.keys import mechanism_names
from tokenagent.token.library import TokenHandle, TokenSelector, modules_for, select_token
from tokenagent.token.objects import find_private_keys, public_key_info
from tokenagent.token.pins import PinSource
from tokenagent.token.session import TokenSession, open_session
from tokenagent.token.uri import is_pkcs11_uri, parse_uri

log = logging.getLogger("tokenagent")
Warn = Callable[[str], None]

OID_DATA = "1.2.840.113549.1.7.1"
OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
#: szOID_ENROLLMENT_AGENT, the Certificate Request Agent EKU AD CS requires of the agent certificate.
OID_CERTIFICATE_REQUEST_AGENT = "1.3.6.1.4.1.311.20.2.1"
FORMATS = ("pkcs7", "cmc")
#: Names longer than this are pointed out on the confirmation screen (a CN is at most 64 by RFC 5280).
LONG_NAME = 256


@dataclass(frozen=True)
class AgentOptions:
    """Where the agent's key and certificate are, and how to sign with them."""

    key: str  # pkcs11: URI of the agent's private key, or its CKA_LABEL (then `token` selects the token)
    token: str | None = None
    certificate: str | None = None  # a file or a pkcs11: URI; default: on the agent token, by CKA_ID
    modules: Sequence[str] = ()
    pin_source: PinSource | None = None
    force: bool = False
    hash: str = "sha256"
    pss: bool = False  # RSA agent keys: RSASSA-PSS instead of PKCS#1 v1.5
    strict: bool = False  # refuse (not just warn) an agent certificate without the EKU, or expired


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


@dataclass
class CoSignResult:
    der: bytes
    form: str  # pkcs7 | cmc
    appended: bool  # True: one more SignerInfo on an existing CMS/CMC request
    signers: int  # SignerInfos in the result
    summary: RequestSummary
    requester: str | None
    warnings: list[str] = field(default_factory=list)


@dataclass
class Agent:
    """An agent key with its certificate, logged in once; `co_sign` signs one request."""

    session: TokenSession
    key: Any
    key_id: bytes
    certificate: bytes
    signer: TokenSigner
    warnings: list[str] = field(default_factory=list)

    @property
    def subject(self) -> str:
        return load_certificate(self.certificate, "agent certificate").subject.rfc4514_string()

    def spec(self, extra_signed_attributes: Sequence[Any] = ()) -> cms_room.SignerSpec:
        return cms_room.SignerSpec(
            self.signer, certificate=self.certificate, extra_signed_attributes=tuple(extra_signed_attributes)
        )

    def co_sign(
        self,
        request: bytes | str,
        *,
        requester: str | None,
        format: str = "pkcs7",
        template: str | None = None,
        controls: CmcControls | None = None,
        what: str = "request",
        confirm: Callable[[RequestSummary], bool] | None = None,
        yes: bool = False,
    ) -> CoSignResult:
        """Wrap a PKCS#10 in a PKCS7 or CMC request signed by the agent, or add the agent's
        signature to a CMS/CMC request. Raises before signing if any signature fails to verify."""
        if format not in FORMATS:
            raise UsageError(f"--format is pkcs7 or cmc, not {format}")
        if requester is not None:
            problem = requester_name_problem(requester)
            if problem is not None:
                raise UsageError(f"--requester {escape(requester)}: {problem}; nothing was signed")
        der = read_der(request, what)
        summary, existing = inspect_request(der, what, template)
        if not yes:
            if confirm is None:
                raise UsageError("signing on behalf of a user needs a confirmation: give --yes (no terminal to ask)")
            if not confirm(summary):
                raise UsageError("not confirmed: nothing was signed")
        if existing is not None:
            return self._append(der, summary, existing, requester, what)
        if requester is None:
            raise UsageError("--requester DOMAIN\\user is needed to sign a PKCS#10 on behalf of its user")
        if format == "pkcs7":
            pairs = [("RequesterName", requester)] + ([("CertificateTemplate", template)] if template else [])
            signed = cms_room.sign_content(
                OID_DATA, der, [self.spec([name_value_attribute(pairs)])], [self.certificate]
            )
        else:
            base = controls or CmcControls()
            reg_info = base.reg_info + ((("CertificateTemplate", template),) if template else ())
            merged = CmcControls(**{**base.__dict__, "requester_name": requester, "reg_info": reg_info})
            content = pki_data(der, merged).dump()
            signed = cms_room.sign_content(OID_PKI_DATA, content, [self.spec()], [self.certificate])
        return CoSignResult(signed, format, False, 1, summary, requester, list(self.warnings))

    def _append(self, der: bytes, summary: RequestSummary, form: str, requester: str | None, what: str) -> CoSignResult:
        if requester is not None and summary.requester is not None and requester != summary.requester:
            raise UsageError(
                f"{what} already names requester {summary.requester}; the first signature fixes it "
                f"(--requester {requester} differs)"
            )
        signed = cms_room.append_signer(der, self.spec(), [self.certificate])
        return CoSignResult(signed, form, True, summary.signers + 1, summary, summary.requester, list(self.warnings))

    def close(self) -> None:
        self.session.close()


@contextmanager
def open_agent(options: AgentOptions, *, on_warning: Warn | None = None) -> Iterator[Agent]:
    """Log in to the agent's token once, find the key and its certificate, check them."""
    warn = on_warning or (lambda message: log.warning("%s", message))
    handle, label, key_id = _agent_token(options)
    session = open_session(handle, login=True, pin_source=options.pin_source, force=options.force, on_warning=warn)
    try:
        key = _agent_key(session, label, key_id)
        spki = public_key_info(key, session.session)
        if spki is None:
            raise ObjectNotFoundError(f"token '{handle.label}': cannot read the public key of the agent key")
        certificate = _agent_certificate(session, options, key, spki)
        warnings = check_agent_certificate(certificate, spki, strict=options.strict)
        for message in warnings:
            warn(message)
        signer = token_signer(session, key, spki, hash_name=options.hash, pss=options.pss)
        yield Agent(session, key, key_id_of(key), certificate, signer, warnings)
    finally:
        session.close()


def check_agent_certificate(certificate: bytes, spki: bytes, *, strict: bool) -> list[str]:
    """A certificate for another key is always refused; no agent EKU or expiry warn (refused with strict)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    if certificate_spki(certificate, "agent certificate") != spki:
        raise KeyMismatchError(
            f"the agent certificate ({display_name(certificate)}) is for another key than the agent key; "
            "nothing was signed"
        )
    cert = load_certificate(certificate, "agent certificate")
    problems = []
    try:
        usages = cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
        if x509.ObjectIdentifier(OID_CERTIFICATE_REQUEST_AGENT) not in usages:
            problems.append(f"lacks EKU {OID_CERTIFICATE_REQUEST_AGENT} (Certificate Request Agent)")
    except x509.ExtensionNotFound:
        problems.append(f"has no EKU extension, so not {OID_CERTIFICATE_REQUEST_AGENT} (Certificate Request Agent)")
    now = datetime.now(UTC)
    if now > cert.not_valid_after_utc:
        problems.append(f"expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    elif now < cert.not_valid_before_utc:
        problems.append(f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
    messages = [f"the agent certificate ({display_name(certificate)}) {problem}" for problem in problems]
    if strict and messages:
        raise VerificationError(f"{messages[0]}; --strict refuses to sign; nothing was signed")
    return [f"{message}; a CA will likely refuse the request" for message in messages]


def inspect_request(der: bytes, what: str, template: str | None = None) -> tuple[RequestSummary, str | None]:
    """The summary to confirm, and the CMS form ("pkcs7"/"cmc") when `der` is already signed.

    Checks the inner PKCS#10's signature and, for CMS/CMC input, every existing SignerInfo whose
    signer can be found (a digest mismatch or a bad signature is refused)."""

    form: str | None = None
    requester: str | None = None
    signers = 0
    inner = der
    if _is_content_info(der):
        content_type, _ = cms_room.encapsulated(der, what)
        form = "cmc" if content_type == OID_PKI_DATA else "pkcs7"
        inner = cms_room.inner_certification_request(der, what)
        checks = cms_room.verify_signers(der, what=what)
        if form == "pkcs7" and not checks:
            # the first SignerInfo carries RequesterName (wire-formats.md 1a): appending one to an
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
        subject=csr.subject.rfc4514_string(),
        subject_values=tuple(str(attribute.value) for attribute in csr.subject),
        sans=_sans(csr),
        template=template or _template(csr),
        key=_key_text(csr),
        signers=signers,
        requester=requester,
    )
    return summary, form


def name_value_attribute(pairs: Sequence[tuple[str, str]]) -> Any:
    """szOID_ENROLLMENT_NAME_VALUE_PAIR with one SEQUENCE { BMPString, BMPString } per pair, as a
    signed attribute (RequesterName first, then e.g. CertificateTemplate)."""
    from asn1crypto import cms, core

    from tokenagent.request.attributes import OID_ENROLLMENT_NAME_VALUE_PAIR, EnrollmentNameValuePair

    first = cms_room.requester_name_attribute(pairs[0][1])  # checks the name can be a BMPString
    values = list(first["values"])
    for name, value in pairs[1:]:
        pair = EnrollmentNameValuePair({"name": core.BMPString(name), "value": core.BMPString(value)})
        values.append(core.Any(pair))
    return cms.CMSAttribute({"type": OID_ENROLLMENT_NAME_VALUE_PAIR, "values": values})


def _is_content_info(der: bytes) -> bool:
    """A CMS ContentInfo(signedData), as opposed to a bare PKCS#10 (both are DER SEQUENCEs)."""
    from asn1crypto import cms

    try:
        return bool(cms.ContentInfo.load(der)["content_type"].dotted == OID_SIGNED_DATA)
    except (ValueError, TypeError, KeyError):
        return False


def _load_csr(der: bytes, what: str) -> Any:
    from cryptography import x509

    try:
        return x509.load_der_x509_csr(der)
    except cms_room.LOAD_ERRORS as exc:
        reason = cms_room.reason_of(exc)
    try:
        x509.load_der_x509_certificate(der)
    except cms_room.LOAD_ERRORS:
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
            f"{what}: the request's own signature cannot be checked ({cms_room.reason_of(exc)}); not signing"
        ) from None
    except ValueError as exc:
        raise InputError(f"{what}: the request's public key cannot be read ({cms_room.reason_of(exc)})") from None


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

    from tokenagent.request.attributes import OID_ENROLLMENT_NAME_VALUE_PAIR, EnrollmentNameValuePair
    from tokenagent.request.extensions import OID_TEMPLATE_NAME

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
    from urllib.parse import unquote

    from asn1crypto import cms

    from tokenagent.request.attributes import OID_ENROLLMENT_NAME_VALUE_PAIR, EnrollmentNameValuePair
    from tokenagent.request.cmc import OID_REG_INFO, control_values

    signed = cms.ContentInfo.load(der)["content"]
    if form == "pkcs7":
        first = signed["signer_infos"][0]  # inspect_request refuses a PKCS7 without SignerInfos
        try:
            for attribute in first["signed_attrs"] or []:
                if attribute["type"].dotted != OID_ENROLLMENT_NAME_VALUE_PAIR:
                    continue
                for value in attribute["values"]:
                    pair = EnrollmentNameValuePair.load(value.dump(), strict=True)
                    if str(pair["name"].native).lower() == "requestername":
                        return str(pair["value"].native)
        except cms_room.PARSE_ERRORS as exc:
            # a signature that verifies says nothing about the form of what it covers (and a
            # signer without a certificate is not checked at all)
            raise InputError(
                f"cannot read {what}: a damaged name-value pair in the first signer's attributes "
                f"({cms_room.reason_of(exc)})"
            ) from None
        return None
    # the raw eContent: asn1crypto's .native would also decode the inner PKCS#10, whose Microsoft
    # name-value attributes it cannot read
    _, content = cms_room.encapsulated(der, what)
    data = cms_room.load_pki_data(content, what)
    for control in data["control_sequence"]:
        if control["attr_type"].dotted != OID_REG_INFO:
            continue
        try:
            values = [bytes(value.native) for value in control_values(control)]
        except cms_room.PARSE_ERRORS as exc:
            raise InputError(f"cannot read {what}: a damaged regInfo control ({cms_room.reason_of(exc)})") from None
        for value in values:
            text = value.decode("utf-8", "replace")
            for pair in text.split("&"):
                name, _, rest = pair.partition("=")
                if unquote(name).lower() == "requestername":
                    return unquote(rest)
    return None


def _agent_token(options: AgentOptions) -> tuple[TokenHandle, str | None, bytes | None]:
    token, label, key_id = options.token, options.key, None
    if is_pkcs11_uri(options.key):
        uri = parse_uri(options.key)
        if uri.type not in (None, "private"):
            raise UsageError(f"--agent names a {uri.type} object; give the agent's private key (type=private)")
        if uri.object is None and uri.object_id is None:
            raise UsageError("--agent URI needs the key's object= or id=")
        label, key_id = uri.object, uri.object_id
        if token is None and uri.token_part().path:
            token = str(uri.token_part())
    selector = TokenSelector.parse(token)
    return select_token(selector, modules_for(options.modules, selector)), label, key_id


def _agent_key(session: TokenSession, label: str | None, key_id: bytes | None) -> Any:
    keys = find_private_keys(session.session, label=label, object_id=key_id)
    name = f"token '{session.handle.label}'"
    wanted = " ".join(
        part for part in (f"label '{label}'" if label else "", f"id {key_id.hex()}" if key_id else "") if part
    )
    if not keys:
        raise ObjectNotFoundError(f"{name}: no private key with {wanted} (the agent key)")
    if len(keys) > 1:
        raise AmbiguousTokenError(f"{name}: {len(keys)} private keys match {wanted}; give the key's id in the URI")
    return keys[0]


def _agent_certificate(session: TokenSession, options: AgentOptions, key: Any, spki: bytes) -> bytes:
    given = options.certificate
    if given is not None and is_pkcs11_uri(given):
        uri = parse_uri(given)
        found = [
            c
            for c in certificate_objects(session.session)
            if (uri.object_id is None or c.key_id == uri.object_id) and (uri.object is None or c.label == uri.object)
        ]
        if len(found) != 1:
            raise ObjectNotFoundError(f"{len(found)} certificates on token '{session.handle.label}' match {given}")
        return found[0].der
    if given is not None:
        leaves = read_response(read_input(given), given).end_entities()
        if len(leaves) != 1:
            raise InputError(f"{given} holds {len(leaves)} end-entity certificates; give the agent's certificate")
        return leaves[0]
    key_id = key_id_of(key)
    candidates = [c for c in certificate_objects(session.session) if c.spki == spki]
    linked = [c for c in candidates if c.key_id == key_id] or candidates
    if not linked:
        raise ObjectNotFoundError(
            f"token '{session.handle.label}' holds no certificate for the agent key; give --agent-cert FILE"
        )
    return linked[0].der


def token_signer(
    session: TokenSession, key: Any, spki: bytes, *, hash_name: str = "sha256", pss: bool = False
) -> TokenSigner:
    """A signer for a key on the token whose algorithm follows the key (RSA: PKCS#1 v1.5 or, with
    ``pss``, PSS; EC: ECDSA) and whose mechanism is one the token offers."""
    from asn1crypto import keys

    algorithm_name = keys.PublicKeyInfo.load(spki).algorithm
    if algorithm_name == "rsa":
        algorithm = SignatureAlgorithm(hash_name, "pss" if pss else "pkcs1v15")
    elif algorithm_name == "ec":
        if pss:
            raise UsageError("--pss is for RSA agent keys; this agent key is EC")
        algorithm = SignatureAlgorithm(hash_name, "ecdsa")
    else:
        raise CapacityError(f"the agent key is {algorithm_name}; tokenagent signs with RSA or EC keys")
    available = mechanism_names(session)
    for how in sign_mechanisms(algorithm.padding, algorithm.hash):
        if how.mechanism in available:
            return TokenSigner(session, key, how, algorithm)
    raise CapacityError(
        f"token '{session.handle.label}' offers none of "
        + ", ".join(m.mechanism for m in sign_mechanisms(algorithm.padding, algorithm.hash))
    )
