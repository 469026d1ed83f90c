"""Where a PIN comes from, and a PIN type that never shows itself.

``--pin-source`` values:

==============  =============================================================================
``prompt``      ask on the terminal without echo (the default when stdin is a TTY)
``env:VAR``     the environment variable VAR
``file:PATH``   the first line of PATH (RFC 7512 ``pin-source`` also accepts ``file:`` URIs)
``fd:N``        everything readable from file descriptor N, up to the first newline
``pinpad``      the token's protected authentication path (PIN pad): no PIN is sent at all
==============  =============================================================================

A literal ``--pin`` exists for scripts on a throw-away token and warns: argv is visible to
every user of the machine through /proc.

A PIN typed by mistake where a source belongs (``--pin-source 731946``, ``env:731946``) must not be
printed back: a value that is not a valid source is never echoed, and a source argument made only
of digits (other than a small file descriptor number) is shown as ``…``. Sources are read with a
bound (`MAX_PIN_SOURCE_BYTES`), so ``file:/dev/zero`` cannot fill memory.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Literal

from tokenagent.errors import PinError, UsageError
from tokenagent.token.uri import is_pkcs11_uri, parse_uri

log = logging.getLogger("tokenagent")

ENV_PIN_SOURCE = "TOKENAGENT_PIN_SOURCE"
#: A PIN, SO PIN or shared secret is read up to its first newline, and never more than this.
MAX_PIN_SOURCE_BYTES = 4096
#: File descriptors above this are refused as sources: a larger number is more likely a PIN.
MAX_PIN_FD = 1023
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

PinKind = Literal["prompt", "env", "file", "fd", "pinpad", "literal"]


class Pin:
    """A PIN held in memory. Its str/repr are masked so it cannot leak into logs or exceptions."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Pin(***)"

    __str__ = __repr__


class ProtectedAuthentication:
    """Marker: log in through the token's PIN pad (CKF_PROTECTED_AUTHENTICATION_PATH)."""

    def __repr__(self) -> str:
        return "PIN pad"


PINPAD = ProtectedAuthentication()


@dataclass(frozen=True)
class PinSource:
    kind: PinKind
    argument: str | None = None
    #: the literal PIN for kind == "literal"; excluded from repr.
    _literal: Pin | None = None

    def __repr__(self) -> str:
        return f"PinSource({self.describe()})"

    def describe(self) -> str:
        """Where the PIN comes from, safe to print (never the PIN itself)."""
        if self.kind == "literal":
            return "--pin (literal)"
        if self.kind in ("prompt", "pinpad"):
            return self.kind
        argument = self.argument or ""
        if argument.isdigit() and self.kind != "fd":
            argument = "…"  # digits alone may well be the PIN itself, typed in the wrong place
        return f"{self.kind}:{argument}"

    def read(self, prompt: str = "PIN: ") -> Pin | ProtectedAuthentication:
        """Read the PIN once. Errors name the source, never the value."""
        if self.kind == "pinpad":
            return PINPAD
        if self.kind == "literal":
            assert self._literal is not None
            return self._literal
        if self.kind == "prompt":
            return _prompt(prompt)
        if self.kind == "env":
            assert self.argument is not None
            value = os.environ.get(self.argument)
            if value is None:
                raise PinError(f"PIN source env:{self.argument}: the variable is not set")
            return _checked(value, self)
        if self.kind == "file":
            assert self.argument is not None
            try:
                with open(self.argument, "rb") as handle:
                    line = handle.readline(MAX_PIN_SOURCE_BYTES + 1)
            except OSError as exc:
                raise PinError(f"PIN source {self.describe()}: {_reason(exc)}") from None
            return _checked(_first_line(line, self), self)
        if self.kind == "fd":
            assert self.argument is not None
            return _checked(_read_fd(int(self.argument), self), self)
        raise AssertionError(self.kind)


def parse_pin_source(text: str) -> PinSource:
    """``prompt`` | ``pinpad`` | ``env:VAR`` | ``file:PATH`` | ``fd:N`` (also ``file://PATH``)."""
    if text in ("prompt", "pinpad"):
        return PinSource(text)  # type: ignore[arg-type]
    kind, sep, argument = text.partition(":")
    usage = "use prompt, pinpad, env:VAR, file:PATH or fd:N"
    if sep and argument:
        if kind == "env":
            if not _ENV_NAME.fullmatch(argument):
                raise UsageError(f"PIN source env:… is not a valid variable name (not shown, it may be a PIN); {usage}")
            return PinSource("env", argument)
        if kind == "file":
            # RFC 7512's pin-source is a URI; accept file:///path as well as file:path.
            if argument.startswith("//"):
                argument = argument[2:]
            return PinSource("file", argument)
        if kind == "fd":
            if not argument.isdigit() or int(argument) > MAX_PIN_FD:
                raise UsageError(f"PIN source fd:… is not a file descriptor number up to {MAX_PIN_FD}; {usage}")
            return PinSource("fd", argument)
    # never echoed: a PIN typed where its source belongs would be printed back
    raise UsageError(f"unknown PIN source (not shown, in case it is the PIN itself): {usage}")


def literal_pin_source(pin: str) -> PinSource:
    return PinSource("literal", None, Pin(pin))


def default_pin_source(stdin_is_tty: bool | None = None) -> PinSource | None:
    """``TOKENAGENT_PIN_SOURCE`` if set, else a prompt on a terminal, else none (nothing prompts)."""
    configured = os.environ.get(ENV_PIN_SOURCE)
    if configured:
        return parse_pin_source(configured)
    tty = sys.stdin.isatty() if stdin_is_tty is None else stdin_is_tty
    return PinSource("prompt") if tty else None


def _prompt(prompt: str) -> Pin:
    if not sys.stdin.isatty():
        raise PinError("a PIN is needed but stdin is not a terminal: give --pin-source env:VAR, file:PATH or fd:N")
    import getpass

    try:
        value = getpass.getpass(prompt)
    except EOFError:
        raise PinError("no PIN entered") from None
    if not value:
        raise PinError("no PIN entered")
    return Pin(value)


def _read_fd(fd: int, source: PinSource) -> str:
    data = b""
    try:
        while b"\n" not in data and len(data) <= MAX_PIN_SOURCE_BYTES:
            chunk = os.read(fd, MAX_PIN_SOURCE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise PinError(f"PIN source {source.describe()}: {_reason(exc)}") from None
    return _first_line(data, source)


def _first_line(data: bytes, source: PinSource) -> str:
    line, newline, _ = data.partition(b"\n")
    if not newline and len(line) > MAX_PIN_SOURCE_BYTES:
        raise PinError(f"PIN source {source.describe()}: no line end in the first {MAX_PIN_SOURCE_BYTES} bytes")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise PinError(f"PIN source {source.describe()}: not UTF-8 text") from None


def _checked(value: str, source: PinSource) -> Pin:
    value = value.rstrip("\r\n")
    if not value:
        raise PinError(f"PIN source {source.describe()} gave an empty PIN")
    return Pin(value)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def pin_source_for(pin_source: str | None, literal_pin: str | None, token: str | None) -> PinSource | None:
    """The PIN source of a run, by precedence: ``--pin-source``, ``--pin`` (warns), the ``--token``
    URI's pin-source or pin-value (warns), ``TOKENAGENT_PIN_SOURCE``, a prompt on a terminal."""
    if pin_source and literal_pin:
        raise UsageError("give either --pin-source or --pin, not both")
    if literal_pin:
        log.warning("--pin puts the PIN in the process list; prefer --pin-source env:VAR or fd:N")
        return literal_pin_source(literal_pin)
    if pin_source:
        return parse_pin_source(pin_source)
    if token and is_pkcs11_uri(token):
        uri = parse_uri(token)
        if uri.pin_source:
            return parse_pin_source(uri.pin_source if ":" in uri.pin_source else f"file:{uri.pin_source}")
        if uri.has_pin_value:
            log.warning("pin-value in a pkcs11: URI puts the PIN in the process list")
            return literal_pin_source(uri.query["pin-value"])
    return default_pin_source(sys.stdin.isatty())
