"""The `accept` use case (certreq -accept): an issued certificate goes onto the token next to its key.

1. Read the response: a certificate, a certs-only PKCS#7, or a CMC Full PKI Response (whose status
   is checked first: failed and pending are errors, and nothing is touched).
2. Find the key. A pending request with the same public key names its token; without one, the
   selected tokens' public key objects are searched without logging in (like certutil
   -repairstore), and the private key is then found on that token after the one login.
3. Before anything is written: the token key's public key must equal the certificate's, and a
   signature made with it must verify with the certificate (the key test).
4. Write the certificate with the key's CKA_ID (and, with --chain, the CA certificates); remove the
   pending record. Accepting the same certificate again changes nothing.

Anything written is destroyed again if a later step fails or the user presses Ctrl-C.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokenagent.display import dn_text
from tokenagent.enroll.linkage import (
    NO_KEY,
    NOT_RUN,
    KeyTest,
    LinkedPair,
    certificate_spki,
    certificate_summary,
    display_name,
    key_test,
    load_certificate,
    object_uri,
    usage_warnings,
    validity_warnings,
)
from tokenagent.errors import (
    AmbiguousTokenError,
    CAError,
    InputError,
    Interrupted,
    ObjectNotFoundError,
    PinError,
    TokenAgentError,
    TokenNotFoundError,
    UsageError,
    VerificationError,
)
from tokenagent.inputs import read_input
from tokenagent.request.response import CertificateResponse, read_response
from tokenagent.store.paths import pending_db_path
from tokenagent.store.pending import PendingRequest, PendingStore
from tokenagent.token.certs import (
    certificate_objects,
    find_public_keys_for,
    key_capabilities,
    key_id_of,
    label_of,
    update_attributes,
    write_certificate,
)
from tokenagent.token.holders import find_holders
from tokenagent.token.library import TokenHandle, TokenSelector, modules_for, recorded_token, select_token
from tokenagent.token.objects import destroy_objects, find_private_key_for, key_id_for
from tokenagent.token.pins import PinSource
from tokenagent.token.session import TokenSession, open_session
from tokenagent.token.target import ANY_TOKEN, TokenTarget
from tokenagent.token.tokeninfo import ATTESTATION_LABEL

log = logging.getLogger("tokenagent")
Warn = Callable[[str], None]

CATEGORY_USER = 1  # CKA_CERTIFICATE_CATEGORY: token user
CATEGORY_AUTHORITY = 2


@dataclass(frozen=True)
class AcceptOptions:
    """What `tokenagent accept` was asked; the library API takes the same."""

    response: Path | None = None  # None: `accept_response` is given the response's bytes
    target: TokenTarget = ANY_TOKEN  # --token (else the pending request's token), module, PIN
    machine: bool | None = None  # None: the user's pending store, then the machine's (as certreq)
    chain: bool = False  # also write the response's CA certificates (category authority)
    trust: bool = False  # and mark them CKA_TRUSTED (needs the SO PIN)
    so_pin_source: PinSource | None = None
    state_dir: Path | None = None
    run_key_test: bool = True


@dataclass(frozen=True)
class ChainEntry:
    subject: str
    sha1: str
    status: str  # written | present
    label: str
    key_id: bytes
    trusted: bool | None = None

    def to_json(self, handle: TokenHandle) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "sha1": self.sha1,
            "status": self.status,
            "label": self.label,
            "id": self.key_id.hex(),
            "trusted": self.trusted,
            "uri": object_uri(handle, "cert", self.label, self.key_id),
        }


@dataclass(frozen=True)
class AcceptPlan:
    """What accept found before it changed anything: the certificate, its token and its key."""

    response: CertificateResponse
    response_file: Path
    certificate: bytes
    token: TokenHandle
    key_label: str
    found_by: str  # how the key was found, for people


@dataclass(frozen=True)
class Installed:
    """What the user's session wrote or relinked (`_install`)."""

    pair: LinkedPair  # the key's CKA_ID (set if it had none) and the certificate object's label
    written: bool  # False: already on the token with the key's CKA_ID (or relinked)
    changes: tuple[str, ...]  # linkage fixed on an existing certificate object or the key
    chain: tuple[ChainEntry, ...]


@dataclass(frozen=True)
class AcceptOutcome:
    installed: Installed
    chain: tuple[ChainEntry, ...]  # the user's, or the security officer's with --trust
    pending_removed: PendingRequest | None
    pending_store: Path | None
    key_test: KeyTest
    warnings: tuple[str, ...]

    @property
    def changed(self) -> bool:
        installed = self.installed
        return installed.written or bool(installed.changes) or any(e.status == "written" for e in self.chain)


@dataclass(frozen=True)
class AcceptResult:
    plan: AcceptPlan
    outcome: AcceptOutcome

    def to_json(self) -> dict[str, Any]:
        plan, outcome = self.plan, self.outcome
        installed, pair = outcome.installed, outcome.installed.pair
        return {
            "format_version": 1,
            "response": {
                "file": str(plan.response_file),
                "form": plan.response.form,
                "signature": plan.response.signature,
                "statuses": [
                    {"status": s.status, "body_list": list(s.body_list), "status_string": s.status_string}
                    for s in plan.response.statuses
                ],
            },
            "certificate": certificate_summary(plan.certificate, str(plan.response_file)),
            "token": pair.token_json(),
            "key": {"id": pair.key_id.hex(), "label": pair.key_label, "found_by": plan.found_by, "uri": pair.key_uri},
            "certificate_object": {
                "label": pair.certificate_label,
                "uri": pair.certificate_uri,
                "written": installed.written,
                "changes": list(installed.changes),
            },
            "chain": [entry.to_json(pair.token) for entry in outcome.chain],
            "changed": outcome.changed,
            "pending_removed": outcome.pending_removed.id if outcome.pending_removed else None,
            "pending_store": str(outcome.pending_store) if outcome.pending_store else None,
            "key_test": outcome.key_test.to_json(),
            "warnings": list(outcome.warnings),
        }


def accept_certificate(options: AcceptOptions, *, on_warning: Warn | None = None) -> AcceptResult:
    """Run certreq -accept against the tokens. Raises a `TokenAgentError` with the token unchanged."""
    if options.response is None:
        raise UsageError("accept needs the response file")
    return accept_response(read_input(options.response), str(options.response), options, on_warning=on_warning)


def accept_response(
    data: bytes,
    what: str,
    options: AcceptOptions,
    *,
    on_warning: Warn | None = None,
    session: TokenSession | None = None,
) -> AcceptResult:
    """`accept_certificate` for a response already in memory (``what`` names it), e.g. a CA's answer.

    ``session``: a logged-in read-write session the caller holds (`tokenagent enroll` keeps the one
    it made the key in, so the card sees one login); it is used when the key is on its token."""
    warn = on_warning or (lambda message: log.warning("%s", message))
    if options.trust and session is not None:
        raise UsageError("--trust needs the security officer's login, which an enrollment run does not make")
    response = _read_checked(data, what, options)
    stores = _stores(options)
    leaf, records = _choose_certificate(response, stores, what)
    certificate = load_certificate(leaf, what)
    spki = certificate_spki(leaf, what)
    record_store, record = records[0] if records else (None, None)

    if session is not None and (record is None or session.handle.serial == record.token_serial):
        handle, found_by = session.handle, f"pending request {record.id}" if record else "the enrollment's token"
        held = True
    else:
        handle, found_by = _locate_token(options, spki, record)
        held = False
    warnings: list[str] = []

    def warning(message: str) -> None:
        warnings.append(message)
        warn(message)

    with contextlib.ExitStack() as stack:
        user = session if held and session is not None else stack.enter_context(_open_user(handle, options, warn))
        private = find_private_key_for(user.session, spki)
        if private is None:
            raise ObjectNotFoundError(f"{NO_KEY} (token '{handle.label}' has no private key for {display_name(leaf)})")
        key_label = label_of(private)
        capabilities = key_capabilities(private)
        plan = AcceptPlan(response, Path(what), leaf, handle, key_label, found_by)
        for message in validity_warnings(certificate, datetime.now(UTC)) + usage_warnings(
            certificate, capabilities, key_label
        ):
            warning(message)
        tested = key_test(user, private, spki, capabilities) if options.run_key_test else NOT_RUN
        installed = _install(
            user,
            plan,
            key_id_of(private),
            _certificate_label(record, key_label, leaf),
            private,
            spki,
            chain=options.chain and not options.trust,
        )

    removed, store_path = None, None
    if record is not None and record_store is not None:
        try:
            removed, store_path = record_store.delete(record.id), record_store.path
        except TokenAgentError as exc:
            warning(f"the certificate is installed but pending request {record.id} was not removed: {exc.one_line()}")
    chain = installed.chain
    if options.trust:
        chain = _install_trusted_chain(handle, leaf, response, options, warn)
    return AcceptResult(plan, AcceptOutcome(installed, chain, removed, store_path, tested, tuple(warnings)))


def _read_checked(data: bytes, what: str, options: AcceptOptions) -> CertificateResponse:
    """The response, refused before any token is touched if it says no or its signature is broken."""
    if options.trust and not options.chain:
        raise UsageError("--trust marks the CA certificates of --chain trusted: give --chain as well")
    if options.trust and options.so_pin_source is None:
        raise PinError("--trust needs the SO PIN and none can be asked for: give --so-pin-source env:VAR, file:PATH")
    response = read_response(data, what)
    response.raise_for_status()
    if response.signature == "invalid":
        raise VerificationError(f"{what}: the CA's signature on the CMC response does not verify; nothing installed")
    if response.signature == "unverifiable":
        log.info("%s: the CMC response's signer certificate is not included; its signature was not checked", what)
    return response


def _open_user(handle: TokenHandle, options: AcceptOptions, warn: Warn) -> TokenSession:
    """The user's login; on a PIV card the management key's, with the user PIN for the key test."""
    if handle.is_piv:
        from tokenagent.enroll.new import open_piv_session

        if options.chain:
            raise UsageError(
                f"token '{handle.label}' is a PIV card: it keeps certificates only in its key slots, so --chain "
                "cannot write the CA certificates; accept without --chain"
            )
        so_pin_source = options.so_pin_source or options.target.so_pin_source
        return open_piv_session(handle, so_pin_source, options.target.pin_source, force=options.target.force, warn=warn)
    return open_session(
        handle, login=True, pin_source=options.target.pin_source, rw=True, force=options.target.force, on_warning=warn
    )


class _Writes:
    """Certificates written (and relinks made) in one session, so that a failure can undo them.

    Undo deletes by value every certificate that was absent before this run wrote it, rather than
    by the handles C_CreateObject returned: a Ctrl-C can land after the token created an object
    and before its handle reached us.
    """

    def __init__(self, session: TokenSession) -> None:
        self.session = session
        self.new_values: list[bytes] = []
        self.relinks: list[tuple[Any, dict[str, Any]]] = []
        #: PIV: what each slot's certificate object held before this run replaced it
        self.replaced: list[tuple[bytes, bytes]] = []

    def write(self, der: bytes, *, key_id: bytes, label: str, category: int, trusted: bool = False) -> None:
        if self.session.handle.is_piv:
            # a PIV slot has one certificate object: writing replaces it (ykcs11's placeholder after
            # generation, or an older certificate), so undo must put that back, not delete
            # (ykcs11's attestation certificate shares the slot's CKA_ID but is not the slot's)
            for old in certificate_objects(self.session.session, key_id=key_id):
                if not old.label.startswith(ATTESTATION_LABEL):
                    self.replaced.append((key_id, old.der))
        self.new_values.append(der)
        write_certificate(self.session, der, key_id=key_id, label=label, category=category, trusted=trusted)

    def relink(self, obj: Any, new: dict[str, Any], old: dict[str, Any]) -> None:
        self.relinks.append((update_attributes(self.session, obj, new), old))

    def undo(self) -> None:
        if self.replaced:
            for key_id, old_der in reversed(self.replaced):
                try:
                    write_certificate(self.session, old_der, key_id=key_id, label="", category=None)
                except TokenAgentError as exc:
                    log.error("could not restore the slot's certificate (CKA_ID %s): %s", key_id.hex(), exc.one_line())
            return
        for der in reversed(self.new_values):
            found = [c.obj for c in certificate_objects(self.session.session, der=der)]
            destroy_objects(found, what="certificates written by accept")
        for obj, old in reversed(self.relinks):
            try:
                update_attributes(self.session, obj, old)
            except TokenAgentError as exc:
                log.error("could not restore %s: %s", ", ".join(old), exc.one_line())

    def run(self, step: Callable[[], None], interrupted: str) -> None:
        try:
            step()
        except BaseException as exc:
            self.undo()
            if isinstance(exc, KeyboardInterrupt):
                raise Interrupted(interrupted) from None
            raise


def _install(
    session: TokenSession,
    plan: AcceptPlan,
    key_id: bytes,
    certificate_label: str,
    private: Any,
    spki: bytes,
    chain: bool,
) -> Installed:
    """The user session's writes: key linkage if the key has no CKA_ID, the certificate, the chain."""
    writes = _Writes(session)
    installed: list[Installed] = []

    def step() -> None:
        nonlocal key_id, certificate_label
        changes: list[str] = []
        if not key_id:
            # A key without CKA_ID cannot be linked to anything: give it (and its public half) the
            # SHA-1 convention first, as repair would.
            new_id = key_id_for(spki)
            for obj in [private, *find_public_keys_for(session.session, spki)]:
                writes.relink(obj, {"CKA_ID": new_id}, {"CKA_ID": b""})
            changes.append(f"key '{plan.key_label}': CKA_ID set to {new_id.hex()} (it had none)")
            key_id = new_id
        existing = certificate_objects(session.session, der=plan.certificate)
        linked = [c for c in existing if c.key_id == key_id]
        written = False
        if linked:
            certificate_label = linked[0].label or certificate_label
        elif existing:
            stale = existing[0]
            relinked: dict[str, Any] = {"CKA_ID": key_id}
            if not stale.label:
                relinked["CKA_LABEL"] = certificate_label
            writes.relink(stale.obj, relinked, {"CKA_ID": stale.key_id, "CKA_LABEL": stale.label})
            changes.append(f"certificate: CKA_ID {stale.key_id.hex() or '(empty)'} -> {key_id.hex()} (the key's)")
            certificate_label = stale.label or certificate_label
        else:
            writes.write(plan.certificate, key_id=key_id, label=certificate_label, category=CATEGORY_USER)
            written = True
        entries: tuple[ChainEntry, ...] = ()
        if chain:
            entries = tuple(
                _chain_entry(writes, der, trusted=False) for der in plan.response.chain_for(plan.certificate)
            )
        pair = LinkedPair(plan.token, key_id, plan.key_label, certificate_label)
        installed.append(Installed(pair, written, tuple(changes), entries))

    writes.run(step, "interrupted: nothing was installed")
    return installed[0]


def _chain_entry(writes: _Writes, der: bytes, *, trusted: bool) -> ChainEntry:
    """One CA certificate of the chain: written with category authority, or found present.

    ``trusted`` (a security-officer session) also marks a present certificate CKA_TRUSTED.
    """
    present = certificate_objects(writes.session.session, der=der)
    subject = dn_text(load_certificate(der, "CA certificate").subject)
    sha1 = hashlib.sha1(der).hexdigest()
    if present:
        cert = present[0]
        if trusted and not cert.trusted:
            writes.relink(cert.obj, {"CKA_TRUSTED": True}, {})
            return ChainEntry(subject, sha1, "present", cert.label, cert.key_id, True)
        return ChainEntry(subject, sha1, "present", cert.label, cert.key_id, cert.trusted)
    label = display_name(der)
    key_id = key_id_for(certificate_spki(der, "CA certificate"))
    writes.write(der, key_id=key_id, label=label, category=CATEGORY_AUTHORITY, trusted=trusted)
    return ChainEntry(subject, sha1, "written", label, key_id, trusted)


def _install_trusted_chain(
    handle: TokenHandle, certificate: bytes, response: CertificateResponse, options: AcceptOptions, warn: Warn
) -> tuple[ChainEntry, ...]:
    """--chain --trust: the CA certificates are written by the security officer with CKA_TRUSTED.

    PKCS#11 lets only the SO set CKA_TRUSTED, and SoftHSM 2.6.1 accepts it only at creation, so
    the SO writes them (certificates are public objects, which an SO session may create). This runs
    after the user's session is closed: a token has one login state per application. If it fails,
    the user's certificate stays installed and correct, and accept --chain --trust can be rerun.
    """
    try:
        with open_session(
            handle, login=True, pin_source=options.so_pin_source, rw=True, force=options.target.force, so=True
        ) as so_session:
            writes = _Writes(so_session)
            chain: list[ChainEntry] = []

            def step() -> None:
                chain.extend(_chain_entry(writes, der, trusted=True) for der in response.chain_for(certificate))

            writes.run(step, "interrupted: the CA certificates were not installed")
            return tuple(chain)
    except TokenAgentError:
        warn(
            "the certificate is installed; installing the trusted CA certificates failed "
            "(rerun accept --chain --trust to finish)"
        )
        raise


def _stores(options: AcceptOptions) -> list[PendingStore]:
    if options.machine is not None:
        return [PendingStore(pending_db_path(options.machine, options.state_dir))]
    paths = dict.fromkeys(pending_db_path(machine, options.state_dir) for machine in (False, True))
    return [PendingStore(path) for path in paths]


def _pending_for(stores: Sequence[PendingStore], spki: bytes) -> list[tuple[PendingStore, PendingRequest]]:
    digest = hashlib.sha256(spki).hexdigest()
    found = []
    for store in stores:
        try:
            found += [(store, record) for record in store.find_by_public_key(digest)]
        except InputError as exc:
            if store is stores[0]:
                raise
            log.info("machine pending store not read: %s", exc.one_line())  # e.g. /var/lib not readable
    return found


def _choose_certificate(
    response: CertificateResponse, stores: Sequence[PendingStore], what: str
) -> tuple[bytes, list[tuple[PendingStore, PendingRequest]]]:
    leaves = response.end_entities()
    if not leaves:
        raise CAError(f"{what}: the response holds no certificate")
    matched = [(leaf, _pending_for(stores, certificate_spki(leaf, what))) for leaf in leaves]
    if len(leaves) == 1:
        return matched[0]
    with_request = [item for item in matched if item[1]]
    if len(with_request) == 1:
        return with_request[0]
    names = ", ".join(display_name(leaf) for leaf in leaves)
    raise UsageError(f"{what} holds {len(leaves)} end-entity certificates ({names}); accept them one at a time")


def _certificate_label(record: PendingRequest | None, key_label: str, der: bytes) -> str:
    if record is not None and record.friendly_name:
        return record.friendly_name
    return key_label or display_name(der)


def _locate_token(options: AcceptOptions, spki: bytes, record: PendingRequest | None) -> tuple[TokenHandle, str]:
    """The token holding the key: the pending request's, else the one whose public key objects match."""
    target = options.target
    if record is not None and target.selector is not None:
        selector = TokenSelector.parse(target.selector)
        # the module that made the key first (ykcs11 registers no p11-kit module to be discovered by)
        handle = select_token(selector, modules_for(list(target.modules) or [record.module_path], selector))
        if handle.serial == record.token_serial:
            return handle, f"pending request {record.id}"
    elif record is not None:
        selector = recorded_token(record.token_label, record.token_serial)
        try:
            handle = select_token(selector, modules_for(list(target.modules) or [record.module_path], selector))
        except TokenNotFoundError:
            raise TokenNotFoundError(
                f"the token of pending request {record.id} ('{record.token_label}', serial {record.token_serial}) "
                "is not present: insert it, or give --token"
            ) from None
        return handle, f"pending request {record.id}"
    holders, candidates = find_holders(target, lambda ts: bool(find_public_keys_for(ts.session, spki)))
    if len(holders) == 1:
        return holders[0], "its public key object"
    if len(holders) > 1:
        listed = "; ".join(h.describe() for h in holders)
        raise AmbiguousTokenError(f"the certificate's public key is on several tokens: {listed}; choose with --token")
    if len(candidates) == 1:
        return candidates[0], "a search of the private keys"
    listed = "; ".join(h.describe() for h in candidates)
    raise ObjectNotFoundError(
        f"{NO_KEY} (no public key object matches on {listed}; give --token to also search one token's private keys)"
    )
