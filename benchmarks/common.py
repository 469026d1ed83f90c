"""What every benchmark shares: SoftHSM instances, child processes, INF files, figures.

SoftHSM reads SOFTHSM2_CONF once, at C_Initialize, and python-pkcs11 keeps a module loaded for
the life of the process. So the runner itself never loads a PKCS#11 module: every measurement
that touches a token runs in a child process (`run_child`) whose environment names the instance
it should see, and the child answers with one JSON line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent
TOKENAGENT = str(BIN / "tokenagent")
USER_PIN = "1234"
SO_PIN = "87654321"
RESULT_MARK = "@@benchmark-result@@ "


@dataclass(frozen=True)
class Config:
    quick: bool
    repeats: int

    def pick(self, full: int, quick: int) -> int:
        return quick if self.quick else full


# -- SoftHSM ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hsm:
    """One private SoftHSM instance (its own softhsm2.conf and tokens directory)."""

    directory: Path
    conf: Path
    module: str

    @property
    def tokens_dir(self) -> Path:
        return self.directory / "tokens"

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("TOKENAGENT_PIN_SOURCE", "TOKENAGENT_PROVIDERS", "PKCS11SPY", "PKCS11SPY_OUTPUT"):
            env.pop(name, None)
        env.update(
            SOFTHSM2_CONF=str(self.conf),
            TOKENAGENT_MODULE=self.module,
            TOKENAGENT_STATE_DIR=str(self.state_dir),
            XDG_CONFIG_HOME=str(self.directory / "config"),
            PYTHONPATH=str(ROOT),
        )
        env.update(extra)
        return env


def make_hsm(directory: Path, labels: Sequence[str]) -> Hsm:
    """softhsm/softhsm-env.sh DIR LABEL...: fresh tokens with user PIN 1234 and SO PIN 87654321."""
    out = subprocess.run(
        ["bash", str(ROOT / "softhsm" / "softhsm-env.sh"), str(directory), *labels],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    exports = dict(re.findall(r"^export (\w+)=(.*)$", out, flags=re.M))
    return Hsm(Path(directory).resolve(), Path(exports["SOFTHSM2_CONF"]), exports["TOKENAGENT_MODULE"])


def copy_hsm(source: Hsm, directory: Path) -> Hsm:
    """A copy of an instance (its tokens and pending store) under ``directory``, with its own conf."""
    directory = Path(directory).resolve()
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    shutil.copytree(source.tokens_dir, directory / "tokens")
    if source.state_dir.exists():
        shutil.copytree(source.state_dir, directory / "state")
    conf = directory / "softhsm2.conf"
    conf.write_text(source.conf.read_text().replace(str(source.tokens_dir), str(directory / "tokens")))
    return Hsm(directory, conf, source.module)


# -- child processes ----------------------------------------------------------------------------


def run_child(target: str, args: dict[str, Any], env: dict[str, str], *, timeout: float = 900) -> Any:
    """Run ``benchmarks.<module>:<function>(**args)`` in a fresh interpreter; returns its JSON answer."""
    proc = subprocess.run(
        [PYTHON, "-m", "benchmarks.child", target],
        input=json.dumps(args),
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    raise RuntimeError(f"child {target} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def timed_run(command: Sequence[str], env: dict[str, str], *, cwd: Path | None = None) -> tuple[float, int, str]:
    """Wall time of one command (fork/exec to exit), its return code and stderr."""
    start = time.perf_counter()
    proc = subprocess.run(list(command), env=env, cwd=cwd, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, proc.returncode, proc.stderr


def checked(command: Sequence[str], env: dict[str, str] | None = None, **kwargs: Any) -> str:
    proc = subprocess.run(list(command), env=env, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


# -- INF files ----------------------------------------------------------------------------------

KEY_LINES = {
    "p256": "KeyAlgorithm = ECDSA_P256",
    "rsa2048": "KeyAlgorithm = RSA\nKeyLength = 2048",
}

INF = """[Version]
Signature = "$Windows NT$"

[NewRequest]
Subject = "CN={name},OU=Users,DC=example,DC=com"
{key}
KeyContainer = {container}
KeyUsage = CERT_DIGITAL_SIGNATURE_KEY_USAGE

[Extensions]
2.5.29.17 = "{{text}}"
_continue_ = "UPN={name}@example.com&"
_continue_ = "EMail={name}@example.com"

[EnhancedKeyUsageExtension]
OID = 1.3.6.1.5.5.7.3.2        ; client authentication
OID = 1.3.6.1.4.1.311.20.2.2   ; smart-card logon

[RequestAttributes]
CertificateTemplate = SmartcardLogon
"""


def write_inf(path: Path, key: str, name: str, container: str | None = None) -> Path:
    """A smart-card logon request like docs/examples/smartcard-logon.inf, for one user."""
    path.write_text(INF.format(name=name, key=KEY_LINES[key], container=container or f"{name}-key"))
    return path


def write_infs(directory: Path, key: str, count: int, prefix: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [write_inf(directory / f"{prefix}{i:05d}.inf", key, f"{prefix}{i:05d}") for i in range(count)]


# -- figures ------------------------------------------------------------------------------------


def figure(samples: Sequence[float], unit: str, **extra: Any) -> dict[str, Any]:
    """A figure: median, min and max over its samples, and the samples themselves."""
    values = [float(s) for s in samples]
    return {
        "unit": unit,
        "median": statistics.median(values) if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "n": len(values),
        "samples": values,
        **extra,
    }


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Pairwise ratios of figures taken side by side in the same repeat."""
    return [a / b for a, b in zip(numerators, denominators, strict=True) if b]


def row(
    key: str,
    what: str,
    target: str,
    measured: dict[str, Any] | None,
    baseline: dict[str, Any] | None,
    ratio: dict[str, Any] | None,
    met: bool | None,
    note: str = "",
) -> dict[str, Any]:
    """One line of the table in docs/performance.md."""
    return {
        "key": key,
        "what": what,
        "target": target,
        "measured": measured,
        "baseline": baseline,
        "ratio": ratio,
        "met": met,
        "note": note,
    }


def alternate(repeat: int, first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """Run two measurements in alternating order across repeats (so drift does not favour one)."""
    if repeat % 2 == 0:
        a = first()
        b = second()
    else:
        b = second()
        a = first()
    return a, b


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
