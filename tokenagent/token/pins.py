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
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Literal

from tokenagent.errors import PinError, UsageError

ENV_PIN_SOURCE = "TOKENAGENT_PIN_SOURCE"

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
        return f"{self.kind}:{self.argument}"

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
                with open(self.argument, encoding="utf-8") as handle:
                    value = handle.readline()
            except (OSError, UnicodeDecodeError) as exc:
                raise PinError(f"PIN source file:{self.argument}: {_reason(exc)}") from None
            return _checked(value, self)
        if self.kind == "fd":
            assert self.argument is not None
            return _checked(_read_fd(int(self.argument), self), self)
        raise AssertionError(self.kind)


def parse_pin_source(text: str) -> PinSource:
    """``prompt`` | ``pinpad`` | ``env:VAR`` | ``file:PATH`` | ``fd:N`` (also ``file://PATH``)."""
    if text in ("prompt", "pinpad"):
        return PinSource(text)  # type: ignore[arg-type]
    kind, sep, argument = text.partition(":")
    if sep and argument:
        if kind == "env":
            return PinSource("env", argument)
        if kind == "file":
            # RFC 7512's pin-source is a URI; accept file:///path as well as file:path.
            if argument.startswith("//"):
                argument = argument[2:]
            return PinSource("file", argument)
        if kind == "fd" and argument.isdigit():
            return PinSource("fd", argument)
    raise UsageError(f"unknown PIN source '{text}': use prompt, pinpad, env:VAR, file:PATH or fd:N")


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
    chunks: list[bytes] = []
    try:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk or b"\n" in chunk:
                chunks.append(chunk)
                break
            chunks.append(chunk)
    except OSError as exc:
        raise PinError(f"PIN source {source.describe()}: {_reason(exc)}") from None
    try:
        return b"".join(chunks).decode("utf-8").split("\n", 1)[0]
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
