"""`tokenagent sign REQUEST [OUT] --agent KEY --requester DOMAIN\\user`: enroll on behalf of a user."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from tokenagent.cli.options import json_option, module_option, pin_options, resolve_pin_source, token_option, yes_option
from tokenagent.cli.output import confirm, echo, emit_json, shown, warn


def cmc_options(f: Any) -> Any:
    """CMC controls, as Dogtag's CMCRequest names them (used by sign --format cmc and by new)."""
    f = click.option("--transaction-id", type=int, help="CMC transactionId (default: random).")(f)
    f = click.option("--identification", metavar="TEXT", help="CMC identification control.")(f)
    f = click.option(
        "--shared-secret-source",
        metavar="SOURCE",
        help="The CMC shared secret for identityProofV2 (and popLinkWitnessV2 with new): "
        "prompt, env:VAR, file:PATH or fd:N, as for PINs.",
    )(f)
    f = click.option(
        "--reg-info", multiple=True, metavar="NAME=VALUE", help="A CMC regInfo name-value pair (repeatable)."
    )(f)
    return f


def agent_options(f: Any) -> Any:
    options = [
        click.option(
            "--agent",
            "agent_key",
            metavar="URI|LABEL",
            help="The agent's private key: a pkcs11: URI, or its label on the --token / --agent-token.",
        ),
        click.option("--agent-cert", metavar="FILE|URI", help="The agent's certificate (default: on its token)."),
        click.option("--strict", is_flag=True, help="Refuse an agent certificate without the agent EKU, or expired."),
        click.option("--pss", is_flag=True, help="RSA agent key: sign with RSASSA-PSS."),
        click.option(
            "--agent-hash", default="sha256", type=click.Choice(["sha256", "sha384", "sha512"]), help="Digest."
        ),
    ]
    for option in reversed(options):  # click lists options in decoration order, innermost first
        f = option(f)
    return f


def cmc_controls(
    transaction_id: int | None, identification: str | None, shared_secret_source: str | None, reg_info: tuple[str, ...]
) -> Any:
    import secrets

    from tokenagent.errors import UsageError
    from tokenagent.request.cmc import CmcControls
    from tokenagent.token.pins import parse_pin_source

    pairs = []
    for item in reg_info:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--reg-info takes NAME=VALUE, not {item!r}")
        pairs.append((name, value))
    secret = None
    if shared_secret_source:
        secret = parse_pin_source(shared_secret_source).read(prompt="CMC shared secret: ").reveal().encode("utf-8")
    return CmcControls(
        transaction_id=transaction_id if transaction_id is not None else secrets.randbits(63),
        sender_nonce=secrets.token_bytes(16),
        identification=identification,
        shared_secret=secret,
        reg_info=tuple(pairs),
    )


def agent_from_options(
    agent_key: str,
    *,
    token: str | None,
    certificate: str | None,
    modules: tuple[str, ...],
    pin_source: Any,
    force: bool,
    agent_hash: str,
    pss: bool,
    strict: bool,
) -> Any:
    """The `AgentOptions` the --agent* options describe (sign, revoke-request and new share them)."""
    from tokenagent.enroll.agent import AgentOptions

    return AgentOptions(
        key=agent_key,
        token=token,
        certificate=certificate,
        modules=modules,
        pin_source=pin_source,
        force=force,
        hash=agent_hash,
        pss=pss,
        strict=strict,
    )


def to_stdout(out: Path | None) -> bool:
    return out is None or str(out) == "-"


def save_request(der: bytes, out: Path | None, binary: bool) -> bytes:
    """certreq base64 (or DER with --binary); written all or nothing to OUT unless it is stdout."""
    from tokenagent.enroll.files import write_atomically
    from tokenagent.request.armor import REQUEST_LABEL, armor

    encoded = der if binary else armor(der, REQUEST_LABEL).encode("ascii")
    if out is not None and not to_stdout(out):
        write_atomically(out, encoded)
    return encoded


def echo_request(encoded: bytes, binary: bool) -> None:
    if binary:
        sys.stdout.buffer.write(encoded)
        sys.stdout.buffer.flush()
    else:
        echo(encoded.decode("ascii").replace("\r\n", "\n"), nl=False)


def confirm_on_terminal(summary: Any) -> bool:
    for line in summary.lines():  # already escaped, with warnings for hidden characters
        echo(line, err=True)
    return confirm("Sign this request as the enrollment agent?", err=True)


@click.command("sign")
@click.argument("request", type=click.Path(path_type=Path))
@click.argument("out", required=False, type=click.Path(path_type=Path))
@click.option("--requester", metavar="DOMAIN\\USER", help="Whom the request is for (RequesterName).")
@click.option("--format", "form", default="pkcs7", type=click.Choice(["pkcs7", "cmc"]), help="Wrapper for a PKCS#10.")
@click.option("--template", metavar="NAME", help="CertificateTemplate name-value pair for the CA.")
@click.option("--binary", is_flag=True, help="Write DER instead of certreq base64.")
@click.option("-f", "--overwrite", is_flag=True, help="Replace OUT if it exists.")
@agent_options
@cmc_options
@token_option
@module_option
@pin_options
@yes_option
@json_option
def sign(
    request: Path,
    out: Path | None,
    requester: str | None,
    form: str,
    template: str | None,
    binary: bool,
    overwrite: bool,
    agent_key: str | None,
    agent_cert: str | None,
    strict: bool,
    pss: bool,
    agent_hash: str,
    transaction_id: int | None,
    identification: str | None,
    shared_secret_source: str | None,
    reg_info: tuple[str, ...],
    token: str | None,
    modules: tuple[str, ...],
    pin_source: str | None,
    literal_pin: str | None,
    force: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Co-sign REQUEST (a PKCS#10, or a PKCS7/CMC request to add a signature to) with the
    enrollment agent's key on its token, on behalf of --requester. Writes OUT (default: stdout)."""
    from tokenagent.enroll.agent import open_agent
    from tokenagent.enroll.files import check_output
    from tokenagent.enroll.sign import co_sign
    from tokenagent.errors import UsageError
    from tokenagent.inputs import read_input

    if agent_key is None:
        raise UsageError("give the agent's key with --agent (a pkcs11: URI or its label with --token)")
    if out is not None and not to_stdout(out):
        check_output(out, overwrite)
    data = read_input(request)
    options = agent_from_options(
        agent_key,
        token=token,
        certificate=agent_cert,
        modules=modules,
        pin_source=resolve_pin_source(pin_source, literal_pin, token or agent_key),
        force=force,
        agent_hash=agent_hash,
        pss=pss,
        strict=strict,
    )
    controls = cmc_controls(transaction_id, identification, shared_secret_source, reg_info) if form == "cmc" else None
    interactive = sys.stdin.isatty() and not as_json
    with open_agent(options, on_warning=warn) as agent:
        result = co_sign(
            agent,
            data,
            requester=requester,
            format=form,
            template=template,
            controls=controls,
            what=str(request),
            confirm=confirm_on_terminal if interactive else None,
            yes=yes,
        )
        agent_subject = agent.subject
    encoded = save_request(result.der, out, binary)
    stdout = to_stdout(out)
    if as_json:
        import base64
        import hashlib

        emit_json(
            {
                "format_version": 1,
                "output": None if stdout else str(out),
                "form": result.form,
                "appended": result.appended,
                "signers": result.signers,
                "requester": result.requester,
                "agent": agent_subject,
                "request": {
                    "subject": result.summary.subject,
                    "sans": list(result.summary.sans),
                    "template": result.summary.template,
                    "key": result.summary.key,
                },
                "sha256": hashlib.sha256(result.der).hexdigest(),
                "base64": base64.b64encode(result.der).decode("ascii") if stdout else None,
                "warnings": result.warnings,
            }
        )
        return
    if stdout:
        echo_request(encoded, binary)
    what = "signature added" if result.appended else f"{result.form} request signed"
    echo(
        f"{what} by {shown(agent_subject)} for {shown(result.requester or '(requester of the first signature)')}: "
        f"{result.signers} signature(s) -> {shown(str(out)) if not stdout else '(standard output)'}",
        err=stdout,
    )
