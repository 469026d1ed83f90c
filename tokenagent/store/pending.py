"""The pending-request store: each request `tokenagent new` makes, so `accept` can find its key.

Like certreq's pending requests (the Windows REQUEST store). The records live in the state
database (store/database.py), beside the key-generation intents (store/intents.py): recording a
request and closing the intent of the key it was made with is one transaction.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import string
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokenagent.errors import InputError, ObjectNotFoundError
from tokenagent.store.database import INTENT_TABLE, PENDING_TABLE, SCHEMA_VERSION, SUBMISSION_TABLE, StateDatabase
from tokenagent.store.submissions import CaSubmission, row_of, upsert_statement

__all__ = ["REQUEST_TYPES", "SCHEMA_VERSION", "NewPending", "PendingRequest", "PendingStore"]

REQUEST_TYPES = ("PKCS10", "CMC", "PKCS7")
_TABLE = PENDING_TABLE


@dataclass(frozen=True)
class NewPending:
    """A request to record; the store assigns `id` and `created`."""

    request_sha256: str  # hex SHA-256 of request_der (the request fingerprint)
    request_der: bytes = field(repr=False)
    request_type: str  # "PKCS10" | "CMC" | "PKCS7"
    subject: str
    token_label: str
    token_serial: str
    token_model: str
    module_path: str
    key_id: str  # hex CKA_ID of the key pair
    key_label: str  # CKA_LABEL (certreq's KeyContainer)
    public_key_sha256: str  # hex SHA-256 of the DER SubjectPublicKeyInfo
    key_generated: bool  # True: generated for this request, may be deleted with it; False: reused
    friendly_name: str | None
    policy_file: str
    policy_json: str  # the RequestPolicy as JSON text, opaque to the store
    machine: bool


@dataclass(frozen=True)
class PendingRequest:
    """A recorded request. Same fields as NewPending, after `id` and `created` (a test keeps them in step)."""

    id: int
    created: datetime  # UTC, timezone-aware
    request_sha256: str
    request_der: bytes = field(repr=False)
    request_type: str
    subject: str
    token_label: str
    token_serial: str
    token_model: str
    module_path: str
    key_id: str
    key_label: str
    public_key_sha256: str
    key_generated: bool
    friendly_name: str | None
    policy_file: str
    policy_json: str
    machine: bool

    def to_json(self) -> dict[str, object]:
        """Every field; request_der as base64 under "request_base64", created as ISO 8601."""
        result: dict[str, object] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "request_der":
                result["request_base64"] = base64.b64encode(value).decode("ascii")
            elif item.name == "created":
                result["created"] = value.isoformat()
            else:
                result[item.name] = value
        return result


_COLUMNS = tuple(item.name for item in fields(PendingRequest))
_NEW_COLUMNS = tuple(item.name for item in fields(NewPending))
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM {_TABLE}"


class PendingStore:
    """The pending requests in one state database. Nothing is created before the first add()."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.database = StateDatabase(self.path)

    def add(
        self, record: NewPending, *, completes: int | None = None, submission: CaSubmission | None = None
    ) -> PendingRequest:
        """Record ``record``; with ``completes``, the key-generation intent of that ID ends in the
        same transaction (the request now explains the key); with ``submission`` (its pending_id is
        ignored), the CA it is for is recorded in that transaction too (`tokenagent enroll`), so a
        run that dies before the CA answers leaves a request `enroll --resume` sends."""
        _check_new(record)
        created = datetime.now(UTC)
        values: dict[str, Any] = {name: getattr(record, name) for name in _NEW_COLUMNS}
        values["request_der"] = bytes(record.request_der)
        row = {
            **values,
            "created": created.isoformat(),
            "key_generated": int(record.key_generated),
            "machine": int(record.machine),
        }
        with self.database.writing() as connection:
            columns = ("created", *_NEW_COLUMNS)
            cursor = connection.execute(
                f"INSERT INTO {_TABLE} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})",
                row,
            )
            request_id = cursor.lastrowid
            assert request_id is not None
            if completes is not None:
                connection.execute(f"DELETE FROM {INTENT_TABLE} WHERE id = ?", (completes,))
            if submission is not None:
                connection.execute(upsert_statement(), row_of(replace(submission, pending_id=request_id)))
        return PendingRequest(id=request_id, created=created, **values)

    def list(self) -> builtins.list[PendingRequest]:
        return self._select("ORDER BY id", ())

    def get(self, request_id: int) -> PendingRequest:
        found = self._select("WHERE id = ?", (request_id,))
        if not found:
            raise self._not_found(request_id)
        return found[0]

    def find_by_public_key(self, public_key_sha256: str) -> builtins.list[PendingRequest]:
        return self._select("WHERE public_key_sha256 = ? ORDER BY id", (public_key_sha256.lower(),))

    def find_by_request(self, request_sha256: str) -> builtins.list[PendingRequest]:
        return self._select("WHERE request_sha256 = ? ORDER BY id", (request_sha256.lower(),))

    def find_by_key(self, token_serial: str, key_id: str) -> builtins.list[PendingRequest]:
        return self._select("WHERE token_serial = ? AND key_id = ? ORDER BY id", (token_serial, key_id.lower()))

    def delete(self, request_id: int) -> PendingRequest:
        if not self.database.exists():
            raise self._not_found(request_id)
        with self.database.writing() as connection:
            rows = connection.execute(f"{_SELECT} WHERE id = ?", (request_id,)).fetchall()
            if not rows:
                raise self._not_found(request_id)
            record = self._from_row(rows[0])
            connection.execute(f"DELETE FROM {_TABLE} WHERE id = ?", (request_id,))
            connection.execute(f"DELETE FROM {SUBMISSION_TABLE} WHERE pending_id = ?", (request_id,))
        return record

    def _select(self, where: str, parameters: tuple[object, ...]) -> builtins.list[PendingRequest]:
        if not self.database.exists():
            return []
        with self.database.reading() as (connection, version):
            if version == 0:
                return []
            rows = connection.execute(f"{_SELECT} {where}", parameters).fetchall()
        return [self._from_row(row) for row in rows]

    def _from_row(self, row: tuple[Any, ...]) -> PendingRequest:
        values = dict(zip(_COLUMNS, row, strict=True))
        try:
            created = datetime.fromisoformat(values["created"])
            if created.tzinfo is None:
                raise ValueError("created has no time zone")
            values.update(
                created=created.astimezone(UTC),
                request_der=bytes(values["request_der"]),
                key_generated=bool(values["key_generated"]),
                machine=bool(values["machine"]),
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"pending store {self.path} has a damaged record with ID {values['id']} ({exc})") from exc
        return PendingRequest(**values)

    def _not_found(self, request_id: int) -> ObjectNotFoundError:
        return ObjectNotFoundError(f"no pending request with ID {request_id} in {self.path}")


def _check_new(record: NewPending) -> None:
    """Catch a caller's mistake before it is stored; these are bugs, not user errors."""
    if record.request_type not in REQUEST_TYPES:
        raise ValueError(f"request_type must be one of {', '.join(REQUEST_TYPES)}, not {record.request_type!r}")
    for name in ("request_sha256", "public_key_sha256"):
        value = getattr(record, name)
        if len(value) != 64 or not _is_lower_hex(value):
            raise ValueError(f"{name} must be 64 lower-case hex digits")
    if not _is_lower_hex(record.key_id) or len(record.key_id) % 2:
        raise ValueError("key_id must be lower-case hex bytes")
    if hashlib.sha256(record.request_der).hexdigest() != record.request_sha256:
        raise ValueError("request_sha256 is not the SHA-256 of request_der")


def _is_lower_hex(value: str) -> bool:
    return all(char in string.hexdigits and not char.isupper() for char in value)
