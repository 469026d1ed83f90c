"""PKCS#11 calls made directly, through the module's CK_FUNCTION_LIST: every call tokenagent makes.
python-pkcs11 supplies the vocabulary (its Attribute, Mechanism and flag enums, its attribute table
for unpacking values, its exception classes), not the calls.

Why (issue 15): on a smart card each call is an APDU round trip, and python-pkcs11 spends calls
tokenagent does not need. It turns every object a search finds into a Python class built from a
bulk read of ten capability attributes (on SoftHSM that read fails, two attributes being PKCS#11
3.2's, and is retried one attribute at a time), asks for every attribute's size before reading
it, asks for a signature's size before making it, reads CKA_KEY_TYPE before each signature, and
adds usage attributes of its own to generation templates (FALSE, which tpm2-pkcs11 refuses). So:
- searches give handles (`find_handles`) and `RawObject`s, which read in one call into buffers
  sized in advance (`read_raw`) and write with C_SetAttributeValue;
- `generate_key_pair` sends exactly the plan's templates; `sign` makes C_SignInit and one C_Sign;
- `read_token_info` gives CK_TOKEN_INFO whole (free memory, the model's NUL padding);
- `initialize`: C_Initialize with CK_C_INITIALIZE_ARGS.pReserved set to a module's init string,
  which python-pkcs11 cannot pass (it calls C_Initialize(NULL));
- loading a module is C_GetFunctionList, C_Initialize and C_GetInfo (python-pkcs11 adds two
  C_GetInterface probes); a token listing is one C_GetSlotList into a sized buffer and one
  C_GetTokenInfo per token (python-pkcs11: two C_GetSlotList, C_GetSlotInfo and C_GetTokenInfo per
  slot, and its Token objects cannot be made from the values read); a `Session` opens with
  C_OpenSession and one C_Login and closes with C_CloseSession alone.

The functions come from C_GetFunctionList, not from exported C_* symbols: NSS softokn and
p11-kit-proxy export only C_GetFunctionList.

PKCS#11 v2.40 §5.7.7 (C_GetAttributeValue): for an attribute the token cannot give, it sets
ulValueLen to CK_UNAVAILABLE_INFORMATION and returns CKR_ATTRIBUTE_SENSITIVE or
CKR_ATTRIBUTE_TYPE_INVALID while still filling in the others: those attributes are left out.
"""

from __future__ import annotations

import atexit
import ctypes
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any

import pkcs11
from pkcs11 import Attribute

from tokenagent.errors import TokenOperationError
from tokenagent.token.ckr import exception_class_name, rv_name

CK_UNAVAILABLE_INFORMATION = ctypes.c_ulong(-1).value
CKR_OK = 0x000
CKR_ATTRIBUTE_SENSITIVE = 0x011
CKR_ATTRIBUTE_TYPE_INVALID = 0x012
CKR_BUFFER_TOO_SMALL = 0x150
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
_PARTIAL = (CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID)
_BATCH = 64  # handles per C_FindObjects call


class CK_ATTRIBUTE(ctypes.Structure):
    _fields_ = [("type", ctypes.c_ulong), ("pValue", ctypes.c_void_p), ("ulValueLen", ctypes.c_ulong)]


_ULONG = ctypes.c_ulong
_HANDLE_ARGS = (_ULONG, ctypes.c_void_p, _ULONG)  # session, template, count
#: CK_FUNCTION_LIST (PKCS#11 v2.40 §5.3): CK_VERSION, then the functions in this order. Only the
#: prefix up to C_FindObjectsFinal is declared with types; the struct is read, never allocated.
_FUNCTIONS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("C_Initialize", (ctypes.c_void_p,)),
    ("C_Finalize", (ctypes.c_void_p,)),
    ("C_GetInfo", (ctypes.c_void_p,)),
    ("C_GetFunctionList", ()),
    ("C_GetSlotList", (ctypes.c_ubyte, ctypes.c_void_p, ctypes.c_void_p)),
    ("C_GetSlotInfo", (_ULONG, ctypes.c_void_p)),
    ("C_GetTokenInfo", (_ULONG, ctypes.c_void_p)),
    ("C_GetMechanismList", (_ULONG, ctypes.c_void_p, ctypes.c_void_p)),
    ("C_GetMechanismInfo", (_ULONG, _ULONG, ctypes.c_void_p)),
    ("C_InitToken", ()),
    ("C_InitPIN", (_ULONG, ctypes.c_char_p, _ULONG)),
    ("C_SetPIN", ()),
    # slot, flags, pApplication, Notify, the session handle out
    ("C_OpenSession", (_ULONG, _ULONG, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)),
    ("C_CloseSession", (_ULONG,)),
    *((name, ()) for name in ("C_CloseAllSessions", "C_GetSessionInfo", "C_GetOperationState", "C_SetOperationState")),
    ("C_Login", (_ULONG, _ULONG, ctypes.c_char_p, _ULONG)),
    ("C_Logout", (_ULONG,)),
    ("C_CreateObject", (_ULONG, ctypes.c_void_p, _ULONG, ctypes.c_void_p)),
    ("C_CopyObject", ()),
    ("C_DestroyObject", (_ULONG, _ULONG)),
    ("C_GetObjectSize", ()),
    ("C_GetAttributeValue", (_ULONG, _ULONG, ctypes.c_void_p, _ULONG)),
    ("C_SetAttributeValue", (_ULONG, _ULONG, ctypes.c_void_p, _ULONG)),
    ("C_FindObjectsInit", _HANDLE_ARGS),
    ("C_FindObjects", (_ULONG, ctypes.c_void_p, _ULONG, ctypes.c_void_p)),
    ("C_FindObjectsFinal", (_ULONG,)),
    *(
        (name, ())
        for name in (
            "C_EncryptInit",
            "C_Encrypt",
            "C_EncryptUpdate",
            "C_EncryptFinal",
        )
    ),
    ("C_DecryptInit", (_ULONG, ctypes.c_void_p, _ULONG)),
    ("C_Decrypt", (_ULONG, ctypes.c_void_p, _ULONG, ctypes.c_void_p, ctypes.c_void_p)),
    *(
        (name, ())
        for name in (
            "C_DecryptUpdate",
            "C_DecryptFinal",
            "C_DigestInit",
            "C_Digest",
            "C_DigestUpdate",
            "C_DigestKey",
            "C_DigestFinal",
        )
    ),
    ("C_SignInit", (_ULONG, ctypes.c_void_p, _ULONG)),
    ("C_Sign", (_ULONG, ctypes.c_void_p, _ULONG, ctypes.c_void_p, ctypes.c_void_p)),
    *(
        (name, ())
        for name in (
            "C_SignUpdate",
            "C_SignFinal",
            "C_SignRecoverInit",
            "C_SignRecover",
            "C_VerifyInit",
            "C_Verify",
            "C_VerifyUpdate",
            "C_VerifyFinal",
            "C_VerifyRecoverInit",
            "C_VerifyRecover",
            "C_DigestEncryptUpdate",
            "C_DecryptDigestUpdate",
            "C_SignEncryptUpdate",
            "C_DecryptVerifyUpdate",
            "C_GenerateKey",
        )
    ),
    # session, mechanism, public template and count, private template and count, two handles out
    (
        "C_GenerateKeyPair",
        (_ULONG, ctypes.c_void_p, ctypes.c_void_p, _ULONG, ctypes.c_void_p, _ULONG, ctypes.c_void_p, ctypes.c_void_p),
    ),
)


class CK_VERSION(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class CK_FUNCTION_LIST(ctypes.Structure):
    _fields_ = [("version", CK_VERSION)] + [
        (name, ctypes.CFUNCTYPE(_ULONG, *args) if args else ctypes.c_void_p) for name, args in _FUNCTIONS
    ]


class CK_C_INITIALIZE_ARGS(ctypes.Structure):
    _fields_ = [
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", _ULONG),
        ("pReserved", ctypes.c_char_p),
    ]


CKF_OS_LOCKING_OK = 0x2


class CK_TOKEN_INFO(ctypes.Structure):
    """CK_TOKEN_INFO (PKCS#11 v2.40 §3.2), laid out for Linux's unsigned long CK_ULONG."""

    _fields_ = [
        ("label", ctypes.c_char * 32),
        ("manufacturerID", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serialNumber", ctypes.c_char * 16),
        ("flags", _ULONG),
        ("ulMaxSessionCount", _ULONG),
        ("ulSessionCount", _ULONG),
        ("ulMaxRwSessionCount", _ULONG),
        ("ulRwSessionCount", _ULONG),
        ("ulMaxPinLen", _ULONG),
        ("ulMinPinLen", _ULONG),
        ("ulTotalPublicMemory", _ULONG),
        ("ulFreePublicMemory", _ULONG),
        ("ulTotalPrivateMemory", _ULONG),
        ("ulFreePrivateMemory", _ULONG),
        ("hardwareVersion", ctypes.c_ubyte * 2),
        ("firmwareVersion", ctypes.c_ubyte * 2),
        ("utcTime", ctypes.c_char * 16),
    ]

    def field(self, name: str) -> bytes:
        """A text field's bytes as the token wrote them (ctypes' attribute access stops at a NUL)."""
        return text_field(self, name)


class CK_INFO(ctypes.Structure):
    """CK_INFO (PKCS#11 v2.40 §3.1): the module's own description."""

    _fields_ = [
        ("cryptokiVersion", CK_VERSION),
        ("manufacturerID", ctypes.c_char * 32),
        ("flags", _ULONG),
        ("libraryDescription", ctypes.c_char * 32),
        ("libraryVersion", CK_VERSION),
    ]


class CK_SLOT_INFO(ctypes.Structure):
    """CK_SLOT_INFO (PKCS#11 v2.40 §3.2): for a smart card, the PC/SC reader."""

    _fields_ = [
        ("slotDescription", ctypes.c_char * 64),
        ("manufacturerID", ctypes.c_char * 32),
        ("flags", _ULONG),
        ("hardwareVersion", CK_VERSION),
        ("firmwareVersion", CK_VERSION),
    ]


class CK_MECHANISM_INFO(ctypes.Structure):
    _fields_ = [("ulMinKeySize", _ULONG), ("ulMaxKeySize", _ULONG), ("flags", _ULONG)]


def text_field(structure: ctypes.Structure, name: str) -> bytes:
    """A fixed-size text field's bytes as the module wrote them (ctypes' attribute access stops at
    a NUL: tpm2-pkcs11 pads its model with NULs, not blanks)."""
    descriptor = getattr(type(structure), name)
    return ctypes.string_at(ctypes.addressof(structure) + descriptor.offset, descriptor.size)


@cache
def _function_list(path: str) -> CK_FUNCTION_LIST:
    """The module's function list, from its C_GetFunctionList (once per path and process)."""
    try:
        get_function_list = ctypes.CDLL(path).C_GetFunctionList
    except OSError as exc:  # dlerror's text names the file and the reason
        raise TokenOperationError(str(exc)) from None
    except AttributeError:
        raise TokenOperationError(f"{path} is not a PKCS#11 module (no C_GetFunctionList)") from None
    get_function_list.restype = _ULONG
    functions = ctypes.POINTER(CK_FUNCTION_LIST)()
    rv = get_function_list(ctypes.byref(functions))
    if rv != CKR_OK or not functions:
        raise TokenOperationError(f"C_GetFunctionList failed ({rv_name(rv)})")
    return functions.contents


class _OneAtATime:
    """A function list whose calls take turns: for a module initialized with C_Initialize(NULL),
    the application's promise that no two threads call it at once (SoftHSM then runs without its
    mutexes). A batch generates the next request's key in a second thread (enroll/spares.py)."""

    def __init__(self, functions: CK_FUNCTION_LIST, lock: threading.RLock) -> None:
        self._functions = functions
        self._lock = lock

    def __getattr__(self, name: str) -> Callable[..., int]:
        function = getattr(self._functions, name)
        lock = self._lock

        def call(*args: Any) -> int:
            with lock:
                return int(function(*args))

        return call


#: modules initialized without CKF_OS_LOCKING_OK (or by someone else): their calls take turns
_TURNS: dict[str, _OneAtATime] = {}


def _library(path: str) -> Any:
    """The functions to call: the module's own, or taking turns (`_OneAtATime`)."""
    return _TURNS.get(path) or _function_list(path)


def read_token_info(path: str, slot_id: int) -> tuple[int, CK_TOKEN_INFO]:
    """C_GetTokenInfo: its CKR value and CK_TOKEN_INFO as the module filled it in. python-pkcs11
    neither exposes the memory fields nor keeps NUL bytes inside text fields (tpm2-pkcs11 pads its
    model with NULs, not blanks)."""
    info = CK_TOKEN_INFO()
    return int(_library(path).C_GetTokenInfo(_ULONG(slot_id), ctypes.byref(info))), info


def token_info(path: str, slot_id: int) -> CK_TOKEN_INFO | None:
    """`read_token_info`, None when the module does not give it."""
    try:
        rv, info = read_token_info(path, slot_id)
    except TokenOperationError:
        return None
    return info if rv == CKR_OK else None


def initialize(path: str, init_args: str | None, *, os_locking: bool) -> int:
    """C_Initialize; returns the CKR value (CKR_CRYPTOKI_ALREADY_INITIALIZED is the caller's call).
    With neither an init string nor OS locking, NULL: the application promises one thread, and
    SoftHSM then works without its mutexes. ``init_args`` goes in pReserved, as p11-kit passes a
    module file's x-init-reserved (NSS softokn's configdir=...). A module this call initialized is
    finalized when the process exits."""
    library = _function_list(path)
    if init_args is None and not os_locking:
        _TURNS[path] = _OneAtATime(library, threading.RLock())
        rv = int(library.C_Initialize(None))
    else:
        reserved = init_args.encode("utf-8") if init_args else None  # NULL unless the module wants a string
        args = CK_C_INITIALIZE_ARGS(None, None, None, None, CKF_OS_LOCKING_OK, reserved)
        rv = int(library.C_Initialize(ctypes.cast(ctypes.pointer(args), ctypes.c_void_p)))
    if rv == CKR_OK:
        atexit.register(_finalize, library)
    return rv


def _finalize(library: CK_FUNCTION_LIST) -> None:
    library.C_Finalize(None)


def get_info(path: str) -> tuple[int, CK_INFO]:
    """C_GetInfo: the CKR value and CK_INFO."""
    info = CK_INFO()
    return int(_library(path).C_GetInfo(ctypes.byref(info))), info


#: slot IDs asked for in the first C_GetSlotList of a process; a module with more says
#: CKR_BUFFER_TOO_SMALL and the count, and is asked again
_SLOTS = 32


def slot_ids(path: str, *, token_present: bool, rescan: bool) -> tuple[int, list[int]]:
    """C_GetSlotList: the CKR value and the slot IDs. ``rescan``: ask for the count first, with
    pSlotList NULL, as PKCS#11 describes; OpenSC looks for readers plugged in since C_Initialize
    only then (pkcs11-global.c). Right after C_Initialize the module has just looked, so one call
    into a buffer of `_SLOTS` IDs is enough (issue 15: a call each, on every command)."""
    library = _library(path)
    count = _ULONG(0)
    if rescan:
        rv = int(library.C_GetSlotList(int(token_present), None, ctypes.byref(count)))
        if rv != CKR_OK:
            return rv, []
    else:
        count.value = _SLOTS
    while True:
        ids = (_ULONG * max(1, count.value))()
        rv = int(library.C_GetSlotList(int(token_present), ids, ctypes.byref(count)))
        if rv != CKR_BUFFER_TOO_SMALL:
            break  # (a reader plugged in between the two calls makes the list longer: ask again)
    return rv, [int(ids[i]) for i in range(count.value)] if rv == CKR_OK else []


def slot_info(path: str, slot_id: int) -> tuple[int, CK_SLOT_INFO]:
    info = CK_SLOT_INFO()
    return int(_library(path).C_GetSlotInfo(_ULONG(slot_id), ctypes.byref(info))), info


def mechanism_list(path: str, slot_id: int) -> tuple[int, list[int]]:
    """C_GetMechanismList (a size query, then the list): only for listings of every mechanism."""
    library = _library(path)
    count = _ULONG(0)
    rv = int(library.C_GetMechanismList(_ULONG(slot_id), None, ctypes.byref(count)))
    if rv != CKR_OK:
        return rv, []
    mechanisms = (_ULONG * max(1, count.value))()
    rv = int(library.C_GetMechanismList(_ULONG(slot_id), mechanisms, ctypes.byref(count)))
    return rv, [int(mechanisms[i]) for i in range(count.value)] if rv == CKR_OK else []


def mechanism_info(path: str, slot_id: int, mechanism: int) -> tuple[int, CK_MECHANISM_INFO]:
    """C_GetMechanismInfo; CKR_MECHANISM_INVALID when the token does not have it (v2.40 §5.5)."""
    info = CK_MECHANISM_INFO()
    return int(_library(path).C_GetMechanismInfo(_ULONG(slot_id), _ULONG(mechanism), ctypes.byref(info))), info


CKF_RW_SESSION = 0x2
CKF_SERIAL_SESSION = 0x4
CKU_SO = 0
CKU_USER = 1
CKU_CONTEXT_SPECIFIC = 2


class Session:
    """An open PKCS#11 session: its handle and the module it belongs to. What python-pkcs11's
    Session was to tokenagent, less the calls it adds: opening one is C_OpenSession and at most one
    C_Login; closing it is C_CloseSession alone, which ends the login when it closes the token's
    last session (PKCS#11 v2.40 §5.6.8), where a C_Logout would also log out every other session
    this process has on the token. Failures raise python-pkcs11's exception for the CKR value, so
    callers keep one vocabulary of errors."""

    def __init__(self, module_path: str, slot_id: int, handle: int) -> None:
        self.module_path = module_path
        self.slot_id = slot_id
        self.handle = handle
        self.open = True

    @classmethod
    def open_on(cls, module_path: str, slot_id: int, *, rw: bool) -> Session:
        flags = CKF_SERIAL_SESSION | (CKF_RW_SESSION if rw else 0)
        handle = _ULONG(0)
        rv = int(_library(module_path).C_OpenSession(_ULONG(slot_id), _ULONG(flags), None, None, ctypes.byref(handle)))
        if rv != CKR_OK:
            raise exception_for(rv)
        return cls(module_path, slot_id, handle.value)

    def login(self, user_type: int, pin: str | None) -> None:
        """C_Login; ``pin`` None: the PIN pad (CKF_PROTECTED_AUTHENTICATION_PATH) takes it."""
        data = pin.encode("utf-8") if pin is not None else None
        rv = int(
            _library(self.module_path).C_Login(
                _ULONG(self.handle), _ULONG(user_type), data, _ULONG(len(data) if data is not None else 0)
            )
        )
        if rv != CKR_OK:
            raise exception_for(rv)

    def reaffirm_credentials(self, pin: str) -> None:
        """The context-specific login a CKA_ALWAYS_AUTHENTICATE key needs after C_SignInit."""
        self.login(CKU_CONTEXT_SPECIFIC, pin)

    def init_pin(self, pin: str) -> None:
        """C_InitPIN (the security officer logged in)."""
        data = pin.encode("utf-8")
        rv = int(_library(self.module_path).C_InitPIN(_ULONG(self.handle), data, _ULONG(len(data))))
        if rv != CKR_OK:
            raise exception_for(rv)

    def create_object(self, values: Mapping[Attribute, Any]) -> RawObject:
        template, buffers = _template(values)
        handle = _ULONG(0)
        rv = int(
            _library(self.module_path).C_CreateObject(
                _ULONG(self.handle), template, _ULONG(len(values)), ctypes.byref(handle)
            )
        )
        del buffers
        if rv != CKR_OK:
            raise exception_for(rv)
        return RawObject(self, self.module_path, handle.value)

    def get_objects(self, values: Mapping[Attribute, Any] | None = None) -> list[RawObject]:
        found = find_handles(self, self.module_path, values or {})
        return [RawObject(self, self.module_path, handle) for handle in found]

    def close(self) -> None:
        if not self.open:
            return
        self.open = False
        rv = int(_library(self.module_path).C_CloseSession(_ULONG(self.handle)))
        if rv != CKR_OK:
            raise exception_for(rv)


def _pack(value: Any) -> bytes:
    """A template value as PKCS#11 lays it out: CK_BBOOL, CK_ULONG, UTF-8 text or bytes."""
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        return int(value).to_bytes(ctypes.sizeof(ctypes.c_ulong), sys.byteorder)
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def _template(values: Mapping[Attribute, Any]) -> tuple[ctypes.Array[CK_ATTRIBUTE], list[Any]]:
    packed = [_pack(value) for value in values.values()]
    buffers = [ctypes.create_string_buffer(data, len(data) or 1) for data in packed]
    template = (CK_ATTRIBUTE * max(1, len(values)))()
    for slot, (attribute, data, buffer) in enumerate(zip(values, packed, buffers, strict=True)):
        pointer = ctypes.cast(buffer, ctypes.c_void_p) if data else None
        template[slot] = CK_ATTRIBUTE(int(attribute), pointer, len(data))
    return template, buffers  # the buffers must outlive the call


def find_handles(session: Session, module_path: str, values: Mapping[Attribute, Any]) -> list[int]:
    """Handles of the objects matching ``values`` (an empty mapping: every object the session sees)."""
    library = _library(module_path)
    handle = ctypes.c_ulong(session.handle)
    template, _buffers = _template(values)  # kept alive until the search is over
    rv = library.C_FindObjectsInit(handle, template if values else None, ctypes.c_ulong(len(values)))
    if rv != CKR_OK:
        raise TokenOperationError(f"the token failed a search of its objects ({rv_name(rv)})")
    found: list[int] = []
    try:
        batch = (ctypes.c_ulong * _BATCH)()
        count = ctypes.c_ulong(0)
        while True:
            rv = library.C_FindObjects(handle, batch, ctypes.c_ulong(_BATCH), ctypes.byref(count))
            if rv != CKR_OK:
                raise TokenOperationError(f"the token failed a search of its objects ({rv_name(rv)})")
            found.extend(batch[i] for i in range(count.value))
            if count.value < _BATCH:
                break
    finally:
        library.C_FindObjectsFinal(handle)
    return found


#: buffer per attribute for reads without a size query: large enough for every attribute tokenagent
#: reads (a label, a key's modulus or point, an ID) but a certificate's CKA_VALUE
_ATTRIBUTE_BUFFER = 2048
_VALUE_BUFFER = 16384


def read_raw(session: Session, module_path: str, obj: int, attributes: Iterable[Attribute]) -> dict[int, bytes]:
    """Every attribute of ``attributes`` the token gives, as raw bytes, in one call into buffers
    large enough for what tokenagent reads. Only when the token answers CKR_BUFFER_TOO_SMALL are the
    attributes it left out read again with a size query first. An attribute the token refuses or
    does not know (CKR_ATTRIBUTE_SENSITIVE / _TYPE_INVALID) is left out."""
    wanted = [int(a) for a in attributes]
    if not wanted:
        return {}
    values, rv = _read_into(session, module_path, obj, {kind: _buffer_size(kind) for kind in wanted})
    if rv == CKR_BUFFER_TOO_SMALL:
        missing = [kind for kind in wanted if kind not in values]
        values.update(_read_sizing(session, module_path, obj, missing))
    return values


@cache
def _buffer_size(kind: int) -> int:
    """A CK_ULONG attribute gets exactly sizeof(CK_ULONG), a CK_BBOOL one byte (NSS softokn leaves a
    CK_ULONG attribute out when its buffer has another size); the rest a buffer they fit in."""
    import pkcs11.attributes

    import tokenagent.token.names  # noqa: F401  (it adds CKA_CERTIFICATE_CATEGORY to the table)

    handler = pkcs11.attributes.ATTRIBUTE_TYPES.get(Attribute(kind)) if kind in Attribute._value2member_map_ else None
    if handler is not None:
        try:
            packed = len(handler[0](0))
        except (AttributeError, TypeError, ValueError):
            packed = 0
        if packed in (1, ctypes.sizeof(_ULONG)):
            return packed
    return _VALUE_BUFFER if kind == int(Attribute.VALUE) else _ATTRIBUTE_BUFFER


def _read_into(session: Session, module_path: str, obj: int, sizes: Mapping[int, int]) -> tuple[dict[int, bytes], int]:
    wanted = list(sizes.items())
    buffers = [ctypes.create_string_buffer(max(1, size)) for _, size in wanted]
    template = (CK_ATTRIBUTE * len(wanted))(
        *(
            CK_ATTRIBUTE(kind, ctypes.cast(buffer, ctypes.c_void_p), size)
            for (kind, size), buffer in zip(wanted, buffers, strict=True)
        )
    )
    rv = int(
        _library(module_path).C_GetAttributeValue(_ULONG(session.handle), _ULONG(obj), template, _ULONG(len(wanted)))
    )
    if rv not in (CKR_OK, CKR_BUFFER_TOO_SMALL, *_PARTIAL):
        raise TokenOperationError(f"the token refused to read an object's attributes ({rv_name(rv)})")
    values = {
        int(t.type): buffer.raw[: t.ulValueLen]
        for t, buffer in zip(template, buffers, strict=True)
        if t.ulValueLen != CK_UNAVAILABLE_INFORMATION
    }
    return values, rv


def _read_sizing(session: Session, module_path: str, obj: int, wanted: list[int]) -> dict[int, bytes]:
    """A size query, then the values: for attributes larger than the buffers of `read_raw`."""
    if not wanted:
        return {}
    template = (CK_ATTRIBUTE * len(wanted))(*(CK_ATTRIBUTE(a, None, 0) for a in wanted))
    rv = _library(module_path).C_GetAttributeValue(_ULONG(session.handle), _ULONG(obj), template, _ULONG(len(wanted)))
    if rv not in (CKR_OK, *_PARTIAL):
        raise TokenOperationError(f"the token refused to read an object's attributes ({rv_name(rv)})")
    sizes = {int(t.type): int(t.ulValueLen) for t in template if t.ulValueLen != CK_UNAVAILABLE_INFORMATION}
    return _read_into(session, module_path, obj, sizes)[0] if sizes else {}


#: what a key object's first read also asks for: what accept, sign, repair and linkage go on to
#: read of the same object (its public half, label, CKA_ID, usages, whether it needs a context
#: login). Attributes an object does not have come back as CKR_ATTRIBUTE_TYPE_INVALID for those
#: alone (PKCS#11 v2.40 §5.7.7); no large value (a certificate's CKA_VALUE) is among them.
_PREFETCH = tuple(
    int(a)
    for a in (
        Attribute.CLASS,
        Attribute.KEY_TYPE,
        Attribute.ID,
        Attribute.LABEL,
        Attribute.MODULUS,
        Attribute.PUBLIC_EXPONENT,
        Attribute.EC_PARAMS,
        Attribute.EC_POINT,
        Attribute.ENCRYPT,
        Attribute.DECRYPT,
        Attribute.SIGN,
        Attribute.SIGN_RECOVER,
        Attribute.VERIFY,
        Attribute.VERIFY_RECOVER,
        Attribute.WRAP,
        Attribute.UNWRAP,
        Attribute.DERIVE,
        Attribute.ALWAYS_AUTHENTICATE,
    )
)


class RawObject:
    """A token object known by its handle, read and written through the module's functions: what
    `objects.search` finds. python-pkcs11's own objects cost two calls each before anything is read
    (a ten-attribute capability read, refused by SoftHSM and retried) and two per read (a size
    query, then the values); these cost one search and one read. Values come back as
    python-pkcs11 gives them (its attribute table unpacks them), so callers cannot tell the two
    apart. Also what python-pkcs11 cannot wrap at all: a half-written husk whose attributes make
    its object factory fail (CKR_ATTRIBUTE_VALUE_INVALID)."""

    def __init__(self, session: Session, module_path: str, handle: int) -> None:
        self.session = session
        self.module_path = module_path
        self.handle = handle
        #: what this object's reads returned (None: the token gives no value): an object is read
        #: by several steps of one operation (the key's public half, its label, its usages, whether
        #: it needs a context login, its CKA_ID), and each read is an APDU round trip on a card
        self._read: dict[int, bytes | None] = {}

    def get_attributes(self, attributes: Iterable[Attribute]) -> dict[Attribute, Any]:
        """The attributes the token gives (refused and unknown ones are left out), unpacked. The
        first read also asks for `PREFETCH`, in the same call; later reads of those cost nothing."""
        wanted = [int(a) for a in attributes]
        missing = [kind for kind in wanted if kind not in self._read]
        if missing:
            asked = missing if self._read else list(dict.fromkeys([*missing, *_PREFETCH]))
            values = read_raw(self.session, self.module_path, self.handle, [Attribute(kind) for kind in asked])
            self._read.update({kind: values.get(kind) for kind in asked})
        found = {kind: self._read[kind] for kind in wanted}
        return {Attribute(kind): _unpack(Attribute(kind), value) for kind, value in found.items() if value is not None}

    def __getitem__(self, attribute: Attribute) -> Any:
        values = self.get_attributes([attribute])
        if attribute not in values:
            raise pkcs11.exceptions.AttributeTypeInvalid()
        return values[attribute]

    def __setitem__(self, attribute: Attribute, value: Any) -> None:
        rv = set_attributes(self.session, self.module_path, self.handle, {attribute: value})
        if rv != CKR_OK:
            raise exception_for(rv)
        self._read.pop(int(attribute), None)  # read again when asked: the token may store it its own way

    def destroy(self) -> None:
        rv = _library(self.module_path).C_DestroyObject(_ULONG(self.session.handle), _ULONG(self.handle))
        if rv != CKR_OK:
            raise exception_for(rv)


@cache
def _mapper() -> Any:
    # made on first use: token/names.py registers CKA_CERTIFICATE_CATEGORY in the table it copies
    from pkcs11.attributes import AttributeMapper

    return AttributeMapper()


def _unpack(attribute: Attribute, value: bytes) -> Any:
    try:
        return _mapper().unpack_attributes(attribute, value)
    except (NotImplementedError, ValueError, KeyError):  # an attribute python-pkcs11 has no type for
        return value


def exception_for(rv: int) -> Exception:
    """The python-pkcs11 exception for a CKR value, as python-pkcs11 itself would raise it."""
    cls = getattr(pkcs11.exceptions, exception_class_name(rv), None)
    if isinstance(cls, type) and issubclass(cls, pkcs11.exceptions.PKCS11Error):
        return cls()
    return pkcs11.exceptions.PKCS11Error(f"Unmapped error code 0x{rv:x}")


def as_bool(value: bytes | None) -> bool | None:
    return None if value is None else any(value[:1])


def as_int(value: bytes | None) -> int | None:
    return None if value is None else int.from_bytes(value, sys.byteorder)


def as_text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="replace")


class CK_MECHANISM(ctypes.Structure):
    _fields_ = [("mechanism", _ULONG), ("pParameter", ctypes.c_void_p), ("ulParameterLen", _ULONG)]


class CK_RSA_PKCS_PSS_PARAMS(ctypes.Structure):
    """PKCS#11 v2.40 §2.1.3: the hash, the MGF and the salt length of an RSA-PSS signature."""

    _fields_ = [("hashAlg", _ULONG), ("mgf", _ULONG), ("sLen", _ULONG)]


def _mechanism(kind: int, parameter: ctypes.Structure | None) -> CK_MECHANISM:
    if parameter is None:
        return CK_MECHANISM(kind, None, 0)
    return CK_MECHANISM(kind, ctypes.cast(ctypes.pointer(parameter), ctypes.c_void_p), ctypes.sizeof(parameter))


def generate_key_pair(
    session: Session,
    module_path: str,
    mechanism: int,
    public: Mapping[Attribute, Any],
    private: Mapping[Attribute, Any],
) -> tuple[int, int, int]:
    """C_GenerateKeyPair with exactly these templates: (CKR value, public handle, private handle).
    python-pkcs11's generate_keypair then wraps both objects (a capability read of ten attributes,
    retried one by one on SoftHSM: four calls); the caller reads the one thing it needs."""
    public_template, public_buffers = _template(public)
    private_template, private_buffers = _template(private)
    mech = _mechanism(mechanism, None)
    public_handle, private_handle = _ULONG(0), _ULONG(0)
    rv = _library(module_path).C_GenerateKeyPair(
        _ULONG(session.handle), ctypes.byref(mech), public_template, _ULONG(len(public)),
        private_template, _ULONG(len(private)), ctypes.byref(public_handle), ctypes.byref(private_handle),
    )  # fmt: skip
    del public_buffers, private_buffers  # alive until here: the token copied the values
    return int(rv), public_handle.value, private_handle.value


def set_attributes(session: Session, module_path: str, obj: int, values: Mapping[Attribute, Any]) -> int:
    """C_SetAttributeValue; the CKR value."""
    template, buffers = _template(values)
    rv = _library(module_path).C_SetAttributeValue(_ULONG(session.handle), _ULONG(obj), template, _ULONG(len(values)))
    del buffers
    return int(rv)


#: the longest signature tokenagent asks for: RSA-16384 (2048 bytes); ECDSA r||s is at most 132
SIGNATURE_BUFFER = 2048


def sign(
    session: Session,
    module_path: str,
    key: int,
    mechanism: int,
    data: bytes,
    *,
    pss: tuple[int, int, int] | None = None,
    after_init: Callable[[], None] | None = None,
) -> tuple[int, bytes]:
    """C_SignInit, then ``after_init`` (the context-specific login a CKA_ALWAYS_AUTHENTICATE key needs
    between the two), then one C_Sign into a buffer large enough for any signature tokenagent asks
    for, so without the size query before it. ``pss``: (hash mechanism, MGF, salt length).
    Returns the CKR value of the call that failed, or CKR_OK, and the signature."""
    library = _library(module_path)
    parameter = CK_RSA_PKCS_PSS_PARAMS(*pss) if pss is not None else None
    mech = _mechanism(mechanism, parameter)
    handle = _ULONG(session.handle)
    rv = library.C_SignInit(handle, ctypes.byref(mech), _ULONG(key))
    if rv != CKR_OK:
        return int(rv), b""
    if after_init is not None:
        after_init()  # raises on failure; the operation ends with the session (PKCS#11 §5.12)
    signature = ctypes.create_string_buffer(SIGNATURE_BUFFER)
    length = _ULONG(SIGNATURE_BUFFER)
    rv = library.C_Sign(handle, data, _ULONG(len(data)), signature, ctypes.byref(length))
    if rv == CKR_BUFFER_TOO_SMALL:  # the operation stays active; `length` is the size needed
        signature = ctypes.create_string_buffer(length.value)
        rv = library.C_Sign(handle, data, _ULONG(len(data)), signature, ctypes.byref(length))
    return int(rv), signature.raw[: length.value] if rv == CKR_OK else b""


def decrypt(session: Session, module_path: str, key: int, mechanism: int, data: bytes) -> tuple[int, bytes]:
    """C_DecryptInit and one C_Decrypt (RSA key transport: the plaintext is shorter than ``data``,
    so a buffer of its size needs no size query first). Returns the CKR value and the plaintext."""
    library = _library(module_path)
    mech = _mechanism(mechanism, None)
    handle = _ULONG(session.handle)
    rv = library.C_DecryptInit(handle, ctypes.byref(mech), _ULONG(key))
    if rv != CKR_OK:
        return int(rv), b""
    plain = ctypes.create_string_buffer(max(len(data), 1))
    length = _ULONG(len(plain))
    rv = library.C_Decrypt(handle, data, _ULONG(len(data)), plain, ctypes.byref(length))
    if rv == CKR_BUFFER_TOO_SMALL:
        plain = ctypes.create_string_buffer(length.value)
        rv = library.C_Decrypt(handle, data, _ULONG(len(data)), plain, ctypes.byref(length))
    return int(rv), plain.raw[: length.value] if rv == CKR_OK else b""
