"""PKCS#11 calls per operation, counted by pkcs11-spy: the call economy (issue 15).

Not a timing: OpenSC's pkcs11-spy.so sits between tokenagent and SoftHSM (PKCS11SPY names the
real module) and logs every call. On SoftHSM a call costs microseconds; on a smart card each call
that reaches the card is one or more APDU round trips of 5-50 ms, so the count is what an
enrollment station feels. Two tables:

- `operations`: one CLI run of each command, its call count, the minimum a careful implementation
  needs (`MINIMUM`, with the reasoning) and the ratio; `new` on an empty token and on one holding
  60 objects shows whether the count grows with the token.
- `counts`: `NewBatch` against `new_request` per request, for 20 requests (what the batch saves).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, TOKENAGENT, USER_PIN, Config, checked, make_hsm, run_child, write_infs

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
            for number, (policy, output) in enumerate(jobs, 1):
                target = TokenTarget("ta", (), pins)
                batch.new(NewOptions(policy=policy, output=output, target=target), more=number < len(jobs))
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
        names = _calls(log)
        for name in names:
            found[name] = found.get(name, 0) + 1
        counts[mode] = {name: found.get(name, 0) for name in COUNTED}
        counts[mode]["all calls"] = len(names)
        # what each request after the first costs: the calls after the first request's C_Sign
        first_sign = names.index("C_Sign") if "C_Sign" in names else len(names)
        counts[mode]["per request after the first"] = round((len(names) - first_sign - 1) / max(1, n - 1), 1)
    return {"rows": [], "n": n, "counts": counts, "operations": operations(spy, work / "operations")}


#: The calls a careful implementation needs (PKCS#11 v2.40, one slot, one token), as issue 15 counted
#: them. tokenagent also makes C_GetFunctionList and C_GetInfo (which implementation it talks to) and, on
#: SoftHSM, one search for husks a killed generation left; it skips the label search for a made-up label.
MINIMUM = {
    # Initialize, SlotList, TokenInfo, OpenSession, Login, MechanismInfo x2, one label search (3),
    # GenerateKeyPair, read the public key, set CKA_ID x2, SignInit, Sign, Logout/Close/Finalize
    "new P-256, empty token": 15,
    "new P-256, token with 60 objects": 15,
    # the above plus the agent's token: SlotList/TokenInfo, OpenSession, Login, key and certificate
    # search (6), SignInit, Sign
    "new + agent (CMC)": 32,
    # one token: Initialize, SlotList, TokenInfo, OpenSession, Login, key + certificate search (6),
    # read the certificate, SignInit, Sign, Logout/Close/Finalize
    "sign (co-sign)": 20,
    # Initialize, SlotList, TokenInfo, OpenSession, Login, key by CKA_ID (3), public key read,
    # certificate present? (3), SignInit, Sign (key test), CreateObject, Logout/Close/Finalize
    "accept .cer": 19,
    # per object: one C_GetAttributeValue with every attribute wanted (buffers sized for them)
    "objects, per object": 1,
}

#: issue 15's acceptance, per row
TARGETS = {
    "new P-256, empty token": "<= 1.5x",
    "new P-256, token with 60 objects": "the empty token's count +- 3",
    "new + agent (CMC)": "<= 1.5x",
    "sign (co-sign)": "<= 1.5x",
    "accept .cer": "<= 1.5x",
    "objects, per object": "<= 3 calls per object",
}
#: issue 15: batch `new`, calls per request
BATCH_TARGET = 8

AGENT_INF = """[NewRequest]
Subject = "CN=Bench Agent,O=Example Corp"
KeyAlgorithm = ECDSA_P256
KeyContainer = bench-agent
"""
USER_INF = """[NewRequest]
Subject = "CN=bench-user,O=Example Corp"
KeyAlgorithm = ECDSA_P256
RequestType = {kind}
{extra}
"""
FILL = """
import sys, pkcs11
from pkcs11 import KeyType
lib = pkcs11.lib(sys.argv[1])
token = lib.get_token(token_label=sys.argv[2])
with token.open(rw=True, user_pin=sys.argv[3]) as session:
    for n in range(int(sys.argv[4])):
        params = session.create_domain_parameters(
            KeyType.EC, {pkcs11.Attribute.EC_PARAMS: bytes.fromhex("06082a8648ce3d030107")}, local=True
        )
        params.generate_keypair(store=True, label=f"filler-{n}", id=n.to_bytes(2, "big"))
"""


def _spied(hsm: Any, spy: str, log: Path, *args: str) -> int:
    env = hsm.env(TOKENAGENT_MODULE=spy, PKCS11SPY=hsm.module, PKCS11SPY_OUTPUT=str(log), PIN=USER_PIN)
    if log.exists():
        log.unlink()
    checked([TOKENAGENT, *args], env)
    return len(_calls(log))


def _calls(log: Path) -> list[str]:
    return re.findall(r"^\d+: (C_\w+)", log.read_text(errors="replace"), flags=re.M)


#: A model of a smart card's time, from the calls a run makes (issue 15): the calls a PKCS#11 module
#: answers by talking to the card, each at the latency measured on a YubiKey 5 (PIV applet) and
#: quoted in issue 15: ECDSA P-256 signature 72 ms, PIN check 9 ms, one object read or write 7 ms.
#: Calls a module answers from memory (library and slot information, session bookkeeping,
#: C_SignInit, C_FindObjectsInit/Final) cost nothing here; C_FindObjects and C_GetAttributeValue are
#: counted as one read each, the worst case (OpenSC reads a card's objects once, ykcs11 per call).
#: Key generation is left out: both sides make one key pair, which takes the card's own time.
CARD_LATENCY_MS = {
    "C_Sign": 72.0,
    "C_Login": 9.0,
    "C_Logout": 7.0,
    "C_GetAttributeValue": 7.0,
    "C_FindObjects": 7.0,
    "C_SetAttributeValue": 7.0,
    "C_CreateObject": 7.0,
    "C_DestroyObject": 7.0,
}


def card_ms(calls: list[str]) -> tuple[float, int]:
    """Modelled card time in ms and the number of calls that reach the card."""
    reaching = [name for name in calls if name in CARD_LATENCY_MS]
    return sum(CARD_LATENCY_MS[name] for name in reaching), len(reaching)


def _pipeline_calls(hsm: Any, spy: str, work: Path) -> list[str]:
    """pkcs11-tool --keypairgen, then openssl req through libp11's engine, both through the spy."""
    from benchmarks.oneshot import pipeline_commands

    log = work / "pipeline.log"
    env = hsm.env(PKCS11SPY=hsm.module, PKCS11SPY_OUTPUT=str(log), PKCS11_MODULE_PATH=spy)
    for command in pipeline_commands(spy, "agent", "pipe-key", "77", "pipe", work / "pipe.req"):
        checked(command, env)
    return _calls(log)


def _openssl_ca(work: Path) -> tuple[Path, Path]:
    key, cert = work / "ca.key", work / "ca.pem"
    checked(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-subj", "/CN=Bench CA", "-days", "30"])  # fmt: skip
    return key, cert


def _issue(ca: tuple[Path, Path], request: Path, out: Path, extensions: str) -> Path:
    pem = request.with_suffix(".csr")
    pem.write_bytes(request.read_bytes().replace(b"NEW CERTIFICATE REQUEST", b"CERTIFICATE REQUEST"))
    ext = out.with_suffix(".ext")
    ext.write_text(extensions + "\n")
    checked(["openssl", "x509", "-req", "-in", str(pem), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
             "-set_serial", "7", "-days", "10", "-extfile", str(ext), "-out", str(out)])  # fmt: skip
    return out


def operations(spy: str, work: Path) -> dict[str, float]:
    """One spied CLI run per row of `MINIMUM` (the setup runs unspied)."""
    hsm = make_hsm(work / "hsm", ["user", "agent"])
    env = hsm.env(PIN=USER_PIN)
    pins = ["--pin-source", "env:PIN"]
    found: dict[str, float] = {}
    user_inf = work / "user.inf"
    user_inf.write_text(USER_INF.format(kind="PKCS10", extra=""))
    found["new P-256, empty token"] = _spied(hsm, spy, work / "new.log", "new", str(user_inf), str(work / "u1.req"),
                                             "--token", "user", *pins)  # fmt: skip
    found["card model: new, ms"], found["card model: new, calls reaching the card"] = card_ms(_calls(work / "new.log"))
    pipeline = _pipeline_calls(hsm, spy, work)
    found["pipeline: calls"] = len(pipeline)
    found["card model: pipeline, ms"], found["card model: pipeline, calls reaching the card"] = card_ms(pipeline)
    checked([PYTHON, "-c", FILL, hsm.module, "user", USER_PIN, "29"], env)  # 58 objects beside the 2
    found["new P-256, token with 60 objects"] = _spied(hsm, spy, work / "new60.log", "new", str(user_inf),
                                                       str(work / "u2.req"), "--token", "user", *pins)  # fmt: skip
    ca = _openssl_ca(work)
    agent_inf = work / "agent.inf"
    agent_inf.write_text(AGENT_INF)
    checked([TOKENAGENT, "new", str(agent_inf), str(work / "agent.req"), "--token", "agent", *pins], env)
    agent_cert = _issue(ca, work / "agent.req", work / "agent.pem", "extendedKeyUsage = 1.3.6.1.4.1.311.20.2.1")
    checked([TOKENAGENT, "accept", str(agent_cert), "--token", "agent", *pins], env)
    agent = ["--agent", "pkcs11:token=agent;object=bench-agent;type=private", "--agent-pin-source", "env:PIN"]
    cmc_inf = work / "cmc.inf"
    cmc_inf.write_text(USER_INF.format(kind="CMC", extra='RequesterName = "EXAMPLE\\ada"'))
    found["new + agent (CMC)"] = _spied(hsm, spy, work / "agent.log", "new", str(cmc_inf), str(work / "u3.req"),
                                        "--token", "user", *pins, *agent)  # fmt: skip
    found["sign (co-sign)"] = _spied(hsm, spy, work / "sign.log", "sign", str(work / "u1.req"), str(work / "s.req"),
                                     "--agent", "pkcs11:token=agent;object=bench-agent;type=private",
                                     "--requester", "EXAMPLE\\ada", *pins, "--yes")  # fmt: skip
    user_cert = _issue(ca, work / "u2.req", work / "u2.pem", "extendedKeyUsage = clientAuth")
    found["accept .cer"] = _spied(hsm, spy, work / "accept.log", "accept", str(user_cert), "--token", "user", *pins)
    listed = _spied(hsm, spy, work / "objects.log", "objects", "--token", "user", *pins)
    objects = len(json.loads(checked([TOKENAGENT, "objects", "--token", "user", *pins, "--json"], env))["objects"])
    found["objects, per object"] = round(listed / objects, 1)
    found["objects: objects listed"] = objects
    return found
