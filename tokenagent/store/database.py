"""The state database file: one SQLite file per context (user or machine) holding the pending
requests, the key-generation intents and what CAs answered about the requests.

Written in single transactions with the default rollback journal and synchronous=FULL; no WAL, so
the store stays one file that can be copied or backed up. Connections are opened per operation and
closed again, except inside `kept_open` (a batch of `new` requests: three transactions each), and
every failure of the file becomes an InputError or OutputError naming it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tokenagent.errors import InputError, OutputError, TokenAgentError

#: Stored in PRAGMA user_version; raise it (and add a migration) whenever a table changes.
SCHEMA_VERSION = 4
#: How long to wait for another tokenagent process that holds the database lock.
BUSY_TIMEOUT_SECONDS = 5.0

PENDING_TABLE = "pending_requests"
INTENT_TABLE = "key_intents"
SUBMISSION_TABLE = "ca_submissions"
DISCARDED_TABLE = "piv_discarded_keys"

_PENDING_SCHEMA = (
    # AUTOINCREMENT, so the ID of a deleted request is never handed out again: an ID someone
    # wrote down must not come to mean a different request.
    f"""CREATE TABLE IF NOT EXISTS {PENDING_TABLE} (
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
    f"CREATE INDEX IF NOT EXISTS {PENDING_TABLE}_public_key ON {PENDING_TABLE} (public_key_sha256)",
    f"CREATE INDEX IF NOT EXISTS {PENDING_TABLE}_request ON {PENDING_TABLE} (request_sha256)",
)
_INTENT_SCHEMA = (
    # One row per key generation that has started and not yet ended (see store/intents.py).
    f"""CREATE TABLE IF NOT EXISTS {INTENT_TABLE} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created TEXT NOT NULL,
        token_label TEXT NOT NULL,
        token_serial TEXT NOT NULL,
        token_model TEXT NOT NULL,
        module_path TEXT NOT NULL,
        key_label TEXT NOT NULL,
        temporary_id TEXT NOT NULL,
        key_id TEXT,
        pid INTEGER NOT NULL,
        output TEXT
    )""",
)
_SUBMISSION_SCHEMA = (
    # What a CA said about a pending request (store/submissions.py); one row per request at most,
    # deleted with it. No password is ever stored: only the CA configuration and where its
    # password comes from.
    f"""CREATE TABLE IF NOT EXISTS {SUBMISSION_TABLE} (
        pending_id INTEGER PRIMARY KEY,
        config TEXT NOT NULL,
        profile_json TEXT NOT NULL,
        state TEXT NOT NULL,
        cookie TEXT,
        ca_request_id TEXT,
        retry_after TEXT,
        message TEXT,
        attempts INTEGER NOT NULL,
        updated TEXT NOT NULL,
        response BLOB
    )""",
)
_DISCARDED_SCHEMA = (
    # PIV slots whose key a rolled-back `new` left behind (store/discarded.py): a PIV card cannot
    # delete a key, so the slot looks taken; this row says whose key it is, so the next run may
    # generate over it. One row per slot of a card.
    f"""CREATE TABLE IF NOT EXISTS {DISCARDED_TABLE} (
        token_serial TEXT NOT NULL,
        key_id TEXT NOT NULL,
        public_key_sha256 TEXT NOT NULL,
        discarded TEXT NOT NULL,
        PRIMARY KEY (token_serial, key_id)
    )""",
)
#: The statements that make the current schema from nothing, and from each older version.
_CREATE = _PENDING_SCHEMA + _INTENT_SCHEMA + _SUBMISSION_SCHEMA + _DISCARDED_SCHEMA
_MIGRATIONS: dict[int, tuple[str, ...]] = {1: _INTENT_SCHEMA, 2: _SUBMISSION_SCHEMA, 3: _DISCARDED_SCHEMA}
#: The tables of each schema version, sorted.
_TABLES: dict[int, list[str]] = {
    1: [PENDING_TABLE],
    2: [INTENT_TABLE, PENDING_TABLE],
    3: [SUBMISSION_TABLE, INTENT_TABLE, PENDING_TABLE],
    4: [SUBMISSION_TABLE, DISCARDED_TABLE, INTENT_TABLE, PENDING_TABLE],
}
#: The columns each table must have in the current schema (a foreign database is refused).
COLUMNS: dict[str, frozenset[str]] = {}


@dataclass
class _Kept:
    """A connection `kept_open` lends to every transaction on its file in its thread."""

    users: int = 1  # nested kept_open scopes on the same file
    connection: sqlite3.Connection | None = None
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file it was opened on
    #: (PRAGMA schema_version, PRAGMA user_version) when _version last found the schema current
    checked_schema: tuple[int, int] | None = None
    pid: int = 0  # the process that opened it: a child after fork() must not use it, nor close it

    def drop(self) -> None:
        if self.connection is not None and self.pid == os.getpid():
            self.connection.close()
        self.connection, self.identity, self.checked_schema = None, None, None


# per thread: a sqlite3 connection belongs to the thread that opened it
_kept = threading.local()


def _kept_files() -> dict[str, _Kept]:
    files: dict[str, _Kept] | None = getattr(_kept, "files", None)
    if files is None:
        files = _kept.files = {}
    return files


@contextmanager
def kept_open(path: Path) -> Iterator[None]:
    """Inside this, this thread's transactions on ``path`` share one connection, opened at the
    first of them and closed at the end, instead of one connection each.

    Each transaction still commits with synchronous=FULL before it returns (what is durable when
    does not change); between transactions the connection holds no lock, so other processes use
    the file as before. What it saves is opening the file and reading and checking its schema per
    transaction: the schema is checked again only when SQLite's schema cookie changes, and a file
    that was replaced (another inode at the path) gets a new connection.
    """
    key = str(Path(path).absolute())
    files = _kept_files()
    entry = files.get(key)
    if entry is not None:
        entry.users += 1
    else:
        entry = files[key] = _Kept()
    try:
        yield
    finally:
        entry.users -= 1
        if entry.users == 0:
            del files[key]
            entry.drop()


_WRITERS: dict[str, threading.Lock] = {}
_WRITERS_GUARD = threading.Lock()


def _writer_lock(path: Path) -> threading.Lock:
    key = str(Path(path).absolute())
    with _WRITERS_GUARD:
        return _WRITERS.setdefault(key, threading.Lock())


class StateDatabase:
    """One SQLite file. Nothing is created before the first write transaction."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        try:
            os.stat(self.path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise InputError(f"cannot read pending store {self.path}: {exc.strerror or exc}") from exc
        return True

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on a database with the current schema (made or migrated if needed)."""
        self._prepare_file()
        with self._transaction(write=True) as connection:
            version = self._checked_version(connection)
            statements: tuple[str, ...]
            if version == 0:
                statements = _CREATE
            else:
                statements = tuple(s for v in range(version, SCHEMA_VERSION) for s in _MIGRATIONS[v])
            for statement in statements:
                connection.execute(statement)
            if version != SCHEMA_VERSION:
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            yield connection

    @contextmanager
    def reading(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """A read transaction and the schema version (0: empty). Callers check the file exists."""
        with self._transaction(write=False) as connection:
            yield connection, self._checked_version(connection)

    # -- the file ---------------------------------------------------------------------------

    def _prepare_file(self) -> None:
        """Make the directory (0700) and an empty database file (0600) before SQLite opens it.

        SQLite would create the file with 0644 less the umask; creating it ourselves leaves no
        moment in which the store is readable by others. An empty file is a valid empty database.
        """
        directory = self.path.parent
        ensure_private_directory(directory)
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
        """One transaction, committed on success, rolled back on any error; in its own connection,
        or in the one `kept_open` keeps for this file. Write transactions of this process's threads
        on one file take turns on a lock first: SQLite's own wait for a busy file sleeps 1, 2, 5,
        10 ms... between tries, where the lock wakes the next writer as soon as one commits (a
        batch's spare key is recorded from a second thread: enroll/spares.py)."""
        if not write:
            with self._transaction_in_connection(write) as connection:
                yield connection
            return
        with _writer_lock(self.path), self._transaction_in_connection(write) as connection:
            yield connection

    @contextmanager
    def _transaction_in_connection(self, write: bool) -> Iterator[sqlite3.Connection]:
        kept = self._kept()
        connection = self._kept_connection(kept, write) if kept is not None else None
        if connection is None:
            kept = None
            connection = self._connect(write)
        try:
            with connection:
                # IMMEDIATE takes the write lock up front, so two writers queue on the busy
                # timeout instead of one failing at once when both try to upgrade a read lock.
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield connection
        except BaseException as exc:
            if kept is not None:
                kept.drop()  # whatever state the failure left it in, the next transaction starts afresh
            if isinstance(exc, sqlite3.Error):
                raise self._failure(exc, write) from exc
            raise
        finally:
            if kept is None:
                connection.close()

    def _connect(self, write: bool, *, kept: bool = False) -> sqlite3.Connection:
        # Reads open the file writable when they may, so SQLite can roll back the hot journal
        # that a crashed writer left behind; read-only it would refuse to read at all.
        mode = "rw" if write or kept or os.access(self.path, os.W_OK) else "ro"
        uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode={mode}"
        try:
            # isolation_level=None: we issue BEGIN ourselves, so schema creation is transactional.
            # A kept connection is only ever used by the thread that opened it (kept_open's
            # registry is per thread), but the scope may end, and close it, in another.
            connection = sqlite3.connect(
                uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=not kept
            )
        except sqlite3.Error as exc:
            raise self._failure(exc, write) from exc
        try:
            connection.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            connection.close()
            raise self._failure(exc, write) from exc
        return connection

    def _kept(self) -> _Kept | None:
        files: dict[str, _Kept] | None = getattr(_kept, "files", None)
        return files.get(str(self.path.absolute())) if files else None

    def _kept_connection(self, kept: _Kept, write: bool) -> sqlite3.Connection | None:
        """The kept connection, (re)opened on the file now at the path; None when it cannot be
        kept (no file yet for a read, or one this process may not write: each read then opens
        the file as `_connect` decides)."""
        try:
            info = os.stat(self.path)
        except OSError:
            kept.drop()
            return None
        identity = (info.st_dev, info.st_ino)
        if kept.connection is not None and kept.identity == identity and kept.pid == os.getpid():
            return kept.connection
        kept.drop()
        if not os.access(self.path, os.W_OK):
            return None
        kept.connection, kept.identity, kept.pid = self._connect(write, kept=True), identity, os.getpid()
        return kept.connection

    def _checked_version(self, connection: sqlite3.Connection) -> int:
        """`_version`, whose table check a kept connection skips while the schema cookie (which
        SQLite changes with every schema change, by any process) and the user_version (a newer
        tokenagent's) are the ones it last checked."""
        kept = self._kept()
        if kept is None or kept.connection is not connection:
            return self._version(connection)
        cookie = (
            int(connection.execute("PRAGMA schema_version").fetchone()[0]),
            int(connection.execute("PRAGMA user_version").fetchone()[0]),
        )
        if kept.checked_schema == cookie:
            self._check_size(connection)
            return SCHEMA_VERSION
        version = self._version(connection)
        kept.checked_schema = cookie if version == SCHEMA_VERSION else None
        return version

    def _version(self, connection: sqlite3.Connection) -> int:
        """The schema version of a tokenagent store (0: still empty); `InputError` for anything else."""
        self._check_size(connection)
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        tables = sorted(
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not name.startswith("sqlite_")  # SQLite's own, e.g. AUTOINCREMENT's sqlite_sequence
        )
        if version == 0 and not tables:
            return 0
        if version > SCHEMA_VERSION and PENDING_TABLE in tables:
            raise InputError(
                f"pending store {self.path} has schema version {version}, newer than the {SCHEMA_VERSION} "
                "this tokenagent understands; use a newer tokenagent"
            )
        if 1 <= version <= SCHEMA_VERSION and tables == sorted(_TABLES[version]):
            for table in tables:
                columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
                if columns != _columns(table):
                    raise self._foreign(f"table {table} has columns {', '.join(sorted(columns))}")
            return version
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

    # -- errors -----------------------------------------------------------------------------

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


def ensure_private_directory(directory: Path) -> None:
    """Make ``directory`` and any missing parents, each owner-only (0700), as XDG asks of state."""
    missing: list[Path] = []
    level = directory
    while not level.is_dir() and level != level.parent:
        missing.append(level)
        level = level.parent
    try:
        # Level by level rather than mkdir(parents=True), which gives the parents the umask's
        # mode: each directory made is owner-only, and a umask that drops the owner's write bit
        # cannot stop the next level.
        for level in reversed(missing):
            try:
                level.mkdir(mode=0o700)
            except FileExistsError:
                continue  # another tokenagent process was first; it sets the mode
            os.chmod(level, 0o700)
    except OSError as exc:
        raise OutputError(f"cannot create state directory {directory}: {exc.strerror or exc}") from exc


def _columns(table: str) -> frozenset[str]:
    """The columns of ``table`` in the current schema, read from its CREATE statement once."""
    if not COLUMNS:
        connection = sqlite3.connect(":memory:")
        try:
            for statement in _CREATE:
                connection.execute(statement)
            for name in (PENDING_TABLE, INTENT_TABLE, SUBMISSION_TABLE, DISCARDED_TABLE):
                COLUMNS[name] = frozenset(row[1] for row in connection.execute(f"PRAGMA table_info({name})"))
        finally:
            connection.close()
    return COLUMNS[table]
