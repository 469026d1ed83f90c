"""Benchmark: two tokens driven at once from one process (the station's threads) against the same
work on one token after the other (issue 17: goal >= 1.8x).

Each repeat makes a fresh SoftHSM instance with four tokens and one child process that turns on
OS locking (`token.library.use_os_locking`, as `tokenagent station` does), then, in alternating
order, times N `new` requests through `enroll.batch.NewBatch` on `s1` and then on `s2` (one after
the other), and N on `p1` and N on `p2` in two threads at once. The ratio is the sequential time
over the parallel time. Whatever a request spends in the token without the GIL (python-pkcs11
releases it in C_GenerateKeyPair and C_Sign) can overlap; the Python around it cannot.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import USER_PIN, Config, checked, figure, log, make_hsm, ratios, row, run_child, write_infs

TARGET_RATIO = 1.8


def child(infs: dict[str, list[str]], out_dir: str, order: str) -> dict[str, Any]:
    from tokenagent.enroll.batch import NewBatch
    from tokenagent.enroll.new import NewOptions
    from tokenagent.token.library import find_token, use_os_locking
    from tokenagent.token.pins import literal_pin_source
    from tokenagent.token.target import TokenTarget

    use_os_locking()
    find_token("s1")  # the module loaded and initialized (with OS locking) before anything is timed
    pins = literal_pin_source(USER_PIN)
    outputs = Path(out_dir)

    def one_token(label: str) -> None:
        with NewBatch() as batch:
            for number, policy in enumerate(infs[label], 1):
                path = Path(policy)
                target = TokenTarget(label, (), pins)
                options = NewOptions(policy=path, output=outputs / f"{label}-{path.stem}.req", target=target)
                batch.new(options, more=number < len(infs[label]))

    def sequential() -> float:
        start = time.perf_counter()
        one_token("s1")
        one_token("s2")
        return time.perf_counter() - start

    def parallel() -> float:
        errors: list[BaseException] = []

        def worker(label: str) -> None:
            try:
                one_token(label)
            except BaseException as exc:  # reported, not lost in the thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(label,)) for label in ("p1", "p2")]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return time.perf_counter() - start

    figures: dict[str, Any] = {}
    for side in order.split(","):
        figures[side] = sequential() if side == "sequential" else parallel()
    figures["written"] = len(list(outputs.glob("*.req")))
    return figures


def run(config: Config, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"rows": [], "figures": {}}
    for key, full_n, quick_n in (("rsa2048", 8, 2), ("p256", 100, 5)):
        n = config.pick(full_n, quick_n)
        times: dict[str, list[float]] = {"sequential": [], "parallel": []}
        for repeat in range(config.repeats):
            base = work / f"parallel-{key}-{repeat}"
            labels = ["s1", "s2", "p1", "p2"]
            hsm = make_hsm(base / "hsm", labels)
            infs = {label: [str(p) for p in write_infs(base / label, key, n, f"{label}u{repeat}-")] for label in labels}
            out = base / "out"
            out.mkdir()
            order = "sequential,parallel" if repeat % 2 == 0 else "parallel,sequential"
            answer = run_child("parallel_tokens:child", {"infs": infs, "out_dir": str(out), "order": order}, hsm.env())
            if answer["written"] != 4 * n:
                raise RuntimeError(f"parallel tokens {key}: {answer['written']} requests written, expected {4 * n}")
            checked(["openssl", "req", "-verify", "-noout", "-in", str(next(out.glob("p2-*.req")))])
            for side in times:
                times[side].append(answer[side])
            log(f"parallel tokens {key} repeat {repeat + 1}: one after the other {answer['sequential']:.2f} s, "
                f"at once {answer['parallel']:.2f} s")  # fmt: skip
        sequential = figure([2 * n / t for t in times["sequential"]], "requests/s", n=2 * n)
        parallel = figure([2 * n / t for t in times["parallel"]], "requests/s", n=2 * n)
        ratio = figure(ratios(times["sequential"], times["parallel"]), "x")
        results["figures"][key] = {"sequential": sequential, "parallel": parallel, "ratio": ratio}
        name = "P-256" if key == "p256" else "RSA-2048"
        results["rows"].append(
            row(
                f"parallel_tokens_{key}",
                f"two tokens at once (two threads, OS locking) vs one after the other, {name}, NewBatch",
                f">= {TARGET_RATIO}x",
                parallel,
                sequential,
                ratio,
                ratio["median"] is not None and ratio["median"] >= TARGET_RATIO,
                f"N = {n} requests per token, 2 tokens; SoftHSM on a 2-core machine: the overlap is the time "
                "spent in the token without the GIL (key generation dominates RSA; P-256 is mostly Python)",
            )
        )
    return results
