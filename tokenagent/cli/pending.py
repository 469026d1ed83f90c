"""`tokenagent pending`: the requests `new` made that no certificate has been accepted for yet."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tokenagent.cli.options import json_option, module_option, pin_options, resolve_pin_source, token_option, yes_option
from tokenagent.cli.output import confirm, echo, emit_json, shown, warn


@click.command("pending")
@click.option("--delete", "delete_id", type=int, metavar="ID", help="Remove the pending request ID.")
@click.option("--with-key", is_flag=True, help="With --delete: also delete the key pair it was made with.")
@click.option(
    "--recover",
    is_flag=True,
    help="Remove what interrupted `new` runs left on their tokens (the next `new` on a token does it too).",
)
@token_option
@click.option("--machine/--user", "machine", default=False, help="The machine's or the user's store (default: user).")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where the store lives.")
@module_option
@pin_options
@yes_option
@json_option
def pending(
    delete_id: int | None,
    with_key: bool,
    recover: bool,
    token: str | None,
    machine: bool,
    state_dir: Path | None,
    modules: tuple[str, ...],
    pin_source: str | None,
    literal_pin: str | None,
    force: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """List pending requests, or delete one (--delete ID [--with-key]), or remove what interrupted
    `new` runs left on their tokens (--recover [--token ...])."""
    from tokenagent.enroll.pending import delete_pending, pending_store
    from tokenagent.errors import UsageError
    from tokenagent.store.intents import IntentStore

    store = pending_store(machine, state_dir)
    if recover:
        if delete_id is not None or with_key:
            raise UsageError("--recover does not go with --delete or --with-key")
        _recover(store.path, token, modules, resolve_pin_source(pin_source, literal_pin, token), force, as_json)
        return
    if token is not None:
        raise UsageError("--token goes with --recover")
    if delete_id is None:
        if with_key:
            raise UsageError("--with-key goes with --delete ID")
        records = store.list()
        interrupted = IntentStore(store.path).open_intents()
        if as_json:
            emit_json(
                {
                    "format_version": 1,
                    "store": str(store.path),
                    "pending": [r.to_json() for r in records],
                    "interrupted": [i.to_json() for i in interrupted],
                }
            )
            return
        for intent in interrupted:
            echo(
                f"interrupted: a `new` for KeyContainer '{shown(intent.key_label)}' on token "
                f"'{shown(intent.token_label)}' (serial {shown(intent.token_serial)}) started "
                f"{intent.created:%Y-%m-%d %H:%M}Z by process {intent.pid} never finished; the next `new` on "
                "that token removes what it left, or run `tokenagent pending --recover`"
            )
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


def _recover(
    store_path: Path, token: str | None, modules: tuple[str, ...], pin_source: object, force: bool, as_json: bool
) -> None:
    from tokenagent.enroll.recovery import recover_tokens
    from tokenagent.token.pins import PinSource

    assert pin_source is None or isinstance(pin_source, PinSource)
    results = recover_tokens(
        store_path, token=token, modules=modules, pin_source=pin_source, force=force, on_warning=warn
    )
    if as_json:
        emit_json({"format_version": 1, "store": str(store_path), "tokens": [r.to_json() for r in results]})
        return
    if not results:
        echo(f"nothing to recover: no interrupted `new` is recorded in {shown(str(store_path))}")
    for result in results:
        if not result.recovered:
            echo(f"token '{shown(result.token_label)}': nothing to recover")
        for item in result.recovered:
            echo(f"token '{shown(result.token_label)}': {item.describe()}")
