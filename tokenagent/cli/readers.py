"""`tokenagent readers`: PC/SC readers, their cards and tokens; `--watch` for insert/remove events."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tokenagent.cli.options import json_option, module_option
from tokenagent.cli.output import echo, emit_json, field_line, shown, status_line


@click.command("readers")
@module_option
@click.option(
    "--station-config",
    "station_configs",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="Station config mapping readers to tokens, read after /etc/tokenagent/station.toml and "
    "$XDG_CONFIG_HOME/tokenagent/station.toml (repeatable).",
)
@click.option("--no-tokens", is_flag=True, help="Do not load PKCS#11 modules to find each reader's token.")
@click.option("--watch", is_flag=True, help="Print card and reader events as they happen, until Ctrl-C.")
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="With --watch: stop after N events.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="With --watch: stop after SECONDS.",
)
@json_option
def readers(
    modules: tuple[str, ...],
    station_configs: tuple[Path, ...],
    no_tokens: bool,
    watch: bool,
    count: int | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """List smart card readers: card present, ATR, known card name, PIN pad, and the PKCS#11
    token of each (by slot description, or the station config). --watch prints card events."""
    from tokenagent.errors import TokenNotFoundError, UsageError

    if not watch and (count is not None or timeout is not None):
        raise UsageError("--count and --timeout go with --watch")
    try:
        if watch:
            _watch(count, timeout, as_json)
        else:
            _list(modules, station_configs, no_tokens, as_json)
    except TokenNotFoundError as exc:  # no pcscd, no reader: --json still gets its (empty) list
        if as_json:
            emit_json({"format_version": 1, "readers": [], "reason": exc.one_line(), **exc.to_json()})
            exc.reported_as_json = True
        raise


def _list(modules: tuple[str, ...], station_configs: tuple[Path, ...], no_tokens: bool, as_json: bool) -> None:
    from tokenagent.station.atr import atr_text
    from tokenagent.station.readers import ReadersOptions, list_readers

    options = ReadersOptions(
        modules=modules, station_configs=tuple(str(p) for p in station_configs), tokens=not no_tokens
    )
    result = list_readers(options)
    if as_json:
        emit_json(result.to_json())
        return
    for reader in result.readers:
        echo(f"Reader {shown(reader.name)}")
        if not reader.card_present:
            echo(field_line("card", "none", indent=2))
        else:
            echo(field_line("card", reader.card.name if reader.card else "unknown card", indent=2))
            echo(
                field_line("ATR", atr_text(reader.atr) if reader.atr else "(none: the card does not answer)", indent=2)
            )
        echo(field_line("state", ", ".join(reader.state), indent=2))
        echo(field_line("PIN pad", "yes" if reader.pin_pad else "no", indent=2))
        if reader.mapping is not None:
            echo(field_line("station config", f"{reader.mapping.token} ({reader.mapping.source})", indent=2))
        for link in reader.tokens:
            echo(
                field_line("token", f"{link.label} (serial {link.serial}, {link.module} slot {link.slot_id})", indent=2)
            )
            echo(field_line("uri", link.uri, indent=4, width=17))
            echo(field_line("matched by", link.matched_by, indent=4, width=17))
        if reader.problem:
            echo(field_line("problem", reader.problem, indent=2))
        if reader.card_present and not reader.tokens and not reader.problem and not no_tokens:
            echo(field_line("token", "none found (map the reader in the station config)", indent=2))
    for error in result.module_errors:
        echo(f"module not searched: {shown(error)}", err=True)


def _watch(count: int | None, timeout: float | None, as_json: bool) -> None:
    from tokenagent.station.readers import watch_readers

    say = status_line(as_json)
    if say is not None:
        say("watching the readers for cards (Ctrl-C to stop)")
    for event in watch_readers(count=count, timeout=timeout):
        if event is None:  # only with ticks=True
            continue
        # one line per event, flushed at once (click.echo flushes): a station reads them as they come
        echo(json.dumps(event.to_json()) if as_json else event.text())
