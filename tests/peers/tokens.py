"""PKCS#11 implementations other than SoftHSM, each from Debian packages in a private directory, for
the core-chain suite (tests/test_implementations.py) that runs the same tests on all of them.

    nss = start_nss(directory)      # NSS softokn on a fresh database: softhsm/nss-env.sh
    tpm = start_tpm(directory)      # swtpm + tpm2-pkcs11: softhsm/swtpm-env.sh start
    tpm.stop()                      # swtpm ends; the directory goes with pytest's tmp_path

Each is an `Implementation`: the module spec for TOKENAGENT_MODULE, the token's label, the
environment its processes need, and an independent listing of the token by pkcs11-tool (for NSS
through p11-kit-proxy, which passes softokn's init string: `Implementation._nss_listing`).

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
        """The token's objects as pkcs11-tool lists them (logged in): a tool we did not write."""
        if self.name == "nss":
            return self._nss_listing()
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

    def _nss_listing(self) -> str:
        """pkcs11-tool cannot give softokn its init string, but p11-kit-proxy passes a module file's
        x-init-reserved, and p11-kit reads the user's module files (~/.config/pkcs11/modules),
        except for root. So: a read-only copy of the database, a module file for it in a private
        HOME, and pkcs11-tool through p11-kit-proxy.so, as user nobody when this runs as root."""
        import shutil
        import tempfile

        proxy = next(Path("/usr/lib").glob("*-linux-gnu/p11-kit-proxy.so"), None)
        assert proxy is not None, "p11-kit-proxy.so not found (Debian package p11-kit-modules)"
        with tempfile.TemporaryDirectory(prefix="nss-listing-") as work:
            copy, home = Path(work) / "db", Path(work) / "home"
            shutil.copytree(self.directory / "nss", copy)
            (home / ".config" / "pkcs11" / "modules").mkdir(parents=True)
            init = f"configdir='sql:{copy}' certPrefix='' keyPrefix='' secmod='secmod.db' flags=readOnly"
            (home / ".config" / "pkcs11" / "modules" / "nss-listing.module").write_text(
                f"module: {self.library}\nx-init-reserved: {init}\n"
            )
            for path in [Path(work), *Path(work).rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.getuid() == 0 else []
            config = home / ".config"
            result = subprocess.run(
                [*as_user, "env", f"HOME={home}", f"XDG_CONFIG_HOME={config}", "pkcs11-tool", "--module", str(proxy),
                 "--token-label", self.token, "--login", "--pin", USER_PIN, "-O"],
                capture_output=True, text=True, check=False, cwd=work,
            )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"pkcs11-tool -O through p11-kit-proxy on NSS: {result.stderr}")
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
