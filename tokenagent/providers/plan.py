"""RequestPolicy + provider -> KeyPlan: the PKCS#11 templates and mechanisms for one key pair.

Every rule here is a row of the table in docs/providers.md, and each row has a test in
tests/test_providers_plan.py. The plan is pure data: it opens no session. Attribute and mechanism
names are PKCS#11's own spellings; `token.keys` turns them into python-pkcs11 values.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tokenagent.errors import CapacityError, PolicyError
from tokenagent.inf.policy import KeyProtection, RequestPolicy, RequestType
from tokenagent.providers.registry import ProviderEntry, check_provider_type
from tokenagent.token.facts import SignMechanism
from tokenagent.token.implementations import TPM2_PKCS11

if TYPE_CHECKING:
    from tokenagent.ca.connector import KeyNeeds
    from tokenagent.providers.piv import PivSlot

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
    #: a PIV card (profile 'piv'): the slot the key is generated in; its CKA_ID is fixed by ykcs11
    piv_slot: PivSlot | None = None
    piv_overwrite: bool = False  # PivOverwrite = TRUE: a key already in the slot may be replaced

    @property
    def new_objects(self) -> int:
        return 0 if self.existing else 2

    @property
    def fixed_id(self) -> bytes | None:
        """The CKA_ID the key must be born with (PIV: the slot's), None: SHA-1 of the public key."""
        return self.piv_slot.cka_id if self.piv_slot is not None else None

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
            "piv_slot": self.piv_slot.name if self.piv_slot else None,
            "notes": list(self.notes),
        }


def _json(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def plan_key(
    policy: RequestPolicy, provider: ProviderEntry, *, machine: bool | None = None, ca_needs: KeyNeeds | None = None
) -> KeyPlan:
    """Map the INF's key settings onto PKCS#11. Raises PolicyError (file:line) when the provider cannot.

    ``ca_needs``: what the CA protocol the request goes to needs of the key (`enroll` with a SCEP
    CA: an RSA key that can decrypt), refused or added here, before any key exists.

    Each step returns its part of the plan and its notes; the notes are joined in step order, which
    is the order --dry-run prints them in.
    """
    family = policy.key_family
    _check_ca_needs(policy, family, ca_needs)
    if provider.profile.name == "piv":
        return _plan_piv(policy, provider, family, machine)
    if provider.profile.kind != "smartcard":  # a smart card may still turn out to be a PIV card
        refuse_piv_keys(policy, provider)
    _check_algorithm(policy, provider, family)
    _refuse_scep(policy)
    _check_key_size(policy, provider, family)
    exportable, export_notes = _export(policy, provider)
    _check_archival(policy, provider)
    usages, usage_notes = _usages(policy, family)
    if ca_needs is not None and ca_needs.decrypt and not usages.decrypt:
        usages = replace(usages, decrypt=True)
        usage_notes.append(f"CKA_DECRYPT = TRUE: {ca_needs.why}")
    always_authenticate, protection_notes = _protection(policy)
    label, label_generated = _label(policy)
    templates = _templates(
        policy, family, label, usages, exportable=exportable, always_authenticate=always_authenticate
    )
    padding, padding_notes = _padding(policy, family)
    return KeyPlan(
        provider=provider,
        machine=policy.machine_key_set if machine is None else machine,
        key_algorithm=policy.key_algorithm,
        family=family,
        key_type=templates.key_type,
        bits=policy.key_length,
        curve=policy.curve,
        generation_mechanism=templates.generation_mechanism,
        label=label,
        label_generated=label_generated,
        public_template=templates.public,
        private_template=templates.private,
        hash=policy.hash_algorithm,
        padding=padding,
        sign_candidates=sign_mechanisms(padding, policy.hash_algorithm),
        always_authenticate=always_authenticate,
        silent=policy.silent,
        existing=_existing_key(policy),
        notes=(*export_notes, *usage_notes, *protection_notes, *padding_notes),
    )


@dataclass(frozen=True)
class _Usages:
    """What the private key may do (public halves mirror it: verify, encrypt, wrap)."""

    sign: bool
    decrypt: bool
    derive: bool


@dataclass(frozen=True)
class _Templates:
    key_type: str
    generation_mechanism: str
    public: dict[str, Any]
    private: dict[str, Any]


def _check_algorithm(policy: RequestPolicy, provider: ProviderEntry, family: str) -> None:
    """Refuse key families tokenagent cannot make, and a ProviderType that cannot make this one."""
    if family in ("DSA", "DH"):
        raise PolicyError(
            f"{policy.where('key_algorithm')}: KeyAlgorithm = {policy.key_algorithm} is not supported: tokenagent "
            "makes RSA and ECDSA/ECDH keys (DSA and DH certificates are obsolete and PKCS#11 tokens rarely "
            "generate them)"
        )
    check_provider_type(provider, policy.provider_type, family, policy.where("provider_name"))


def _check_ca_needs(policy: RequestPolicy, family: str, needs: KeyNeeds | None) -> None:
    if needs is None or needs.families is None or family in needs.families:
        return
    raise PolicyError(
        f"{policy.where('key_algorithm')}: KeyAlgorithm = {policy.key_algorithm} makes {family} keys, and "
        f"{needs.protocol} needs {' or '.join(needs.families)}: {needs.why}; nothing was generated"
    )


def _refuse_scep(policy: RequestPolicy) -> None:
    if policy.request_type == RequestType.SCEP:
        raise PolicyError(f"{policy.where('request_type')}: RequestType = SCEP is not supported")


def _check_key_size(policy: RequestPolicy, provider: ProviderEntry, family: str) -> None:
    profile = provider.profile
    bits = policy.key_length
    if not profile.allows(family, bits):
        sizes = profile.algorithms.get(family)
        allowed = "no such keys" if sizes is None else ", ".join(map(str, sizes)) or "any size"
        raise PolicyError(
            f"{policy.where('key_length')}: profile '{profile.name}' ({provider.name}) cannot make "
            f"{family} {bits}-bit keys (allowed: {allowed})"
        )


def _export(policy: RequestPolicy, provider: ProviderEntry) -> tuple[bool, list[str]]:
    """CKA_EXTRACTABLE, refused where the profile says the device cannot export."""
    if not (policy.exportable or policy.exportable_encrypted):
        return False, []
    key = "exportable" if policy.exportable else "exportable_encrypted"
    profile = provider.profile
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
    return True, ["Exportable = TRUE: CKA_EXTRACTABLE = TRUE (still CKA_SENSITIVE: export only wrapped)"]


def _check_archival(policy: RequestPolicy, provider: ProviderEntry) -> None:
    """PrivateKeyArchive with CMC is always refused.

    PrivateKeyArchive sends the private key, encrypted to the CA, inside the CMC request: the
    operator then believes the key is escrowed. A key born on a token that cannot export it can
    never be archived, and tokenagent does not build the encrypted-key body part at all, so the
    setting is refused rather than ignored (with other request types certreq ignores it: a warning).
    """
    if not (policy.private_key_archive and policy.request_type == RequestType.CMC):
        return
    where = policy.where("private_key_archive")
    profile = provider.profile
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


def _usages(policy: RequestPolicy, family: str) -> tuple[_Usages, list[str]]:
    """KeyUsageProperty narrowed to what the key type can do, plus signing for the request itself."""
    notes: list[str] = []
    allowed_usage = policy.key_usage_property
    sign = bool(allowed_usage & ALLOW_SIGNING)
    decrypt = bool(allowed_usage & ALLOW_DECRYPT)
    derive = bool(allowed_usage & ALLOW_KEY_AGREEMENT)
    # "all usages" asks for nothing in particular, so dropping what the key type lacks is not news
    if family == "RSA" and derive:
        derive = False
        if allowed_usage != 0xFFFFFF:
            notes.append("KeyUsageProperty key agreement does not apply to RSA keys: no CKA_DERIVE")
    if family != "RSA" and decrypt:
        decrypt = False
        if allowed_usage != 0xFFFFFF:
            notes.append("KeyUsageProperty decrypt does not apply to EC keys (use key agreement): no CKA_DECRYPT")
    # every request type that gets this far (SCEP was refused first) is signed by its own key
    if not sign and not policy.use_existing_key_set:
        sign = True
        notes.append(
            "CKA_SIGN = TRUE although KeyUsageProperty does not allow signing: the request must be signed "
            "by its own key (proof of possession)"
        )
    return _Usages(sign=sign, decrypt=decrypt, derive=derive), notes


def _protection(policy: RequestPolicy) -> tuple[bool, list[str]]:
    """Whether the key needs CKA_ALWAYS_AUTHENTICATE; PKCS#11 has only that and "private"."""
    if policy.key_protection == KeyProtection.FORCE_HIGH_PROTECTION:
        return True, ["KeyProtection = FORCE_HIGH_PROTECTION: CKA_ALWAYS_AUTHENTICATE (PIN for every use)"]
    if policy.key_protection == KeyProtection.PROTECT_KEY or policy.user_protected:
        return False, [
            "KeyProtection = PROTECT_KEY / UserProtected: the key is CKA_PRIVATE, every use needs a logged-in "
            "session (PKCS#11 has no 'notify on use' level; FORCE_HIGH_PROTECTION asks the PIN per use)"
        ]
    return False, []


def _label(policy: RequestPolicy) -> tuple[str, bool]:
    """CKA_LABEL, and whether tokenagent made it up (certreq too names a container without KeyContainer)."""
    return policy.key_container or f"tokenagent-{uuid.uuid4()}", policy.key_container is None


def _templates(
    policy: RequestPolicy, family: str, label: str, usages: _Usages, *, exportable: bool, always_authenticate: bool
) -> _Templates:
    """Both CKA templates, every attribute explicit so no token default decides (SoftHSM makes an
    omitted CKA_DECRYPT/CKA_UNWRAP TRUE). Every usage attribute is here: token/generate.py sends
    nothing the plan does not name."""
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
        public.update({"CKA_MODULUS_BITS": policy.key_length, "CKA_PUBLIC_EXPONENT": RSA_PUBLIC_EXPONENT})
        public.update({"CKA_VERIFY": usages.sign, "CKA_ENCRYPT": usages.decrypt, "CKA_WRAP": usages.decrypt})
        private.update({"CKA_SIGN": usages.sign, "CKA_DECRYPT": usages.decrypt, "CKA_UNWRAP": usages.decrypt})
        private["CKA_DERIVE"] = False
        key_type, generation = "CKK_RSA", "CKM_RSA_PKCS_KEY_PAIR_GEN"
    else:
        assert policy.curve is not None
        public.update({"CKA_EC_PARAMS": CURVES[policy.curve][1], "CKA_VERIFY": usages.sign})
        public.update({"CKA_ENCRYPT": False, "CKA_WRAP": False})
        private.update({"CKA_SIGN": usages.sign, "CKA_DERIVE": usages.derive})
        private.update({"CKA_DECRYPT": False, "CKA_UNWRAP": False})
        key_type, generation = "CKK_EC", "CKM_EC_KEY_PAIR_GEN"
    if always_authenticate:
        private["CKA_ALWAYS_AUTHENTICATE"] = True
    return _Templates(key_type, generation, public, private)


def _existing_key(policy: RequestPolicy) -> ExistingKey | None:
    """UseExistingKeySet: a renewal certificate's thumbprint wins over the KeyContainer label."""
    if not policy.use_existing_key_set:
        return None
    return ExistingKey(policy.key_container if policy.renewal_cert is None else None, policy.renewal_cert)


def _padding(policy: RequestPolicy, family: str) -> tuple[str, list[str]]:
    """The signature scheme: EC keys sign ECDSA; RSA keys PKCS#1 v1.5 unless AlternateSignatureAlgorithm."""
    if family != "RSA":
        return "ecdsa", []
    if policy.alternate_signature_algorithm:
        return "pss", ["AlternateSignatureAlgorithm = TRUE: RSASSA-PSS with MGF1 and salt = hash length"]
    return "pkcs1v15", []


def sign_mechanisms(padding: str, hash_name: str) -> tuple[SignMechanism, ...]:
    """In order of preference. RSA: the combined hash-and-sign mechanism first, then the raw one with
    the hash made on the host (smart cards often have only CKM_RSA_PKCS). ECDSA: CKM_ECDSA over a
    host hash first: the token signs a hash either way, every EC token has CKM_ECDSA (SoftHSM 2.6
    has nothing else), and a card then receives 32-64 bytes instead of the whole request; the
    combined one is kept for a token that offers only it. Asking for the raw one first saves a
    C_GetMechanismInfo on every token without the combined one (issue 15)."""
    if hash_name not in HASH_SIZES:
        raise PolicyError(f"cannot sign with hash {hash_name}")
    upper = hash_name.upper()
    if padding == "ecdsa":
        return (
            SignMechanism("CKM_ECDSA", "digest", hash_name, ecdsa=True),
            SignMechanism(f"CKM_ECDSA_{upper}", "data", hash_name, ecdsa=True),
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


# -- PIV cards through ykcs11 (providers/piv.py, docs/piv.md) -------------------------------------------

#: ykcs11 2.2's generation templates accept only these attributes (anything else is
#: CKR_ATTRIBUTE_TYPE_INVALID) and ignore the boolean ones: a slot's key can do what the card lets it
_YKCS11_LABELS = {
    "9a": "PIV Authentication",
    "9c": "Digital Signature",
    "9d": "Key Management",
    "9e": "Card Authentication",
}


def piv_key_label(slot: PivSlot) -> str:
    """The label ykcs11 gives a slot's private key (it cannot be set)."""
    return f"Private key for {_YKCS11_LABELS.get(slot.name, slot.purpose.replace(' Management', ''))}"


def refuse_piv_keys(policy: RequestPolicy, provider: ProviderEntry) -> None:
    """PivPinPolicy and the other PIV keys on a token that is not a PIV card: say so, do not ignore."""
    for key, name, default in (
        ("piv_pin_policy", "PivPinPolicy", "default"),
        ("piv_touch_policy", "PivTouchPolicy", "default"),
        ("piv_overwrite", "PivOverwrite", False),
    ):
        if getattr(policy, key) != default:
            raise PolicyError(
                f"{policy.where(key)}: {name} is for PIV cards (ykcs11), and profile "
                f"'{provider.profile.name}' of {provider.name} is not one; remove it"
            )


def _plan_piv(policy: RequestPolicy, provider: ProviderEntry, family: str, machine: bool | None) -> KeyPlan:
    """A key in a fixed slot of a PIV card: the slot's CKA_ID, the slot's PIN policy, ykcs11's templates."""
    _check_algorithm(policy, provider, family)
    _refuse_scep(policy)
    _check_key_size(policy, provider, family)
    _export(policy, provider)  # refuses Exportable on a smart card
    _check_archival(policy, provider)
    if policy.use_existing_key_set:
        raise PolicyError(
            f"{policy.where('use_existing_key_set')}: UseExistingKeySet on a PIV card is not supported yet: "
            "request a new key (the slot's old one is replaced only with PivOverwrite = TRUE)"
        )
    from tokenagent.providers.piv import choose_slot  # PIV cards only: a one-shot `new` elsewhere skips it

    slot, why = choose_slot(policy)
    notes = [f"{slot.describe()}: {why}"]
    always_authenticate = _piv_pin_policy(policy, slot, notes)
    _piv_touch_policy(policy, slot)
    usages, usage_notes = _usages(policy, family)
    notes += usage_notes
    notes.append("ykcs11 ignores CKA_SIGN/CKA_DECRYPT/CKA_DERIVE: a PIV key can do what its slot allows")
    if policy.key_container is not None and policy.key_container.strip().upper() != f"PIV {slot.name.upper()}":
        notes.append(f"KeyContainer = {policy.key_container}: PIV keys keep ykcs11's own label")
    public: dict[str, Any] = {"CKA_TOKEN": True, "CKA_PRIVATE": False, "CKA_ID": slot.cka_id, "CKA_VERIFY": True}
    private: dict[str, Any] = {"CKA_TOKEN": True, "CKA_PRIVATE": True, "CKA_SENSITIVE": True, "CKA_ID": slot.cka_id}
    private["CKA_SIGN"] = usages.sign
    if family == "RSA":
        public.update({"CKA_MODULUS_BITS": policy.key_length, "CKA_PUBLIC_EXPONENT": RSA_PUBLIC_EXPONENT})
        public["CKA_ENCRYPT"] = usages.decrypt
        private["CKA_DECRYPT"] = usages.decrypt
        key_type, generation = "CKK_RSA", "CKM_RSA_PKCS_KEY_PAIR_GEN"
    else:
        assert policy.curve is not None
        public["CKA_EC_PARAMS"] = CURVES[policy.curve][1]
        private["CKA_DERIVE"] = usages.derive
        key_type, generation = "CKK_EC", "CKM_EC_KEY_PAIR_GEN"
    padding, padding_notes = _padding(policy, family)
    return KeyPlan(
        provider=provider,
        machine=policy.machine_key_set if machine is None else machine,
        key_algorithm=policy.key_algorithm,
        family=family,
        key_type=key_type,
        bits=policy.key_length,
        curve=policy.curve,
        generation_mechanism=generation,
        label=piv_key_label(slot),
        label_generated=False,
        public_template=public,
        private_template=private,
        hash=policy.hash_algorithm,
        padding=padding,
        sign_candidates=sign_mechanisms(padding, policy.hash_algorithm),
        always_authenticate=always_authenticate,
        silent=policy.silent,
        existing=None,
        notes=(*notes, *padding_notes),
        piv_slot=slot,
        piv_overwrite=policy.piv_overwrite,
    )


def _piv_pin_policy(policy: RequestPolicy, slot: PivSlot, notes: list[str]) -> bool:
    """The slot decides the PIN policy on ykcs11 2.2 (it has no template attribute for it): an INF
    that asks for another one is refused rather than silently given the slot's."""
    wanted = policy.piv_pin_policy
    if policy.key_protection == KeyProtection.FORCE_HIGH_PROTECTION:
        if wanted not in ("default", "always"):
            raise PolicyError(
                f"{policy.where('piv_pin_policy')}: PivPinPolicy = {wanted} contradicts "
                "KeyProtection = FORCE_HIGH_PROTECTION (a PIN for every use)"
            )
        wanted = "always"
    if wanted not in ("default", slot.pin_policy):
        raise PolicyError(
            f"{policy.where('piv_pin_policy')}: PIN policy '{wanted}' cannot be set through ykcs11; slot "
            f"{slot.name} uses '{slot.pin_policy}'. Choose a slot with that policy (9c: always, 9e: never) or "
            "generate the key with `ykman piv keys generate --pin-policy`"
        )
    notes.append(f"PIN policy of slot {slot.name}: {slot.pin_policy}")
    return slot.always_authenticate


def _piv_touch_policy(policy: RequestPolicy, slot: PivSlot) -> None:
    wanted = policy.piv_touch_policy
    if wanted not in ("default", slot.touch_policy):
        raise PolicyError(
            f"{policy.where('piv_touch_policy')}: touch policy '{wanted}' cannot be set through ykcs11 2.2; "
            "generate the key with `ykman piv keys generate --touch-policy`, or leave PivTouchPolicy out"
        )


#: tpm2-pkcs11 derives these from the TPM key's two usage bits (token/implementations.py)
_TPM_DERIVED_PUBLIC = ("CKA_VERIFY", "CKA_ENCRYPT", "CKA_WRAP")
_TPM_DERIVED_PRIVATE = ("CKA_UNWRAP",)


def for_implementation(plan: KeyPlan, implementation: str) -> KeyPlan:
    """The templates as the implementation serving the token can take them; the same plan otherwise.
    Only what the token would refuse is left out, and a note says what the token decides instead."""
    if implementation != TPM2_PKCS11 or plan.existing is not None:
        return plan
    if plan.curve == "P-521":
        # swtpm generates the key, then tpm2-pkcs11 1.9 fails every signature with it
        # (CKR_HOST_MEMORY, "d2i_ASN1_OCTET_STRING: too long"): refuse before anything is made
        raise CapacityError(
            "tpm2-pkcs11 cannot sign with P-521 keys (its signatures fail with CKR_HOST_MEMORY); "
            "use ECDSA_P256 or ECDSA_P384 on a TPM; nothing was created"
        )
    public = {k: v for k, v in plan.public_template.items() if k not in _TPM_DERIVED_PUBLIC}
    private = {k: v for k, v in plan.private_template.items() if k not in _TPM_DERIVED_PRIVATE}
    if public == plan.public_template and private == plan.private_template:
        return plan  # adapted already
    note = (
        "tpm2-pkcs11: CKA_VERIFY/CKA_ENCRYPT/CKA_WRAP/CKA_UNWRAP are not set (a TPM key has two usage "
        "bits: CKA_SIGN also means CKA_ENCRYPT, CKA_DECRYPT also CKA_VERIFY)"
    )
    return replace(plan, public_template=public, private_template=private, notes=(*plan.notes, note))
