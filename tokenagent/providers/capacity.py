"""Can this token take this key? Checked before anything is created, so a refusal leaves the
token untouched. Every check is reported (for `--dry-run`), and the first failed one names the limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenagent.errors import CapacityError, KeyExistsError
from tokenagent.providers.plan import KeyPlan
from tokenagent.token.facts import SignMechanism, TokenFacts


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class CapacityVerdict:
    checks: tuple[Check, ...]
    sign_mechanism: SignMechanism | None

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def refusals(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def raise_if_refused(self, token: str, *, dry_run: bool = False) -> None:
        """`KeyExistsError` for a taken KeyContainer, `CapacityError` for any other refusal."""
        refused = self.refusals()
        if not refused:
            return
        first = refused[0]
        if dry_run:
            message = f"dry run: the token would refuse: {first.detail}"
        else:
            message = f"token {token}: {first.detail}; nothing was created"
        if first.name in ("label", "slot"):
            raise KeyExistsError(message)
        raise CapacityError(message)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [c.to_json() for c in self.checks],
            "sign_mechanism": self.sign_mechanism.describe() if self.sign_mechanism else None,
        }


#: rough object sizes in token memory, used only when the token reports free memory
def _estimated_bytes(plan: KeyPlan) -> tuple[int, int]:
    size = (plan.bits + 7) // 8
    if plan.family == "RSA":
        return size + 512, size * 5 // 2 + 512  # public: n, e; private: CRT parts
    return 2 * size + 512, size + 512


def check_capacity(plan: KeyPlan, facts: TokenFacts, *, extra_objects: int = 0) -> CapacityVerdict:
    """``extra_objects``: objects made besides the key pair (1 for RequestType = Cert's certificate)."""
    checks: list[Check] = []

    def add(check_name: str, ok: bool, detail: str) -> None:
        checks.append(Check(check_name, ok, detail))

    add("initialized", facts.initialized, "initialized" if facts.initialized else "the token is not initialized")
    add(
        "writable",
        not facts.write_protected,
        "writable" if not facts.write_protected else "the token is write-protected",
    )
    add(
        "user PIN",
        facts.user_pin_initialized and not facts.user_pin_locked,
        "user PIN initialized and not locked"
        if facts.user_pin_initialized and not facts.user_pin_locked
        else "the user PIN is locked"
        if facts.user_pin_locked
        else "the user PIN is not initialized",
    )

    if plan.existing is None:
        _check_generation(plan, facts, add)
        profile = plan.provider.profile
        if profile.key_containers is not None:
            used = facts.private_key_count
            add(
                "key containers",
                used < profile.key_containers,
                f"{used} of {profile.key_containers} key containers used (profile '{profile.name}')"
                if used < profile.key_containers
                else f"all {profile.key_containers} key containers of profile '{profile.name}' are used "
                f"({used} private keys on the token); delete one or raise key_containers",
            )
        if profile.max_objects is not None:
            needed = facts.object_count + plan.new_objects + extra_objects
            add(
                "objects",
                needed <= profile.max_objects,
                f"{needed} of {profile.max_objects} objects after this key (profile '{profile.name}')"
                if needed <= profile.max_objects
                else f"the token would hold {needed} objects, more than the {profile.max_objects} "
                f"profile '{profile.name}' allows",
            )
        public_bytes, private_bytes = _estimated_bytes(plan)
        for kind, free, needed in (
            ("public", facts.free_public_memory, public_bytes),
            ("private", facts.free_private_memory, private_bytes),
        ):
            if free is not None:
                add(
                    f"{kind} memory",
                    free >= needed,
                    f"{free} bytes of {kind} memory free, about {needed} needed"
                    if free >= needed
                    else f"only {free} bytes of {kind} memory free, about {needed} needed for the key",
                )
        if plan.piv_slot is not None:
            _check_slot(plan, facts, add)
        elif plan.label in facts.private_key_labels:
            add(
                "label",
                False,
                f"a private key labelled '{plan.label}' already exists (KeyContainer); use UseExistingKeySet = TRUE "
                "to reuse it or choose another KeyContainer",
            )

    sign_mechanism = next((m for m in plan.sign_candidates if _can(facts, m.mechanism, "SIGN")), None)
    if sign_mechanism is None:
        wanted = " or ".join(m.mechanism for m in plan.sign_candidates)
        add("signature mechanism", False, f"the token offers neither {wanted} for signing")
    else:
        add("signature mechanism", True, sign_mechanism.describe())
    return CapacityVerdict(tuple(checks), sign_mechanism)


def _can(facts: TokenFacts, mechanism: str, flag: str) -> bool:
    info = facts.mechanisms.get(mechanism)
    return info is not None and flag in info.flags


def _check_generation(plan: KeyPlan, facts: TokenFacts, add: Any) -> None:
    mechanism = plan.generation_mechanism
    info = facts.mechanisms.get(mechanism)
    if info is None:
        add("generation mechanism", False, f"the token has no {mechanism}")
        return
    if "GENERATE_KEY_PAIR" not in info.flags:
        add("generation mechanism", False, f"{mechanism} lacks CKF_GENERATE_KEY_PAIR on this token")
        return
    add("generation mechanism", True, f"{mechanism} with CKF_GENERATE_KEY_PAIR")
    low, high = info.min_key_size, info.max_key_size
    # Some EC modules report the range in bytes; PKCS#11 v2.40 says bits. Accept either reading.
    in_range = low <= plan.bits <= high or (plan.family != "RSA" and high < 100 and low <= (plan.bits + 7) // 8 <= high)
    add(
        "key size",
        in_range,
        f"{plan.bits} bits within {mechanism}'s range {low}..{high}"
        if in_range
        else f"{plan.bits}-bit keys are outside {mechanism}'s range {low}..{high} bits",
    )
    if plan.family != "RSA":
        curve_flags = {"EC_NAMEDCURVE", "EC_F_P", "EC_ECPARAMETERS", "EC_OID"}
        if info.flags & curve_flags and not info.flags & {"EC_NAMEDCURVE", "EC_OID"}:
            add("curve", False, f"{mechanism} does not accept named curves ({plan.curve})")
        else:
            add("curve", True, f"{plan.curve} as a named curve")


def _check_slot(plan: KeyPlan, facts: TokenFacts, add: Any) -> None:
    """A PIV slot holds one key: generating into a taken slot destroys its key for good."""
    slot = plan.piv_slot
    assert slot is not None
    if slot.cka_id not in facts.slot_ids:
        add("slot", True, f"{slot.describe()} is empty")
    elif slot.cka_id in facts.discarded_slots and slot.cka_id not in facts.slot_certificates:
        add("slot", True, f"{slot.describe()} holds only the key an earlier, rolled-back run discarded: reused")
    elif plan.piv_overwrite:
        add("slot", True, f"{slot.describe()} holds a key: it will be replaced (PivOverwrite = TRUE)")
    else:
        add(
            "slot",
            False,
            f"{slot.describe()} already holds a key or certificate; choose another slot "
            '(KeyContainer = "PIV 9c") or set PivOverwrite = TRUE to replace it',
        )
