"""`tokenagent journal`: the enrollment journal (station/journal.py), oldest event first."""

from __future__ import annotations

from pathlib import Path

import click

from tokenagent.cli.options import json_option
from tokenagent.cli.output import echo, emit_json, shown


@click.command("journal")
@click.option(
    "--since", metavar="WHEN", help="Events from then on: 2026-12-01, 2026-12-01T09:30 (UTC), or 30m, 12h, 7d."
)
@click.option("--card", metavar="SERIAL", help="Events of the token (card) with this serial number.")
@click.option("--user", metavar="NAME", help="Events of this user (a batch row's name).")
@click.option("--batch", "batch_id", metavar="ID", help="Events of one `tokenagent batch` run.")
@click.option("--attempt", metavar="ID", help="Events of one enrollment attempt.")
@click.option("--machine", is_flag=True, help="The machine's journal (/var/lib/tokenagent) instead of the user's.")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where the journal lives.")
@json_option
def journal(
    since: str | None,
    card: str | None,
    user: str | None,
    batch_id: str | None,
    attempt: str | None,
    machine: bool,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Show the enrollment journal: every step of every enrollment attempt, when it started and
    how it ended. Append-only: nothing here can be changed or deleted."""
    from tokenagent.station.journal import Journal, journal_path, parse_since

    book = Journal.open(journal_path(machine, state_dir))
    events = book.events(
        since=parse_since(since) if since else None, card=card, user=user, batch=batch_id, attempt=attempt
    )
    if as_json:
        emit_json({"format_version": 1, "journal": str(book.path), "events": [event.to_json() for event in events]})
        return
    if not events:
        echo(f"no events in {shown(str(book.path))}")
        return
    table = [("time (UTC)", "attempt", "step", "status", "user", "card", "key id", "detail")]
    for event in events:
        fields = event.fields
        detail = fields.get("error") or fields.get("message") or ""
        if not detail and fields.get("request_sha256"):
            detail = f"request sha256 {str(fields['request_sha256'])[:16]}"
        if fields.get("ca_request_id"):
            detail = f"{detail} CA request {fields['ca_request_id']}".strip()
        table.append(
            (
                event.time[:19].replace("T", " "),
                event.attempt[:8],
                event.step,
                event.status,
                str(fields.get("user", "")),
                str(fields.get("token_serial", "")),
                str(fields.get("key_id", ""))[:16],
                str(detail),
            )
        )
    widths = [max(len(shown(cells[i])) for cells in table) for i in range(7)]
    for cells in table:
        echo(
            (
                "  ".join(shown(cell).ljust(widths[i]) for i, cell in enumerate(cells[:7])) + "  " + shown(cells[7])
            ).rstrip()
        )
