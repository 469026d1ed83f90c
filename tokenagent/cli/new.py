"""`tokenagent new POLICY.inf [REQUEST]`: certreq -new on a PKCS#11 token."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tokenagent.cli.options import (
    AgentArgs,
    CmcArgs,
    TokenArgs,
    agent_options,
    agent_token_options,
    cmc_options,
    json_option,
    token_options,
)
from tokenagent.cli.output import echo, echo_request, emit_json, output_path, shown, status_line, warn


@click.command("new")
@click.argument("policy", type=click.Path(path_type=Path))
@click.argument("request", required=False, type=click.Path(path_type=Path))
@click.option("--binary", is_flag=True, help="Write DER instead of certreq base64 (certreq -binary).")
@click.option(
    "--dry-run", is_flag=True, help="Print the key plan, the capacity verdict and the request contents; create nothing."
)
@click.option("-f", "--overwrite", is_flag=True, help="Replace REQUEST if it exists (certreq -f).")
@click.option(
    "--providers",
    "providers",
    multiple=True,
    type=click.Path(),
    help="A providers TOML file (ProviderName -> module, token, profile); see docs/providers.md.",
)
@click.option(
    "--machine/--user",
    "machine",
    default=None,
    help="The provider's machine token and state (MachineKeySet) or the user's (default: from the INF).",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    help="Where the pending store lives (default: TOKENAGENT_STATE_DIR, ~/.local/state/tokenagent, "
    "/var/lib/tokenagent with --machine).",
)
@agent_options
@agent_token_options
@cmc_options
@click.option("--pop-link", is_flag=True, help="RequestType = CMC: put popLinkWitnessV2 into the PKCS#10.")
@token_options
@json_option
def new(
    policy: Path,
    request: Path | None,
    binary: bool,
    dry_run: bool,
    overwrite: bool,
    providers: tuple[str, ...],
    machine: bool | None,
    state_dir: Path | None,
    agent: AgentArgs,
    agent_token: str | None,
    agent_pin_source: str | None,
    cmc: CmcArgs,
    pop_link: bool,
    tokens: TokenArgs,
    as_json: bool,
) -> None:
    """Generate a key pair on the token as POLICY (a certreq INF) says, and write a request signed on
    the token to REQUEST (default: standard output). RequestType = Cert installs a self-signed
    certificate on the token instead. Exit codes: docs/exit-codes.md."""
    from tokenagent.enroll.new import NewOptions, new_request
    from tokenagent.token.pins import pin_source_for
    from tokenagent.token.target import TokenTarget

    agent_options_ = None
    if agent.key is not None:
        pin = pin_source_for(agent_pin_source, None, agent_token or agent.key)
        agent_options_ = agent.options(TokenTarget(agent_token, tokens.modules, pin, tokens.force))
    controls = cmc.controls() if cmc.given or pop_link else None
    output = output_path(request)
    options = NewOptions(
        policy=policy,
        output=output,
        binary=binary,
        overwrite=overwrite,
        dry_run=dry_run,
        target=tokens.target(),
        providers=providers,
        machine=machine,
        state_dir=state_dir,
        agent=agent_options_,
        cmc_controls=controls,
        pop_link=pop_link,
    )
    if output is None and binary and sys.stdout.isatty() and not dry_run and not as_json:
        from tokenagent.errors import UsageError

        raise UsageError("--binary writes DER; give an output file instead of a terminal")
    result = new_request(options, on_warning=warn, on_status=status_line(as_json))
    refusal = None
    if dry_run:
        from tokenagent.errors import TokenAgentError

        try:
            result.verdict.raise_if_refused(f"'{result.token.label}'", dry_run=True)
        except TokenAgentError as exc:
            refusal = exc
    if as_json:
        # one document: the plan, and what the token would refuse (not a second JSON document)
        emit_json({**result.to_json(), "error": refusal.to_json() if refusal else None})
    elif dry_run:
        _print_dry_run(result)
    else:
        _print_result(result, output is None)
    if refusal is not None:
        refusal.reported_as_json = as_json
        raise refusal


def _print_result(result: object, to_stdout: bool) -> None:
    from tokenagent.enroll.new import NewResult

    assert isinstance(result, NewResult)
    if to_stdout and result.encoded is not None:
        echo_request(result.encoded, result.binary)
    what = "self-signed certificate installed" if result.request_type == "CERT" else "request"
    lines = [
        f"{what}: {shown(str(result.output)) if result.output else '(standard output)'}",
        f"token: {result.token.describe()}",
        f"key: {'generated' if result.key_generated else 'existing'} {result.plan.key_algorithm} "
        f"{result.plan.bits}-bit, CKA_ID {result.key_id.hex() if result.key_id else '?'}",
        f"private key: {result.key_uri('private')}",
    ]
    if result.request_type == "CERT":
        lines.append(f"certificate: {result.key_uri('cert')}")
    if result.pending is not None:
        lines.append(f"pending request ID {result.pending.id} in {shown(str(result.store_path))}")
    for line in lines:  # details go to stderr when the request itself is on stdout
        echo(line, err=to_stdout)


def _print_dry_run(result: object) -> None:
    from tokenagent.enroll.new import NewResult

    assert isinstance(result, NewResult)
    plan = result.plan
    echo = click.echo
    echo(f"Dry run of {shown(result.policy.filename)}: nothing will be created")
    provider = plan.provider
    echo(f"provider: {shown(provider.name)} (profile {shown(provider.profile.name)}, from {shown(provider.source)})")
    echo(f"token: {result.token.describe()} [{'machine' if plan.machine else 'user'} context]")
    if plan.existing is not None:
        echo(f"key: reuse {shown(plan.existing.describe())}")
    else:
        # no KeyContainer: the real run makes up another label, so say so instead of showing this one
        label = (
            "made up at generation (tokenagent-<uuid>; set KeyContainer to choose)"
            if plan.label_generated
            else (f"'{shown(plan.label)}'")
        )
        echo(f"key: {plan.key_algorithm} {plan.bits}-bit via {plan.generation_mechanism}, label {label}")
        echo("  public key template:")
        for name, value in plan.public_template.items():
            echo(f"    {name} = {_template_value(name, value, plan.label_generated)}")
        echo("  private key template:")
        for name, value in plan.private_template.items():
            echo(f"    {name} = {_template_value(name, value, plan.label_generated)}")
        if plan.piv_slot is None:
            echo("  CKA_ID = SHA-1 of the public key, set on both halves after generation")
    echo(
        f"signature: {plan.padding} with {plan.hash}; mechanism "
        + " then ".join(m.describe() for m in plan.sign_candidates)
    )
    for note in plan.notes:
        echo(f"note: {shown(note)}")
    echo(f"capacity: {'OK' if result.verdict.ok else 'REFUSED'}")
    for check in result.verdict.checks:
        echo(f"  [{'ok' if check.ok else 'NO'}] {check.name}: {shown(check.detail)}")
    echo(f"request ({result.request_type}):")
    for item in result.contents:
        flag = " critical" if item.critical else ""
        origin = " (default)" if item.default else ""
        echo(f"  {item.kind} {item.name} {item.oid}{flag}{origin}: {shown(item.text)}")


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, bytes):
        return value.hex()
    return repr(value) if isinstance(value, str) else str(value)


def _template_value(name: str, value: object, label_generated: bool) -> str:
    if name == "CKA_LABEL" and label_generated:
        return "tokenagent-<uuid> (made up at generation)"
    return _value(value)
