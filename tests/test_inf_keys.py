"""A table-driven test per [NewRequest] key and value form."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.inf_helpers import inf_error, new_request
from tokenagent.inf.policy import KeyProtection, KeySpec, RequestType

CASES = [
    # (INF line(s), field, expected value)
    ("Exportable = TRUE", "exportable", True),
    ("Exportable = false", "exportable", False),
    ("Exportable = 1", "exportable", True),
    ("Exportable = 0", "exportable", False),
    ("Exportable = yes", "exportable", True),
    ("Exportable = No", "exportable", False),
    ("ExportableEncrypted = true", "exportable_encrypted", True),
    ("HashAlgorithm = Sha256", "hash_algorithm", "sha256"),
    ("HashAlgorithm = sha384", "hash_algorithm", "sha384"),
    ("HashAlgorithm = SHA512", "hash_algorithm", "sha512"),
    ("HashAlgorithm = sha1", "hash_algorithm", "sha1"),
    ("HashAlgorithm = SHA-256", "hash_algorithm", "sha256"),
    ("KeyAlgorithm = RSA", "key_algorithm", "RSA"),
    ("KeyAlgorithm = ECDSA_P256", "key_algorithm", "ECDSA_P256"),
    ("KeyAlgorithm = ecdsa_p384", "key_algorithm", "ECDSA_P384"),
    ("KeyAlgorithm = ECDSA_P521", "key_algorithm", "ECDSA_P521"),
    ("KeyAlgorithm = ECDH_P256", "key_algorithm", "ECDH_P256"),
    ("KeyAlgorithm = ECDH_P384", "key_algorithm", "ECDH_P384"),
    ("KeyAlgorithm = ECDH_P521", "key_algorithm", "ECDH_P521"),
    ("KeyAlgorithm = DSA", "key_algorithm", "DSA"),
    ("KeyAlgorithm = DH", "key_algorithm", "DH"),
    ("KeyAlgorithm = ECDSA\nKeyLength = 384", "key_algorithm", "ECDSA_P384"),
    (
        "KeyContainer = {C347BD28-7F69-4090-AA16-BC58CF4D749C}",
        "key_container",
        "{C347BD28-7F69-4090-AA16-BC58CF4D749C}",
    ),
    ("KeyLength = 3072", "key_length", 3072),
    ("KeyLength = 0x800", "key_length", 2048),
    ("KeySpec = AT_KEYEXCHANGE", "key_spec", KeySpec.AT_KEYEXCHANGE),
    ("KeySpec = AT_SIGNATURE", "key_spec", KeySpec.AT_SIGNATURE),
    ("KeySpec = AT_NONE", "key_spec", KeySpec.AT_NONE),
    ("KeySpec = 1", "key_spec", KeySpec.AT_KEYEXCHANGE),
    ("KeySpec = 2", "key_spec", KeySpec.AT_SIGNATURE),
    ("KeySpec = 0", "key_spec", KeySpec.AT_NONE),
    ("KeyUsage = 0xa0", "key_usage", 0xA0),
    ("KeyUsage = 160", "key_usage", 0xA0),
    ("KeyUsage = a0", "key_usage", 0xA0),
    ('KeyUsage = "CERT_DIGITAL_SIGNATURE_KEY_USAGE | CERT_KEY_ENCIPHERMENT_KEY_USAGE"', "key_usage", 0xA0),
    ("KeyUsage = CERT_KEY_AGREEMENT_KEY_USAGE|CERT_DECIPHER_ONLY_KEY_USAGE", "key_usage", 0x8008),
    ("KeyUsage = CERT_KEY_CERT_SIGN_KEY_USAGE | CERT_CRL_SIGN_KEY_USAGE | 0x80", "key_usage", 0x86),
    ("KeyUsage = CERT_OFFLINE_CRL_SIGN_KEY_USAGE", "key_usage", 0x02),
    ("KeyUsage = CERT_NON_REPUDIATION_KEY_USAGE|CERT_DATA_ENCIPHERMENT_KEY_USAGE", "key_usage", 0x50),
    ("KeyUsageProperty = NCRYPT_ALLOW_DECRYPT_FLAG | NCRYPT_ALLOW_SIGNING_FLAG", "key_usage_property", 3),
    ("KeyUsageProperty = NCRYPT_ALLOW_KEY_AGREEMENT_FLAG", "key_usage_property", 4),
    ("KeyUsageProperty = NCRYPT_ALLOW_ALL_USAGES", "key_usage_property", 0xFFFFFF),
    ("KeyUsageProperty = XCN_NCRYPT_ALLOW_SIGNING_FLAG", "key_usage_property", 2),
    ("KeyUsageProperty = ffffff", "key_usage_property", 0xFFFFFF),
    ("MachineKeySet = TRUE", "machine_key_set", True),
    ("RequestType = Cert\nNotBefore = 7/24/2012 10:31 AM", "not_before", datetime(2012, 7, 24, 10, 31, tzinfo=UTC)),
    ("RequestType = Cert\nNotAfter = 9/23/2014 10:31 PM", "not_after", datetime(2014, 9, 23, 22, 31, tzinfo=UTC)),
    ("RequestType = Cert\nNotBefore = July 24, 2012", "not_before", datetime(2012, 7, 24, tzinfo=UTC)),
    ("RequestType = Cert\nNotBefore = 24 Jul 2012 10:31", "not_before", datetime(2012, 7, 24, 10, 31, tzinfo=UTC)),
    ("RequestType = Cert\nNotBefore = 24-Sept-2012", "not_before", datetime(2012, 9, 24, tzinfo=UTC)),
    (
        "RequestType = Cert\nNotBefore = 2012-07-24T10:31:05Z",
        "not_before",
        datetime(2012, 7, 24, 10, 31, 5, tzinfo=UTC),
    ),
    (
        "RequestType = Cert\nNotBefore = 2012-07-24 12:31 +02:00",
        "not_before",
        datetime(2012, 7, 24, 10, 31, tzinfo=UTC),
    ),
    ("RequestType = Cert\nNotBefore = 12/1/2012 12:00 AM", "not_before", datetime(2012, 12, 1, 0, 0, tzinfo=UTC)),
    ("RequestType = CMC\nPrivateKeyArchive = TRUE", "private_key_archive", True),
    ("EncryptionAlgorithm = 3des", "encryption_algorithm", "3des"),
    ("EncryptionLength = 128", "encryption_length", 128),
    (
        'ProviderName = "Microsoft RSA SChannel Cryptographic Provider"',
        "provider_name",
        "Microsoft RSA SChannel Cryptographic Provider",
    ),
    ("ProviderType = 12", "provider_type", 12),
    ("ProviderType = 0x18", "provider_type", 24),
    (
        "RenewalCert = 4EDF274BD2919C6E9EC6A522F0F3B153E9B1582D",
        "renewal_cert",
        bytes.fromhex("4EDF274BD2919C6E9EC6A522F0F3B153E9B1582D"),
    ),
    (
        'RenewalCert = "4e df 27 4b d2 91 9c 6e 9e c6 a5 22 f0 f3 b1 53 e9 b1 58 2d"',
        "renewal_cert",
        bytes.fromhex("4EDF274BD2919C6E9EC6A522F0F3B153E9B1582D"),
    ),
    ('RequesterName = "Contoso\\BSmith"\nRequestType = CMC', "requester_name", "Contoso\\BSmith"),
    ("RequestType = PKCS10", "request_type", RequestType.PKCS10),
    ("RequestType = PKCS10-", "pkcs10_without_wrapping", True),
    ("RequestType = PKCS#10", "request_type", RequestType.PKCS10),
    ("RequestType = PKCS7", "request_type", RequestType.PKCS7),
    ("RequestType = CMC", "request_type", RequestType.CMC),
    ("RequestType = Cert", "request_type", RequestType.CERT),
    ("RequestType = SCEP", "request_type", RequestType.SCEP),
    ("RequestType = 1", "request_type", RequestType.PKCS10),
    ("RequestType = 2", "request_type", RequestType.PKCS7),
    ("RequestType = 3", "request_type", RequestType.CMC),
    ("RequestType = 4", "request_type", RequestType.CERT),
    ("RequestType = fd00", "request_type", RequestType.SCEP),
    ("RequestType = 64768", "request_type", RequestType.SCEP),
    ("SecurityDescriptor = D:P(A;;GA;;;SY)(A;;GA;;;BA)", "security_descriptor", "D:P(A"),  # ';' starts a comment
    ('SecurityDescriptor = "D:P(A;;GA;;;SY)(A;;GA;;;BA)"', "security_descriptor", "D:P(A;;GA;;;SY)(A;;GA;;;BA)"),
    ("AlternateSignatureAlgorithm = true", "alternate_signature_algorithm", True),
    ("Silent = TRUE", "silent", True),
    ("SMIME = TRUE", "smime", True),
    ("UseExistingKeySet = TRUE\nKeyContainer = k1", "use_existing_key_set", True),
    ("KeyProtection = NCRYPT_UI_FORCE_HIGH_PROTECTION_FLAG", "key_protection", KeyProtection.FORCE_HIGH_PROTECTION),
    ("KeyProtection = XCN_NCRYPT_UI_PROTECT_KEY_FLAG", "key_protection", KeyProtection.PROTECT_KEY),
    ("KeyProtection = XCN_NCRYPT_UI_NO_PROTCTION_FLAG", "key_protection", KeyProtection.NO_PROTECTION),
    ("KeyProtection = 2", "key_protection", KeyProtection.FORCE_HIGH_PROTECTION),
    ("SuppressDefaults = true", "suppress_defaults", True),
    ("FriendlyName = Server1", "friendly_name", "Server1"),
    ("RequestType = Cert\nValidityPeriodUnits = 3\nValidityPeriod = Years", "validity_period", "Years"),
    ("RequestType = Cert\nValidityPeriodUnits = 3\nValidityPeriod = Years", "validity_period_units", 3),
    ("RequestType = Cert\nValidityPeriodUnits = 1\nValidityPeriod = week", "validity_period", "Weeks"),
    ("UserProtected = TRUE", "user_protected", True),
    ("KeySpec = AT_KEYEXCHANGE\nEncipherOnly = TRUE", "encipher_only", True),
    ("X500NameFlags = CERT_NAME_STR_SEMICOLON_FLAG", "x500_name_flags", 0x40000000),
    (
        "X500NameFlags = CERT_NAME_STR_REVERSE_FLAG | CERT_NAME_STR_ENABLE_UTF8_UNICODE_FLAG",
        "x500_name_flags",
        0x02040000,
    ),
    ("X500NameFlags = 0x40000000", "x500_name_flags", 0x40000000),
    ("SubjectNameFlags = template", "subject_name_flags", None),
    (
        "SubjectNameFlags = CT_FLAG_SUBJECT_ALT_REQUIRE_UPN | CT_FLAG_SUBJECT_REQUIRE_EMAIL",
        "subject_name_flags",
        0x22000000,
    ),
]


@pytest.mark.parametrize(("lines", "field", "expected"), CASES, ids=[c[0].replace("\n", " / ") for c in CASES])
def test_key_and_value_form(lines: str, field: str, expected: object) -> None:
    policy = new_request("Subject = CN=t\n" + lines)
    assert getattr(policy, field) == expected
    assert policy.origins[field].source == "file"


DEFAULTS = [
    # (lines, field, expected default) -- see docs/inf.md for why
    ("", "hash_algorithm", "sha256"),
    ("", "key_algorithm", "RSA"),
    ("", "key_length", 2048),
    ("KeyAlgorithm = ECDSA_P384", "key_length", 384),
    ("", "key_spec", KeySpec.AT_SIGNATURE),
    ("", "key_usage", 0xC0),
    ("KeySpec = 1", "key_usage", 0xF0),
    ("KeySpec = 1\nEncipherOnly = TRUE", "key_usage", 0x30),
    ("KeySpec = 0", "key_usage", 0xA0),
    ("KeyAlgorithm = ECDSA_P256", "key_usage", 0xC0),
    ("KeyAlgorithm = ECDH_P384", "key_usage", 0x08),
    ("KeyAlgorithm = ECDH_P384", "key_spec", KeySpec.AT_KEYEXCHANGE),
    ("", "key_usage_property", 0x2),
    ("KeySpec = 1", "key_usage_property", 0x3),
    ("KeySpec = 0", "key_usage_property", 0xFFFFFF),
    ("KeyAlgorithm = ECDH_P256", "key_usage_property", 0x4),
    ("", "key_usage_critical", True),
    ("", "request_type", RequestType.PKCS10),
    ("", "exportable", False),
    ("", "smime", False),
    ("", "provider_name", "Microsoft Software Key Storage Provider"),
    ("", "provider_type", None),
    ("", "key_protection", KeyProtection.NO_PROTECTION),
    ("", "machine_key_set", False),
]


@pytest.mark.parametrize(("lines", "field", "expected"), DEFAULTS, ids=[f"{d[1]}:{d[0]}" for d in DEFAULTS])
def test_defaults(lines: str, field: str, expected: object) -> None:
    policy = new_request("Subject = CN=t\n" + lines)
    assert getattr(policy, field) == expected
    assert policy.origins[field].source == "default"


BAD_VALUES = [
    ("Exportable = maybe", "not a boolean"),
    ("KeyLength = big", "not a number"),
    ("KeyLength = 0", "not a positive number"),
    ("KeySpec = AT_EVERYTHING", "unknown KeySpec"),
    ("KeyUsage = CERT_MAGIC_KEY_USAGE", "unknown KeyUsage"),
    ("KeyUsage = |", "empty KeyUsage"),
    ("HashAlgorithm = whirlpool", "unknown hash"),
    ("KeyAlgorithm = ED25519", "unknown key algorithm"),
    ("KeyAlgorithm = ECDSA", "needs KeyLength 256, 384 or 521"),
    ("RequestType = PKCS12", "unknown RequestType"),
    ("RequestType = Cert\nNotBefore = next tuesday", "not a date"),
    ("RequestType = Cert\nNotBefore = 2/30/2012", "not a valid date"),
    ("RequestType = Cert\nNotBefore = Smarch 3, 2012", "unknown month"),
    ("RequestType = Cert\nNotBefore = 7/24/2012 13:00 PM", "hour 13"),
    ("RenewalCert = 4EDF27", "20 bytes"),
    ("RenewalCert = not-hex", "hexadecimal"),
    ("KeyProtection = NCRYPT_UI_PARANOID", "unknown KeyProtection"),
    ("RequestType = Cert\nValidityPeriodUnits = 2\nValidityPeriod = Fortnights", "unknown ValidityPeriod"),
    ("X500NameFlags = CERT_NAME_STR_WHATEVER", "unknown X500NameFlags"),
    ("FriendlyName = ", "empty value"),
]


@pytest.mark.parametrize(("lines", "message"), BAD_VALUES, ids=[b[0].replace("\n", " / ") for b in BAD_VALUES])
def test_bad_values_name_key_and_line(lines: str, message: str) -> None:
    error = inf_error("[NewRequest]\nSubject = CN=t\n" + lines + "\n")
    line = 3 + lines.count("\n")
    assert str(error).startswith(f"t.inf:{line}: ") and message in str(error), str(error)
