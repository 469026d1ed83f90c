"""`tokenagent show FILE`: dump a request, response or certificate, like certutil -dump."""

from __future__ import annotations

from pathlib import Path

import click

from tokenagent.cli.options import json_option
from tokenagent.cli.output import echo, emit_json


@click.command("show")
@click.argument("file", type=click.Path(path_type=Path))
@json_option
def show(file: Path, as_json: bool) -> None:
    """Show what FILE holds: a PKCS#10, a PKCS7 or CMC request, a CMC response, a PKCS#7
    bundle or a certificate, with signers, attributes and whether each signature verifies."""
    from tokenagent.inputs import read_input
    from tokenagent.request.dump import describe, render

    data = read_input(file)
    description = describe(data, str(file))
    if as_json:
        emit_json({"format_version": 1, "file": str(file), **description})
        return
    for line in render(description):
        echo(line)
