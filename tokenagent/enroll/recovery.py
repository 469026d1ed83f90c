"""Recovery after a `new` that died between C_GenerateKeyPair and its pending record.

The intent it left (store/intents.py) names the CKA_IDs its objects can carry: the temporary one
of the generation template and, once known, the final one. With the token's lock held
(store/locks.py) no other `new` is running on the token, so every open intent for it belongs to a
dead run: its objects are found by those CKA_IDs and destroyed, and the intent ends. Empty key
objects that a token wrote before the template (`token.keys.empty_key_objects`) go with them.
The caller holds the lock and a logged-in read-write session (private keys are private objects).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenagent.display import escape
from tokenagent.errors import TokenAgentError
from tokenagent.store.discarded import DiscardedKeys
from tokenagent.store.intents import IntentStore, KeyIntent
from tokenagent.store.locks import token_lock
from tokenagent.store.pending import PendingStore
from tokenagent.token.implementations import LEAVES_HUSKS
from tokenagent.token.keypairs import empty_key_objects, objects_with_id
from tokenagent.token.library import find_token, modules_for, recorded_token, select_token
from tokenagent.token.objects import destroy_objects
from tokenagent.token.session import TokenSession, open_session
from tokenagent.token.target import ANY_TOKEN, TokenTarget
from tokenagent.token.tokeninfo import piv_slots

log = logging.getLogger("tokenagent")


@dataclass(frozen=True)
class Recovered:
    """One interrupted generation and what recovery did about it."""

    intent: KeyIntent
    objects_removed: int
    problems: tuple[str, ...]  # objects that could not be destroyed: the intent stays open

    @property
    def complete(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        intent = self.intent
        what = (
            f"an interrupted `new` (KeyContainer '{escape(intent.key_label)}', started "
            f"{intent.created:%Y-%m-%d %H:%M:%S}Z by process {intent.pid})"
        )
        if self.problems:
            return f"{what}: {len(self.problems)} object(s) could not be removed; the next run tries again"
        if self.objects_removed:
            return f"{what}: removed {self.objects_removed} object(s) it left on the token"
        return f"{what}: it had created nothing on the token"

    def to_json(self) -> dict[str, object]:
        return {
            "intent": self.intent.to_json(),
            "objects_removed": self.objects_removed,
            "complete": self.complete,
            "problems": list(self.problems),
        }


def intent_objects(session: TokenSession, intent: KeyIntent) -> list[Any]:
    """Every object on the token that carries one of the intent's CKA_IDs."""
    return [obj for object_id in intent.object_ids() for obj in objects_with_id(session, object_id)]


def recover_interrupted(
    session: TokenSession,
    store_path: Path,
    *,
    thorough: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> Recovery:
    """Remove what every open intent for this token left behind, and any empty key object (the
    caller holds the token lock). The whole token is scanned for attribute-less objects when an
    intent is open, or with ``thorough`` (`tokenagent pending --recover`)."""
    handle = session.handle
    warn = on_warning or (lambda message: log.info("%s", message))
    # Empty key objects are looked for whether or not an intent is open: SoftHSM can make a key
    # object valid only when another process next writes the token, after that process has
    # already recovered the intent of the run that died (seen in the SIGKILL test). Only on tokens
    # whose store can hold such husks: NSS (SQLite transactions), tpm2-pkcs11 and smart cards
    # write an object whole or not at all, and on a card each search costs APDUs (issue 15).
    intents = IntentStore(store_path)
    found = intents.open_intents(token_serial=handle.serial, token_label=handle.label)
    scan = thorough or bool(found) or handle.implementation in LEAVES_HUSKS
    husks = empty_key_objects(session, thorough=thorough or bool(found)) if scan else []
    problems = destroy_objects(husks, what="empty key objects") if husks else []
    if husks:
        warn(
            f"token '{escape(handle.label)}': removed {len(husks) - len(problems)} empty key object(s) (no CKA_ID, "
            "no label, no key) that a process killed inside key generation left"
        )
    results = [_recover(session, intents, intent, warn if on_warning else None) for intent in found]
    return Recovery(tuple(results), len(husks) - len(problems))


@dataclass(frozen=True)
class Recovery:
    """What recovery did on one token: the interrupted generations, and empty key objects removed."""

    recovered: tuple[Recovered, ...]
    empty_objects_removed: int


def _recover(
    session: TokenSession, intents: IntentStore, intent: KeyIntent, on_warning: Callable[[str], None] | None
) -> Recovered:
    handle = session.handle
    if intent.key_id and PendingStore(intents.path).find_by_key(handle.serial, intent.key_id):
        # a request explains the key (cannot happen: recording it ends the intent in one transaction)
        objects = objects_with_id(session, bytes.fromhex(intent.temporary_id))
    else:
        objects = intent_objects(session, intent)
    slot_keys = piv_slots(session).keys if handle.is_piv and objects else {}
    problems = destroy_objects(objects, what=f"interrupted generation {intent.id}") if objects else []
    if not problems:
        # a PIV card keeps the key bits: the slot's key is recorded as discarded, so it can be reused
        for object_id in intent.object_ids():
            if object_id in slot_keys:
                DiscardedKeys(intents.path).add(handle.serial, object_id, slot_keys[object_id])
        intents.end(intent.id)
    result = Recovered(intent, len(objects) - len(problems), tuple(problems))
    message = f"token '{escape(handle.label)}': {result.describe()}"
    if on_warning is not None and (objects or problems):
        on_warning(message)
    else:
        log.info("%s", message)
    return result


@dataclass(frozen=True)
class TokenRecovery:
    """`tokenagent pending --recover` for one token."""

    token_label: str
    token_serial: str
    recovered: tuple[Recovered, ...]
    empty_objects_removed: int

    def to_json(self) -> dict[str, object]:
        return {
            "token": {"label": self.token_label, "serial": self.token_serial},
            "recovered": [r.to_json() for r in self.recovered],
            "empty_objects_removed": self.empty_objects_removed,
        }


@dataclass(frozen=True)
class RecoveryResult:
    """`tokenagent pending --recover`: what was done on each token."""

    store: Path
    tokens: tuple[TokenRecovery, ...]

    def to_json(self) -> dict[str, object]:
        return {"format_version": 1, "store": str(self.store), "tokens": [t.to_json() for t in self.tokens]}


def recover_tokens(
    store_path: Path,
    *,
    target: TokenTarget = ANY_TOKEN,
    on_warning: Callable[[str], None] | None = None,
) -> RecoveryResult:
    """Recover the interrupted generations recorded in ``store_path``: on the token ``target``
    selects, or else on each token that an open intent names (found by its serial number)."""
    modules = target.modules
    if target.selector is not None:
        handles = [find_token(target.selector, modules)]
    else:
        wanted = {(i.token_serial, i.token_label): i.module_path for i in IntentStore(store_path).open_intents()}
        handles = []
        for (serial, label), module_path in wanted.items():
            selector = recorded_token(label, serial)
            try:
                handles.append(select_token(selector, modules_for(list(modules) or [module_path], selector)))
            except TokenAgentError as exc:
                raise type(exc)(
                    f"an interrupted `new` left objects on token '{escape(label)}' (serial {serial}), which "
                    f"cannot be opened now: {exc.one_line()}"
                ) from None
    results = []
    for handle in handles:
        with (
            token_lock(store_path.parent, handle.serial, handle.label, on_wait=on_warning),
            open_session(
                handle, login=True, pin_source=target.pin_source, rw=True, force=target.force, on_warning=on_warning
            ) as session,
        ):
            recovery = recover_interrupted(session, store_path, thorough=True)  # the caller reports
        results.append(TokenRecovery(handle.label, handle.serial, recovery.recovered, recovery.empty_objects_removed))
    return RecoveryResult(store_path, tuple(results))
