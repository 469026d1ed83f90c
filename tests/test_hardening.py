"""What an enrollment station promises its operator, tried the way an attacker or a careless operator would.

- The confirmation screen and `show` never pass a control, bidi or invisible character to the
  terminal (checked byte by byte on a real pseudo-terminal), and what is signed is what is shown.
- `new` killed with SIGKILL at random moments leaves nothing that one recovery does not remove.
- Concurrent `new` runs with one KeyContainer make exactly one key.
- /dev/zero, FIFOs, directories and huge files are refused at once, without reading them.
- Ctrl-C at any moment: one line, exit 130, nothing half-done.
- PIN-like --pin-source values are never printed back; RequesterName with control characters is
  refused; PrivateKeyArchive on a token that cannot export is refused at its INF line; an output
  path that is a dangling symbolic link is not replaced without -f.

The terminal checks here do not use tokenagent's own display module: they apply Unicode's
categories directly, so a mistake in tokenagent's rule cannot hide itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.ca import OpenSslCA
from tests.conftest import USER_PIN, SoftHSM, der_order, pkcs11_tool, run_cli, run_in_terminal

AGENT_TOKEN = "ta-agent"
AGENT_LABEL = "agent-hostile"
REQUESTER = "EXAMPLE\\ada"


def cli(softhsm: SoftHSM, *args: str, **env: str):
    return run_cli(*args, env=softhsm.env(PIN=USER_PIN, **env))


# -- an independent check of what reaches a terminal ----------------------------------------------


def leaks(screen: str) -> list[str]:
    """Characters a terminal would act on or hide: every C0/C1 control but the line feed (the
    pseudo-terminal writes each line end as CR LF), format characters (bidi, zero-width), line and
    paragraph separators. Each as U+XXXX."""
    body = screen.replace("\r\n", "\n")
    return [
        f"U+{ord(char):04X}" for char in body if char != "\n" and unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")
    ]


def escaped(text: str) -> str:
    """How the display rule (docs/commands.md) shows ``text``: hidden characters as \\xNN or \\uNNNN."""
    out = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") or (category == "Zs" and char != " "):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


# -- the agent ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent(softhsm: SoftHSM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An EC agent key born on ta-agent, certified by the OpenSSL test CA, its certificate accepted."""
    work = tmp_path_factory.mktemp("hostile-agent")
    ca = OpenSslCA.create(work / "ca")
    inf = work / "agent.inf"
    inf.write_text(
        f'[NewRequest]\nSubject = "CN=Hostile Test Agent"\nKeyAlgorithm = ECDSA_P256\nKeyContainer = {AGENT_LABEL}\n'
    )
    made = cli(softhsm, "new", str(inf), str(work / "agent.req"), "--token", AGENT_TOKEN, "--pin-source", "env:PIN")
    assert made.returncode == 0, made.stderr
    cert = work / "agent.cer"
    ca.issue(work / "agent.req", cert, extensions="extendedKeyUsage = 1.3.6.1.4.1.311.20.2.1", copy_extensions=False)
    installed = cli(softhsm, "accept", str(cert), "--token", AGENT_TOKEN, "--pin-source", "env:PIN")
    assert installed.returncode == 0, installed.stderr
    return cert


def agent_uri() -> str:
    return f"pkcs11:token={AGENT_TOKEN};object={AGENT_LABEL};type=private"


def hostile_request(path: Path, common_name: str, sans: list[x509.GeneralName]) -> Path:
    """A PKCS#10 from anywhere (here: cryptography with a software key), validly self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name, _validate=False),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
            ]
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    path.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    return path


HOSTILE = [
    ("csi-overwrite", "Alice\x1b[2K\x1b[1A\rCN=Bob (trusted)", []),
    ("carriage-return", "Alice\rBob the Admin", []),
    ("right-to-left-override", "Alice\u202enimdA", []),
    ("zero-width-space", "Al\u200bice", []),
    ("nul", "Alice\x00Bob", []),
    ("newline", "Alice\nCN=Bob", []),
    ("bidi-isolates", "Alice\u2066Bob\u2069", []),
    ("c1-csi", "Alice\x9b2J", []),
    ("byte-order-mark", "Ali\ufeffce", []),
    ("line-separator", "Alice\u2028Bob", []),
    ("ten-kilobytes", "A" * 10240, []),
    ("san-dns-escape", "Alice", [x509.DNSName("www.example.com\x1b[1A\rwww.bank.example")]),
    ("san-email-cr", "Alice", [x509.RFC822Name("alice@example.com\rbob@example.com")]),
]


@pytest.mark.filterwarnings("ignore:Attribute.s length must be:UserWarning")  # the 10 kB name, on purpose
@pytest.mark.parametrize(("name", "common_name", "sans"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_confirmation_and_show_show_exactly_what_is_signed(
    name: str, common_name: str, sans: list[x509.GeneralName], softhsm: SoftHSM, agent: Path, tmp_path: Path
) -> None:
    request = hostile_request(tmp_path / "user.req", common_name, sans)
    out = tmp_path / "signed.p7"
    args = ["sign", str(request), str(out), "--binary", "--agent", agent_uri(), "--pin-source", "env:PIN"]
    args += ["--requester", REQUESTER]
    status, screen, sent = run_in_terminal(args, softhsm.env(PIN=USER_PIN), b"enrollment agent?", "y")
    assert sent and status == 0, screen
    assert leaks(screen) == [], screen

    signed = _inner_request(out.read_bytes())
    subject = der_order(signed.subject)
    assert signed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common_name  # signed as given
    assert escaped(subject) in screen.replace("\r\n", "\n")  # ...and shown in full, escaped
    for san in sans:
        assert escaped(str(san.value)) in screen
    hidden = escaped(common_name + "".join(str(s.value) for s in sans)) != common_name + "".join(
        str(s.value) for s in sans
    )
    assert ("WARNING" in screen and "invisible characters" in screen) == hidden
    if len(common_name) > 256:
        assert "10,2" in screen and "characters long" in screen

    shown = cli(softhsm, "show", str(out))
    assert shown.returncode == 0, shown.stderr
    assert leaks(shown.stdout) == []
    assert escaped(subject) in shown.stdout
    # RFC 4514 text shows a NUL as \00 itself; any other hidden character makes show add a note
    assert ("NOTE:" in shown.stdout) == (
        escaped(subject + "".join(str(s.value) for s in sans)) != subject + "".join(str(s.value) for s in sans)
    )
    as_json = json.loads(cli(softhsm, "show", str(out), "--json").stdout)  # JSON keeps the exact value
    assert as_json["request"]["subject"] == subject


def _inner_request(der: bytes) -> x509.CertificateSigningRequest:
    from asn1crypto import cms

    content = cms.ContentInfo.load(der)["content"]["encap_content_info"]["content"].contents
    return x509.load_der_x509_csr(bytes(content))


@pytest.mark.parametrize("form", ["pkcs7", "cmc"])
@pytest.mark.parametrize(
    "requester",
    ["EXAMPLE\\ada\nRequesterName=EXAMPLE\\admin", "EXAMPLE\\ada\x1b[1A", "EXAMPLE\\\u202enimda", "EXAMPLE\\a\u200bda"],
    ids=["newline", "escape", "rlo", "zero-width"],
)
def test_requester_with_control_characters_is_refused(
    form: str, requester: str, softhsm: SoftHSM, agent: Path, tmp_path: Path
) -> None:
    request = hostile_request(tmp_path / "user.req", "Alice", [])
    out = tmp_path / "signed.p7"
    run = cli(
        softhsm, "sign", str(request), str(out), "--agent", agent_uri(), "--pin-source", "env:PIN", "--yes",
        "--requester", requester, "--format", form,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "requester name holds control or invisible characters" in run.stderr
    assert run.stderr.count("\n") == 1 and leaks(run.stderr) == []
    assert not out.exists()


def test_inf_requester_name_with_control_characters_is_refused_at_its_line(softhsm: SoftHSM, tmp_path: Path) -> None:
    inf = tmp_path / "eobo.inf"
    inf.write_text('[NewRequest]\nSubject = "CN=Ada"\nRequestType = CMC\nRequesterName = "EXAMPLE\\ada\x1b[2J"\n')
    run = cli(softhsm, "inf", "show", str(inf))
    assert run.returncode == 3 and f"{inf}:4: RequesterName" in run.stderr
    assert leaks(run.stderr) == [] and "\\x1b[2J" in run.stderr


def test_hostile_labels_are_escaped_in_pending_objects_and_errors(softhsm: SoftHSM, tmp_path: Path) -> None:
    label = "evil\x1b[2J\u202elabel"
    inf = tmp_path / "p.inf"
    inf.write_text(f'[NewRequest]\nSubject = "CN=Eve\x1b[1A"\nKeyAlgorithm = ECDSA_P256\nKeyContainer = "{label}"\n')
    made = cli(softhsm, "new", str(inf), str(tmp_path / "x.req"), "--token", "ta-new", "--pin-source", "env:PIN")
    assert made.returncode == 0, made.stderr
    for args in (
        ("pending",),
        ("objects", "--token", "ta-new", "--pin-source", "env:PIN"),
        ("inf", "show", str(inf)),
        ("new", str(inf), "--dry-run", "--token", "ta-new", "--pin-source", "env:PIN"),
        ("new", str(inf), str(tmp_path / "y.req"), "--token", "ta-new", "--pin-source", "env:PIN"),  # exists: exit 8
        ("show", str(tmp_path / "x.req")),
        ("show", str(tmp_path / "no\x1b[2Jsuch\u202efile")),
    ):
        run = cli(softhsm, *args)
        assert leaks(run.stdout) == [] and leaks(run.stderr) == [], (args, run.stdout, run.stderr)
        assert "\\x1b[2J" in run.stdout + run.stderr or "Eve\\x1b[1A" in run.stdout, args
    pending = json.loads(cli(softhsm, "pending", "--json").stdout)
    assert any(p["key_label"] == label for p in pending["pending"])  # JSON keeps the exact label

    ca = OpenSslCA.create(tmp_path / "ca")  # the CA copies the subject with its escape sequence
    ca.issue(tmp_path / "x.req", tmp_path / "x.cer")
    accepted = cli(softhsm, "accept", str(tmp_path / "x.cer"), "--token", "ta-new", "--pin-source", "env:PIN")
    assert accepted.returncode == 0, accepted.stderr
    assert leaks(accepted.stdout) == [] and leaks(accepted.stderr) == []
    assert "\\x1b[2J" in accepted.stdout and "Eve\\x1b[1A" in accepted.stdout  # key label, certificate


# -- SIGKILL during new, then one recovery ----------------------------------------------------------


def _token_objects(softhsm: SoftHSM, token: str) -> list[dict[str, str]]:
    """pkcs11-tool -O (an independent listing): class, label and id of every object."""
    listing = pkcs11_tool(softhsm, "-O", token=token)
    objects = []
    for block in re.split(r"\n(?=\S)", listing.strip()):
        if not block.strip():
            continue
        kind = block.split(" Object", 1)[0].strip()
        label = re.search(r"^[ \t]*label:[ \t]*(.*)$", block, flags=re.M)
        ident = re.search(r"^[ \t]*ID:[ \t]*([0-9a-f]+)[ \t]*$", block, flags=re.M)
        objects.append({"class": kind, "label": label.group(1) if label else "", "id": ident.group(1) if ident else ""})
    return objects


def _softhsm_token_file(softhsm: SoftHSM, label: str) -> Path:
    """The token.object of a SoftHSM token: its directory is named after the serial number."""
    listing = json.loads(cli(softhsm, "tokens", "--json").stdout)
    serial = next(
        t["serial"] for m in listing["modules"] for s in m["slots"] if (t := s.get("token")) and t["label"] == label
    )
    (directory,) = [d for d in (softhsm.directory / "tokens").iterdir() if d.name.replace("-", "").endswith(serial)]
    return directory / "token.object"


def _pending(softhsm: SoftHSM, state: Path) -> dict:
    run = cli(softhsm, "pending", "--json", "--state-dir", str(state))
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_one_recovery(softhsm: SoftHSM, tmp_path: Path) -> None:
    token, state = "ta-crash", tmp_path / "state"
    rng = random.Random(12)
    killed_containers = []
    durations = {}  # how long an unhindered run takes, per key type: the kills fall inside it
    token_file = _softhsm_token_file(softhsm, token)
    saved, restored = token_file.read_bytes(), 0
    for i in range(32):
        inf = tmp_path / f"k{i}.inf"
        key = "KeyAlgorithm = ECDSA_P256" if i % 2 else "KeyLength = 2048"
        inf.write_text(f'[NewRequest]\nSubject = "CN=crash {i}"\n{key}\nKeyContainer = crash-{i}\n')
        args = ["new", str(inf), str(tmp_path / f"k{i}.req"), "--token", token, "--pin-source", "env:PIN"]
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "tokenagent", *args, "--state-dir", str(state)],
            env=softhsm.env(PIN=USER_PIN), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        if key not in durations:  # the first run of each kind is measured, not killed
            process.communicate(timeout=60)
            assert process.returncode == 0
            durations[key] = time.monotonic() - started
            continue
        time.sleep(rng.uniform(0.05, durations[key]))
        process.kill()
        process.communicate(timeout=30)
        if process.returncode == -signal.SIGKILL:
            killed_containers.append(f"crash-{i}")
        if token_file.stat().st_size == 0:
            # SoftHSM's file store rewrites token.object (label, PINs, flags) in place, with ftruncate
            # then write, on every login and object change: a process killed in between leaves the
            # token unloadable whatever that process was. Put it back as its administrator would; the
            # key objects, which are what this test is about, are in files of their own.
            token_file.write_bytes(saved)
            restored += 1
    assert len(killed_containers) >= 20  # most of the 30 runs were caught in flight
    print(f"{len(killed_containers)} runs killed in flight; SoftHSM's token.object restored {restored} time(s)")

    recovered = cli(
        softhsm, "pending", "--recover", "--token", token, "--pin-source", "env:PIN", "--state-dir", str(state)
    )
    assert recovered.returncode == 0, recovered.stderr
    pending = _pending(softhsm, state)
    assert pending["interrupted"] == []
    explained = {p["key_id"] for p in pending["pending"] if p["token_label"] == token}
    objects = _token_objects(softhsm, token)
    unexplained = [o for o in objects if o["id"] not in explained]
    assert unexplained == [], recovered.stdout
    for obj in objects:  # exactly one key pair per pending request: no duplicates, no halves
        assert sum(o["id"] == obj["id"] for o in objects) == 2
    for request in tmp_path.glob("k*.req"):  # every request file that exists has its pending record
        der = run_cli("show", str(request), "--json", env=softhsm.env())
        assert der.returncode == 0
        assert any(p["policy_file"].endswith(request.with_suffix(".inf").name) for p in pending["pending"])
    # a KeyContainer whose run was killed before its request was recorded can be used again: nothing
    # of it is left (a kill can also land after the commit, as the run exits: that request stands)
    recorded = {p["key_label"] for p in pending["pending"]}
    cut_short = [container for container in killed_containers if container not in recorded]
    assert cut_short, killed_containers
    again = tmp_path / "again.inf"
    again.write_text(f'[NewRequest]\nSubject = "CN=again"\nKeyAlgorithm = ECDSA_P256\nKeyContainer = {cut_short[0]}\n')
    run = cli(softhsm, "new", str(again), str(tmp_path / "again.req"), "--token", token, "--pin-source", "env:PIN",
              "--state-dir", str(state))  # fmt: skip
    assert run.returncode == 0, run.stderr


def test_next_new_on_the_token_recovers_by_itself(softhsm: SoftHSM, tmp_path: Path) -> None:
    """A run killed right after C_GenerateKeyPair; the next `new` on the token removes its key pair.

    To catch the run at that moment every time, the test locks the state store once the run has
    recorded its intent: the run generates an RSA-3072 key (a second or more), then waits to
    record the final CKA_ID, and is killed there, its key pair still carrying the temporary CKA_ID."""
    token, state = "ta-crash", tmp_path / "state"
    state.mkdir()
    inf = tmp_path / "a.inf"
    inf.write_text('[NewRequest]\nSubject = "CN=slow"\nKeyLength = 3072\nKeyContainer = killed-while-generating\n')
    before = _token_objects(softhsm, token)
    db = sqlite3.connect(state / "pending.sqlite3", isolation_level=None)
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenagent", "new", str(inf), str(tmp_path / "a.req"), "--token", token,
         "--pin-source", "env:PIN", "--state-dir", str(state)],
        env=softhsm.env(PIN=USER_PIN), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _open_intents(db):
            assert time.monotonic() < deadline and process.poll() is None, "no intent was recorded"
            time.sleep(0.005)
        db.execute("BEGIN EXCLUSIVE")
        while sum(o["label"] == "killed-while-generating" for o in _token_objects(softhsm, token)) < 2:
            assert time.monotonic() < deadline and process.poll() is None, "no key pair appeared"
            time.sleep(0.05)
        assert process.poll() is None  # it waits for the store, with both halves on the token
        process.kill()
        process.communicate(timeout=30)
    finally:
        if db.in_transaction:
            db.rollback()
        db.close()
    assert _pending(softhsm, state)["interrupted"], "the intent of the killed run is recorded"
    listing = cli(softhsm, "pending", "--state-dir", str(state))
    assert "never finished" in listing.stdout and "pending --recover" in listing.stdout

    other = tmp_path / "b.inf"
    other.write_text('[NewRequest]\nSubject = "CN=next"\nKeyAlgorithm = ECDSA_P256\nKeyContainer = next-run\n')
    run = cli(softhsm, "new", str(other), str(tmp_path / "b.req"), "--token", token, "--pin-source", "env:PIN",
              "--state-dir", str(state))  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (
        "interrupted `new` (KeyContainer 'killed-while-generating'" in run.stderr
        and "removed 2 object(s)" in run.stderr
    )
    after = _token_objects(softhsm, token)
    assert not any(o["label"] == "killed-while-generating" for o in after)
    assert len(after) == len(before) + 2  # only next-run's key pair was added
    assert _pending(softhsm, state)["interrupted"] == []


# -- four runs at once, one KeyContainer --------------------------------------------------------------


def test_concurrent_new_with_one_key_container_makes_one_key(softhsm: SoftHSM, tmp_path: Path) -> None:
    token, state = "ta-race", tmp_path / "state"
    for round_number in range(5):
        label = f"race-{round_number}"
        inf = tmp_path / f"{label}.inf"
        inf.write_text(f'[NewRequest]\nSubject = "CN={label}"\nKeyAlgorithm = ECDSA_P256\nKeyContainer = {label}\n')
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tokenagent",
                    "new",
                    str(inf),
                    str(tmp_path / f"{label}-{i}.req"),
                    "--token",
                    token,
                    "--pin-source",
                    "env:PIN",
                    "--state-dir",
                    str(state),
                ],
                env=softhsm.env(PIN=USER_PIN),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in processes]
        for p in processes:
            p.stdout.close() if p.stdout else None
            p.stderr.close() if p.stderr else None
        codes = sorted(code for code, _ in results)
        assert codes == [0, 8, 8, 8], results
        for code, stderr in results:
            if code == 8:
                assert "already exists" in stderr and stderr.count("\n") <= 2  # the wait note and the error
        privates = [o for o in _token_objects(softhsm, token) if o["label"] == label and "Private" in o["class"]]
        assert len(privates) == 1
    pending = _pending(softhsm, state)
    files = sorted(tmp_path.glob("race-*-*.req"))
    assert len(files) == 5
    recorded = {p["request_sha256"] for p in pending["pending"]}
    for request in files:  # every request file has its pending record
        import hashlib

        from tokenagent.request.armor import read_der

        assert hashlib.sha256(read_der(request.read_bytes())).hexdigest() in recorded


# -- inputs that are not regular files, or too large ------------------------------------------------


@contextlib.contextmanager
def _fifo(path: Path) -> Iterator[Path]:
    os.mkfifo(path)
    try:
        yield path
    finally:
        path.unlink()


def _run_measured(args: list[str], env: dict[str, str], stdin: int | None = None) -> tuple[int, str, float, int]:
    """(exit code, stderr, seconds, peak RSS in KiB) of one CLI run."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenagent", *args], env=env, stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stderr.close()
    return process.returncode, stderr, time.monotonic() - started, usage.ru_maxrss


def test_special_and_huge_files_are_refused_at_once(softhsm: SoftHSM, tmp_path: Path, agent: Path) -> None:
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # 50 MB
    directory = tmp_path / "a-directory"
    directory.mkdir()
    env = softhsm.env(PIN=USER_PIN)
    _, _, _, baseline = _run_measured(["show", str(tmp_path / "missing")], env)
    commands = [
        ["show", "{}"],
        ["inf", "show", "{}"],
        ["new", "{}", "--dry-run", "--token", "ta-new"],
        ["accept", "{}", "--token", "ta-acc", "--pin-source", "env:PIN"],
        ["repair", "{}", "--token", "ta-acc", "--pin-source", "env:PIN", "--dry-run"],
        ["sign", "{}", "--agent", agent_uri(), "--pin-source", "env:PIN", "--yes", "--requester", REQUESTER],
        ["revoke-request", "--cert", "{}", "--agent", agent_uri(), "--pin-source", "env:PIN"],
    ]
    with _fifo(tmp_path / "fifo") as fifo:
        inputs = {"/dev/zero": "character device", str(fifo): "FIFO", str(directory): "directory", str(huge): "limit"}
        for command in commands:
            for path, reason in inputs.items():
                args = [part.replace("{}", path) for part in command]
                code, stderr, seconds, peak = _run_measured(args, env)
                assert code == 4, (args, stderr)
                assert reason in stderr and stderr.count("\n") == 1, (args, stderr)
                assert seconds < 5, (args, seconds)
                assert peak < baseline + 20 * 1024, (args, peak, baseline)  # nothing was read into memory
    with open("/dev/zero", "rb") as zero:  # standard input that never ends: read up to the limit only
        code, stderr, seconds, peak = _run_measured(["show", "-"], env, stdin=zero.fileno())
    assert code == 4 and "longer than the limit" in stderr and seconds < 5
    assert peak < baseline + 3 * 4 * 1024 + 20 * 1024


def test_pin_source_that_never_ends_is_bounded(softhsm: SoftHSM) -> None:
    run = cli(softhsm, "objects", "--token", "ta-main", "--pin-source", "file:/dev/zero")
    assert run.returncode == 7 and "no line end in the first 4096 bytes" in run.stderr


# -- Ctrl-C at any moment ---------------------------------------------------------------------------


def _hold_token_lock(softhsm: SoftHSM, state: Path, token: str) -> int:
    """Hold the lock file `new` takes for ``token`` (as another tokenagent would) and return its fd."""
    from tokenagent.store.locks import lock_path

    listing = json.loads(cli(softhsm, "tokens", "--json").stdout)
    found = [t for m in listing["modules"] for s in m["slots"] if (t := s.get("token")) and t["label"] == token]
    path = lock_path(state, found[0]["serial"], token)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@pytest.mark.slow
def test_sigint_at_random_moments(softhsm: SoftHSM, tmp_path: Path) -> None:
    """20 SIGINTs between 0.05 s and 1.5 s into runs that wait (for a PIN that never comes, for the
    token lock, for standard input): every one exits 130 with one line and no traceback, and the
    token and the state store are as before."""
    token, state = "ta-intr", tmp_path / "state"
    inf = tmp_path / "p.inf"
    inf.write_text('[NewRequest]\nSubject = "CN=interrupted"\nKeyAlgorithm = ECDSA_P256\nKeyContainer = intr\n')
    before = _token_objects(softhsm, token)
    lock_fd = _hold_token_lock(softhsm, state, token)
    rng = random.Random(7)
    # A signal that arrives before the interpreter has run any of tokenagent's code cannot be
    # handled by tokenagent (about 15 ms on an idle machine): on a machine so loaded that start-up
    # takes longer than 50 ms, the earliest moment moves out to three times that start-up.
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import tokenagent.entry"], check=True, env=softhsm.env())
    earliest = max(0.05, 3 * (time.monotonic() - started))
    try:
        for i in range(20):
            read_end, write_end = os.pipe()  # a PIN that never arrives, or a stdin that never ends
            kind = ("pin", "lock", "stdin", "pin")[i % 4]
            new = ["new", str(inf), str(tmp_path / f"{i}.req"), "--token", token, "--state-dir", str(state)]
            args = {
                "pin": [*new[:-2], "--pin-source", f"fd:{read_end}", "--state-dir", str(tmp_path / "other")],
                "lock": [*new, "--pin-source", "env:PIN"],
                "stdin": ["show", "-"],
            }[kind]
            process = subprocess.Popen(
                [sys.executable, "-m", "tokenagent", *args], env=softhsm.env(PIN=USER_PIN),
                stdin=read_end if kind == "stdin" else subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, pass_fds=(read_end,),
            )  # fmt: skip
            os.close(read_end)
            moment = rng.uniform(earliest, 1.5)
            time.sleep(moment)
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=30)
            os.close(write_end)
            text = stderr.decode(errors="replace")
            assert process.returncode == 130, (kind, moment, text)
            assert "Traceback" not in text and text.count("\n") <= 2, (kind, moment, text)  # a wait note at most
            assert text.rstrip("\n").splitlines()[-1].startswith("tokenagent: error: interrupted"), (kind, text)
    finally:
        os.close(lock_fd)
    assert _token_objects(softhsm, token) == before
    assert _pending(softhsm, state)["interrupted"] == [] and not list(tmp_path.glob("*.req"))


# -- the smaller points ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--pin-source", "731946"),
        ("--pin-source", "env:731946"),
        ("--pin-source", "fd:731946"),
        ("--pin-source", "file:731946"),
    ],
)
def test_a_pin_typed_as_its_source_is_never_printed(args: tuple[str, ...], softhsm: SoftHSM) -> None:
    for verbose in ((), ("-v",)):
        run = cli(softhsm, *verbose, "objects", "--token", "ta-main", *args, "--json")
        assert run.returncode in (2, 7), run.stderr
        assert "731946" not in run.stderr + run.stdout
    env_run = cli(softhsm, "objects", "--token", "ta-main", TOKENAGENT_PIN_SOURCE="731946")
    assert env_run.returncode == 2 and "731946" not in env_run.stderr


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ("Microsoft Smart Card Key Storage Provider", "cannot leave it"),
        ("Microsoft Software Key Storage Provider", "does not send private keys for archival"),
    ],
)
def test_private_key_archive_is_refused_at_its_line(
    provider: str, message: str, softhsm: SoftHSM, tmp_path: Path
) -> None:
    inf = tmp_path / "archive.inf"
    inf.write_text(
        f'[NewRequest]\nSubject = "CN=Ada"\nProviderName = "{provider}"\nRequestType = CMC\nPrivateKeyArchive = TRUE\n'
    )
    before = _token_objects(softhsm, "ta-new")
    run = cli(softhsm, "new", str(inf), str(tmp_path / "x.req"), "--token", "ta-new", "--pin-source", "env:PIN")
    assert run.returncode == 3 and f"{inf}:5: PrivateKeyArchive = TRUE" in run.stderr and message in run.stderr
    assert _token_objects(softhsm, "ta-new") == before and not (tmp_path / "x.req").exists()


def test_dangling_symlink_output_is_not_replaced_without_f(softhsm: SoftHSM, tmp_path: Path) -> None:
    inf = tmp_path / "p.inf"
    inf.write_text('[NewRequest]\nSubject = "CN=link"\nKeyAlgorithm = ECDSA_P256\n')
    target, link = tmp_path / "elsewhere.req", tmp_path / "x.req"
    link.symlink_to(target)
    before = _token_objects(softhsm, "ta-new")
    run = cli(softhsm, "new", str(inf), str(link), "--token", "ta-new", "--pin-source", "env:PIN")
    assert run.returncode == 13 and "exists" in run.stderr and "--overwrite" in run.stderr
    assert link.is_symlink() and not target.exists() and _token_objects(softhsm, "ta-new") == before
    run = cli(softhsm, "new", str(inf), str(link), "--token", "ta-new", "--pin-source", "env:PIN", "-f")
    assert run.returncode == 0, run.stderr
    assert not link.is_symlink() and link.is_file() and not target.exists()  # the link itself was replaced


def _open_intents(db: sqlite3.Connection) -> int:
    try:
        return int(db.execute("SELECT count(*) FROM key_intents").fetchone()[0])
    except sqlite3.OperationalError:  # no table yet, or the run holds the write lock
        return 0
