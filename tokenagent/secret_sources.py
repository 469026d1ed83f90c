"""Where a secret comes from: the sources PINs (token/pins.py) and CA passwords (ca/credentials.py) share.

==============  =============================================================================
``prompt``      ask on the terminal without echo
``env:VAR``     the environment variable VAR
``file:PATH``   the first line of PATH (``file:///PATH`` as well, as RFC 7512's pin-source)
``fd:N``        what file descriptor N gives, up to the first newline
==============  =============================================================================

A secret is never taken from argv by these sources, and never shown: `Secret` masks its str/repr,
a source argument made only of digits (other than a file descriptor number) is shown as ``…``
because it is more likely the secret itself typed in the wrong place, and a value that is not a
valid source is never echoed. Every read is bounded (`MAX_SECRET_BYTES`), so ``file:/dev/zero``
cannot fill memory.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Literal

from tokenagent.errors import TokenAgentError, UsageError

#: A PIN, password or shared secret is read up to its first newline, and never more than this.
MAX_SECRET_BYTES = 4096
#: File descriptors above this are refused as sources: a larger number is more likely a secret.
MAX_SECRET_FD = 1023
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

SecretKind = Literal["prompt", "env", "file", "fd"]
ErrorClass = type[TokenAgentError]


class Secret:
    """A secret held in memory. Its str/repr are masked so it cannot leak into logs or exceptions."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


@dataclass(frozen=True)
class SecretSource:
    """One of the four sources; ``noun`` names the secret in messages ("password", "PIN")."""

    kind: SecretKind
    argument: str | None = None
    noun: str = "password"

    def __repr__(self) -> str:
        return f"SecretSource({self.describe()})"

    def describe(self) -> str:
        """Where the secret comes from, safe to print (never the secret itself)."""
        return describe_source(self.kind, self.argument)

    def read(self, prompt: str, error: ErrorClass) -> Secret:
        """Read the secret once; ``error`` is the class raised, naming the source, never the value."""
        label = f"{self.noun} source {self.describe()}"
        if self.kind == "prompt":
            value = prompt_secret(prompt, self.noun, error)
        elif self.kind == "env":
            assert self.argument is not None
            value = read_env(self.argument, label, error)
        elif self.kind == "file":
            assert self.argument is not None
            value = read_file(self.argument, label, error)
        else:
            assert self.argument is not None
            value = read_fd(int(self.argument), label, error)
        if not value:
            raise error(f"{label} gave an empty {self.noun}")
        return Secret(value)


def describe_source(kind: str, argument: str | None) -> str:
    if kind in ("prompt", "pinpad") or argument is None:
        return kind
    if argument.isdigit() and kind != "fd":
        argument = "…"  # digits alone may well be the secret itself, typed in the wrong place
    return f"{kind}:{argument}"


def parse_secret_source(text: str, noun: str = "password", option: str = "source") -> SecretSource:
    """``prompt`` | ``env:VAR`` | ``file:PATH`` | ``fd:N`` (also ``file://PATH``); `UsageError` otherwise."""
    kind, argument = parse_source_text(text, noun, option, ("prompt",))
    return SecretSource(kind, argument, noun)  # type: ignore[arg-type]


def parse_source_text(text: str, noun: str, option: str, bare: tuple[str, ...]) -> tuple[str, str | None]:
    """(kind, argument) of a source text; ``bare`` are the kinds that take no argument."""
    if text in bare:
        return text, None
    kind, sep, argument = text.partition(":")
    usage = f"use {', '.join(bare)}, env:VAR, file:PATH or fd:N"
    if sep and argument:
        if kind == "env":
            if not _ENV_NAME.fullmatch(argument):
                raise UsageError(
                    f"{option} env:… is not a valid variable name (not shown, it may be a {noun}); {usage}"
                )
            return kind, argument
        if kind == "file":
            # RFC 7512's pin-source is a URI; accept file:///path as well as file:path.
            return kind, argument[2:] if argument.startswith("//") else argument
        if kind == "fd":
            if not argument.isdigit() or int(argument) > MAX_SECRET_FD:
                raise UsageError(f"{option} fd:… is not a file descriptor number up to {MAX_SECRET_FD}; {usage}")
            return kind, argument
    # never echoed: a secret typed where its source belongs would be printed back
    raise UsageError(f"unknown {option} (not shown, in case it is the {noun} itself): {usage}")


# -- reading ----------------------------------------------------------------------------------------


def prompt_secret(prompt: str, noun: str, error: ErrorClass) -> str:
    if not sys.stdin.isatty():
        raise error(f"a {noun} is needed but stdin is not a terminal: give a source env:VAR, file:PATH or fd:N")
    import getpass

    try:
        value = getpass.getpass(prompt)
    except EOFError:
        raise error(f"no {noun} entered") from None
    if not value:
        raise error(f"no {noun} entered")
    return value


def read_env(name: str, label: str, error: ErrorClass) -> str:
    value = os.environ.get(name)
    if value is None:
        raise error(f"{label}: the variable is not set")
    if len(value.encode("utf-8", "surrogateescape")) > MAX_SECRET_BYTES:
        raise error(f"{label}: longer than {MAX_SECRET_BYTES} bytes")
    return value.rstrip("\r\n")


def read_file(path: str, label: str, error: ErrorClass) -> str:
    try:
        with open(path, "rb") as handle:
            line = handle.readline(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise error(f"{label}: {reason(exc)}") from None
    return first_line(line, label, error)


def read_fd(fd: int, label: str, error: ErrorClass) -> str:
    data = b""
    try:
        while b"\n" not in data and len(data) <= MAX_SECRET_BYTES:
            chunk = os.read(fd, MAX_SECRET_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise error(f"{label}: {reason(exc)}") from None
    return first_line(data, label, error)


def first_line(data: bytes, label: str, error: ErrorClass) -> str:
    line, newline, _ = data.partition(b"\n")
    if not newline and len(line) > MAX_SECRET_BYTES:
        raise error(f"{label}: no line end in the first {MAX_SECRET_BYTES} bytes")
    try:
        return line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        raise error(f"{label}: not UTF-8 text") from None


def reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__
