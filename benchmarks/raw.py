"""The token driven directly by python-pkcs11: the "what the token itself can do" baselines.

Runs inside a child process (see common.run_child). The templates are the ones tokenagent's own
key plan makes for the benchmark INF, so both sides ask the token for the same objects; the
raw side then does the same token work as one `new`: C_GenerateKeyPair of a persistent pair,
reading the public key, CKA_ID = SHA-1 of the public key on both halves, and one C_Sign over a
to-be-signed blob of the same size as tokenagent's CertificationRequestInfo.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag

from benchmarks.common import USER_PIN

_KEY_TYPES = {"CKK_EC": KeyType.EC, "CKK_RSA": KeyType.RSA}


def load_lib() -> pkcs11.lib:
    """The module tokenagent would load (same canonical path, so python-pkcs11 initializes it once)."""
    from tokenagent.token.modules import discover_modules

    return pkcs11.lib(discover_modules([])[0].path)


def open_token(label: str, lib: pkcs11.lib | None = None) -> pkcs11.Session:
    token = (lib or load_lib()).get_token(token_label=label)
    return token.open(rw=True, user_pin=USER_PIN)


def planned_templates(inf: Path) -> tuple[str, dict[Attribute, Any], dict[Attribute, Any]]:
    """tokenagent's key plan for ``inf``: (key type, public template, private template)."""
    from tokenagent.inf.policy import load_policy
    from tokenagent.providers.plan import plan_key
    from tokenagent.providers.registry import load_registry
    from tokenagent.token.names import template

    policy = load_policy(inf)
    provider = load_registry(()).lookup(policy.provider_name, "")
    plan = plan_key(policy, provider)
    return plan.key_type, template(plan.public_template), template(plan.private_template)


def tbs_size(inf: Path) -> int:
    """Size of the CertificationRequestInfo tokenagent signs for ``inf`` (built with a software key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from tokenagent.inf.policy import load_policy
    from tokenagent.request.pkcs10 import request_info

    policy = load_policy(inf)
    key: Any = ec.generate_private_key(ec.SECP256R1()) if policy.key_family != "RSA" else None
    if key is None:
        key = rsa.generate_private_key(65537, policy.key_length)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return len(request_info(policy, spki).dump())


def key_id(public: pkcs11.Object, key_type: str) -> bytes:
    """SHA-1 over the public key bits, as tokenagent (and NSS, OpenSC) name a new pair."""
    if key_type == "CKK_EC":
        point = bytes(public[Attribute.EC_POINT])  # DER OCTET STRING around the point
        return hashlib.sha1(point[2:] if point[1] < 0x80 else point[3:]).digest()
    from asn1crypto import keys

    modulus = int.from_bytes(public[Attribute.MODULUS], "big")
    exponent = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
    return hashlib.sha1(keys.RSAPublicKey({"modulus": modulus, "public_exponent": exponent}).dump()).digest()


def sign_tbs(private: pkcs11.Object, key_type: str, tbs: bytes) -> bytes:
    """What tokenagent's TokenSigner sends: CKM_ECDSA on a host-made SHA-256, or CKM_SHA256_RSA_PKCS."""
    if key_type == "CKK_EC":
        return bytes(private.sign(hashlib.sha256(tbs).digest(), mechanism=Mechanism.ECDSA))
    return bytes(private.sign(tbs, mechanism=Mechanism.SHA256_RSA_PKCS))


def keygen_loop(
    session: pkcs11.Session,
    key_type: str,
    public_template: dict[Attribute, Any],
    private_template: dict[Attribute, Any],
    count: int,
    *,
    tbs: bytes | None,
    prefix: str,
) -> list[bytes]:
    """``count`` persistent key pairs as tokenagent makes them (and, with ``tbs``, one signature each)."""
    ids = []
    bits = public_template.get(Attribute.MODULUS_BITS)
    public_template = {k: v for k, v in public_template.items() if k != Attribute.MODULUS_BITS}
    mechanism = Mechanism.EC_KEY_PAIR_GEN if key_type == "CKK_EC" else Mechanism.RSA_PKCS_KEY_PAIR_GEN
    for i in range(count):
        label = f"{prefix}{i:05d}"
        public, private = session.generate_keypair(
            _KEY_TYPES[key_type],
            bits,
            mechanism=mechanism,
            store=True,
            capabilities=MechanismFlag(0),
            public_template={**public_template, Attribute.LABEL: label},
            private_template={**private_template, Attribute.LABEL: label},
        )
        new_id = key_id(public, key_type)
        public[Attribute.ID] = new_id
        private[Attribute.ID] = new_id
        if tbs is not None:
            sign_tbs(private, key_type, tbs)
        ids.append(new_id)
    return ids


def timed_keygen(token: str, inf: Path, count: int, *, lib: pkcs11.lib | None = None) -> float:
    """Seconds for: open + login, ``count`` x (persistent key pair, CKA_ID, one C_Sign), logout."""
    key_type, public_template, private_template = planned_templates(inf)
    tbs = bytes(tbs_size(inf))
    start = time.perf_counter()
    session = open_token(token, lib)
    try:
        keygen_loop(session, key_type, public_template, private_template, count, tbs=tbs, prefix="raw-")
    finally:
        session.close()
    return time.perf_counter() - start
