"""``--config``: which CA, and how to reach it. A URL whose scheme picks the connector, certreq's
``HOST\\CA Name``, or the name of a profile in ``cas.toml``.

==============================  ==========================================================
``file:DIR`` / ``file:``        write the request into DIR (default: the current directory)
``cmc+https://HOST/PATH``       CMC over HTTP(S) (RFC 5273), e.g. django-ca-cmc's /cmc/SERIAL/
``certsrv+https://HOST/certsrv`` AD CS web enrollment; a plain https URL ending in /certsrv too
``HOST\\CA Name``                certreq's form: AD CS web enrollment at https://HOST/certsrv
``scep+http://HOST/scep``       SCEP (RFC 8894), e.g. NDES's /certsrv/mscep/mscep.dll
``acme+https://HOST/dir``       ACME (RFC 8555): the directory URL
``cmp+http://HOST/pkix/``       CMP over HTTP (RFC 4210, 9483, 6712)
``est+https://HOST[/label]``    EST (RFC 7030): /.well-known/est[/label] on HOST
``cfssl+http://HOST:8888``      cfssl's JSON API (/api/v1/cfssl/...)
``NAME``                        the profile [ca.NAME] of cas.toml
==============================  ==========================================================

Each protocol adds its own cas.toml keys (`PROTOCOL_SPECS`; docs/ca.md has one section per
protocol); a key of another protocol is refused by name.

cas.toml files are read in this order, later ones overriding earlier profiles by name (as
providers.toml): ``/etc/tokenagent/cas.toml``, ``$XDG_CONFIG_HOME/tokenagent/cas.toml``,
``$TOKENAGENT_CAS``, ``--cas FILE``::

  default = "corp"                   # the profile used when --config is not given

  [ca.corp]
  url = "certsrv+https://adcs.corp.example/certsrv"
  ca_bundle = "corp-root.pem"        # TLS trust (default: the system store); relative to this file
  auth = "ntlm"                      # auto (default), basic, ntlm, negotiate, none
  user = 'CORP\\enroll-station'
  password_source = "file:/etc/tokenagent/adcs.password"   # prompt, env:VAR, file:PATH, fd:N
  template = "SmartcardLogon"        # sent as CertificateTemplate:NAME
  attributes = ["SAN:upn=ada@corp.example"]
  timeout = 30                       # seconds, for each request

  [ca.lab]
  url = "cmc+http://127.0.0.1:8000/cmc/4E1A.../"
  trust = "lab-ca.pem"               # the CA certificates a response signer must lead to

A password never goes into cas.toml, a URL or the command line: only its source does.
"""

from __future__ import annotations

import importlib
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tokenagent.ca.connector import Connector, KeyNeeds
from tokenagent.ca.http import AUTH_METHODS, DEFAULT_TIMEOUT, HttpSettings, parse_base_url
from tokenagent.errors import CAConfigError, InputError, UsageError
from tokenagent.inputs import read_input
from tokenagent.secret_sources import parse_secret_source

ENV_CAS = "TOKENAGENT_CAS"
SYSTEM_CAS = Path("/etc/tokenagent/cas.toml")
_KEYS = {"url", "trust", "ca_bundle", "auth", "user", "password_source", "template", "attributes", "timeout"}
MAX_TIMEOUT = 600.0


@dataclass(frozen=True)
class ProtocolSpec:
    """A CA protocol: its URL schemes, where its connector lives, and its own cas.toml keys.

    ``connector`` names a module with ``connector_for(profile, settings, trust) -> Connector`` and,
    when the protocol needs something of the key before it is generated, ``key_needs(profile) ->
    KeyNeeds | None``, and when `enroll` must put attributes into the PKCS#10 it signs (SCEP's
    challengePassword), ``request_attributes(profile) -> list[csr.CRIAttribute]``. It is imported
    only when a profile of the protocol is used.
    """

    name: str
    transports: tuple[str, ...]  # the schemes after "name+": http, https
    connector: str  # a module of tokenagent.ca
    keys: dict[str, type]  # protocol keys of cas.toml and their TOML types (str, bool, int, list)
    secret_keys: tuple[str, ...] = ()  # those of the keys that name a secret's source (env:, file:, fd:, prompt)
    path_keys: tuple[str, ...] = ()  # those that name files, relative to the cas.toml that says them


PROTOCOL_SPECS: dict[str, ProtocolSpec] = {
    spec.name: spec
    for spec in (
        ProtocolSpec("scep", ("http", "https"), "scep", {"challenge_source": str}, ("challenge_source",)),
        ProtocolSpec(
            "acme",
            ("https", "http"),
            "acme",
            {
                "account_key": str,
                "account_key_uri": str,
                "contact": str,
                "challenge": str,
                "hook": str,
                "http_port": int,
                "http_address": str,
                "wait": int,
            },
            path_keys=("account_key", "hook"),
        ),
        ProtocolSpec(
            "cmp",
            ("http", "https"),
            "cmp",
            {
                "secret_source": str,
                "reference": str,
                "recipient": str,
                "body": str,
                "implicit_confirm": bool,
                "protection": str,
            },
            ("secret_source",),
        ),
        ProtocolSpec(
            "est",
            ("https", "http"),
            "est",
            {"client_auth": str, "client_certificate": str, "client_key": str, "csrattrs": str},
            path_keys=("client_certificate", "client_key"),
        ),
        ProtocolSpec(
            "cfssl",
            ("http", "https"),
            "cfssl",
            {"profile": str, "label": str, "auth_key_source": str},
            ("auth_key_source",),
        ),
    )
}
PROTOCOLS = ("file", "cmc", "certsrv", *PROTOCOL_SPECS)


@dataclass(frozen=True)
class CaProfile:
    """Everything a connector needs, except the password itself (only where it comes from)."""

    config: str  # what --config said (a URL, HOST\\CA, or a profile name); stored with pending requests
    protocol: str  # file | cmc | certsrv
    url: str  # the transport URL: http(s)://... or the directory of file:
    name: str | None = None  # the cas.toml profile
    source: str = "--config"  # where it was defined
    trust: Path | None = None
    ca_bundle: Path | None = None
    auth: str = "auto"
    user: str | None = None
    password_source: str | None = None
    template: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    #: the protocol's own keys (PROTOCOL_SPECS[protocol].keys), sorted by name; sources, never secrets
    extra: tuple[tuple[str, Any], ...] = ()

    def option(self, key: str, default: Any = None) -> Any:
        """A protocol key of the profile (``extra``), or ``default``."""
        return dict(self.extra).get(key, default)

    def describe(self) -> str:
        where = f"file:{self.url}" if self.protocol == "file" else self.url
        return f"{self.name} ({where})" if self.name else where

    def to_json(self) -> dict[str, Any]:
        """The profile as stored and printed: the password source's description, never a password."""
        return {
            "config": self.config,
            "protocol": self.protocol,
            "url": self.url,
            "profile": self.name,
            "source": self.source,
            "trust": str(self.trust) if self.trust else None,
            "ca_bundle": str(self.ca_bundle) if self.ca_bundle else None,
            "auth": self.auth,
            "user": self.user,
            "password_source": self.password_source,
            "template": self.template,
            "attributes": [f"{n}:{v}" for n, v in self.attributes],
            "timeout": self.timeout,
            **{key: (str(value) if isinstance(value, Path) else value) for key, value in self.extra},
        }


@dataclass(frozen=True)
class CaOverrides:
    """What the command line adds to or changes in a profile."""

    trust: Path | None = None
    ca_bundle: Path | None = None
    auth: str | None = None
    user: str | None = None
    password_source: str | None = None
    timeout: float | None = None


def resolve_config(
    config: str | None,
    *,
    cas_files: Sequence[str | Path] = (),
    overrides: CaOverrides = CaOverrides(),
    env: Mapping[str, str] | None = None,
) -> CaProfile:
    """The CA for ``config``; without one, the cas.toml default, else ``file:`` (the current directory)."""
    profiles, default = load_cas(cas_files, env)
    if config is None:
        config = default or "file:"
    profile = profiles[config] if config in profiles else profile_for_url(config, known=sorted(profiles))
    profile = _apply(profile, overrides)
    _check(profile)
    return profile


def profile_for_url(config: str, *, known: Sequence[str] = ()) -> CaProfile:
    text = config.strip()
    if text == "file:" or text.startswith("file:"):
        directory = text[5:]
        if directory.startswith("//"):
            directory = directory[2:]
        return CaProfile(config, "file", str(Path(directory or ".").absolute()))
    transports: dict[str, tuple[str, ...]] = {"cmc": ("http", "https"), "certsrv": ("http", "https")}
    transports.update({spec.name: spec.transports for spec in PROTOCOL_SPECS.values()})
    for protocol, schemes in transports.items():
        for scheme in schemes:
            prefix = f"{protocol}+{scheme}://"
            if text.lower().startswith(prefix):
                url = f"{scheme}://{text[len(prefix) :]}"
                parse_base_url(url)
                return CaProfile(config, protocol, url)
    if text.lower().startswith(("http://", "https://")):
        parts = parse_base_url(text)
        if parts.path.rstrip("/").lower().endswith("/certsrv"):
            return CaProfile(config, "certsrv", text.rstrip("/"))
        raise CAConfigError(
            f"--config {text}: which protocol? write cmc+{parts.scheme}://... for CMC over HTTP or "
            f"certsrv+{parts.scheme}://.../certsrv for AD CS web enrollment"
        )
    if "\\" in text and "://" not in text:
        host = text.split("\\", 1)[0].strip()
        if host:
            return CaProfile(config, "certsrv", f"https://{host}/certsrv")
    listed = ", ".join(known) if known else "none (no cas.toml found)"
    raise CAConfigError(
        f"--config {text}: neither a CA URL (file:, cmc+, certsrv+, scep+, acme+, cmp+, est+ or cfssl+https://..., "
        "HOST\\CA) nor a profile "
        f"of cas.toml (known: {listed})"
    )


def cas_files(explicit: Sequence[str | Path] = (), env: Mapping[str, str] | None = None) -> list[Path]:
    """The cas.toml files to read, in order. Default locations are skipped when absent."""
    env = os.environ if env is None else env
    config_home = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME", "~")).expanduser() / ".config")
    files = [path for path in (SYSTEM_CAS, config_home / "tokenagent" / "cas.toml") if path.is_file()]
    if env.get(ENV_CAS):
        files.append(Path(env[ENV_CAS]))
    files.extend(Path(p) for p in explicit)
    return files


def load_cas(
    explicit: Sequence[str | Path] = (), env: Mapping[str, str] | None = None
) -> tuple[dict[str, CaProfile], str | None]:
    """Every profile by name, and the default profile's name."""
    profiles: dict[str, CaProfile] = {}
    default: str | None = None
    default_file: Path | None = None
    for path in cas_files(explicit, env):
        try:
            data = tomllib.loads(read_input(path, "CA profiles file").decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid TOML: {exc}") from None
        unknown = set(data) - {"default", "ca"}
        if unknown:
            raise InputError(f"{path}: unknown keys {', '.join(sorted(unknown))} (expected default and [ca.NAME])")
        if "default" in data:
            if not isinstance(data["default"], str):
                raise InputError(f"{path}: default must be the name of a [ca.NAME] profile")
            default, default_file = data["default"], path
        tables = data.get("ca", {})
        if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
            raise InputError(f"{path}: [ca] must hold one table per profile, [ca.NAME]")
        for name, table in tables.items():
            profiles[name] = _profile(name, table, path)
    if default is not None and default not in profiles:
        raise InputError(f"{default_file}: default = {default!r} names no [ca.{default}] profile")
    return profiles, default


def _profile(name: str, table: Mapping[str, Any], path: Path) -> CaProfile:
    where = f"{path}: [ca.{name}]"
    url = table.get("url")
    if not isinstance(url, str):
        raise InputError(f'{where}: needs url = "file:DIR", "cmc+https://...", "scep+http://..." (docs/ca.md)')
    try:
        base = profile_for_url(url)
    except CAConfigError as exc:
        raise InputError(f"{where}: {exc.message}") from None
    spec = PROTOCOL_SPECS.get(base.protocol)
    unknown = set(table) - _KEYS - set(spec.keys if spec else ())
    if unknown:
        owners = {key: other.name for other in PROTOCOL_SPECS.values() for key in other.keys if other is not spec}
        said = ", ".join(f"{key} (a {owners[key]} key)" if key in owners else key for key in sorted(unknown))
        raise InputError(f"{where}: unknown keys {said} (not keys of a {base.protocol} CA)")
    extra = _extra(table, spec, path, where) if spec else ()
    texts = {
        key: _text(table, key, where) for key in ("trust", "ca_bundle", "auth", "user", "password_source", "template")
    }
    attributes = table.get("attributes", [])
    if not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes):
        raise InputError(f'{where}: attributes must be a list of "Name:Value" strings')
    timeout = table.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InputError(f"{where}: timeout must be a number of seconds")
    try:
        pairs = parse_attributes(attributes)
    except UsageError as exc:
        raise InputError(f"{where}: {exc.message}") from None
    return replace(
        base,
        config=name,
        name=name,
        source=str(path),
        trust=_relative(texts["trust"], path),
        ca_bundle=_relative(texts["ca_bundle"], path),
        auth=texts["auth"] or "auto",
        user=texts["user"],
        password_source=texts["password_source"],
        template=texts["template"],
        attributes=pairs,
        timeout=float(timeout),
        extra=extra,
    )


def _extra(table: Mapping[str, Any], spec: ProtocolSpec, path: Path, where: str) -> tuple[tuple[str, Any], ...]:
    """The protocol's own keys, type-checked; file keys made absolute; secret sources parsed (not read)."""
    names = {str: "a string", bool: "true or false", int: "a whole number", list: "a list"}
    found: list[tuple[str, Any]] = []
    for key, kind in sorted(spec.keys.items()):
        if key not in table:
            continue
        value = table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InputError(f"{where}: {key} must be {names.get(kind, kind.__name__)}")
        if key in spec.path_keys:
            value = str(_relative(str(value), path))
        if key in spec.secret_keys:
            try:
                parse_secret_source(value, key, f"{where}: {key}")
            except UsageError as exc:
                raise InputError(f"{where}: {exc.message}") from None
        found.append((key, value))
    return tuple(found)


def _text(table: Mapping[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise InputError(f"{where}: {key} must be a string")
    return value


def _relative(value: str | None, path: Path) -> Path | None:
    if value is None:
        return None
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else path.parent / candidate


def _apply(profile: CaProfile, overrides: CaOverrides) -> CaProfile:
    changes: dict[str, Any] = {k: v for k, v in overrides.__dict__.items() if v is not None}
    return replace(profile, **changes) if changes else profile


def _check(profile: CaProfile) -> None:
    if profile.auth not in AUTH_METHODS:
        raise CAConfigError(f"auth {profile.auth!r}: use one of {', '.join(AUTH_METHODS)}")
    if not 0 < profile.timeout <= MAX_TIMEOUT:
        raise CAConfigError(f"timeout {profile.timeout:g}: give a number of seconds above 0 and up to {MAX_TIMEOUT:g}")
    if profile.password_source is not None:
        parse_secret_source(profile.password_source, "password", "CA password source")
    if profile.protocol == "cmc" and profile.trust is None:
        raise CAConfigError(
            f"{profile.describe()}: CMC responses are signed by the CA and must be checked against its certificate: "
            "give --ca-trust CA.pem (or trust in cas.toml)"
        )


def parse_attributes(texts: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """certreq -attrib: ``Name:Value`` pairs, several in one text separated by newlines or a literal ``\\n``."""
    pairs: list[tuple[str, str]] = []
    for text in texts:
        for line in text.replace("\\n", "\n").splitlines():
            if not line.strip():
                continue
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise UsageError(f"attribute {line.strip()!r} is not Name:Value (e.g. CertificateTemplate:User)")
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in line):
                raise UsageError(f"attribute {name.strip()!r} holds a control character")
            pairs.append((name.strip(), value.strip()))
    return tuple(pairs)


def _protocol_module(profile: CaProfile) -> Any:
    """The connector module of a `PROTOCOL_SPECS` protocol (imported on first use), None for the
    built-in ones (file, cmc, certsrv)."""
    spec = PROTOCOL_SPECS.get(profile.protocol)
    return importlib.import_module(f"tokenagent.ca.{spec.connector}") if spec is not None else None


def key_needs(profile: CaProfile) -> KeyNeeds | None:
    """What the profile's protocol needs of the key, before it is generated (SCEP: RSA that decrypts)."""
    needs = getattr(_protocol_module(profile), "key_needs", None)
    return needs(profile) if needs is not None else None


def request_attributes(profile: CaProfile) -> tuple[Any, ...]:
    """PKCS#10 attributes the profile's protocol wants in the request `enroll` makes (SCEP: its
    challengePassword, from a secret source read here, before the key is generated)."""
    attributes = getattr(_protocol_module(profile), "request_attributes", None)
    return tuple(attributes(profile)) if attributes is not None else ()


def open_connector(profile: CaProfile) -> Connector:
    """The connector for a resolved profile (nothing is contacted yet)."""
    from tokenagent.ca.trust import load_trust

    trust = load_trust(profile.trust) if profile.trust is not None else ()
    module = _protocol_module(profile)
    if module is not None:
        connector: Connector = module.connector_for(profile, http_settings(profile), trust)
        return connector
    if profile.protocol == "file":
        from tokenagent.ca.filedrop import FileDropConnector

        return FileDropConnector(Path(profile.url), trust=trust)
    settings = http_settings(profile)
    if profile.protocol == "cmc":
        from tokenagent.ca.cmc_http import CmcHttpConnector

        return CmcHttpConnector(profile.url, settings, trust=trust)
    from tokenagent.ca.certsrv import CertsrvConnector

    return CertsrvConnector(
        profile.url, settings, template=profile.template, attributes=profile.attributes, trust=trust
    )


def http_settings(profile: CaProfile) -> HttpSettings:
    """The HTTP client's settings of a profile (its password as a source, read only when asked)."""
    source = (
        parse_secret_source(profile.password_source, "password", "CA password source")
        if profile.password_source
        else None
    )
    return HttpSettings(
        timeout=profile.timeout, ca_bundle=profile.ca_bundle, auth=profile.auth, user=profile.user, password=source
    )
