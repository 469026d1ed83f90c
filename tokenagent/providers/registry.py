"""INF ProviderName / ProviderType -> the PKCS#11 module, token and device profile behind them.

Windows names a key store by its CSP/KSP name; on Linux the same role is played by a PKCS#11
module and a token in it. The built-in table maps the names people actually write in INF files;
a user TOML file adds vendors' names (an HSM's KSP name -> its module and partition) or overrides
a built-in entry. Files are read in this order, later ones overriding earlier entries by name:

  /etc/tokenagent/providers.toml
  $XDG_CONFIG_HOME/tokenagent/providers.toml  (default ~/.config/tokenagent/providers.toml)
  $TOKENAGENT_PROVIDERS
  --providers FILE

File format (docs/providers.md has a worked example)::

  [profiles.luna]            # a device profile; fields as in `Profile`
  kind = "hsm"
  algorithms = { RSA = [2048, 3072, 4096], ECDSA = [256, 384] }
  exportable = false

  [providers."SafeNet Key Storage Provider"]
  module = "/usr/safenet/lunaclient/lib/libCryptoki2_64.so"
  profile = "luna"           # a built-in or file profile; profile fields may also be set here
  token = "user-partition"   # label, serial or pkcs11: URI (user context)
  machine_token = "server-partition"   # MachineKeySet = TRUE / --machine
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tokenagent.errors import InputError, PolicyError
from tokenagent.inputs import read_input

PROFILE_KINDS = ("smartcard", "software", "hsm", "tpm")
ENV_PROVIDERS = "TOKENAGENT_PROVIDERS"
SYSTEM_CONFIG = Path("/etc/tokenagent/providers.toml")


@dataclass(frozen=True)
class Profile:
    """What a kind of device allows. Empty size tuples mean: whatever the token's mechanism range allows."""

    name: str
    kind: str  # smartcard | software | hsm | tpm
    description: str
    #: key family (RSA, ECDSA, ECDH) -> allowed sizes (RSA modulus bits, EC curve bits)
    algorithms: Mapping[str, tuple[int, ...]]
    exportable: bool  # may CKA_EXTRACTABLE be TRUE at all
    key_containers: int | None = None  # most private keys the device holds (PIV: 4 + 20 retired slots)
    max_objects: int | None = None  # most objects of any class
    pin_pad: bool = False  # the reader has a PIN pad: prefer it to a prompt

    def allows(self, family: str, bits: int) -> bool:
        if family not in self.algorithms:
            return False
        sizes = self.algorithms[family]
        return not sizes or bits in sizes

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "algorithms": {family: list(sizes) for family, sizes in self.algorithms.items()},
            "exportable": self.exportable,
            "key_containers": self.key_containers,
            "max_objects": self.max_objects,
            "pin_pad": self.pin_pad,
        }


_EC = (256, 384, 521)
BUILTIN_PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            "smartcard",
            "smartcard",
            "smart card through OpenSC: keys never leave the card",
            {"RSA": (1024, 2048, 3072, 4096), "ECDSA": (256, 384), "ECDH": (256, 384)},
            exportable=False,
        ),
        Profile(
            "piv",
            "smartcard",
            "PIV card or YubiKey through ykcs11: 24 fixed key slots (9a, 9c, 9d, 9e and 20 retired)",
            # ykcs11 2.2 generates RSA-1024 (too weak to offer) and RSA-2048, P-256 and P-384
            {"RSA": (2048,), "ECDSA": (256, 384), "ECDH": (256, 384)},
            exportable=False,
            key_containers=24,
        ),
        Profile(
            "software",
            "software",
            "software token (SoftHSM): the Linux stand-in for the software KSP",
            {"RSA": (), "ECDSA": _EC, "ECDH": _EC},
            exportable=True,
        ),
        Profile(
            "hsm",
            "hsm",
            "network or PCIe HSM partition: export only where the partition policy allows it",
            {"RSA": (), "ECDSA": _EC, "ECDH": _EC},
            exportable=False,
        ),
        Profile(
            "tpm",
            "tpm",
            "TPM 2.0 through tpm2-pkcs11",
            {"RSA": (2048, 3072), "ECDSA": (256, 384), "ECDH": (256, 384)},
            exportable=False,
        ),
    )
}

#: CryptoAPI provider types (wincrypt.h PROV_*) -> the key families they can make
PROVIDER_TYPES: dict[int, tuple[str, tuple[str, ...]]] = {
    1: ("PROV_RSA_FULL", ("RSA",)),
    2: ("PROV_RSA_SIG", ("RSA",)),
    3: ("PROV_DSS", ("DSA",)),
    4: ("PROV_FORTEZZA", ()),
    5: ("PROV_MS_EXCHANGE", ("RSA",)),
    6: ("PROV_SSL", ("RSA",)),
    12: ("PROV_RSA_SCHANNEL", ("RSA",)),
    13: ("PROV_DSS_DH", ("DSA", "DH")),
    18: ("PROV_DH_SCHANNEL", ("DH",)),
    24: ("PROV_RSA_AES", ("RSA",)),
}


@dataclass(frozen=True)
class ProviderEntry:
    name: str
    profile: Profile
    module: str | None  # path or p11-kit module name; None: TOKENAGENT_MODULE / p11-kit discovery
    token: str | None = None  # the user's token (selector text)
    machine_token: str | None = None  # MachineKeySet = TRUE
    #: a CryptoAPI CSP (not a CNG KSP) makes RSA keys only, whatever ProviderType says
    families: tuple[str, ...] | None = None
    source: str = "built-in"

    def token_for(self, machine: bool) -> str | None:
        return self.machine_token if machine else self.token

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "module": self.module,
            "token": self.token,
            "machine_token": self.machine_token,
            "families": list(self.families) if self.families is not None else None,
            "profile": self.profile.to_json(),
        }


def _builtin(name: str, profile: str, module: str | None, families: tuple[str, ...] | None) -> ProviderEntry:
    return ProviderEntry(name, BUILTIN_PROFILES[profile], module, families=families)


_RSA_ONLY = ("RSA",)
BUILTIN_PROVIDERS: tuple[ProviderEntry, ...] = (
    _builtin("Microsoft Smart Card Key Storage Provider", "smartcard", "opensc-pkcs11", None),
    _builtin("Microsoft Base Smart Card Crypto Provider", "smartcard", "opensc-pkcs11", _RSA_ONLY),
    _builtin("Microsoft Software Key Storage Provider", "software", None, None),
    _builtin("Microsoft Enhanced RSA and AES Cryptographic Provider", "software", None, _RSA_ONLY),
    _builtin("Microsoft Enhanced Cryptographic Provider v1.0", "software", None, _RSA_ONLY),
    _builtin("Microsoft Base Cryptographic Provider v1.0", "software", None, _RSA_ONLY),
    _builtin("Microsoft Strong Cryptographic Provider", "software", None, _RSA_ONLY),
    _builtin("Microsoft RSA SChannel Cryptographic Provider", "software", None, _RSA_ONLY),
    _builtin("Microsoft Platform Crypto Provider", "tpm", "libtpm2_pkcs11.so", None),
)


@dataclass
class ProviderRegistry:
    profiles: dict[str, Profile] = field(default_factory=lambda: dict(BUILTIN_PROFILES))
    providers: dict[str, ProviderEntry] = field(
        default_factory=lambda: {entry.name.casefold(): entry for entry in BUILTIN_PROVIDERS}
    )
    files: list[str] = field(default_factory=list)

    def lookup(self, name: str, where: str = "") -> ProviderEntry:
        entry = self.providers.get(name.strip().casefold())
        if entry is None:
            known = "; ".join(sorted(e.name for e in self.providers.values()))
            prefix = f"{where}: " if where else ""
            raise PolicyError(
                f"{prefix}unknown ProviderName '{name}': add it to providers.toml with its PKCS#11 module "
                f"(see docs/providers.md); known: {known}"
            )
        return entry

    def load_file(self, path: Path) -> None:
        import tomllib  # only when a providers file exists: the built-in providers need no TOML parser

        try:
            data = tomllib.loads(read_input(path, "providers file").decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid TOML: {exc}") from None
        self.merge(data, str(path))
        self.files.append(str(path))

    def merge(self, data: Mapping[str, Any], source: str) -> None:
        for key in data:
            if key not in ("profiles", "providers"):
                raise InputError(f'{source}: unknown table [{key}] (expected [profiles.NAME] or [providers."NAME"])')
        for name, table in _tables(data.get("profiles", {}), source, "profiles").items():
            base = self.profiles.get(str(table.get("base", "")) or name)
            self.profiles[name] = _profile(name, table, base, source)
        for name, table in _tables(data.get("providers", {}), source, "providers").items():
            self.providers[name.casefold()] = self._provider(name, table, source)

    def _provider(self, name: str, table: Mapping[str, Any], source: str) -> ProviderEntry:
        where = f'{source}: [providers."{name}"]'
        existing = self.providers.get(name.casefold())
        profile_name = table.get("profile")
        if profile_name is not None:
            if not isinstance(profile_name, str):  # a TOML array or table is not even hashable
                raise InputError(f"{where}: profile must be a string, one of {', '.join(self.profiles)}")
            if profile_name not in self.profiles:
                raise InputError(f"{where}: unknown profile '{profile_name}' (known: {', '.join(self.profiles)})")
            profile = self.profiles[profile_name]
        elif existing is not None:
            profile = existing.profile
        else:
            raise InputError(f"{where}: needs profile = one of {', '.join(self.profiles)}")
        overrides = {k: v for k, v in table.items() if k in _PROFILE_FIELDS}
        if overrides:
            profile = _profile(f"{profile.name}+{name}", overrides, profile, source)
        unknown = set(table) - _PROFILE_FIELDS - {"profile", "module", "token", "machine_token", "families"}
        if unknown:
            raise InputError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        families = table.get("families")
        if families is None:
            families = existing.families if existing else None
        elif not isinstance(families, list) or not all(isinstance(family, str) for family in families):
            raise InputError(f'{where}: families must be a list of key families, e.g. ["RSA", "ECDSA"]')
        return ProviderEntry(
            name=name,
            profile=profile,
            module=_optional_text(table, "module", where, existing.module if existing else None),
            token=_optional_text(table, "token", where, existing.token if existing else None),
            machine_token=_optional_text(table, "machine_token", where, existing.machine_token if existing else None),
            families=tuple(str(f).upper() for f in families) if families is not None else None,
            source=source,
        )


_PROFILE_FIELDS = {"kind", "description", "algorithms", "exportable", "key_containers", "max_objects", "pin_pad"}


def _tables(value: Any, source: str, name: str) -> dict[str, Mapping[str, Any]]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise InputError(f"{source}: [{name}] must hold one table per name")
    return value


def _optional_text(table: Mapping[str, Any], key: str, where: str, default: str | None) -> str | None:
    value = table.get(key, default)
    if value is not None and not isinstance(value, str):
        raise InputError(f"{where}: {key} must be a string")
    return value


def _profile(name: str, table: Mapping[str, Any], base: Profile | None, source: str) -> Profile:
    where = f"{source}: profile {name}"
    unknown = set(table) - _PROFILE_FIELDS - {"base"}
    if unknown:
        raise InputError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    if base is None and "kind" not in table:
        raise InputError(f"{where}: needs kind = one of {', '.join(PROFILE_KINDS)}")
    values: dict[str, Any] = {} if base is None else dict(base.__dict__)
    values["name"] = name
    values.setdefault("description", "")
    values.setdefault("exportable", False)
    values.setdefault("algorithms", {"RSA": (), "ECDSA": _EC, "ECDH": _EC})
    for key, value in table.items():
        if key == "base":
            continue
        if key == "kind" and value not in PROFILE_KINDS:
            raise InputError(f"{where}: kind must be one of {', '.join(PROFILE_KINDS)}")
        if key in ("exportable", "pin_pad") and not isinstance(value, bool):
            raise InputError(f"{where}: {key} must be true or false")
        if key in ("key_containers", "max_objects") and not (isinstance(value, int) and value >= 0):
            raise InputError(f"{where}: {key} must be a number >= 0")
        if key == "algorithms":
            value = _algorithms(value, where)
        values[key] = value
    return replace(base, **values) if base is not None else Profile(**values)


def _algorithms(value: Any, where: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(value, dict):
        raise InputError(f"{where}: algorithms must be a table like {{ RSA = [2048, 3072], ECDSA = [256] }}")
    result: dict[str, tuple[int, ...]] = {}
    for family, sizes in value.items():
        if family.upper() not in ("RSA", "ECDSA", "ECDH"):
            raise InputError(f"{where}: unknown key family '{family}' (RSA, ECDSA, ECDH)")
        if not isinstance(sizes, list) or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise InputError(f"{where}: algorithms.{family} must be a list of sizes in bits ([] for any)")
        result[family.upper()] = tuple(sizes)
    return result


def config_files(explicit: Sequence[str | Path] = (), env: Mapping[str, str] | None = None) -> list[Path]:
    """The providers files to read, in order. Default locations are skipped when absent."""
    env = os.environ if env is None else env
    config_home = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME", "~")).expanduser() / ".config")
    candidates = [SYSTEM_CONFIG, config_home / "tokenagent" / "providers.toml"]
    files = [path for path in candidates if path.is_file()]
    if env.get(ENV_PROVIDERS):
        files.append(Path(env[ENV_PROVIDERS]))
    files.extend(Path(p) for p in explicit)
    return files


def load_registry(explicit: Sequence[str | Path] = (), env: Mapping[str, str] | None = None) -> ProviderRegistry:
    registry = ProviderRegistry()
    for path in config_files(explicit, env):
        registry.load_file(path)
    return registry


def check_provider_type(entry: ProviderEntry, provider_type: int | None, family: str, where: str) -> None:
    """ProviderType and a CSP's own limits against the key family the INF asks for."""
    if entry.families is not None and family not in entry.families:
        raise PolicyError(
            f"{where}: '{entry.name}' is a CryptoAPI CSP that makes {'/'.join(entry.families)} keys only; "
            f"for {family} use a Key Storage Provider such as 'Microsoft Software Key Storage Provider'"
        )
    if provider_type is None:
        return
    if provider_type not in PROVIDER_TYPES:
        raise PolicyError(
            f"{where}: unknown ProviderType {provider_type} (known: {', '.join(map(str, PROVIDER_TYPES))})"
        )
    type_name, families = PROVIDER_TYPES[provider_type]
    if family not in families:
        raise PolicyError(
            f"{where}: ProviderType = {provider_type} ({type_name}) makes {'/'.join(families) or 'no'} keys, "
            f"not {family}"
        )
