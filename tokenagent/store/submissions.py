"""What a CA said about a pending request: the CA, its cookie, when to ask again, its answer.

One row per pending request that was sent to a CA (or is to be: ``unsubmitted``), in the state
database beside the request, and deleted with it (`PendingStore.delete`). `enroll --resume` and
`retrieve` read these rows to finish what a run left pending. A row holds the CA configuration
(`config`, and the resolved profile as JSON text opaque to the store) and never a password.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokenagent.errors import InputError
from tokenagent.store.database import PENDING_TABLE, SUBMISSION_TABLE, StateDatabase

#: unsubmitted: recorded, not yet sent (a run that died before the CA answered leaves this);
#: pending: the CA holds it; unreachable / garbled: no usable answer, ask again; rejected,
#: misconfigured, needs-rekey: the CA or the configuration said no; unverified: an answer whose
#: signature did not verify; issued: the certificate is here, not yet installed.
STATES = (
    "unsubmitted",
    "pending",
    "unreachable",
    "garbled",
    "rejected",
    "misconfigured",
    "needs-rekey",
    "unverified",
    "issued",
)
#: The states `enroll --resume` asks the CA about again without being told to.
RESUMABLE = ("unsubmitted", "pending", "unreachable", "garbled", "issued")


@dataclass(frozen=True)
class CaSubmission:
    pending_id: int
    config: str  # --config as given: a CA URL or a cas.toml profile name
    profile_json: str  # the resolved CA profile (no secret), JSON text
    state: str  # one of STATES
    cookie: str | None = None  # what the connector needs to ask again
    ca_request_id: str | None = None  # the CA's ID for the request, as people quote it
    retry_after: datetime | None = None  # UTC
    message: str | None = None  # the CA's last words
    attempts: int = 0
    updated: datetime = field(default_factory=lambda: datetime.now(UTC))
    response: bytes | None = field(default=None, repr=False)  # the CA's answer once issued

    def due(self, now: datetime | None = None) -> bool:
        return self.retry_after is None or self.retry_after <= (now or datetime.now(UTC))

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "state": self.state,
            "ca_request_id": self.ca_request_id,
            "retry_after": self.retry_after.isoformat() if self.retry_after else None,
            "message": self.message,
            "attempts": self.attempts,
            "updated": self.updated.isoformat(),
            "response_held": self.response is not None,
        }


_COLUMNS = tuple(item.name for item in fields(CaSubmission))
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM {SUBMISSION_TABLE}"


def upsert_statement() -> str:
    names = ", ".join(_COLUMNS)
    values = ", ".join(f":{name}" for name in _COLUMNS)
    updates = ", ".join(f"{name} = excluded.{name}" for name in _COLUMNS if name != "pending_id")
    return f"INSERT INTO {SUBMISSION_TABLE} ({names}) VALUES ({values}) ON CONFLICT(pending_id) DO UPDATE SET {updates}"


def row_of(submission: CaSubmission) -> dict[str, Any]:
    if submission.state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, not {submission.state!r}")
    row = {name: getattr(submission, name) for name in _COLUMNS}
    row["retry_after"] = submission.retry_after.isoformat() if submission.retry_after else None
    row["updated"] = submission.updated.isoformat()
    return row


class SubmissionStore:
    """The CA rows of one state database (the same file as its `PendingStore`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.database = StateDatabase(self.path)

    def save(self, submission: CaSubmission) -> CaSubmission:
        """Insert or replace the row of ``submission.pending_id`` (which must be a pending request)."""
        saved = replace(submission, updated=datetime.now(UTC))
        with self.database.writing() as connection:
            exists = connection.execute(
                f"SELECT 1 FROM {PENDING_TABLE} WHERE id = ?", (submission.pending_id,)
            ).fetchone()
            if exists is None:
                gone = f"pending request {submission.pending_id} is gone from {self.path} (accepted or deleted?)"
                raise InputError(gone)
            connection.execute(upsert_statement(), row_of(saved))
        return saved

    def get(self, pending_id: int) -> CaSubmission | None:
        found = self._select("WHERE pending_id = ?", (pending_id,))
        return found[0] if found else None

    def all(self) -> dict[int, CaSubmission]:
        return {item.pending_id: item for item in self._select("ORDER BY pending_id", ())}

    def find_by_ca_request_id(self, ca_request_id: str) -> builtins.list[CaSubmission]:
        return self._select("WHERE ca_request_id = ? ORDER BY pending_id", (ca_request_id,))

    def _select(self, where: str, parameters: tuple[object, ...]) -> builtins.list[CaSubmission]:
        if not self.database.exists():
            return []
        with self.database.reading() as (connection, version):
            if version < 3:
                return []
            rows = connection.execute(f"{_SELECT} {where}", parameters).fetchall()
        return [self._from_row(row) for row in rows]

    def _from_row(self, row: tuple[Any, ...]) -> CaSubmission:
        values = dict(zip(_COLUMNS, row, strict=True))
        try:
            values["updated"] = _utc(values["updated"])
            values["retry_after"] = _utc(values["retry_after"]) if values["retry_after"] else None
            if values["response"] is not None:
                values["response"] = bytes(values["response"])
            if values["state"] not in STATES:
                raise ValueError(f"unknown state {values['state']!r}")
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"pending store {self.path} has a damaged CA record for request {values['pending_id']} ({exc})"
            ) from exc
        return CaSubmission(**values)


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("a time without time zone")
    return value.astimezone(UTC)
