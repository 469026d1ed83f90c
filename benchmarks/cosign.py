"""Benchmark 3: an enrollment agent co-signing requests, against a raw C_Sign loop with its key.

Set-up, untimed: token `agent` gets a P-256 and an RSA-2048 key pair from pkcs11-tool; OpenSSL
makes a request for each through libp11's engine, tests/ca.py's CA issues a Certificate Request
Agent certificate (EKU 1.3.6.1.4.1.311.20.2.1), and pkcs11-tool writes it next to its key (same
CKA_ID). The users' PKCS#10 requests are made in software with cryptography: they are the input,
not what is measured.

Each repeat, in one child process and in alternating order:
  - tokenagent: `open_agent` once, then `co_sign(agent, request, format="pkcs7")` per request
    (inner signature check, CMS SignedData with the RequesterName attribute, one C_Sign);
  - raw: one logged-in python-pkcs11 session, C_Sign per request with the same key and mechanism
    (CKM_ECDSA on a SHA-256 digest, or CKM_SHA256_RSA_PKCS over 200 bytes).
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    USER_PIN,
    Config,
    checked,
    figure,
    log,
    make_hsm,
    ratios,
    row,
    run_child,
)

TARGET_RATIO = 0.5
AGENT_EKU = "1.3.6.1.4.1.311.20.2.1"
KEYS = {"p256": ("EC:prime256v1", "a1"), "rsa2048": ("rsa:2048", "a2")}
NAMES = {"p256": "P-256", "rsa2048": "RSA-2048"}


def available() -> bool:
    return importlib.util.find_spec("tokenagent.enroll.sign") is not None


def make_agent(work: Path, module: str, env: dict[str, str], key: str) -> None:
    """The agent's key pair, its certificate from the test CA, written to the token with the key's CKA_ID."""
    from tests.ca import OpenSslCA

    key_type, key_id = KEYS[key]
    label = f"agent-{key}"
    base = ["pkcs11-tool", "--module", module, "--token-label", "agent", "--login", "--pin", USER_PIN]
    checked([*base, "--keypairgen", "--key-type", key_type, "--label", label, "--id", key_id, "--usage-sign"], env)
    csr = work / f"{label}.csr"
    uri = f"pkcs11:token=agent;object={label};type=private;pin-value={USER_PIN}"
    command = [
        "openssl", "req", "-new", "-engine", "pkcs11", "-keyform", "engine", "-key", uri, "-sha256",
        "-subj", f"/O=Example/CN=Enrollment Agent {key}", "-out", str(csr),
    ]  # fmt: skip
    for attempt in range(3):  # libp11's engine occasionally crashes; the set-up is not what is measured
        try:
            checked(command, {**env, "PKCS11_MODULE_PATH": module})
            break
        except RuntimeError:
            if attempt == 2:
                raise
    ca = OpenSslCA.create(work / f"ca-{key}")
    der = ca.issue(csr, work / f"{label}.pem", extensions=f"extendedKeyUsage = {AGENT_EKU}")
    (work / f"{label}.der").write_bytes(der)
    checked(
        [*base, "--write-object", str(work / f"{label}.der"), "--type", "cert", "--id", key_id, "--label", label], env
    )


def user_requests(count: int, directory: Path) -> list[str]:
    """PKCS#10 requests made in software (P-256), one per user, as DER files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"user{i:05d}")])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        path = directory / f"user{i:05d}.req"
        path.write_bytes(csr.public_bytes(serialization.Encoding.DER))
        paths.append(str(path))
    return paths


def child(key: str, requests: list[str], order: str) -> dict[str, float]:
    from pkcs11 import Attribute, Mechanism, ObjectClass

    from benchmarks import raw
    from tokenagent.enroll.agent import AgentOptions, open_agent
    from tokenagent.enroll.sign import co_sign
    from tokenagent.token.pins import literal_pin_source
    from tokenagent.token.target import TokenTarget

    label = f"agent-{key}"
    ders = [Path(p).read_bytes() for p in requests]
    lib = raw.load_lib()
    figures: dict[str, float] = {}

    def tokenagent_side() -> None:
        options = AgentOptions(
            key=f"pkcs11:token=agent;object={label};type=private",
            target=TokenTarget(None, (), literal_pin_source(USER_PIN)),
        )
        start = time.perf_counter()
        with open_agent(options) as agent:
            opened = time.perf_counter()
            for der in ders:
                result = co_sign(agent, der, requester="EXAMPLE\\user", format="pkcs7", yes=True)
                if not result.der:
                    raise RuntimeError("co_sign returned nothing")
            figures["tokenagent"] = time.perf_counter() - opened
        figures["tokenagent_open"] = opened - start

    def raw_side() -> None:
        session = raw.open_token("agent", lib)
        try:
            private = next(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}))
            data = bytes(200)  # about the size of the DER signed attributes a CMS signature covers
            start = time.perf_counter()
            for _ in ders:
                if key == "p256":
                    private.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
                else:
                    private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS)
            figures["raw"] = time.perf_counter() - start
        finally:
            session.close()

    for side in order.split(","):
        tokenagent_side() if side == "tokenagent" else raw_side()
    return figures


def profile_child(key: str, requests: list[str], out: str) -> dict[str, Any]:
    """In a child: the co-signing loop (after open_agent) under pyinstrument."""
    from benchmarks.profiles import profiled
    from tokenagent.enroll.agent import AgentOptions, open_agent
    from tokenagent.enroll.sign import co_sign
    from tokenagent.token.pins import literal_pin_source
    from tokenagent.token.target import TokenTarget

    ders = [Path(p).read_bytes() for p in requests]
    options = AgentOptions(
        key=f"pkcs11:token=agent;object=agent-{key};type=private",
        target=TokenTarget(None, (), literal_pin_source(USER_PIN)),
    )
    with open_agent(options) as agent:
        return profiled(
            lambda: [co_sign(agent, der, requester="EXAMPLE\\user", format="pkcs7", yes=True) for der in ders],
            Path(out),
        )


def run(config: Config, work: Path) -> dict[str, Any]:
    if not available():
        return {
            "rows": [
                row(
                    f"cosign_{key}",
                    f"sign (agent co-signing, {key})",
                    f">= {TARGET_RATIO}x raw C_Sign",
                    None,
                    None,
                    None,
                    None,
                    "skipped: tokenagent.enroll.sign not available",
                )
                for key in KEYS
            ],
            "skipped": "tokenagent.enroll.sign not available",
        }
    hsm = make_hsm(work / "hsm", ["agent"])
    env = hsm.env()
    for key in KEYS:
        make_agent(work, hsm.module, env, key)
    count = config.pick(300, 10)
    requests = user_requests(count, work / "requests")
    results: dict[str, Any] = {"rows": [], "figures": {}}
    for key in KEYS:
        rates: dict[str, list[float]] = {"tokenagent": [], "raw": []}
        opens: list[float] = []
        for repeat in range(config.repeats):
            order = "tokenagent,raw" if repeat % 2 == 0 else "raw,tokenagent"
            answer = run_child("cosign:child", {"key": key, "requests": requests, "order": order}, env)
            rates["tokenagent"].append(count / answer["tokenagent"])
            rates["raw"].append(count / answer["raw"])
            opens.append(answer["tokenagent_open"])
            ta_rate, raw_rate = rates["tokenagent"][-1], rates["raw"][-1]
            log(f"co-sign {key} repeat {repeat + 1}: tokenagent {ta_rate:.0f}/s, raw {raw_rate:.0f}/s")
        ta = figure(rates["tokenagent"], "co-signatures/s", n=count)
        base = figure(rates["raw"], "C_Sign/s", n=count)
        ratio = figure(ratios(rates["tokenagent"], rates["raw"]), "x")
        opened = figure(opens, "s")
        results["figures"][key] = {"tokenagent": ta, "raw": base, "ratio": ratio, "open_agent": opened}
        per_request_ms = 1000 / ta["median"] - 1000 / base["median"]
        results["rows"].append(
            row(
                f"cosign_{key}",
                f"sign: agent co-signing (PKCS7/CMS), {NAMES[key]} agent key, vs raw C_Sign",
                f">= {TARGET_RATIO}x raw C_Sign",
                ta,
                base,
                ratio,
                ratio["median"] >= TARGET_RATIO,
                f"{count} requests per repeat; open_agent (login, key, certificate check) "
                f"{opened['median'] * 1000:.0f} ms once; host work {per_request_ms:.2f} ms per co-signature",
            )
        )
    results["profile"] = run_child(
        "cosign:profile_child",
        {"key": "rsa2048", "requests": requests, "out": str(work / "cosign-profile.txt")},
        env,
    )
    return results
