"""RequestPolicy + provider -> KeyPlan: the PKCS#11 templates and mechanisms for one key pair.

Every rule here is a row of the table in docs/providers.md, and each row has a test in
tests/test_providers_plan.py. The plan is pure data: it opens no session. Attribute and mechanism
names are PKCS#11's own spellings; `token.keys` turns them into python-pkcs11 values.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from tokenagent.errors import PolicyError
from tokenagent.inf.policy import KeyProtection, RequestPolicy, RequestType
from tokenagent.providers.registry import ProviderEntry, check_provider_type
from tokenagent.token.facts import SignMechanism

#: named curves: INF curve -> (SEC 2 name, DER of the namedCurve OID = CKA_EC_PARAMS)
CURVES: dict[str, tuple[str, bytes]] = {
    "P-256": ("secp256r1", bytes.fromhex("06082a8648ce3d030107")),
    "P-384": ("secp384r1", bytes.fromhex("06052b81040022")),
    "P-521": ("secp521r1", bytes.fromhex("06052b81040023")),
}
RSA_PUBLIC_EXPONENT = b"\x01\x00\x01"  # 65537
HASH_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}

# KeyUsageProperty bits (ncrypt.h)
ALLOW_DECRYPT = 0x1
ALLOW_SIGNING = 0x2
ALLOW_KEY_AGREEMENT = 0x4


@dataclass(frozen=True)
class ExistingKey:
    """UseExistingKeySet: the key pair to reuse, by CKA_LABEL or by a certificate's thumbprint."""

    label: str | None
    renewal_thumbprint: bytes | None

    def describe(self) -> str:
        if self.renewal_thumbprint is not None:
            return f"the key of the certificate with SHA-1 thumbprint {self.renewal_thumbprint.hex()}"
        return f"the private key labelled '{self.label}'"


@dataclass(frozen=True)
class KeyPlan:
    provider: ProviderEntry
    machine: bool
    key_algorithm: str  # the INF name: RSA, ECDSA_P256, ...
    family: str  # RSA | ECDSA | ECDH
    key_type: str  # CKK_RSA | CKK_EC
    bits: int  # RSA modulus bits or EC curve bits
    curve: str | None  # P-256 | P-384 | P-521
    generation_mechanism: str  # CKM_RSA_PKCS_KEY_PAIR_GEN | CKM_EC_KEY_PAIR_GEN
    label: str
    label_generated: bool  # no KeyContainer in the INF: tokenagent made the label up
    public_template: dict[str, Any]
    private_template: dict[str, Any]
    hash: str
    padding: str  # pkcs1v15 | pss | ecdsa
    sign_candidates: tuple[SignMechanism, ...]  # in order of preference; capacity picks the first present
    always_authenticate: bool
    silent: bool
    existing: ExistingKey | None
    notes: tuple[str, ...]  # how INF keys were read, for --dry-run and warnings

    @property
    def new_objects(self) -> int:
        return 0 if self.existing else 2

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider.to_json(),
            "context": "machine" if self.machine else "user",
            "key_algorithm": self.key_algorithm,
            "key_type": self.key_type,
            "bits": self.bits,
            "curve": self.curve,
            "generation_mechanism": None if self.existing else self.generation_mechanism,
            "label": self.label,
            "public_template": {k: _json(v) for k, v in self.public_template.items()},
            "private_template": {k: _json(v) for k, v in self.private_template.items()},
            "signature": {
                "hash": self.hash,
                "padding": self.padding,
                "candidates": [m.describe() for m in self.sign_candidates],
            },
            "always_authenticate": self.always_authenticate,
            "silent": self.silent,
            "existing_key": self.existing.describe() if self.existing else None,
            "notes": list(self.notes),
        }


def _json(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def plan_key(policy: RequestPolicy, provider: ProviderEntry, *, machine: bool | None = None) -> KeyPlan:
    """Map the INF's key settings onto PKCS#11. Raises PolicyError (file:line) when the provider cannot."""
    notes: list[str] = []
    family = policy.key_family
    bits = policy.key_length
    where_alg = policy.where("key_algorithm")
    if family in ("DSA", "DH"):
        raise PolicyError(
            f"{where_alg}: KeyAlgorithm = {policy.key_algorithm} is not supported: tokenagent makes RSA and "
            "ECDSA/ECDH keys (DSA and DH certificates are obsolete and PKCS#11 tokens rarely generate them)"
        )
    check_provider_type(provider, policy.provider_type, family, policy.where("provider_name"))
    if policy.request_type == RequestType.SCEP:
        raise PolicyError(f"{policy.where('request_type')}: RequestType = SCEP is not supported")

    profile = provider.profile
    if not profile.allows(family, bits):
        sizes = profile.algorithms.get(family)
        allowed = "no such keys" if sizes is None else ", ".join(map(str, sizes)) or "any size"
        raise PolicyError(
            f"{policy.where('key_length')}: profile '{profile.name}' ({provider.name}) cannot make "
            f"{family} {bits}-bit keys (allowed: {allowed})"
        )

    # -- export ---------------------------------------------------------------------------------
    exportable = policy.exportable or policy.exportable_encrypted
    if exportable:
        key = "exportable" if policy.exportable else "exportable_encrypted"
        if profile.kind == "smartcard":
            raise PolicyError(
                f"{policy.where(key)}: Exportable = TRUE: smart cards cannot export private keys "
                f"({provider.name}); remove it, or use a software or HSM provider that allows export"
            )
        if not profile.exportable:
            raise PolicyError(
                f"{policy.where(key)}: Exportable = TRUE: profile '{profile.name}' does not allow exportable "
                "keys; set exportable = true for this provider in providers.toml if the device allows it"
            )
        notes.append("Exportable = TRUE: CKA_EXTRACTABLE = TRUE (still CKA_SENSITIVE: export only wrapped)")

    # -- archival -------------------------------------------------------------------------------
    # PrivateKeyArchive sends the private key, encrypted to the CA, inside the CMC request: the
    # operator then believes the key is escrowed. A key born on a token that cannot export it can
    # never be archived, and tokenagent does not build the encrypted-key body part at all, so the
    # setting is refused rather than ignored (with other request types certreq ignores it: a warning).
    if policy.private_key_archive and policy.request_type == RequestType.CMC:
        where = policy.where("private_key_archive")
        if profile.kind == "smartcard" or not profile.exportable:
            raise PolicyError(
                f"{where}: PrivateKeyArchive = TRUE: the key is generated on the token and cannot leave it "
                f"(profile '{profile.name}' of {provider.name} does not export keys), so it cannot be archived "
                "at the CA; remove the setting, or use a provider whose keys may be exported"
            )
        raise PolicyError(
            f"{where}: PrivateKeyArchive = TRUE: tokenagent does not send private keys for archival "
            "(no CMC encrypted-key body part); remove the setting and archive the key by other means"
        )

    # -- usages ---------------------------------------------------------------------------------
    allowed_usage = policy.key_usage_property
    sign = bool(allowed_usage & ALLOW_SIGNING)
    decrypt = bool(allowed_usage & ALLOW_DECRYPT)
    derive = bool(allowed_usage & ALLOW_KEY_AGREEMENT)
    if family == "RSA" and derive:
        derive = False
        if allowed_usage != 0xFFFFFF:
            notes.append("KeyUsageProperty key agreement does not apply to RSA keys: no CKA_DERIVE")
    if family != "RSA" and decrypt:
        decrypt = False
        if allowed_usage != 0xFFFFFF:
            notes.append("KeyUsageProperty decrypt does not apply to EC keys (use key agreement): no CKA_DECRYPT")
    # every request type that gets this far (SCEP was refused above) is signed by its own key
    if not sign and not policy.use_existing_key_set:
        sign = True
        notes.append(
            "CKA_SIGN = TRUE although KeyUsageProperty does not allow signing: the request must be signed "
            "by its own key (proof of possession)"
        )

    # -- protection -----------------------------------------------------------------------------
    always_authenticate = policy.key_protection == KeyProtection.FORCE_HIGH_PROTECTION
    if always_authenticate:
        notes.append("KeyProtection = FORCE_HIGH_PROTECTION: CKA_ALWAYS_AUTHENTICATE (PIN for every use)")
    elif policy.key_protection == KeyProtection.PROTECT_KEY or policy.user_protected:
        notes.append(
            "KeyProtection = PROTECT_KEY / UserProtected: the key is CKA_PRIVATE, every use needs a logged-in "
            "session (PKCS#11 has no 'notify on use' level; FORCE_HIGH_PROTECTION asks the PIN per use)"
        )

    # -- label ----------------------------------------------------------------------------------
    label_generated = policy.key_container is None
    label = policy.key_container or f"tokenagent-{uuid.uuid4()}"

    # -- templates ------------------------------------------------------------------------------
    key_type = "CKK_RSA" if family == "RSA" else "CKK_EC"
    curve = policy.curve
    # *_RECOVER are set FALSE explicitly: SoftHSM defaults CKA_SIGN_RECOVER to TRUE on RSA and EC keys
    public: dict[str, Any] = {"CKA_TOKEN": True, "CKA_PRIVATE": False, "CKA_LABEL": label, "CKA_VERIFY_RECOVER": False}
    private: dict[str, Any] = {
        "CKA_TOKEN": True,
        "CKA_PRIVATE": True,
        "CKA_SENSITIVE": True,
        "CKA_EXTRACTABLE": exportable,
        "CKA_LABEL": label,
        "CKA_SIGN_RECOVER": False,
    }
    if family == "RSA":
        public.update({"CKA_MODULUS_BITS": bits, "CKA_PUBLIC_EXPONENT": RSA_PUBLIC_EXPONENT})
        public.update({"CKA_VERIFY": sign, "CKA_ENCRYPT": decrypt, "CKA_WRAP": decrypt})
        private.update({"CKA_SIGN": sign, "CKA_DECRYPT": decrypt, "CKA_UNWRAP": decrypt})
        generation = "CKM_RSA_PKCS_KEY_PAIR_GEN"
    else:
        assert curve is not None
        public.update({"CKA_EC_PARAMS": CURVES[curve][1], "CKA_VERIFY": sign})
        private.update({"CKA_SIGN": sign, "CKA_DERIVE": derive})
        generation = "CKM_EC_KEY_PAIR_GEN"
    if always_authenticate:
        private["CKA_ALWAYS_AUTHENTICATE"] = True

    existing = None
    if policy.use_existing_key_set:
        existing = ExistingKey(policy.key_container if policy.renewal_cert is None else None, policy.renewal_cert)

    padding = "ecdsa" if family != "RSA" else ("pss" if policy.alternate_signature_algorithm else "pkcs1v15")
    if padding == "pss":
        notes.append("AlternateSignatureAlgorithm = TRUE: RSASSA-PSS with MGF1 and salt = hash length")
    return KeyPlan(
        provider=provider,
        machine=policy.machine_key_set if machine is None else machine,
        key_algorithm=policy.key_algorithm,
        family=family,
        key_type=key_type,
        bits=bits,
        curve=curve,
        generation_mechanism=generation,
        label=label,
        label_generated=label_generated,
        public_template=public,
        private_template=private,
        hash=policy.hash_algorithm,
        padding=padding,
        sign_candidates=sign_mechanisms(padding, policy.hash_algorithm),
        always_authenticate=always_authenticate,
        silent=policy.silent,
        existing=existing,
        notes=tuple(notes),
    )


def sign_mechanisms(padding: str, hash_name: str) -> tuple[SignMechanism, ...]:
    """The combined hash-and-sign mechanism first, then the raw one with the hash made on the host
    (SoftHSM 2.6 has no CKM_ECDSA_SHA256, smart cards often have only CKM_RSA_PKCS)."""
    if hash_name not in HASH_SIZES:
        raise PolicyError(f"cannot sign with hash {hash_name}")
    upper = hash_name.upper()
    if padding == "ecdsa":
        return (
            SignMechanism(f"CKM_ECDSA_{upper}", "data", hash_name, ecdsa=True),
            SignMechanism("CKM_ECDSA", "digest", hash_name, ecdsa=True),
        )
    if padding == "pss":
        params = (f"CKM_{upper}", f"CKG_MGF1_{upper}", HASH_SIZES[hash_name])
        return (
            SignMechanism(f"CKM_{upper}_RSA_PKCS_PSS", "data", hash_name, pss=params),
            SignMechanism("CKM_RSA_PKCS_PSS", "digest", hash_name, pss=params),
        )
    combined = "CKM_SHA1_RSA_PKCS" if hash_name == "sha1" else f"CKM_{upper}_RSA_PKCS"
    return (
        SignMechanism(combined, "data", hash_name),
        SignMechanism("CKM_RSA_PKCS", "digest_info", hash_name),
    )
