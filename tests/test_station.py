"""`tokenagent station` with a real PC/SC stack and a real CMC CA.

Cards go in and out of vsmartcard readers served by the session's pcscd (tests/peers/piv.py);
station.toml maps each reader to a SoftHSM token (ta-station-a, ta-station-b), where the keys are
made; the agent is cmc-agent-1 on ta-cagent, registered with django-ca-cmc (tests/conftest.py).
What the station did is checked with pkcs11-tool (the token), openssl (the certificate chains to
the CA) and the sqlite3 command (the journal), not with tokenagent.
"""

from __future__ import annotations

import json
import os
import queue
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SO_PIN, USER_PIN, CaAgent, SoftHSM, pkcs11_tool
from tests.peers.faulty import FaultyServer

INF = """\
; one smart-card logon request per user: the users file fills [Strings]
[Strings]
user = "EXAMPLE\\\\nobody"
name = "Nobody"
container = "nobody-logon"

[NewRequest]
Subject = "CN=%name%,OU=Users,DC=example,DC=com"
KeyAlgorithm = ECDSA_P256
KeyContainer = %container%
ProviderName = "Microsoft Smart Card Key Storage Provider"
KeyUsage = CERT_DIGITAL_SIGNATURE_KEY_USAGE
RequestType = CMC
RequesterName = "%user%"

[EnhancedKeyUsageExtension]
OID = 1.3.6.1.5.5.7.3.2
"""


class StationRun:
    """The station as a child process; its stderr lines (the operator's screen with --json) arrive on a queue."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tokenagent", "station", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.process.stderr is not None
        threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        self.process.kill()
        raise AssertionError(f"no line matching {pattern!r}; the station said:\n" + "\n".join(self.seen))

    def finish(self, timeout: float = 60) -> tuple[int, dict[str, Any]]:
        out, _ = self.process.communicate(timeout=timeout)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.process.returncode, json.loads(out)


@pytest.fixture()
def station_files(tmp_path: Path, piv_station: Any) -> dict[str, Path]:
    inf = tmp_path / "logon.inf"
    inf.write_text(INF)
    config = tmp_path / "station.toml"
    readers = piv_station.reader_names
    config.write_text(
        f'[station]\nuser_pin = "csv"\n\n[readers]\n"{readers[0]}" = "ta-station-a"\n"{readers[1]}" = "ta-station-b"\n'
    )
    return {"inf": inf, "config": config}


def users_file(directory: Path, *names: str) -> Path:
    path = directory / "users.csv"
    lines = ["user,name,container,pin"]
    for name in names:
        lines.append(f"EXAMPLE\\{name},{name.title()} Tester,{name}-logon,{USER_PIN}")
    path.write_text("\n".join(lines) + "\n")
    return path


def start_station(
    softhsm: SoftHSM, piv_station: Any, files: dict[str, Path], agent: CaAgent, ca: list[str], *extra: str
) -> StationRun:
    env = piv_station.env(**softhsm.env(TA_PIN=USER_PIN))
    args = [
        str(files["inf"]),
        "--agent", agent.uri, "--agent-pin-source", "env:TA_PIN",
        *ca,
        "--station-config", str(files["config"]),
        "--module", softhsm.module,
        "--yes", "--json",
        *extra,
    ]  # fmt: skip
    return StationRun(args, env)


def key_ids(softhsm: SoftHSM, token: str, label: str) -> list[str]:
    listing = pkcs11_tool(softhsm, "-O", "--type", "privkey", token=token)
    ids = []
    for block in listing.split("Private Key Object")[1:]:
        if re.search(rf"label:\s+{re.escape(label)}\s*$", block, re.M):
            found = re.search(r"ID:\s+([0-9a-f]+)", block)
            assert found, block
            ids.append(found.group(1))
    return ids


def journal_rows(state: Path) -> list[tuple[str, ...]]:
    """step, status, user, reader, message, error of every event, read with the sqlite3 command."""
    if not (state / "journal.sqlite3").exists():
        return []
    query = (
        "SELECT step, status, user, reader, coalesce(message,''), coalesce(error,'') FROM journal_events ORDER BY id"
    )
    done = subprocess.run(
        ["sqlite3", "-separator", "\t", str(state / "journal.sqlite3"), query], capture_output=True, text=True
    )
    assert done.returncode == 0 or "no such table" in done.stderr, done.stderr
    return [tuple(line.split("\t")) for line in done.stdout.splitlines()]


def test_a_card_goes_in_is_enrolled_and_comes_out(
    softhsm: SoftHSM,
    piv_station: Any,
    django_ca: Any,
    django_agents: dict[str, CaAgent],
    station_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    users = users_file(tmp_path, "ada")
    ca = ["--config", f"cmc+{django_ca.url}", "--ca-trust", str(django_ca.ca_pem)]
    run = start_station(
        softhsm, piv_station, station_files, django_agents["cmc-agent-1"], ca,
        "--users", str(users), "--count", "1", "--idle-timeout", "60", "--state-dir", str(state),
    )  # fmt: skip
    run.wait_for("logged in; insert a card")
    piv_station.insert_blank(0)
    run.wait_for(r"enrolled EXAMPLE\\ada: pkcs11:.*; remove the card")
    piv_station.remove(0)
    code, result = run.finish()
    assert code == 0, run.seen
    [card] = result["cards"]
    assert card["outcome"] == "enrolled" and card["user"] == "EXAMPLE\\ada"
    assert card["reader"] == piv_station.reader_names[0]
    # the certificate is on ta-station-a next to its key, and chains to the CA
    [key_id] = key_ids(softhsm, "ta-station-a", "ada-logon")
    certificate = subprocess.run(
        ["pkcs11-tool", "--module", softhsm.module, "--token-label", "ta-station-a", "--read-object",
         "--type", "cert", "--id", key_id],
        capture_output=True, env=softhsm.env(), check=True,
    ).stdout  # fmt: skip
    pem = subprocess.run(["openssl", "x509", "-inform", "DER"], input=certificate, capture_output=True).stdout
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(django_ca.ca_pem)], input=pem, capture_output=True)
    assert verified.returncode == 0, verified.stderr
    subject = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253"], input=pem, capture_output=True
    ).stdout.decode()
    assert "CN=Ada Tester" in subject and "OU=Users" in subject  # the CA orders the RDNs its own way
    # the journal has every step, started and done, for this user and reader
    rows = journal_rows(state)
    steps = [(step, status) for step, status, *_ in rows]
    for step in ("key", "submit", "accept"):
        assert (step, "started") in steps and (step, "done") in steps, rows
    assert ("attempt", "done") in steps
    assert {user for _, _, user, *_ in rows} == {"EXAMPLE\\ada"}


def test_a_card_pulled_during_the_ca_exchange_is_rolled_back(
    softhsm: SoftHSM,
    piv_station: Any,
    django_agents: dict[str, CaAgent],
    django_ca: Any,
    station_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    users = users_file(tmp_path, "bob")
    hanging = FaultyServer()
    try:
        ca = ["--config", f"cmc+{hanging.url('hang')}", "--ca-trust", str(django_ca.ca_pem), "--timeout", "4"]
        run = start_station(
            softhsm, piv_station, station_files, django_agents["cmc-agent-1"], ca,
            "--users", str(users), "--count", "1", "--idle-timeout", "60", "--state-dir", str(state),
        )  # fmt: skip
        run.wait_for("logged in; insert a card")
        piv_station.insert_blank(1)
        run.wait_for("enrolling")
        deadline = time.monotonic() + 20
        while not any(r[0] == "submit" and r[1] == "started" for r in journal_rows(state)):
            assert time.monotonic() < deadline, journal_rows(state)
            time.sleep(0.1)
        piv_station.remove(1)  # while the CA keeps the request waiting
        line = run.wait_for("card removed during submit")
        assert "were deleted" in line
        code, result = run.finish()
    finally:
        hanging.stop()
    assert code != 0
    [card] = result["cards"]
    assert card["outcome"] == "aborted"
    assert key_ids(softhsm, "ta-station-b", "bob-logon") == []  # no orphan key on the token
    pending = subprocess.run(
        [sys.executable, "-m", "tokenagent", "pending", "--json", "--state-dir", str(state)],
        capture_output=True, text=True, env=softhsm.env(),
    )  # fmt: skip
    assert json.loads(pending.stdout)["pending"] == []
    rows = journal_rows(state)
    failed = [row for row in rows if row[0] == "submit" and row[1] == "failed"]
    assert failed and "card removed during submit" in failed[0][4], rows


def test_unattended_station_without_users_is_refused_before_any_login(
    softhsm: SoftHSM,
    piv_station: Any,
    station_files: dict[str, Path],
    django_agents: dict[str, CaAgent],
    tmp_path: Path,
) -> None:
    run = start_station(
        softhsm, piv_station, station_files, django_agents["cmc-agent-1"], ["--config", "file:"],
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    out, err = run.process.communicate(timeout=60)
    assert run.process.returncode == 2, err
    assert "give --users FILE.csv" in out + err


def test_a_users_column_that_names_no_string_is_a_file_line_error(
    softhsm: SoftHSM,
    piv_station: Any,
    station_files: dict[str, Path],
    django_agents: dict[str, CaAgent],
    tmp_path: Path,
) -> None:
    users = tmp_path / "users.csv"
    users.write_text("user,nmae,pin\nEXAMPLE\\eve,Eve,1234\n")
    run = start_station(
        softhsm, piv_station, station_files, django_agents["cmc-agent-1"], ["--config", "file:"],
        "--users", str(users), "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    out, err = run.process.communicate(timeout=60)
    assert run.process.returncode == 4, err
    assert f"{users}:1: column nmae names no [Strings] entry" in out + err


def test_the_users_file_is_read_with_file_line_errors(tmp_path: Path) -> None:
    from tokenagent.errors import InputError
    from tokenagent.station.station import read_users

    cases = {
        "": ":1: empty",
        "name,pin\nx,1\n": ":1: no 'user' column",
        "user,user\nx,y\n": ":1: column names must be unique",
        "user,pin\nada,1\nbob\n": ":3: 1 fields, the header has 2",
        "user,pin\nada,1\nADA,2\n": ":3: user ADA is already on line 2",
        'user,pin\n"unterminated,1\n': ":2: 1 fields, the header has 2",
        "user\n\x1bbad\n": ":2: a control character",
    }
    for text, said in cases.items():
        path = tmp_path / "users.csv"
        path.write_text(text)
        with pytest.raises(InputError, match=re.escape(said)):
            read_users(path)
    path.write_text("user,name,pin\nEXAMPLE\\ada,Ada,1234\n\n")
    [user] = read_users(path)
    assert user.strings == {"user": "EXAMPLE\\ada", "name": "Ada"} and user.pin is not None
    assert "1234" not in repr(user)


def test_a_generated_user_pin_is_set_by_the_so_written_0600_and_enrolls(
    softhsm: SoftHSM,
    piv_station: Any,
    django_ca: Any,
    django_agents: dict[str, CaAgent],
    tmp_path: Path,
) -> None:
    inf = tmp_path / "logon.inf"
    inf.write_text(INF)
    pins = tmp_path / "new-pins.txt"
    config = tmp_path / "station.toml"
    config.write_text(
        "[station]\n"
        'user_pin = "generate"\n'
        'so_pin_source = "env:CARD_SO_PIN"\n'
        f'pin_file = "{pins}"\n'
        "pin_length = 10\n\n"
        "[readers]\n"
        f'"{piv_station.reader_names[1]}" = "ta-station-c"\n'
    )
    users = tmp_path / "users.csv"
    users.write_text("user,name,container\nEXAMPLE\\cy,Cy Tester,cy-logon\n")
    state = tmp_path / "state"
    ca = ["--config", f"cmc+{django_ca.url}", "--ca-trust", str(django_ca.ca_pem)]
    env = piv_station.env(**softhsm.env(TA_PIN=USER_PIN, CARD_SO_PIN=SO_PIN))
    run = StationRun(
        [
            str(inf), "--agent", django_agents["cmc-agent-1"].uri, "--agent-pin-source", "env:TA_PIN", *ca,
            "--station-config", str(config), "--module", softhsm.module, "--yes", "--json",
            "--users", str(users), "--count", "1", "--idle-timeout", "60", "--state-dir", str(state),
        ],
        env,
    )  # fmt: skip
    run.wait_for("logged in; insert a card")
    piv_station.insert_blank(1)
    run.wait_for(r"enrolled EXAMPLE\\cy")
    piv_station.remove(1)
    code, result = run.finish()
    assert code == 0, run.seen
    assert stat.S_IMODE(pins.stat().st_mode) == 0o600
    [(serial, pin)] = [line.split("\t") for line in pins.read_text().splitlines()]
    assert serial == result["cards"][0]["token_serial"] and len(pin) == 10 and pin.isdigit()
    assert pin not in "\n".join(run.seen) + json.dumps(result)  # written to the file, not shown
    assert pin.encode() not in (state / "journal.sqlite3").read_bytes()
    # the new PIN logs in (pkcs11-tool), and the key made with it is there
    listing = subprocess.run(
        ["pkcs11-tool", "--module", softhsm.module, "--token-label", "ta-station-c", "--login", "--pin", pin, "-O",
         "--type", "privkey"],
        capture_output=True, text=True, env=softhsm.env(), check=True,
    ).stdout  # fmt: skip
    assert "cy-logon" in listing
    steps = [(step, status) for step, status, *_ in journal_rows(state)]
    assert ("pin", "done") in steps and ("accept", "done") in steps


def test_two_cards_at_once_one_agent_login_for_the_session_and_one_user_login_per_card(
    softhsm: SoftHSM,
    piv_station: Any,
    django_ca: Any,
    django_agents: dict[str, CaAgent],
    station_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Both readers get a card at the same moment; pkcs11-spy (OpenSC's recorder) counts the logins."""
    from tests.test_login import spy_module

    state = tmp_path / "state"
    users = users_file(tmp_path, "dee", "eve")
    log = tmp_path / "spy.log"
    ca = ["--config", f"cmc+{django_ca.url}", "--ca-trust", str(django_ca.ca_pem)]
    env = piv_station.env(**softhsm.env(TA_PIN=USER_PIN, PKCS11SPY=softhsm.module, PKCS11SPY_OUTPUT=str(log)))
    args = [
        str(station_files["inf"]), "--agent", django_agents["cmc-agent-1"].uri, "--agent-pin-source", "env:TA_PIN",
        *ca, "--station-config", str(station_files["config"]), "--module", spy_module(), "--yes", "--json",
        "--users", str(users), "--count", "2", "--idle-timeout", "60", "--state-dir", str(state),
    ]  # fmt: skip
    run = StationRun(args, env)
    run.wait_for("logged in; insert a card")
    piv_station.insert_blank(0)
    piv_station.insert_blank(1)
    run.wait_for(r"enrolled EXAMPLE\\(dee|eve)")
    run.wait_for(r"enrolled EXAMPLE\\(dee|eve)")
    piv_station.remove(0)
    piv_station.remove(1)
    code, result = run.finish()
    assert code == 0, run.seen
    assert sorted(card["user"] for card in result["cards"]) == ["EXAMPLE\\dee", "EXAMPLE\\eve"]
    assert {card["outcome"] for card in result["cards"]} == {"enrolled"}
    assert {card["token_serial"] for card in result["cards"]} == {
        re.search(r"serial=(\w+)", card["certificate_uri"]).group(1)  # type: ignore[union-attr]
        for card in result["cards"]
    }
    assert len({card["reader"] for card in result["cards"]}) == 2
    assert len(key_ids(softhsm, "ta-station-a", "dee-logon") + key_ids(softhsm, "ta-station-a", "eve-logon")) == 1
    assert len(key_ids(softhsm, "ta-station-b", "dee-logon") + key_ids(softhsm, "ta-station-b", "eve-logon")) == 1
    logins = re.findall(r"^\d+: C_Login\b", log.read_text(errors="replace"), flags=re.M)
    assert len(logins) == 3, f"{len(logins)} logins: one for the agent, one per card expected"


def test_ctrl_c_stops_the_card_in_progress_and_rolls_it_back(
    softhsm: SoftHSM,
    piv_station: Any,
    django_agents: dict[str, CaAgent],
    django_ca: Any,
    station_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    import signal

    state = tmp_path / "state"
    users = users_file(tmp_path, "fay")
    hanging = FaultyServer()
    try:
        ca = ["--config", f"cmc+{hanging.url('hang')}", "--ca-trust", str(django_ca.ca_pem), "--timeout", "3"]
        run = start_station(
            softhsm, piv_station, station_files, django_agents["cmc-agent-1"], ca,
            "--users", str(users), "--idle-timeout", "60", "--state-dir", str(state),
        )  # fmt: skip
        run.wait_for("logged in; insert a card")
        piv_station.insert_blank(0)
        deadline = time.monotonic() + 20
        while not any(r[0] == "submit" and r[1] == "started" for r in journal_rows(state)):
            assert time.monotonic() < deadline, journal_rows(state)
            time.sleep(0.1)
        run.process.send_signal(signal.SIGINT)  # while the CA keeps the request waiting
        out, _ = run.process.communicate(timeout=60)
        while not run.lines.empty():
            run.seen.append(run.lines.get())
    finally:
        hanging.stop()
        piv_station.remove(0)
    assert run.process.returncode == 130, run.seen
    assert any("station interrupted during submit" in line and "were deleted" in line for line in run.seen), run.seen
    assert json.loads(out)["exit_code"] == 130  # --json: the error as JSON
    assert key_ids(softhsm, "ta-station-a", "fay-logon") == []
    failed = [row for row in journal_rows(state) if row[0] == "submit" and row[1] == "failed"]
    assert failed and "station interrupted" in failed[0][4]


class Terminal:
    """The station on a real pseudo-terminal: what it shows is read as it comes, replies are typed."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: stdin, stdout and stderr are the terminal
            os.execve(sys.executable, [sys.executable, "-m", "tokenagent", "station", *args], env)
        self.shown = b""

    def wait_for(self, text: bytes, timeout: float = 60) -> None:
        import select

        deadline = time.monotonic() + timeout
        while text not in self.shown:
            assert time.monotonic() < deadline, f"{text!r} never shown:\n{self.shown.decode(errors='replace')}"
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    self.shown += os.read(self.fd, 4096)
                except OSError:
                    break

    def type(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def finish(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.1)
        os.kill(self.pid, 9)
        raise AssertionError("the station did not end:\n" + self.shown.decode(errors="replace"))


def test_the_holder_types_the_pin_at_the_terminal(
    softhsm: SoftHSM,
    piv_station: Any,
    django_ca: Any,
    django_agents: dict[str, CaAgent],
    station_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    """user_pin = holder: the station asks the card holder for the card's PIN on the terminal."""
    config = tmp_path / "holder.toml"
    config.write_text(station_files["config"].read_text().replace('user_pin = "csv"', 'user_pin = "holder"'))
    users = tmp_path / "users.csv"
    users.write_text("user,name,container\nEXAMPLE\\gus,Gus Tester,gus-logon\n")
    state = tmp_path / "state"
    env = piv_station.env(**softhsm.env(TA_PIN=USER_PIN))
    terminal = Terminal(
        [
            str(station_files["inf"]), "--agent", django_agents["cmc-agent-1"].uri, "--agent-pin-source", "env:TA_PIN",
            "--config", f"cmc+{django_ca.url}", "--ca-trust", str(django_ca.ca_pem),
            "--station-config", str(config), "--module", softhsm.module, "--pin-source", "prompt",
            "--users", str(users), "--count", "1", "--idle-timeout", "60", "--state-dir", str(state),
        ],
        env,
    )  # fmt: skip
    terminal.wait_for(b"insert a card")
    piv_station.insert_blank(0)
    terminal.wait_for(b"User PIN for token 'ta-station-a'")
    terminal.type(USER_PIN)
    terminal.wait_for(b"remove the card")
    piv_station.remove(0)
    code = terminal.finish()
    shown = terminal.shown.decode(errors="replace")
    assert code == 0, shown
    assert "enrolled EXAMPLE\\gus" in shown  # (the PIN is typed without echo: getpass)
    assert len(key_ids(softhsm, "ta-station-a", "gus-logon")) == 1
