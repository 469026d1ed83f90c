"""PKCS#11 calls per request: `NewBatch` against `new_request` per request, counted by pkcs11-spy.

Not a timing: OpenSC's pkcs11-spy.so sits between tokenagent and SoftHSM (PKCS11SPY names the
real module) and logs every call. The counts show what the batch saves: logins, sessions, the
capacity check's mechanism and object reads, and the searches that visit the whole token.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from benchmarks.common import USER_PIN, Config, make_hsm, run_child, write_infs

SPY_PATHS = (
    "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/pkcs11-spy.so",
    "/usr/lib/pkcs11/pkcs11-spy.so",
)
COUNTED = (
    "C_Initialize",
    "C_OpenSession",
    "C_Login",
    "C_GetMechanismInfo",
    "C_FindObjectsInit",
    "C_GetAttributeValue",
    "C_GenerateKeyPair",
    "C_SetAttributeValue",
    "C_SignInit",
)


def child(mode: str, infs: list[str], out_dir: str) -> dict[str, int]:
    from tokenagent.enroll.batch import NewBatch
    from tokenagent.enroll.new import NewOptions, new_request
    from tokenagent.token.pins import literal_pin_source
    from tokenagent.token.target import TokenTarget

    pins = literal_pin_source(USER_PIN)
    jobs = [(Path(p), Path(out_dir) / f"{Path(p).stem}.req") for p in infs]
    if mode == "batch":
        with NewBatch() as batch:
            for policy, output in jobs:
                batch.new(NewOptions(policy=policy, output=output, target=TokenTarget("ta", (), pins)))
    else:
        for policy, output in jobs:
            new_request(NewOptions(policy=policy, output=output, target=TokenTarget("ta", (), pins)))
    return {"requests": len(jobs)}


def run(config: Config, work: Path) -> dict[str, Any]:
    spy = next((p for p in SPY_PATHS if Path(p).exists()), None)
    if spy is None:
        return {"rows": [], "skipped": "pkcs11-spy.so (OpenSC) not found"}
    n = config.pick(20, 5)
    counts: dict[str, dict[str, int]] = {}
    for mode in ("batch", "new_request"):
        hsm = make_hsm(work / mode / "hsm", ["ta"])
        infs = write_infs(work / mode / "inf", "p256", n, f"{mode}-")
        out = work / mode / "out"
        out.mkdir()
        log = work / mode / "spy.log"
        env = hsm.env(TOKENAGENT_MODULE=spy, PKCS11SPY=hsm.module, PKCS11SPY_OUTPUT=str(log))
        run_child("calls:child", {"mode": mode, "infs": [str(p) for p in infs], "out_dir": str(out)}, env)
        found: dict[str, int] = {}
        for name in re.findall(r"^\d+: (C_\w+)", log.read_text(errors="replace"), flags=re.M):
            found[name] = found.get(name, 0) + 1
        counts[mode] = {name: found.get(name, 0) for name in COUNTED}
    return {"rows": [], "n": n, "counts": counts}
