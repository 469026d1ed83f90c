"""`enroll.batch.NewBatch`: many `new` requests in one process with one login per token.

Run in a child process through OpenSC's pkcs11-spy, which records every PKCS#11 call, so the
login count is read from a tool we did not write; every request is checked with openssl.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import USER_PIN, SoftHSM
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
