"""Pending requests: list them, delete one, and optionally the key pair made for it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tokenagent.errors import KeyMismatchError, ObjectNotFoundError, TokenOperationError, UsageError
from tokenagent.store.intents import IntentStore, KeyIntent
from tokenagent.store.paths import pending_db_path
from tokenagent.store.pending import PendingRequest, PendingStore
from tokenagent.store.submissions import CaSubmission, SubmissionStore
from tokenagent.token.keypairs import key_pair_objects
from tokenagent.token.library import modules_for, recorded_token, select_token
from tokenagent.token.objects import destroy_objects, public_key_info
from tokenagent.token.session import open_session
from tokenagent.token.target import ANY_TOKEN, TokenTarget


def pending_store(machine: bool = False, state_dir: Path | None = None) -> PendingStore:
    return PendingStore(pending_db_path(machine, state_dir))


@dataclass(frozen=True)
class Deleted:
    record: PendingRequest
    key_objects_deleted: int  # 0 unless --with-key

    def to_json(self) -> dict[str, object]:
        return {"format_version": 1, "deleted": self.record.to_json(), "key_objects_deleted": self.key_objects_deleted}


@dataclass(frozen=True)
class PendingListing:
    """The pending requests of one store, and the key generations that never finished."""

    store: Path
    records: tuple[PendingRequest, ...]
    interrupted: tuple[KeyIntent, ...]
    #: what the CA said about each request sent to one (by pending ID)
    submissions: dict[int, CaSubmission] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        pending = []
        for record in self.records:
            submission = self.submissions.get(record.id)
            pending.append({**record.to_json(), "ca": submission.to_json() if submission else None})
        return {
            "format_version": 1,
            "store": str(self.store),
            "pending": pending,
            "interrupted": [intent.to_json() for intent in self.interrupted],
        }


def list_pending(store: PendingStore) -> PendingListing:
    return PendingListing(
        store.path,
        tuple(store.list()),
        tuple(IntentStore(store.path).open_intents()),
        SubmissionStore(store.path).all(),
    )


def delete_pending(
    store: PendingStore,
    request_id: int,
    *,
    with_key: bool = False,
    target: TokenTarget = ANY_TOKEN,
    on_warning: Callable[[str], None] | None = None,
) -> Deleted:
    """Remove a pending record; with ``with_key`` first delete its key pair from the token it was
    made on (found by serial, then checked by public key so no other key can be hit)."""
    record = store.get(request_id)
    deleted = 0
    if with_key:
        if not record.key_generated:
            raise UsageError(
                f"pending request {request_id} reused an existing key (UseExistingKeySet); "
                "tokenagent does not delete keys it did not create"
            )
        deleted = _delete_key(record, target, on_warning)
    store.delete(request_id)
    return Deleted(record, deleted)


def _delete_key(record: PendingRequest, target: TokenTarget, on_warning: Callable[[str], None] | None) -> int:
    """The token is the record's (by serial, through its module unless ``target`` names modules)."""
    selector = recorded_token(record.token_label, record.token_serial)
    handle = select_token(selector, modules_for(list(target.modules) or [record.module_path], selector))
    key_id = bytes.fromhex(record.key_id)
    with open_session(
        handle, login=True, pin_source=target.pin_source, rw=True, force=target.force, on_warning=on_warning
    ) as ts:
        objects = []
        for obj in key_pair_objects(ts, key_id):
            spki = public_key_info(obj, ts.session)
            if spki is not None and hashlib.sha256(spki).hexdigest() == record.public_key_sha256:
                objects.append(obj)
            elif spki is not None:
                raise KeyMismatchError(
                    f"token '{handle.label}': the key with CKA_ID {record.key_id} is not the key of pending "
                    f"request {record.id}; nothing deleted"
                )
        if not objects:
            raise ObjectNotFoundError(
                f"token '{handle.label}': the key pair of pending request {record.id} (CKA_ID {record.key_id}) "
                "is not there any more; delete the record without --with-key"
            )
        problems = destroy_objects(objects, what=f"key pair of pending request {record.id}")
        if problems:
            raise TokenOperationError("; ".join(problems))
        return len(objects)
