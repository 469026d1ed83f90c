"""Loading PKCS#11 modules and naming their tokens.

`load_module` keeps one loaded library per real path for the life of the process: C_Initialize
is not cheap on real middleware, and a second C_Initialize of the same library fails.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import pkcs11
from pkcs11 import SlotFlag, TokenFlag, _pkcs11
from pkcs11.exceptions import PKCS11Error

from tokenagent.display import escape
from tokenagent.errors import AmbiguousTokenError, ModuleError, TokenNotFoundError, TokenOperationError
from tokenagent.token import raw
from tokenagent.token.ckr import exception_rv_name, rv_name
from tokenagent.token.implementations import implementation_of
from tokenagent.token.modules import ModuleRef, discover_modules
from tokenagent.token.uri import Pkcs11Uri, is_pkcs11_uri, parse_uri

log = logging.getLogger("tokenagent")

#: CK_INFO.manufacturerID of Yubico's ykcs11 ("Yubico (www.yubico.com)")
YKCS11_MANUFACTURER = "Yubico"


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).rstrip("\x00 ").strip()


@dataclass
class LoadedModule:
    ref: ModuleRef
    lib: pkcs11.lib

    @property
    def path(self) -> str:
        return self.ref.path

    @property
    def description(self) -> str:
        return _text(self.lib.library_description)

    @property
    def manufacturer(self) -> str:
        return _text(self.lib.manufacturer_id)

    @property
    def library_version(self) -> str:
        major, minor = self.lib.library_version
        return f"{major}.{minor}"

    @property
    def cryptoki_version(self) -> str:
        major, minor = self.lib.cryptoki_version
        return f"{major}.{minor}"


_loaded: dict[str, LoadedModule] = {}


class _InitArgsLib(_pkcs11.lib):
    """python-pkcs11's library object for a module that needs an init string in C_Initialize
    (NSS softokn's configdir=...): python-pkcs11 always passes NULL. ``initialize`` is a Cython
    cpdef method, so this override is what its constructor calls. The string is looked up by path
    (Cython hands every constructor argument to the base class's __cinit__, which takes one).
    python-pkcs11 then believes the module uninitialized and never calls C_Finalize: the process
    exit ends it, as after a crash."""

    init_args: ClassVar[dict[str, str]] = {}

    def initialize(self) -> None:
        rv = raw.initialize(self.so, self.init_args[self.so])
        if rv not in (raw.CKR_OK, raw.CKR_CRYPTOKI_ALREADY_INITIALIZED):
            raise PKCS11Error(f"C_Initialize with CK_C_INITIALIZE_ARGS failed: {rv_name(rv)}")


#: tpm2-pkcs11 and the TSS under it log every failed TCTI probe on stderr (a machine without a TPM
#: prints a dozen ERROR lines on every run); tokenagent reports a module that fails in one line
_QUIET_TPM = {"TSS2_LOG": "all+NONE", "TPM2_PKCS11_LOG_LEVEL": "0"}


#: Set by `use_os_locking` (the station, which drives several cards from threads)
_OS_LOCKING = False


def use_os_locking() -> None:
    """Initialize every module loaded from now on with CKF_OS_LOCKING_OK: the application calls it
    from several threads. python-pkcs11 passes NULL to C_Initialize, which promises single-threaded
    use, and SoftHSM then works without its mutexes. Modules already loaded keep their setting."""
    global _OS_LOCKING
    _OS_LOCKING = True


def _open_library(ref: ModuleRef) -> pkcs11.lib:
    if "tpm2_pkcs11" in os.path.basename(ref.path):
        for name, value in _QUIET_TPM.items():
            os.environ.setdefault(name, value)  # read by the library when it starts; the user's own wins
    if not ref.init_args and not _OS_LOCKING:
        return pkcs11.lib(ref.path)
    _InitArgsLib.init_args[ref.path] = ref.init_args or ""
    return _InitArgsLib(ref.path)


def _init_hint(ref: ModuleRef, exc: BaseException) -> str:
    if ref.init_args is None and "ArgumentsBad" in type(exc).__name__ + str(exc):
        return (
            " (this module wants an init string in C_Initialize, as NSS softokn does: name a p11-kit module "
            "file whose x-init-reserved gives it, e.g. --module DIR/nss-softokn.module; see docs/tokens.md)"
        )
    return ""


def load_module(ref: ModuleRef) -> LoadedModule:
    cached = _loaded.get(ref.path)
    if cached is not None:
        return cached
    try:
        lib = _open_library(ref)
    except (OSError, PKCS11Error, RuntimeError, TokenOperationError) as exc:
        raise ModuleError(f"cannot load PKCS#11 module {ref.path}: {_reason(exc)}{_init_hint(ref, exc)}") from exc
    module = LoadedModule(ref=ref, lib=lib)
    _loaded[ref.path] = module
    return module


@dataclass
class TokenHandle:
    """A token in a slot of a loaded module: what selection returns and sessions open."""

    module: LoadedModule
    slot: pkcs11.Slot
    token: pkcs11.Token
    #: CK_TOKEN_INFO as last read by `refresh` (flags, memory, the model as written), None before
    info: raw.CK_TOKEN_INFO | None = None

    @property
    def slot_id(self) -> int:
        return int(self.slot.slot_id)

    @property
    def label(self) -> str:
        return _text(self.token.label)

    @property
    def serial(self) -> str:
        return _text(self.token.serial)

    @property
    def manufacturer(self) -> str:
        return _text(self.token.manufacturer_id)

    @property
    def model(self) -> str:
        return _text(self.token.model)

    @property
    def flags(self) -> TokenFlag:
        return TokenFlag(self.info.flags) if self.info is not None else self.token.flags

    @property
    def initialized(self) -> bool:
        return bool(self.token.flags & TokenFlag.TOKEN_INITIALIZED)

    @property
    def implementation(self) -> str:
        """Which PKCS#11 implementation serves the token (token/implementations.py)."""
        return implementation_of(self.module.manufacturer)

    @property
    def is_piv(self) -> bool:
        """A PIV card served by Yubico's ykcs11: fixed slots, the management key as SO PIN
        (providers/piv.py). OpenSC's PIV driver is not one: it cannot write to the card."""
        return self.module.manufacturer.startswith(YKCS11_MANUFACTURER)

    def refresh(self) -> TokenHandle:
        """Re-read CK_TOKEN_INFO (PIN state flags change after every C_Login): one call that also
        gives what python-pkcs11 does not keep (free memory, the model's NUL padding)."""
        rv, info = raw.read_token_info(self.module.path, self.slot_id)
        if rv != raw.CKR_OK:
            raise TokenOperationError(f"token '{self.label}' is no longer present: {rv_name(rv)}")
        self.info = info
        return self

    @cached_property
    def model_field(self) -> str:
        """CK_TOKEN_INFO.model for URIs: as the token wrote it, less the blank padding, so other
        tools match it (tpm2-pkcs11 pads with NULs: p11-kit and GnuTLS want them as %00)."""
        info = self.info or raw.token_info(self.module.path, self.slot_id)
        if info is None:
            return self.model
        return info.field("model").rstrip(b" ").decode("utf-8", errors="replace")

    def uri(self) -> Pkcs11Uri:
        return Pkcs11Uri(
            path={
                "manufacturer": self.manufacturer,
                "model": self.model_field,
                "serial": self.serial,
                "token": self.label,
            }
        )

    def describe(self) -> str:
        # for people: the label, serial and model come from the token, so they are shown escaped
        return escape(f"'{self.label}' (serial {self.serial}, {self.model}, slot {self.slot_id})")


@dataclass
class SlotEntry:
    module: LoadedModule
    slot: pkcs11.Slot
    token: TokenHandle | None

    @property
    def slot_id(self) -> int:
        return int(self.slot.slot_id)

    @property
    def description(self) -> str:
        return _text(self.slot.slot_description)

    @property
    def manufacturer(self) -> str:
        return _text(self.slot.manufacturer_id)

    @property
    def flags(self) -> SlotFlag:
        return self.slot.flags


def list_slots(module: LoadedModule) -> list[SlotEntry]:
    try:
        slots = module.lib.get_slots(token_present=False)
    except PKCS11Error as exc:
        raise ModuleError(f"{module.path}: C_GetSlotList failed: {_reason(exc)}") from exc
    entries = []
    for slot in slots:
        token = None
        if slot.flags & SlotFlag.TOKEN_PRESENT:
            try:
                token = TokenHandle(module, slot, slot.get_token())
            except PKCS11Error as exc:
                log.warning("slot %s of %s: cannot read its token: %s", slot.slot_id, module.path, _reason(exc))
        entries.append(SlotEntry(module, slot, token))
    return entries


def iter_tokens(modules: Sequence[LoadedModule]) -> Iterator[TokenHandle]:
    for module in modules:
        for entry in list_slots(module):
            if entry.token is not None:
                yield entry.token


@dataclass(frozen=True)
class TokenSelector:
    """``--token``: a label, a serial number, or a ``pkcs11:`` URI; None means "the only token"."""

    text: str | None
    uri: Pkcs11Uri | None = None

    @classmethod
    def parse(cls, text: str | None) -> TokenSelector:
        if text is not None and is_pkcs11_uri(text):
            return cls(text, parse_uri(text))
        return cls(text or None)

    def describe(self) -> str:
        if self.uri is not None:
            return str(self.uri.token_part())
        return repr(self.text) if self.text else "(any)"

    def matches(self, handle: TokenHandle) -> bool:
        if self.uri is not None:
            return _uri_matches(self.uri, handle)
        if self.text is None:
            return handle.initialized
        return self.text in (handle.label, handle.serial)


def _uri_matches(uri: Pkcs11Uri, handle: TokenHandle) -> bool:
    module, entry_slot = handle.module, handle.slot
    wanted: list[tuple[str, Callable[[], str]]] = [
        ("token", lambda: handle.label),
        ("serial", lambda: handle.serial),
        ("manufacturer", lambda: handle.manufacturer),
        ("model", lambda: handle.model),
        ("slot-id", lambda: str(handle.slot_id)),
        ("slot-description", lambda: _text(entry_slot.slot_description)),
        ("slot-manufacturer", lambda: _text(entry_slot.manufacturer_id)),
        ("library-manufacturer", lambda: module.manufacturer),
        ("library-description", lambda: module.description),
        ("library-version", lambda: module.library_version),
    ]
    # NUL padding (tpm2-pkcs11's model) is not part of the value, on either side
    return all(uri.path[name].rstrip("\x00 ") == actual() for name, actual in wanted if name in uri.path)


def recorded_token(label: str, serial: str) -> TokenSelector:
    """The token a pending request or intent names: by label and serial, because a serial alone is
    not unique (NSS's two tokens and tpm2-pkcs11's empty slot all report 0000000000000000)."""
    return TokenSelector.parse(str(Pkcs11Uri(path={"token": label, "serial": serial})))


def modules_for(module_specs: Sequence[str], selector: TokenSelector) -> list[LoadedModule]:
    """Load the modules to search: ``--module``, the URI's module-path/-name, or discovery."""
    specs = list(module_specs)
    if not specs and selector.uri is not None:
        specs = [s for s in (selector.uri.module_path, selector.uri.module_name) if s][:1]
    refs = discover_modules(specs)
    loaded: list[LoadedModule] = []
    errors: list[ModuleError] = []
    for ref in refs:
        try:
            loaded.append(load_module(ref))
        except ModuleError as exc:
            if specs:  # a module the user named must load
                raise
            # p11-kit's `critical: no` (Debian's tpm2_pkcs11.module: no TPM on most machines)
            (log.warning if ref.critical else log.info)("%s", exc.one_line())
            errors.append(exc)
    if not loaded:
        raise errors[0] if errors else ModuleError("no PKCS#11 module could be loaded")
    return loaded


def _reader(handle: TokenHandle) -> str:
    return _text(handle.slot.slot_description)


def prefer_piv(handles: list[TokenHandle]) -> list[TokenHandle]:
    """A card that ykcs11 serves as a PIV card, and another module (OpenSC) serves too, is kept
    only through ykcs11: both name the slot after the PC/SC reader, and OpenSC's PIV driver cannot
    generate keys or write certificates."""
    piv_readers = {_reader(h) for h in handles if h.is_piv and _reader(h)}
    return [h for h in handles if h.is_piv or not any(_reader(h).startswith(r) for r in piv_readers)]


def select_token(selector: TokenSelector, modules: Sequence[LoadedModule], *, piv_first: bool = False) -> TokenHandle:
    """The one token the selector names; a one-line error listing candidates otherwise.
    ``piv_first``: see `prefer_piv` (the built-in smart-card providers search OpenSC and ykcs11)."""
    handles = list(iter_tokens(modules))
    if piv_first:
        handles = prefer_piv(handles)
    found = [handle for handle in handles if selector.matches(handle)]
    if len(found) == 1:
        return found[0]
    if not found:
        present = [h.describe() for h in handles if h.initialized]
        listed = "; ".join(present) if present else "none"
        # which modules were asked, and how to ask another: the token may be behind one not searched
        searched = ", ".join(escape(module.ref.name or module.path) for module in modules) or "none"
        hint = f"modules searched: {searched} (another: --module NAME|PATH or TOKENAGENT_MODULE)"
        if selector.text is None:
            raise TokenNotFoundError(f"no initialized token found (insert a card); {hint}")
        raise TokenNotFoundError(f"no token matches {selector.describe()}; tokens present: {listed}; {hint}")
    candidates = "; ".join(h.describe() for h in found)
    if selector.text is None:
        raise AmbiguousTokenError(f"several tokens present, choose one with --token: {candidates}")
    raise AmbiguousTokenError(
        f"{len(found)} tokens match {selector.describe()}: {candidates}; use --token pkcs11:serial=..."
    )


def find_token(token: str | None, module_specs: Sequence[str] = ()) -> TokenHandle:
    """Library entry point: `--token` and `--module` values to a `TokenHandle`."""
    selector = TokenSelector.parse(token)
    return select_token(selector, modules_for(module_specs, selector))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PKCS11Error) and type(exc) is not PKCS11Error:
        return exception_rv_name(exc)  # CKR_GENERAL_ERROR, as the module said it
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
