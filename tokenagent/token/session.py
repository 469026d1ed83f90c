"""Sessions and the one login a run may make.

The rules, in the order they are applied:
1. Read the PIN state (CK_TOKEN_INFO flags) before anything else: a locked PIN is an error, a PIN
   on its final try is refused unless ``force``, a low count is a warning.
2. A PIN pad (CKF_PROTECTED_AUTHENTICATION_PATH) is used when the PIN source is ``pinpad``, or
   when no PIN source is configured and the token has one: no PIN crosses the host then.
3. Exactly one C_Login. A wrong PIN is reported, never retried: every retry burns a try on a
   card that locks after three.

A session closes with C_CloseSession alone (token/raw.py `Session`): closing the token's last
session in the process ends the login. Keep one `TokenSession` per token per process: a second
C_Login on the same token fails with CKR_USER_ALREADY_LOGGED_IN.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from pkcs11 import TokenFlag
from pkcs11.exceptions import (
    PinExpired,
    PinIncorrect,
    PinInvalid,
    PinLenRange,
    PinLocked,
    PKCS11Error,
    TokenNotPresent,
    TokenWriteProtected,
    UserPinNotInitialized,
)

from tokenagent.errors import (
    CapacityError,
    PinError,
    PinIncorrectError,
    PinLockedError,
    TokenAgentError,
    TokenNotFoundError,
    TokenOperationError,
)
from tokenagent.token import raw
from tokenagent.token.library import TokenHandle
from tokenagent.token.pins import PINPAD, Pin, PinSource, ProtectedAuthentication

log = logging.getLogger("tokenagent")


@dataclass(frozen=True)
class PinState:
    """The user-PIN part of CK_TOKEN_INFO.flags, as tokenagent reports it."""

    initialized: bool
    login_required: bool
    protected_authentication_path: bool
    count_low: bool
    final_try: bool
    locked: bool
    to_be_changed: bool

    @classmethod
    def from_flags(cls, flags: int) -> PinState:
        return cls(
            initialized=bool(flags & TokenFlag.USER_PIN_INITIALIZED),
            login_required=bool(flags & TokenFlag.LOGIN_REQUIRED),
            protected_authentication_path=bool(flags & TokenFlag.PROTECTED_AUTHENTICATION_PATH),
            count_low=bool(flags & TokenFlag.USER_PIN_COUNT_LOW),
            final_try=bool(flags & TokenFlag.USER_PIN_FINAL_TRY),
            locked=bool(flags & TokenFlag.USER_PIN_LOCKED),
            to_be_changed=bool(flags & TokenFlag.USER_PIN_TO_BE_CHANGED),
        )

    def as_dict(self) -> dict[str, bool]:
        return dict(self.__dict__)


def check_pin_state(state: PinState, token_name: str, *, force: bool) -> list[str]:
    """Refuse to try a PIN that cannot or should not be tried; return warnings to show."""
    if not state.initialized:
        raise PinError(f"token {token_name}: the user PIN is not initialized (initialize it with the SO PIN)")
    if state.locked:
        raise PinLockedError(f"token {token_name}: the user PIN is locked; unblock it with the SO PIN / PUK")
    if state.final_try and not force:
        raise PinLockedError(
            f"token {token_name}: the user PIN is on its FINAL try; a wrong PIN now locks the token. "
            "Not trying; rerun with --force if you are sure of the PIN"
        )
    warnings = []
    if state.final_try:
        warnings.append(f"token {token_name}: final PIN try (--force given)")
    elif state.count_low:
        warnings.append(f"token {token_name}: a wrong PIN was entered before; tries may be running low")
    if state.to_be_changed:
        warnings.append(f"token {token_name}: the user PIN must be changed")
    return warnings


class TokenSession:
    """An open PKCS#11 session on one token, logged in as the user at most once."""

    def __init__(self, handle: TokenHandle, session: raw.Session, *, logged_in: bool, rw: bool) -> None:
        self.handle = handle
        self.session = session
        self.logged_in = logged_in
        self.rw = rw
        #: kept only for CKA_ALWAYS_AUTHENTICATE keys (context-specific login); never logged.
        self._pin: Pin | ProtectedAuthentication | None = None
        #: a PIV card's security-officer session (ykcs11): the management key logged in, and every
        #: signature needs the user PIN as a context-specific login; read once, when first needed.
        self._signing_pin_source: PinSource | None = None
        self._signing_pin: Pin | ProtectedAuthentication | None = None
        self.so = False

    @property
    def signs_with_context_login(self) -> bool:
        """Every C_Sign in this session needs a context-specific login (a PIV SO session)."""
        return self._signing_pin_source is not None

    def signing_pin(self) -> Pin | ProtectedAuthentication | None:
        """The PIN for a context-specific login: the user PIN of a PIV SO session (asked once), else
        the PIN this session logged in with."""
        if self._signing_pin_source is None:
            return self._pin
        if self._signing_pin is None:
            state = PinState.from_flags(self.handle.refresh().flags)
            for message in check_pin_state(state, f"'{self.handle.label}'", force=False):
                log.warning("%s", message)
            self._signing_pin = self._signing_pin_source.read(prompt=f"User PIN for token '{self.handle.label}': ")
        return self._signing_pin

    def close(self) -> None:
        try:
            self.session.close()
        except PKCS11Error as exc:  # a removed token cannot be logged out; nothing to undo
            log.debug("closing session: %s", exc)

    def __enter__(self) -> TokenSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_session(
    handle: TokenHandle,
    *,
    login: bool,
    pin_source: PinSource | None,
    rw: bool = False,
    force: bool = False,
    on_warning: Callable[[str], None] | None = None,
    so: bool = False,
    signing_pin_source: PinSource | None = None,
) -> TokenSession:
    """Open one session; with ``login``, make exactly one C_Login attempt.

    ``so`` logs in as the security officer instead of the user (`accept --trust`: PKCS#11 lets only
    the SO set CKA_TRUSTED; PIV cards: the management key writes keys and certificates). The SO PIN
    follows the same rules as the user PIN. ``signing_pin_source`` (with ``so``): the user PIN that
    each signature in the SO session logs in with (ykcs11 allows that context-specific login).
    """
    warn = on_warning or (lambda message: log.warning("%s", message))
    # the PIN state flags change after every C_Login: CK_TOKEN_INFO is read again after one (a
    # token found by this command's listing was read a moment ago: no second read, issue 15)
    if not handle.current:
        handle.refresh()
    name = f"'{handle.label}'"
    _check_token_usable(handle, name, rw=rw)
    credential: Pin | ProtectedAuthentication | None = None
    if login:
        credential = _login_credential(handle, pin_source, name, so=so, force=force, warn=warn)
    try:
        session = _open_and_login(handle, credential, name, rw=rw, so=so, warn=warn)
    except PKCS11Error as exc:
        raise _session_error(exc, name, so=so) from None
    result = TokenSession(handle, session, logged_in=credential is not None, rw=rw)
    result._pin = credential
    result.so = so and credential is not None
    if so and signing_pin_source is not None:
        if signing_pin_source.kind == "pinpad":
            raise PinError(f"token {name}: a PIN pad cannot give the PIN for signing in a security-officer session")
        result._signing_pin_source = signing_pin_source
    return result


def _check_token_usable(handle: TokenHandle, name: str, *, rw: bool) -> None:
    if not handle.initialized:
        raise TokenNotFoundError(f"token in slot {handle.slot_id} is not initialized")
    if rw and handle.flags & TokenFlag.WRITE_PROTECTED:
        raise CapacityError(f"token {name} is write-protected")


def _login_credential(
    handle: TokenHandle,
    pin_source: PinSource | None,
    name: str,
    *,
    so: bool,
    force: bool,
    warn: Callable[[str], None],
) -> Pin | ProtectedAuthentication:
    """The PIN state check first, so that a PIN that must not be tried is never asked for; then PIN pad or PIN."""
    state = PinState.from_flags(handle.flags)
    if so:
        _check_so_pin_state(handle.flags, name, force=force)
    else:
        for message in check_pin_state(state, name, force=force):
            warn(message)
    return _credential(state, pin_source, name, who="SO" if so else "User")


def _open_and_login(
    handle: TokenHandle,
    credential: Pin | ProtectedAuthentication | None,
    name: str,
    *,
    rw: bool,
    so: bool,
    warn: Callable[[str], None],
) -> raw.Session:
    """C_OpenSession, then the one C_Login; a session whose login failed is closed again."""
    session = raw.Session.open_on(handle.module.path, handle.slot_id, rw=rw)
    if credential is None:
        return session
    pin: str | None
    if isinstance(credential, ProtectedAuthentication):
        # the reader waits silently for the PIN: tell the user before C_Login blocks
        warn(f"token {name}: enter the {'SO ' if so else ''}PIN on the reader's PIN pad")
        pin = None  # NULL: the PIN pad takes it (CKF_PROTECTED_AUTHENTICATION_PATH)
    else:
        pin = credential.reveal()
    handle.current = False  # right or wrong, a login attempt changes the PIN state flags
    try:
        session.login(raw.CKU_SO if so else raw.CKU_USER, pin)
    except BaseException:
        with contextlib.suppress(PKCS11Error):  # the login's error is the one to report
            session.close()
        raise
    return session


def _session_error(exc: PKCS11Error, name: str, *, so: bool) -> TokenAgentError:
    """python-pkcs11's error -> tokenagent's, which carries the exit code."""
    if isinstance(exc, PinIncorrect):
        return PinIncorrectError(
            f"wrong {'SO ' if so else ''}PIN for token {name}; tokenagent tried once and will not retry "
            "(tries may be limited)"
        )
    if isinstance(exc, PinLocked):
        return PinLockedError(f"token {name}: the {'SO' if so else 'user'} PIN is locked")
    if isinstance(exc, PinLenRange | PinInvalid):
        return PinIncorrectError(f"token {name} rejected the PIN's length or characters")
    if isinstance(exc, PinExpired):
        return PinError(f"token {name}: the PIN has expired and must be changed")
    if isinstance(exc, UserPinNotInitialized):
        return PinError(f"token {name}: the user PIN is not initialized")
    if isinstance(exc, TokenWriteProtected):
        return CapacityError(f"token {name} is write-protected")
    if isinstance(exc, TokenNotPresent):
        return TokenNotFoundError(f"token {name} was removed")
    return TokenOperationError(f"token {name}: cannot open a session: {type(exc).__name__}")


def _check_so_pin_state(flags: int, name: str, *, force: bool) -> None:
    if flags & TokenFlag.SO_PIN_LOCKED:
        raise PinLockedError(f"token {name}: the SO PIN is locked")
    if flags & TokenFlag.SO_PIN_FINAL_TRY and not force:
        raise PinLockedError(
            f"token {name}: the SO PIN is on its FINAL try; not trying; rerun with --force if you are sure of it"
        )


def _credential(
    state: PinState, pin_source: PinSource | None, name: str, who: str = "User"
) -> Pin | ProtectedAuthentication:
    """PIN pad or PIN: the PIN pad when asked for, or when no PIN source is configured and the token
    has one (no PIN crosses the host then)."""
    if pin_source is not None and pin_source.kind == "pinpad":
        if not state.protected_authentication_path:
            raise PinError(f"token {name} has no PIN pad (protected authentication path)")
        return PINPAD
    if pin_source is None:
        if state.protected_authentication_path:
            return PINPAD
        option = "--so-pin-source" if who == "SO" else "--pin-source"
        raise PinError(
            f"token {name} needs {'the SO' if who == 'SO' else 'a'} PIN and none can be asked for (stdin is not a "
            f"terminal): give {option} env:VAR, file:PATH or fd:N"
        )
    return pin_source.read(prompt=f"{who} PIN for token {name}: ")
