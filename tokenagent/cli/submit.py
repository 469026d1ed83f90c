"""`tokenagent submit` and `tokenagent retrieve`: certreq -submit and -retrieve."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from tokenagent.cli.options import CaArgs, ca_options, json_option
from tokenagent.cli.output import echo, emit_json, shown

if TYPE_CHECKING:  # imported when the command runs, not for --help
    from tokenagent.enroll.submit import AnswerFiles, Retrieved


@click.command("submit")
@click.argument("request", type=click.Path(path_type=Path))
@click.argument("outputs", nargs=-1, type=click.Path(path_type=Path), metavar="[CERT [CHAIN [RESPONSE]]]")
@ca_options
@click.option("-f", "--overwrite", is_flag=True, help="Replace CERT, CHAIN, RESPONSE if they exist (certreq -f).")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where the pending store lives.")
@json_option
def submit(
    request: Path, outputs: tuple[Path, ...], ca: CaArgs, overwrite: bool, state_dir: Path | None, as_json: bool
) -> None:
    """Send REQUEST (PKCS#10, PKCS7 or CMC) to the CA of --config. Issued: the certificate goes to
    CERT (default: standard output, PEM), the certificate with its CA certificates to CHAIN (PKCS#7),
    the CA's whole answer to RESPONSE. Pending (exit 14): the CA's request ID is printed and, for a
    request of the pending store, kept with it for `retrieve` / `enroll --resume`."""
    from tokenagent.enroll.submit import SubmitOptions, submit_request

    files = _files(outputs, overwrite)
    result = submit_request(SubmitOptions(request, ca.options(), files, state_dir))
    _print(result, files, as_json)


@click.command("retrieve")
@click.argument("arguments", nargs=-1, metavar="[ID] [CERT [CHAIN [RESPONSE]]]")
@click.option("--pending", "pending_id", type=int, metavar="N", help="tokenagent's pending ID instead of the CA's ID.")
@ca_options
@click.option("-f", "--overwrite", is_flag=True, help="Replace CERT, CHAIN, RESPONSE if they exist (certreq -f).")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where the pending store lives.")
@json_option
def retrieve(
    arguments: tuple[str, ...],
    pending_id: int | None,
    ca: CaArgs,
    overwrite: bool,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Ask the CA again about a request it holds: by the CA's request ID (certreq -retrieve ID), or
    by --pending N. Without --config, the CA the pending request was sent to. Issued: written as by
    `submit`; install it with `accept CERT`, or `enroll --resume`."""
    from tokenagent.enroll.submit import RetrieveOptions
    from tokenagent.enroll.submit import retrieve as retrieve_request
    from tokenagent.errors import UsageError

    request_id: str | None = None
    rest = list(arguments)
    if pending_id is None:
        if not rest:
            raise UsageError("give the CA's request ID, or --pending N")
        request_id = rest.pop(0)
    outputs = tuple(Path(item) for item in rest)
    files = _files(outputs, overwrite)
    result = retrieve_request(RetrieveOptions(request_id, pending_id, ca.options(), files, state_dir))
    _print(result, files, as_json)


def _files(outputs: tuple[Path, ...], overwrite: bool) -> AnswerFiles:
    from tokenagent.cli.output import output_path
    from tokenagent.enroll.submit import AnswerFiles
    from tokenagent.errors import UsageError

    if len(outputs) > 3:
        raise UsageError("at most three output files: CERT, CHAIN and RESPONSE")
    named = [output_path(item) for item in outputs] + [None] * (3 - len(outputs))
    return AnswerFiles(named[0], named[1], named[2], overwrite)


def _print(result: Retrieved, files: AnswerFiles, as_json: bool) -> None:
    from tokenagent.enroll.linkage import display_name

    if as_json:
        emit_json(result.to_json())
        return
    to_stdout = files.certificate is None
    if to_stdout:
        click.echo(result.certificate_pem(), nl=False)
    issued = result.issued
    ident = f" (request ID {shown(issued.request_id)})" if issued.request_id else ""
    source = "kept in the pending store" if result.from_store else shown(result.profile.describe())
    lines = [f"issued by {source}{ident}: {shown(display_name(issued.certificate))}"]
    lines.append(f"certificate: {shown(str(files.certificate)) if files.certificate else '(standard output)'}")
    if files.chain:
        lines.append(f"chain: {shown(str(files.chain))} ({len(issued.chain)} CA certificate(s))")
    if files.response:
        lines.append(f"response: {shown(str(files.response))} ({issued.response_form})")
    if result.pending is not None:
        lines.append(
            f"pending request {result.pending.id} is kept until the certificate is on its token: "
            f"tokenagent accept CERT, or tokenagent enroll --resume {result.pending.id}"
        )
    for line in lines:
        echo(line, err=to_stdout)
