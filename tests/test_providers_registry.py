"""The provider registry: built-in names, TOML files, their errors, and the capacity check as a
pure function over token facts (the on-token side is in test_new.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenagent.errors import CapacityError, InputError, KeyExistsError
from tokenagent.inf.policy import parse_policy
from tokenagent.providers.capacity import check_capacity
from tokenagent.providers.plan import plan_key
from tokenagent.providers.registry import BUILTIN_PROVIDERS, config_files, load_registry
from tokenagent.token.facts import MechanismRange, TokenFacts

SIGN = frozenset({"SIGN", "VERIFY"})
GEN = frozenset({"GENERATE_KEY_PAIR"})
EC_GEN = frozenset({"GENERATE_KEY_PAIR", "EC_F_P", "EC_NAMEDCURVE"})


def facts(**overrides: object) -> TokenFacts:
    values: dict[str, object] = dict(
        label="t",
        serial="1",
        model="m",
        initialized=True,
        write_protected=False,
        user_pin_initialized=True,
        user_pin_locked=False,
        mechanisms={
            "CKM_RSA_PKCS_KEY_PAIR_GEN": MechanismRange(512, 4096, GEN),
            "CKM_SHA256_RSA_PKCS": MechanismRange(512, 4096, SIGN),
            "CKM_EC_KEY_PAIR_GEN": MechanismRange(256, 384, EC_GEN),
            "CKM_ECDSA": MechanismRange(256, 384, SIGN),
        },
        private_key_labels=(),
        object_count=0,
        free_public_memory=None,
        free_private_memory=None,
    )
    values.update(overrides)
    return TokenFacts(**values)  # type: ignore[arg-type]


def plan(body: str, provider: str = "Microsoft Software Key Storage Provider", registry=None):
    registry = registry or load_registry(env={})
    return plan_key(parse_policy(f"[NewRequest]\nSubject = CN=t\n{body}\n", "t.inf"), registry.lookup(provider))


def test_builtin_names_from_the_issue() -> None:
    names = {entry.name for entry in BUILTIN_PROVIDERS}
    for name in (
        "Microsoft Smart Card Key Storage Provider",
        "Microsoft Base Smart Card Crypto Provider",
        "Microsoft Software Key Storage Provider",
        "Microsoft Enhanced RSA and AES Cryptographic Provider",
        "Microsoft Strong Cryptographic Provider",
        "Microsoft RSA SChannel Cryptographic Provider",
        "Microsoft Platform Crypto Provider",
    ):
        assert name in names


def test_toml_file_adds_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        """
[profiles.luna]
kind = "hsm"
algorithms = { RSA = [2048, 3072], ECDSA = [256] }
exportable = true

[providers."SafeNet Key Storage Provider"]
profile = "luna"
module = "/opt/luna/libCryptoki2_64.so"
token = "user-part"
machine_token = "server-part"

[providers."Microsoft Smart Card Key Storage Provider"]
module = "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"
key_containers = 4
"""
    )
    registry = load_registry([path], env={})
    luna = registry.lookup("safenet key storage provider")
    assert luna.module == "/opt/luna/libCryptoki2_64.so" and luna.source == str(path)
    assert luna.profile.algorithms == {"RSA": (2048, 3072), "ECDSA": (256,)} and luna.profile.exportable
    card = registry.lookup("Microsoft Smart Card Key Storage Provider")
    assert card.profile.kind == "smartcard" and card.profile.key_containers == 4
    assert card.module.endswith("libsofthsm2.so")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not toml [", "not valid TOML"),
        ("[whatever]\nx = 1\n", r"unknown table \[whatever\]"),
        ('[providers."X"]\nmodule = "/a.so"\n', "needs profile"),
        ('[providers."X"]\nprofile = "nope"\n', "unknown profile 'nope'"),
        ('[providers."X"]\nprofile = "hsm"\ncolour = 1\n', "unknown keys colour"),
        ('[profiles.p]\nkind = "toaster"\n', "kind must be one of"),
        ('[profiles.p]\nkind = "hsm"\nalgorithms = { RSA = "big" }\n', "must be a list of sizes"),
        ('[profiles.p]\nkind = "hsm"\nkey_containers = -1\n', "must be a number >= 0"),
        ('[providers."X"]\nprofile = "hsm"\nmodule = 5\n', "module must be a string"),
    ],
)
def test_toml_errors_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        load_registry([path], env={})
    assert str(path) in str(info.value) and "\n" not in info.value.one_line()


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read providers file"):
        load_registry([tmp_path / "nope.toml"], env={})


def test_config_locations(tmp_path: Path) -> None:
    user = tmp_path / "cfg" / "tokenagent" / "providers.toml"
    user.parent.mkdir(parents=True)
    user.write_text("")
    extra = tmp_path / "env.toml"
    files = config_files(
        ["cli.toml"], env={"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "TOKENAGENT_PROVIDERS": str(extra)}
    )
    assert files == [user, extra, Path("cli.toml")]


# -- capacity ---------------------------------------------------------------------------------------


def test_capacity_ok_names_every_check() -> None:
    verdict = check_capacity(plan("KeyLength = 2048"), facts())
    assert verdict.ok
    names = [c.name for c in verdict.checks]
    assert names == ["initialized", "writable", "user PIN", "generation mechanism", "key size", "signature mechanism"]


def test_capacity_key_size_outside_mechanism_range() -> None:
    verdict = check_capacity(plan("KeyLength = 8192"), facts())
    with pytest.raises(CapacityError, match=r"8192-bit keys are outside CKM_RSA_PKCS_KEY_PAIR_GEN's range 512\.\.4096"):
        verdict.raise_if_refused("'t'")


def test_capacity_missing_mechanism_and_flag() -> None:
    no_gen = facts(mechanisms={"CKM_ECDSA": MechanismRange(256, 384, SIGN)})
    with pytest.raises(CapacityError, match="the token has no CKM_EC_KEY_PAIR_GEN"):
        check_capacity(plan("KeyAlgorithm = ECDSA_P256"), no_gen).raise_if_refused("'t'")
    no_flag = facts(mechanisms={"CKM_EC_KEY_PAIR_GEN": MechanismRange(256, 384, frozenset({"SIGN"}))})
    with pytest.raises(CapacityError, match="lacks CKF_GENERATE_KEY_PAIR"):
        check_capacity(plan("KeyAlgorithm = ECDSA_P256"), no_flag).raise_if_refused("'t'")


def test_capacity_curve_outside_range() -> None:
    with pytest.raises(CapacityError, match="521-bit keys are outside"):
        check_capacity(plan("KeyAlgorithm = ECDSA_P521"), facts()).raise_if_refused("'t'")


def test_capacity_no_signature_mechanism() -> None:
    mechanisms = {"CKM_RSA_PKCS_KEY_PAIR_GEN": MechanismRange(512, 4096, GEN)}
    with pytest.raises(CapacityError, match="neither CKM_SHA256_RSA_PKCS or CKM_RSA_PKCS"):
        check_capacity(plan(""), facts(mechanisms=mechanisms)).raise_if_refused("'t'")


def test_capacity_key_containers_and_objects() -> None:
    registry = load_registry(env={})
    registry.merge({"providers": {"PIV": {"profile": "piv", "max_objects": 10}}}, "x.toml")
    piv_plan = plan("KeyAlgorithm = ECDSA_P256", "PIV", registry)
    assert check_capacity(piv_plan, facts(private_key_labels=("a",) * 23)).ok
    with pytest.raises(CapacityError, match="all 24 key containers of profile 'piv\\+PIV' are used"):
        check_capacity(piv_plan, facts(private_key_labels=("a",) * 24)).raise_if_refused("'t'")
    with pytest.raises(CapacityError, match="would hold 11 objects, more than the 10"):
        check_capacity(piv_plan, facts(object_count=9)).raise_if_refused("'t'")
    # RequestType = Cert adds a certificate object
    assert check_capacity(piv_plan, facts(object_count=8)).ok
    assert not check_capacity(piv_plan, facts(object_count=8), extra_objects=1).ok


def test_capacity_free_memory_when_reported() -> None:
    p = plan("KeyLength = 2048")
    assert check_capacity(p, facts(free_public_memory=100_000, free_private_memory=100_000)).ok
    with pytest.raises(CapacityError, match="only 300 bytes of private memory free"):
        check_capacity(p, facts(free_public_memory=100_000, free_private_memory=300)).raise_if_refused("'t'")


def test_capacity_token_state() -> None:
    p = plan("")
    for state, message in (
        ({"write_protected": True}, "write-protected"),
        ({"user_pin_locked": True}, "the user PIN is locked"),
        ({"user_pin_initialized": False}, "the user PIN is not initialized"),
        ({"initialized": False}, "not initialized"),
    ):
        with pytest.raises(CapacityError, match=message):
            check_capacity(p, facts(**state)).raise_if_refused("'t'")


def test_capacity_existing_label() -> None:
    p = plan("KeyContainer = taken")
    with pytest.raises(KeyExistsError, match="a private key labelled 'taken' already exists") as info:
        check_capacity(p, facts(private_key_labels=("taken",))).raise_if_refused("'t'")
    assert info.value.hresult == 0x8009000F
