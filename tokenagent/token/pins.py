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
bound (`MAX_SECRET_BYTES`), so ``file:/dev/zero`` cannot fill memory. The reading itself is shared
with CA passwords: tokenagent/secret_sources.py.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Literal

from tokenagent.errors import PinError, UsageError
from tokenagent.secret_sources import (
    Secret,
    describe_source,
    parse_source_text,
    read_env,
    read_fd,
    read_file,
)
from tokenagent.token.uri import is_pkcs11_uri, parse_uri

log = logging.getLogger("tokenagent")

ENV_PIN_SOURCE = "TOKENAGENT_PIN_SOURCE"

PinKind = Literal["prompt", "env", "file", "fd", "pinpad", "literal"]


class Pin(Secret):
    """A PIN held in memory. Its str/repr are masked so it cannot leak into logs or exceptions."""

    __slots__ = ()

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
        return describe_source(self.kind, self.argument)

    def read(self, prompt: str = "PIN: ") -> Pin | ProtectedAuthentication:
        """Read the PIN once. Errors name the source, never the value."""
        if self.kind == "pinpad":
            return PINPAD
        if self.kind == "literal":
            assert self._literal is not None
            return self._literal
        if self.kind == "prompt":
            return _prompt(prompt)
        assert self.argument is not None
        label = f"PIN source {self.describe()}"
        if self.kind == "env":
            value = read_env(self.argument, label, PinError)
        elif self.kind == "file":
            value = read_file(self.argument, label, PinError)
        else:
            value = read_fd(int(self.argument), label, PinError)
        if not value:
            raise PinError(f"PIN source {self.describe()} gave an empty PIN")
        return Pin(value)


def parse_pin_source(text: str) -> PinSource:
    """``prompt`` | ``pinpad`` | ``env:VAR`` | ``file:PATH`` | ``fd:N`` (also ``file://PATH``)."""
    kind, argument = parse_source_text(text, "PIN", "PIN source", ("prompt", "pinpad"))
    return PinSource(kind, argument)  # type: ignore[arg-type]


def literal_pin_source(pin: str) -> PinSource:
    return PinSource("literal", None, Pin(pin))


def default_pin_source(stdin_is_tty: bool | None = None, *, variable: str = ENV_PIN_SOURCE) -> PinSource | None:
    """``TOKENAGENT_PIN_SOURCE`` (or ``variable``) if set, else a prompt on a terminal, else none
    (nothing prompts)."""
    configured = os.environ.get(variable)
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
