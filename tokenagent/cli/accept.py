"""`tokenagent accept RESPONSE`: certreq -accept onto a PKCS#11 token."""

from __future__ import annotations

from pathlib import Path

import click

from tokenagent.cli.options import TokenArgs, json_option, token_options
from tokenagent.cli.output import echo, emit_json, shown, warn


@click.command("accept")
@click.argument("response", type=click.Path(path_type=Path))
@click.option("--chain", is_flag=True, help="Also write the response's CA certificates (CKA_CERTIFICATE_CATEGORY 2).")
@click.option("--trust", is_flag=True, help="With --chain: mark the CA certificates CKA_TRUSTED (needs the SO PIN).")
@click.option(
    "--machine/--user",
    "machine",
    default=None,
    help="Look for the pending request only in the machine's or the user's store (default: both, user first).",
)
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where the pending store lives.")
@click.option("--no-key-test", is_flag=True, help="Skip the test signature made with the key before installing.")
@token_options
@json_option
def accept(
    response: Path,
    chain: bool,
    trust: bool,
    machine: bool | None,
    state_dir: Path | None,
    no_key_test: bool,
    tokens: TokenArgs,
    as_json: bool,
) -> None:
    """Install the certificate in RESPONSE (.cer, .p7b or CMC .rsp) on the token next to its private
    key, and remove its pending request. Accepting the same certificate twice changes nothing."""
    from tokenagent.enroll.accept import AcceptOptions, accept_certificate

    target = tokens.target()
    so_source = target.so_pin_source if trust else None
    options = AcceptOptions(
        response=response,
        target=target,
        machine=machine,
        chain=chain,
        trust=trust,
        so_pin_source=so_source,
        state_dir=state_dir,
        run_key_test=not no_key_test,
    )
    result = accept_certificate(options, on_warning=warn)
    if as_json:
        emit_json(result.to_json())
        return
    from tokenagent.enroll.linkage import display_name

    plan, outcome = result.plan, result.outcome
    installed, pair = outcome.installed, outcome.installed.pair
    cert_state = "installed" if installed.written else "already on the token"
    echo(f"certificate {shown(display_name(plan.certificate))}: {cert_state}")
    for change in installed.changes:
        echo(f"  fixed: {shown(change)}")
    echo(f"token: {pair.token.describe()}")
    echo(f"key: '{shown(pair.key_label)}' CKA_ID {pair.key_id.hex()} (found by {plan.found_by})")
    echo(f"key test: {outcome.key_test.status}: {shown(outcome.key_test.detail)}")
    echo(f"private key: {pair.key_uri}")
    echo(f"certificate: {pair.certificate_uri}")
    for entry in outcome.chain:
        trusted = ", trusted" if entry.trusted else ""
        echo(f"CA certificate {shown(entry.subject)}: {entry.status}{trusted}")
    if outcome.pending_removed is not None:
        echo(f"pending request {outcome.pending_removed.id} removed from {shown(str(outcome.pending_store))}")
    if not outcome.changed:
        echo("nothing changed")
