"""The enrollment journal: an append-only SQLite record of every enrollment attempt.

One file, ``journal.sqlite3``, in the state directory beside the pending store (store/paths.py).
It holds *events*, never mutable rows: each step of an attempt (key, request, submit, accept) is
written when it starts and again when it is done or has failed, each in its own committed
transaction (synchronous=FULL), so a process killed in the middle of a step leaves a "started"
event with no end: the trace of what it was doing. SQLite triggers refuse every UPDATE and DELETE
of an event, so past events stay as written by whoever opens the file through SQLite.

What an event holds: the time, the attempt it belongs to (all events of one enrollment share an
attempt ID), the batch run, the operator (the enrollment agent's certificate), the user or the CSV
row, the reader and the card's ATR, the token's label and serial, the key's CKA_ID, the request's
SHA-256, the CA and its request ID, the certificate's serial, and for a failed step the one-line
error and exit code. Never a PIN: no field takes one, and the fields are named, not free-form.

    journal = Journal.open(path)
    with journal.attempt(user="ada", reader=reader, atr=atr) as attempt:
        with attempt.step("key"):
            ...
            attempt.note(key_id=key_id.hex())   # carried by this and every later event
        with attempt.step("request"):
            ...

The station (card events) and `tokenagent batch` write through this API; `tokenagent journal`
reads it.
"""

from __future__ import annotations

import os
import re
import sqlite3
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokenagent.errors import InputError, Interrupted, OutputError, TokenAgentError, UsageError, one_line
from tokenagent.store.database import BUSY_TIMEOUT_SECONDS, ensure_private_directory
from tokenagent.store.paths import pending_db_path

JOURNAL_DB_NAME = "journal.sqlite3"
#: PRAGMA user_version of the journal file (its own numbering: the pending store's is separate)
JOURNAL_SCHEMA_VERSION = 1
TABLE = "journal_events"

STEPS = ("pin", "key", "request", "submit", "accept", "attempt")  # pin: the station set a blank card's user PIN
STATUSES = ("started", "done", "failed", "skipped")

#: The context fields an event may carry, in column order (besides id, time, attempt, step, status).
FIELDS = (
    "batch",  # the batch run's ID (tokenagent batch), or the station session's
    "source",  # where the item came from: "hosts.csv:7", "prompt"
    "row_key",  # batch: SHA-256 over the INF, the CSV row, the token and the output directory
    "user",  # the user name, or the batch row's name
    "operator",  # the enrollment agent's certificate: subject and SHA-256
    "reader",
    "atr",
    "token_label",
    "token_serial",
    "key_id",  # hex CKA_ID
    "request_sha256",  # the request's fingerprint: SHA-256 of its DER
    "output",  # the request file written
    "ca",
    "ca_request_id",
    "certificate_serial",  # hex
    "message",  # a note ("recovered after an interrupted run", "already done")
    "error",  # a failed step: the one-line error
    "exit_code",  # a failed step: the exit code it maps to (docs/exit-codes.md)
)
_COLUMNS = ("id", "time", "attempt", "step", "status", *FIELDS, "pid")

_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time TEXT NOT NULL,
        attempt TEXT NOT NULL,
        step TEXT NOT NULL CHECK (step IN ({", ".join(repr(s) for s in STEPS)})),
        status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
        batch TEXT, source TEXT, row_key TEXT, user TEXT, operator TEXT, reader TEXT, atr TEXT,
        token_label TEXT, token_serial TEXT, key_id TEXT, request_sha256 TEXT, output TEXT,
        ca TEXT, ca_request_id TEXT, certificate_serial TEXT, message TEXT, error TEXT, exit_code INTEGER,
        pid INTEGER NOT NULL
    )""",
    # events, not rows: what was written stays written (a RAISE aborts the statement)
    f"""CREATE TRIGGER IF NOT EXISTS {TABLE}_no_update BEFORE UPDATE ON {TABLE}
        BEGIN SELECT RAISE(ABORT, 'the enrollment journal is append-only: events cannot be changed'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS {TABLE}_no_delete BEFORE DELETE ON {TABLE}
        BEGIN SELECT RAISE(ABORT, 'the enrollment journal is append-only: events cannot be deleted'); END""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_row_key ON {TABLE} (row_key)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_time ON {TABLE} (time)",
)


def journal_path(machine: bool = False, state_dir: Path | None = None) -> Path:
    """The journal beside the pending store of the same context (user or machine)."""
    return pending_db_path(machine, state_dir).parent / JOURNAL_DB_NAME


def timestamp(moment: datetime | None = None) -> str:
    """UTC, fixed width, so that text order is time order (``--since`` compares text)."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class JournalEvent:
    id: int
    time: str  # UTC, ISO 8601 with microseconds and Z
    attempt: str
    step: str
    status: str
    fields: dict[str, Any]  # the context fields that are set (see FIELDS)
    pid: int

    def get(self, name: str) -> Any:
        return self.fields.get(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "attempt": self.attempt,
            "step": self.step,
            "status": self.status,
            **{name: self.fields.get(name) for name in FIELDS},
            "pid": self.pid,
        }


def error_fields(exc: BaseException) -> dict[str, Any]:
    """What a failed step records about its error: one line and the exit code, nothing else."""
    if isinstance(exc, TokenAgentError):
        return {"error": exc.one_line(), "exit_code": exc.exit_code}
    if isinstance(exc, KeyboardInterrupt):
        return {"error": "interrupted", "exit_code": Interrupted.exit_code}
    return {"error": one_line(f"{type(exc).__name__}: {exc}"), "exit_code": 1}


class Journal:
    """The journal file. Nothing is created before the first event; every call opens and closes
    its own connection, so threads and processes may share one journal."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def open(cls, path: Path | None = None, *, machine: bool = False) -> Journal:
        return cls(path if path is not None else journal_path(machine))

    # -- writing -------------------------------------------------------------------------------

    def event(self, step: str, status: str, *, attempt: str, **fields: Any) -> JournalEvent:
        """Append one event (committed and synced before this returns)."""
        return self.append([(step, status, attempt, fields)])[0]

    def append(self, events: list[tuple[str, str, str, dict[str, Any]]]) -> list[JournalEvent]:
        """Append several events (step, status, attempt, fields) in one transaction."""
        rows = []
        for step, status, attempt, fields in events:
            if step not in STEPS or status not in STATUSES:
                raise UsageError(f"journal: unknown step or status {step!r} {status!r}")
            unknown = set(fields) - set(FIELDS)
            if unknown:  # a programming error: the journal has named columns only, so no PIN slips in
                raise TypeError(f"journal: unknown fields {sorted(unknown)}")
            values = {name: _column_value(fields.get(name)) for name in FIELDS}
            rows.append((timestamp(), attempt, step, status, *values.values(), os.getpid()))
        placeholders = ", ".join("?" for _ in _COLUMNS[1:])
        written: list[JournalEvent] = []
        with self._transaction(write=True) as connection:
            for row in rows:
                cursor = connection.execute(
                    f"INSERT INTO {TABLE} ({', '.join(_COLUMNS[1:])}) VALUES ({placeholders})", row
                )
                assert cursor.lastrowid is not None
                written.append(_event((cursor.lastrowid, *row)))
        return written

    @contextmanager
    def attempt(self, attempt_id: str | None = None, **context: Any) -> Iterator[Attempt]:
        """One enrollment attempt; ``context`` fields go into each of its events. An error that
        escapes outside a step is recorded as a failed "attempt" event, then raised on."""
        current = Attempt(self, attempt_id or uuid.uuid4().hex, dict(context))
        try:
            yield current
        except BaseException as exc:
            if not current.failure_recorded:
                current.event("attempt", "failed", **error_fields(exc))
            raise

    # -- reading -------------------------------------------------------------------------------

    def events(
        self,
        *,
        since: str | None = None,
        card: str | None = None,
        user: str | None = None,
        batch: str | None = None,
        attempt: str | None = None,
        row_keys: list[str] | None = None,
    ) -> list[JournalEvent]:
        """Events in the order written; ``since`` is a `timestamp()` text; ``card`` a token serial."""
        if not self._exists():
            return []
        where: list[str] = []
        parameters: list[Any] = []
        for column, value in (
            ("time >= ?", since),
            ("token_serial = ?", card),
            ("user = ?", user),
            ("batch = ?", batch),
            ("attempt = ?", attempt),
        ):
            if value is not None:
                where.append(column)
                parameters.append(value)
        if row_keys is not None:
            if not row_keys:
                return []
            where.append(f"row_key IN ({', '.join('?' for _ in row_keys)})")
            parameters.extend(row_keys)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM {TABLE}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._transaction(write=False) as connection:
            if not _has_table(connection):
                return []
            return [_event(row) for row in connection.execute(sql + " ORDER BY id", parameters)]

    def progress(self, row_keys: list[str]) -> tuple[dict[str, dict[str, JournalEvent]], set[str]]:
        """For a batch re-run: row_key -> step -> the latest "done" event of that step, and the
        row keys with any event at all (rows an earlier run at least started)."""
        done: dict[str, dict[str, JournalEvent]] = {}
        seen: set[str] = set()
        for start in range(0, len(row_keys), 500):  # SQLite's limit on host parameters
            for event in self.events(row_keys=row_keys[start : start + 500]):
                key = event.fields["row_key"]
                seen.add(key)
                if event.status == "done":
                    done.setdefault(key, {})[event.step] = event
        return done, seen

    # -- the file --------------------------------------------------------------------------------

    def _exists(self) -> bool:
        try:
            return os.stat(self.path).st_size > 0
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise InputError(f"cannot read journal {self.path}: {exc.strerror or exc}") from exc

    def _create_file(self) -> None:
        """Directory 0700 and file 0600 before SQLite opens it (as store/database.py does)."""
        ensure_private_directory(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise OutputError(f"cannot create journal {self.path}: {exc.strerror or exc}") from exc
        os.close(fd)

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        if write:
            self._create_file()
        mode = "rw" if write or os.access(self.path, os.W_OK) else "ro"
        uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode={mode}"
        what = "write" if write else "read"
        error = OutputError if write else InputError
        try:
            connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except sqlite3.Error as exc:
            raise error(f"cannot {what} journal {self.path}: {exc}") from exc
        try:
            connection.execute("PRAGMA synchronous = FULL")
            with connection:
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                self._check(connection, write)
                yield connection
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                raise InputError(f"journal {self.path} is not a tokenagent journal ({exc})") from exc
            raise error(f"cannot {what} journal {self.path}: {exc}") from exc
        finally:
            connection.close()

    def _check(self, connection: sqlite3.Connection, write: bool) -> None:
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        tables = [name for name in tables if not name.startswith("sqlite_")]
        if version == 0 and not tables:
            if write:
                for statement in _SCHEMA:
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {JOURNAL_SCHEMA_VERSION}")
            return
        if version != JOURNAL_SCHEMA_VERSION or tables != [TABLE]:
            raise InputError(
                f"journal {self.path} is not a tokenagent journal (schema version {version}, "
                f"tables: {', '.join(tables) or 'none'})"
            )


class Attempt:
    """The events of one enrollment attempt; `note` adds context that later events carry."""

    def __init__(self, journal: Journal, attempt_id: str, context: dict[str, Any]) -> None:
        self.journal = journal
        self.id = attempt_id
        self.context = context
        self.failure_recorded = False

    def note(self, **fields: Any) -> None:
        self.context.update(fields)

    def event(self, step: str, status: str, **fields: Any) -> JournalEvent:
        if status == "failed":
            self.failure_recorded = True
        return self.journal.event(step, status, attempt=self.id, **{**self.context, **fields})

    def events(self, *steps: tuple[str, str]) -> list[JournalEvent]:
        """Several (step, status) events with the current context in one transaction."""
        return self.journal.append([(step, status, self.id, dict(self.context)) for step, status in steps])

    @contextmanager
    def step(self, name: str, **fields: Any) -> Iterator[Attempt]:
        """ "started" now; "done" when the block ends, or "failed" with the error it raises."""
        self.note(**fields)
        self.event(name, "started")
        try:
            yield self
        except BaseException as exc:
            self.event(name, "failed", **error_fields(exc))
            raise
        self.event(name, "done")


def _column_value(value: Any) -> Any:
    if value is None or isinstance(value, int | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _event(row: tuple[Any, ...]) -> JournalEvent:
    values = dict(zip(_COLUMNS, row, strict=True))
    fields = {name: values[name] for name in FIELDS if values[name] is not None}
    return JournalEvent(
        id=values["id"],
        time=values["time"],
        attempt=values["attempt"],
        step=values["step"],
        status=values["status"],
        fields=fields,
        pid=values["pid"],
    )


def _has_table(connection: sqlite3.Connection) -> bool:
    return (
        connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone()
        is not None
    )


_RELATIVE = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> str:
    """``--since``: an ISO date or date and time (UTC unless it says otherwise), or an age such as
    30m, 12h, 7d; returned as a `timestamp()` text to compare with."""
    from datetime import timedelta

    now = now or datetime.now(UTC)
    value = text.strip()
    match = re.fullmatch(r"(\d+)\s*([smhdw])", value)
    if match:
        return timestamp(now - timedelta(seconds=int(match.group(1)) * _RELATIVE[match.group(2)]))
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since {value!r}: give a date (2026-12-01), a date and time (2026-12-01T09:30) or an age (30m, 12h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return timestamp(moment)
