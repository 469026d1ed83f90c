"""The `new` use case (certreq -new): INF -> key pair born on the token -> request signed on the token.

All or nothing. Everything that can be refused is refused before the token changes: the INF,
the provider, the key plan, the PIN state and the capacity check. After C_GenerateKeyPair any
failure (signing, a self-check, writing the file, the pending store, Ctrl-C) destroys what was
created and removes what was written, in reverse order, so the token is exactly as before.

Commit order: key pair -> signature -> our own verification -> request in a temporary file next
to the output -> pending record -> rename onto the output. The rename is the commit point; if it
fails the pending record is deleted as well.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenagent.enroll.files import Staged, stage
from tokenagent.enroll.files import check_output as _check_output
from tokenagent.enroll.recovery import intent_objects, recover_interrupted
from tokenagent.enroll.signer import TokenSigner
from tokenagent.errors import (
    Interrupted,
    ModuleError,
    PinError,
    PolicyError,
    TokenAgentError,
    UsageError,
    VerificationError,
)
from tokenagent.inf.policy import RequestPolicy, RequestType, load_policy
from tokenagent.providers.capacity import CapacityVerdict, check_capacity
from tokenagent.providers.plan import KeyPlan, for_implementation, plan_key, refuse_piv_keys
from tokenagent.providers.registry import Profile, ProviderEntry, ProviderRegistry, load_registry
from tokenagent.request.algorithms import SignatureAlgorithm
from tokenagent.request.armor import REQUEST_LABEL, armor
from tokenagent.request.pkcs10 import ContentItem, build_request, planned_contents, subject_text
from tokenagent.store.intents import IntentStore, KeyIntent, temporary_key_id
from tokenagent.store.locks import selection_lock, token_lock
from tokenagent.store.paths import pending_db_path
from tokenagent.store.pending import NewPending, PendingRequest, PendingStore
from tokenagent.store.submissions import CaSubmission
from tokenagent.token.facts import TokenFacts
from tokenagent.token.generate import KeyPair, generate_key_pair
from tokenagent.token.keypairs import find_key_pair_by_certificate, find_key_pair_by_label
from tokenagent.token.library import (
    LoadedModule,
    TokenHandle,
    TokenSelector,
    list_slots,
    modules_for,
    one_listing,
    select_token,
)
from tokenagent.token.modules import ENV_MODULE, installed
from tokenagent.token.objects import destroy_objects, key_id_for
from tokenagent.token.pins import Pin, PinSource, parse_pin_source
from tokenagent.token.session import TokenSession, open_session
from tokenagent.token.target import ANY_TOKEN, TokenTarget
from tokenagent.token.tokeninfo import FactNeeds, gather_facts
from tokenagent.token.uri import Pkcs11Uri

if TYPE_CHECKING:  # the agent and CMS/CMC rooms are imported only by the requests that use them
    from tokenagent.ca.connector import KeyNeeds
    from tokenagent.enroll.agent import Agent, AgentOptions
    from tokenagent.enroll.spares import SpareKeys
    from tokenagent.request.cmc import CmcControls

log = logging.getLogger("tokenagent")
Warn = Callable[[str], None]


@dataclass(frozen=True)
class NewOptions:
    """What `tokenagent new` was asked; the library API takes the same."""

    policy: Path
    output: Path | None = None  # None: the caller prints `NewResult.text`
    binary: bool = False  # DER instead of certreq base64
    overwrite: bool = False
    dry_run: bool = False
    target: TokenTarget = ANY_TOKEN  # --token (else the provider's token), module, PIN
    providers: Sequence[str | Path] = ()
    machine: bool | None = None  # None: MachineKeySet decides
    state_dir: Path | None = None
    #: RequestType = CMC / PKCS7: the enrollment agent that co-signs (certreq -new -cert), with its own PIN
    agent: AgentOptions | None = None
    cmc_controls: CmcControls | None = None  # RequestType = CMC: transactionId, nonces, secret, regInfo
    pop_link: bool = False  # RequestType = CMC with a shared secret: popLinkWitnessV2 inside the PKCS#10
    #: `tokenagent enroll`: the CA the request is for, recorded with it in one transaction
    submission: CaSubmission | None = None
    #: `enroll`: what the CA's protocol needs of the key (SCEP: RSA with CKA_DECRYPT), checked in the plan
    ca_needs: KeyNeeds | None = None
    #: `enroll`: attributes the CA's protocol wants inside the PKCS#10 (SCEP: challengePassword), signed with it
    ca_attributes: tuple[Any, ...] = ()
    #: `tokenagent batch`: (name, value) pairs that replace the INF's [Strings] values (one CSV row)
    strings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NewPlanned:
    """What `new` decided before touching the token's contents: a dry run ends here."""

    policy: RequestPolicy
    provider: ProviderEntry
    plan: KeyPlan
    verdict: CapacityVerdict
    token: TokenHandle
    contents: tuple[ContentItem, ...]
    request_type: str  # PKCS10 | CMC | PKCS7 | CERT
    binary: bool
    warnings: tuple[str, ...]

    @property
    def armor_label(self) -> str:
        return "CERTIFICATE" if self.request_type == "CERT" else REQUEST_LABEL


@dataclass(frozen=True)
class NewOutcome:
    """What a real run made."""

    der: bytes  # the request (or, for RequestType = Cert, the certificate)
    encoded: bytes  # what goes to the output: certreq base64 (CRLF) or, with --binary, DER
    output: Path | None  # None: the caller prints `encoded`
    key_id: bytes
    key_label: str
    certificate_label: str | None  # RequestType = Cert: FriendlyName, else the key's label
    key_generated: bool
    pending: PendingRequest | None  # None for RequestType = Cert (certreq records none either)
    store_path: Path | None


@dataclass(frozen=True)
class NewResult:
    planned: NewPlanned
    outcome: NewOutcome | None  # None: a dry run

    # -- the parts' fields, read through --------------------------------------------------------------

    @property
    def dry_run(self) -> bool:
        return self.outcome is None

    @property
    def policy(self) -> RequestPolicy:
        return self.planned.policy

    @property
    def plan(self) -> KeyPlan:
        return self.planned.plan

    @property
    def verdict(self) -> CapacityVerdict:
        return self.planned.verdict

    @property
    def token(self) -> TokenHandle:
        return self.planned.token

    @property
    def request_type(self) -> str:
        return self.planned.request_type

    @property
    def contents(self) -> tuple[ContentItem, ...]:
        return self.planned.contents

    @property
    def binary(self) -> bool:
        return self.planned.binary

    @property
    def key_id(self) -> bytes | None:
        return self.outcome.key_id if self.outcome else None

    @property
    def key_label(self) -> str | None:
        return self.outcome.key_label if self.outcome else None

    @property
    def key_generated(self) -> bool:
        return self.outcome.key_generated if self.outcome else False

    @property
    def pending(self) -> PendingRequest | None:
        return self.outcome.pending if self.outcome else None

    @property
    def store_path(self) -> Path | None:
        return self.outcome.store_path if self.outcome else None

    @property
    def der(self) -> bytes | None:
        return self.outcome.der if self.outcome else None

    @property
    def encoded(self) -> bytes | None:
        return self.outcome.encoded if self.outcome else None

    @property
    def output(self) -> Path | None:
        return self.outcome.output if self.outcome else None

    def key_uri(self, object_type: str = "private") -> str | None:
        """RFC 7512 URI of the key (or, with "cert", its certificate) for OpenSSL, p11-kit, GnuTLS."""
        outcome = self.outcome
        if outcome is None:
            return None
        path = dict(self.token.uri().path)
        label = outcome.certificate_label if object_type == "cert" else outcome.key_label
        path["object"] = label or self.plan.label
        path["type"] = object_type
        return str(Pkcs11Uri(path=path, object_id=outcome.key_id))

    def to_json(self) -> dict[str, Any]:
        planned, outcome = self.planned, self.outcome
        data: dict[str, Any] = {
            "format_version": 1,
            "dry_run": outcome is None,
            "policy_file": planned.policy.filename,
            "request_type": planned.request_type,
            "token": {"label": planned.token.label, "serial": planned.token.serial, "uri": str(planned.token.uri())},
            "plan": planned.plan.to_json(),
            "capacity": planned.verdict.to_json(),
            "contents": [item.__dict__ for item in planned.contents],
            "warnings": list(planned.warnings),
        }
        if outcome is None:
            return data
        data.update(
            {
                "output": str(outcome.output) if outcome.output else None,
                "key_id": outcome.key_id.hex() if outcome.key_id else None,
                "key_generated": outcome.key_generated,
                "private_key_uri": self.key_uri("private"),
                "certificate_uri": self.key_uri("cert") if planned.request_type == "CERT" else None,
                "pending_id": outcome.pending.id if outcome.pending else None,
                "pending_store": str(outcome.store_path) if outcome.store_path else None,
                "sha256": hashlib.sha256(outcome.der).hexdigest() if outcome.der else None,
            }
        )
        if outcome.output is None and outcome.der is not None:
            if planned.binary:
                data["der_hex"] = outcome.der.hex()
            else:
                data["base64"] = armor(outcome.der, planned.armor_label)
        return data


def new_request(
    options: NewOptions, *, on_warning: Warn | None = None, on_status: Callable[[str], None] | None = None
) -> NewResult:
    """Run certreq -new against a token. Raises a `TokenAgentError` with nothing left behind.

    A real run holds the token's lock (store/locks.py) from before the KeyContainer check to the
    pending record, and first removes what an interrupted run left on the token (enroll/recovery.py).
    ``on_status`` hears one line before each slow step (key generation: seconds on a smart card).
    """
    warn = on_warning or (lambda message: log.warning("%s", message))
    prepared = prepare(options, warn)
    with contextlib.ExitStack() as stack:
        stack.enter_context(one_listing())  # the user's token and the agent's from one slot listing
        if not options.dry_run:
            stack.enter_context(lock_selection(prepared, warn))
        handle = select_for(prepared)
        if not options.dry_run:
            stack.enter_context(lock_token(prepared, handle, warn))
        agent = None
        if options.agent is not None and not options.dry_run:
            from tokenagent.enroll.agent import open_agent

            # the agent's login, key and certificate are checked before the user's key exists
            agent = stack.enter_context(open_agent(options.agent, on_warning=warn))
        session = open_user_session(prepared, handle, warn)
        with session:
            if not options.dry_run:
                recover_interrupted(session, prepared.store_path, on_warning=warn)
            prepared = for_token(prepared, handle)  # once: facts_needed and enroll read its plan
            facts = gather_facts(session, facts_needed(prepared))
            return enroll(prepared, session, facts, agent=agent, on_status=on_status)


def open_user_session(prepared: Prepared, handle: TokenHandle, warn: Warn) -> TokenSession:
    """The one login on the token the key is made on (read-only for a dry run).

    A PIV card (ykcs11) is the exception: only its security officer, whose PIN is the management
    key, may generate a key or write a certificate, so that is the one login, and each signature
    adds the user PIN as a context-specific login (asked once).
    """
    options = prepared.options
    if handle.is_piv and not options.dry_run:
        force = options.target.force
        return open_piv_session(handle, options.target.so_pin_source, prepared.pin_source, force=force, warn=warn)
    return open_session(
        handle,
        login=True,
        pin_source=prepared.pin_source,
        rw=not options.dry_run,
        force=options.target.force,
        on_warning=warn,
    )


def open_piv_session(
    handle: TokenHandle, so_pin_source: PinSource | None, pin_source: PinSource | None, *, force: bool, warn: Warn
) -> TokenSession:
    """The management-key login on a PIV card, with the user PIN for signatures; warns when the
    card still has the factory management key."""
    from tokenagent.providers.piv import FACTORY_MANAGEMENT_KEY

    if so_pin_source is None:
        raise PinError(
            f"token '{handle.label}' is a PIV card: generating a key or writing a certificate needs its management "
            "key, and none can be asked for: give --so-pin-source env:VAR, file:PATH or fd:N"
        )
    session = open_session(
        handle,
        login=True,
        pin_source=so_pin_source,
        rw=True,
        force=force,
        on_warning=warn,
        so=True,
        signing_pin_source=pin_source,
    )
    credential = session._pin
    if isinstance(credential, Pin) and credential.reveal().strip().lower() == FACTORY_MANAGEMENT_KEY:
        warn(
            f"token {handle.describe()} still has the factory default management key, which anyone can use to "
            "replace its keys and certificates: change it (ykman piv access change-management-key)"
        )
    return session


def lock_selection(prepared: Prepared, warn: Warn) -> contextlib.AbstractContextManager[Path]:
    """Runs that name their token the same way take turns before loading the module (store/locks.py)."""
    options = prepared.options
    selector = options.target.selector or prepared.provider.token_for(prepared.machine) or "(the only token)"
    return selection_lock(prepared.store_path.parent, selector, on_wait=warn)


def lock_token(prepared: Prepared, handle: TokenHandle, warn: Warn) -> contextlib.AbstractContextManager[Path]:
    """The token's lock in the state directory of this request's context."""
    return token_lock(prepared.store_path.parent, handle.serial, handle.label, on_wait=warn)


@dataclass(frozen=True)
class Prepared:
    """Everything `new` decides before it touches a token (the INF, the provider, the key plan)."""

    options: NewOptions
    policy: RequestPolicy
    provider: ProviderEntry
    machine: bool
    plan: KeyPlan
    pin_source: PinSource | None
    piv_profile: Profile | None = None  # the registry's 'piv' profile, for a token that turns out to be one

    @property
    def store_path(self) -> Path:
        """The state database of this request's context: pending records, intents (and locks beside it)."""
        return pending_db_path(self.plan.machine, self.options.state_dir)


def prepare(options: NewOptions, warn: Warn, *, registry: ProviderRegistry | None = None) -> Prepared:
    """The checks that need no token: INF, provider, key plan, Silent, the output path.

    ``registry`` lets a caller that runs many requests (enroll.batch) read providers.toml once.
    """
    policy = load_policy(options.policy, strings=dict(options.strings) if options.strings else None)
    for diagnostic in policy.warnings:
        warn(f"{diagnostic.filename}:{diagnostic.line}: {diagnostic.message}")
    _check_request_type(policy, options)
    registry = registry if registry is not None else load_registry(options.providers)
    provider = registry.lookup(policy.provider_name, policy.where("provider_name"))
    machine = policy.machine_key_set if options.machine is None else options.machine
    plan = plan_key(policy, provider, machine=machine, ca_needs=options.ca_needs)
    for note in plan.notes:
        log.info("%s", note)
    if plan.silent and not options.dry_run and not provider.profile.pin_pad:
        _check_silent(policy, options.target.pin_source)
    if options.output is not None and not options.dry_run:
        _check_output(options.output, options.overwrite)
    pin_source = options.target.pin_source
    if provider.profile.pin_pad and (pin_source is None or pin_source.kind == "prompt"):
        pin_source = parse_pin_source("pinpad")  # the profile says the reader has a PIN pad: use it
    return Prepared(options, policy, provider, machine, plan, pin_source, registry.profiles.get("piv"))


def facts_needed(prepared: Prepared) -> FactNeeds:
    """The capacity check's questions for this plan (already `for_token`), and nothing else."""
    plan = prepared.plan
    profile = plan.provider.profile
    # a label tokenagent made up (tokenagent-<uuid4>) cannot be taken: only a KeyContainer is looked for
    named = plan.existing is None and plan.piv_slot is None and not plan.label_generated
    return FactNeeds(
        mechanisms=frozenset({plan.generation_mechanism}),
        sign_candidates=tuple(m.mechanism for m in plan.sign_candidates),
        label=plan.label if named else None,
        private_keys=profile.key_containers is not None,
        objects=profile.max_objects is not None,
    )


def for_token(prepared: Prepared, handle: TokenHandle) -> Prepared:
    """The plan for the token actually selected: a PIV card (ykcs11) gets the 'piv' profile's slots
    and templates whatever provider the INF named, and the 'piv' profile needs ykcs11."""
    provider = prepared.provider
    if handle.is_piv and provider.profile.name != "piv" and prepared.piv_profile is not None:
        provider = replace(provider, profile=prepared.piv_profile)
        plan = plan_key(prepared.policy, provider, machine=prepared.machine, ca_needs=prepared.options.ca_needs)
        for note in plan.notes:
            log.info("%s", note)
        return replace(prepared, provider=provider, plan=plan)
    if provider.profile.name == "piv" and not handle.is_piv:
        opensc = (
            "OpenSC's PIV driver cannot generate keys or write certificates; "
            if "OpenSC" in (handle.module.manufacturer)
            else ""
        )
        raise PolicyError(
            f"{prepared.policy.where('provider_name')}: profile 'piv' needs Yubico's ykcs11, and token "
            f"{handle.describe()} is served by {handle.module.path}: {opensc}give --module ykcs11"
        )
    if provider.profile.name != "piv":
        refuse_piv_keys(prepared.policy, provider)  # the smart card is not a PIV card after all
    plan = for_implementation(prepared.plan, handle.implementation)
    return prepared if plan is prepared.plan else replace(prepared, plan=plan)


def enroll(
    prepared: Prepared,
    session: TokenSession,
    facts: TokenFacts,
    *,
    agent: Agent | None = None,
    on_status: Callable[[str], None] | None = None,
    spares: SpareKeys | None = None,
    make_spare: bool = True,
) -> NewResult:
    """The capacity check against ``facts``, then (unless --dry-run) the `_Transaction` in ``session``.
    ``spares``: a batch's spare key pairs (enroll/spares.py), taken instead of generating and made
    for the next request once this one's token work is done (unless not ``make_spare``)."""
    handle = session.handle
    prepared = for_token(prepared, handle)  # a no-op when the caller adapted it already
    options, policy, plan = prepared.options, prepared.policy, prepared.plan
    is_cert = policy.request_type == RequestType.CERT
    if plan.piv_slot is not None:
        facts = _with_discarded_slots(facts, prepared.store_path, handle.serial)
    verdict = check_capacity(plan, facts, extra_objects=1 if is_cert else 0)
    planned = NewPlanned(
        policy=policy,
        provider=prepared.provider,
        plan=plan,
        verdict=verdict,
        token=handle,
        contents=tuple(planned_contents(policy)),
        request_type=policy.request_type.name,
        binary=options.binary,
        warnings=tuple(str(w) for w in policy.warnings),
    )
    if options.dry_run:
        return NewResult(planned, None)
    verdict.raise_if_refused(f"'{handle.label}'")
    transaction = _Transaction(session, options, planned, agent, on_status, spares, make_spare=make_spare)
    outcome = transaction.run()
    return NewResult(transaction.result, outcome)  # (a spare key pair brings its own label)


def _with_discarded_slots(facts: TokenFacts, store_path: Path, serial: str) -> TokenFacts:
    """The PIV slots whose key is exactly one an earlier rollback on this card discarded."""
    from tokenagent.store.discarded import DiscardedKeys

    discarded = DiscardedKeys(store_path).for_token(serial)
    reusable = frozenset(slot for slot, digest in discarded.items() if facts.slot_keys.get(slot) == digest)
    return replace(facts, discarded_slots=reusable)


class _Transaction:
    """One enrollment on one token; `undo` puts everything back after a failure."""

    def __init__(
        self,
        session: TokenSession,
        options: NewOptions,
        result: NewPlanned,
        agent: Agent | None,
        on_status: Callable[[str], None] | None = None,
        spares: SpareKeys | None = None,
        *,
        make_spare: bool = True,
    ) -> None:
        self.agent = agent
        self.on_status = on_status
        self.spares = spares
        self.finish_spare: Callable[[], KeyIntent] | None = None  # a spare taken: `_finish_key`
        self.make_spare = make_spare
        self.renewal_certificate: bytes | None = None
        self.renewal_signer: TokenSigner | None = None
        self.session = session
        self.options = options
        self.result = result
        self.created: list[Any] = []  # token objects, in creation order
        self.staged: Staged | None = None  # the request file written, not yet in place
        self.pending: PendingRequest | None = None
        self.store_path = pending_db_path(result.plan.machine, options.state_dir)
        self.intents = IntentStore(self.store_path)
        self.intent: KeyIntent | None = None  # open from before C_GenerateKeyPair until the record
        self.generating = False  # C_GenerateKeyPair was called (its objects are gone after an undo)
        self.generated_spki: bytes | None = None  # the new key's public key, once read

    def run(self) -> NewOutcome:
        try:
            return self._run()
        except BaseException as exc:
            removed = self.undo()  # what it cannot undo it logs as an error, next to the original error
            if isinstance(exc, KeyboardInterrupt):
                what = "the new key pair was deleted" if removed or self.generating else "nothing was changed"
                raise Interrupted(f"interrupted: {what}, no request was written") from None
            raise

    def _run(self) -> NewOutcome:
        result, policy, plan = self.result, self.result.policy, self.result.plan
        pair = self._key_pair()
        assert result.verdict.sign_mechanism is not None
        signer = TokenSigner(
            self.session,
            pair.private,
            result.verdict.sign_mechanism,
            SignatureAlgorithm(plan.hash, plan.padding),
            # the generation template set CKA_ALWAYS_AUTHENTICATE (PIV: the slot's policy): no read-back
            always_authenticates=plan.always_authenticate if pair.generated else None,
        )
        if policy.request_type == RequestType.CERT:
            # RequestType = Cert only: a request (the usual one-shot `new`) does without these modules
            from tokenagent.request.certificate import self_signed_certificate
            from tokenagent.token.certs import write_certificate

            der = self_signed_certificate(policy, pair.spki, signer, now=datetime.now(UTC))
            _verify_certificate(der)
            label = policy.friendly_name or pair.label
            certificate_label: str | None = label
            self._finish_key()
            self.created.append(write_certificate(self.session, der, key_id=pair.key_id, label=label))
            self._end_intent()  # the certificate on the token now explains the key
            self._make_spare()
        else:
            controls, extra = self._cmc_controls()
            der = build_request(policy, pair.spki, signer, extra_attributes=[*extra, *self.options.ca_attributes])
            _verify_request(der)
            der = self._wrap(der, pair, signer, controls)
            certificate_label = None
            self._finish_key()
            self._make_spare()  # this request's token work is done: the next key is made meanwhile
        encoded = der if self.options.binary else armor(der, result.armor_label).encode("ascii")
        output = self.options.output
        if output is not None:
            self.staged = stage(output, encoded)
        if policy.request_type != RequestType.CERT:
            self._record(pair, der)
        if self.staged is not None:
            self.staged.commit()  # kept: an interruption before the return withdraws it with the key
        return NewOutcome(
            der=der,
            encoded=encoded,
            output=output,
            key_id=pair.key_id,
            key_label=pair.label,
            certificate_label=certificate_label,
            key_generated=pair.generated,
            pending=self.pending,
            store_path=self.store_path if self.pending is not None else None,
        )

    def _finish_key(self) -> None:
        """A spare key pair's final CKA_ID and label, before anything is recorded or installed."""
        if self.finish_spare is not None:
            self.intent = self.finish_spare()
            self.finish_spare = None

    def _make_spare(self) -> None:
        if self.spares is not None and self.make_spare and self.result.plan.existing is None:
            self.spares.make(self.session, self.result.plan, self.intents)

    def _key_pair(self) -> KeyPair:
        plan = self.result.plan
        spare = self.spares.take(self.session, plan) if self.spares is not None and plan.existing is None else None
        if spare is not None:
            pair, self.intent = spare.pair, spare.intent  # its intent is this run's now: `undo` and `_record` end it
            self.finish_spare = spare.finish
            self.generating = True
            self.created.extend([pair.public, pair.private])
            self.generated_spki = pair.spki
            self.result = replace(self.result, plan=replace(plan, label=pair.label))
            return pair
        if plan.existing is not None:
            if plan.existing.renewal_thumbprint is not None:
                pair, certificate = find_key_pair_by_certificate(self.session, plan.existing.renewal_thumbprint)
                self.renewal_certificate = certificate
            else:
                assert plan.existing.label is not None
                pair = find_key_pair_by_label(self.session, plan.existing.label)
            _check_existing_key(self.result.policy, plan, pair)
            return pair
        token = self.session.handle
        # a PIV key is born with its slot's CKA_ID (the slot was empty: capacity checked), which
        # then names it in the intent as the temporary ID names a key on other tokens
        fixed_id = plan.fixed_id
        temporary_id = fixed_id or temporary_key_id()
        self.intent = self.intents.begin(
            token_label=token.label,
            token_serial=token.serial,
            token_model=token.model,
            module_path=token.module.ref.spec,
            key_label=plan.label,
            temporary_id=temporary_id,
            output=str(self.options.output) if self.options.output is not None else None,
        )
        intent_id = self.intent.id
        if self.on_status is not None:
            size = f"{plan.key_algorithm} {plan.bits}-bit" if plan.family == "RSA" else plan.key_algorithm
            where = f" in {plan.piv_slot.describe()}" if plan.piv_slot else ""
            self.on_status(f"generating the {size} key on {token.describe()}{where} (seconds on a smart card)...")
        self.generating = True
        pair = generate_key_pair(
            self.session,
            key_type=plan.key_type,
            generation_mechanism=plan.generation_mechanism,
            public_template=plan.public_template,
            private_template=plan.private_template,
            temporary_id=temporary_id,
            before_final_id=lambda key_id: self._note_final_id(intent_id, key_id),
            fixed_id=fixed_id,
        )
        self.created.extend([pair.public, pair.private])
        self.generated_spki = pair.spki
        return pair if pair.label else replace(pair, label=plan.label)

    def _note_final_id(self, intent_id: int, key_id: bytes) -> None:
        """Record the final CKA_ID in the store and in the intent this run holds: `undo` looks for the
        objects by the intent's IDs, and after C_SetAttributeValue the temporary ID finds nothing."""
        self.intents.note_key_id(intent_id, key_id)
        if self.intent is not None:
            self.intent = replace(self.intent, key_id=key_id.hex())

    def _cmc_controls(self) -> tuple[CmcControls | None, list[Any]]:
        """The CMC controls, and what must go inside the PKCS#10 before it is signed: the
        popLinkWitnessV2 attribute (CMC) or the renewal certificate attribute (PKCS7 renewal)."""
        policy = self.result.policy
        if policy.request_type == RequestType.PKCS7 and self.agent is None and policy.renewal_cert is not None:
            from tokenagent.enroll.signer import token_signer
            from tokenagent.request.cms_sign import renewal_certificate_attribute

            # certreq's PKCS#7 renewal: the renewed certificate's key signs the CMS around the new request
            old, certificate = find_key_pair_by_certificate(self.session, policy.renewal_cert)
            self.renewal_certificate = certificate
            self.renewal_signer = token_signer(self.session, old.private, old.spki, hash_name=policy.hash_algorithm)
            return None, [renewal_certificate_attribute(certificate)]
        if policy.request_type != RequestType.CMC:
            return None, []
        from tokenagent.request.cmc import CmcControls, pop_link_witness_attribute

        controls = self.options.cmc_controls or CmcControls(
            transaction_id=secrets.randbits(63), sender_nonce=secrets.token_bytes(16)
        )
        if self.agent is not None:
            controls = replace(controls, requester_name=policy.requester_name)
        if not self.options.pop_link:
            return controls, []
        secret = controls.shared_secret
        if secret is None:
            raise UsageError("--pop-link needs the CMC shared secret (--shared-secret-source)")
        random = secrets.token_bytes(64)
        controls = replace(controls, pop_link_random=random)
        witness = pop_link_witness_attribute(secret, controls.identification, random)
        return controls, [witness]

    def _wrap(self, der: bytes, pair: KeyPair, signer: TokenSigner, controls: CmcControls | None) -> bytes:
        """RequestType = CMC: PKIData signed by the new key (sid = its key identifier), then by the
        agent; PKCS7: the agent's EOBO wrapper, or the renewal signed by the renewed certificate's key."""
        policy = self.result.policy
        if policy.request_type not in (RequestType.CMC, RequestType.PKCS7):
            return der
        from tokenagent.enroll.sign import co_sign
        from tokenagent.request.cmc import pki_data
        from tokenagent.request.cms_sign import SignerSpec, sign_content
        from tokenagent.request.cms_verify import verify_signers
        from tokenagent.request.oids import OID_DATA, OID_PKI_DATA

        if policy.request_type == RequestType.CMC:
            assert controls is not None
            specs = [SignerSpec(signer, subject_key_identifier=key_id_for(pair.spki))]
            certificates: list[bytes] = []
            if self.agent is not None:
                specs.append(self.agent.spec())
                certificates.append(self.agent.certificate)
            wrapped = sign_content(OID_PKI_DATA, pki_data(der, controls).dump(), specs, certificates)
        elif policy.request_type == RequestType.PKCS7 and self.agent is not None:
            wrapped = co_sign(self.agent, der, requester=policy.requester_name, format="pkcs7", yes=True).der
        elif policy.request_type == RequestType.PKCS7:
            assert self.renewal_certificate is not None and self.renewal_signer is not None
            spec = SignerSpec(self.renewal_signer, certificate=self.renewal_certificate)
            wrapped = sign_content(OID_DATA, der, [spec])
        else:
            return der
        for check in verify_signers(wrapped, what="the new request"):
            if check.status != "valid":
                raise VerificationError(
                    f"the new request's signature {check.index + 1} does not verify: {check.reason}"
                )
        return wrapped

    def _record(self, pair: KeyPair, der: bytes) -> None:
        result = self.result
        store = PendingStore(self.store_path)
        completes = self.intent.id if self.intent is not None else None
        self.pending = store.add(
            NewPending(
                request_sha256=hashlib.sha256(der).hexdigest(),
                request_der=der,
                request_type=result.request_type,
                subject=subject_text(result.policy),
                token_label=result.token.label,
                token_serial=result.token.serial,
                token_model=result.token.model,
                module_path=result.token.module.ref.spec,
                key_id=pair.key_id.hex(),
                key_label=pair.label,
                public_key_sha256=hashlib.sha256(pair.spki).hexdigest(),
                key_generated=pair.generated,
                friendly_name=result.policy.friendly_name,
                policy_file=str(Path(result.policy.filename).resolve()),
                policy_json=json.dumps(result.policy.to_json(), default=str),
                machine=result.plan.machine,
            ),
            completes=completes,  # the intent ends in the same transaction
            submission=self.options.submission,
        )
        self.intent = None

    def _discard_piv_key(self) -> None:
        """A PIV card keeps the key bits of a rolled-back generation: record them as ours to reuse."""
        slot = self.result.plan.piv_slot
        if slot is None or self.generated_spki is None:
            return
        from tokenagent.store.discarded import DiscardedKeys

        try:
            digest = hashlib.sha256(self.generated_spki).hexdigest()
            DiscardedKeys(self.store_path).add(self.session.handle.serial, slot.cka_id, digest)
        except TokenAgentError as exc:
            log.error("slot %s: the discarded key was not recorded: %s", slot.name, exc.one_line())

    def _end_intent(self) -> None:
        if self.intent is not None:
            self.intents.end(self.intent.id)
            self.intent = None

    def undo(self) -> int:
        """Put everything back; returns how many token objects were destroyed."""
        if self.staged is not None:
            with contextlib.suppress(OSError):
                self.staged.withdraw()
        if self.pending is not None:
            try:
                PendingStore(self.store_path).delete(self.pending.id)
            except TokenAgentError as exc:
                log.error("pending record %s not removed: %s", self.pending.id, exc.one_line())
        # While the intent is open, it names every object this run can have made, even one whose
        # handle never reached Python (an interrupt right after C_GenerateKeyPair returned).
        objects = list(reversed(self.created))
        if self.intent is not None:
            try:
                found = intent_objects(self.session, self.intent)
                known = {obj.handle for obj in found}
                objects = found + [obj for obj in objects if obj.handle not in known]
            except Exception as exc:  # the token may be gone: the next run on it recovers
                log.error("cannot look for the new key pair: %s", exc)
        problems = destroy_objects(objects, what="new key pair") if objects else []
        if problems and self.intent is not None:
            # the intent stays open: the next run on this token removes what is left
            log.error(
                "the next tokenagent run on token %s removes what is left (or: tokenagent pending --recover)",
                self.session.handle.describe(),
            )
        if not problems:
            self._discard_piv_key()
        if self.intent is not None and not problems:
            # an intent left open (objects not destroyed) is recovered by the next run on the token
            try:
                self._end_intent()
            except TokenAgentError as exc:
                log.error("interrupted-generation record not removed: %s", exc.one_line())
        return len(objects) - len(problems)


def _check_existing_key(policy: RequestPolicy, plan: KeyPlan, pair: KeyPair) -> None:
    """The INF's KeyAlgorithm/KeyLength choose the signature mechanism: they must describe the reused key."""
    from asn1crypto import keys

    info = keys.PublicKeyInfo.load(pair.spki)
    family = "RSA" if info.algorithm == "rsa" else "EC" if info.algorithm == "ec" else info.algorithm.upper()
    planned = "RSA" if plan.family == "RSA" else "EC"
    if family != planned or info.bit_size != plan.bits:
        raise PolicyError(
            f"{policy.where('key_algorithm')}: UseExistingKeySet: the existing key '{pair.label}' is "
            f"{family} {info.bit_size}-bit but KeyAlgorithm/KeyLength say {plan.key_algorithm} {plan.bits}-bit"
        )


def _check_request_type(policy: RequestPolicy, options: NewOptions) -> None:
    """certreq's pairings: an agent signs only CMC/PKCS7 requests; PKCS7 is EOBO or renewal;
    RequesterName only makes sense with an agent's signature (certreq -new -cert)."""
    kind = policy.request_type
    where = policy.where("request_type")
    # a CA protocol whose messages the agent's key signs (CMP signature protection); nothing else takes --agent
    protocol_signs = options.ca_needs is not None and options.ca_needs.agent_signs and kind == RequestType.PKCS10
    if options.agent is not None and kind not in (RequestType.CMC, RequestType.PKCS7) and not protocol_signs:
        raise UsageError(f"{where}: --agent co-signs RequestType = CMC or PKCS7, not {kind.name}")
    if kind == RequestType.PKCS7 and options.agent is None and policy.renewal_cert is None:
        raise PolicyError(
            f"{where}: RequestType = PKCS7 is an enroll-on-behalf request (give --agent) or a renewal "
            "(give RenewalCert)"
        )
    if kind in (RequestType.CMC, RequestType.PKCS7) and options.agent is not None and not policy.requester_name:
        raise PolicyError(f"{where}: an enrollment agent signs on behalf of RequesterName = DOMAIN\\user; set it")
    if policy.requester_name and options.agent is None and kind in (RequestType.CMC, RequestType.PKCS7):
        raise UsageError(
            f"{policy.where('requester_name')}: RequesterName needs the enrollment agent's signature: give --agent"
        )
    if options.pop_link and kind != RequestType.CMC:
        raise UsageError("--pop-link is for RequestType = CMC")


def _check_silent(policy: RequestPolicy, source: PinSource | None) -> None:
    if source is None or source.kind == "prompt":
        raise PinError(
            f"{policy.where('silent')}: Silent = TRUE forbids prompting for the PIN; give --pin-source "
            "env:VAR, file:PATH, fd:N or pinpad (or set TOKENAGENT_PIN_SOURCE)"
        )


def select_for(prepared: Prepared) -> TokenHandle:
    """The token a prepared request's key goes on."""
    return _select_token(prepared.provider, prepared.options, prepared.machine)


def _select_token(provider: ProviderEntry, options: NewOptions, machine: bool) -> TokenHandle:
    """Module precedence: --module, then a module named in a providers file, then TOKENAGENT_MODULE,
    then the built-in provider's module (OpenSC for smart cards), then p11-kit discovery."""
    named = bool(options.target.modules) or bool(provider.module and provider.source != "built-in")
    if options.target.modules:
        specs = list(options.target.modules)
    elif provider.module and provider.source != "built-in":
        specs = [provider.module]
    elif os.environ.get(ENV_MODULE):
        specs = []
    else:
        specs = [provider.module] if provider.module else []
        if provider.profile.kind == "smartcard" and installed("ykcs11"):
            specs.append("ykcs11")  # PIV cards (YubiKeys): OpenSC cannot write to them
    selector = TokenSelector.parse(options.target.selector or provider.token_for(machine))
    modules = [m for m in modules_for(specs, selector) if _usable(m, optional=m.ref.name == "ykcs11" and not named)]
    return select_token(selector, modules, piv_first=True)


def _usable(module: LoadedModule, *, optional: bool) -> bool:
    """A module added on the user's behalf (ykcs11 beside OpenSC) that cannot even list its slots
    (no pcscd running: CKR_DEVICE_ERROR) is left out rather than failing the run."""
    if not optional:
        return True
    try:
        list_slots(module)
    except ModuleError as exc:
        log.info("%s is left out of the search: %s", module.path, exc.one_line())
        return False
    return True


def _verify_request(der: bytes) -> None:
    """A token that returns a wrong signature must not produce a request a CA would reject later."""
    from cryptography import x509

    try:
        valid = x509.load_der_x509_csr(der).is_signature_valid
    except ValueError as exc:
        raise VerificationError(f"the request just built does not parse: {exc}") from None
    if not valid:
        raise VerificationError("the token's signature on the new request does not verify")


def _verify_certificate(der: bytes) -> None:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    try:
        certificate = x509.load_der_x509_certificate(der)
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise VerificationError(f"the token's signature on the new certificate does not verify: {exc}") from None
