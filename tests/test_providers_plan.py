"""One test per row of the mapping table in docs/providers.md (rows M01..M32; rows checked on a
real token live in test_new.py). `test_every_row_has_a_test` keeps the table and tests in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tokenagent.errors import PinError, PolicyError
from tokenagent.inf.policy import parse_policy
from tokenagent.providers.capacity import check_capacity
from tokenagent.providers.plan import KeyPlan, plan_key
from tokenagent.providers.registry import load_registry
from tokenagent.token.facts import MechanismRange, TokenFacts

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = load_registry(env={})
SOFTWARE = REGISTRY.lookup("Microsoft Software Key Storage Provider")
SMARTCARD = REGISTRY.lookup("Microsoft Smart Card Key Storage Provider")


def plan(body: str, provider=None) -> KeyPlan:
    policy = parse_policy(f'[NewRequest]\nSubject = "CN=test"\n{body}\n', "t.inf")
    entry = provider or REGISTRY.lookup(policy.provider_name)
    return plan_key(policy, entry)


def usages(template: dict) -> set[str]:
    names = ("CKA_SIGN", "CKA_VERIFY", "CKA_DECRYPT", "CKA_ENCRYPT", "CKA_WRAP", "CKA_UNWRAP", "CKA_DERIVE")
    return {name for name in names if template.get(name)}


def facts(**mechanisms: MechanismRange) -> TokenFacts:
    return TokenFacts(
        label="t",
        serial="1",
        model="m",
        initialized=True,
        write_protected=False,
        user_pin_initialized=True,
        user_pin_locked=False,
        mechanisms={f"CKM_{k}": v for k, v in mechanisms.items()},
        private_key_labels=(),
        object_count=0,
        free_public_memory=None,
        free_private_memory=None,
    )


SIGN = frozenset({"SIGN", "VERIFY"})
GEN = frozenset({"GENERATE_KEY_PAIR"})


def test_every_row_has_a_test() -> None:
    table = (ROOT / "docs" / "providers.md").read_text()
    rows = set(re.findall(r"^\| (M\d\d) \|", table, flags=re.M))
    assert len(rows) >= 30
    sources = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    tested = {m.upper() for m in re.findall(r"def test_(m\d\d)_", sources)}
    assert rows - tested == set(), f"rows without a test: {sorted(rows - tested)}"
    assert tested - rows == set(), f"tests for rows not in docs/providers.md: {sorted(tested - rows)}"


def test_m01_rsa_key_length() -> None:
    p = plan("KeyLength = 3072")
    assert (p.generation_mechanism, p.key_type, p.bits) == ("CKM_RSA_PKCS_KEY_PAIR_GEN", "CKK_RSA", 3072)
    assert p.public_template["CKA_MODULUS_BITS"] == 3072
    assert p.public_template["CKA_PUBLIC_EXPONENT"] == b"\x01\x00\x01"


@pytest.mark.parametrize(
    ("algorithm", "oid_der", "bits"),
    [
        ("ECDSA_P256", "06082a8648ce3d030107", 256),
        ("ECDSA_P384", "06052b81040022", 384),
        ("ECDSA_P521", "06052b81040023", 521),
    ],
)
def test_m02_ecdsa_named_curves(algorithm: str, oid_der: str, bits: int) -> None:
    from asn1crypto.keys import NamedCurve

    p = plan(f"KeyAlgorithm = {algorithm}")
    assert p.generation_mechanism == "CKM_EC_KEY_PAIR_GEN" and p.key_type == "CKK_EC" and p.bits == bits
    assert p.public_template["CKA_EC_PARAMS"].hex() == oid_der
    # decoded independently: the DER is the namedCurve OID of the curve
    curve = NamedCurve.load(p.public_template["CKA_EC_PARAMS"]).native
    assert curve == {256: "secp256r1", 384: "secp384r1", 521: "secp521r1"}[bits]
    assert usages(p.private_template) == {"CKA_SIGN"} and usages(p.public_template) == {"CKA_VERIFY"}


def test_m03_ecdh_derive_and_sign_for_proof_of_possession() -> None:
    p = plan("KeyAlgorithm = ECDH_P384")
    assert p.curve == "P-384"
    assert usages(p.private_template) == {"CKA_DERIVE", "CKA_SIGN"}
    assert any("proof of possession" in note for note in p.notes)


@pytest.mark.parametrize("algorithm", ["DSA", "DH"])
def test_m04_dsa_and_dh_refused(algorithm: str) -> None:
    with pytest.raises(PolicyError, match=r"t\.inf:\d+: KeyAlgorithm = .* is not supported"):
        plan(f"KeyAlgorithm = {algorithm}")


def test_m05_at_signature() -> None:
    p = plan("KeySpec = AT_SIGNATURE")
    assert usages(p.private_template) == {"CKA_SIGN"}
    assert usages(p.public_template) == {"CKA_VERIFY"}
    policy = parse_policy("[NewRequest]\nKeySpec = AT_SIGNATURE\n", "t.inf")
    assert policy.key_usage == 0xC0


def test_m06_at_keyexchange_rsa() -> None:
    p = plan("KeySpec = AT_KEYEXCHANGE")
    assert usages(p.private_template) == {"CKA_SIGN", "CKA_DECRYPT", "CKA_UNWRAP"}
    assert usages(p.public_template) == {"CKA_VERIFY", "CKA_ENCRYPT", "CKA_WRAP"}
    assert parse_policy("[NewRequest]\nKeySpec = AT_KEYEXCHANGE\n", "t.inf").key_usage == 0xF0
    encipher = parse_policy("[NewRequest]\nKeySpec = AT_KEYEXCHANGE\nEncipherOnly = TRUE\n", "t.inf")
    assert encipher.key_usage == 0x30


def test_m07_at_none_allows_all() -> None:
    p = plan("KeySpec = AT_NONE")
    assert usages(p.private_template) == {"CKA_SIGN", "CKA_DECRYPT", "CKA_UNWRAP"}
    ec = plan("KeySpec = AT_NONE\nKeyAlgorithm = ECDSA_P256")
    assert usages(ec.private_template) == {"CKA_SIGN"}  # AT_NONE's default for ECDSA is signing


def test_m08_decrypt_only_rsa_still_signs_its_request() -> None:
    p = plan("KeyUsageProperty = NCRYPT_ALLOW_DECRYPT_FLAG")
    assert usages(p.private_template) == {"CKA_DECRYPT", "CKA_UNWRAP", "CKA_SIGN"}
    assert any("proof of possession" in note for note in p.notes)


def test_m09_signing_only() -> None:
    p = plan("KeySpec = AT_KEYEXCHANGE\nKeyUsageProperty = NCRYPT_ALLOW_SIGNING_FLAG")
    assert usages(p.private_template) == {"CKA_SIGN"}
    assert usages(p.public_template) == {"CKA_VERIFY"}


def test_m10_key_agreement() -> None:
    ec = plan("KeyAlgorithm = ECDSA_P256\nKeyUsageProperty = NCRYPT_ALLOW_KEY_AGREEMENT_FLAG")
    assert "CKA_DERIVE" in usages(ec.private_template)
    rsa = plan("KeyUsageProperty = NCRYPT_ALLOW_KEY_AGREEMENT_FLAG")
    assert "CKA_DERIVE" not in usages(rsa.private_template)
    assert any("does not apply to RSA" in note for note in rsa.notes)


def test_m11_all_usages() -> None:
    rsa = plan("KeyUsageProperty = NCRYPT_ALLOW_ALL_USAGES")
    assert usages(rsa.private_template) == {"CKA_SIGN", "CKA_DECRYPT", "CKA_UNWRAP"}
    ec = plan("KeyAlgorithm = ECDH_P256\nKeyUsageProperty = NCRYPT_ALLOW_ALL_USAGES")
    assert usages(ec.private_template) == {"CKA_SIGN", "CKA_DERIVE"}


def test_m12_default_key_is_sensitive_private_token_not_extractable() -> None:
    p = plan("")
    t = p.private_template
    assert (t["CKA_TOKEN"], t["CKA_PRIVATE"], t["CKA_SENSITIVE"], t["CKA_EXTRACTABLE"]) == (True, True, True, False)
    assert p.public_template["CKA_TOKEN"] is True and p.public_template["CKA_PRIVATE"] is False


def test_m13_exportable_on_software_profile() -> None:
    p = plan("Exportable = TRUE")
    assert p.private_template["CKA_EXTRACTABLE"] is True
    assert p.private_template["CKA_SENSITIVE"] is True  # export only wrapped


def test_m14_exportable_on_smart_card_refused() -> None:
    with pytest.raises(PolicyError, match=r"t\.inf:\d+: Exportable = TRUE: smart cards cannot export private keys"):
        plan('ProviderName = "Microsoft Smart Card Key Storage Provider"\nExportable = TRUE')


def test_m15_exportable_on_hsm_only_if_profile_allows() -> None:
    registry = load_registry(env={})
    registry.merge({"providers": {"Luna KSP": {"profile": "hsm", "module": "/x.so"}}}, "a.toml")
    with pytest.raises(PolicyError, match="profile 'hsm' does not allow exportable keys"):
        plan("Exportable = TRUE", registry.lookup("Luna KSP"))
    registry.merge({"providers": {"Luna KSP": {"profile": "hsm", "exportable": True}}}, "b.toml")
    assert plan("Exportable = TRUE", registry.lookup("Luna KSP")).private_template["CKA_EXTRACTABLE"] is True


def test_m16_exportable_encrypted_is_exportable() -> None:
    assert plan("ExportableEncrypted = TRUE").private_template["CKA_EXTRACTABLE"] is True
    with pytest.raises(PolicyError, match="smart cards cannot export"):
        plan("ExportableEncrypted = TRUE", SMARTCARD)


def test_m17_no_protection() -> None:
    p = plan("KeyProtection = NCRYPT_UI_NO_PROTECTION_FLAG")
    assert "CKA_ALWAYS_AUTHENTICATE" not in p.private_template and not p.always_authenticate


@pytest.mark.parametrize("line", ["KeyProtection = NCRYPT_UI_PROTECT_KEY_FLAG", "UserProtected = TRUE"])
def test_m18_protect_key_and_user_protected(line: str) -> None:
    p = plan(line)
    assert "CKA_ALWAYS_AUTHENTICATE" not in p.private_template
    assert p.private_template["CKA_PRIVATE"] is True
    assert any("PROTECT_KEY" in note for note in p.notes)


def test_m19_force_high_protection_always_authenticate() -> None:
    p = plan("KeyProtection = NCRYPT_UI_FORCE_HIGH_PROTECTION_FLAG")
    assert p.private_template["CKA_ALWAYS_AUTHENTICATE"] is True and p.always_authenticate


def test_m20_silent_forbids_prompt() -> None:
    from tokenagent.enroll.new import _check_silent
    from tokenagent.token.pins import parse_pin_source

    policy = parse_policy("[NewRequest]\nSubject = CN=x\nSilent = TRUE\n", "s.inf")
    assert plan_key(policy, SOFTWARE).silent
    with pytest.raises(PinError, match=r"s\.inf:3: Silent = TRUE forbids prompting"):
        _check_silent(policy, None)
    with pytest.raises(PinError, match="Silent = TRUE"):
        _check_silent(policy, parse_pin_source("prompt"))
    _check_silent(policy, parse_pin_source("env:SOME_PIN"))  # a non-interactive source is fine


@pytest.mark.parametrize("hash_name", ["sha256", "sha384", "sha512"])
def test_m21_rsa_pkcs1_mechanisms(hash_name: str) -> None:
    p = plan(f"HashAlgorithm = {hash_name}")
    first, second = p.sign_candidates
    assert (first.mechanism, first.input) == (f"CKM_{hash_name.upper()}_RSA_PKCS", "data")
    assert (second.mechanism, second.input) == ("CKM_RSA_PKCS", "digest_info")
    only_raw = facts(RSA_PKCS=MechanismRange(512, 4096, SIGN), RSA_PKCS_KEY_PAIR_GEN=MechanismRange(512, 4096, GEN))
    assert check_capacity(p, only_raw).sign_mechanism == second


def test_m22_pss_with_matching_parameters() -> None:
    p = plan("AlternateSignatureAlgorithm = TRUE\nHashAlgorithm = sha384")
    assert p.padding == "pss"
    combined, raw = p.sign_candidates
    assert combined.mechanism == "CKM_SHA384_RSA_PKCS_PSS"
    assert combined.pss == raw.pss == ("CKM_SHA384", "CKG_MGF1_SHA384", 48)
    assert raw.mechanism == "CKM_RSA_PKCS_PSS" and raw.input == "digest"


def test_m23_ecdsa_hashes_on_the_host_and_falls_back_to_the_combined_mechanism() -> None:
    p = plan("KeyAlgorithm = ECDSA_P384\nHashAlgorithm = sha384")
    softhsm_26 = facts(ECDSA=MechanismRange(112, 521, SIGN), EC_KEY_PAIR_GEN=MechanismRange(112, 521, GEN))
    chosen = check_capacity(p, softhsm_26).sign_mechanism
    assert chosen is not None and (chosen.mechanism, chosen.input, chosen.ecdsa) == ("CKM_ECDSA", "digest", True)
    both = facts(
        ECDSA=MechanismRange(112, 521, SIGN),
        ECDSA_SHA384=MechanismRange(112, 521, SIGN),
        EC_KEY_PAIR_GEN=MechanismRange(112, 521, GEN),
    )
    # the token signs a hash either way: the host's hash is preferred (fewer bytes to a card, issue 15)
    assert check_capacity(p, both).sign_mechanism.mechanism == "CKM_ECDSA"
    only_combined = facts(ECDSA_SHA384=MechanismRange(112, 521, SIGN), EC_KEY_PAIR_GEN=MechanismRange(112, 521, GEN))
    chosen = check_capacity(p, only_combined).sign_mechanism
    assert chosen is not None and (chosen.mechanism, chosen.input) == ("CKM_ECDSA_SHA384", "data")


def test_m24_weak_hashes() -> None:
    for weak in ("md5", "md4", "md2"):
        with pytest.raises(PolicyError, match="is broken"):
            plan(f"HashAlgorithm = {weak}")
    policy = parse_policy("[NewRequest]\nHashAlgorithm = sha1\n", "t.inf")
    assert any("sha1 is deprecated" in w.message for w in policy.warnings)
    assert plan_key(policy, SOFTWARE).sign_candidates[0].mechanism == "CKM_SHA1_RSA_PKCS"


def test_m25_key_container_is_the_label() -> None:
    p = plan("KeyContainer = my-container")
    assert p.public_template["CKA_LABEL"] == p.private_template["CKA_LABEL"] == "my-container"
    assert not p.label_generated
    q = plan("")
    assert q.label_generated and re.fullmatch(r"tokenagent-[0-9a-f-]{36}", q.label)


def test_m29_provider_name_lookup() -> None:
    assert SMARTCARD.module == "opensc-pkcs11" and SMARTCARD.profile.kind == "smartcard"
    tpm = REGISTRY.lookup("microsoft platform crypto provider")  # certreq compares names case-insensitively
    assert tpm.profile.kind == "tpm"
    with pytest.raises(PolicyError, match="unknown ProviderName 'Acme KSP'"):
        plan('ProviderName = "Acme KSP"')


def test_m30_provider_type_and_csp_families() -> None:
    with pytest.raises(PolicyError, match=r"ProviderType = 12 \(PROV_RSA_SCHANNEL\) makes RSA keys, not ECDSA"):
        plan("ProviderType = 12\nKeyAlgorithm = ECDSA_P256")
    with pytest.raises(PolicyError, match="is a CryptoAPI CSP that makes RSA keys only"):
        plan('ProviderName = "Microsoft Enhanced RSA and AES Cryptographic Provider"\nKeyAlgorithm = ECDSA_P256')
    assert plan("ProviderType = 24").family == "RSA"
    with pytest.raises(PolicyError, match="unknown ProviderType 99"):
        plan("ProviderType = 99")


def test_m31_machine_context() -> None:
    registry = load_registry(env={})
    registry.merge({"providers": {"HSM": {"profile": "hsm", "token": "user-part", "machine_token": "srv"}}}, "x")
    entry = registry.lookup("HSM")
    assert plan("MachineKeySet = TRUE", entry).machine is True
    assert entry.token_for(True) == "srv" and entry.token_for(False) == "user-part"
    policy = parse_policy("[NewRequest]\nMachineKeySet = FALSE\n", "t.inf")
    assert plan_key(policy, entry, machine=True).machine is True  # --machine wins over the INF


def test_m32_key_size_outside_profile_refused() -> None:
    with pytest.raises(PolicyError, match=r"profile 'smartcard' .* cannot make RSA 8192-bit keys"):
        plan("KeyLength = 8192", SMARTCARD)
    with pytest.raises(PolicyError, match="cannot make ECDSA 521-bit keys"):
        plan("KeyAlgorithm = ECDSA_P521", SMARTCARD)
