"""Finding PKCS#11 modules the way the rest of Linux does.

Order of precedence (the first that gives anything wins):
1. ``--module`` (a path, a p11-kit module file ``NAME.module``, or the name of a p11-kit registered
   module such as ``opensc-pkcs11``), or ``module-path=`` / ``module-name=`` in a ``pkcs11:`` URI;
2. ``TOKENAGENT_MODULE`` (one path or name, or several joined by ``:``);
3. the p11-kit registry (``/usr/share/p11-kit/modules``, ``/etc/pkcs11/modules``,
   ``~/.config/pkcs11/modules``; later directories override earlier ones by file name), plus
   SoftHSM's default path when no registered module already is SoftHSM.

Trust-policy modules (p11-kit-trust) are skipped: a CA trust store is never an enrollment target,
and its always-present "System Trust" token would make every "the only token" choice ambiguous.
A module file with ``disable-in: tokenagent`` (or an ``enable-in:`` without it) is skipped too.

A name that is not a path (no ``/``) is never looked up in the working directory: a file of that
name there would otherwise be loaded into a process holding PINs. It is a registered module's name
(or the file name its ``module:`` line gives), or a file in the system's PKCS#11 module directories.
A module file's ``x-init-reserved`` is the string C_Initialize gets in ``pReserved``, as p11-kit
passes it: NSS softokn will not initialize without its ``configdir=...`` there.
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
    """A module to load: its resolved path, a short name, where we learned of it, and the init
    string C_Initialize gets (a module file's ``x-init-reserved``)."""

    name: str
    path: str
    source: str
    init_args: str | None = None
    config_file: str | None = None  # the p11-kit module file it came from, if any
    critical: bool = True  # p11-kit's `critical: no`: a failure to load it is not worth a warning

    @property
    def spec(self) -> str:
        """What loads this module again later (the pending store records it): the module file when
        the module needs its init string, the path otherwise."""
        return self.config_file if self.init_args and self.config_file else self.path


@dataclass(frozen=True)
class RegisteredModule:
    name: str
    path: str
    config_file: str
    trust_policy: bool
    enabled: bool
    init_args: str | None = None
    module_value: str = ""  # the `module:` line as written
    critical: bool = True

    def ref(self, source: str | None = None) -> ModuleRef:
        return ModuleRef(
            name=self.name,
            path=_canonical(self.path),
            source=source or self.config_file,
            init_args=self.init_args,
            config_file=self.config_file,
            critical=self.critical,
        )


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
    return list(
        dict.fromkeys(
            [
                f"/usr/lib/{platform.machine()}-linux-gnu/pkcs11",
                *sorted(glob.glob("/usr/lib/*-linux-gnu/pkcs11")),
                "/usr/lib/pkcs11",
                "/usr/lib64/pkcs11",
                "/usr/local/lib/pkcs11",
            ]
        )
    )


def _library_dirs() -> list[str]:
    """Where a bare library file name is looked for after the PKCS#11 directories (libsoftokn3.so,
    libykcs11.so.2 live in the plain library directory). Never the working directory."""
    return list(
        dict.fromkeys(
            [
                *_module_search_dirs(),
                f"/usr/lib/{platform.machine()}-linux-gnu",
                "/usr/lib64",
                "/usr/lib",
                "/usr/local/lib",
            ]
        )
    )


def _resolve_module_path(value: str) -> str:
    if os.path.isabs(value):
        return value
    for directory in _module_search_dirs():
        candidate = os.path.join(directory, value)
        if os.path.exists(candidate):
            return candidate
    # never relative to the working directory: an absolute path that does not exist, so the
    # caller reports the module as missing
    return os.path.join(_module_search_dirs()[0], value)


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
            by_name[name] = _registered(name, config, config_file, enabled)
    return list(by_name.values())


def _registered(name: str, config: Mapping[str, str], config_file: str, enabled: bool) -> RegisteredModule:
    return RegisteredModule(
        name=name,
        path=_resolve_module_path(config["module"]),
        config_file=config_file,
        trust_policy=config.get("trust-policy", "no").lower() in ("yes", "true"),
        enabled=enabled,
        init_args=config.get("x-init-reserved") or None,
        module_value=config["module"],
        critical=config.get("critical", "yes").lower() not in ("no", "false"),
    )


def read_module_file(path: str, source: str) -> ModuleRef:
    """A p11-kit module file named directly (``--module DIR/nss.module``): its ``module:`` and
    ``x-init-reserved:``, whatever its ``enable-in``/``disable-in`` say (the user chose it)."""
    try:
        config = parse_module_config(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        raise ModuleError(f"cannot read p11-kit module file {path} (from {source}): {exc.strerror}") from None
    if "module" not in config:
        raise ModuleError(f"p11-kit module file {path} (from {source}) has no 'module:' line")
    module = _registered(Path(path).stem, config, os.path.abspath(path), True)
    if not os.path.exists(module.path):
        raise ModuleError(f"p11-kit module file {path} (from {source}) points at a missing file: {module.path}")
    return module.ref(source)


def _canonical(path: str) -> str:
    # The same .so under two names (Debian's /usr/lib/softhsm symlink) must load once:
    # a second C_Initialize through another path fails with CKR_CRYPTOKI_ALREADY_INITIALIZED.
    return os.path.realpath(path)


def resolve_module(spec: str, source: str, dirs: Iterable[str] | None = None) -> ModuleRef:
    """A path, a p11-kit module file, the name of a registered module, or a library file name in
    the system's module directories, to a `ModuleRef`; `ModuleError` saying where it looked if none."""
    if os.sep in spec:
        if spec.endswith(".module"):
            return read_module_file(spec, source)
        if not os.path.exists(spec):
            raise ModuleError(f"PKCS#11 module not found: {spec} (from {source})")
        return ModuleRef(name=Path(spec).stem, path=_canonical(spec), source=source)
    registry = registered_modules(dirs)
    for module in registry:
        # by p11-kit name (tpm2_pkcs11), or by the library its file names (libtpm2_pkcs11.so)
        if spec in (module.name, module.module_value, os.path.basename(module.path)):
            if not os.path.exists(module.path):
                raise ModuleError(
                    f"p11-kit module '{module.name}' ({module.config_file}, from {source}) points at a "
                    f"missing file: {module.path}"
                )
            return module.ref()
    for directory in _library_dirs():
        candidate = os.path.join(directory, spec)
        if os.path.isfile(candidate):
            return ModuleRef(name=Path(spec).stem, path=_canonical(candidate), source=source)
    for path in KNOWN_MODULE_PATHS.get(spec, ()):
        if os.path.exists(path):  # Debian's ykcs11 registers no p11-kit module file
            return ModuleRef(name=spec, path=_canonical(path), source="default")
    registry_dirs = ", ".join(default_registry_dirs() if dirs is None else dirs)
    raise ModuleError(
        f"PKCS#11 module '{spec}' (from {source}) not found: no p11-kit module of that name in "
        f"{registry_dirs}, no such file in {', '.join(_library_dirs())} (the working directory is "
        "never searched: give a path to use a file there)"
    )


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
    source: str = "--module",
) -> list[ModuleRef]:
    """The modules to search for tokens, deduplicated by real path, in precedence order.
    ``source`` says where ``explicit`` came from, for messages."""
    env = os.environ if env is None else env
    dirs = None if registry_dirs is None else list(registry_dirs)
    if explicit:
        refs = [resolve_module(spec, source, dirs) for spec in explicit]
    elif env.get(ENV_MODULE):
        specs = [s for s in env[ENV_MODULE].split(":") if s]
        refs = [resolve_module(spec, ENV_MODULE, dirs) for spec in specs]
    else:
        refs = [
            m.ref() for m in registered_modules(dirs) if m.enabled and not m.trust_policy and os.path.exists(m.path)
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
