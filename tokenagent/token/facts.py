"""Plain data about a token that planning and capacity checks read. No pkcs11 import here, so the
providers room can use these types and be tested without a token; `token.keys.gather_facts`
fills them from a real session.

Mechanism and attribute names are the PKCS#11 spellings (``CKM_EC_KEY_PAIR_GEN``,
``CKA_SIGN``) so that plans, `--dry-run` output and the docs read like the standard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MechanismRange:
    """CK_MECHANISM_INFO: key size range (bits for RSA and EC) and the CKF_* flag names."""

    min_key_size: int
    max_key_size: int
    flags: frozenset[str]  # e.g. {"GENERATE_KEY_PAIR", "SIGN", "EC_NAMEDCURVE"}

    def to_json(self) -> dict[str, Any]:
        return {"min_key_size": self.min_key_size, "max_key_size": self.max_key_size, "flags": sorted(self.flags)}


@dataclass(frozen=True)
class SignMechanism:
    """How to make one signature on the token.

    ``input`` says what C_Sign receives: ``data`` (the token hashes: CKM_SHA256_RSA_PKCS...),
    ``digest`` (the host hashes: CKM_ECDSA, CKM_RSA_PKCS_PSS) or ``digest_info`` (the host hashes
    and wraps the hash in a DER DigestInfo: CKM_RSA_PKCS).
    """

    mechanism: str  # CKM_* name
    input: str  # data | digest | digest_info
    hash: str  # sha1 | sha256 | sha384 | sha512
    pss: tuple[str, str, int] | None = None  # (CKM_SHA256, CKG_MGF1_SHA256, salt length)
    ecdsa: bool = False  # the token returns r||s; X.509 wants DER Ecdsa-Sig-Value

    def describe(self) -> str:
        text = self.mechanism
        if self.pss:
            text += f" (hash {self.pss[0]}, {self.pss[1]}, salt {self.pss[2]})"
        if self.input != "data":
            text += f", {self.hash} computed on the host"
        return text


@dataclass(frozen=True)
class TokenFacts:
    label: str
    serial: str
    model: str
    initialized: bool
    write_protected: bool
    user_pin_initialized: bool
    user_pin_locked: bool
    mechanisms: dict[str, MechanismRange]
    private_key_labels: tuple[str, ...]  # one entry per private key visible in the session
    object_count: int  # every object visible in the session
    free_public_memory: int | None  # bytes; None when the token does not say (SoftHSM, OpenSC)
    free_private_memory: int | None
    pin_pad: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: PIV cards: the CKA_IDs of the key and certificate objects, i.e. the occupied slots
    slot_ids: frozenset[bytes] = frozenset()
    #: PIV cards: slots holding a certificate (ykcs11's attestation certificates not counted)
    slot_certificates: frozenset[bytes] = frozenset()
    #: PIV cards: slot CKA_ID -> SHA-256 of the DER SubjectPublicKeyInfo of the key it holds
    slot_keys: dict[bytes, str] = field(default_factory=dict)
    #: PIV cards: slots whose key is one a rolled-back run discarded (store/discarded.py): free
    discarded_slots: frozenset[bytes] = frozenset()

    @property
    def private_key_count(self) -> int:
        return len(self.private_key_labels)
