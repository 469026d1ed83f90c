"""INF text -> `RequestPolicy`: every certreq [NewRequest] key with certreq's meaning.

Defaults follow certreq's documentation except where certreq's default is insecure (SHA-1,
1024-bit RSA): those differences are listed in docs/inf.md and marked ``tokenagent default`` in
`Origin.note`. Every field records whether it came from the file (with its line) or a default.

`NEWREQUEST_TABLE` says what each [NewRequest] key does (field, parser, default and why);
`CROSS_KEY_CHECKS` holds the rules between keys, one named function each.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenagent.display import escape, has_hidden
from tokenagent.inf.diagnostics import Diagnostic, Diagnostics
from tokenagent.inf.extensions import (
    OID_EXTENDED_KEY_USAGE,
    ExtensionSpec,
    GeneralNameSpec,
    parse_eku_text,
    parse_extension,
    parse_san_text,
)
from tokenagent.inf.lexer import Entry, InfFile, tokenize
from tokenagent.inf.names import DistinguishedName, check_oid, parse_name
from tokenagent.inf.values import ValueProblem, parse_bool, parse_choice, parse_date, parse_flags, parse_int
from tokenagent.inputs import read_input

# -- symbolic values ------------------------------------------------------------------------------


class RequestType(enum.Enum):
    PKCS10 = 1
    PKCS7 = 2
    CMC = 3
    CERT = 4
    SCEP = 0xFD00


class KeySpec(enum.IntEnum):
    AT_NONE = 0
    AT_KEYEXCHANGE = 1
    AT_SIGNATURE = 2


class KeyProtection(enum.IntEnum):
    NO_PROTECTION = 0
    PROTECT_KEY = 1
    FORCE_HIGH_PROTECTION = 2


REQUEST_TYPES: dict[str, RequestType] = {
    "PKCS10": RequestType.PKCS10,
    "PKCS#10": RequestType.PKCS10,
    "PKCS10-": RequestType.PKCS10,
    "PKCS7": RequestType.PKCS7,
    "PKCS#7": RequestType.PKCS7,
    "CMC": RequestType.CMC,
    "CERT": RequestType.CERT,
    "SCEP": RequestType.SCEP,
}
KEY_SPECS: dict[str, KeySpec] = {spec.name: spec for spec in KeySpec}
#: PivPinPolicy / PivTouchPolicy values (ykman's names)
PIV_PIN_POLICIES: dict[str, str] = {name.upper(): name for name in ("default", "never", "once", "always")}
PIV_TOUCH_POLICIES: dict[str, str] = {name.upper(): name for name in ("default", "never", "always", "cached")}
KEY_PROTECTIONS: dict[str, KeyProtection] = {
    "NCRYPT_UI_NO_PROTECTION_FLAG": KeyProtection.NO_PROTECTION,
    "NCRYPT_UI_NO_PROTCTION_FLAG": KeyProtection.NO_PROTECTION,  # the certreq reference's spelling
    "NCRYPT_UI_PROTECT_KEY_FLAG": KeyProtection.PROTECT_KEY,
    "NCRYPT_UI_FORCE_HIGH_PROTECTION_FLAG": KeyProtection.FORCE_HIGH_PROTECTION,
}
#: wincrypt.h key usage bits: the low byte is RFC 5280 bits 0..7, 0x8000 is decipherOnly (bit 8)
KEY_USAGE_BITS: dict[str, int] = {
    "CERT_DIGITAL_SIGNATURE_KEY_USAGE": 0x80,
    "CERT_NON_REPUDIATION_KEY_USAGE": 0x40,
    "CERT_KEY_ENCIPHERMENT_KEY_USAGE": 0x20,
    "CERT_DATA_ENCIPHERMENT_KEY_USAGE": 0x10,
    "CERT_KEY_AGREEMENT_KEY_USAGE": 0x08,
    "CERT_KEY_CERT_SIGN_KEY_USAGE": 0x04,
    "CERT_OFFLINE_CRL_SIGN_KEY_USAGE": 0x02,
    "CERT_CRL_SIGN_KEY_USAGE": 0x02,
    "CERT_ENCIPHER_ONLY_KEY_USAGE": 0x01,
    "CERT_DECIPHER_ONLY_KEY_USAGE": 0x8000,
}
KEY_USAGE_NAMES = (  # RFC 5280 names, in bit order, with their wincrypt bit
    ("digital_signature", 0x80),
    ("non_repudiation", 0x40),
    ("key_encipherment", 0x20),
    ("data_encipherment", 0x10),
    ("key_agreement", 0x08),
    ("key_cert_sign", 0x04),
    ("crl_sign", 0x02),
    ("encipher_only", 0x01),
    ("decipher_only", 0x8000),
)
KEY_USAGE_PROPERTY_BITS: dict[str, int] = {
    "NCRYPT_ALLOW_DECRYPT_FLAG": 0x1,
    "NCRYPT_ALLOW_SIGNING_FLAG": 0x2,
    "NCRYPT_ALLOW_KEY_AGREEMENT_FLAG": 0x4,
    "NCRYPT_ALLOW_ALL_USAGES": 0xFFFFFF,
}
X500_NAME_FLAGS: dict[str, int] = {
    "CERT_NAME_STR_NONE": 0,
    "CERT_OID_NAME_STR": 2,
    "CERT_X500_NAME_STR": 3,
    "CERT_NAME_STR_SEMICOLON_FLAG": 0x40000000,
    "CERT_NAME_STR_NO_PLUS_FLAG": 0x20000000,
    "CERT_NAME_STR_NO_QUOTING_FLAG": 0x10000000,
    "CERT_NAME_STR_CRLF_FLAG": 0x08000000,
    "CERT_NAME_STR_COMMA_FLAG": 0x04000000,
    "CERT_NAME_STR_REVERSE_FLAG": 0x02000000,
    "CERT_NAME_STR_FORWARD_FLAG": 0x01000000,
    "CERT_NAME_STR_DISABLE_IE4_UTF8_FLAG": 0x10000,
    "CERT_NAME_STR_ENABLE_T61_UNICODE_FLAG": 0x20000,
    "CERT_NAME_STR_ENABLE_UTF8_UNICODE_FLAG": 0x40000,
    "CERT_NAME_STR_FORCE_UTF8_DIR_STR_FLAG": 0x80000,
    "CERT_NAME_STR_DISABLE_UTF8_DIR_STR_FLAG": 0x100000,
    "CERT_NAME_STR_ENABLE_PUNYCODE_FLAG": 0x200000,
}
SUBJECT_NAME_FLAGS: dict[str, int] = {
    "CT_FLAG_SUBJECT_REQUIRE_COMMON_NAME": 0x40000000,
    "CT_FLAG_SUBJECT_REQUIRE_DIRECTORY_PATH": 0x80000000,
    "CT_FLAG_SUBJECT_REQUIRE_DNS_AS_CN": 0x10000000,
    "CT_FLAG_SUBJECT_REQUIRE_EMAIL": 0x20000000,
    "CT_FLAG_OLD_CERT_SUPPLIES_SUBJECT_AND_ALT_NAME": 0x8,
    "CT_FLAG_SUBJECT_ALT_REQUIRE_DIRECTORY_GUID": 0x1000000,
    "CT_FLAG_SUBJECT_ALT_REQUIRE_DNS": 0x8000000,
    "CT_FLAG_SUBJECT_ALT_REQUIRE_DOMAIN_DNS": 0x400000,
    "CT_FLAG_SUBJECT_ALT_REQUIRE_EMAIL": 0x4000000,
    "CT_FLAG_SUBJECT_ALT_REQUIRE_SPN": 0x800000,
    "CT_FLAG_SUBJECT_ALT_REQUIRE_UPN": 0x2000000,
}
HASH_ALGORITHMS = ("sha256", "sha384", "sha512", "sha1", "md5", "md4", "md2")
WEAK_HASHES = ("md5", "md4", "md2")
#: KeyAlgorithm -> (family, curve or None, the curve's size)
KEY_ALGORITHMS: dict[str, tuple[str, str | None, int | None]] = {
    "RSA": ("RSA", None, None),
    "DSA": ("DSA", None, None),
    "DH": ("DH", None, None),
    "ECDSA_P256": ("ECDSA", "P-256", 256),
    "ECDSA_P384": ("ECDSA", "P-384", 384),
    "ECDSA_P521": ("ECDSA", "P-521", 521),
    "ECDH_P256": ("ECDH", "P-256", 256),
    "ECDH_P384": ("ECDH", "P-384", 384),
    "ECDH_P521": ("ECDH", "P-521", 521),
}
_CURVE_BY_SIZE = {256: "P256", 384: "P384", 521: "P521"}
VALIDITY_UNITS = ("Years", "Months", "Weeks", "Days", "Hours", "Minutes", "Seconds")

DEFAULT_PROVIDER = "Microsoft Software Key Storage Provider"
SECTION_NAMES = (
    "version",
    "strings",
    "newrequest",
    "extensions",
    "enhancedkeyusageextension",
    "requestattributes",
)


def key_usage_names(bits: int) -> list[str]:
    return [name for name, bit in KEY_USAGE_NAMES if bits & bit]


# -- the policy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    source: str  # "file" | "default"
    line: int | None = None
    note: str | None = None  # for defaults: why this value

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "line": self.line, "note": self.note}


@dataclass(frozen=True)
class RequestPolicy:
    """Everything an INF asks for, resolved and typed. Field names follow the INF keys."""

    filename: str
    subject: DistinguishedName | None
    exportable: bool
    exportable_encrypted: bool
    hash_algorithm: str
    key_algorithm: str  # RSA | DSA | DH | ECDSA_P256 | ... | ECDH_P521
    key_container: str | None
    key_length: int
    key_spec: KeySpec
    key_usage: int  # wincrypt bits; see key_usage_names()
    key_usage_critical: bool
    key_usage_property: int
    machine_key_set: bool
    not_before: datetime | None
    not_after: datetime | None
    private_key_archive: bool
    encryption_algorithm: str
    encryption_length: int
    provider_name: str
    provider_type: int | None
    renewal_cert: bytes | None  # SHA-1 thumbprint
    requester_name: str | None
    request_type: RequestType
    pkcs10_without_wrapping: bool  # RequestType = PKCS10-
    security_descriptor: str | None
    alternate_signature_algorithm: bool
    silent: bool
    smime: bool
    use_existing_key_set: bool
    key_protection: KeyProtection
    suppress_defaults: bool
    friendly_name: str | None
    validity_period: str | None
    validity_period_units: int | None
    user_protected: bool
    encipher_only: bool
    x500_name_flags: int
    subject_name_flags: int | None
    extensions: tuple[ExtensionSpec, ...]
    certificate_template: str | None
    request_attributes: tuple[tuple[str, str], ...]  # [RequestAttributes] name-value pairs, in order
    san_attribute: tuple[GeneralNameSpec, ...] | None  # [RequestAttributes] SAN = "..."
    # tokenagent's own keys for PIV cards (docs/piv.md): the slot's PIN and touch policy, and
    # whether a key already in the slot may be replaced
    piv_pin_policy: str
    piv_touch_policy: str
    piv_overwrite: bool
    origins: dict[str, Origin] = field(default_factory=dict)
    warnings: tuple[Diagnostic, ...] = ()

    @property
    def key_family(self) -> str:
        return KEY_ALGORITHMS[self.key_algorithm][0]

    @property
    def curve(self) -> str | None:
        return KEY_ALGORITHMS[self.key_algorithm][1]

    def where(self, field_name: str) -> str:
        """``file:line`` of the key a field came from (just the file for defaults), for error messages."""
        origin = self.origins.get(field_name)
        return f"{self.filename}:{origin.line}" if origin is not None and origin.line else self.filename

    def extension(self, oid: str) -> ExtensionSpec | None:
        return next((e for e in self.extensions if e.oid == oid), None)

    def to_json(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for item in fields(self):
            if item.name in ("origins", "warnings", "filename"):
                continue
            entry = {"value": _json_value(getattr(self, item.name))}
            origin = self.origins.get(item.name)
            if origin is not None:
                entry.update(origin.to_json())
            values[item.name] = entry
        values["key_usage"]["names"] = key_usage_names(self.key_usage)
        return {
            "format_version": 1,
            "file": self.filename,
            "policy": values,
            "warnings": [w.to_json() for w in self.warnings],
        }


def _json_value(value: Any) -> Any:
    if isinstance(value, DistinguishedName):
        return {"text": str(value), "rdns": value.to_json()}
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, ExtensionSpec):
        return value.to_json()
    if isinstance(value, GeneralNameSpec):
        return value.describe()
    return value


# -- resolution -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DependsOnOtherKeys:
    """A default computed from other keys once every key is read (KeyLength needs the curve,
    KeyUsage the key spec, ...); `compute` returns the value and its note."""

    compute: Callable[[dict[str, Any]], tuple[Any, str]]


@dataclass(frozen=True)
class _Key:
    """One row of the [NewRequest] table: the policy field a key fills and how."""

    field: str
    key: str | None  # the INF key as certreq spells it; None: no INF key sets it, always the default
    parse: Callable[..., Any] | None  # the value text (and the `reads` fields' values) -> the field's value
    default: Any = None
    note: str | None = None  # why the default is what it is
    reads: tuple[str, ...] = ()  # fields read earlier that the parser also takes

    @property
    def name(self) -> str:
        """The key as the lexer gives it (INF keys are case-insensitive)."""
        return self.key.lower() if self.key else ""


def _nonempty(value: str) -> str:
    if not value.strip():
        raise ValueProblem("empty value")
    return value.strip()


def _lower_nonempty(value: str) -> str:
    return _nonempty(value).lower()


def _requester_name(value: str) -> str:
    """DOMAIN\\user, without characters that would show a different name from the one signed."""
    value = _nonempty(value)
    if has_hidden(value):
        raise ValueProblem(f"'{escape(value)}' holds control or invisible characters")
    return value


def _thumbprint(value: str) -> bytes:
    compact = "".join(value.split()).replace(":", "")
    try:
        raw = bytes.fromhex(compact)
    except ValueError:
        raise ValueProblem(f"'{value}' is not a hexadecimal certificate hash") from None
    if len(raw) != 20:
        raise ValueProblem(f"a certificate hash (SHA-1 thumbprint) has 20 bytes, this one {len(raw)}")
    return raw


def _hash(value: str) -> str:
    name = value.strip().lower().replace("-", "")
    if name not in HASH_ALGORITHMS:
        raise ValueProblem(f"unknown hash '{value}' (one of: {', '.join(HASH_ALGORITHMS)})")
    return name


def _key_algorithm(value: str) -> str:
    name = value.strip().upper().replace("-", "_")
    if name in KEY_ALGORITHMS or name in ("ECDSA", "ECDH"):
        return name
    raise ValueProblem(f"unknown key algorithm '{value}' (one of: {', '.join(KEY_ALGORITHMS)})")


def _validity_period(value: str) -> str:
    for unit in VALIDITY_UNITS:
        if value.strip().lower() in (unit.lower(), unit.lower()[:-1]):
            return unit
    raise ValueProblem(f"unknown ValidityPeriod '{value}' (one of: {', '.join(VALIDITY_UNITS)})")


def _positive(value: str) -> int:
    number = parse_int(value)
    if number <= 0:
        raise ValueProblem(f"{value} is not a positive number")
    return number


def _subject(value: str, x500_name_flags: int) -> DistinguishedName | None:
    return parse_name(value, x500_name_flags) if value.strip() else None


def _without_wrapping(value: str) -> bool:
    return value.strip().upper() == "PKCS10-"


def _subject_name_flags(value: str) -> int | None:
    if value.strip().lower() == "template":
        return None
    return parse_flags(value, SUBJECT_NAME_FLAGS, "SubjectNameFlags")


def _flags(symbols: dict[str, int], what: str) -> Callable[[str], int]:
    return lambda value: parse_flags(value, symbols, what)


def _choice(choices: dict[str, Any], what: str) -> Callable[[str], Any]:
    return lambda value: parse_choice(value, choices, what)


def _family(values: dict[str, Any]) -> str:
    return KEY_ALGORITHMS[values["key_algorithm"]][0]


def _default_key_length(values: dict[str, Any]) -> tuple[int, str]:
    algorithm = values["key_algorithm"]
    curve_bits = KEY_ALGORITHMS[algorithm][2]
    if curve_bits is not None:
        return curve_bits, f"the size of {algorithm}'s curve"
    return 2048, "tokenagent default (certreq 2003: 1024)"


def _default_key_spec(values: dict[str, Any]) -> tuple[KeySpec, str]:
    if _family(values) == "ECDH":
        return KeySpec.AT_KEYEXCHANGE, "ECDH keys are for key exchange"
    return KeySpec.AT_SIGNATURE, "certreq's default"


def _default_key_usage(values: dict[str, Any]) -> tuple[int, str]:
    family, spec = _family(values), values["key_spec"]
    if family == "ECDH":
        return 0x08, "ECDH: keyAgreement (certreq's 0xF0 cannot apply to an EC key)"
    if family in ("ECDSA", "DSA"):
        return 0xC0, "signature key: digitalSignature + nonRepudiation"
    if spec == KeySpec.AT_KEYEXCHANGE:
        if values["encipher_only"]:
            return 0x30, "AT_KEYEXCHANGE with EncipherOnly: keyEncipherment + dataEncipherment"
        return 0xF0, "AT_KEYEXCHANGE: digitalSignature + nonRepudiation + keyEncipherment + dataEncipherment"
    if spec == KeySpec.AT_NONE:
        return 0xA0, "AT_NONE (CNG) RSA key: digitalSignature + keyEncipherment"
    return 0xC0, "AT_SIGNATURE: digitalSignature + nonRepudiation"


def _default_key_usage_property(values: dict[str, Any]) -> tuple[int, str]:
    family, spec = _family(values), values["key_spec"]
    if family == "ECDH":
        return 0x4, "ECDH: key agreement"
    if family in ("ECDSA", "DSA") or spec == KeySpec.AT_SIGNATURE:
        return 0x2, "signature key: signing only"
    if spec == KeySpec.AT_KEYEXCHANGE:
        return 0x3, "AT_KEYEXCHANGE: decrypt and sign, as CryptoAPI exchange keys can"
    return 0xFFFFFF, "AT_NONE: all usages"


#: every [NewRequest] key, read in this order: a value's error is reported for the first bad key
#: in this order, and X500NameFlags comes first because Subject is parsed with it
NEWREQUEST_TABLE: tuple[_Key, ...] = (
    _Key("x500_name_flags", "X500NameFlags", _flags(X500_NAME_FLAGS, "X500NameFlags"), 0),
    _Key("subject", "Subject", _subject, None, reads=("x500_name_flags",)),
    _Key("exportable", "Exportable", parse_bool, False),
    _Key("exportable_encrypted", "ExportableEncrypted", parse_bool, False),
    _Key("hash_algorithm", "HashAlgorithm", _hash, "sha256", "tokenagent default (certreq: sha1)"),
    _Key("key_algorithm", "KeyAlgorithm", _key_algorithm, "RSA"),
    _Key("key_container", "KeyContainer", _nonempty, None),
    _Key("key_length", "KeyLength", _positive, _DependsOnOtherKeys(_default_key_length)),
    _Key("key_spec", "KeySpec", _choice(KEY_SPECS, "KeySpec"), _DependsOnOtherKeys(_default_key_spec)),
    _Key("key_usage", "KeyUsage", _flags(KEY_USAGE_BITS, "KeyUsage"), _DependsOnOtherKeys(_default_key_usage)),
    _Key("key_usage_critical", None, None, True, "certreq marks KeyUsage critical"),
    _Key(
        "key_usage_property",
        "KeyUsageProperty",
        _flags(KEY_USAGE_PROPERTY_BITS, "KeyUsageProperty"),
        _DependsOnOtherKeys(_default_key_usage_property),
    ),
    _Key("machine_key_set", "MachineKeySet", parse_bool, False),
    _Key("not_before", "NotBefore", parse_date, None),
    _Key("not_after", "NotAfter", parse_date, None),
    _Key("private_key_archive", "PrivateKeyArchive", parse_bool, False),
    _Key("encryption_algorithm", "EncryptionAlgorithm", _lower_nonempty, "aes", "tokenagent default (certreq: 3des)"),
    _Key("encryption_length", "EncryptionLength", _positive, 256, "tokenagent default (certreq: 168)"),
    _Key("provider_name", "ProviderName", _nonempty, DEFAULT_PROVIDER, "certreq's default provider"),
    _Key("provider_type", "ProviderType", parse_int, None, "not set: ProviderName decides"),
    _Key("renewal_cert", "RenewalCert", _thumbprint, None),
    _Key("requester_name", "RequesterName", _requester_name, None),
    _Key("request_type", "RequestType", _choice(REQUEST_TYPES, "RequestType"), RequestType.PKCS10),
    _Key("pkcs10_without_wrapping", "RequestType", _without_wrapping, False),
    _Key("security_descriptor", "SecurityDescriptor", _nonempty, None),
    _Key("alternate_signature_algorithm", "AlternateSignatureAlgorithm", parse_bool, False),
    _Key("silent", "Silent", parse_bool, False),
    _Key("smime", "SMIME", parse_bool, False),
    _Key("use_existing_key_set", "UseExistingKeySet", parse_bool, False),
    _Key("key_protection", "KeyProtection", _choice(KEY_PROTECTIONS, "KeyProtection"), KeyProtection.NO_PROTECTION),
    _Key("suppress_defaults", "SuppressDefaults", parse_bool, False),
    _Key("friendly_name", "FriendlyName", _nonempty, None),
    _Key("validity_period_units", "ValidityPeriodUnits", _positive, None),
    _Key("validity_period", "ValidityPeriod", _validity_period, None),
    _Key("user_protected", "UserProtected", parse_bool, False),
    _Key("encipher_only", "EncipherOnly", parse_bool, False),
    _Key("subject_name_flags", "SubjectNameFlags", _subject_name_flags, None),
    _Key("piv_pin_policy", "PivPinPolicy", _choice(PIV_PIN_POLICIES, "PivPinPolicy"), "default", "the PIV slot's own"),
    _Key(
        "piv_touch_policy", "PivTouchPolicy", _choice(PIV_TOUCH_POLICIES, "PivTouchPolicy"), "default", "the card's own"
    ),
    _Key("piv_overwrite", "PivOverwrite", parse_bool, False),
)
NEWREQUEST_KEYS = frozenset(row.name for row in NEWREQUEST_TABLE if row.key)


class _Resolver:
    def __init__(self, inf: InfFile, diag: Diagnostics) -> None:
        self.inf = inf
        self.diag = diag
        self.values: dict[str, Any] = {}
        self.origins: dict[str, Origin] = {}
        section = inf.section("newrequest")
        self.section_line = section.line if section is not None else 1
        self.entries: dict[str, Entry] = {}
        if section is not None:
            for entry in section.entries:
                if entry.name in self.entries:
                    diag.warning(
                        entry.line,
                        f"{entry.key} is repeated (line {self.entries[entry.name].line}); the last one is used",
                    )
                self.entries[entry.name] = entry

    def read(self, row: _Key) -> None:
        entry = self.entries.get(row.name)
        if entry is None or row.parse is None:
            if isinstance(row.default, _DependsOnOtherKeys):
                self.values[row.field] = None  # until `fill_dependent_defaults`
            else:
                self.set_default(row.field, row.default, row.note)
            return
        try:
            value = row.parse(entry.value, *(self.values[name] for name in row.reads))
        except ValueProblem as exc:
            self.diag.error(entry.line, f"{entry.key}: {exc}")
        self.values[row.field] = value
        self.origins[row.field] = Origin("file", entry.line)

    def fill_dependent_defaults(self) -> None:
        for row in NEWREQUEST_TABLE:
            if isinstance(row.default, _DependsOnOtherKeys) and not self.given(row.name):
                self.set_default(row.field, *row.default.compute(self.values))

    def set_default(self, field_name: str, value: Any, note: str | None) -> None:
        self.values[field_name] = value
        self.origins[field_name] = Origin("default", None, note)

    def line(self, key: str) -> int:
        entry = self.entries.get(key)
        return entry.line if entry else self.section_line

    def given(self, key: str) -> bool:
        return key in self.entries


def resolve(inf: InfFile, diag: Diagnostics) -> RequestPolicy:
    _check_sections(inf, diag)
    r = _Resolver(inf, diag)
    _warn_unknown_keys(r)
    for row in NEWREQUEST_TABLE:
        r.read(row)
    _expand_curve_shorthand(r)
    r.fill_dependent_defaults()
    for check in CROSS_KEY_CHECKS:
        check(r)
    _read_other_sections(r)
    _check_someone_is_named(r)
    return RequestPolicy(filename=inf.filename, origins=r.origins, warnings=tuple(diag.warnings), **r.values)


def _warn_unknown_keys(r: _Resolver) -> None:
    for name, entry in r.entries.items():
        if name not in NEWREQUEST_KEYS:
            r.diag.warning(entry.line, f"unknown [NewRequest] key '{entry.key}' is ignored")


def _expand_curve_shorthand(r: _Resolver) -> None:
    """Newer certreq writes KeyAlgorithm = ECDSA with KeyLength = 256 for ECDSA_P256."""
    algorithm = r.values["key_algorithm"]
    if algorithm not in ("ECDSA", "ECDH"):
        return
    size = r.values["key_length"]
    if size not in _CURVE_BY_SIZE:
        r.diag.error(r.line("keyalgorithm"), f"KeyAlgorithm = {algorithm} needs KeyLength 256, 384 or 521")
    r.values["key_algorithm"] = f"{algorithm}_{_CURVE_BY_SIZE[size]}"


# -- cross-key checks, in the order their messages come out ----------------------------------------


def _check_key_length_matches_curve(r: _Resolver) -> None:
    algorithm = r.values["key_algorithm"]
    curve_bits = KEY_ALGORITHMS[algorithm][2]
    if curve_bits is not None and r.given("keylength") and r.values["key_length"] != curve_bits:
        r.diag.error(
            r.line("keylength"),
            f"KeyLength = {r.values['key_length']} contradicts KeyAlgorithm = {algorithm} ({curve_bits} bits)",
        )


def _check_encipher_only_needs_key_exchange(r: _Resolver) -> None:
    if r.values["encipher_only"] and r.values["key_spec"] == KeySpec.AT_SIGNATURE:
        r.diag.error(
            r.line("encipheronly"),
            "EncipherOnly = TRUE needs KeySpec = AT_KEYEXCHANGE (it is an error with AT_SIGNATURE since Windows Vista)",
        )


def _check_hash_is_not_broken(r: _Resolver) -> None:
    hash_name = r.values["hash_algorithm"]
    if hash_name in WEAK_HASHES:
        r.diag.error(
            r.line("hashalgorithm"),
            f"HashAlgorithm = {hash_name} is broken; "
            "tokenagent signs with sha256, sha384 or sha512 (sha1 with a warning)",
        )


def _check_hash_is_not_sha1(r: _Resolver) -> None:
    if r.values["hash_algorithm"] == "sha1":
        r.diag.warning(r.line("hashalgorithm"), "HashAlgorithm = sha1 is deprecated; CAs may refuse it")


def _check_requester_name_needs_cms(r: _Resolver) -> None:
    if r.values["requester_name"] and r.values["request_type"] == RequestType.PKCS10:
        r.diag.warning(
            r.line("requestername"),
            "RequesterName is ignored with RequestType = PKCS10 (certreq ignores it too): use PKCS7 or CMC",
        )


def _check_private_key_archive_needs_cmc(r: _Resolver) -> None:
    if r.values["private_key_archive"] and r.values["request_type"] != RequestType.CMC:
        r.diag.warning(r.line("privatekeyarchive"), "PrivateKeyArchive works only with RequestType = CMC; ignored")


def _check_existing_key_is_not_made_exportable(r: _Resolver) -> None:
    if r.values["use_existing_key_set"] and r.given("exportable"):
        r.diag.error(
            r.line("exportable"),
            "Exportable cannot be set with UseExistingKeySet = TRUE: an existing key's properties cannot change",
        )


def _check_existing_key_is_named(r: _Resolver) -> None:
    if r.values["use_existing_key_set"] and not r.values["key_container"] and not r.values["renewal_cert"]:
        r.diag.error(
            r.line("useexistingkeyset"),
            "UseExistingKeySet = TRUE needs KeyContainer or RenewalCert to name the key",
        )


def _validity_period_line(r: _Resolver) -> int:
    return r.line("validityperiod") if r.given("validityperiod") else r.line("validityperiodunits")


def _check_not_after_excludes_validity_period(r: _Resolver) -> None:
    if r.given("notafter") and (r.given("validityperiod") or r.given("validityperiodunits")):
        r.diag.error(_validity_period_line(r), "NotAfter cannot be used with ValidityPeriod/ValidityPeriodUnits")


def _check_validity_period_has_units(r: _Resolver) -> None:
    if r.given("validityperiod") != r.given("validityperiodunits"):
        missing = "ValidityPeriodUnits" if r.given("validityperiod") else "ValidityPeriod"
        r.diag.error(
            _validity_period_line(r), f"ValidityPeriod and ValidityPeriodUnits go together: {missing} is missing"
        )


def _check_not_after_follows_not_before(r: _Resolver) -> None:
    not_before, not_after = r.values["not_before"], r.values["not_after"]
    if not_before and not_after and not_after <= not_before:
        r.diag.error(r.line("notafter"), "NotAfter is not after NotBefore")


def _check_validity_keys_need_cert_request(r: _Resolver) -> None:
    if r.values["request_type"] == RequestType.CERT:
        return
    for key in ("notbefore", "notafter", "validityperiod", "validityperiodunits"):
        if r.given(key):
            r.diag.warning(r.line(key), f"{r.entries[key].key} is used only with RequestType = Cert; ignored")


def _check_subject_name_flags_unsupported(r: _Resolver) -> None:
    if r.values["subject_name_flags"]:
        r.diag.warning(
            r.line("subjectnameflags"),
            "SubjectNameFlags: tokenagent does not fill names from Active Directory; give Subject and SAN explicitly",
        )


def _check_security_descriptor_not_applicable(r: _Resolver) -> None:
    if r.values["security_descriptor"]:
        r.diag.warning(
            r.line("securitydescriptor"),
            "SecurityDescriptor does not apply to PKCS#11 tokens (access is the token PIN); ignored",
        )


CROSS_KEY_CHECKS: tuple[Callable[[_Resolver], None], ...] = (
    _check_key_length_matches_curve,
    _check_encipher_only_needs_key_exchange,
    _check_hash_is_not_broken,
    _check_hash_is_not_sha1,
    _check_requester_name_needs_cms,
    _check_private_key_archive_needs_cmc,
    _check_existing_key_is_not_made_exportable,
    _check_existing_key_is_named,
    _check_not_after_excludes_validity_period,
    _check_validity_period_has_units,
    _check_not_after_follows_not_before,
    _check_validity_keys_need_cert_request,
    _check_subject_name_flags_unsupported,
    _check_security_descriptor_not_applicable,
)


def _check_someone_is_named(r: _Resolver) -> None:
    """Run after the other sections: a SAN there names someone as well as Subject does."""
    named_in_extensions = any(e.oid == "2.5.29.17" for e in r.values["extensions"])
    if r.values["subject"] is None and r.values["san_attribute"] is None and not named_in_extensions:
        r.diag.warning(r.line("subject"), "no Subject and no SAN: the certificate will not name anyone")


# -- the other sections ---------------------------------------------------------------------------


def _read_other_sections(r: _Resolver) -> None:
    """[Extensions], [EnhancedKeyUsageExtension] and [RequestAttributes] into their fields."""
    flags = r.values["x500_name_flags"]
    r.values["extensions"] = _extensions(r.inf, r.diag, flags)
    attributes, template, san = _request_attributes(r.inf, r.diag, flags)
    r.values["request_attributes"] = attributes
    r.values["certificate_template"] = template
    r.values["san_attribute"] = san
    r.origins["extensions"] = _section_origin(r.inf, "extensions")
    r.origins["request_attributes"] = _section_origin(r.inf, "requestattributes")
    r.origins["certificate_template"] = _section_origin(r.inf, "requestattributes", "certificatetemplate")
    r.origins["san_attribute"] = _section_origin(r.inf, "requestattributes", "san")


def _section_origin(inf: InfFile, section_name: str, key: str | None = None) -> Origin:
    """A whole section comes from its header line; a key in it from its last line."""
    section = inf.section(section_name)
    if section is None:
        return Origin("default")
    if key is None:
        return Origin("file", section.line)
    entries = section.get(key)
    return Origin("file", entries[-1].line) if entries else Origin("default")


def _check_sections(inf: InfFile, diag: Diagnostics) -> None:
    version = inf.section("version")
    if version is not None:
        signatures = version.get("signature")
        if not signatures:
            diag.warning(version.line, '[Version] has no Signature (it should be "$Windows NT$")')
        elif signatures[-1].value.strip().lower() not in ("$windows nt$", "$chicago$", "$windows 95$"):
            diag.warning(
                signatures[-1].line,
                f'[Version] Signature should be "$Windows NT$", not "{signatures[-1].value}"',
            )
    for key, section in inf.sections.items():
        if key not in SECTION_NAMES:
            diag.warning(section.line, f"unknown section [{section.name}] is ignored")
    new_request = inf.section("newrequest")
    if new_request is None:
        diag.error(
            1,
            "the [NewRequest] section is missing (certreq: INF file line not found 0xe0000102, INF: -536870654)",
            hresult=0xE0000102,
        )
    if not new_request.entries:
        diag.error(
            new_request.line,
            "[NewRequest] has no keys; set at least one, e.g. Subject (certreq: Incorrect function. 0x1, WIN32: 1)",
            hresult=0x1,
        )


def _extensions(inf: InfFile, diag: Diagnostics, name_flags: int) -> tuple[ExtensionSpec, ...]:
    section = inf.section("extensions")
    entries = section.entries if section else []
    critical = _critical_oids(entries, diag)
    specs = _extension_specs(entries, critical, name_flags, diag)
    eku_oids, eku_critical = _eku_section(inf, diag)
    in_extensions = [e for e in entries if e.name == "oid"]
    if in_extensions:
        diag.warning(
            in_extensions[0].line,
            "OID = ... in [Extensions] is read as [EnhancedKeyUsageExtension] (enhanced key usage)",
        )
    if in_extensions or eku_oids:
        _merge_legacy_eku(specs, in_extensions + eku_oids, eku_critical or OID_EXTENDED_KEY_USAGE in critical, diag)
    _check_critical_oids_are_extensions(critical, specs, diag)
    return tuple(specs)


def _critical_oids(entries: list[Entry], diag: Diagnostics) -> dict[str, int]:
    """``Critical = oid, oid`` lines: each OID with the line that names it."""
    critical: dict[str, int] = {}
    for entry in entries:
        if entry.name != "critical":
            continue
        for part in ",".join(entry.fragments).split(","):
            if part.strip():
                try:
                    critical[check_oid(part)] = entry.line
                except ValueProblem as exc:
                    diag.error(entry.line, f"Critical: {exc}")
    return critical


def _extension_specs(
    entries: list[Entry], critical: dict[str, int], name_flags: int, diag: Diagnostics
) -> list[ExtensionSpec]:
    specs: list[ExtensionSpec] = []
    for entry in entries:
        if entry.name in ("critical", "oid"):  # OID = ...: the certreq reference's example puts EKU OIDs there
            continue
        try:
            oid = check_oid(entry.key)
        except ValueProblem:
            diag.error(
                entry.line,
                f"[Extensions] key '{entry.key}' is not an OID (use OID = {{text}}..., or Critical = OID,...)",
            )
        if any(s.oid == oid for s in specs):
            diag.error(entry.line, f"extension {oid} is given twice")
        try:
            specs.append(parse_extension(oid, entry.fragments, entry.line, oid in critical, name_flags))
        except ValueProblem as exc:
            diag.error(entry.line, f"extension {oid}: {exc}")
    return specs


def _eku_section(inf: InfFile, diag: Diagnostics) -> tuple[list[Entry], bool]:
    """[EnhancedKeyUsageExtension]: its ``OID =`` lines and whether ``Critical`` is set."""
    section = inf.section("enhancedkeyusageextension")
    oids: list[Entry] = []
    critical = False
    for entry in section.entries if section is not None else []:
        if entry.name == "oid":
            oids.append(entry)
        elif entry.name == "critical":
            try:
                critical = parse_bool(entry.value)
            except ValueProblem as exc:
                diag.error(entry.line, f"Critical: {exc}")
        else:
            diag.warning(entry.line, f"unknown key '{entry.key}' in [EnhancedKeyUsageExtension] is ignored")
    return oids, critical


def _merge_legacy_eku(specs: list[ExtensionSpec], legacy: list[Entry], critical: bool, diag: Diagnostics) -> None:
    """``OID =`` lines become one EKU extension, merged with a {text} EKU from [Extensions]."""
    try:
        usages = parse_eku_text([e.value for e in legacy])
    except ValueProblem as exc:
        diag.error(legacy[0].line, f"enhanced key usage: {exc}")
    existing = next((s for s in specs if s.oid == OID_EXTENDED_KEY_USAGE), None)
    if existing is not None:
        specs.remove(existing)
        usages = tuple(dict.fromkeys([*existing.usages, *usages]))
    specs.append(ExtensionSpec(OID_EXTENDED_KEY_USAGE, critical, legacy[0].line, "extended_key_usage", usages=usages))


def _check_critical_oids_are_extensions(
    critical: dict[str, int], specs: list[ExtensionSpec], diag: Diagnostics
) -> None:
    for oid, line in critical.items():
        if not any(s.oid == oid for s in specs) and oid != "2.5.29.15":  # the KeyUsage extension comes from KeyUsage =
            diag.warning(line, f"Critical names {oid}, which is not among the [Extensions]")


def _request_attributes(
    inf: InfFile, diag: Diagnostics, name_flags: int
) -> tuple[tuple[tuple[str, str], ...], str | None, tuple[GeneralNameSpec, ...] | None]:
    section = inf.section("requestattributes")
    if section is None:
        return (), None, None
    pairs: list[tuple[str, str]] = []
    template: str | None = None
    san: tuple[GeneralNameSpec, ...] | None = None
    for entry in section.entries:
        value = entry.value.strip()
        if not value:
            diag.error(entry.line, f"[RequestAttributes] {entry.key} has an empty value")
        if entry.name == "certificatetemplate":
            template = value
        elif entry.name == "san":
            try:
                san = parse_san_text(entry.fragments, name_flags)
            except ValueProblem as exc:
                diag.error(entry.line, f"SAN attribute: {exc}")
        pairs.append((entry.key, value))
    return tuple(pairs), template, san


# -- entry points ---------------------------------------------------------------------------------


def parse_policy(
    data: bytes | str, filename: str = "<inf>", *, strings: Mapping[str, str] | None = None
) -> RequestPolicy:
    """Parse INF bytes or text. Raises `PolicyError` (file:line) on errors; warnings are returned.
    ``strings`` replace [Strings] values of the same name (`tokenagent batch`: one CSV row)."""
    diag = Diagnostics(filename)
    return resolve(tokenize(data, filename, diag, strings=strings), diag)


def load_policy(path: str | Path, *, strings: Mapping[str, str] | None = None) -> RequestPolicy:
    return parse_policy(read_input(path, "INF file"), str(path), strings=strings)
