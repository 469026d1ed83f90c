"""Test harness: one private SoftHSM instance per test session, real tokens, no PKCS#11 mocks.

The instance is made by softhsm/softhsm-env.sh (the same script people use by hand) before any
test loads a PKCS#11 module, because SoftHSM reads SOFTHSM2_CONF once, at C_Initialize.

Tokens (user PIN 1234, SO PIN 87654321 unless said otherwise):
  ta-main     keys and a certificate made by pkcs11-tool (an independent tool), read-only for tests
  ta-second   empty
  ta-twin x2  two tokens with the same label, for ambiguity
  ta-login    for PIN tests, user PIN LOGIN_PIN (its PIN state flags change)
  ta-new      `tokenagent new` writes keys here (tests compare object lists, never absolute counts)
  ta-cap      capacity tests: starts empty; only test_new's container-limit test writes to it
  ta-acc      accept/repair tests (test_accept.py): keys from `new` and from pkcs11-tool, certificates
  ta-agent    the enrollment agent's card (test_sign.py): agent keys and their certificates
  ta-user     the users' card (test_sign.py): keys and requests made by `new`
  ta-crash    `new` killed with SIGKILL, then recovered (test_hardening.py)
  ta-race     concurrent `new` runs with one KeyContainer (test_hardening.py)
  ta-intr     `new` interrupted with SIGINT while it waits (test_hardening.py)

TOKENAGENT_STATE_DIR (the pending store) and XDG_CONFIG_HOME (providers.toml) point into the
session's temporary directory, so tests never read or write the developer's own state.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USER_PIN = "1234"
SO_PIN = "87654321"
LOGIN_PIN = "login-Pin-4711"  # distinctive, so a leak check cannot match a serial number by chance
TOKENS = [
    "ta-main",
    "ta-second",
    "ta-twin",
    "ta-twin",
    f"ta-login:{SO_PIN}:{LOGIN_PIN}",
    "ta-new",
    "ta-cap",
    "ta-acc",
    "ta-agent",
    "ta-user",
    "ta-crash",
    "ta-race",
    "ta-intr",
]


@dataclass(frozen=True)
class SoftHSM:
    directory: Path
    conf: Path
    module: str

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    @property
    def config_home(self) -> Path:
        return self.directory / "config"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SOFTHSM2_CONF=str(self.conf),
            TOKENAGENT_MODULE=self.module,
            TOKENAGENT_STATE_DIR=str(self.state_dir),
            XDG_CONFIG_HOME=str(self.config_home),
        )
        env.pop("TOKENAGENT_PROVIDERS", None)
        env.pop("TOKENAGENT_PIN_SOURCE", None)
        env.update(extra)
        return env


def make_softhsm(directory: Path, labels: list[str]) -> SoftHSM:
    """Run the shell harness; twins (repeated labels) are created by softhsm2-util directly."""
    script = ROOT / "softhsm" / "softhsm-env.sh"
    unique = list(dict.fromkeys(labels))
    out = subprocess.run(
        ["bash", str(script), str(directory), *unique], check=True, capture_output=True, text=True
    ).stdout
    exports = dict(re.findall(r"^export (\w+)=(.*)$", out, flags=re.M))
    conf, module = exports["SOFTHSM2_CONF"], exports["TOKENAGENT_MODULE"]
    for label in {lab for lab in labels if labels.count(lab) > 1}:
        for _ in range(labels.count(label) - 1):
            subprocess.run(
                [
                    "softhsm2-util",
                    "--init-token",
                    "--free",
                    "--label",
                    label.split(":")[0],
                    "--so-pin",
                    SO_PIN,
                    "--pin",
                    USER_PIN,
                ],
                check=True,
                capture_output=True,
                env={**os.environ, "SOFTHSM2_CONF": conf},
            )
    return SoftHSM(directory=directory, conf=Path(conf), module=module)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    instance = make_softhsm(tmp_path_factory.mktemp("softhsm"), TOKENS)
    names = ("SOFTHSM2_CONF", "TOKENAGENT_MODULE", "TOKENAGENT_PIN_SOURCE", "TOKENAGENT_STATE_DIR", "XDG_CONFIG_HOME")
    saved = {k: os.environ.get(k) for k in (*names, "TOKENAGENT_PROVIDERS")}
    os.environ["SOFTHSM2_CONF"] = str(instance.conf)
    os.environ["TOKENAGENT_MODULE"] = instance.module
    os.environ["TOKENAGENT_STATE_DIR"] = str(instance.state_dir)
    os.environ["XDG_CONFIG_HOME"] = str(instance.config_home)
    os.environ.pop("TOKENAGENT_PIN_SOURCE", None)
    os.environ.pop("TOKENAGENT_PROVIDERS", None)
    populate_main_token(instance)
    yield instance
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def pkcs11_tool(instance: SoftHSM, *args: str, token: str = "ta-main", login: bool = True) -> str:
    command = ["pkcs11-tool", "--module", instance.module, "--token-label", token]
    if login:
        command += ["--login", "--pin", USER_PIN]
    result = subprocess.run([*command, *args], capture_output=True, text=True, env=instance.env(), check=False)
    if result.returncode != 0:
        raise AssertionError(f"pkcs11-tool {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def populate_main_token(instance: SoftHSM) -> None:
    """Keys and a certificate on ta-main, made by pkcs11-tool and openssl (tools we did not write)."""
    pkcs11_tool(
        instance,
        "--keypairgen",
        "--key-type",
        "rsa:2048",
        "--id",
        "01",
        "--label",
        "rsa-key",
        "--usage-sign",
        "--usage-decrypt",
    )
    pkcs11_tool(
        instance,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "02",
        "--label",
        "ec-key",
        "--usage-sign",
    )
    work = instance.directory / "cert"
    work.mkdir(exist_ok=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(work / "k.pem"),
            "-out",
            str(work / "c.pem"),
            "-subj",
            "/CN=tokenagent test/O=Test",
            "-days",
            "30",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "x509", "-in", str(work / "c.pem"), "-outform", "DER", "-out", str(work / "c.der")],
        check=True,
        capture_output=True,
    )
    pkcs11_tool(
        instance,
        "--write-object",
        str(work / "c.der"),
        "--type",
        "cert",
        "--id",
        "03",
        "--label",
        "test-cert",
    )


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, pass_fds: tuple[int, ...] = ()
) -> Run:
    """Run the real console entry point in a child process (stdin is never a TTY here)."""
    result = subprocess.run(
        [sys.executable, "-m", "tokenagent", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        pass_fds=pass_fds,
        timeout=120,
        check=False,
    )
    return Run(result.returncode, result.stdout, result.stderr)


@pytest.fixture()
def cli(softhsm: SoftHSM):
    def invoke(*args: str, **extra_env: str) -> Run:
        return run_cli(*args, env=softhsm.env(**extra_env))

    return invoke


def run_in_terminal(args: list[str], env: dict[str, str], prompt: bytes, reply: str) -> tuple[int, str, bool]:
    """Run the CLI on a real pseudo-terminal; type ``reply`` once ``prompt`` appears.

    Returns (exit code, everything the terminal showed, whether the reply was sent)."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # child: a real TTY on stdin/stdout/stderr
        os.execve(sys.executable, [sys.executable, "-m", "tokenagent", *args], env)
    output, sent = b"", False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
        if not sent and prompt in output:
            os.write(fd, (reply + "\n").encode())
            sent = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace"), sent


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
