"""Printing: JSON to stdout, human text to stdout, warnings to stderr."""

from __future__ import annotations

import json
from typing import Any

import click


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def warn(message: str) -> None:
    click.echo(f"tokenagent: warning: {message}", err=True)


def field_line(name: str, value: object, indent: int = 4, width: int = 19) -> str:
    return f"{' ' * indent}{name:<{width}}: {value}"
