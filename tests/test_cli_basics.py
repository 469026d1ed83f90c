"""Start-up cost, lazy imports, and the exit-code contract (kept in sync with docs/exit-codes.md)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, run_cli
from tokenagent.errors import EXIT_CODES


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        run = run_cli("--help")
        timings.append(time.perf_counter() - start)
        assert run.returncode == 0
    assert "tokens" in run.stdout and "objects" in run.stdout
    assert min(timings) < 0.5, timings
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom tokenagent.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = ('pkcs11', 'cryptography', 'asn1crypto')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip().endswith("[]"), probe.stdout


def test_every_command_has_help() -> None:
    for command in ("tokens", "objects", "new", "pending"):
        run = run_cli(command, "--help")
        assert run.returncode == 0 and "--json" in run.stdout


def test_unknown_command_and_option_are_usage_errors() -> None:
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("tokens", "--no-such-option").returncode == 2


def test_exit_codes_are_documented_exactly() -> None:
    doc = (ROOT / "docs" / "exit-codes.md").read_text()
    documented = re.findall(r"^\|\s*(\d+)\s*\|\s*`(\w+)`", doc, flags=re.M)
    assert {name: int(code) for code, name in documented} == EXIT_CODES


def test_exit_codes_are_stable() -> None:
    # Renumbering breaks users' scripts: change this table only by adding rows.
    assert EXIT_CODES == {
        "TokenAgentError": 1,
        "UsageError": 2,
        "PolicyError": 3,
        "InputError": 4,
        "ModuleError": 5,
        "TokenNotFoundError": 6,
        "AmbiguousTokenError": 6,
        "PinError": 7,
        "PinIncorrectError": 7,
        "PinLockedError": 7,
        "CapacityError": 8,
        "KeyExistsError": 8,
        "ObjectNotFoundError": 9,
        "AmbiguousObjectError": 15,
        "KeyMismatchError": 9,
        "TokenOperationError": 10,
        "TokenBusyError": 10,
        "VerificationError": 11,
        "CAError": 12,
        "OutputError": 13,
        "RequestPendingError": 14,
        "CAUnreachableError": 16,
        "CAProtocolError": 17,
        "CAConfigError": 18,
        "CAAuthenticationError": 19,
        "CANeedsRekeyError": 20,
        "Interrupted": 130,
        "Terminated": 143,
    }


def test_readme_starts_with_the_two_newcomer_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_commands = re.findall(r"^\s*(make \w+)\s*$", readme, flags=re.M)[:2]
    assert first_commands == ["make demo", "make test"]
    assert "make test" in Path(ROOT / ".ci" / "run").read_text()
