"""Printing: JSON to stdout, human text to stdout, warnings to stderr.

Every line a person reads goes through `echo` (or `warn`, `confirm`), which applies the display
rule (tokenagent/display.py): no control, bidi or invisible character reaches the terminal as it
is. Values from inputs are escaped where they are put into a line (`shown`), so a newline inside a
name cannot make a line of its own either; `echo` is the net under that. A test checks that cli/
prints through nothing else.
"""

from __future__ import annotations

import json
from typing import Any

import click

from tokenagent.display import escape as shown
from tokenagent.display import terminal_safe
from tokenagent.errors import one_line

__all__ = ["confirm", "echo", "emit_json", "field_line", "shown", "warn"]


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
