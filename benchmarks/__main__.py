"""`python -m benchmarks [--quick] [--only NAME ...] [--out-json PATH] [--out-md PATH]`.

Runs the benchmarks (each makes its own SoftHSM instances under one temporary directory), then
writes the raw figures as JSON and the table as Markdown. A full run writes
benchmarks/results.json and docs/performance.md; `--quick` (tiny N, 2 repeats, for development)
and `--only` write to build/bench/ unless paths are given, so they never overwrite the published
figures by accident.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import (
    accept,
    batch_cli,
    batch_new,
    calls,
    cosign,
    memory,
    oneshot,
    parallel_tokens,
    profiles,
    startup,
)
from benchmarks.analysis import analysis, derived_rows
from benchmarks.common import ROOT, Config, log
from benchmarks.report import machine, markdown, write_json

BENCHMARKS = {
    "startup": startup.run,
    "oneshot": oneshot.run,
    "batch_new": batch_new.run,
    "batch_cli": batch_cli.run,
    "parallel_tokens": parallel_tokens.run,
    "calls": calls.run,
    "cosign": cosign.run,
    "accept": accept.run,
    "memory": memory.run,
    "profiles": profiles.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny N and 2 repeats (development; < 60 s)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), metavar="NAME", help="run only these")
    parser.add_argument("--repeats", type=int, help="repeats per figure (default 5, or 2 with --quick)")
    parser.add_argument("--out-json", type=Path, help="raw figures (default benchmarks/results.json)")
    parser.add_argument("--out-md", type=Path, help="the table (default docs/performance.md)")
    parser.add_argument("--work", type=Path, help="keep the SoftHSM instances and files here (default: a temp dir)")
    parser.add_argument("--context", default="", help="a sentence about the run for the report (e.g. other load)")
    parser.add_argument("--from-json", type=Path, help="only re-render --out-md from an earlier results file")
    args = parser.parse_args(argv)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        if args.context:
            data["context"] = args.context
        out_md = args.out_md or ROOT / "docs" / "performance.md"
        out_md.write_text(markdown(data, analysis(data)))
        log(f"wrote {out_md} from {args.from_json}")
        return 0

    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        log(
            "warning: PYTHONDONTWRITEBYTECODE is set: an editable install then recompiles tokenagent at every "
            "start (+44% CPU for a one-shot command in issue 15's measurement); the start-up figures include it"
        )
    publish = not args.quick and not args.only
    default_dir = ROOT if publish else ROOT / "build" / "bench"
    out_json = args.out_json or (
        default_dir / "benchmarks" / "results.json" if publish else default_dir / "results.json"
    )
    out_md = args.out_md or (default_dir / "docs" / "performance.md" if publish else default_dir / "performance.md")
    config = Config(quick=args.quick, repeats=args.repeats or (2 if args.quick else 5))
    names = args.only or list(BENCHMARKS)

    work = args.work or Path(tempfile.mkdtemp(prefix="tokenagent-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    profile_dir = ROOT / "build" / "bench" / "profiles"
    profile_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_start = _load()
    start = time.perf_counter()
    results: dict[str, Any] = {}
    try:
        for name in names:
            log(f"{name}: start (load {_load()})")
            began = time.perf_counter()
            load_before = _load()
            directory = work / name
            directory.mkdir(parents=True, exist_ok=True)
            results[name] = BENCHMARKS[name](config, directory)
            results[name]["seconds"] = time.perf_counter() - began
            results[name]["load"] = {"start": load_before, "end": _load()}
            log(f"{name}: done in {results[name]['seconds']:.0f} s")
        for text in sorted(work.rglob("*-profile.txt")):
            shutil.copy(text, profile_dir / text.name)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    rows = [item for name in names for item in results[name]["rows"]]
    rows += derived_rows(results)
    data = {
        "format_version": 1,
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "duration_s": time.perf_counter() - start,
        "quick": config.quick,
        "repeats": config.repeats,
        "load_start": load_start,
        "load_end": _load(),
        "context": args.context,
        "command": " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "rows": rows,
        "benchmarks": results,
    }
    write_json(out_json, data)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(markdown(data, analysis(data)))
    log(f"wrote {out_md} and {out_json} ({data['duration_s']:.0f} s); profiles in {profile_dir}")
    for item in rows:
        measured = item["measured"]["median"] if item["measured"] else None
        ratio = item["ratio"]["median"] if item["ratio"] else None
        verdict = "-" if item["met"] is None else "met" if item["met"] else "MISSED"
        print(
            f"{verdict:7s} {item['key']:22s} measured={_short(measured)} ratio={_short(ratio)}  target {item['target']}"
        )
    return 0


def _short(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
