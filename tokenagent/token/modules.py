"""Finding PKCS#11 modules the way the rest of Linux does.

Order of precedence (the first that gives anything wins):
1. ``--module`` (a path, or the name of a p11-kit registered module such as ``opensc-pkcs11``),
   or ``module-path=`` / ``module-name=`` in a ``pkcs11:`` URI;
2. ``TOKENAGENT_MODULE`` (one path or name, or several joined by ``:``);
3. the p11-kit registry (``/usr/share/p11-kit/modules``, ``/etc/pkcs11/modules``,
   ``~/.config/pkcs11/modules``; later directories override earlier ones by file name), plus
   SoftHSM's default path when no registered module already is SoftHSM.

Trust-policy modules (p11-kit-trust) are skipped: a CA trust store is never an enrollment target,
and its always-present "System Trust" token would make every "the only token" choice ambiguous.
A module file with ``disable-in: tokenagent`` (or an ``enable-in:`` without it) is skipped too.
"""

from __future__ import annotations

import glob
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenagent.errors import ModuleError

PROGRAM_NAME = "tokenagent"
ENV_MODULE = "TOKENAGENT_MODULE"

#: Modules known by name where p11-kit has no module file for them: absolute paths only, so a
#: file of that name in the working directory is never loaded
KNOWN_MODULE_PATHS: dict[str, tuple[str, ...]] = {
    "ykcs11": (
        "/usr/lib/x86_64-linux-gnu/libykcs11.so.2",
        "/usr/lib/aarch64-linux-gnu/libykcs11.so.2",
        "/usr/lib/libykcs11.so.2",
        "/usr/local/lib/libykcs11.so.2",
    ),
}

SYSTEM_REGISTRY_DIRS = ("/usr/share/p11-kit/modules", "/etc/pkcs11/modules")
USER_REGISTRY_DIR = "~/.config/pkcs11/modules"

SOFTHSM_DEFAULT_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    f"/usr/lib/{platform.machine()}-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
)


@dataclass(frozen=True)
class ModuleRef:
    """A module to load: its resolved path, a short name, and where we learned of it."""

    name: str
    path: str
    source: str


@dataclass(frozen=True)
class RegisteredModule:
    name: str
    path: str
    config_file: str
    trust_policy: bool
    enabled: bool


def default_registry_dirs() -> list[str]:
    return [*SYSTEM_REGISTRY_DIRS, os.path.expanduser(USER_REGISTRY_DIR)]


def parse_module_config(text: str) -> dict[str, str]:
    """p11-kit's ``pkcs11.conf(5)`` format: ``name: value`` lines, ``#`` comments."""
    config: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if sep:
            config[key.strip().lower()] = value.strip()
    return config


def _module_search_dirs() -> list[str]:
    # p11-kit resolves relative `module:` values against its compile-time module directory,
    # which Debian puts at /usr/lib/<multiarch>/pkcs11.
    return [
        f"/usr/lib/{platform.machine()}-linux-gnu/pkcs11",
        *sorted(glob.glob("/usr/lib/*-linux-gnu/pkcs11")),
        "/usr/lib/pkcs11",
        "/usr/lib64/pkcs11",
        "/usr/local/lib/pkcs11",
    ]


def _resolve_module_path(value: str) -> str:
    if os.path.isabs(value):
        return value
    for directory in _module_search_dirs():
        candidate = os.path.join(directory, value)
        if os.path.exists(candidate):
            return candidate
    return value


def _names(value: str | None) -> set[str]:
    return {item.strip() for item in (value or "").split(",") if item.strip()}


def registered_modules(dirs: Iterable[str] | None = None) -> list[RegisteredModule]:
    """Modules registered with p11-kit, later directories overriding earlier ones by file name."""
    by_name: dict[str, RegisteredModule] = {}
    for directory in default_registry_dirs() if dirs is None else dirs:
        for config_file in sorted(glob.glob(os.path.join(directory, "*.module"))):
            try:
                config = parse_module_config(Path(config_file).read_text(encoding="utf-8", errors="replace"))
            except OSError:
                continue
            name = Path(config_file).stem
            if "module" not in config:
                by_name.pop(name, None)  # a module file without `module:` disables the name
                continue
            enable_in, disable_in = _names(config.get("enable-in")), _names(config.get("disable-in"))
            enabled = PROGRAM_NAME not in disable_in and (not enable_in or PROGRAM_NAME in enable_in)
            by_name[name] = RegisteredModule(
                name=name,
                path=_resolve_module_path(config["module"]),
                config_file=config_file,
                trust_policy=config.get("trust-policy", "no").lower() in ("yes", "true"),
                enabled=enabled,
            )
    return list(by_name.values())


def _canonical(path: str) -> str:
    # The same .so under two names (Debian's /usr/lib/softhsm symlink) must load once:
    # a second C_Initialize through another path fails with CKR_CRYPTOKI_ALREADY_INITIALIZED.
    return os.path.realpath(path)


def resolve_module(spec: str, source: str, dirs: Iterable[str] | None = None) -> ModuleRef:
    """A path, or the name of a registered module, to a `ModuleRef`; `ModuleError` if neither."""
    if os.sep in spec or spec.endswith(".so"):
        if not os.path.exists(spec):
            raise ModuleError(f"PKCS#11 module not found: {spec} (from {source})")
        return ModuleRef(name=Path(spec).stem, path=_canonical(spec), source=source)
    for module in registered_modules(dirs):
        if module.name == spec:
            if not os.path.exists(module.path):
                raise ModuleError(f"p11-kit module '{spec}' points at a missing file: {module.path}")
            return ModuleRef(name=spec, path=_canonical(module.path), source=module.config_file)
    for path in KNOWN_MODULE_PATHS.get(spec, ()):
        if os.path.exists(path):  # Debian's ykcs11 registers no p11-kit module file
            return ModuleRef(name=spec, path=_canonical(path), source="default")
    raise ModuleError(f"PKCS#11 module not found: '{spec}' is neither a file nor a p11-kit module name")


def installed(spec: str) -> bool:
    """Whether a module name resolves (a built-in provider adds an optional module only then)."""
    try:
        resolve_module(spec, "built-in")
    except ModuleError:
        return False
    return True


def discover_modules(
    explicit: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    registry_dirs: Iterable[str] | None = None,
) -> list[ModuleRef]:
    """The modules to search for tokens, deduplicated by real path, in precedence order."""
    env = os.environ if env is None else env
    dirs = None if registry_dirs is None else list(registry_dirs)
    if explicit:
        refs = [resolve_module(spec, "--module", dirs) for spec in explicit]
    elif env.get(ENV_MODULE):
        specs = [s for s in env[ENV_MODULE].split(":") if s]
        refs = [resolve_module(spec, ENV_MODULE, dirs) for spec in specs]
    else:
        refs = [
            ModuleRef(name=m.name, path=_canonical(m.path), source=m.config_file)
            for m in registered_modules(dirs)
            if m.enabled and not m.trust_policy and os.path.exists(m.path)
        ]
        if not any("softhsm" in Path(r.path).name for r in refs):
            for path in SOFTHSM_DEFAULT_PATHS:
                if os.path.exists(path):
                    refs.append(ModuleRef(name="softhsm2", path=_canonical(path), source="default"))
                    break
    unique: dict[str, ModuleRef] = {}
    for ref in refs:
        unique.setdefault(ref.path, ref)
    if not unique:
        raise ModuleError(
            "no PKCS#11 module found: give --module PATH or set TOKENAGENT_MODULE "
            "(or install one that registers with p11-kit, e.g. opensc-pkcs11 or softhsm2)"
        )
    return list(unique.values())
