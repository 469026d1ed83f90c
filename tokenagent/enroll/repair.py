"""The `repair` use case (certutil -repairstore): relink a certificate on a token with its key.

A certificate whose CKA_ID differs from its private key's is invisible as a pair to OpenSSL, NSS,
OpenSC's minidriver and sssd. Repair finds the private key by public key (never by CKA_ID, which
is what is broken), then makes every object of the pair agree:

- a private key without CKA_ID gets the SHA-1 convention (tokenagent's, NSS's, OpenSC's);
- public key objects of the same key get the private key's CKA_ID;
- every copy of the certificate gets the private key's CKA_ID, and the key's label if it has none.

The key's own CKA_ID wins over the certificate's because applications may already refer to the key
by it. Before anything changes, the key signs a random challenge that the certificate must verify.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tokenagent.enroll.linkage import (
    NOT_RUN,
    KeyTest,
    LinkedPair,
    certificate_spki,
    certificate_summary,
    display_name,
    key_test,
    load_certificate,
    usage_warnings,
    validity_warnings,
)
from tokenagent.errors import (
    AmbiguousObjectError,
    AmbiguousTokenError,
    InputError,
    Interrupted,
    ObjectNotFoundError,
    TokenAgentError,
    UsageError,
)
from tokenagent.inputs import read_input
from tokenagent.request.response import read_response
from tokenagent.token.certs import (
    CertificateObject,
    certificate_objects,
    find_public_keys_for,
    key_capabilities,
    key_id_of,
    label_of,
    update_attributes,
)
from tokenagent.token.holders import find_holders
from tokenagent.token.library import TokenHandle
from tokenagent.token.objects import find_private_key_for, key_id_for
from tokenagent.token.session import TokenSession, open_session
from tokenagent.token.target import ANY_TOKEN, TokenTarget
from tokenagent.token.uri import Pkcs11Uri, is_pkcs11_uri, parse_uri

log = logging.getLogger("tokenagent")
Warn = Callable[[str], None]
_THUMBPRINT = re.compile(r"[0-9a-fA-F]{40}")


@dataclass(frozen=True)
class RepairOptions:
    certificate: str  # a file, a SHA-1 thumbprint (certutil's spaces allowed) or a pkcs11: URI of a certificate
    target: TokenTarget = ANY_TOKEN  # the token (else the URI's, else every token), module, PIN
    dry_run: bool = False
    run_key_test: bool = True


@dataclass(frozen=True)
class Change:
    object: str  # certificate | private-key | public-key
    attribute: str  # CKA_ID | CKA_LABEL
    old: str
    new: str

    def describe(self) -> str:
        return f"{self.object} {self.attribute}: {self.old or '(empty)'} -> {self.new}"

    def to_json(self) -> dict[str, str]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RepairPlan:
    """What repair found and would change: a dry run ends here."""

    certificate: bytes
    pair: LinkedPair  # the private key's CKA_ID, as every object of the pair will carry it
    copies: int  # certificate objects with this value on the token
    changes: tuple[Change, ...]
    key_test: KeyTest
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class RepairOutcome:
    applied: bool  # False: nothing needed repairing


@dataclass(frozen=True)
class RepairResult:
    plan: RepairPlan
    outcome: RepairOutcome | None  # None: a dry run

    def to_json(self) -> dict[str, Any]:
        plan, pair = self.plan, self.plan.pair
        return {
            "format_version": 1,
            "certificate": certificate_summary(plan.certificate, "certificate"),
            "token": pair.token_json(),
            "key": {"id": pair.key_id.hex(), "label": pair.key_label, "uri": pair.key_uri},
            "certificate_object": {"label": pair.certificate_label, "uri": pair.certificate_uri, "copies": plan.copies},
            "changes": [change.to_json() for change in plan.changes],
            "applied": self.outcome is not None and self.outcome.applied,
            "dry_run": self.outcome is None,
            "key_test": plan.key_test.to_json(),
            "warnings": list(plan.warnings),
        }


@dataclass(frozen=True)
class _Wanted:
    """Which certificate the user means: by value, by thumbprint, or by a URI's id/label."""

    what: str
    der: bytes | None = None
    thumbprint: bytes | None = None
    uri: Pkcs11Uri | None = None

    def select(self, certs: list[CertificateObject]) -> list[CertificateObject]:
        if self.der is not None:
            return [c for c in certs if c.der == self.der]
        if self.thumbprint is not None:
            return [c for c in certs if c.thumbprint == self.thumbprint]
        assert self.uri is not None
        return [
            c
            for c in certs
            if (self.uri.object_id is None or c.key_id == self.uri.object_id)
            and (self.uri.object is None or c.label == self.uri.object)
        ]


def repair_certificate(options: RepairOptions, *, on_warning: Warn | None = None) -> RepairResult:
    """certutil -repairstore for tokens. Raises a `TokenAgentError` with the token unchanged."""
    from datetime import UTC, datetime

    warn = on_warning or (lambda message: log.warning("%s", message))
    wanted, token = _wanted(options)
    target = replace(options.target, selector=token)
    handle = _holder(wanted, target)
    with open_session(
        handle, login=True, pin_source=target.pin_source, rw=not options.dry_run, force=target.force, on_warning=warn
    ) as ts:
        on_token = certificate_objects(ts.session)
        copies = wanted.select(on_token)
        if not copies:
            raise ObjectNotFoundError(f"{wanted.what} is not on token '{handle.label}'")
        ders = {c.der for c in copies}
        if len(ders) > 1:
            raise AmbiguousObjectError(
                f"{wanted.what} names {len(ders)} different certificates on token '{handle.label}'; "
                "give the SHA-1 thumbprint"
            )
        der = copies[0].der
        certificate = load_certificate(der, wanted.what)
        spki = certificate_spki(der, wanted.what)
        copies = [c for c in on_token if c.der == der]  # every copy, whatever its ID
        private = find_private_key_for(ts.session, spki)
        if private is None:
            raise ObjectNotFoundError(
                f"no private key on token '{handle.label}' matches the certificate {hashlib.sha1(der).hexdigest()} "
                f"({display_name(der)}): it cannot be repaired; request a new certificate"
            )
        key_label = label_of(private)
        key_id = key_id_of(private)
        capabilities = key_capabilities(private)
        target_id = key_id or key_id_for(spki)
        certificate_label = copies[0].label or key_label or display_name(der)
        warnings = validity_warnings(certificate, datetime.now(UTC)) + usage_warnings(
            certificate, capabilities, key_label
        )
        if len(copies) > 1:
            warnings.append(f"the certificate is on the token {len(copies)} times; each copy is relinked, none deleted")
        for message in warnings:
            warn(message)
        if handle.is_piv:
            _check_piv_slot(handle, key_id, copies, der)
            changes: list[
                tuple[Any, Change, dict[str, Any]]
            ] = []  # the slot is the link; ykcs11 cannot change a CKA_ID or a label anyway
        else:
            changes = _plan(ts, private, key_id, target_id, certificate_label, spki, copies)
        tested = key_test(ts, private, spki, capabilities) if options.run_key_test else NOT_RUN
        plan = RepairPlan(
            der,
            LinkedPair(handle, target_id, key_label, certificate_label),
            len(copies),
            tuple(change for _, change, _ in changes),
            tested,
            tuple(warnings),
        )
        if options.dry_run:
            return RepairResult(plan, None)
        if changes:
            _apply(ts, changes)
    return RepairResult(plan, RepairOutcome(applied=bool(changes)))


def _check_piv_slot(handle: TokenHandle, key_id: bytes, copies: list[CertificateObject], der: bytes) -> None:
    """On a PIV card (ykcs11) a certificate belongs to the key of the slot it is in: nothing to relink
    when it is in its key's slot; in another slot, only writing it into the key's slot helps."""
    from tokenagent.providers.piv import slot_for_id

    misplaced = [c for c in copies if c.key_id != key_id]
    if not misplaced:
        return
    key_slot, cert_slot = slot_for_id(key_id), slot_for_id(misplaced[0].key_id)
    raise UsageError(
        f"token '{handle.label}' is a PIV card, where the slot links a key and its certificate: the certificate "
        f"{hashlib.sha1(der).hexdigest()} is in slot {cert_slot.name if cert_slot else '?'} but its key is in slot "
        f"{key_slot.name if key_slot else '?'}; write it into the key's slot with `tokenagent accept` (management key)"
    )


def _plan(
    ts: TokenSession,
    private: Any,
    key_id: bytes,
    target: bytes,
    certificate_label: str,
    spki: bytes,
    copies: list[CertificateObject],
) -> list[tuple[Any, Change, dict[str, Any]]]:
    """(object, change, the attribute values to set) for everything that does not agree with the
    private key's CKA_ID, ``target``."""
    plan: list[tuple[Any, Change, dict[str, Any]]] = []
    if not key_id:
        plan.append((private, Change("private-key", "CKA_ID", "", target.hex()), {"CKA_ID": target}))
    for public in find_public_keys_for(ts.session, spki):
        old = key_id_of(public)
        if old != target:
            plan.append((public, Change("public-key", "CKA_ID", old.hex(), target.hex()), {"CKA_ID": target}))
    for cert in copies:
        if cert.key_id != target:
            change = Change("certificate", "CKA_ID", cert.key_id.hex(), target.hex())
            plan.append((cert.obj, change, {"CKA_ID": target}))
        if not cert.label:
            change = Change("certificate", "CKA_LABEL", "", certificate_label)
            plan.append((cert.obj, change, {"CKA_LABEL": certificate_label}))
    return plan


def _apply(ts: TokenSession, plan: list[tuple[Any, Change, dict[str, Any]]]) -> None:
    """Apply in order; on a failure (or Ctrl-C) put back what was already changed."""
    done: list[tuple[Any, dict[str, Any]]] = []
    replaced: dict[int, Any] = {}  # a certificate re-created by update_attributes has a new handle
    try:
        for obj, change, values in plan:
            live = replaced.get(obj.handle, obj)
            updated = update_attributes(ts, live, values)
            replaced[obj.handle] = updated
            old = change.old if change.attribute == "CKA_LABEL" else bytes.fromhex(change.old)
            done.append((updated, {change.attribute: old}))
    except BaseException as exc:
        for obj, old in reversed(done):
            try:
                update_attributes(ts, obj, old)
            except TokenAgentError as undo_error:
                log.error("could not restore %s: %s", ", ".join(old), undo_error.one_line())
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted("interrupted: the changes made so far were put back") from None
        raise


def _wanted(options: RepairOptions) -> tuple[_Wanted, str | None]:
    text = options.certificate.strip()
    if is_pkcs11_uri(text):
        uri = parse_uri(text)
        if uri.type not in (None, "cert"):
            raise InputError(f"{text}: repair takes a certificate (type=cert), not type={uri.type}")
        if uri.object_id is None and uri.object is None:
            raise InputError(f"{text}: give the certificate's id= or object= in the URI")
        token = options.target.selector or (str(uri.token_part()) if uri.token_part().path else None)
        return _Wanted(f"the certificate {text}", uri=uri), token
    compact = re.sub(r"[\s:]", "", text)
    path = Path(text)
    if _THUMBPRINT.fullmatch(compact) and not path.exists():
        return _Wanted(f"the certificate {compact.lower()}", thumbprint=bytes.fromhex(compact)), options.target.selector
    if not os.path.lexists(path):
        raise InputError(f"{text} is neither a file, a SHA-1 thumbprint nor a pkcs11: URI of a certificate")
    leaves = read_response(read_input(path), text).end_entities()
    if len(leaves) != 1:
        raise InputError(f"{text} holds {len(leaves)} end-entity certificates; give one certificate")
    return _Wanted(f"the certificate in {text}", der=leaves[0]), options.target.selector


def _holder(wanted: _Wanted, target: TokenTarget) -> TokenHandle:
    """The one selected token that holds the certificate (certificates are public: no login)."""
    holders, _ = find_holders(target, lambda ts: bool(wanted.select(certificate_objects(ts.session))))
    if len(holders) == 1:
        return holders[0]
    if len(holders) > 1:
        listed = "; ".join(h.describe() for h in holders)
        raise AmbiguousTokenError(f"{wanted.what} is on several tokens: {listed}; choose with --token")
    hint = "; install it with tokenagent accept" if wanted.der is not None else ""
    raise ObjectNotFoundError(f"{wanted.what} is not on any selected token{hint}")
