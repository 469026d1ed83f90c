"""Options every command shares, spelled the same everywhere.

--token    label, serial or pkcs11: URI          --module      path or p11-kit module name
--pin-source prompt|pinpad|env:VAR|file:PATH|fd:N  --pin        literal PIN (warns; scripts only)
--force    try a PIN on its final try            --json        machine-readable output
--yes      skip confirmations
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from tokenagent.cli.state import STATE

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("tokenagent")


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    STATE.json = bool(value)
    return value


def json_option(f: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=True,
        callback=_set_json,
        is_eager=True,
        help="Print JSON (shape documented in docs/json.md).",
    )(f)


def yes_option(f: F) -> F:
    return click.option("--yes", "-y", is_flag=True, help="Skip confirmations.")(f)


def module_option(f: F) -> F:
    return click.option(
        "--module",
        "modules",
        multiple=True,
        metavar="PATH|NAME",
        help="PKCS#11 module path or p11-kit module name (repeatable; default: TOKENAGENT_MODULE, "
        "then the p11-kit registry).",
    )(f)


def token_option(f: F) -> F:
    return click.option(
        "--token",
        metavar="LABEL|SERIAL|URI",
        help="Token label, serial number or pkcs11: URI (default: the only token present).",
    )(f)


def pin_options(f: F) -> F:
    f = click.option("--force", is_flag=True, help="Try the PIN even when the token says it is the final try.")(f)
    f = click.option(
        "--pin",
        "literal_pin",
        metavar="PIN",
        help="The PIN itself. Visible to every local user through argv: for throw-away tokens only.",
    )(f)
    f = click.option(
        "--pin-source",
        metavar="SOURCE",
        help="prompt, pinpad, env:VAR, file:PATH or fd:N (default: TOKENAGENT_PIN_SOURCE, else prompt on a terminal).",
    )(f)
    return f


def resolve_pin_source(pin_source: str | None, literal_pin: str | None, token: str | None) -> Any:
    """The PinSource for a run: --pin-source, --pin, the URI's pin-source/pin-value, the default."""
    from tokenagent.errors import UsageError
    from tokenagent.token.pins import default_pin_source, literal_pin_source, parse_pin_source
    from tokenagent.token.uri import is_pkcs11_uri, parse_uri

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
