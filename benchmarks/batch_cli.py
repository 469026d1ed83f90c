"""Benchmark: `tokenagent batch` (the command, one process for N CSV rows, journal included)
against the pkcs11-tool + openssl pipeline run once per request, and --jobs 2 against --jobs 1.

Each repeat makes a fresh SoftHSM instance with three empty tokens: `j1` and `j2` for the batch
(--jobs 1 and --jobs 2, alternating which runs first), `pipe` for the pipeline
(oneshot.pipeline_commands: pkcs11-tool --keypairgen, then openssl req through the pkcs11 engine).
The batch's time is the wall time of the whole command (interpreter start-up and login included)
divided by N; the pipeline's is the wall time of its two commands per request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import TOKENAGENT, USER_PIN, Config, checked, figure, log, make_hsm, ratios, row, timed_run
from benchmarks.oneshot import pipeline_commands

TARGET_RATIO = 1.0  # issue 17: at least as fast as the pipeline per request

POLICY = """[Strings]
host = "placeholder"

[NewRequest]
Subject = "CN=%host%,OU=Servers,O=Example"
KeyAlgorithm = ECDSA_P256
KeyUsage = CERT_DIGITAL_SIGNATURE_KEY_USAGE

[Extensions]
2.5.29.17 = "{text}DNS=%host%"
"""


def run(config: Config, work: Path) -> dict[str, Any]:
    n = config.pick(100, 10)
    pipe_n = config.pick(10, 2)
    rates: dict[str, list[float]] = {"jobs1": [], "jobs2": [], "pipeline": []}
    for repeat in range(config.repeats):
        base = work / f"batch-cli-{repeat}"
        hsm = make_hsm(base / "hsm", ["j1", "j2", "pipe"])
        env = hsm.env(PIN=USER_PIN, TOKENAGENT_STATE_DIR=str(base / "state"))
        inf = base / "server.inf"
        inf.write_text(POLICY)
        csv = base / "hosts.csv"
        csv.write_text("host\n" + "".join(f"h{i}.example.com\n" for i in range(n)))
        order = (1, 2) if repeat % 2 == 0 else (2, 1)
        for jobs in order:
            out = base / f"out{jobs}"
            command = [TOKENAGENT, "batch", str(inf), "--items", str(csv), "--out", str(out)]
            command += ["--token", f"j{jobs}", "--pin-source", "env:PIN", "--jobs", str(jobs)]
            seconds, code, stderr = timed_run(command, env)
            if code != 0 or len(list(out.glob("*.req"))) != n:
                raise RuntimeError(f"tokenagent batch --jobs {jobs}: exit {code}: {stderr.strip()[-300:]}")
            rates[f"jobs{jobs}"].append(n / seconds)
        checked(["openssl", "req", "-verify", "-noout", "-in", str(base / "out1" / "row-1.req")])
        pipe_env = {**env, "PKCS11_MODULE_PATH": hsm.module}
        total = 0.0
        for i in range(pipe_n):
            name = f"p{repeat}-{i}"
            for command in pipeline_commands(hsm.module, "pipe", name, f"{i + 1:04x}", name, base / f"{name}.req"):
                seconds, code, stderr = timed_run(command, pipe_env)
                if code != 0:
                    raise RuntimeError(f"{command[0]} exit {code}: {stderr.strip()[-300:]}")
                total += seconds
        rates["pipeline"].append(pipe_n / total)
        log(
            f"batch CLI repeat {repeat + 1}: --jobs 1 {rates['jobs1'][-1]:.1f}/s, --jobs 2 {rates['jobs2'][-1]:.1f}/s, "
            f"pipeline {rates['pipeline'][-1]:.1f}/s"
        )
    jobs1 = figure(rates["jobs1"], "requests/s", n=n)
    jobs2 = figure(rates["jobs2"], "requests/s", n=n)
    pipeline = figure(rates["pipeline"], "requests/s", n=pipe_n)
    versus_pipeline = figure(ratios(rates["jobs1"], rates["pipeline"]), "x")
    versus_jobs1 = figure(ratios(rates["jobs2"], rates["jobs1"]), "x")
    note = (
        f"N = {n} CSV rows per run (the whole command's wall time / N: start-up, login and journal included); "
        f"pipeline: {pipe_n} requests per repeat, pkcs11-tool --keypairgen + openssl req (pkcs11 engine)"
    )
    return {
        "figures": {"jobs1": jobs1, "jobs2": jobs2, "pipeline": pipeline},
        "rows": [
            row(
                "batch_cli_p256",
                "tokenagent batch (CLI), P-256, --jobs 1 vs the pkcs11-tool + openssl pipeline per request",
                f">= {TARGET_RATIO}x the pipeline's rate",
                jobs1,
                pipeline,
                versus_pipeline,
                versus_pipeline["median"] is not None and versus_pipeline["median"] >= TARGET_RATIO,
                note,
            ),
            row(
                "batch_cli_jobs2",
                "tokenagent batch (CLI), P-256, --jobs 2 vs --jobs 1 on one token",
                "measured (token calls are serialized: docs/station.md (batch))",
                jobs2,
                jobs1,
                versus_jobs1,
                None,
                note,
            ),
        ],
    }
