"""A blank card's user PIN, set by the enrollment station (issue 17, item 4).

A card fresh from the stack has an SO PIN (from the card issuer, kept in the station's
configuration as a source) and either no user PIN or a transport PIN. The station gives it one of:

- ``csv``: the PIN column of the users file (the holder chose it beforehand);
- ``holder``: typed by the holder, on the terminal or the reader's PIN pad (nothing to set here);
- ``generated``: a random PIN of the token's allowed length, set with C_InitPIN in a security
  officer session, shown once to the operator or appended to a file of mode 0600, never journaled
  and never logged. The holder changes it later (C_SetPIN, e.g. `pkcs11-tool --change-pin`).

PKCS#11 has no way to mark a PIN "to be changed" from the host (CKF_USER_PIN_TO_BE_CHANGED is the
token's own flag), so "left to the holder" is a documented step of the handover, not a setting.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from pkcs11.exceptions import PinInvalid, PinLenRange, PKCS11Error

from tokenagent.errors import OutputError, PinError, TokenOperationError
from tokenagent.token.ckr import exception_rv_name
from tokenagent.token.library import TokenHandle
from tokenagent.token.pins import Pin, PinSource
from tokenagent.token.session import open_session

DEFAULT_LENGTH = 8
#: PKCS#11 says nothing about a PIN's characters; digits are what every PIN pad can type.
ALPHABET = "0123456789"


def pin_length_range(handle: TokenHandle) -> tuple[int, int]:
    """ulMinPinLen, ulMaxPinLen from CK_TOKEN_INFO as the listing read it (4..8 when the token does
    not say): they do not change, so no call of their own."""
    info = handle.info
    if not info.ulMaxPinLen:
        return 4, 8
    return int(info.ulMinPinLen), int(info.ulMaxPinLen)


def generate_pin(handle: TokenHandle, length: int = DEFAULT_LENGTH) -> Pin:
    """A random PIN of ``length`` digits, clamped to what the token accepts (secrets, not random)."""
    low, high = pin_length_range(handle)
    size = min(max(length, low), high)
    return Pin("".join(secrets.choice(ALPHABET) for _ in range(size)))


def init_user_pin(handle: TokenHandle, so_pin_source: PinSource, pin: Pin, *, force: bool = False) -> None:
    """C_InitPIN with the SO logged in (one C_Login attempt with the SO PIN, as every login here)."""
    name = f"'{handle.label}'"
    with open_session(handle, login=True, pin_source=so_pin_source, rw=True, so=True, force=force) as ts:
        try:
            ts.session.init_pin(pin.reveal())
        except (PinLenRange, PinInvalid):
            raise PinError(f"token {name} refused the new user PIN's length or characters") from None
        except PKCS11Error as exc:
            raise TokenOperationError(f"token {name}: C_InitPIN failed: {exception_rv_name(exc)}") from None


def deliver_pin(pin: Pin, card: str, *, pin_file: Path | None, show: Callable[[str], None]) -> str:
    """Hand the generated PIN to the operator once: appended to ``pin_file`` (created 0600; an
    existing file must be 0600 and the caller's), else ``show``n. Returns where it went, for the
    journal (never the PIN)."""
    if pin_file is None:
        show(f"user PIN for card {card}: {pin.reveal()}  (shown once: hand it to the holder)")
        return "shown to the operator"
    line = f"{card}\t{pin.reveal()}\n".encode()
    try:
        fd = os.open(pin_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise OutputError(f"PIN file {pin_file}: {exc.strerror or exc}") from None
    try:
        status = os.fstat(fd)
        if stat.S_IMODE(status.st_mode) & 0o077 or status.st_uid != os.geteuid():
            raise OutputError(
                f"PIN file {pin_file} is readable by others or not yours (mode {stat.S_IMODE(status.st_mode):o}): "
                "chmod 600 it; nothing was written"
            )
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return f"written to {pin_file}"
