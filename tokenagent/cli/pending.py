"""`tokenagent pending`: the requests `new` made that no certificate has been accepted for yet."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tokenagent.cli.options import TokenArgs, json_option, token_options, yes_option
from tokenagent.cli.output import confirm, echo, emit_json, shown, warn

if TYPE_CHECKING:  # imported when the command runs, not for --help
    from tokenagent.store.pending import PendingStore


@click.command("pending")
@click.option("--delete", "delete_id", type=int, metavar="ID", help="Remove the pending request ID.")
@click.option("--with-key", is_flag=True, help="With --delete: also delete the key pair it was made with.")
@click.option(
    "--recover",
    is_flag=True,
    help="Remove what interrupted `new` runs left on their tokens (the next `new` on a token does it too).",
)
@click.option("--machine/--user", "machine", default=False, help="The machine's or the user's store (default: user).")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where the store lives.")
@token_options
@yes_option
@json_option
def pending(
    delete_id: int | None,
    with_key: bool,
    recover: bool,
    machine: bool,
    state_dir: Path | None,
    tokens: TokenArgs,
    yes: bool,
    as_json: bool,
) -> None:
    """List pending requests, or delete one (--delete ID [--with-key]), or remove what interrupted
    `new` runs left on their tokens (--recover [--token ...])."""
    from tokenagent.enroll.pending import pending_store
    from tokenagent.errors import UsageError

    store = pending_store(machine, state_dir)
    if recover:
        if delete_id is not None or with_key:
            raise UsageError("--recover does not go with --delete or --with-key")
        _recover(store.path, tokens, as_json)
    elif tokens.token is not None:
        raise UsageError("--token goes with --recover")
    elif delete_id is None:
        if with_key:
            raise UsageError("--with-key goes with --delete ID")
        _list(store, as_json)
    else:
        _delete(store, delete_id, with_key, tokens, yes, as_json)


def _list(store: PendingStore, as_json: bool) -> None:
    from tokenagent.enroll.pending import list_pending

    listing = list_pending(store)
    if as_json:
        emit_json(listing.to_json())
        return
    for intent in listing.interrupted:
        echo(
            f"interrupted: a `new` for KeyContainer '{shown(intent.key_label)}' on token "
            f"'{shown(intent.token_label)}' (serial {shown(intent.token_serial)}) started "
            f"{intent.created:%Y-%m-%d %H:%M}Z by process {intent.pid} never finished; the next `new` on "
            "that token removes what it left, or run `tokenagent pending --recover`"
        )
    if not listing.records:
        echo(f"no pending requests in {shown(str(store.path))}")
    for record in listing.records:
        echo(
            f"{record.id:>4}  {record.created:%Y-%m-%d %H:%M}Z  {record.request_type:<6} "
            f"{shown(record.subject) or '(no subject)'}"
        )
        echo(
            f"      token '{shown(record.token_label)}' (serial {shown(record.token_serial)}), "
            f"key '{shown(record.key_label)}' "
            f"CKA_ID {record.key_id}{'' if record.key_generated else ' (existing key)'}"
        )
        submission = listing.submissions.get(record.id)
        if submission is not None:
            parts = [f"      CA: {submission.state} at {shown(submission.config)}"]
            if submission.ca_request_id:
                parts.append(f", CA request ID {shown(submission.ca_request_id)}")
            if submission.retry_after and submission.state != "issued":
                parts.append(f", ask again after {submission.retry_after:%Y-%m-%d %H:%M}Z")
            if submission.message:
                parts.append(f": {shown(submission.message)}")
            echo("".join(parts))


def _delete(store: PendingStore, delete_id: int, with_key: bool, tokens: TokenArgs, yes: bool, as_json: bool) -> None:
    from tokenagent.enroll.pending import delete_pending
    from tokenagent.errors import UsageError
    from tokenagent.token.target import TokenTarget

    if with_key and not yes:
        record = store.get(delete_id)
        if not sys.stdin.isatty():
            raise UsageError("--with-key deletes a private key: confirm with --yes (stdin is not a terminal)")
        confirm(
            f"Delete the key pair '{shown(record.key_label)}' (CKA_ID {record.key_id}) from token "
            f"'{shown(record.token_label)}'?",
            abort=True,
        )
    # a PIN is asked for only when a key is to be deleted
    target = tokens.target() if with_key else TokenTarget(None, tokens.modules, None, tokens.force)
    result = delete_pending(store, delete_id, with_key=with_key, target=target, on_warning=warn)
    if as_json:
        emit_json(result.to_json())
        return
    echo(
        f"deleted pending request {delete_id}"
        + (f" and its key pair ({result.key_objects_deleted} objects)" if with_key else "")
    )


def _recover(store_path: Path, tokens: TokenArgs, as_json: bool) -> None:
    from tokenagent.enroll.recovery import recover_tokens

    result = recover_tokens(store_path, target=tokens.target(), on_warning=warn)
    if as_json:
        emit_json(result.to_json())
        return
    if not result.tokens:
        echo(f"nothing to recover: no interrupted `new` is recorded in {shown(str(store_path))}")
    for token in result.tokens:
        if token.empty_objects_removed:
            echo(f"token '{shown(token.token_label)}': removed {token.empty_objects_removed} empty key object(s)")
        if not token.recovered and not token.empty_objects_removed:
            echo(f"token '{shown(token.token_label)}': nothing to recover")
        for item in token.recovered:
            echo(f"token '{shown(token.token_label)}': {item.describe()}")
