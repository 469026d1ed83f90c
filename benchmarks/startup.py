"""Benchmark 5: start-up. `tokenagent --help` and `tokenagent tokens` against `python -c pass`.

`--help` must not import python-pkcs11 or cryptography (the CLI imports command modules lazily);
`tokens` loads SoftHSM and lists its slots, so it pays for python-pkcs11 and C_Initialize.
For scale, the same interpreter importing the heavy dependencies is timed as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, TOKENAGENT, Config, checked, figure, make_hsm, ratios, row, timed_run
from benchmarks.oneshot import shown

HELP_TARGET = 0.25
HEAVY_IMPORTS = "import cryptography.x509, pkcs11, click, asn1crypto.x509, asn1crypto.csr"
HEAVY_NAME = "python -c 'import cryptography.x509, pkcs11, click, asn1crypto'"
NEW_IMPORT = "python -c 'import tokenagent.enroll.new'"
SIGN_CHECK = "import sys, tokenagent.enroll.new; print('tokenagent.enroll.sign' in sys.modules)"


def run(config: Config, work: Path) -> dict[str, Any]:
    hsm = make_hsm(work / "hsm", ["ta", "second"])
    env = hsm.env()
    commands = {
        "python -c pass": [PYTHON, "-c", "pass"],
        "tokenagent --help": [TOKENAGENT, "--help"],
        "tokenagent tokens": [TOKENAGENT, "tokens"],
        HEAVY_NAME: [PYTHON, "-c", HEAVY_IMPORTS],
        NEW_IMPORT: [PYTHON, "-c", "import tokenagent.enroll.new"],
    }
    runs = config.pick(15, 3)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for command in commands.values():  # warm the page cache once, untimed
        timed_run(command, env)
    for _ in range(runs):
        for name, command in commands.items():  # interleaved, so drift hits every command alike
            seconds, code, stderr = timed_run(command, env)
            if code != 0:
                raise RuntimeError(f"{' '.join(command)} exited {code}: {stderr.strip()[-300:]}")
            times[name].append(seconds)
    figures = {name: figure(values, "s") for name, values in times.items()}
    base = times["python -c pass"]
    help_fig, tokens_fig = figures["tokenagent --help"], figures["tokenagent tokens"]
    help_ratio = figure(ratios(times["tokenagent --help"], base), "x")
    tokens_ratio = figure(ratios(times["tokenagent tokens"], base), "x")
    return {
        "importtime": import_times(env, config.pick(5, 2)),
        "rows": [
            row(
                "startup_help",
                "`tokenagent --help` wall time (vs `python -c pass`)",
                f"<= {HELP_TARGET} s",
                help_fig,
                figures["python -c pass"],
                help_ratio,
                help_fig["median"] <= HELP_TARGET,
                f"{runs} runs each, interleaved",
            ),
            row(
                "startup_tokens",
                "`tokenagent tokens` wall time, 2 SoftHSM tokens (vs `python -c pass`)",
                "(no target; reported)",
                tokens_fig,
                figures["python -c pass"],
                tokens_ratio,
                None,
                f"importing cryptography + pkcs11 + click + asn1crypto alone: {figures[HEAVY_NAME]['median']:.3f} s",
            ),
        ],
        "figures": figures,
        "new_imports_sign": checked([PYTHON, "-c", SIGN_CHECK], env).strip() == "True",
        "commands": {name: shown(command) for name, command in commands.items()},
    }


#: the packages shown on their own in the import table; the rest is "stdlib and others"
IMPORT_GROUPS = ("tokenagent", "cryptography", "pkcs11", "asn1crypto", "click")


def import_times(env: dict[str, str], runs: int) -> dict[str, Any]:
    """`python -X importtime` of what `new` imports: self time per top-level package (issue 15:
    tokenagent's own modules cost about as much as cryptography and python-pkcs11 together)."""
    import re
    import statistics
    import subprocess

    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        stderr = subprocess.run(
            [PYTHON, "-X", "importtime", "-c", "import tokenagent.enroll.new"],
            env=env, capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
        sums: dict[str, float] = {}
        for self_us, name in re.findall(r"^import time:\s+(\d+) \|\s+\d+ \| +(\S+)", stderr, flags=re.M):
            top = name.split(".")[0]
            group = top if top in IMPORT_GROUPS else "stdlib and others"
            sums[group] = sums.get(group, 0.0) + int(self_us) / 1000
        for group, ms in sums.items():
            samples.setdefault(group, []).append(ms)
    return {"runs": runs, "self_ms": {group: statistics.median(values) for group, values in samples.items()}}
