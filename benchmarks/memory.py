"""Benchmark 6: peak RSS of a process making 1,000 batch requests against one making 10.

Each run is its own child process on a fresh SoftHSM instance: it imports what it needs, makes N
P-256 requests with `NewBatch` (one token, one session), and reports getrusage's ru_maxrss. The
growth from 10 to 1,000 requests is what the batch keeps per request, plus what SoftHSM keeps:
SoftHSM holds every token object of the process in memory. The raw python-pkcs11 loop making
the same key pairs is measured the same way, so the token's own share can be told apart.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

from benchmarks.common import USER_PIN, Config, figure, log, make_hsm, row, run_child, write_infs

TARGET_MB = 10.0


def child(side: str, infs: list[str], out_dir: str) -> dict[str, Any]:
    # Both sides import the same modules and load the module first, so the peaks of 10-request runs
    # (where start-up dominates) are comparable and the growth is what the requests add.
    from benchmarks import raw
    from tokenagent.enroll.batch import NewBatch
    from tokenagent.enroll.new import NewOptions
    from tokenagent.token.library import find_token
    from tokenagent.token.pins import literal_pin_source
    from tokenagent.token.target import TokenTarget

    # python-pkcs11 first: it refuses a module something else initialized (tokenagent accepts one)
    lib = raw.load_lib()
    find_token("ta")
    raw.tbs_size(Path(infs[0]))  # the raw side's first step (cryptography, asn1crypto), done on both sides
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if side == "tokenagent":
        pins = literal_pin_source(USER_PIN)
        with NewBatch() as batch:
            for number, policy in enumerate(map(Path, infs), 1):
                output = Path(out_dir) / f"{policy.stem}.req"
                target = TokenTarget("ta", (), pins)
                batch.new(NewOptions(policy=policy, output=output, target=target), more=number < len(infs))
    else:
        raw.timed_keygen("ta", Path(infs[0]), len(infs), lib=lib)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_kib": peak, "before_kib": before, "requests": len(infs)}


def run(config: Config, work: Path) -> dict[str, Any]:
    small, large = 10, config.pick(1000, 30)
    repeats = config.repeats
    peaks: dict[tuple[str, int], list[float]] = {}
    for repeat in range(repeats):
        for side in ("tokenagent", "raw"):
            for count in (small, large):
                base = work / f"{side}-{count}-{repeat}"
                hsm = make_hsm(base / "hsm", ["ta"])
                infs = write_infs(base / "inf", "p256", count, f"m{repeat}-")
                (base / "out").mkdir()
                answer = run_child(
                    "memory:child",
                    {"side": side, "infs": [str(p) for p in infs], "out_dir": str(base / "out")},
                    hsm.env(),
                )
                peaks.setdefault((side, count), []).append(answer["peak_kib"] / 1024)
        log(
            f"memory repeat {repeat + 1}: tokenagent {peaks[('tokenagent', small)][-1]:.1f} -> "
            f"{peaks[('tokenagent', large)][-1]:.1f} MiB, raw {peaks[('raw', small)][-1]:.1f} -> "
            f"{peaks[('raw', large)][-1]:.1f} MiB"
        )
    growth = [b - a for a, b in zip(peaks[("tokenagent", small)], peaks[("tokenagent", large)], strict=True)]
    raw_growth = [b - a for a, b in zip(peaks[("raw", small)], peaks[("raw", large)], strict=True)]
    grown = figure(growth, "MiB")
    raw_grown = figure(raw_growth, "MiB")
    figures = {f"{side}_{count}": figure(values, "MiB") for (side, count), values in peaks.items()}
    own = figure([a - b for a, b in zip(growth, raw_growth, strict=True)], "MiB")
    return {
        "rows": [
            row(
                "memory_batch",
                f"memory: peak RSS growth, {large} vs {small} batch requests (P-256)",
                f"< {TARGET_MB:.0f} MB",
                grown,
                raw_grown,
                None,
                grown["median"] < TARGET_MB,
                f"peak RSS {figures[f'tokenagent_{small}']['median']:.1f} MiB after {small} requests, "
                f"{figures[f'tokenagent_{large}']['median']:.1f} MiB after {large}; baseline column: the raw "
                f"python-pkcs11 loop's growth for the same key pairs (SoftHSM keeps token objects in memory)",
            ),
            row(
                "memory_own",
                "memory: tokenagent's own share of that growth (its growth minus the raw loop's)",
                f"< {TARGET_MB:.0f} MB",
                own,
                None,
                None,
                own["median"] < TARGET_MB,
                "what the batch itself keeps per request (the target's intent: it must stay flat)",
            ),
        ],
        "figures": {
            **figures,
            "growth": grown,
            "raw_growth": raw_grown,
            "own_growth": own,
            "small": small,
            "large": large,
        },
    }
