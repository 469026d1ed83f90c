"""`tokenagent batch POLICY.inf --items FILE.csv --out DIR --token ...`: one request per CSV row."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tokenagent.cli.options import CaArgs, TokenArgs, ca_options, json_option, token_options
from tokenagent.cli.output import echo, emit_json, shown, warn

if TYPE_CHECKING:  # imported when the command runs, not for --help
    from tokenagent.station.batch import BatchResult, RowResult


@click.command("batch")
@click.argument("policy_argument", metavar="[POLICY]", required=False, type=click.Path(path_type=Path))
@click.option("--policy", type=click.Path(path_type=Path), help="The certreq INF (or give it as POLICY).")
@click.option(
    "--items",
    required=True,
    type=click.Path(path_type=Path),
    help="CSV file: a header naming the INF's [Strings], then one row per request.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory for the requests (made if missing): NAME.req per row.",
)
@click.option(
    "--name-column", metavar="COLUMN", help="The column whose value names each request file (default: row-N)."
)
@click.option("--jobs", default=1, show_default=True, type=int, help="Worker threads on the token (1-16).")
@click.option("--binary", is_flag=True, help="Write DER instead of certreq base64.")
@click.option(
    "--providers",
    "providers",
    multiple=True,
    type=click.Path(),
    help="A providers TOML file (ProviderName -> module, token, profile); see docs/providers.md.",
)
@click.option("--machine/--user", "machine", default=None, help="The machine's or the user's state (default: the INF).")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where the pending store and the journal live.")
@ca_options
@token_options
@json_option
def batch(
    policy_argument: Path | None,
    policy: Path | None,
    items: Path,
    out: Path,
    name_column: str | None,
    jobs: int,
    binary: bool,
    providers: tuple[str, ...],
    machine: bool | None,
    state_dir: Path | None,
    ca: CaArgs,
    tokens: TokenArgs,
    as_json: bool,
) -> None:
    """Make one key on the token and one request per row of a CSV file: the row's values fill the
    INF's [Strings] (%host% etc.). One login for the whole run; a re-run skips the rows the journal
    says are done (`tokenagent journal --batch ID`). With --config (and the other CA options of
    `enroll`) each request also goes to the CA and its certificate onto the token next to the key.
    Exit codes: docs/exit-codes.md."""
    from tokenagent.errors import TokenAgentError, UsageError
    from tokenagent.station.batch import BatchOptions, read_items, run_batch

    if (policy_argument is None) == (policy is None):
        raise UsageError("give the INF once: as POLICY or as --policy POLICY")
    inf = policy if policy is not None else policy_argument
    assert inf is not None
    options = BatchOptions(
        policy=inf,
        items=items,
        out=out,
        target=tokens.target(),
        name_column=name_column,
        jobs=jobs,
        providers=providers,
        machine=machine,
        state_dir=state_dir,
        binary=binary,
        ca=ca.options() if ca.given else None,
    )
    checked = read_items(inf, items, name_column=name_column)  # every input problem before any login
    progress = None if as_json else _Progress(len(checked.rows), terminal=sys.stderr.isatty())
    result = run_batch(options, items=checked, on_progress=progress.row if progress else None, on_warning=warn)
    if progress is not None:
        progress.close()
    if as_json:
        emit_json(result.to_json())
    else:
        _summary(result)
    error = result.stopped_by
    if error is None and result.exit_code:
        failed = [row for row in result.rows if row.error is not None]
        first = failed[0]
        assert first.error is not None
        error = TokenAgentError(
            f"{len(failed)} of {len(result.rows)} rows failed; the first, {shown(str(result.items.items))}:"
            f"{first.row.line}: {first.error.one_line()}"
        )
        error.exit_code = first.error.exit_code
    if error is not None:
        error.reported_as_json = as_json
        raise error


class _Progress:
    """A bar with rate and ETA redrawn on a terminal; one plain line per row otherwise (stderr)."""

    WIDTH = 30

    def __init__(self, total: int, *, terminal: bool) -> None:
        self.total = total
        self.terminal = terminal
        self.started = time.monotonic()
        self.made = 0
        self.drawn = False

    def row(self, result: RowResult, finished: int, total: int) -> None:
        if result.outcome in ("made", "recovered", "installed"):
            if self.made == 0:
                self.started = time.monotonic() - result.seconds  # the rate counts from the first real row
            self.made += 1
        elapsed = time.monotonic() - self.started
        rate = self.made / elapsed if self.made and elapsed > 0 else 0.0
        remaining = total - finished
        eta = f"{remaining / rate:.0f} s" if rate else "?"
        if not self.terminal:
            what = result.outcome if result.error is None else f"failed: {result.error.one_line()}"
            target = f" {shown(str(result.output))}" if result.output is not None and result.error is None else ""
            echo(f"[{finished}/{total}] row {result.row.number} {shown(result.row.name)}: {what}{target}", err=True)
            return
        filled = self.WIDTH * finished // total if total else self.WIDTH
        bar = "#" * filled + "." * (self.WIDTH - filled)
        line = f"\r[{bar}] {finished}/{total}  {rate:.1f} req/s  ETA {eta}  {shown(result.row.name)[:30]}"
        click.echo(line + "\x1b[K", err=True, nl=False)
        self.drawn = True

    def close(self) -> None:
        if self.terminal and self.drawn:
            click.echo("", err=True)


def _summary(result: BatchResult) -> None:
    token = (
        f" on token '{shown(result.token_label or '')}' (serial {shown(result.token_serial or '')})"
        if result.token_serial
        else ""
    )
    counts = ", ".join(
        f"{result.count(outcome)} {outcome}"
        for outcome in ("made", "recovered", "installed", "skipped", "failed", "not-run")
        if result.count(outcome) or outcome in ("made", "skipped", "failed")
    )
    rate = f", {result.rate:.1f} requests/s" if result.rate else ""
    if result.ca is not None:
        token += f", CA {shown(result.ca)}"
    echo(
        f"batch {result.batch_id}: {len(result.rows)} rows{token}: {counts} in {result.seconds:.1f} s"
        f"{rate}, --jobs {result.jobs}"
    )
    table = [("row", "line", "name", "outcome", "key id", "request / error")]
    for row in result.rows:
        detail = row.error.one_line() if row.error is not None else str(row.output) if row.output else ""
        key = (row.key_id or "")[:16]
        table.append((str(row.row.number), str(row.row.line), row.row.name, row.outcome, key, detail))
    widths = [max(len(shown(cells[i])) for cells in table) for i in range(5)]
    for cells in table:
        echo(
            (
                "  ".join(shown(cell).ljust(widths[i]) for i, cell in enumerate(cells[:5])) + "  " + shown(cells[5])
            ).rstrip()
        )
    echo(f"journal: {shown(str(result.journal))} (tokenagent journal --batch {result.batch_id})")
