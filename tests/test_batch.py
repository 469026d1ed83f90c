"""`enroll.batch.NewBatch`: many `new` requests in one process with one login per token.

Run in a child process through OpenSC's pkcs11-spy, which records every PKCS#11 call, so the
login count is read from a tool we did not write; every request is checked with openssl.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tests.conftest import USER_PIN, SoftHSM, make_softhsm
from tests.test_login import spy_module

SCRIPT = r"""
import sys
from pathlib import Path
from tokenagent.enroll.batch import NewBatch
from tokenagent.enroll.new import NewOptions
from tokenagent.errors import KeyExistsError
from tokenagent.token.pins import literal_pin_source
from tokenagent.token.target import TokenTarget

work, spy, pin = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
names = ["batch-a", "batch-b", "batch-c", "batch-a"]  # the last one repeats a KeyContainer
with NewBatch() as batch:
    for number, name in enumerate(names):
        policy = work / f"{number}.inf"
        policy.write_text(f'[NewRequest]\nSubject = "CN={name}"\nKeyAlgorithm = ECDSA_P256\nKeyContainer = {name}\n')
        options = NewOptions(
            policy=policy, output=work / f"{number}.req",
            target=TokenTarget("ta-user", (spy,), literal_pin_source(pin)),
        )
        try:
            result = batch.new(options)
            print("made", number, result.key_id.hex())
        except KeyExistsError as exc:
            print("refused", number, exc.one_line())
"""


def test_batch_logs_in_once_and_checks_its_own_keys(softhsm: SoftHSM, tmp_path: Path) -> None:
    log = tmp_path / "spy.log"
    env = softhsm.env(PKCS11SPY=softhsm.module, PKCS11SPY_OUTPUT=str(log))
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), spy_module(), USER_PIN],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["made", "made", "made", "refused"], run.stdout
    assert "batch-a" in lines[3] and "0x8009000f" in lines[3]
    assert log.read_text().count("C_Login") == 1  # one login for the whole batch
    for number in range(3):
        verified = subprocess.run(
            ["openssl", "req", "-in", str(tmp_path / f"{number}.req"), "-verify", "-noout"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verified.returncode == 0, verified.stderr
    assert not (tmp_path / "3.req").exists()  # the refused request wrote nothing


SPARES = r"""
import os, sys
from pathlib import Path
from tokenagent.enroll.batch import NewBatch
from tokenagent.enroll.new import NewOptions
from tokenagent.token.pins import literal_pin_source
from tokenagent.token.target import TokenTarget

work, spy, pin, crash = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "crash"
requests = [("spare-a", "ECDSA_P256"), ("spare-b", "ECDSA_P256"), ("spare-c", "ECDSA_P256"),
            ("spare-d", "ECDSA_P384"), ("", "ECDSA_P256")]
batch = NewBatch()
for number, (container, algorithm) in enumerate(requests[:2] if crash else requests):
    policy = work / f"{number}.inf"
    named = f"KeyContainer = {container}\n" if container else ""
    policy.write_text(f'[NewRequest]\nSubject = "CN=r{number}"\nKeyAlgorithm = {algorithm}\n{named}')
    target = TokenTarget("spares", (spy,), literal_pin_source(pin))
    last = number == len(requests) - 1  # `more=False`: no spare after the last request
    result = batch.new(NewOptions(policy=policy, output=work / f"{number}.req", target=target), more=not last)
    print(result.key_label, result.key_id.hex())
if crash:
    os._exit(0)  # killed with a spare key pair on the token (made, or still being made)
batch.close()
"""


def _token_keys(softhsm: SoftHSM) -> list[tuple[str, str, str]]:
    """(class, label, hex CKA_ID) of every key object, as pkcs11-tool lists them."""
    listing = subprocess.run(
        ["pkcs11-tool", "--module", softhsm.module, "--token-label", "spares", "--login", "--pin", USER_PIN, "-O"],
        capture_output=True, text=True, env=softhsm.env(), check=True,
    ).stdout  # fmt: skip
    keys, kind, label = [], "", ""
    for line in listing.splitlines():
        if line.startswith(("Private Key Object", "Public Key Object")):
            kind = line.split()[0].lower()
        elif line.strip().startswith("label:"):
            label = line.split(":", 1)[1].strip()
        elif line.strip().startswith("ID:") and kind:
            keys.append((kind, label, line.split(":", 1)[1].strip()))
            kind = ""
    return sorted(keys)


def _open_intents(softhsm: SoftHSM) -> int:
    database = softhsm.state_dir / "pending.sqlite3"
    out = subprocess.run(["sqlite3", str(database), "SELECT COUNT(*) FROM key_intents"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def _run_spares(softhsm: SoftHSM, work: Path, mode: str) -> tuple[list[str], str]:
    log = work / f"spy-{mode}.log"
    env = softhsm.env(PKCS11SPY=softhsm.module, PKCS11SPY_OUTPUT=str(log))
    run = subprocess.run(
        [sys.executable, "-c", SPARES, str(work), spy_module(), USER_PIN, mode],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines(), log.read_text(errors="replace")


def test_spare_keys_leave_exactly_the_requests_keys(tmp_path: Path) -> None:
    """The next request's key pair is made while this one is written (enroll/spares.py): requests
    of the same shape take it (a KeyContainer's label is set on it), another shape discards it, and
    the last request (more=False) makes none. The token then holds the requests' keys and
    nothing else, each request signed by the key its CKA_ID names, and no intent stays open."""
    softhsm = make_softhsm(tmp_path / "hsm", ["spares"])
    made, spy = _run_spares(softhsm, tmp_path, "all")
    labels = [line.split()[0] for line in made]
    assert labels[:4] == ["spare-a", "spare-b", "spare-c", "spare-d"] and labels[4].startswith("tokenagent-")
    # fresh keys for requests 0, 3 (P-384: the P-256 spare discarded) and 4 (P-256: the P-384 one
    # discarded); spares made after requests 0-3 (not after the last: more=False); two destroyed
    assert spy.count("C_GenerateKeyPair") == 7 and spy.count("C_DestroyObject") == 4, spy.count("C_GenerateKeyPair")
    keys = _token_keys(softhsm)
    expected = sorted((kind, label, key_id) for label, key_id in (line.split() for line in made) for kind in
                      ("private", "public"))  # fmt: skip
    assert keys == expected
    assert _open_intents(softhsm) == 0
    for number, line in enumerate(made):
        request = tmp_path / f"{number}.req"
        verified = subprocess.run(["openssl", "req", "-in", str(request), "-verify", "-noout"], capture_output=True)
        assert verified.returncode == 0, verified.stderr
        pem = subprocess.run(["openssl", "req", "-in", str(request), "-pubkey", "-noout"], capture_output=True)
        # CKA_ID = SHA-1 of the EC point (the subjectPublicKey): the request was signed by that key pair
        point = serialization.load_pem_public_key(pem.stdout).public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        assert hashlib.sha1(point).hexdigest() == line.split()[1]


def test_a_batch_killed_with_a_spare_leaves_it_to_recovery(tmp_path: Path) -> None:
    softhsm = make_softhsm(tmp_path / "hsm", ["spares"])
    made, _ = _run_spares(softhsm, tmp_path, "crash")
    assert len(made) == 2
    assert _open_intents(softhsm) >= 1  # the spare's and the reserved one
    # the next run on the token rolls the spare back (enroll/recovery.py)
    recovered = subprocess.run(
        [sys.executable, "-m", "tokenagent", "pending", "--recover", "--token", "spares", "--pin-source", "env:PIN"],
        capture_output=True, text=True, env=softhsm.env(PIN=USER_PIN), check=False,
    )  # fmt: skip
    assert recovered.returncode == 0, recovered.stderr
    assert _open_intents(softhsm) == 0
    # the two requests' key pairs, and nothing of the spare
    assert sorted(label for _, label, _ in _token_keys(softhsm)) == ["spare-a", "spare-a", "spare-b", "spare-b"]
