"""The enrollment journal (station/journal.py) and `tokenagent journal` (issue 17, item 5).

The file is read back with the sqlite3 CLI where it matters (what is stored, whether the
append-only triggers hold), not only through tokenagent's own reader.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import have, run_cli
from tokenagent.errors import InputError, PinIncorrectError, UsageError
from tokenagent.station.journal import FIELDS, Journal, parse_since, timestamp

needs_sqlite3 = pytest.mark.skipif(not have("sqlite3"), reason="needs the sqlite3 CLI")


def sqlite3_cli(path: Path, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sqlite3", str(path), sql], capture_output=True, text=True, check=False)


def test_steps_write_started_then_done_or_failed(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "state" / "journal.sqlite3")
    assert journal.events() == []  # nothing is created by reading
    assert not journal.path.exists()
    with journal.attempt(user="ada", reader="Yubico YubiKey 00 00", atr="3bf81300") as attempt:
        with attempt.step("key", token_serial="0001"):
            attempt.note(key_id="0faa")
        with attempt.step("request"):
            attempt.note(request_sha256="ab" * 32)
        with pytest.raises(PinIncorrectError), attempt.step("submit", ca="cmc+http://ca"):
            raise PinIncorrectError("the PIN is wrong")
    events = journal.events()
    assert [(e.step, e.status) for e in events] == [
        ("key", "started"),
        ("key", "done"),
        ("request", "started"),
        ("request", "done"),
        ("submit", "started"),
        ("submit", "failed"),
    ]
    assert len({e.attempt for e in events}) == 1
    assert events[0].get("key_id") is None and events[1].get("key_id") == "0faa"  # noted inside the step
    assert events[3].get("request_sha256") == "ab" * 32 and events[5].get("key_id") == "0faa"
    assert events[5].get("error") == "the PIN is wrong" and events[5].get("exit_code") == 7
    assert events[5].get("ca") == "cmc+http://ca" and events[5].get("atr") == "3bf81300"
    # the file is private, as the pending store is
    assert stat.S_IMODE(os.stat(journal.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(journal.path.parent).st_mode) == 0o700


def test_an_error_outside_a_step_is_journaled_once(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.sqlite3")
    with pytest.raises(KeyboardInterrupt), journal.attempt(user="bob"):
        raise KeyboardInterrupt
    with pytest.raises(UsageError), journal.attempt(user="carol") as attempt, attempt.step("key"):
        raise UsageError("no")
    events = journal.events()
    assert [(e.get("user"), e.step, e.status, e.get("exit_code")) for e in events] == [
        ("bob", "attempt", "failed", 130),
        ("carol", "key", "started", None),
        ("carol", "key", "failed", 2),
    ]


@needs_sqlite3
def test_append_only_triggers_refuse_update_and_delete(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.sqlite3")
    journal.event("key", "started", attempt="a1", user="ada")
    journal.event("key", "done", attempt="a1", user="ada", key_id="01")
    for sql in (
        "UPDATE journal_events SET status = 'done' WHERE id = 1",
        "DELETE FROM journal_events WHERE id = 1",
        "DELETE FROM journal_events",
        "UPDATE journal_events SET error = NULL",
    ):
        done = sqlite3_cli(journal.path, sql)
        assert done.returncode != 0 and "append-only" in done.stderr, (sql, done.stderr)
    rows = sqlite3_cli(journal.path, "SELECT id, step, status, user FROM journal_events ORDER BY id").stdout
    assert rows.splitlines() == ["1|key|started|ada", "2|key|done|ada"]
    # appending still works after the refusals
    journal.event("request", "done", attempt="a1")
    assert len(journal.events()) == 3


def test_only_named_fields_and_known_steps(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.sqlite3")
    with pytest.raises(TypeError, match="pin"):
        journal.event("key", "started", attempt="a", pin="1234")  # no column could hold it
    with pytest.raises(UsageError):
        journal.event("format", "started", attempt="a")
    with pytest.raises(UsageError):
        journal.event("key", "maybe", attempt="a")
    assert "pin" not in " ".join(FIELDS)


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE other (x)")
    connection.commit()
    connection.close()
    with pytest.raises(InputError, match="not a tokenagent journal"):
        Journal.open(path).events()
    path.write_bytes(b"this is not a database at all, just text" * 100)
    with pytest.raises(InputError, match="not a tokenagent journal"):
        Journal.open(path).event("key", "started", attempt="a")


def test_threads_share_one_journal(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.sqlite3")

    def write(n: int) -> None:
        for i in range(20):
            journal.event("key", "started", attempt=f"t{n}", user=f"u{n}-{i}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = journal.events()
    assert len(events) == 80 and [e.id for e in events] == sorted(e.id for e in events)


def test_since_accepts_dates_times_and_ages() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert parse_since("2026-12-01", now) == "2026-12-01T00:00:00.000000Z"
    assert parse_since("2026-12-01T09:30", now) == "2026-12-01T09:30:00.000000Z"
    assert parse_since("2026-12-01T10:30+01:00", now) == "2026-12-01T09:30:00.000000Z"
    assert parse_since("30m", now) == timestamp(now - timedelta(minutes=30))
    assert parse_since("7d", now) == "2026-11-24T12:00:00.000000Z"
    with pytest.raises(UsageError):
        parse_since("yesterday", now)


def test_journal_command_filters_and_json(tmp_path: Path) -> None:
    state = tmp_path / "state"
    journal = Journal.open(state / "journal.sqlite3")
    journal.event("key", "started", attempt="a1", user="ada", token_serial="S1", batch="b1")
    journal.event("key", "done", attempt="a1", user="ada", token_serial="S1", batch="b1", key_id="0a" * 20)
    journal.event("key", "failed", attempt="a2", user="bob\x1b[31m", token_serial="S2", error="boom", exit_code=7)
    env = {**os.environ, "TOKENAGENT_STATE_DIR": str(state)}
    everything = run_cli("journal", "--json", env=env)
    assert everything.returncode == 0, everything.stderr
    data = json.loads(everything.stdout)
    assert data["format_version"] == 1 and data["journal"] == str(state / "journal.sqlite3")
    assert len(data["events"]) == 3 and set(data["events"][0]) == {
        "id", "time", "attempt", "step", "status", *FIELDS, "pid"
    }  # fmt: skip
    assert data["events"][2]["user"] == "bob\x1b[31m"  # exact in JSON
    by_card = json.loads(run_cli("journal", "--card", "S1", "--json", env=env).stdout)["events"]
    assert [e["status"] for e in by_card] == ["started", "done"]
    assert json.loads(run_cli("journal", "--user", "ada", "--batch", "b1", "--json", env=env).stdout)["events"]
    assert json.loads(run_cli("journal", "--since", "2099-01-01", "--json", env=env).stdout)["events"] == []
    assert len(json.loads(run_cli("journal", "--since", "1h", "--json", env=env).stdout)["events"]) == 3
    table = run_cli("journal", env=env)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["time", "(UTC)", "attempt", "step", "status"]
    assert "boom" in lines[3] and "\x1b" not in table.stdout and "bob\\x1b[31m" in lines[3]  # escaped for people
    bad = run_cli("journal", "--since", "last week", env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--since" in bad.stderr
    empty = run_cli("journal", env={**os.environ, "TOKENAGENT_STATE_DIR": str(tmp_path / "none")})
    assert empty.returncode == 0 and empty.stdout.startswith("no events in ")
