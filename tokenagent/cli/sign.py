"""`tokenagent sign REQUEST [OUT] --agent KEY --requester DOMAIN\\user`: enroll on behalf of a user."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from tokenagent.cli.options import (
    AgentArgs,
    CmcArgs,
    TokenArgs,
    agent_options,
    agent_target,
    agent_token_options,
    cmc_options,
    json_option,
    token_options,
    yes_option,
)
from tokenagent.cli.output import confirm, echo, echo_request, emit_json, output_path, shown, warn


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
@agent_token_options
@cmc_options
@token_options
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
    agent: AgentArgs,
    agent_token: str | None,
    agent_pin_source: str | None,
    cmc: CmcArgs,
    tokens: TokenArgs,
    yes: bool,
    as_json: bool,
) -> None:
    """Co-sign REQUEST (a PKCS#10, or a PKCS7/CMC request to add a signature to) with the
    enrollment agent's key on its token, on behalf of --requester. Writes OUT (default: stdout)."""
    from tokenagent.enroll.sign import SignOptions, sign_request
    from tokenagent.errors import UsageError

    if agent.key is None:
        raise UsageError("give the agent's key with --agent (a pkcs11: URI or its label with --token)")
    agent_options_ = agent.options(agent_target(tokens, agent.key, agent_token, agent_pin_source))
    assert agent_options_ is not None
    options = SignOptions(
        request=request,
        agent=agent_options_,
        output=output_path(out),
        binary=binary,
        overwrite=overwrite,
        requester=requester,
        format=form,
        template=template,
        controls=cmc.controls() if form == "cmc" else None,
        yes=yes,
    )
    interactive = sys.stdin.isatty() and not as_json
    result = sign_request(options, confirm=confirm_on_terminal if interactive else None, on_warning=warn)
    if as_json:
        emit_json(result.to_json())
        return
    if result.output is None:
        echo_request(result.encoded, binary)
    signed = result.signed
    what = "signature added" if signed.appended else f"{signed.form} request signed"
    requester = signed.requester or "(requester of the first signature)"
    echo(
        f"{what} by {shown(result.agent_subject)} for {shown(requester)}: "
        f"{signed.signers} signature(s) -> {shown(str(out)) if result.output else '(standard output)'}",
        err=result.output is None,
    )
