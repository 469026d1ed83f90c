"""PIV planning without a card: which slot an INF's key goes to, ykcs11's templates, the PIN and
touch policies the module cannot set, and the occupied-slot check (providers/piv.py, docs/piv.md).
The same rules on a virtual PIV card through ykcs11: tests/test_piv.py."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from tokenagent.errors import KeyExistsError, PolicyError
from tokenagent.inf.policy import parse_policy
from tokenagent.providers.capacity import check_capacity
from tokenagent.providers.piv import SLOTS, choose_slot, named_slot, slot_for_id
from tokenagent.providers.plan import KeyPlan, plan_key
from tokenagent.providers.registry import load_registry
from tokenagent.token.facts import MechanismRange, TokenFacts

REGISTRY = load_registry(env={})
PIV = replace(REGISTRY.lookup("Microsoft Smart Card Key Storage Provider"), profile=REGISTRY.profiles["piv"])
SOFTWARE = REGISTRY.lookup("Microsoft Software Key Storage Provider")

#: what ykcs11 2.2's check_pubkey_template / check_pvtkey_template accept (mechanisms.c)
YKCS11_PUBLIC = {
    "CKA_CLASS", "CKA_KEY_TYPE", "CKA_PUBLIC_EXPONENT", "CKA_MODULUS_BITS", "CKA_EC_PARAMS", "CKA_ID",
    "CKA_SENSITIVE", "CKA_TOKEN", "CKA_ENCRYPT", "CKA_VERIFY", "CKA_WRAP", "CKA_DERIVE", "CKA_PRIVATE",
    "CKA_LABEL", "CKA_SUBJECT",
}  # fmt: skip
YKCS11_PRIVATE = {
    "CKA_CLASS", "CKA_KEY_TYPE", "CKA_ID", "CKA_SENSITIVE", "CKA_DECRYPT", "CKA_UNWRAP", "CKA_SIGN",
    "CKA_PRIVATE", "CKA_TOKEN", "CKA_DERIVE", "CKA_LABEL", "CKA_SUBJECT",
}  # fmt: skip

LOGON = '[Extensions]\n2.5.29.37 = "{text}1.3.6.1.4.1.311.20.2.2"\n'


def policy(body: str, extra: str = ""):
    return parse_policy(f'[NewRequest]\nSubject = "CN=ada"\n{body}\n{extra}', "piv.inf")


def piv_plan(body: str, extra: str = "") -> KeyPlan:
    return plan_key(policy(body, extra), PIV)


def test_slot_table_is_sp800_73_with_ykcs11_ids() -> None:
    assert [(s.name, s.key_id) for s in SLOTS[:4]] == [("9a", 1), ("9c", 2), ("9d", 3), ("9e", 4)]
    assert SLOTS[4].name == "82" and SLOTS[4].key_id == 5
    assert SLOTS[-1].name == "95" and SLOTS[-1].key_id == 0x18
    assert len(SLOTS) == 24
    assert slot_for_id(b"\x02").name == "9c"  # type: ignore[union-attr]
    assert slot_for_id(b"\x19") is None and slot_for_id(b"\x01\x02") is None


@pytest.mark.parametrize(
    ("body", "extra", "slot"),
    [
        ("KeyAlgorithm = ECDSA_P256", LOGON, "9a"),  # smart-card logon EKU
        ("KeySpec = AT_KEYEXCHANGE", LOGON, "9a"),  # the logon EKU wins over KeySpec
        ('KeyContainer = "PIV 9c"', LOGON, "9c"),  # the explicit slot wins over everything
        ('KeyContainer = "piv slot 82"', "", "82"),
        ("KeySpec = AT_KEYEXCHANGE\nKeyUsage = CERT_KEY_ENCIPHERMENT_KEY_USAGE", "", "9d"),
        (
            "KeySpec = AT_SIGNATURE\nKeyUsage = CERT_NON_REPUDIATION_KEY_USAGE | CERT_DIGITAL_SIGNATURE_KEY_USAGE",
            "",
            "9c",
        ),
        ("KeySpec = AT_SIGNATURE", '[Extensions]\n2.5.29.37 = "{text}1.3.6.1.5.5.7.3.4"\n', "9c"),
        ("KeyAlgorithm = ECDSA_P384", "", "9a"),  # nothing says otherwise: PIV Authentication
    ],
)
def test_the_slot_comes_from_the_inf(body: str, extra: str, slot: str) -> None:
    chosen, why = choose_slot(policy(body, extra))
    assert chosen.name == slot, why
    planned = piv_plan(body, extra)
    assert planned.piv_slot is not None and planned.piv_slot.name == slot
    assert planned.fixed_id == bytes([chosen.key_id])
    assert planned.public_template["CKA_ID"] == planned.private_template["CKA_ID"] == planned.fixed_id
    assert any(f"PIV slot {slot}" in note for note in planned.notes)


def test_a_container_naming_no_slot_is_refused_at_its_line() -> None:
    with pytest.raises(PolicyError, match=r"piv.inf:3: KeyContainer = PIV 9b: no such PIV slot"):
        piv_plan('KeyContainer = "PIV 9b"')
    assert named_slot("my key") is None  # an ordinary container name is not a slot


@pytest.mark.parametrize("algorithm", ["ECDSA_P256", "ECDSA_P384", "RSA\nKeyLength = 2048"])
def test_templates_hold_only_what_ykcs11_accepts(algorithm: str) -> None:
    planned = piv_plan(f"KeyAlgorithm = {algorithm}", LOGON)
    assert set(planned.public_template) <= YKCS11_PUBLIC
    assert set(planned.private_template) <= YKCS11_PRIVATE
    assert planned.private_template["CKA_SENSITIVE"] is True
    assert "CKA_EXTRACTABLE" not in planned.private_template  # ykcs11 refuses the attribute itself
    assert planned.label == "Private key for PIV Authentication" and not planned.label_generated


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("KeyAlgorithm = RSA\nKeyLength = 3072", "cannot make RSA 3072-bit keys"),
        ("KeyAlgorithm = ECDSA_P521", "cannot make ECDSA 521-bit keys"),
        ("Exportable = TRUE", "smart cards cannot export private keys"),
        ('UseExistingKeySet = TRUE\nKeyContainer = "PIV 9a"', "UseExistingKeySet on a PIV card"),
        ("PivPinPolicy = Never", "PIN policy 'never' cannot be set through ykcs11; slot 9a uses 'once'"),
        ('KeyContainer = "PIV 9a"\nKeyProtection = NCRYPT_UI_FORCE_HIGH_PROTECTION_FLAG', "PIN policy 'always'"),
        ("PivTouchPolicy = Always", "touch policy 'always' cannot be set through ykcs11"),
    ],
)
def test_what_ykcs11_cannot_do_is_refused_before_any_card_is_touched(body: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        piv_plan(body)


def test_the_slots_own_policy_is_accepted() -> None:
    signing = piv_plan(
        'KeyContainer = "PIV 9c"\nPivPinPolicy = Always\nKeyProtection = NCRYPT_UI_FORCE_HIGH_PROTECTION_FLAG'
    )
    assert signing.always_authenticate  # 9c asks the PIN for every signature
    assert not piv_plan('KeyContainer = "PIV 9e"\nPivPinPolicy = never').always_authenticate
    assert piv_plan("PivTouchPolicy = Never").piv_slot is not None


def test_piv_keys_on_a_token_that_is_not_piv_are_refused() -> None:
    with pytest.raises(PolicyError, match=r"piv.inf:3: PivPinPolicy is for PIV cards"):
        plan_key(policy("PivPinPolicy = once"), SOFTWARE)


def piv_facts(*occupied: bytes) -> TokenFacts:
    gen = frozenset({"GENERATE_KEY_PAIR"})
    return TokenFacts(
        label="YubiKey PIV",
        serial="1",
        model="YubiKey",
        initialized=True,
        write_protected=False,
        user_pin_initialized=True,
        user_pin_locked=False,
        mechanisms={
            "CKM_EC_KEY_PAIR_GEN": MechanismRange(256, 384, gen | {"EC_NAMEDCURVE"}),
            "CKM_ECDSA": MechanismRange(256, 384, frozenset({"SIGN"})),
        },
        private_key_labels=tuple("Private key for PIV Authentication" for _ in occupied),
        object_count=3 * len(occupied),
        free_public_memory=None,
        free_private_memory=None,
        slot_ids=frozenset(occupied),
    )


def test_an_occupied_slot_is_refused_unless_the_policy_replaces_it() -> None:
    planned = piv_plan("KeyAlgorithm = ECDSA_P256", LOGON)
    assert check_capacity(planned, piv_facts(b"\x02")).ok  # 9c taken, 9a free
    verdict = check_capacity(planned, piv_facts(b"\x01"))
    assert [c.name for c in verdict.refusals()] == ["slot"]
    with pytest.raises(KeyExistsError, match=r"PIV slot 9a .* already holds a key or certificate.*PivOverwrite"):
        verdict.raise_if_refused("'YubiKey PIV'")
    replacing = piv_plan("KeyAlgorithm = ECDSA_P256\nPivOverwrite = TRUE", LOGON)
    allowed = check_capacity(replacing, piv_facts(b"\x01"))
    assert allowed.ok and "will be replaced" in next(c.detail for c in allowed.checks if c.name == "slot")


def test_a_version_3_store_gains_the_discarded_key_table(tmp_path: Path) -> None:
    """Schema v4 (issue 19): a rolled-back PIV generation records the key it could not delete."""
    from tests.test_store import new_pending
    from tokenagent.store.database import SCHEMA_VERSION
    from tokenagent.store.discarded import DiscardedKeys
    from tokenagent.store.pending import PendingStore

    path = tmp_path / "pending.sqlite3"
    record = PendingStore(path).add(new_pending(1))
    with sqlite3.connect(path) as connection:  # what tokenagent wrote before issue 19
        connection.execute("DROP TABLE piv_discarded_keys")
        connection.execute("PRAGMA user_version = 3")
    assert DiscardedKeys(path).for_token("30000000") == {}  # a version 3 store has none
    DiscardedKeys(path).add("30000000", b"\x01", "ab" * 32)
    DiscardedKeys(path).add("30000000", b"\x01", "cd" * 32)  # the slot's latest discard wins
    DiscardedKeys(path).add("30000001", b"\x02", "ef" * 32)
    assert DiscardedKeys(path).for_token("30000000") == {b"\x01": "cd" * 32}
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert [r.id for r in PendingStore(path).list()] == [record.id]  # nothing else changed


def test_piv_keys_on_a_smart_card_provider_wait_for_the_token() -> None:
    """A smart-card provider may find a PIV card: the Piv keys are judged once the token is known
    (enroll/new.py: for_token refuses them on a card that is not one)."""
    smartcard = REGISTRY.lookup("Microsoft Smart Card Key Storage Provider")
    planned = plan_key(policy("KeyAlgorithm = ECDSA_P256\nPivOverwrite = TRUE"), smartcard)
    assert planned.piv_slot is None and planned.provider.profile.name == "smartcard"
