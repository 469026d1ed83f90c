"""Benchmark 1: `new` in batch (N requests in one process) against the raw python-pkcs11 loop.

Each repeat makes a fresh SoftHSM instance with three empty tokens and one child process, which
loads the module once and then, in alternating order, times
  - tokenagent: `enroll.batch.NewBatch` over N INF files (one user each) on token `ta`,
    writing N request files and N pending records;
  - raw: the same token work on token `raw` (benchmarks/raw.py);
and, for P-256, also the one-call-per-request library API (`new_request` in a loop) on `single`,
to show what holding the session buys.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.common import USER_PIN, Config, checked, figure, log, make_hsm, ratios, row, run_child, write_infs

TARGET_RATIO = 0.9


def child(key: str, infs: list[str], out_dir: str, order: str, single: bool) -> dict[str, Any]:
    """In the child: time tokenagent's batch and the raw loop (and new_request) on the same instance."""
    from benchmarks import raw
    from tokenagent.enroll.batch import NewBatch
    from tokenagent.enroll.new import NewOptions, new_request
    from tokenagent.token.library import find_token
    from tokenagent.token.pins import literal_pin_source
    from tokenagent.token.target import TokenTarget

    lib = raw.load_lib()
    find_token("ta")  # module loaded and initialized before either side is timed
    policies = [Path(p) for p in infs]
    outputs = Path(out_dir)
    pins = literal_pin_source(USER_PIN)

    def tokenagent_batch() -> float:
        start = time.perf_counter()
        with NewBatch() as batch:
            for number, policy in enumerate(policies, 1):
                output = outputs / f"{policy.stem}.req"
                options = NewOptions(policy=policy, output=output, target=TokenTarget("ta", (), pins))
                # the last request makes no spare key pair that nothing would take (enroll/spares.py)
                batch.new(options, more=number < len(policies))
        return time.perf_counter() - start

    def raw_loop() -> float:
        return raw.timed_keygen("raw", policies[0], len(policies), lib=lib)

    figures: dict[str, Any] = {}
    for side in order.split(","):
        figures[side] = tokenagent_batch() if side == "tokenagent" else raw_loop()
    if single:
        start = time.perf_counter()
        for policy in policies:
            new_request(
                NewOptions(
                    policy=policy, output=outputs / f"{policy.stem}.single.req", target=TokenTarget("single", (), pins)
                )
            )
        figures["new_request"] = time.perf_counter() - start
    figures["written"] = len(list(outputs.glob("*.req")))
    figures["tbs_size"] = raw.tbs_size(policies[0])
    return figures


def run(config: Config, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"rows": [], "figures": {}}
    for key, full_n, quick_n in (("p256", 100, 5), ("rsa2048", 20, 2)):
        n = config.pick(full_n, quick_n)
        rates: dict[str, list[float]] = {"tokenagent": [], "raw": [], "new_request": []}
        tbs = None
        for repeat in range(config.repeats):
            base = work / f"{key}-{repeat}"
            hsm = make_hsm(base / "hsm", ["ta", "raw", "single"])
            infs = write_infs(base / "inf", key, n, f"user{repeat}-")
            out = base / "out"
            out.mkdir()
            order = "tokenagent,raw" if repeat % 2 == 0 else "raw,tokenagent"
            single = key == "p256"
            answer = run_child(
                "batch_new:child",
                {"key": key, "infs": [str(p) for p in infs], "out_dir": str(out), "order": order, "single": single},
                hsm.env(),
            )
            expected = n * (2 if single else 1)
            if answer["written"] != expected:
                raise RuntimeError(f"batch new {key}: {answer['written']} requests written, expected {expected}")
            checked(["openssl", "req", "-verify", "-noout", "-in", str(out / f"{infs[0].stem}.req")])
            tbs = answer["tbs_size"]
            for side in rates:
                if side in answer:
                    rates[side].append(n / answer[side])
            log(
                f"batch new {key} repeat {repeat + 1}: tokenagent {n / answer['tokenagent']:.1f}/s, "
                f"raw {n / answer['raw']:.1f}/s"
            )
        ta = figure(rates["tokenagent"], "requests/s", n=n)
        raw = figure(rates["raw"], "key pairs+signatures/s", n=n)
        ratio = figure(ratios(rates["tokenagent"], rates["raw"]), "x")
        results["figures"][key] = {"tokenagent": ta, "raw": raw, "ratio": ratio, "n": n, "tbs_size": tbs}
        name = "P-256" if key == "p256" else "RSA-2048"
        pooled = sum(n / r for r in rates["raw"]) / sum(n / r for r in rates["tokenagent"])
        results["figures"][key]["pooled_ratio"] = pooled
        note = (
            f"N = {n} requests per repeat; raw C_Sign over {tbs} bytes (the CertificationRequestInfo size); "
            f"ratio of all repeats' times pooled: {pooled:.2f}"
        )
        if rates["new_request"]:
            single = figure(rates["new_request"], "requests/s", n=n)
            results["figures"][key]["new_request"] = single
            results["figures"][key]["new_request_ratio"] = figure(ratios(rates["new_request"], rates["raw"]), "x")
            note += f"; one `new_request` call per request: {single['median']:.1f}/s"
        results["rows"].append(
            row(
                f"batch_new_{key}",
                f"new, batch, {name} (NewBatch) vs raw python-pkcs11 loop",
                f">= {TARGET_RATIO}x raw",
                ta,
                raw,
                ratio,
                ratio["median"] is not None and ratio["median"] >= TARGET_RATIO,
                note,
            )
        )
    return results
