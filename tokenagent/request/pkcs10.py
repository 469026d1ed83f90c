"""PKCS#10 certification requests (RFC 2986) with certreq's contents, from a `RequestPolicy`.

What a request holds, in order:
  subject                the INF Subject (empty Name when there is none)
  extensionRequest       KeyUsage, the [Extensions] in file order, then the defaults: Subject Key
                         Identifier, S/MIME capabilities (SMIME = TRUE), certificate template
  name-value pairs       every [RequestAttributes] line, one attribute (szOID_ENROLLMENT_NAME_VALUE_PAIR)
  CSP provider           KeySpec and ProviderName (szOID_ENROLLMENT_CSP_PROVIDER)
SuppressDefaults = TRUE leaves out KeyUsage (unless KeyUsage is written in the INF), the SKI, the
template extension and the CSP provider attribute. An extension written in [Extensions] replaces
the default with the same OID. `planned_contents` lists the same items without a key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from asn1crypto import csr, keys, x509

from tokenagent.errors import InputError, PolicyError
from tokenagent.inf.diagnostics import Diagnostic, InfError
from tokenagent.inf.policy import RequestPolicy
from tokenagent.inf.values import ValueProblem
from tokenagent.request import attributes, extensions
from tokenagent.request.algorithms import signature_algorithm
from tokenagent.request.der import der_set, tlv
from tokenagent.request.names import x509_name
from tokenagent.request.signer import Signer

SKI_PENDING = "(SHA-1 of the public key, known after generation)"


@dataclass(frozen=True)
class ContentItem:
    kind: str  # "extension" | "attribute"
    oid: str
    name: str
    critical: bool | None  # None for attributes
    text: str  # a readable summary of the value
    default: bool  # added by tokenagent's defaults, not written in the INF


@dataclass(frozen=True)
class _Planned:
    item: ContentItem
    extension: bytes | None  # the Extension's DER; None: the SKI, until the public key is known


T = TypeVar("T")


class _Parts:
    """What a request for one policy holds whatever the key: the subject, the planned extensions,
    the other attributes, each encoded once. `new` asks for them twice per request (the planned
    contents, then the request itself), and encoding them is most of a request's host work."""

    def __init__(self, policy: RequestPolicy) -> None:
        self.policy = policy  # held, so that its id() is not reused while the entry lives
        self.values: dict[str, object] = {}

    def get(self, name: str, make: Callable[[RequestPolicy], T]) -> T:
        """``make(policy)``, computed once; a failure is not kept, so each call raises it again
        in the same order of checks as before (which error a policy with several shows)."""
        try:
            return self.values[name]  # type: ignore[return-value]
        except KeyError:
            value = self.values[name] = make(self.policy)
            return value


#: The parts of the last few policies, by identity (a RequestPolicy is frozen; an equal one parsed
#: again is a new entry). A handful covers `new`'s two uses and threads running batches side by side.
_PARTS: dict[int, _Parts] = {}
_PARTS_SIZE = 8
_PARTS_LOCK = threading.Lock()


def _parts(policy: RequestPolicy) -> _Parts:
    with _PARTS_LOCK:
        parts = _PARTS.get(id(policy))
        if parts is None or parts.policy is not policy:
            while len(_PARTS) >= _PARTS_SIZE:
                del _PARTS[next(iter(_PARTS))]
            parts = _PARTS[id(policy)] = _Parts(policy)
        return parts


def _fail(policy: RequestPolicy, line: int | None, message: str) -> PolicyError:
    if line:
        return InfError(Diagnostic(policy.filename, line, "error", message))
    return PolicyError(f"{policy.filename}: {message}")


def _line(policy: RequestPolicy, field_name: str) -> int | None:
    origin = policy.origins.get(field_name)
    return origin.line if origin is not None else None


def _from_file(policy: RequestPolicy, field_name: str) -> bool:
    origin = policy.origins.get(field_name)
    return origin is not None and origin.source == "file"


# -- extensions -----------------------------------------------------------------------------------


def _plan_extensions(policy: RequestPolicy) -> tuple[_Planned, ...]:
    return _parts(policy).get("extensions", _make_extension_plan)


def _make_extension_plan(policy: RequestPolicy) -> tuple[_Planned, ...]:
    flags = policy.x500_name_flags
    given = {spec.oid for spec in policy.extensions}
    plan: list[_Planned] = []

    def add(oid: str, critical: bool, text: str, default: bool, ext: x509.Extension | None) -> None:
        item = ContentItem("extension", oid, extensions.extension_name(oid), critical, text, default)
        plan.append(_Planned(item, ext.dump() if ext is not None else None))

    key_usage_written = _from_file(policy, "key_usage")
    # RFC 5280 4.2.1.3: a KeyUsage needs at least one bit, so KeyUsage = 0 means none at all
    if (
        (not policy.suppress_defaults or key_usage_written)
        and extensions.OID_KEY_USAGE not in given
        and policy.key_usage
    ):
        try:
            ext = extensions.key_usage(policy.key_usage, policy.key_usage_critical)
        except ValueProblem as exc:
            raise _fail(policy, _line(policy, "key_usage"), str(exc)) from None
        text = extensions.key_usage_text(policy.key_usage)
        add(extensions.OID_KEY_USAGE, policy.key_usage_critical, text, not key_usage_written, ext)

    for spec in policy.extensions:
        try:
            ext = extensions.from_spec(spec, flags)
        except ValueProblem as exc:
            raise _fail(policy, spec.line, f"extension {spec.oid}: {exc}") from None
        add(spec.oid, spec.critical, extensions.describe_spec(spec), False, ext)

    if not policy.suppress_defaults and extensions.OID_SUBJECT_KEY_IDENTIFIER not in given:
        add(extensions.OID_SUBJECT_KEY_IDENTIFIER, False, SKI_PENDING, True, None)

    # SMIME = TRUE is an explicit request, kept with SuppressDefaults like a written KeyUsage
    if policy.smime and extensions.OID_SMIME_CAPABILITIES not in given:
        algorithm, length = policy.encryption_algorithm, policy.encryption_length
        try:
            ext = extensions.smime_capabilities(algorithm, length)
        except ValueProblem as exc:
            field_name = "encryption_length" if str(exc).startswith("EncryptionLength") else "encryption_algorithm"
            raise _fail(policy, _line(policy, field_name), str(exc)) from None
        add(extensions.OID_SMIME_CAPABILITIES, False, extensions.smime_text(algorithm, length), False, ext)

    template = policy.certificate_template
    if template and not policy.suppress_defaults and extensions.template_oid(template) not in given:
        try:
            ext = extensions.template_extension(template)
        except ValueProblem as exc:
            raise _fail(policy, _line(policy, "certificate_template"), str(exc)) from None
        add(extensions.template_oid(template), False, template, True, ext)
    return tuple(plan)


def request_extensions(policy: RequestPolicy, spki_der: bytes) -> list[x509.Extension]:
    """The extensions of the request (and of a self-signed certificate), in order."""
    public_key_info(spki_der)  # garbage is an InputError, not an asn1crypto ValueError
    key_id = extensions.key_identifier(spki_der)
    # new objects read from the kept DER each time: a caller may put them into its own structure
    return [
        x509.Extension.load(p.extension) if p.extension is not None else extensions.subject_key_identifier(key_id)
        for p in _plan_extensions(policy)
    ]


# -- attributes -----------------------------------------------------------------------------------


def _attribute_items(policy: RequestPolicy) -> list[ContentItem]:
    items = [
        ContentItem(
            "attribute",
            attributes.OID_ENROLLMENT_NAME_VALUE_PAIR,
            attributes.ATTRIBUTE_NAMES[attributes.OID_ENROLLMENT_NAME_VALUE_PAIR],
            None,
            f"{name}={value}",
            False,
        )
        for name, value in policy.request_attributes
    ]
    if not policy.suppress_defaults:
        items.append(
            ContentItem(
                "attribute",
                attributes.OID_ENROLLMENT_CSP_PROVIDER,
                attributes.ATTRIBUTE_NAMES[attributes.OID_ENROLLMENT_CSP_PROVIDER],
                None,
                f"KeySpec {int(policy.key_spec)} ({policy.key_spec.name}), provider {policy.provider_name}",
                True,
            )
        )
    return items


def _attributes(policy: RequestPolicy, exts: list[x509.Extension]) -> list[bytes]:
    """The DER of the request's attributes: the extensionRequest (when there are extensions), the
    name-value pairs, the CSP provider."""
    result = [attributes.extension_request_der([e.dump() for e in exts])] if exts else []
    return result + list(_parts(policy).get("attributes", _other_attributes))


def _other_attributes(policy: RequestPolicy) -> tuple[bytes, ...]:
    result = []
    try:
        if policy.request_attributes:
            result.append(attributes.name_value_pairs(policy.request_attributes).dump())
    except ValueProblem as exc:
        raise _fail(policy, _line(policy, "request_attributes"), str(exc)) from None
    if not policy.suppress_defaults:
        try:
            result.append(attributes.csp_provider(int(policy.key_spec), policy.provider_name).dump())
        except ValueProblem as exc:
            raise _fail(policy, _line(policy, "provider_name"), str(exc)) from None
    return tuple(result)


# -- the request ----------------------------------------------------------------------------------


def subject_name(policy: RequestPolicy) -> x509.Name:
    return x509.Name.load(_subject_der(policy))


def _subject_der(policy: RequestPolicy) -> bytes:
    return _parts(policy).get("subject", _encode_subject)


def _encode_subject(policy: RequestPolicy) -> bytes:
    try:
        return x509_name(policy.subject, policy.x500_name_flags).dump()
    except ValueProblem as exc:
        raise _fail(policy, _line(policy, "subject"), f"Subject: {exc}") from None


def public_key_info(spki_der: bytes) -> keys.PublicKeyInfo:
    try:
        info = keys.PublicKeyInfo.load(spki_der, strict=True)
        # parse now, so that garbage fails here and not inside a later dump()
        if not info.algorithm or not bytes(info["public_key"]):
            raise InputError("cannot read public key: the subjectPublicKey is empty")
    except (ValueError, TypeError) as exc:
        raise InputError(f"cannot read public key: {str(exc).splitlines()[0]}") from None
    return info


def request_info(
    policy: RequestPolicy, spki_der: bytes, *, extra_attributes: Sequence[csr.CRIAttribute] = ()
) -> csr.CertificationRequestInfo:
    """The CertificationRequestInfo to sign; ``extra_attributes`` (e.g. CMC's popLinkWitnessV2 or
    the renewal certificate) come after the policy's own attributes. An extensionRequest among them
    (EST csrattrs) is merged into the policy's own: a request has one, and the INF's extension wins
    over one with the same OID."""
    signature_algorithm(policy)  # refuses DSA and DH policies, which tokenagent cannot sign for
    key_info = public_key_info(spki_der)
    exts = request_extensions(policy, spki_der)
    extra_attributes = _merge_extension_requests(exts, extra_attributes)
    subject = _subject_der(policy)
    owned = _attributes(policy, exts)
    try:
        # the bytes asn1crypto's CertificationRequestInfo would encode from these parts (version
        # v1, the attributes a DER SET OF), joined directly: request/der.py `tlv` says why
        contents = [
            b"\x02\x01\x00",
            subject,
            key_info.dump(),
            der_set(owned + [a.dump() for a in extra_attributes], 0xA0),
        ]
        return csr.CertificationRequestInfo.load(tlv(0x30, b"".join(contents)))
    except (ValueError, TypeError) as exc:
        raise _fail(policy, None, f"cannot encode the request: {str(exc).splitlines()[0]}") from None


def _merge_extension_requests(
    exts: list[x509.Extension], extra_attributes: Sequence[csr.CRIAttribute]
) -> list[csr.CRIAttribute]:
    """Appends to ``exts`` the extensions of extra extensionRequest attributes whose OID it lacks;
    returns the other extra attributes."""
    others = []
    for attribute in extra_attributes:
        if attribute["type"].dotted != attributes.OID_EXTENSION_REQUEST:
            others.append(attribute)
            continue
        for value in attribute["values"]:
            for extension in value:
                if extension["extn_id"].dotted not in {e["extn_id"].dotted for e in exts}:
                    exts.append(x509.Extension.load(extension.dump()))
    return others


def sign_request(info: csr.CertificationRequestInfo, signer: Signer) -> bytes:
    signature = signer.sign(info.dump())
    request = csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": signer.algorithm.identifier(),
            "signature": signature,
        }
    )
    return request.dump()


def build_request(
    policy: RequestPolicy, spki_der: bytes, signer: Signer, *, extra_attributes: Sequence[csr.CRIAttribute] = ()
) -> bytes:
    return sign_request(request_info(policy, spki_der, extra_attributes=extra_attributes), signer)


# -- what a request will contain ------------------------------------------------------------------


def planned_contents(policy: RequestPolicy) -> list[ContentItem]:
    """The extensions, then the attributes, `request_info` will put in the request (no key needed).

    The extensionRequest attribute that carries the extensions is not listed itself; each
    [RequestAttributes] pair is one item.
    """
    signature_algorithm(policy)
    _subject_der(policy)
    _attributes(policy, [])  # the same checks the real build makes (encoded once: request_info reuses them)
    return [p.item for p in _plan_extensions(policy)] + _attribute_items(policy)


def subject_text(policy: RequestPolicy) -> str:
    return str(policy.subject) if policy.subject is not None else "(empty)"
