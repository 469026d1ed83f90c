"""A batch's spare key pair: the next request's key generated while this request is written.

In a batch the token and the host take turns: the token generates a key pair (most of a P-256
request's time on SoftHSM, seconds on a smart card), then the host builds, checks and signs the
request, writes it and records it durably. Requests in a batch usually share their key plan (one INF
template, many subjects), so once a request's last token call is made, `SpareKeys.make` starts
generating a key pair of the same plan in a second thread and second session, while the host
finishes the request and prepares the next one; the next request with that plan `take`s it
instead of generating (issue 15: batch `new` per request as fast as a bare python-pkcs11 loop).

A spare is an ordinary generation under an intent (store/intents.py): the intent is recorded
before C_GenerateKeyPair, its final CKA_ID before that is set, so a process killed with a spare
on the token leaves an open intent that recovery (enroll/recovery.py) rolls back. A spare that no
request takes (the batch ends, the next plan differs) is destroyed and its intent ended.

A spare is born with a label of its own and its temporary CKA_ID; the request that takes it sets
the final CKA_ID (noted in the intent by the spare's thread) and, if it names one, its KeyContainer
label on both halves, in one C_SetAttributeValue per half as a key generated in the request would. Only for
keys whose whole shape is the plan's templates: no fixed CKA_ID (PIV slots), no existing key, and a profile without
key or object limits on a token that reports no memory limit (a spare takes room a request may need).
The token's module is called one call at a time unless it was initialized for OS locking
(token/raw.py `_OneAtATime`), so the two threads never call into it together.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tokenagent.enroll.recovery import intent_objects
from tokenagent.errors import TokenAgentError, TokenOperationError
from tokenagent.providers.plan import KeyPlan
from tokenagent.store.intents import IntentStore, KeyIntent, temporary_key_id
from tokenagent.token import raw
from tokenagent.token.facts import TokenFacts
from tokenagent.token.generate import KeyPair, finish_key_pair, generate_key_pair
from tokenagent.token.library import TokenHandle
from tokenagent.token.objects import destroy_objects
from tokenagent.token.session import TokenSession

log = logging.getLogger("tokenagent")


def shape(plan: KeyPlan) -> tuple[Any, ...]:
    """What a spare must share with a request's plan: everything the token is asked, less the label."""

    def template(values: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((name, repr(value)) for name, value in values.items() if name != "CKA_LABEL"))

    return (
        plan.key_type,
        plan.generation_mechanism,
        template(plan.public_template),
        template(plan.private_template),
    )


def poolable(plan: KeyPlan) -> bool:
    profile = plan.provider.profile
    return (
        plan.existing is None
        and plan.fixed_id is None
        and plan.piv_slot is None
        and profile.key_containers is None
        and profile.max_objects is None
    )


#: CK_SLOT_INFO.flags: the token can be taken out (a smart card in a reader)
CKF_REMOVABLE_DEVICE = 0x2


def spares_fit(handle: TokenHandle, facts: TokenFacts) -> bool:
    """A spare only where it takes no room a request may need: not on a removable token (a smart
    card has a few key slots, and a spare it does not use costs seconds to make and delete), nor on
    one that reports its free memory."""
    slot = handle.slot_info
    removable = slot is None or bool(slot.flags & CKF_REMOVABLE_DEVICE)
    return not removable and facts.free_private_memory is None and facts.free_public_memory is None


@dataclass
class Spare:
    """One key pair being generated, or made, for the next request on a token."""

    shape: tuple[Any, ...]
    store: IntentStore
    token: tuple[str, int]  # (module path, slot ID)
    intent: KeyIntent | None = None
    pair: KeyPair | None = None
    error: BaseException | None = None
    #: set when the generation ended, well or not (not Thread.join: a Ctrl-C inside it can leave a
    #: running thread marked as stopped, CPython gh-90882, and the spare would be discarded too early)
    done: threading.Event = field(default_factory=threading.Event)
    #: set when the pair exists and its final CKA_ID is known (the intent may not name it yet)
    ready: threading.Event = field(default_factory=threading.Event)


@dataclass
class TakenSpare:
    """A spare given to a request: its pair (still carrying its temporary CKA_ID), its intent, and
    `finish`, which the request calls before it records or installs anything: it waits until the
    intent names the final CKA_ID, then sets that ID (and the KeyContainer's label) on both halves,
    and returns the intent as it now stands."""

    pair: KeyPair
    intent: KeyIntent
    finish: Callable[[], KeyIntent]


def begin_intent(ts: TokenSession, store: IntentStore) -> KeyIntent:
    """A spare's intent: its own label and temporary CKA_ID, recorded before its generation."""
    token = ts.handle
    return store.begin(
        token_label=token.label,
        token_serial=token.serial,
        token_model=token.model,
        module_path=token.module.ref.spec,
        key_label=f"tokenagent-{uuid.uuid4()}",
        temporary_id=temporary_key_id(),
        output=None,
    )


class SpareKeys:
    """At most one spare key pair per token, generated in its own session and thread."""

    def __init__(self) -> None:
        self._spares: dict[tuple[str, int], Spare] = {}
        self._sessions: dict[tuple[str, int], TokenSession] = {}
        #: per token, the intent the next spare is generated under, recorded ahead (`make`)
        self._reserved: dict[tuple[str, int], tuple[IntentStore, KeyIntent]] = {}
        #: `tokenagent batch --jobs` runs requests from several threads, and Ctrl-C closes the batch
        #: while a worker may still be in one: no spare is made after `close`
        self._lock = threading.RLock()
        self._closed = False

    def take(self, ts: TokenSession, plan: KeyPlan) -> TakenSpare | None:
        """The spare for this token if it has the plan's shape (waiting for its generation to end),
        bound to ``ts``'s session; None otherwise (a spare of another shape is discarded)."""
        with self._lock:
            return None if self._closed else self._take(ts, plan)

    def make(self, ts: TokenSession, plan: KeyPlan, store: IntentStore) -> None:
        """Start generating a spare of ``plan``'s shape on ``ts``'s token, unless one is there."""
        with self._lock:
            if not self._closed:
                self._make(ts, plan, store)

    def close(self) -> None:
        """Discard every spare no request took and close the spares' sessions."""
        with self._lock:
            self._closed = True
            self._close()

    def _take(self, ts: TokenSession, plan: KeyPlan) -> TakenSpare | None:
        key = (ts.handle.module.path, ts.handle.slot_id)
        spare = self._spares.get(key)
        if spare is None:
            return None
        self._wait(spare, spare.ready)  # (a Ctrl-C while waiting leaves it listed: `close` discards it)
        del self._spares[key]
        try:
            return self._claim(ts, plan, spare)
        except BaseException:
            self._discard(spare)  # e.g. Ctrl-C between here and the request's own undo
            raise

    def _claim(self, ts: TokenSession, plan: KeyPlan, spare: Spare) -> TakenSpare | None:
        if spare.error is not None or spare.pair is None or spare.intent is None or spare.shape != shape(plan):
            if spare.error is not None:
                log.info(
                    "token '%s': the spare key pair failed (%s); generating this one", ts.handle.label, spare.error
                )
            self._discard(spare)
            return None
        made = spare.pair
        path = ts.handle.module.path
        # the handles are the application's, valid in every session: rebound to the request's
        # session, which `undo` destroys them through
        public = raw.RawObject(ts.session, path, int(made.public.handle))
        private = raw.RawObject(ts.session, path, int(made.private.handle))
        new_label = plan.label if not plan.label_generated and plan.label != made.label else None
        pair = KeyPair(public, private, made.spki, made.key_id, new_label or made.label, True)

        def finish() -> KeyIntent:
            self._wait(spare)  # its thread is still recording the final CKA_ID in the intent
            if spare.error is not None or spare.intent is None:
                raise TokenOperationError(f"the new key's CKA_ID could not be recorded: {spare.error}")
            # the final CKA_ID and the KeyContainer's label, one call per half
            if not finish_key_pair(pair, new_label):
                raise TokenOperationError(f"token '{ts.handle.label}' refused the new key's CKA_ID or label")
            return spare.intent

        return TakenSpare(pair, spare.intent, finish)

    def _make(self, ts: TokenSession, plan: KeyPlan, store: IntentStore) -> None:
        key = (ts.handle.module.path, ts.handle.slot_id)
        if not poolable(plan) or key in self._spares:
            return
        session = self._sessions.get(key)
        if session is None:
            opened = raw.Session.open_on(ts.handle.module.path, ts.handle.slot_id, rw=True)  # logged in: the token's
            session = self._sessions[key] = TokenSession(ts.handle, opened, logged_in=True, rw=True)
        reserved = self._reserved.pop(key, None)
        if reserved is not None and reserved[0].path != store.path:  # another state directory
            self._reserved[key] = reserved
            reserved = None
        spare = Spare(shape(plan), store, key, intent=reserved[1] if reserved else None)
        self._spares[key] = spare
        threading.Thread(
            target=self._generate, args=(spare, session, plan), name="tokenagent-spare-key", daemon=True
        ).start()
        # the intent of the spare after this one, recorded while this one is generated: the
        # generation need not wait for a commit of its own (a reserved intent with no objects
        # is ended by `close`, or by recovery after a crash)
        if key not in self._reserved:
            self._reserved[key] = (store, begin_intent(ts, store))

    def _close(self) -> None:
        spares, self._spares = list(self._spares.values()), {}
        for spare in spares:
            self._wait(spare)
            self._discard(spare)
        reserved, self._reserved = list(self._reserved.values()), {}
        for store, intent in reserved:
            try:
                store.end(intent.id)  # no generation started under it
            except TokenAgentError as exc:
                log.warning("unused key intent %s not removed (%s): recovery ends it", intent.id, exc.one_line())
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()

    # -- in the spare's thread --------------------------------------------------------------------

    @staticmethod
    def _generate(spare: Spare, ts: TokenSession, plan: KeyPlan) -> None:
        try:
            if spare.intent is None:
                spare.intent = begin_intent(ts, spare.store)
            label, temporary_id = spare.intent.key_label, bytes.fromhex(spare.intent.temporary_id)
            intent_id = spare.intent.id

            spare.pair = generate_key_pair(
                ts,
                key_type=plan.key_type,
                generation_mechanism=plan.generation_mechanism,
                public_template={**plan.public_template, "CKA_LABEL": label},
                private_template={**plan.private_template, "CKA_LABEL": label},
                temporary_id=temporary_id,
                defer_id=True,  # set by the request that takes it, with its label (`TakenSpare.finish`)
            )
            spare.ready.set()  # the request can build and sign its request meanwhile
            spare.store.note_key_id(intent_id, spare.pair.key_id)  # before the ID is set on the objects
            spare.intent = replace(spare.intent, key_id=spare.pair.key_id.hex())
        except BaseException as exc:  # reported to `take`, which generates the key itself
            spare.error = exc
        finally:
            spare.ready.set()
            spare.done.set()

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _wait(spare: Spare, event: threading.Event | None = None) -> None:
        """Until ``event`` (by default: the generation's end) is set."""
        while not (event or spare.done).wait(0.5):
            pass

    def _discard(self, spare: Spare) -> None:
        """Destroy what the spare made (found by its intent's CKA_IDs, as `new`'s undo does) and end
        its intent; what cannot be destroyed keeps the intent open, for recovery."""
        session = self._sessions.get(spare.token)  # (open from `make` until `close` has discarded every spare)
        if spare.intent is None or session is None:
            return
        try:
            objects = intent_objects(session, spare.intent)
            problems = destroy_objects(objects, what="spare key pair") if objects else []
            if problems:
                log.warning("spare key pair not removed: its intent stays open for recovery")
            else:
                spare.store.end(spare.intent.id)
        except Exception as exc:  # the token may be gone: its intent stays for the next run's recovery
            log.warning("spare key pair not removed (%s): its intent stays open for recovery", exc)
