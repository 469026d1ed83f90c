"""`tokenagent batch`: one key and request per CSV row on one token (issue 17, item 3).

Own SoftHSM instance (module fixture), own state directory per test. Results are checked with
tools we did not write: pkcs11-tool lists the keys, openssl verifies and reads every request,
the sqlite3 CLI reads the journal.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CA_PASSWORD, CA_USER, SO_PIN, USER_PIN, SoftHSM, have, make_softhsm, run_cli, run_in_terminal

#: distinctive, so that finding it in a file's bytes cannot be a coincidence
SECRET_PIN = "Batch-Pin-93f1e7"

POLICY = """; one server key per CSV row
[Strings]
host = "placeholder"
ou = "Servers"

[NewRequest]
Subject = "CN=%host%,OU=%ou%,O=Example"
KeyAlgorithm = ECDSA_P256
KeyUsage = CERT_DIGITAL_SIGNATURE_KEY_USAGE

[Extensions]
2.5.29.17 = "{text}DNS=%host%"
"""

pytestmark = pytest.mark.skipif(not (have("pkcs11-tool") and have("openssl")), reason="needs pkcs11-tool and openssl")


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    labels = ["tb-small", f"tb-pin:{SO_PIN}:{SECRET_PIN}", "tb-errors", "tb-200", "tb-kill", "tb-tty", "tb-jobs"]
    yield make_softhsm(tmp_path_factory.mktemp("batch-hsm"), labels)


def env_for(hsm: SoftHSM, tmp_path: Path, pin: str = USER_PIN) -> dict[str, str]:
    return hsm.env(TOKENAGENT_STATE_DIR=str(tmp_path / "state"), PIN=pin)


def write_inputs(tmp_path: Path, hosts: list[str], policy: str = POLICY) -> tuple[Path, Path]:
    inf = tmp_path / "server.inf"
    inf.write_text(policy)
    csv = tmp_path / "hosts.csv"
    csv.write_text("host,ou\n" + "".join(f"{host},Web\n" for host in hosts))
    return inf, csv


def batch_args(inf: Path, csv: Path, out: Path, token: str, *extra: str) -> list[str]:
    return [
        "batch",
        str(inf),
        "--items",
        str(csv),
        "--out",
        str(out),
        "--token",
        token,
        "--pin-source",
        "env:PIN",
        *extra,
    ]


def key_count(hsm: SoftHSM, token: str, pin: str = USER_PIN) -> tuple[int, int]:
    """(private keys, public keys) on ``token``, as pkcs11-tool lists them."""
    listing = subprocess.run(
        ["pkcs11-tool", "--module", hsm.module, "--token-label", token, "--login", "--pin", pin, "--list-objects"],
        capture_output=True,
        text=True,
        env=hsm.env(),
        check=True,
    ).stdout
    return listing.count("Private Key Object"), listing.count("Public Key Object")


def verify_requests(paths: list[Path]) -> None:
    """openssl checks each request's signature; one process for all of them (cheap)."""
    script = "".join(
        f'openssl req -in "{path}" -noout -verify 2>&1 | grep -q "verify OK" || echo "BAD {path}"\n' for path in paths
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    assert done.stdout == "" and done.returncode == 0, done.stdout + done.stderr


def journal_rows(state: Path, sql: str) -> list[str]:
    """Read the journal with the sqlite3 CLI (not tokenagent's reader)."""
    done = subprocess.run(["sqlite3", str(state / "journal.sqlite3"), sql], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


# -- a small batch end to end -----------------------------------------------------------------------


@pytest.mark.skipif(not have("sqlite3"), reason="needs the sqlite3 CLI")
def test_small_batch_substitutes_rows_and_journals_without_the_pin(hsm: SoftHSM, tmp_path: Path) -> None:
    inf, csv = write_inputs(tmp_path, ["web1.example.com", "web2.example.com", "db1.example.com"])
    out = tmp_path / "out"
    env = env_for(hsm, tmp_path, SECRET_PIN)
    run = run_cli(*batch_args(inf, csv, out, "tb-pin", "--name-column", "host", "--json"), env=env)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["format_version"] == 1 and data["counts"]["made"] == 3 and data["exit_code"] == 0
    assert [row["name"] for row in data["rows"]] == ["web1.example.com", "web2.example.com", "db1.example.com"]
    assert data["rows"][0]["line"] == 2 and data["rows"][0]["values"] == {"host": "web1.example.com", "ou": "Web"}
    assert data["token"]["serial"] and data["journal"] == str(tmp_path / "state" / "journal.sqlite3")
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["db1.example.com.req", "web1.example.com.req", "web2.example.com.req"]
    verify_requests(files)
    text = subprocess.run(
        ["openssl", "req", "-in", str(out / "web2.example.com.req"), "-noout", "-subject", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CN = web2.example.com, OU = Web, O = Example" in text and "DNS:web2.example.com" in text
    assert key_count(hsm, "tb-pin", SECRET_PIN) == (3, 3)
    # the journal, read by sqlite3: each row started, then key done and request done with the fingerprint
    rows = journal_rows(
        tmp_path / "state", "SELECT user, step, status, key_id IS NOT NULL FROM journal_events ORDER BY id"
    )
    assert rows[:3] == [
        "web1.example.com|key|started|0",
        "web1.example.com|key|done|1",
        "web1.example.com|request|done|1",
    ]
    assert len(rows) == 9
    digests = journal_rows(tmp_path / "state", "SELECT request_sha256 FROM journal_events WHERE step = 'request'")
    assert digests == [row["request_sha256"] for row in data["rows"]]
    # never the PIN: not in the journal file, nor anywhere in the state directory
    for path in (tmp_path / "state").iterdir():
        if path.is_file():
            assert SECRET_PIN.encode() not in path.read_bytes(), path
    # tokenagent journal shows the same run
    shown = run_cli("journal", "--batch", data["batch"], "--json", env=env)
    events = json.loads(shown.stdout)["events"]
    assert len(events) == 9 and {e["token_serial"] for e in events[1:]} == {data["token"]["serial"]}


def test_rerun_skips_done_rows_and_makes_new_ones(hsm: SoftHSM, tmp_path: Path) -> None:
    inf, csv = write_inputs(tmp_path, ["a.example.com", "b.example.com"])
    out = tmp_path / "out"
    env = env_for(hsm, tmp_path)
    before = key_count(hsm, "tb-small")
    first = run_cli(*batch_args(inf, csv, out, "tb-small"), env=env)
    assert first.returncode == 0, first.stderr
    csv.write_text("host,ou\na.example.com,Web\nb.example.com,Web\nc.example.com,Web\n")
    second = run_cli(*batch_args(inf, csv, out, "tb-small", "--json"), env=env)
    data = json.loads(second.stdout)
    assert [row["outcome"] for row in data["rows"]] == ["skipped", "skipped", "made"]
    assert key_count(hsm, "tb-small")[0] == before[0] + 3
    assert sorted(p.name for p in out.iterdir()) == ["row-1.req", "row-2.req", "row-3.req"]
    # another INF (one byte more) is another batch: its rows are not the first INF's
    inf.write_text(POLICY + "\n")
    third = run_cli(*batch_args(inf, csv, out, "tb-small", "--json"), env=env)
    assert third.returncode != 0
    assert {row["outcome"] for row in json.loads(third.stdout)["rows"]} == {"failed"}  # row-N.req exist


# -- bad inputs: one line with file:line, nothing made ----------------------------------------------


CASES = [
    ("host,ou,extra\nweb1,Web,x\n", POLICY, 4, r"hosts\.csv:1: column 'extra' names no string"),
    ("host\nweb1\n", POLICY, 3, r"server\.inf:4: \[Strings\] ou has no column in .*hosts\.csv"),
    ("host,ou\nweb1,Web\nweb2\n", POLICY, 4, r"hosts\.csv:3: 1 fields, the header has 2"),
    ("host,ou\nweb1,Web\nweb1,Web\n", POLICY, 4, r"hosts\.csv:3: the same values as line 2"),
    ('host,ou\n"web\n1",Web\n', POLICY, 4, r"hosts\.csv:2: column 'host': a control character"),
    ("host,ou\n", POLICY, 4, r"hosts\.csv: no rows after the header"),
    ("", POLICY, 4, r"hosts\.csv: empty"),
    ("host,host\nweb1,web2\n", POLICY, 4, r"hosts\.csv:1: column 'host' twice"),
    ('host,ou\nweb1,Web\n"a"b,Web\n', POLICY, 4, r"hosts\.csv:3: not CSV"),
    # the INF does not parse once a row fills it in: the CSV line, then the INF's own file:line
    (
        "host,ou\nweb1,sha256\nweb2,md9\n",
        POLICY.replace("KeyUsage", "HashAlgorithm = %ou%\nKeyUsage"),
        3,
        r"hosts\.csv:3: .*server\.inf:9: .*md9",
    ),
]


@pytest.mark.parametrize(("csv_text", "policy", "code", "message"), CASES)
def test_bad_inputs_fail_before_any_key(
    hsm: SoftHSM, tmp_path: Path, csv_text: str, policy: str, code: int, message: str
) -> None:
    inf = tmp_path / "server.inf"
    inf.write_text(policy)
    csv = tmp_path / "hosts.csv"
    csv.write_text(csv_text)
    run = run_cli(*batch_args(inf, csv, tmp_path / "out", "tb-errors"), env=env_for(hsm, tmp_path))
    lines = run.stderr.splitlines()
    assert run.returncode == code and len(lines) == 1, run.stderr
    assert re.search(message, lines[0]), lines[0]
    assert key_count(hsm, "tb-errors") == (0, 0)
    assert not (tmp_path / "out").exists()


def test_bad_names_binary_csv_and_options(hsm: SoftHSM, tmp_path: Path) -> None:
    inf, csv = write_inputs(tmp_path, ["../escape", "ok"])
    env = env_for(hsm, tmp_path)
    out = tmp_path / "out"
    run = run_cli(*batch_args(inf, csv, out, "tb-errors", "--name-column", "host"), env=env)
    assert run.returncode == 4 and "hosts.csv:2: '../escape' cannot name a file" in run.stderr
    run = run_cli(*batch_args(inf, csv, out, "tb-errors", "--name-column", "nope"), env=env)
    assert run.returncode == 2 and "--name-column 'nope'" in run.stderr
    csv.write_bytes(b"host,ou\n\xff\xfe,Web\n")
    run = run_cli(*batch_args(inf, csv, out, "tb-errors"), env=env)
    assert run.returncode == 4 and "hosts.csv:2: not UTF-8" in run.stderr
    run = run_cli("batch", "--items", str(csv), "--out", str(out), env=env)
    assert run.returncode == 2 and "give the INF once" in run.stderr
    run = run_cli("batch", str(inf), "--policy", str(inf), "--items", str(csv), "--out", str(out), env=env)
    assert run.returncode == 2 and "give the INF once" in run.stderr
    inf, csv = write_inputs(tmp_path, ["ok"])
    run = run_cli(*batch_args(inf, csv, out, "tb-errors", "--jobs", "0"), env=env)
    assert run.returncode == 2 and "--jobs 0" in run.stderr
    (tmp_path / "a-file").write_text("")
    run = run_cli(*batch_args(inf, csv, tmp_path / "a-file", "tb-errors"), env=env)
    assert run.returncode == 13 and "not a directory" in run.stderr
    run = run_cli(*batch_args(inf, tmp_path / "missing.csv", out, "tb-errors"), env=env)
    assert run.returncode == 4 and "missing.csv" in run.stderr and run.stderr.count("\n") == 1
    assert key_count(hsm, "tb-errors") == (0, 0)


def test_missing_token_and_wrong_pin_stop_the_batch_cleanly(hsm: SoftHSM, tmp_path: Path) -> None:
    inf, csv = write_inputs(tmp_path, ["a", "b"])
    out = tmp_path / "out"
    missing = run_cli(*batch_args(inf, csv, out, "tb-nowhere"), env=env_for(hsm, tmp_path))
    assert missing.returncode == 6 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    wrong = run_cli(*batch_args(inf, csv, out, "tb-errors", "--json"), env=env_for(hsm, tmp_path, "Wrong-Pin-5c2e"))
    assert wrong.returncode == 7, wrong.stderr
    assert wrong.stderr.count("\n") == 1 and "Wrong-Pin-5c2e" not in wrong.stderr + wrong.stdout
    data = json.loads(wrong.stdout)
    assert data["error"]["exit_code"] == 7 and [r["outcome"] for r in data["rows"]] == ["not-run", "not-run"]
    assert key_count(hsm, "tb-errors") == (0, 0) and list(out.iterdir()) == []
    for path in (tmp_path / "state").iterdir():  # the wrong PIN is not kept anywhere either
        if path.is_file():
            assert b"Wrong-Pin-5c2e" not in path.read_bytes(), path
    journal = sqlite3.connect(tmp_path / "state" / "journal.sqlite3")
    statuses = [row for row in journal.execute("SELECT step, status, exit_code FROM journal_events ORDER BY id")]
    # each run journaled its attempt: the missing token (6), then the wrong PIN (7)
    assert statuses == [("key", "started", None), ("key", "failed", 6), ("key", "started", None), ("key", "failed", 7)]


# -- progress: a bar on a terminal, plain lines otherwise -------------------------------------------


def test_progress_bar_on_a_terminal_and_plain_lines_otherwise(hsm: SoftHSM, tmp_path: Path) -> None:
    inf, csv = write_inputs(tmp_path, [f"t{n}" for n in range(6)])
    env = env_for(hsm, tmp_path)
    args = batch_args(inf, csv, tmp_path / "tty", "tb-tty")
    code, screen, _ = run_in_terminal(args, env, b"\x00never", "")
    assert code == 0, screen
    assert re.search(r"\r\[#{30}\] 6/6  \d+\.\d req/s  ETA 0 s  row-6", screen), screen
    assert "\r[#####" in screen and "\x1b[K" in screen
    assert "6 made, 0 skipped, 0 failed" in screen
    csv.write_text("host,ou\n" + "".join(f"p{n},Web\n" for n in range(3)))
    plain = run_cli(*batch_args(inf, csv, tmp_path / "plain", "tb-tty"), env=env)
    assert plain.returncode == 0
    assert plain.stderr.splitlines() == [
        f"[{n + 1}/3] row {n + 1} row-{n + 1}: made {tmp_path / 'plain' / f'row-{n + 1}.req'}" for n in range(3)
    ]
    assert "\r" not in plain.stderr + plain.stdout and "\x1b" not in plain.stderr + plain.stdout
    assert plain.stdout.splitlines()[1].split() == [
        "row",
        "line",
        "name",
        "outcome",
        "key",
        "id",
        "request",
        "/",
        "error",
    ]


# -- 200 requests, re-run, SIGKILL --------------------------------------------------------------------


@pytest.mark.slow
def test_200_requests_with_two_jobs_then_a_rerun_skips_all(hsm: SoftHSM, tmp_path: Path) -> None:
    hosts = [f"h{n}.example.com" for n in range(200)]
    inf, csv = write_inputs(tmp_path, hosts)
    out = tmp_path / "out"
    env = env_for(hsm, tmp_path)
    args = batch_args(inf, csv, out, "tb-200", "--jobs", "2", "--name-column", "host", "--json")
    run = run_cli(*args, env=env)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["counts"]["made"] == 200 and data["jobs"] == 2
    files = sorted(out.glob("*.req"))
    assert len(files) == 200 and not list(out.glob(".*"))
    verify_requests(files)
    assert key_count(hsm, "tb-200") == (200, 200)
    again = run_cli(*args, env=env)
    assert again.returncode == 0, again.stderr
    redo = json.loads(again.stdout)
    assert redo["counts"] == {"made": 0, "recovered": 0, "installed": 0, "skipped": 200, "failed": 0, "not-run": 0}
    assert [r["key_id"] for r in redo["rows"]] == [r["key_id"] for r in data["rows"]]
    assert key_count(hsm, "tb-200") == (200, 200)


@pytest.mark.slow
def test_sigkill_half_way_then_rerun_ends_with_exactly_200(hsm: SoftHSM, tmp_path: Path) -> None:
    hosts = [f"k{n}.example.com" for n in range(200)]
    inf, csv = write_inputs(tmp_path, hosts)
    out = tmp_path / "out"
    env = env_for(hsm, tmp_path)
    args = batch_args(inf, csv, out, "tb-kill", "--name-column", "host")
    child = subprocess.Popen(
        [sys.executable, "-m", "tokenagent", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("*.req"))) < 90:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    made_before = len(list(out.glob("*.req")))
    assert 0 < made_before < 200
    run = run_cli(*args, "--json", env=env)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["counts"]["skipped"] + data["counts"]["recovered"] >= made_before - 1
    assert data["counts"]["made"] + data["counts"]["skipped"] + data["counts"]["recovered"] == 200
    files = sorted(out.glob("*.req"))
    assert len(files) == 200 and not list(out.glob(".*"))  # no temporary file left
    verify_requests(files)
    assert key_count(hsm, "tb-kill") == (200, 200)  # no orphan key from the killed run
    # every request's key is on the token: its CKA_ID (pkcs11-tool) is the SHA-1 of the request's EC
    # point (the last 65 bytes of the public key's DER, taken with openssl)
    point = "openssl pkey -pubin -outform DER | tail -c 65 | sha1sum | cut -c1-40"
    script = f'for f in "{out}"/*.req; do openssl req -in "$f" -noout -pubkey | {point}; done'
    points = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split()
    listing = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            hsm.module,
            "--token-label",
            "tb-kill",
            "--login",
            "--pin",
            USER_PIN,
            "-O",
            "--type",
            "privkey",
        ],
        capture_output=True,
        text=True,
        env=hsm.env(),
        check=True,
    ).stdout
    ids = re.findall(r"ID:\s+([0-9a-f]+)", listing)
    assert len(points) == 200 and sorted(points) == sorted(ids)
    done = journal_rows(
        tmp_path / "state",
        "SELECT COUNT(DISTINCT row_key) FROM journal_events WHERE step = 'request' AND status = 'done'",
    )
    assert done == ["200"]


def test_jobs_two_on_a_small_batch(hsm: SoftHSM, tmp_path: Path) -> None:
    inf, csv = write_inputs(tmp_path, [f"j{n}" for n in range(8)])
    run = run_cli(
        *batch_args(inf, csv, tmp_path / "out", "tb-jobs", "--jobs", "3", "--json"), env=env_for(hsm, tmp_path)
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert [row["row"] for row in data["rows"]] == list(range(1, 9))  # in CSV order whatever finished first
    assert len({row["key_id"] for row in data["rows"]}) == 8
    verify_requests(sorted((tmp_path / "out").iterdir()))
    assert key_count(hsm, "tb-jobs") == (8, 8)


# A real SIGKILL at the worst moments: the child patches one function to kill itself at row 3.
CRASH = r"""
import os, signal, sys
point, rest = sys.argv[1], sys.argv[2:]
count = {"n": 0}

def die_at_third() -> None:
    count["n"] += 1
    if count["n"] == 3:
        os.kill(os.getpid(), signal.SIGKILL)

if point == "generated":  # the key pair exists, the intent is open, nothing else
    from tokenagent.token import raw
    real_generate = raw.generate_key_pair
    def generate(*args, **kwargs):
        result = real_generate(*args, **kwargs)
        die_at_third()
        return result
    raw.generate_key_pair = generate
elif point == "recorded":  # the pending record is committed, the request is still the temporary file
    real_replace = os.replace
    def replace(source, target, *args, **kwargs):
        if str(target).endswith(".req"):
            die_at_third()
        return real_replace(source, target, *args, **kwargs)
    os.replace = replace
elif point == "renamed":  # the request is in place, the journal does not say "done" yet
    from tokenagent.station.journal import Attempt
    real_events = Attempt.events
    def events(self, *steps):
        if ("request", "done") in steps:
            die_at_third()
        return real_events(self, *steps)
    Attempt.events = events
sys.argv = ["tokenagent", *rest]
from tokenagent.entry import main
main()
"""


@pytest.mark.parametrize("point", ["generated", "recorded", "renamed"])
def test_killed_at_the_worst_moment_then_rerun_ends_with_one_key_per_row(
    hsm: SoftHSM, tmp_path: Path, point: str
) -> None:
    token = f"tb-crash-{point}"
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", token, "--so-pin", SO_PIN, "--pin", USER_PIN],
        check=True,
        capture_output=True,
        env=hsm.env(),
    )
    inf, csv = write_inputs(tmp_path, ["c1", "c2", "c3", "c4"])
    out = tmp_path / "out"
    env = env_for(hsm, tmp_path)
    args = batch_args(inf, csv, out, token, "--name-column", "host")
    killed = subprocess.run([sys.executable, "-c", CRASH, point, *args], env=env, capture_output=True, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = run_cli(*args, "--json", env=env)
    assert run.returncode == 0, run.stderr
    outcomes = [row["outcome"] for row in json.loads(run.stdout)["rows"]]
    expected_third = {"generated": "made", "recorded": "recovered", "renamed": "recovered"}[point]
    assert outcomes == ["skipped", "skipped", expected_third, "made"]
    assert sorted(p.name for p in out.iterdir()) == ["c1.req", "c2.req", "c3.req", "c4.req"]  # no .tmp left
    verify_requests(sorted(out.iterdir()))
    assert key_count(hsm, token) == (4, 4)
    pending = subprocess.run(
        ["sqlite3", str(tmp_path / "state" / "pending.sqlite3"), "SELECT COUNT(*) FROM pending_requests"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert pending.stdout.strip() == "4"


# -- --config: each row also submitted and accepted -----------------------------------------------------


def test_config_submits_each_row_and_installs_its_certificate(hsm: SoftHSM, tmp_path: Path, certsrv_peer: Any) -> None:
    token = "tb-ca"
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", token, "--so-pin", SO_PIN, "--pin", USER_PIN],
        check=True,
        capture_output=True,
        env=hsm.env(),
    )
    policy = POLICY + "\n[RequestAttributes]\nCertificateTemplate = User\n"
    inf, csv = write_inputs(tmp_path, ["ca1.example.com", "ca2.example.com"], policy)
    out = tmp_path / "out"
    env = {**env_for(hsm, tmp_path), "CA_PW": CA_PASSWORD}
    config = [
        "--config",
        f"certsrv+{certsrv_peer.url}",
        "--ca-bundle",
        str(certsrv_peer.tls_ca_pem),
        "--ca-user",
        CA_USER,
        "--ca-password-source",
        "env:CA_PW",
        "--ca-auth",
        "basic",
    ]
    args = [*batch_args(inf, csv, out, token, "--name-column", "host"), *config, "--json"]
    run = run_cli(*args, env=env)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert [row["outcome"] for row in data["rows"]] == ["installed", "installed"]
    assert data["ca"].startswith("certsrv+") or "certsrv" in data["ca"]
    assert CA_PASSWORD not in run.stdout + run.stderr
    # pkcs11-tool: each certificate on the token next to its key, issued under the peer's CA (openssl)
    for row in data["rows"]:
        der = subprocess.run(
            [
                "pkcs11-tool",
                "--module",
                hsm.module,
                "--token-label",
                token,
                "--read-object",
                "--type",
                "cert",
                "--id",
                row["key_id"],
            ],
            capture_output=True,
            env=hsm.env(),
            check=True,
        ).stdout
        pem = subprocess.run(["openssl", "x509", "-inform", "DER"], input=der, capture_output=True, check=True).stdout
        verified = subprocess.run(
            ["openssl", "verify", "-CAfile", str(certsrv_peer.ca_chain_pem)], input=pem, capture_output=True
        )
        assert verified.returncode == 0, verified.stderr
        serial = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem, capture_output=True, check=True)
        assert serial.stdout.decode().strip().split("=")[1].lower().lstrip("0") == row["certificate_serial"]
    steps = journal_rows(
        tmp_path / "state", "SELECT step || ':' || status FROM journal_events WHERE user = 'ca1.example.com'"
    )
    assert steps == [
        "key:started", "key:done", "request:done", "submit:started", "submit:done", "accept:started", "accept:done"
    ]  # fmt: skip
    for path in (tmp_path / "state").iterdir():  # the journal, the pending store, the locks
        if path.is_file():
            assert CA_PASSWORD.encode() not in path.read_bytes()
    again = run_cli(*args, env=env)
    assert [row["outcome"] for row in json.loads(again.stdout)["rows"]] == ["skipped", "skipped"]


def test_config_pending_rows_are_finished_by_the_rerun(hsm: SoftHSM, tmp_path: Path) -> None:
    """file:DIR (a person is the CA): every row ends pending (exit 14, key and request kept); once
    the answers are beside the requests, the re-run installs them without making new keys."""
    from tests.ca import OpenSslCA

    token = "tb-ca-file"
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", token, "--so-pin", SO_PIN, "--pin", USER_PIN],
        check=True,
        capture_output=True,
        env=hsm.env(),
    )
    inf, csv = write_inputs(tmp_path, ["f1", "f2"])
    drop = tmp_path / "drop"
    drop.mkdir()
    args = [*batch_args(inf, csv, tmp_path / "out", token, "--name-column", "host"), "--config", f"file:{drop}"]
    env = env_for(hsm, tmp_path)
    first = run_cli(*args, "--json", env=env)
    assert first.returncode == 14, first.stderr
    rows = json.loads(first.stdout)["rows"]
    assert [row["outcome"] for row in rows] == ["failed", "failed"]
    assert all(row["error"]["details"]["pending_id"] for row in rows)
    assert key_count(hsm, token) == (2, 2)
    ca = OpenSslCA.create(tmp_path / "ca")
    for request in sorted(drop.glob("*.req")):
        text = request.read_bytes().replace(b"NEW CERTIFICATE REQUEST", b"CERTIFICATE REQUEST")
        ca.issue(text, request.with_suffix(".cer"))
    second = run_cli(*args, "--json", env=env)
    assert second.returncode == 0, second.stderr
    redo = json.loads(second.stdout)["rows"]
    assert [row["outcome"] for row in redo] == ["installed", "installed"]
    assert [row["key_id"] for row in redo] == [row["key_id"] for row in rows]  # the same keys, no new ones
    assert key_count(hsm, token) == (2, 2)
    listing = subprocess.run(
        ["pkcs11-tool", "--module", hsm.module, "--token-label", token, "-O", "--type", "cert"],
        capture_output=True,
        text=True,
        env=hsm.env(),
        check=True,
    ).stdout
    assert sorted(re.findall(r"ID:\s+([0-9a-f]+)", listing)) == sorted(row["key_id"] for row in rows)
    third = run_cli(*args, "--json", env=env)
    assert [row["outcome"] for row in json.loads(third.stdout)["rows"]] == ["skipped", "skipped"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_stops_the_batch_with_one_key_per_request(hsm: SoftHSM, tmp_path: Path, jobs: str) -> None:
    token = f"tb-int-{jobs}"
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", token, "--so-pin", SO_PIN, "--pin", USER_PIN],
        check=True,
        capture_output=True,
        env=hsm.env(),
    )
    inf, csv = write_inputs(tmp_path, [f"i{n}" for n in range(300)])
    out = tmp_path / "out"
    args = [sys.executable, "-m", "tokenagent", *batch_args(inf, csv, out, token, "--jobs", jobs)]
    child = subprocess.Popen(
        args, env=env_for(hsm, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("*.req"))) < 20:
        time.sleep(0.01)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert stderr.splitlines()[-1].startswith("tokenagent: error: interrupted")
    made = len(list(out.glob("*.req")))
    assert f"{made} made" in stdout and f"{300 - made} not-run" in stdout
    assert key_count(hsm, token) == (made, made) and not list(out.glob(".*"))


def test_config_after_a_crash_asks_the_ca_for_the_recovered_row_too(hsm: SoftHSM, tmp_path: Path) -> None:
    """--config file:DIR, killed after row 3's pending record: the re-run adopts row 3's request,
    asks the CA about rows 1-3 again without new keys, makes row 4; the answers then install all 4."""
    from tests.ca import OpenSslCA

    token = "tb-ca-crash"
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", token, "--so-pin", SO_PIN, "--pin", USER_PIN],
        check=True,
        capture_output=True,
        env=hsm.env(),
    )
    inf, csv = write_inputs(tmp_path, ["r1", "r2", "r3", "r4"])
    drop = tmp_path / "drop"
    drop.mkdir()
    args = [*batch_args(inf, csv, tmp_path / "out", token, "--name-column", "host"), "--config", f"file:{drop}"]
    env = env_for(hsm, tmp_path)
    killed = subprocess.run([sys.executable, "-c", CRASH, "recorded", *args], env=env, capture_output=True, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    second = run_cli(*args, "--json", env=env)
    assert second.returncode == 14, second.stderr
    rows = json.loads(second.stdout)["rows"]
    assert [row["outcome"] for row in rows] == ["failed"] * 4  # all four pending with the CA
    assert all(row["error"]["exit_code"] == 14 for row in rows)
    assert key_count(hsm, token) == (4, 4)
    ca = OpenSslCA.create(tmp_path / "ca")
    for request in sorted(drop.glob("*.req")):
        ca.issue(
            request.read_bytes().replace(b"NEW CERTIFICATE REQUEST", b"CERTIFICATE REQUEST"),
            request.with_suffix(".cer"),
        )
    third = run_cli(*args, "--json", env=env)
    assert third.returncode == 0, third.stderr
    assert [row["outcome"] for row in json.loads(third.stdout)["rows"]] == ["installed"] * 4
    assert key_count(hsm, token) == (4, 4)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r1.req", "r2.req", "r3.req", "r4.req"]
