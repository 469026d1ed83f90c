"""`tokenagent enroll POLICY.inf --config CA`: new + agent co-signature + submit + accept in one run.

certreq -enroll's role for PKCS#11 tokens; `enroll --resume` finishes what earlier runs left with
the CA (pending, unreachable, or issued and not yet installed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from tokenagent.cli.options import (
    AgentArgs,
    CaArgs,
    TokenArgs,
    agent_options,
    agent_token_options,
    ca_options,
    json_option,
    token_options,
)
from tokenagent.cli.output import echo, emit_json, shown, status_line, warn

if TYPE_CHECKING:  # imported when the command runs, not for --help
    from tokenagent.enroll.enrollment import EnrollResult, ResumeResult


@click.command("enroll")
@click.argument("arguments", nargs=-1, metavar="POLICY.inf | --resume [ID...]")
@click.option("--resume", is_flag=True, help="Finish the requests earlier runs left with a CA (or the IDs given).")
@click.option("--now", is_flag=True, help="With --resume: ask even before the time the CA gave.")
@ca_options
@agent_options
@agent_token_options
@click.option("--chain", is_flag=True, help="Also write the CA certificates onto the token.")
@click.option("--no-key-test", is_flag=True, help="Skip the test signature made with the key before installing.")
@click.option(
    "--providers", "providers", multiple=True, type=click.Path(), help="A providers TOML file (docs/providers.md)."
)
@click.option("--machine/--user", "machine", default=None, help="MachineKeySet: the machine's token and state.")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where the pending store lives.")
@token_options
@json_option
def enroll(
    arguments: tuple[str, ...],
    resume: bool,
    now: bool,
    ca: CaArgs,
    agent: AgentArgs,
    agent_token: str | None,
    agent_pin_source: str | None,
    chain: bool,
    no_key_test: bool,
    providers: tuple[str, ...],
    machine: bool | None,
    state_dir: Path | None,
    tokens: TokenArgs,
    as_json: bool,
) -> None:
    """Generate the key on the token as POLICY says, sign the request there (and co-sign it with
    --agent), send it to the CA of --config and install the issued certificate next to the key.
    Pending, unreachable or refused: the request stays in the pending store (exit 14, 16, 17, 12...)
    and `tokenagent enroll --resume` finishes it."""
    from tokenagent.errors import UsageError

    if resume:
        if agent.key is not None:
            raise UsageError("--agent goes with a new enrollment, not with --resume")
        ids = []
        for item in arguments:
            if not item.isdigit():
                raise UsageError(f"--resume takes pending IDs, not {item!r}")
            ids.append(int(item))
        _resume(tuple(ids), ca, tokens, state_dir, chain, not no_key_test, now, as_json)
        return
    if len(arguments) != 1:
        raise UsageError("give one POLICY.inf (or --resume)")
    if now:
        raise UsageError("--now goes with --resume")
    from tokenagent.enroll.enrollment import EnrollOptions, enroll_policy
    from tokenagent.enroll.new import NewOptions
    from tokenagent.token.pins import pin_source_for
    from tokenagent.token.target import TokenTarget

    agent_options_ = None
    if agent.key is not None:
        pin = pin_source_for(agent_pin_source, None, agent_token or agent.key)
        agent_options_ = agent.options(TokenTarget(agent_token, tokens.modules, pin, tokens.force))
    new_options = NewOptions(
        policy=Path(arguments[0]),
        target=tokens.target(),
        providers=providers,
        machine=machine,
        state_dir=state_dir,
        agent=agent_options_,
    )
    options = EnrollOptions(new_options, ca.options(), chain=chain, run_key_test=not no_key_test)
    result = enroll_policy(options, on_warning=warn, on_status=status_line(as_json))
    if as_json:
        emit_json(result.to_json())
    else:
        _print(result)


def _print(result: EnrollResult) -> None:
    from tokenagent.enroll.linkage import display_name

    new, accepted = result.new, result.accepted
    pending = new.pending
    agent = " (co-signed by the agent)" if new.planned.request_type in ("CMC", "PKCS7") and pending else ""
    echo(
        f"key: {'generated' if new.key_generated else 'existing'} {new.plan.key_algorithm} {new.plan.bits}-bit on "
        f"{new.token.describe()}, CKA_ID {new.key_id.hex() if new.key_id else '?'}"
    )
    echo(f"request: {new.request_type}{agent}, pending ID {pending.id if pending else '?'}")
    ident = f" as request {shown(result.issued.request_id)}" if result.issued.request_id else ""
    echo(f"CA: {shown(result.profile.describe())} issued {shown(display_name(result.issued.certificate))}{ident}")
    pair = accepted.outcome.installed.pair
    echo(f"certificate: installed on the token next to its key: {pair.certificate_uri}")
    echo(f"key test: {accepted.outcome.key_test.status}: {shown(accepted.outcome.key_test.detail)}")
    for entry in accepted.outcome.chain:
        echo(f"CA certificate {shown(entry.subject)}: {entry.status}")


def _resume(
    ids: tuple[int, ...],
    ca: CaArgs,
    tokens: TokenArgs,
    state_dir: Path | None,
    chain: bool,
    key_test: bool,
    now: bool,
    as_json: bool,
) -> None:
    from tokenagent.enroll.enrollment import ResumeOptions
    from tokenagent.enroll.enrollment import resume as resume_requests

    options = ResumeOptions(
        pending_ids=ids,
        ca=ca.options() if ca.given else None,
        target=tokens.target(),
        state_dir=state_dir,
        chain=chain,
        run_key_test=key_test,
        now=now,
    )
    result = resume_requests(options, on_warning=warn)
    if as_json:
        emit_json(result.to_json())
    else:
        _print_resume(result)
    if result.exit_code:
        raise click.exceptions.Exit(result.exit_code)


def _print_resume(result: ResumeResult) -> None:
    if not result.items:
        echo("nothing to resume: no request is waiting for a CA")
    for item in result.items:
        echo(
            f"pending request {item.pending_id} ({shown(item.subject) or 'no subject'}): {item.outcome}: "
            f"{shown(item.message)}"
        )
