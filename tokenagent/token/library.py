"""Loading PKCS#11 modules and naming their tokens.

`load_module` keeps one loaded library per real path for the life of the process: C_Initialize
is not cheap on real middleware, and a second C_Initialize of the same library fails.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from pkcs11 import SlotFlag, TokenFlag

from tokenagent.display import escape
from tokenagent.errors import AmbiguousTokenError, ModuleError, TokenNotFoundError, TokenOperationError
from tokenagent.token import raw
from tokenagent.token.ckr import rv_name
from tokenagent.token.implementations import implementation_of
from tokenagent.token.modules import ModuleRef, discover_modules
from tokenagent.token.uri import Pkcs11Uri, is_pkcs11_uri, parse_uri

log = logging.getLogger("tokenagent")

CKR_ARGUMENTS_BAD = 0x7

#: CK_INFO.manufacturerID of Yubico's ykcs11 ("Yubico (www.yubico.com)")
YKCS11_MANUFACTURER = "Yubico"


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).rstrip("\x00 ").strip()


def _field(structure: ctypes.Structure, name: str) -> str:
    return _text(raw.text_field(structure, name))


@dataclass
class LoadedModule:
    ref: ModuleRef
    #: CK_INFO, read once when the module was loaded
    info: raw.CK_INFO
    #: True after the first slot listing: C_Initialize has just looked for readers, later
    #: listings ask the module to look again (`raw.slot_ids`)
    listed: bool = False

    @property
    def path(self) -> str:
        return self.ref.path

    @property
    def description(self) -> str:
        return _field(self.info, "libraryDescription")

    @property
    def manufacturer(self) -> str:
        return _field(self.info, "manufacturerID")

    @property
    def library_version(self) -> str:
        return f"{self.info.libraryVersion.major}.{self.info.libraryVersion.minor}"

    @property
    def cryptoki_version(self) -> str:
        return f"{self.info.cryptokiVersion.major}.{self.info.cryptokiVersion.minor}"


_loaded: dict[str, LoadedModule] = {}


#: tpm2-pkcs11 and the TSS under it log every failed TCTI probe on stderr (a machine without a TPM
#: prints a dozen ERROR lines on every run); tokenagent reports a module that fails in one line
_QUIET_TPM = {"TSS2_LOG": "all+NONE", "TPM2_PKCS11_LOG_LEVEL": "0"}


#: Set by `use_os_locking` (the station, which drives several cards from threads)
_OS_LOCKING = False


def use_os_locking() -> None:
    """Initialize every module loaded from now on with CKF_OS_LOCKING_OK: the application calls it
    from several threads. C_Initialize(NULL) promises single-threaded use, and SoftHSM then works
    without its mutexes. Modules already loaded keep their setting."""
    global _OS_LOCKING
    _OS_LOCKING = True


def _init_hint(ref: ModuleRef, rv: int) -> str:
    if ref.init_args is None and rv == CKR_ARGUMENTS_BAD:
        return (
            " (this module wants an init string in C_Initialize, as NSS softokn does: name a p11-kit module "
            "file whose x-init-reserved gives it, e.g. --module DIR/nss-softokn.module; see docs/tokens.md)"
        )
    return ""


def load_module(ref: ModuleRef) -> LoadedModule:
    """C_GetFunctionList, C_Initialize and C_GetInfo, once per module path and process. A module
    something else in the process initialized already (CKR_CRYPTOKI_ALREADY_INITIALIZED) is used
    as it is, and left for that one to finalize."""
    cached = _loaded.get(ref.path)
    if cached is not None:
        return cached
    if "tpm2_pkcs11" in os.path.basename(ref.path):
        for name, value in _QUIET_TPM.items():
            os.environ.setdefault(name, value)  # read by the library when it starts; the user's own wins
    failed = f"cannot load PKCS#11 module {ref.path}"
    try:
        rv = raw.initialize(ref.path, ref.init_args, os_locking=_OS_LOCKING)
    except TokenOperationError as exc:  # not a shared object, or no C_GetFunctionList
        raise ModuleError(f"{failed}: {exc.one_line()}") from None
    if rv not in (raw.CKR_OK, raw.CKR_CRYPTOKI_ALREADY_INITIALIZED):
        raise ModuleError(f"{failed}: C_Initialize failed: {rv_name(rv)}{_init_hint(ref, rv)}")
    rv, info = raw.get_info(ref.path)
    if rv != raw.CKR_OK:
        raise ModuleError(f"{failed}: C_GetInfo failed: {rv_name(rv)}")
    module = LoadedModule(ref=ref, info=info)
    _loaded[ref.path] = module
    return module


@dataclass
class TokenHandle:
    """A token in a slot of a loaded module: what selection returns and sessions open."""

    module: LoadedModule
    slot_id: int
    #: CK_TOKEN_INFO as last read (the listing that found the token, or `refresh`)
    info: raw.CK_TOKEN_INFO
    #: False once a login may have changed the PIN state flags in `info` (`open_session` re-reads)
    current: bool = True

    @property
    def label(self) -> str:
        return _field(self.info, "label")

    @property
    def serial(self) -> str:
        return _field(self.info, "serialNumber")

    @property
    def manufacturer(self) -> str:
        return _field(self.info, "manufacturerID")

    @property
    def model(self) -> str:
        return _field(self.info, "model")

    @property
    def flags(self) -> TokenFlag:
        return TokenFlag(self.info.flags)

    @property
    def initialized(self) -> bool:
        return bool(self.info.flags & TokenFlag.TOKEN_INITIALIZED)

    @cached_property
    def slot_info(self) -> raw.CK_SLOT_INFO | None:
        """CK_SLOT_INFO, read when first asked for (a URI naming the slot, a PIV card's reader)."""
        rv, info = raw.slot_info(self.module.path, self.slot_id)
        return info if rv == raw.CKR_OK else None

    @property
    def slot_description(self) -> str:
        return _field(self.slot_info, "slotDescription") if self.slot_info is not None else ""

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
        """Re-read CK_TOKEN_INFO (PIN state flags change after every C_Login)."""
        rv, info = raw.read_token_info(self.module.path, self.slot_id)
        if rv != raw.CKR_OK:
            raise TokenOperationError(f"token '{self.label}' is no longer present: {rv_name(rv)}")
        self.info = info
        self.current = True
        return self

    @property
    def model_field(self) -> str:
        """CK_TOKEN_INFO.model for URIs: as the token wrote it, less the blank padding, so other
        tools match it (tpm2-pkcs11 pads with NULs: p11-kit and GnuTLS want them as %00)."""
        return self.info.field("model").rstrip(b" ").decode("utf-8", errors="replace")

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
    slot_id: int
    info: raw.CK_SLOT_INFO
    token: TokenHandle | None

    @property
    def description(self) -> str:
        return _field(self.info, "slotDescription")

    @property
    def manufacturer(self) -> str:
        return _field(self.info, "manufacturerID")

    @property
    def flags(self) -> SlotFlag:
        return SlotFlag(self.info.flags)


def _slot_ids(module: LoadedModule, *, token_present: bool) -> list[int]:
    rv, ids = raw.slot_ids(module.path, token_present=token_present, rescan=module.listed)
    if rv != raw.CKR_OK:
        raise ModuleError(f"{module.path}: C_GetSlotList failed: {rv_name(rv)}")
    module.listed = True
    return ids


def _token_in(module: LoadedModule, slot_id: int) -> TokenHandle | None:
    rv, info = raw.read_token_info(module.path, slot_id)
    if rv != raw.CKR_OK:  # removed since the slot list, or a card the module does not know
        log.warning("slot %s of %s: cannot read its token: %s", slot_id, module.path, rv_name(rv))
        return None
    return TokenHandle(module, slot_id, info)


def list_slots(module: LoadedModule) -> list[SlotEntry]:
    """Every slot, with or without a token, and its CK_SLOT_INFO: listings and reader matching."""
    entries = []
    for slot_id in _slot_ids(module, token_present=False):
        rv, info = raw.slot_info(module.path, slot_id)
        if rv != raw.CKR_OK:
            log.warning("slot %s of %s: cannot read it: %s", slot_id, module.path, rv_name(rv))
            continue
        token = _token_in(module, slot_id) if info.flags & SlotFlag.TOKEN_PRESENT else None
        if token is not None:
            token.__dict__["slot_info"] = info  # already read: the cached_property's value
        entries.append(SlotEntry(module, slot_id, info, token))
    return entries


#: inside `one_listing`: each module's tokens as first listed there (per thread: the station's
#: card threads each have their own)
_LISTINGS: contextvars.ContextVar[dict[str, list[TokenHandle]] | None] = contextvars.ContextVar(
    "tokenagent_listings", default=None
)


@contextlib.contextmanager
def one_listing() -> Iterator[None]:
    """Within this, a module's tokens are listed once and later selections reuse that listing: one
    operation that selects two tokens (the user's and the agent's in `new --agent`) walks the
    slot list once (issue 15). Outside it, every selection lists afresh (the station, which sees
    cards come and go, wraps each card's run, not its whole life)."""
    if _LISTINGS.get() is not None:
        yield  # nested: the outer one's listing
        return
    token = _LISTINGS.set({})
    try:
        yield
    finally:
        _LISTINGS.reset(token)


def iter_tokens(modules: Sequence[LoadedModule]) -> Iterator[TokenHandle]:
    """Every token present: one C_GetSlotList (slots with a token) and one C_GetTokenInfo each."""
    listings = _LISTINGS.get()
    for module in modules:
        if listings is not None and module.path in listings:
            yield from listings[module.path]
            continue
        handles = []
        for slot_id in _slot_ids(module, token_present=True):
            token = _token_in(module, slot_id)
            if token is not None:
                handles.append(token)
        if listings is not None:
            listings[module.path] = handles
        yield from handles


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
    module = handle.module
    wanted: list[tuple[str, Callable[[], str]]] = [
        ("token", lambda: handle.label),
        ("serial", lambda: handle.serial),
        ("manufacturer", lambda: handle.manufacturer),
        ("model", lambda: handle.model),
        ("slot-id", lambda: str(handle.slot_id)),
        ("slot-description", lambda: handle.slot_description),
        ("slot-manufacturer", lambda: _field(handle.slot_info, "manufacturerID") if handle.slot_info else ""),
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
    return handle.slot_description


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
