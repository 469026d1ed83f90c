"""`tokenagent pending`: the requests `new` made that no certificate has been accepted for yet."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tokenagent.cli.options import json_option, module_option, pin_options, resolve_pin_source, yes_option
from tokenagent.cli.output import confirm, echo, emit_json, shown, warn


@click.command("pending")
@click.option("--delete", "delete_id", type=int, metavar="ID", help="Remove the pending request ID.")
@click.option("--with-key", is_flag=True, help="With --delete: also delete the key pair it was made with.")
@click.option("--machine/--user", "machine", default=False, help="The machine's or the user's store (default: user).")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where the store lives.")
@module_option
@pin_options
@yes_option
@json_option
def pending(
    delete_id: int | None,
    with_key: bool,
    machine: bool,
    state_dir: Path | None,
    modules: tuple[str, ...],
    pin_source: str | None,
    literal_pin: str | None,
    force: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """List pending requests, or delete one (--delete ID [--with-key])."""
    from tokenagent.enroll.pending import delete_pending, pending_store
    from tokenagent.errors import UsageError

    store = pending_store(machine, state_dir)
    if delete_id is None:
        if with_key:
            raise UsageError("--with-key goes with --delete ID")
        records = store.list()
        if as_json:
            emit_json({"format_version": 1, "store": str(store.path), "pending": [r.to_json() for r in records]})
            return
        if not records:
            echo(f"no pending requests in {shown(str(store.path))}")
        for record in records:
            echo(
                f"{record.id:>4}  {record.created:%Y-%m-%d %H:%M}Z  {record.request_type:<6} "
                f"{shown(record.subject) or '(no subject)'}"
            )
            echo(
                f"      token '{shown(record.token_label)}' (serial {shown(record.token_serial)}), "
                f"key '{shown(record.key_label)}' "
                f"CKA_ID {record.key_id}{'' if record.key_generated else ' (existing key)'}"
            )
        return
    if with_key and not yes:
        record = store.get(delete_id)
        if not sys.stdin.isatty():
            raise UsageError("--with-key deletes a private key: confirm with --yes (stdin is not a terminal)")
        confirm(
            f"Delete the key pair '{shown(record.key_label)}' (CKA_ID {record.key_id}) from token "
            f"'{shown(record.token_label)}'?",
            abort=True,
        )
    source = resolve_pin_source(pin_source, literal_pin, None) if with_key else None
    result = delete_pending(
        store, delete_id, with_key=with_key, modules=modules, pin_source=source, force=force, on_warning=warn
    )
    if as_json:
        emit_json(
            {
                "format_version": 1,
                "deleted": result.record.to_json(),
                "key_objects_deleted": result.key_objects_deleted,
            }
        )
        return
    echo(
        f"deleted pending request {delete_id}"
        + (f" and its key pair ({result.key_objects_deleted} objects)" if with_key else "")
    )
