"""The enrollment agent: its key and Certificate Request Agent certificate on its own token.

One `Agent` holds one logged-in session on that token, so a batch of requests costs one login, one
key look-up and one certificate check; each co-signature (enroll/sign.py) then costs one C_Sign.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tokenagent.display import dn_text
from tokenagent.enroll.linkage import certificate_spki, display_name, load_certificate
from tokenagent.enroll.signer import TokenSigner, token_signer
from tokenagent.errors import (
    AmbiguousObjectError,
    InputError,
    KeyMismatchError,
    ObjectNotFoundError,
    UsageError,
    VerificationError,
)
from tokenagent.inputs import read_input
from tokenagent.request.cms_sign import SignerSpec
from tokenagent.request.oids import OID_CERTIFICATE_REQUEST_AGENT
from tokenagent.request.response import read_response
from tokenagent.token.certs import certificate_objects, key_id_of
from tokenagent.token.library import TokenHandle, TokenSelector, modules_for, select_token
from tokenagent.token.objects import find_private_keys, public_key_info
from tokenagent.token.session import TokenSession, open_session
from tokenagent.token.target import ANY_TOKEN, TokenTarget
from tokenagent.token.uri import is_pkcs11_uri, parse_uri

log = logging.getLogger("tokenagent")
Warn = Callable[[str], None]


@dataclass(frozen=True)
class AgentOptions:
    """Where the agent's key and certificate are, and how to sign with them."""

    key: str  # pkcs11: URI of the agent's private key, or its CKA_LABEL (then `target` selects the token)
    target: TokenTarget = ANY_TOKEN  # the agent's token: selector (or the key URI's), module, PIN
    certificate: str | None = None  # a file or a pkcs11: URI; default: on the agent token, by CKA_ID
    hash: str = "sha256"
    pss: bool = False  # RSA agent keys: RSASSA-PSS instead of PKCS#1 v1.5
    strict: bool = False  # refuse (not just warn) an agent certificate without the EKU, or expired


@dataclass(frozen=True)
class Agent:
    """An agent key with its certificate, logged in once; `co_sign` signs one request."""

    session: TokenSession
    key: Any
    key_id: bytes
    certificate: bytes
    signer: TokenSigner
    warnings: tuple[str, ...] = ()

    @property
    def subject(self) -> str:
        return dn_text(load_certificate(self.certificate, "agent certificate").subject)

    def spec(self, extra_signed_attributes: Sequence[Any] = ()) -> SignerSpec:
        return SignerSpec(
            self.signer, certificate=self.certificate, extra_signed_attributes=tuple(extra_signed_attributes)
        )

    def close(self) -> None:
        self.session.close()


@contextmanager
def open_agent(options: AgentOptions, *, on_warning: Warn | None = None) -> Iterator[Agent]:
    """Log in to the agent's token once, find the key and its certificate, check them."""
    warn = on_warning or (lambda message: log.warning("%s", message))
    handle, label, key_id = _agent_token(options)
    target = options.target
    session = open_session(handle, login=True, pin_source=target.pin_source, force=target.force, on_warning=warn)
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
        yield Agent(session, key, key_id_of(key), certificate, signer, tuple(warnings))
    finally:
        session.close()


def check_agent_certificate(certificate: bytes, spki: bytes, *, strict: bool) -> list[str]:
    """A certificate for another key is always refused; no agent EKU or expiry warn (refused with strict)."""
    from cryptography import x509

    if certificate_spki(certificate, "agent certificate") != spki:
        raise KeyMismatchError(
            f"the agent certificate ({display_name(certificate)}) is for another key than the agent key; "
            "nothing was signed"
        )
    cert = load_certificate(certificate, "agent certificate")
    problems = []
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
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


def _agent_token(options: AgentOptions) -> tuple[TokenHandle, str | None, bytes | None]:
    token: str | None = options.target.selector
    label: str | None = options.key
    key_id: bytes | None = None
    modules = list(options.target.modules)
    if is_pkcs11_uri(options.key):
        uri = parse_uri(options.key)
        if uri.type not in (None, "private"):
            raise UsageError(f"--agent names a {uri.type} object; give the agent's private key (type=private)")
        if uri.object is None and uri.object_id is None:
            raise UsageError("--agent URI needs the key's object= or id=")
        label, key_id = uri.object, uri.object_id
        if token is None and uri.token_part().path:
            token = str(uri.token_part())
        if not modules:  # RFC 7512: the key's URI may name its module (module-path=, module-name=)
            modules = [spec for spec in (uri.module_path, uri.module_name) if spec][:1]
    selector = TokenSelector.parse(token)
    return select_token(selector, modules_for(modules, selector), piv_first=True), label, key_id


def _agent_key(session: TokenSession, label: str | None, key_id: bytes | None) -> Any:
    keys = find_private_keys(session.session, label=label, object_id=key_id)
    name = f"token '{session.handle.label}'"
    wanted = " ".join(
        part for part in (f"label '{label}'" if label else "", f"id {key_id.hex()}" if key_id else "") if part
    )
    if not keys:
        raise ObjectNotFoundError(f"{name}: no private key with {wanted} (the agent key)")
    if len(keys) > 1:
        raise AmbiguousObjectError(f"{name}: {len(keys)} private keys match {wanted}; give the key's id in the URI")
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
    # the certificate next to the key (same CKA_ID) first; every certificate only when that fails
    candidates = [c for c in certificate_objects(session.session, key_id=key_id) if c.spki == spki] if key_id else []
    if not candidates:
        candidates = [c for c in certificate_objects(session.session) if c.spki == spki]
    linked = [c for c in candidates if c.key_id == key_id] or candidates
    if not linked:
        raise ObjectNotFoundError(
            f"token '{session.handle.label}' holds no certificate for the agent key; give --agent-cert FILE"
        )
    return linked[0].der
