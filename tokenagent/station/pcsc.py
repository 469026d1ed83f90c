"""PC/SC through pyscard's `smartcard.scard` (the WinSCard calls, one to one): readers, their state
and ATR, PIN-pad features, and waiting for a change.

Why the raw calls and not `smartcard.System.readers()` / `CardMonitoring`: those hide the result
codes (SCARD_E_NO_SERVICE, pcscd not running, and SCARD_E_NO_READERS_AVAILABLE become an empty
list or an exception from a thread), and CardMonitoring's thread blocks in SCardGetStatusChange
where a Ctrl-C cannot reach it. Here every call's code is looked at, and waiting is done in short
slices on the main thread, so Ctrl-C (tokenagent/interrupts.py) stops a watch within `SLICE_MS`.

The ATR is the one pcscd reports in SCardGetStatusChange (what pcsc_scan shows): reading it needs
no connection to the card, so listing readers never disturbs a card another program holds
exclusively (a station's enrollment in progress, ykcs11, OpenSC).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from smartcard import scard  # type: ignore[import-untyped]

from tokenagent.errors import TokenNotFoundError, TokenOperationError

#: pcsc-lite's pseudo reader whose state changes when a reader is plugged in or out
PNP_READER = "\\\\?PnP?\\Notification"
#: how long one SCardGetStatusChange may block, so Ctrl-C is seen within this time
SLICE_MS = 250

#: PC/SC part 10 (v2.02.09) section 2.2: CM_IOCTL_GET_FEATURE_REQUEST and the feature tags
CM_IOCTL_GET_FEATURE_REQUEST = scard.SCARD_CTL_CODE(3400)
FEATURE_VERIFY_PIN_DIRECT = 0x06
FEATURE_MODIFY_PIN_DIRECT = 0x07
FEATURE_NAMES = {
    0x01: "VERIFY_PIN_START",
    0x02: "VERIFY_PIN_FINISH",
    0x03: "MODIFY_PIN_START",
    0x04: "MODIFY_PIN_FINISH",
    0x05: "GET_KEY_PRESSED",
    0x06: "VERIFY_PIN_DIRECT",
    0x07: "MODIFY_PIN_DIRECT",
    0x08: "MCT_READER_DIRECT",
    0x09: "MCT_UNIVERSAL",
    0x0A: "IFD_PIN_PROPERTIES",
    0x0B: "ABORT",
    0x0C: "SET_SPE_MESSAGE",
    0x0D: "VERIFY_PIN_DIRECT_APP_ID",
    0x0E: "MODIFY_PIN_DIRECT_APP_ID",
    0x0F: "WRITE_DISPLAY",
    0x10: "GET_KEY",
    0x11: "IFD_DISPLAY_PROPERTIES",
    0x12: "GET_TLV_PROPERTIES",
    0x13: "CCID_ESC_COMMAND",
}

_STATE_NAMES = (
    (scard.SCARD_STATE_PRESENT, "present"),
    (scard.SCARD_STATE_EMPTY, "empty"),
    (scard.SCARD_STATE_MUTE, "mute"),
    (scard.SCARD_STATE_UNPOWERED, "unpowered"),
    (scard.SCARD_STATE_INUSE, "in_use"),
    (scard.SCARD_STATE_EXCLUSIVE, "exclusive"),
    (scard.SCARD_STATE_UNAVAILABLE, "unavailable"),
)


def code_text(code: int) -> str:
    """A PC/SC result as pcsc-lite names it, with its number."""
    return f"{scard.SCardGetErrorMessage(code).strip()} (0x{code & 0xFFFFFFFF:08X})"


def no_service_message(code: int) -> str | None:
    """The one-line reason when there is no reader to look at, or None when ``code`` is another failure."""
    if code == scard.SCARD_E_NO_SERVICE:
        return f"pcscd is not running (start it: systemctl start pcscd.socket): {code_text(code)}"
    if code == scard.SCARD_E_NO_READERS_AVAILABLE:
        return f"no smart card reader is connected: {code_text(code)}"
    return None


@dataclass(frozen=True)
class ReaderState:
    """One reader as pcscd sees it."""

    name: str
    flags: int  # SCARD_STATE_* bits, without SCARD_STATE_CHANGED and the event counter
    atr: bytes
    events: int = 0  # pcsc-lite's event counter (high 16 bits): +1 at each insertion and removal
    changed: bool = False  # SCARD_STATE_CHANGED: differs from the state passed in

    @property
    def unknown(self) -> bool:
        """The reader is gone (unplugged since the list was read)."""
        return bool(self.flags & scard.SCARD_STATE_UNKNOWN)

    @property
    def card_present(self) -> bool:
        return bool(self.flags & scard.SCARD_STATE_PRESENT)

    @property
    def mute(self) -> bool:
        return bool(self.flags & scard.SCARD_STATE_MUTE)

    @property
    def state_names(self) -> list[str]:
        return [name for bit, name in _STATE_NAMES if self.flags & bit]


class Pcsc:
    """One PC/SC context (SCardEstablishContext .. SCardReleaseContext)."""

    def __init__(self) -> None:
        code, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if code != scard.SCARD_S_SUCCESS:
            raise _failure("cannot reach pcscd", code)
        self.context = context
        #: what the last SCardGetStatusChange returned per reader, counter bits included
        self._known: dict[str, int] = {}

    def close(self) -> None:
        scard.SCardReleaseContext(self.context)

    def reader_names(self) -> list[str]:
        """The readers, in pcscd's order; an empty list when none is connected."""
        code, names = scard.SCardListReaders(self.context, [])
        if code == scard.SCARD_E_NO_READERS_AVAILABLE:
            return []
        if code != scard.SCARD_S_SUCCESS:
            raise _failure("cannot list the readers", code)
        return list(names)

    def states(self, names: list[str]) -> list[ReaderState]:
        """Each reader's state now (SCARD_STATE_UNAWARE: returns at once)."""
        if not names:
            return []
        code, states = scard.SCardGetStatusChange(self.context, 0, [(n, scard.SCARD_STATE_UNAWARE) for n in names])
        if code != scard.SCARD_S_SUCCESS:
            raise _failure("cannot read the readers' state", code)
        for name, event, _ in states:
            self._known[name] = event & ~scard.SCARD_STATE_CHANGED
        return [_state(entry) for entry in states]

    def wait(self, names: list[str], timeout_ms: int, *, plug_and_play: bool) -> list[ReaderState] | None:
        """Block up to ``timeout_ms`` for a change in any of ``names`` (and, with ``plug_and_play``, in
        the reader list); the new states of all of them, or None when nothing changed.

        The state passed in is the one last seen, event counter included: a change that happened
        between two calls is then reported by the next one at once (pcsc-lite counts events)."""
        watched = [*names, PNP_READER] if plug_and_play else list(names)
        request = [(name, self._known.get(name, scard.SCARD_STATE_UNAWARE)) for name in watched]
        code, states = scard.SCardGetStatusChange(self.context, timeout_ms, request)
        if code == scard.SCARD_E_TIMEOUT:
            return None
        if code != scard.SCARD_S_SUCCESS:
            raise _failure("waiting for card events failed", code)
        for name, event, _ in states:
            self._known[name] = event & ~scard.SCARD_STATE_CHANGED
        return [_state(entry) for entry in states]

    def forget(self, name: str) -> None:
        self._known.pop(name, None)

    def features(self, reader: str) -> dict[int, int] | None:
        """PC/SC part 10 features of ``reader`` (tag -> control code), or None when the reader
        driver answers no feature request (vpcd, most contactless drivers).

        A direct connection (SCARD_SHARE_DIRECT) reaches the reader with or without a card and
        does not power or claim the card: pcsc-lite counts it as one more shared user."""
        code, card, _ = scard.SCardConnect(self.context, reader, scard.SCARD_SHARE_DIRECT, 0)
        if code != scard.SCARD_S_SUCCESS:
            return None
        try:
            code, response = scard.SCardControl(card, CM_IOCTL_GET_FEATURE_REQUEST, [])
            if code != scard.SCARD_S_SUCCESS:
                return None
            return parse_features(bytes(response))
        finally:
            scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)


def parse_features(response: bytes) -> dict[int, int]:
    """CM_IOCTL_GET_FEATURE_REQUEST's answer: TLV entries, tag (1 byte), length 4, the control
    code big-endian (PC/SC part 10 v2.02.09, 2.2). A truncated or odd entry ends the list."""
    features: dict[int, int] = {}
    position = 0
    while position + 2 <= len(response):
        tag, length = response[position], response[position + 1]
        value = response[position + 2 : position + 2 + length]
        if length != 4 or len(value) != 4:
            break
        features[tag] = int.from_bytes(value, "big")
        position += 2 + length
    return features


@contextlib.contextmanager
def pcsc_context() -> Iterator[Pcsc]:
    pcsc = Pcsc()
    try:
        yield pcsc
    finally:
        pcsc.close()


def _state(entry: tuple[str, int, list[int]]) -> ReaderState:
    name, event, atr = entry
    return ReaderState(
        name=name,
        flags=event & 0xFFFF & ~scard.SCARD_STATE_CHANGED,
        atr=bytes(atr),
        events=(event >> 16) & 0xFFFF,
        changed=bool(event & scard.SCARD_STATE_CHANGED),
    )


def _failure(what: str, code: int) -> TokenNotFoundError | TokenOperationError:
    """No pcscd or no reader: exit 6, as for no token; any other PC/SC failure: exit 10."""
    reason = no_service_message(code)
    if reason is not None:
        return TokenNotFoundError(reason)
    return TokenOperationError(f"{what}: {code_text(code)}")
