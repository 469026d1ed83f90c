"""Profiles of the hot paths with pyinstrument (the `bench` extra): batch `new` and `accept`.

`profiled` runs a callable under pyinstrument in the child process that measures, writes the
text tree next to the benchmark's work files, and returns the hot spots as data for the report:
tokenagent functions by inclusive time (outermost calls only, so recursion is not counted twice)
and every function by self time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import USER_PIN, Config, log, make_hsm, run_child, write_infs

TOP = 40  # entries kept per ranking (the report shows the first 10)


def profiled(action: Callable[[], Any], out: Path) -> dict[str, Any]:
    try:
        from pyinstrument import Profiler
    except ImportError:
        return {"skipped": "pyinstrument is not installed (pip install -e '.[bench]')"}
    profiler = Profiler(interval=0.0005)
    start = time.perf_counter()
    profiler.start()
    action()
    session = profiler.stop()
    wall = time.perf_counter() - start
    out.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    root = session.root_frame()
    inclusive: dict[str, float] = {}
    self_time: dict[str, float] = {}

    def walk(frame: Any, active: frozenset[str]) -> None:
        name = _name(frame)
        if frame.is_synthetic:  # pyinstrument's "[self]" leaves: already in their parent's self time
            return
        self_time[name] = self_time.get(name, 0.0) + frame.total_self_time
        if "tokenagent/" in (frame.file_path or "") and name not in active:
            inclusive[name] = inclusive.get(name, 0.0) + frame.time
        for child in frame.children:
            walk(child, active | {name})

    if root is not None:
        walk(root, frozenset())
    total = root.time if root is not None else wall

    def top(values: dict[str, float]) -> list[dict[str, Any]]:
        ranked = sorted(values.items(), key=lambda item: item[1], reverse=True)[:TOP]
        return [
            {"function": name, "seconds": seconds, "share": seconds / total if total else 0.0}
            for name, seconds in ranked
        ]

    return {"total": total, "wall": wall, "inclusive": top(inclusive), "self": top(self_time), "text": str(out)}


def _name(frame: Any) -> str:
    path = frame.file_path_short or frame.file_path or "?"
    marker = path.find("tokenagent/")
    if marker >= 0:
        path = path[marker:]
    return f"{frame.function} ({path}:{frame.line_no})"


def batch_child(infs: list[str], out_dir: str, out: str) -> dict[str, Any]:
    """In a child: `NewBatch` over the INF files under pyinstrument."""
    from tokenagent.enroll.batch import NewBatch
    from tokenagent.enroll.new import NewOptions
    from tokenagent.token.library import find_token
    from tokenagent.token.pins import literal_pin_source
    from tokenagent.token.target import TokenTarget

    find_token("ta")
    pins = literal_pin_source(USER_PIN)

    def action() -> None:
        with NewBatch() as batch:
            for number, policy in enumerate(map(Path, infs), 1):
                batch.new(
                    NewOptions(
                        policy=policy, output=Path(out_dir) / f"{policy.stem}.req", target=TokenTarget("ta", (), pins)
                    ),
                    more=number < len(infs),
                )

    return profiled(action, Path(out))


def new_request_child(infs: list[str], out_dir: str, out: str) -> dict[str, Any]:
    """In a child: the one-call API (`new_request` per request) under pyinstrument, for comparison."""
    from tokenagent.enroll.new import NewOptions, new_request
    from tokenagent.token.library import find_token
    from tokenagent.token.pins import literal_pin_source
    from tokenagent.token.target import TokenTarget

    find_token("ta")
    pins = literal_pin_source(USER_PIN)

    def action() -> None:
        for policy in map(Path, infs):
            new_request(
                NewOptions(
                    policy=policy, output=Path(out_dir) / f"{policy.stem}.req", target=TokenTarget("ta", (), pins)
                )
            )

    return profiled(action, Path(out))


def run(config: Config, work: Path) -> dict[str, Any]:
    """Batch `new` (P-256) and, for comparison, `new_request` in a loop, each on a fresh token."""
    n = config.pick(100, 5)
    results: dict[str, Any] = {"rows": [], "profiles": {}}
    for name, target in (("batch_new", "profiles:batch_child"), ("new_request_loop", "profiles:new_request_child")):
        hsm = make_hsm(work / name / "hsm", ["ta"])
        infs = write_infs(work / name / "inf", "p256", n, "prof")
        out_dir = work / name / "out"
        out_dir.mkdir()
        results["profiles"][name] = run_child(
            target,
            {"infs": [str(p) for p in infs], "out_dir": str(out_dir), "out": str(work / f"{name}-profile.txt")},
            hsm.env(),
        )
        log(f"profile {name}: {results['profiles'][name].get('total', 0):.2f} s profiled")
    results["n"] = n
    return results
