"""The `tokenagent` command: a thin click layer over the library.

Command modules are imported only when their command runs (and nothing heavy is imported at
module level anywhere in cli/), so `tokenagent --help` costs Python start-up plus click.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from importlib import import_module
from typing import TextIO

import click

from tokenagent import __version__, interrupts
from tokenagent.cli.state import STATE
from tokenagent.display import terminal_safe
from tokenagent.errors import Interrupted, Terminated, TokenAgentError, one_line

# name -> (module, attribute, one-line help shown by `tokenagent --help` without importing it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "tokens": ("tokenagent.cli.tokens", "tokens", "List PKCS#11 modules, slots and tokens."),
    "objects": ("tokenagent.cli.objects", "objects", "List keys and certificates on a token."),
    "inf": ("tokenagent.cli.inf", "inf", "Read certreq INF policies (inf show FILE)."),
    "new": ("tokenagent.cli.new", "new", "Generate a key on the token and a request signed there (certreq -new)."),
    "pending": ("tokenagent.cli.pending", "pending", "List or delete pending requests."),
    "accept": (
        "tokenagent.cli.accept",
        "accept",
        "Install an issued certificate on the token next to its key (certreq -accept).",
    ),
    "sign": ("tokenagent.cli.sign", "sign", "Co-sign a request on behalf of a user as enrollment agent."),
    "show": ("tokenagent.cli.show", "show", "Dump a request, response or certificate (certutil -dump)."),
    "revoke-request": (
        "tokenagent.cli.revoke",
        "revoke_request",
        "Make a signed CMC revocation request.",
    ),
    "submit": (
        "tokenagent.cli.submit",
        "submit",
        "Send a request to a CA; write the issued certificate (certreq -submit).",
    ),
    "retrieve": (
        "tokenagent.cli.submit",
        "retrieve",
        "Ask a CA again about a pending request (certreq -retrieve).",
    ),
    "enroll": (
        "tokenagent.cli.enroll",
        "enroll",
        "New key, request, agent co-signature, CA, certificate onto the token: one run.",
    ),
    "repair": (
        "tokenagent.cli.repair",
        "repair",
        "Relink a certificate on a token with its key (certutil -repairstore).",
    ),
    "readers": (
        "tokenagent.cli.readers",
        "readers",
        "List smart card readers, their cards and tokens; --watch for card events.",
    ),
    "batch": ("tokenagent.cli.batch", "batch", "Many keys and requests on one token, one per CSV row."),
    "journal": ("tokenagent.cli.journal", "journal", "Show the enrollment journal (append-only)."),
    "station": (
        "tokenagent.cli.station",
        "station",
        "Enrollment station: card in, key on it, agent co-signature, CA, certificate on it; repeat.",
    ),
}


#: click's shell completion variable (`_TOKENAGENT_COMPLETE=bash_source tokenagent`).
COMPLETE_VAR = "_TOKENAGENT_COMPLETE"


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module, attribute, _ = COMMANDS[cmd_name]
            command: click.Command = getattr(import_module(module), attribute)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in sorted(COMMANDS)]
        rows += [(name, cmd.get_short_help_str()) for name, cmd in sorted(self.commands.items())]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


class _StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"tokenagent: {record.levelname.lower()}: {one_line(record.getMessage())}"


def _configure_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_StderrFormatter())
    logger = logging.getLogger("tokenagent")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    warnings.showwarning = _show_warning


_warned: set[str] = set()


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Python warnings as tokenagent's: one line, each text once, no source path or code line.

    They are about the input (cryptography warns about a certificate whose serial number is not
    positive each time it loads one), so they follow the display rule of every other message."""
    text = str(message)
    if text not in _warned:
        _warned.add(text)
        logging.getLogger("tokenagent").warning("%s", text)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tokenagent")
@click.option("-v", "--verbose", count=True, help="More detail; -v also shows tracebacks on errors.")
def cli(verbose: int) -> None:
    """certreq for PKCS#11 smart cards and HSMs.

    Keys are generated on the token, requests are signed on the token, and issued certificates
    go back onto the token next to their keys. Exit codes: see docs/exit-codes.md.
    """
    STATE.verbose = verbose
    _configure_logging(verbose)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors with stable exit codes; tracebacks only with -v.

    The command is invoked directly rather than through click's `main`, whose handler prints a
    blank line of its own on Ctrl-C; only shell completion goes through click's `main`."""
    args = sys.argv[1:] if argv is None else list(argv)
    if os.environ.get(COMPLETE_VAR):
        cli.main(args=args, prog_name="tokenagent", complete_var=COMPLETE_VAR)
        return
    try:
        with cli.make_context("tokenagent", args) as ctx:
            cli.invoke(ctx)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _show_click_error(exc)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _fail(Interrupted("interrupted"))
    except KeyboardInterrupt:
        _fail(Interrupted("interrupted"))
    except TokenAgentError as exc:
        _fail(exc)
    except BrokenPipeError:
        _reader_went_away()
    except Exception as exc:  # a bug: still one line, the traceback behind -v
        if STATE.verbose:
            traceback.print_exc()
        message = f"internal error: {type(exc).__name__}: {exc} (rerun with -v and report it)"
        _fail(TokenAgentError(message))
    sys.exit(0)


#: what a shell reports for a writer killed by SIGPIPE (128 + 13): `tokenagent objects | head`
EXIT_BROKEN_PIPE = 141


def _reader_went_away() -> None:
    """The reader of our output closed it (`| head`): stop quietly, as a SIGPIPE'd C tool would.
    stdout is pointed at /dev/null first so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    os._exit(EXIT_BROKEN_PIPE)


def _show_click_error(exc: click.ClickException) -> None:
    """click's own usage errors quote what was typed (a file name, a value): same display rule."""
    import io

    buffer = io.StringIO()
    exc.show(file=buffer)
    message = exc.format_message()
    text = buffer.getvalue().replace(message, one_line(message)) if message else buffer.getvalue()
    sys.stderr.write(terminal_safe(text))
    sys.stderr.flush()


def _fail(exc: TokenAgentError) -> None:
    if isinstance(exc, Interrupted) and not isinstance(exc, Terminated) and interrupts.terminated():
        exc = Terminated(exc.message.replace("interrupted", "terminated", 1))
    if STATE.verbose and exc.__traceback__ is not None:
        traceback.print_exception(exc)
    if STATE.json and not exc.reported_as_json:
        import json

        click.echo(json.dumps(exc.to_json()))
    click.echo(f"tokenagent: error: {exc.one_line()}", err=True)
    sys.exit(exc.exit_code)
