"""The pending-request store against real SQLite files: round trips, modes, damage, concurrency."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tokenagent.errors import InputError, ObjectNotFoundError, OutputError
from tokenagent.store import SCHEMA_VERSION, NewPending, PendingRequest, PendingStore, pending_db_path, state_dir
from tokenagent.store import database as database_module

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
ROOT_SKIP = (
    "running as root, whom file modes do not stop: the refusal of an unreadable or unwritable state "
    "directory can only be tested as a normal user"
)


def new_pending(n: int = 1, **changes: object) -> NewPending:
    """A record whose every field depends on n, so mixed-up columns cannot go unnoticed."""
    der = changes.pop("request_der", b"\x30\x82" + n.to_bytes(4, "big") + bytes(range(256)) * 3)
    assert isinstance(der, bytes)
    values: dict[str, object] = {
        "request_sha256": hashlib.sha256(der).hexdigest(),
        "request_der": der,
        "request_type": "PKCS10",
        "subject": f"CN=user {n},O=Example",
        "token_label": f"token-{n}",
        "token_serial": f"serial-{n:04d}",
        "token_model": "SoftHSM v2",
        "module_path": f"/usr/lib/softhsm/libsofthsm2-{n}.so",
        "key_id": f"{n:04x}beef",
        "key_label": f"container {n}",
        "public_key_sha256": hashlib.sha256(b"spki %d" % n).hexdigest(),
        "key_generated": n % 2 == 1,
        "friendly_name": f"friendly ü {n}",
        "policy_file": f"/etc/tokenagent/policy-{n}.inf",
        "policy_json": json.dumps({"n": n, "Subject": f"CN=user {n}"}),
        "machine": n % 2 == 0,
    }
    values.update(changes)
    return NewPending(**values)  # type: ignore[arg-type]


def store_at(tmp_path: Path) -> PendingStore:
    return PendingStore(tmp_path / "state" / "tokenagent" / "pending.sqlite3")


def assert_matches(stored: PendingRequest, record: NewPending) -> None:
    for item in dataclasses.fields(NewPending):
        assert getattr(stored, item.name) == getattr(record, item.name), item.name


# -- round trips ---------------------------------------------------------------------------------


def test_field_lists_are_in_step() -> None:
    stored = [item.name for item in dataclasses.fields(PendingRequest)]
    new = [item.name for item in dataclasses.fields(NewPending)]
    assert stored == ["id", "created", *new]


def test_add_list_get_delete_round_trip(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    first_record = new_pending(1)
    second_record = new_pending(2, friendly_name=None, request_type="CMC")
    before = datetime.now(UTC)
    first = store.add(first_record)
    second = store.add(second_record)
    after = datetime.now(UTC)

    assert (first.id, second.id) == (1, 2)
    assert_matches(first, first_record)
    assert_matches(second, second_record)
    for record in (first, second):
        assert record.created.tzinfo is not None and record.created.utcoffset().total_seconds() == 0
        assert before <= record.created <= after
    assert first.key_generated is True and first.machine is False
    assert second.key_generated is False and second.machine is True and second.friendly_name is None

    # A fresh store object reads only what is in the file.
    reread = PendingStore(store.path)
    assert reread.list() == [first, second]
    assert reread.get(2) == second
    assert isinstance(reread.get(1).key_generated, bool)

    assert reread.delete(1) == first
    assert reread.list() == [second]
    with pytest.raises(ObjectNotFoundError, match=f"no pending request with ID 1 in {store.path}"):
        reread.get(1)
    with pytest.raises(ObjectNotFoundError, match="ID 1 "):
        reread.delete(1)
    assert reread.list() == [second]


def test_to_json(tmp_path: Path) -> None:
    record = store_at(tmp_path).add(new_pending(3))
    data = record.to_json()
    assert "request_der" not in data and "format_version" not in data
    assert base64.b64decode(str(data["request_base64"])) == record.request_der
    assert datetime.fromisoformat(str(data["created"])) == record.created
    assert str(data["created"]).endswith(("Z", "+00:00"))
    expected = {item.name for item in dataclasses.fields(PendingRequest)} - {"request_der"} | {"request_base64"}
    assert set(data) == expected
    assert data["id"] == record.id and data["key_generated"] is True and data["friendly_name"] == "friendly ü 3"
    assert json.loads(json.dumps(data)) == data


def test_ids_are_never_reused(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    ids = [store.add(new_pending(n)).id for n in range(1, 4)]
    assert ids == [1, 2, 3]
    store.delete(3)  # the highest: plain ROWID selection would hand 3 out again
    assert store.add(new_pending(4)).id == 4
    for request_id in (1, 2, 4):
        store.delete(request_id)
    assert store.list() == []
    assert store.add(new_pending(5)).id == 5


def test_find_by_public_key_and_request(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    one = store.add(new_pending(1))
    other = store.add(new_pending(2))
    again = store.add(new_pending(1))  # certreq makes a new request each time: a repeat is allowed
    assert again.id != one.id and again.request_sha256 == one.request_sha256

    assert store.find_by_public_key(one.public_key_sha256) == [one, again]
    assert store.find_by_public_key(other.public_key_sha256.upper()) == [other]
    assert store.find_by_public_key("00" * 32) == []
    assert store.find_by_request(one.request_sha256) == [one, again]
    assert store.find_by_request(other.request_sha256) == [other]


def test_missing_store_reads_as_empty_and_creates_nothing(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    assert store.list() == []
    assert store.find_by_public_key("00" * 32) == []
    assert store.find_by_request("00" * 32) == []
    with pytest.raises(ObjectNotFoundError, match=str(store.path)):
        store.get(1)
    with pytest.raises(ObjectNotFoundError, match=str(store.path)):
        store.delete(1)
    assert not (tmp_path / "state").exists()


def test_empty_file_is_an_empty_store(tmp_path: Path) -> None:
    # What a crash between creating the file and the first commit leaves behind.
    path = tmp_path / "pending.sqlite3"
    path.touch(mode=0o600)
    store = PendingStore(path)
    assert store.list() == []
    with pytest.raises(ObjectNotFoundError):
        store.delete(1)
    assert path.stat().st_size == 0
    assert store.add(new_pending(1)).id == 1
    assert len(store.list()) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"request_type": "PKCS12"}, "request_type"),
        ({"request_sha256": "00" * 32}, "not the SHA-256"),
        ({"public_key_sha256": "AB" * 32}, "public_key_sha256"),
        ({"key_id": "0g"}, "key_id"),
    ],
)
def test_caller_mistakes_are_refused(tmp_path: Path, change: dict[str, object], message: str) -> None:
    store = store_at(tmp_path)
    with pytest.raises(ValueError, match=message):
        store.add(new_pending(1, **change))
    assert not store.path.exists()


# -- files, modes and paths ----------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_file_and_directory_modes(tmp_path: Path, umask: int) -> None:
    store = PendingStore(tmp_path / "a" / "b" / "tokenagent" / "pending.sqlite3")
    old = os.umask(umask)
    try:
        store.add(new_pending(1))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    for directory in (tmp_path / "a", tmp_path / "a" / "b", store.path.parent):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
    assert stat.S_ISREG(os.stat(store.path).st_mode)
    # No journal left behind: the store is one file.
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["pending.sqlite3"]


def test_state_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("TOKENAGENT_STATE_DIR", raising=False)
    assert state_dir(machine=False) == tmp_path / "home" / ".local" / "state" / "tokenagent"
    assert state_dir(machine=True) == Path("/var/lib/tokenagent")

    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # invalid by the XDG spec: ignored
    assert state_dir(machine=False) == tmp_path / "home" / ".local" / "state" / "tokenagent"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir(machine=False) == tmp_path / "xdg" / "tokenagent"
    assert state_dir(machine=True) == Path("/var/lib/tokenagent")

    monkeypatch.setenv("TOKENAGENT_STATE_DIR", str(tmp_path / "override"))
    assert state_dir(machine=False) == tmp_path / "override"
    assert state_dir(machine=True) == tmp_path / "override"
    assert pending_db_path(machine=True) == tmp_path / "override" / "pending.sqlite3"
    assert pending_db_path(machine=False, state_dir=tmp_path / "x") == tmp_path / "x" / "pending.sqlite3"

    monkeypatch.setenv("TOKENAGENT_STATE_DIR", "")
    assert pending_db_path(machine=False) == tmp_path / "xdg" / "tokenagent" / "pending.sqlite3"


def test_parent_that_is_a_file_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("not a directory")
    store = PendingStore(tmp_path / "blocker" / "tokenagent" / "pending.sqlite3")
    with pytest.raises(OutputError, match=str(tmp_path / "blocker" / "tokenagent")):
        store.add(new_pending(1))
    assert (tmp_path / "blocker").read_text() == "not a directory"


@pytest.mark.skipif(
    IS_ROOT,
    reason=ROOT_SKIP,
)
def test_unwritable_parent_is_an_output_error(tmp_path: Path) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        store = PendingStore(parent / "tokenagent" / "pending.sqlite3")
        with pytest.raises(OutputError, match=str(parent / "tokenagent")):
            store.add(new_pending(1))
        assert store.list() == []
    finally:
        parent.chmod(0o700)


@pytest.mark.skipif(
    IS_ROOT,
    reason=ROOT_SKIP,
)
def test_unwritable_state_directory_is_an_output_error(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    first = store.add(new_pending(1))
    store.path.parent.chmod(0o500)  # SQLite cannot create its journal next to the database
    try:
        with pytest.raises(OutputError, match=str(store.path)):
            store.add(new_pending(2))
        assert store.list() == [first]
    finally:
        store.path.parent.chmod(0o700)
    assert store.add(new_pending(2)).id == 2


# -- files that are not a usable store -----------------------------------------------------------


def make_real_store(tmp_path: Path, count: int = 12) -> PendingStore:
    store = PendingStore(tmp_path / "real" / "pending.sqlite3")
    for n in range(1, count + 1):
        store.add(new_pending(n))
    return store


def assert_refused_and_unchanged(path: Path, match: str = "is not a tokenagent database") -> None:
    """Every operation refuses the file with an InputError naming it, and leaves it as it was."""
    before = path.read_bytes()
    store = PendingStore(path)
    operations = [
        store.list,
        lambda: store.get(1),
        lambda: store.find_by_public_key("00" * 32),
        lambda: store.find_by_request("00" * 32),
        lambda: store.delete(1),
        lambda: store.add(new_pending(1)),
    ]
    for operation in operations:
        with pytest.raises(InputError) as caught:
            operation()
        message = caught.value.one_line()
        assert str(path) in message and match in message and "\n" not in str(caught.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def write_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "bad" / "pending.sqlite3"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "data",
    [
        b"\x00",
        b"x",
        b"not a database at all\n" * 300,
        bytes(range(256)) * 64,
        b"SQLite format 3\x00" + b"\xff" * 200,
    ],
    ids=["nul", "one-byte", "text", "binary", "bad-header"],
)
def test_garbage_file(tmp_path: Path, data: bytes) -> None:
    assert_refused_and_unchanged(write_file(tmp_path, data))


def test_truncated_database(tmp_path: Path) -> None:
    data = make_real_store(tmp_path).path.read_bytes()
    page = 4096
    assert len(data) >= 5 * page
    lengths = {1, 15, 16, 50, 99, 100, 101, 1000, page - 1, page, page + 1, 2 * page, len(data) // 2}
    lengths |= {len(data) - page - 1, len(data) - page, len(data) - page + 1, len(data) - 100, len(data) - 1}
    lengths |= set(range(7, len(data), 3001))
    for length in sorted(lengths):
        path = write_file(tmp_path, data[:length])
        assert_refused_and_unchanged(path)
        path.unlink()


def test_database_from_the_future(tmp_path: Path) -> None:
    path = make_real_store(tmp_path, count=2).path
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    assert_refused_and_unchanged(path, match="schema version 99")


@pytest.mark.parametrize(
    "statements",
    [
        ["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)", "INSERT INTO notes (body) VALUES ('x')"],
        ["CREATE TABLE pending_requests (id INTEGER PRIMARY KEY, request BLOB)", "PRAGMA user_version = 1"],
        ["CREATE TABLE other (x)", "PRAGMA user_version = 7"],
    ],
    ids=["other-table", "same-name-other-columns", "other-app-version"],
)
def test_foreign_sqlite_database(tmp_path: Path, statements: list[str]) -> None:
    path = write_file(tmp_path, b"")
    connection = sqlite3.connect(path)
    for statement in statements:
        connection.execute(statement)
    connection.commit()
    connection.close()
    assert_refused_and_unchanged(path)


# -- concurrency and crashes ---------------------------------------------------------------------

WRITER = """
import sys, time
from pathlib import Path
from tests.test_store import new_pending
from tokenagent.store import PendingStore
path, start, base = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
while not start.exists():
    time.sleep(0.001)
store = PendingStore(path)
for n in range(base, base + 50):
    store.add(new_pending(n))
"""


def test_two_processes_add_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "pending.sqlite3"
    start = tmp_path / "start"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(start), str(base)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for base in (1000, 2000)
    ]
    time.sleep(0.5)  # let both import and wait, so they really race (including creating the file)
    start.touch()
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr

    records = PendingStore(path).list()
    assert len(records) == 100
    assert sorted(r.id for r in records) == list(range(1, 101))
    assert sorted(r.token_label for r in records) == sorted(
        f"token-{n}" for n in [*range(1000, 1050), *range(2000, 2050)]
    )
    # Each writer's records appear in its own order.
    numbers = [int(r.token_label.removeprefix("token-")) for r in records]
    for base in (1000, 2000):
        assert [n for n in numbers if base <= n < base + 50] == list(range(base, base + 50))


def test_lock_held_too_long_is_an_output_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_at(tmp_path)
    first = store.add(new_pending(1))
    monkeypatch.setattr(database_module, "BUSY_TIMEOUT_SECONDS", 0.2)
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(OutputError, match=f"pending store {store.path} is locked"):
            store.add(new_pending(2))
        with pytest.raises(InputError, match="is locked"):
            store.list()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.list() == [first]


def test_lock_released_within_the_timeout_is_waited_for(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.add(new_pending(1))
    holder = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        assert store.add(new_pending(2)).id == 2
    finally:
        release.join()
        holder.close()
    assert [r.id for r in store.list()] == [1, 2]


CRASHER = """
import os, sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA cache_size = 1")  # spill changed pages into the file before commit
connection.execute("BEGIN IMMEDIATE")
connection.execute("UPDATE pending_requests SET request_der = zeroblob(100000)")
connection.execute("UPDATE sqlite_sequence SET seq = 999")
os._exit(0)  # die mid-transaction, as on power loss: no commit, no rollback
"""


def test_crash_mid_transaction_is_rolled_back(tmp_path: Path) -> None:
    store = make_real_store(tmp_path, count=12)
    records = store.list()
    before = store.path.read_bytes()
    subprocess.run([sys.executable, "-c", CRASHER, str(store.path)], check=True)
    journal = store.path.with_name(store.path.name + "-journal")
    assert journal.exists() and journal.stat().st_size > 0
    assert store.path.read_bytes() != before  # the half-done transaction reached the file

    assert store.list() == records
    assert not journal.exists()
    assert store.add(new_pending(13)).id == 13


# -- an independent look at the file -------------------------------------------------------------


def test_file_checked_independently(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    first = store.add(new_pending(1))
    second = store.add(new_pending(2, friendly_name=None))
    query = (
        "SELECT id, created, hex(request_der), typeof(request_der), request_type, key_generated, "
        "typeof(key_generated), machine, friendly_name, public_key_sha256, key_id FROM pending_requests ORDER BY id"
    )
    sqlite_cli = shutil.which("sqlite3")
    if sqlite_cli:

        def run(sql: str, *options: str) -> str:
            done = subprocess.run(
                [sqlite_cli, "-readonly", *options, str(store.path)], input=sql, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        integrity = run("PRAGMA integrity_check")
        version = run("PRAGMA user_version")
        journal = run("PRAGMA journal_mode")
        rows = [tuple(row.values()) for row in json.loads(run(query, "-json"))]
    else:
        connection = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
        try:
            integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
            version = str(connection.execute("PRAGMA user_version").fetchone()[0])
            journal = connection.execute("PRAGMA journal_mode").fetchone()[0]
            rows = [tuple(row) for row in connection.execute(query)]
        finally:
            connection.close()

    assert integrity == "ok"
    assert version == str(SCHEMA_VERSION)
    assert journal == "delete"
    assert rows == [
        (
            record.id,
            record.created.isoformat(),
            record.request_der.hex().upper(),
            "blob",
            record.request_type,
            int(record.key_generated),
            "integer",
            int(record.machine),
            record.friendly_name,
            record.public_key_sha256,
            record.key_id,
        )
        for record in (first, second)
    ]


def test_kept_open_shares_one_connection_and_sees_other_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch keeps the store open (`database.kept_open`): one connection for its transactions,
    each still committed; another writer in between, and a file replaced under it, are seen."""
    store = store_at(tmp_path)
    first = store.add(new_pending(1))  # the file exists (making it is not what is measured)
    opened: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def counting_connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        connection = real_connect(*args, **kwargs)  # type: ignore[call-overload]
        if args and args[0] != ":memory:":  # (the schema check's in-memory model is not the store)
            opened.append(connection)
        return connection

    monkeypatch.setattr(database_module.sqlite3, "connect", counting_connect)
    with database_module.kept_open(store.path):
        second = store.add(new_pending(2))
        third = store.add(new_pending(3))
        assert len(opened) == 1  # one connection for both transactions
        # committed as it returned: another connection (another process's, say) reads it
        other = real_connect(store.path)
        assert other.execute("SELECT COUNT(*) FROM pending_requests").fetchone() == (3,)
        other.close()
        # another process writes in between: the kept connection sees its record
        subprocess.run(
            [sys.executable, "-c", WRITER_ONE, str(store.path)],
            check=True,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        assert [r.id for r in store.list()] == [first.id, second.id, third.id, 4]
        # the file replaced (a restore from a backup copy): a new connection on the new file
        replacement = tmp_path / "replacement.sqlite3"
        shutil.copyfile(store.path, replacement)
        os.replace(replacement, store.path)
        assert store.add(new_pending(5)).id == 5
        assert len(opened) == 2
    assert [r.id for r in PendingStore(store.path).list()] == [1, 2, 3, 4, 5]


WRITER_ONE = """
import sys
from pathlib import Path
from tests.test_store import new_pending
from tokenagent.store import PendingStore
PendingStore(Path(sys.argv[1])).add(new_pending(4))
"""
