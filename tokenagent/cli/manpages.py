"""Man pages from the click commands themselves, so they say what --help says and cannot drift:
tokenagent(1) and one tokenagent-COMMAND(1) per command (git's convention).

    python -m tokenagent.cli.manpages DIR      # writes DIR/tokenagent.1, DIR/tokenagent-new.1, ...

`make setup` writes them into the venv's share/man/man1, where `man tokenagent-new` finds them
with the venv active (or MANPATH=.venv/share/man).
"""

from __future__ import annotations

import inspect
import sys
from datetime import date
from pathlib import Path

import click

from tokenagent import __version__


def _roff(text: str) -> str:
    """Escape what roff would read as requests or escapes."""
    lines = []
    for line in text.replace("\\", "\\e").splitlines():
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def _page(name: str, command: click.Command, context: click.Context) -> str:
    title = name.upper()
    summary = (command.get_short_help_str(limit=200) or "").rstrip(".")
    usage = " ".join(command.collect_usage_pieces(context))
    out = [
        f'.TH "{title}" "1" "{date.today():%Y-%m-%d}" "tokenagent {__version__}" "tokenagent manual"',
        ".SH NAME",
        f"{name} \\- {_roff(summary)}",
        ".SH SYNOPSIS",
        f".B {name.replace('-', ' ', 1) if name != 'tokenagent' else name}",
        _roff(usage),
        ".SH DESCRIPTION",
        _roff(inspect.cleandoc(click.unstyle(command.help or ""))).replace("\n\n", "\n.PP\n"),
    ]
    options = [param for param in command.params if isinstance(param, click.Option) and not param.hidden]
    if options:
        out.append(".SH OPTIONS")
        for option in options:
            record = option.get_help_record(context)
            if record is None:
                continue
            flags, text = record
            out += [".TP", f".B {_roff(flags)}", _roff(text or "")]
    if isinstance(command, click.Group):
        out.append(".SH COMMANDS")
        for sub in command.list_commands(context):
            child = command.get_command(context, sub)
            if child is not None:
                out += [".TP", f".B {sub}", _roff(child.get_short_help_str(limit=120))]
    out += [
        ".SH EXIT STATUS",
        "0 on success; a stable code per failure, listed in docs/exit-codes.md and tokenagent(1).",
        ".SH SEE ALSO",
        "tokenagent(1), certreq(1) semantics in docs/inf.md, pkcs11-tool(1), p11tool(1)",
    ]
    return "\n".join(out) + "\n"


def write_pages(directory: Path) -> list[Path]:
    from tokenagent.cli import cli

    directory.mkdir(parents=True, exist_ok=True)
    root = click.Context(cli, info_name="tokenagent")
    written = [directory / "tokenagent.1"]
    written[0].write_text(_page("tokenagent", cli, root))
    pending: list[tuple[str, click.Command, click.Context]] = [("tokenagent", cli, root)]
    while pending:
        prefix, group, context = pending.pop()
        if not isinstance(group, click.Group):
            continue
        for sub in group.list_commands(context):
            command = group.get_command(context, sub)
            if command is None:
                continue
            name = f"{prefix}-{sub}"
            child = click.Context(command, info_name=sub, parent=context)
            path = directory / f"{name}.1"
            path.write_text(_page(name, command, child))
            written.append(path)
            pending.append((name, command, child))
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tokenagent.cli.manpages DIR")
    for page in write_pages(Path(sys.argv[1])):
        print(page)
