"""Outputs that are devices or FIFOs are written into, never replaced.

Every output is written all or nothing: a temporary file beside it, renamed at the end. Renamed
onto /dev/null by root, that put a regular file where the null device was (seen on this machine:
a later test's `curl --data-binary @/dev/null` sent a stale request). A character device or a
FIFO is now written in place; tests use a FIFO and a private null device, never /dev/null itself.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from tests.conftest import USER_PIN, SoftHSM, make_softhsm, run_cli

INF = '[NewRequest]\nSubject = "CN=device output"\nKeyAlgorithm = ECDSA_P256\nKeyContainer = {name}\n'


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> SoftHSM:
    return make_softhsm(tmp_path_factory.mktemp("device-hsm"), ["ta-device"])


def new(token: SoftHSM, tmp_path: Path, name: str, output: Path, *extra: str) -> tuple[int, str]:
    inf = tmp_path / f"{name}.inf"
    inf.write_text(INF.format(name=name))
    env = token.env(PIN=USER_PIN, TOKENAGENT_STATE_DIR=str(tmp_path / "state"))
    run = run_cli("new", str(inf), str(output), "--token", "ta-device", "--pin-source", "env:PIN", *extra, env=env)
    return run.returncode, run.stderr


def test_a_fifo_receives_the_request(token: SoftHSM, tmp_path: Path) -> None:
    fifo = tmp_path / "request.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as handle:
            received.append(handle.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code, stderr = new(token, tmp_path, "to-fifo", fifo)
    reader.join(timeout=30)
    assert code == 0, stderr
    assert received and received[0].startswith(b"-----BEGIN NEW CERTIFICATE REQUEST-----")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the FIFO, not a file renamed over it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".request.fifo.")]  # no temporary left


@pytest.mark.skipif(os.geteuid() != 0, reason="making a character device needs root")
def test_a_null_device_stays_a_device(token: SoftHSM, tmp_path: Path) -> None:
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    code, stderr = new(token, tmp_path, "to-null", null)
    assert code == 0, stderr
    assert stat.S_ISCHR(os.stat(null).st_mode), "the device was replaced by a regular file"
    code, stderr = new(token, tmp_path, "to-null-again", null)  # no -f needed: nothing is replaced
    assert code == 0, stderr
    assert stat.S_ISCHR(os.stat(null).st_mode)
