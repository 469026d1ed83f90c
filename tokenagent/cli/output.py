"""Printing: JSON to stdout, human text to stdout, warnings to stderr.

Every line a person reads goes through `echo` (or `warn`, `confirm`), which applies the display
rule (tokenagent/display.py): no control, bidi or invisible character reaches the terminal as it
is. Values from inputs are escaped where they are put into a line (`shown`), so a newline inside a
name cannot make a line of its own either; `echo` is the net under that. A test checks that cli/
prints through nothing else.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tokenagent.display import escape as shown
from tokenagent.display import terminal_safe
from tokenagent.errors import one_line

__all__ = ["confirm", "echo", "echo_request", "emit_json", "field_line", "output_path", "shown", "warn"]


def echo(message: str = "", *, err: bool = False, nl: bool = True) -> None:
    click.echo(terminal_safe(message), err=err, nl=nl)


def confirm(question: str, *, default: bool = False, abort: bool = False, err: bool = False) -> bool:
    return bool(click.confirm(terminal_safe(question), default=default, abort=abort, err=err))


def emit_json(data: Any) -> None:
    # json.dumps escapes every control character and, with ensure_ascii, every non-ASCII one
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def warn(message: str) -> None:
    click.echo(f"tokenagent: warning: {one_line(message)}", err=True)


def field_line(name: str, value: object, indent: int = 4, width: int = 19) -> str:
    return f"{' ' * indent}{name:<{width}}: {shown(str(value))}"


def output_path(out: Path | None) -> Path | None:
    """OUT as the library takes it: None for standard output (no OUT, or ``-``)."""
    return None if out is None or str(out) == "-" else out


def echo_request(encoded: bytes, binary: bool) -> None:
    """A request on standard output: DER as it is, base64 with the local line ends."""
    if binary:
        sys.stdout.buffer.write(encoded)
        sys.stdout.buffer.flush()
    else:
        click.echo(encoded.decode("ascii").replace("\r\n", "\n"), nl=False)


def status_line(as_json: bool) -> Callable[[str], None] | None:
    """What a command says before a slow step: on a terminal only, never with --json (scripts read
    stdout and stderr), so a person is not left looking at seconds of silence."""
    if as_json or not sys.stderr.isatty():
        return None
    return lambda message: click.echo(f"tokenagent: {terminal_safe(message)}", err=True)
