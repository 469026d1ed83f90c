"""`tokenagent station`: the enrollment station's loop (tokenagent/station/station.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tokenagent.cli.options import (
    AgentArgs,
    CaArgs,
    agent_options,
    agent_token_options,
    ca_options,
    json_option,
    module_option,
)
from tokenagent.cli.output import echo, emit_json, shown


@click.command("station")
@click.argument("policy_arg", required=False, metavar="[POLICY.inf]", type=click.Path(path_type=Path))
@click.option("--policy", type=click.Path(path_type=Path), help="The INF for every card (or give it first).")
@agent_options
@agent_token_options
@ca_options
@click.option(
    "--users",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CSV of users: a 'user' column, one column per INF [Strings] entry, 'pin' for user_pin = csv.",
)
@click.option("--yes", is_flag=True, help="Never ask anything (needs --users): an unattended station.")
@click.option(
    "--station-config",
    "station_configs",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="station.toml: [readers] maps readers to tokens, [station] says how users' PINs are set.",
)
@module_option
@click.option("--pin-source", metavar="SOURCE", help="user_pin = holder: prompt (terminal) or pinpad.")
@click.option("--chain", is_flag=True, help="Also write the CA certificates onto each card.")
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="Stop after N cards.")
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop after SECONDS without a card going in or out.",
)
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where the pending store and journal live.")
@json_option
def station(
    policy_arg: Path | None,
    policy: Path | None,
    agent: AgentArgs,
    agent_token: str | None,
    agent_pin_source: str | None,
    ca: CaArgs,
    users: Path | None,
    yes: bool,
    station_configs: tuple[Path, ...],
    modules: tuple[str, ...],
    pin_source: str | None,
    chain: bool,
    count: int | None,
    idle_timeout: float | None,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Stay up at an enrollment station: log in to the agent card once, then for each card put
    into a reader make the key on it, co-sign the request for the next user, send it to the CA
    and install the certificate; journal every card. Ctrl-C stops and rolls back cards in progress."""
    from tokenagent.errors import UsageError
    from tokenagent.station.station import Station, StationOptions
    from tokenagent.token.pins import parse_pin_source, pin_source_for
    from tokenagent.token.target import TokenTarget

    if (policy_arg is None) == (policy is None):
        raise UsageError("give the INF once: POLICY.inf or --policy POLICY.inf")
    if agent.key is None:
        raise UsageError("--agent: the enrollment agent's key (a pkcs11: URI, or its label with --agent-token)")
    agent_pin = pin_source_for(agent_pin_source, None, agent_token or agent.key)
    agent_target = TokenTarget(agent_token, modules, agent_pin)
    agent_options_ = agent.options(agent_target)
    assert agent_options_ is not None
    options = StationOptions(
        policy=policy_arg or policy,  # type: ignore[arg-type]
        agent=agent_options_,
        ca=ca.options(),
        users=users,
        yes=yes,
        station_configs=tuple(str(p) for p in station_configs),
        modules=modules,
        pin_source=parse_pin_source(pin_source) if pin_source else None,
        state_dir=state_dir,
        chain=chain,
        count=count,
        idle_timeout=idle_timeout,
    )
    say = (lambda line: click.echo(line, err=True)) if as_json else echo
    ask = None if yes or not sys.stdin.isatty() else (lambda prompt: click.prompt(prompt, err=True, default=""))
    result = Station(options, say=say, ask=ask).run()
    if as_json:
        emit_json(result.to_json())
    else:
        done = sum(1 for card in result.cards if card.outcome == "enrolled")
        echo(f"station {result.session}: {done} of {len(result.cards)} card(s) enrolled ({result.stopped_by})")
        for card in result.cards:
            if card.outcome != "enrolled":
                echo(f"  {shown(card.reader)}: {card.outcome}: {shown(card.message)}")
    if result.exit_code:
        raise click.exceptions.Exit(result.exit_code)
