"""The pending-request store: each request `tokenagent new` makes, so `accept` can find its key.

Like certreq's pending requests (the Windows REQUEST store). One SQLite file per context, written
in single transactions with the default rollback journal and synchronous=FULL; no WAL, so the
store stays one file that can be copied or backed up. Connections are opened per operation and
closed again, and every failure of the file becomes an InputError or OutputError naming it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import string
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokenagent.errors import InputError, ObjectNotFoundError, OutputError, TokenAgentError

#: Stored in PRAGMA user_version; raise it (and migrate) whenever the table changes.
SCHEMA_VERSION = 1
REQUEST_TYPES = ("PKCS10", "CMC", "PKCS7")
#: How long to wait for another tokenagent process that holds the database lock.
BUSY_TIMEOUT_SECONDS = 5.0

_TABLE = "pending_requests"
_SCHEMA = (
    # AUTOINCREMENT, so the ID of a deleted request is never handed out again: an ID someone
    # wrote down must not come to mean a different request.
    f"""CREATE TABLE IF NOT EXISTS {_TABLE} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created TEXT NOT NULL,
        request_sha256 TEXT NOT NULL,
        request_der BLOB NOT NULL,
        request_type TEXT NOT NULL,
        subject TEXT NOT NULL,
        token_label TEXT NOT NULL,
        token_serial TEXT NOT NULL,
        token_model TEXT NOT NULL,
        module_path TEXT NOT NULL,
        key_id TEXT NOT NULL,
        key_label TEXT NOT NULL,
        public_key_sha256 TEXT NOT NULL,
        key_generated INTEGER NOT NULL CHECK (key_generated IN (0, 1)),
        friendly_name TEXT,
        policy_file TEXT NOT NULL,
        policy_json TEXT NOT NULL,
        machine INTEGER NOT NULL CHECK (machine IN (0, 1))
    )""",
    f"CREATE INDEX IF NOT EXISTS {_TABLE}_public_key ON {_TABLE} (public_key_sha256)",
    f"CREATE INDEX IF NOT EXISTS {_TABLE}_request ON {_TABLE} (request_sha256)",
)


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
    """The pending requests in one SQLite file. Nothing is created before the first add()."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def add(self, record: NewPending) -> PendingRequest:
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
        self._prepare_file()
        with self._transaction(write=True) as connection:
            if not self._check_schema(connection):
                for statement in _SCHEMA:
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            columns = ("created", *_NEW_COLUMNS)
            cursor = connection.execute(
                f"INSERT INTO {_TABLE} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})",
                row,
            )
            request_id = cursor.lastrowid
        assert request_id is not None
        return PendingRequest(id=request_id, created=created, **values)

    def list(self) -> list[PendingRequest]:
        return self._select("ORDER BY id", ())

    def get(self, request_id: int) -> PendingRequest:
        found = self._select("WHERE id = ?", (request_id,))
        if not found:
            raise self._not_found(request_id)
        return found[0]

    def find_by_public_key(self, public_key_sha256: str) -> list[PendingRequest]:
        return self._select("WHERE public_key_sha256 = ? ORDER BY id", (public_key_sha256.lower(),))

    def find_by_request(self, request_sha256: str) -> list[PendingRequest]:
        return self._select("WHERE request_sha256 = ? ORDER BY id", (request_sha256.lower(),))

    def delete(self, request_id: int) -> PendingRequest:
        if not self._exists():
            raise self._not_found(request_id)
        with self._transaction(write=True) as connection:
            if not self._check_schema(connection):
                raise self._not_found(request_id)
            rows = connection.execute(f"{_SELECT} WHERE id = ?", (request_id,)).fetchall()
            if not rows:
                raise self._not_found(request_id)
            record = self._from_row(rows[0])
            connection.execute(f"DELETE FROM {_TABLE} WHERE id = ?", (request_id,))
        return record

    # -- the file ---------------------------------------------------------------------------

    def _exists(self) -> bool:
        try:
            os.stat(self.path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise InputError(f"cannot read pending store {self.path}: {exc.strerror or exc}") from exc
        return True

    def _prepare_file(self) -> None:
        """Make the directory (0700) and an empty database file (0600) before SQLite opens it.

        SQLite would create the file with 0644 less the umask; creating it ourselves leaves no
        moment in which the store is readable by others. An empty file is a valid empty database.
        """
        directory = self.path.parent
        missing: list[Path] = []
        level = directory
        while not level.is_dir() and level != level.parent:
            missing.append(level)
            level = level.parent
        try:
            # Level by level rather than mkdir(parents=True), which gives the parents the umask's
            # mode: each directory made is owner-only (as XDG asks), and a umask that drops the
            # owner's write bit cannot stop the next level.
            for level in reversed(missing):
                try:
                    level.mkdir(mode=0o700)
                except FileExistsError:
                    continue  # another tokenagent process was first; it sets the mode
                os.chmod(level, 0o700)
        except OSError as exc:
            raise OutputError(f"cannot create state directory {directory}: {exc.strerror or exc}") from exc
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise OutputError(f"cannot create pending store {self.path}: {exc.strerror or exc}") from exc
        try:
            os.fchmod(fd, 0o600)  # a restrictive umask must not leave the owner unable to write
        finally:
            os.close(fd)
        try:
            # The new directory entry must survive a crash as surely as the rows SQLite syncs.
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise OutputError(f"cannot write state directory {directory}: {exc.strerror or exc}") from exc

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One connection and one transaction; committed on success, rolled back on any error."""
        # Reads open the file writable when they may, so SQLite can roll back the hot journal
        # that a crashed writer left behind; read-only it would refuse to read at all.
        mode = "rw" if write or os.access(self.path, os.W_OK) else "ro"
        uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode={mode}"
        try:
            # isolation_level=None: we issue BEGIN ourselves, so schema creation is transactional.
            connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._failure(exc, write) from exc
        try:
            connection.execute("PRAGMA synchronous = FULL")
            with connection:
                # IMMEDIATE takes the write lock up front, so two writers queue on the busy
                # timeout instead of one failing at once when both try to upgrade a read lock.
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield connection
        except sqlite3.Error as exc:
            raise self._failure(exc, write) from exc
        finally:
            connection.close()

    def _check_schema(self, connection: sqlite3.Connection) -> bool:
        """True if the store has its table, False if the database is still empty; else InputError."""
        self._check_size(connection)
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        tables = sorted(
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not name.startswith("sqlite_")  # SQLite's own, e.g. AUTOINCREMENT's sqlite_sequence
        )
        if version == 0 and not tables:
            return False
        if version > SCHEMA_VERSION and _TABLE in tables:
            raise InputError(
                f"pending store {self.path} has schema version {version}, newer than the {SCHEMA_VERSION} "
                "this tokenagent understands; use a newer tokenagent"
            )
        if version == SCHEMA_VERSION and _TABLE in tables:
            columns = {row[1] for row in connection.execute(f"PRAGMA table_info({_TABLE})")}
            if columns == set(_COLUMNS):
                return True
            raise self._foreign(f"table {_TABLE} has columns {', '.join(sorted(columns))}")
        listed = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise self._foreign(f"schema version {version}, tables: {listed or 'none'}")

    def _check_size(self, connection: sqlite3.Connection) -> None:
        """Catch a file cut inside its last page, which SQLite itself reads as zeros."""
        if connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            return  # the newest pages may live in the -wal file; not a layout tokenagent writes
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        page_count = connection.execute("PRAGMA page_count").fetchone()[0]
        size = os.stat(self.path).st_size
        # An empty file is an empty database (a write transaction already counts it as one page).
        # SQLite also reads a 1-byte file as empty, but tokenagent never writes one: it is damage.
        expected = page_size * max(page_count, 1)
        if 0 < size < expected:
            raise self._foreign(f"truncated to {size} of {expected} bytes")

    def _select(self, where: str, parameters: tuple[object, ...]) -> list[PendingRequest]:
        if not self._exists():
            return []
        with self._transaction(write=False) as connection:
            if not self._check_schema(connection):
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

    # -- errors -----------------------------------------------------------------------------

    def _not_found(self, request_id: int) -> ObjectNotFoundError:
        return ObjectNotFoundError(f"no pending request with ID {request_id} in {self.path}")

    def _foreign(self, detail: str) -> InputError:
        return InputError(f"pending store {self.path} is not a tokenagent database ({detail})")

    def _failure(self, exc: sqlite3.Error, writing: bool) -> TokenAgentError:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code, without the extended bits
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_FORMAT):
            return self._foreign(str(exc))
        error = OutputError if writing else InputError
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return error(
                f"pending store {self.path} is locked by another process (waited {BUSY_TIMEOUT_SECONDS:g} s); try again"
            )
        return error(f"cannot {'write' if writing else 'read'} pending store {self.path}: {exc}")


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
