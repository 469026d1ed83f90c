"""PKCS#11 implementations other than SoftHSM, each from Debian packages in a private directory, for
the core-chain suite (tests/test_implementations.py) that runs the same tests on all of them.

    nss = start_nss(directory)      # NSS softokn on a fresh database: softhsm/nss-env.sh
    tpm = start_tpm(directory)      # swtpm + tpm2-pkcs11: softhsm/swtpm-env.sh start
    tpm.stop()                      # swtpm ends; the directory goes with pytest's tmp_path

Each is an `Implementation`: the module spec for TOKENAGENT_MODULE, the token's label, the
environment its processes need, and an independent listing of the token (pkcs11-tool for modules it
can load; NSS's own certutil for softokn, which pkcs11-tool cannot initialize: it has no way to
pass softokn's init string).

swtpm has no resource manager in front of it: a TPM holds three transient objects, and tpm2-pkcs11
leaves its transient objects behind when a command fails half-way (a refused key generation), so
the next run would fail with "out of memory for object contexts". `fresh()` flushes them, as the
kernel's /dev/tpmrm0 does for every process on a real machine.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
USER_PIN = "1234"
SO_PIN = "87654321"


@dataclass
class Implementation:
    name: str  # softhsm | nss | tpm
    module: str  # TOKENAGENT_MODULE: a library path or a p11-kit module file
    token: str  # the token's label
    directory: Path
    variables: dict[str, str] = field(default_factory=dict)
    library: str = ""  # the .so itself, for pkcs11-tool and OpenSSL's engine
    stopper: Callable[[], None] | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.variables)
        env.update(
            TOKENAGENT_MODULE=self.module,
            TOKENAGENT_STATE_DIR=str(self.directory / "state"),
            PIN=USER_PIN,
        )
        env.pop("TOKENAGENT_PIN_SOURCE", None)
        env.update(extra)
        return env

    def fresh(self) -> None:
        """Before each test: flush what a failed run left in the TPM (see the module docstring)."""
        if self.name == "tpm":
            subprocess.run(["tpm2_flushcontext", "-t"], env=self.env(), capture_output=True, check=False)

    def listing(self) -> str:
        """The token's objects as a tool we did not write lists them (logged in)."""
        if self.name == "nss":
            database = f"sql:{self.directory / 'nss'}"
            pin_file = self.directory / "nss" / "pin.txt"
            keys = subprocess.run(
                ["certutil", "-K", "-d", database, "-f", str(pin_file)], capture_output=True, text=True, check=False
            )
            certs = subprocess.run(["certutil", "-L", "-d", database], capture_output=True, text=True, check=False)
            return keys.stdout + keys.stderr + certs.stdout
        result = subprocess.run(
            ["pkcs11-tool", "--module", self.library, "--token-label", self.token, "--login", "--pin", USER_PIN, "-O"],
            capture_output=True,
            text=True,
            env=self.env(),
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"pkcs11-tool -O on {self.name}: {result.stderr}")
        return result.stdout

    def stop(self) -> None:
        if self.stopper is not None:
            self.stopper()


def _exports(output: str) -> dict[str, str]:
    values = dict(re.findall(r"^export (\w+)=(.*)$", output, flags=re.M))
    return {name: value.replace("\\,", ",") for name, value in values.items()}  # printf %q escapes commas


def start_nss(directory: Path) -> Implementation:
    nss_dir = directory / "nss"
    out = subprocess.run(
        ["bash", str(ROOT / "softhsm" / "nss-env.sh"), str(nss_dir), USER_PIN],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module_file = _exports(out)["TOKENAGENT_MODULE"]
    library = re.search(r"^module: (.*)$", Path(module_file).read_text(), flags=re.M)
    assert library is not None
    return Implementation("nss", module_file, "NSS Certificate DB", directory, library=library.group(1))


def start_tpm(directory: Path) -> Implementation:
    tpm_dir = directory / "tpm"
    script = ROOT / "softhsm" / "swtpm-env.sh"
    out = subprocess.run(
        ["bash", str(script), "start", str(tpm_dir), f"tpm:{SO_PIN}:{USER_PIN}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    variables = _exports(out)
    module = variables.pop("TOKENAGENT_MODULE")
    # swtpm runs as a daemon; a watchdog stops it when this process ends however it ends (a killed
    # pytest runs no fixture teardown)
    watchdog = subprocess.Popen(
        ["bash", "-c", f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; exec bash \"$0\" stop \"$1\"",
         str(script), str(tpm_dir)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip

    def stop() -> None:
        subprocess.run(["bash", str(script), "stop", str(tpm_dir)], capture_output=True, check=False)
        watchdog.kill()
        watchdog.wait()

    return Implementation("tpm", module, "tpm", directory, variables=variables, library=module, stopper=stop)
