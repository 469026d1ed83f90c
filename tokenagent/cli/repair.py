"""`tokenagent repair CERT`: certutil -repairstore for a certificate on a PKCS#11 token."""

from __future__ import annotations

import click

from tokenagent.cli.options import TokenArgs, json_option, token_options
from tokenagent.cli.output import echo, emit_json, shown, warn


@click.command("repair")
@click.argument("certificate", metavar="CERT")
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@click.option("--no-key-test", is_flag=True, help="Skip the test signature made with the key.")
@token_options
@json_option
def repair(certificate: str, dry_run: bool, no_key_test: bool, tokens: TokenArgs, as_json: bool) -> None:
    """Relink CERT with its private key on the token (CKA_ID, label), like certutil -repairstore.

    CERT is the certificate's SHA-1 thumbprint, a pkcs11: URI of the certificate object, or a file
    holding the certificate (which must already be on the token)."""
    from tokenagent.enroll.linkage import display_name
    from tokenagent.enroll.repair import RepairOptions, repair_certificate

    options = RepairOptions(
        certificate=certificate,
        target=tokens.target(),
        dry_run=dry_run,
        run_key_test=not no_key_test,
    )
    result = repair_certificate(options, on_warning=warn)
    if as_json:
        emit_json(result.to_json())
        return
    plan, pair = result.plan, result.plan.pair
    echo(f"certificate {shown(display_name(plan.certificate))} on token {pair.token.describe()}")
    echo(f"key: '{shown(pair.key_label)}' CKA_ID {pair.key_id.hex()}")
    echo(f"key test: {plan.key_test.status}: {shown(plan.key_test.detail)}")
    if not plan.changes:
        echo("nothing to repair: the certificate and its key are linked")
    for change in plan.changes:
        echo(f"{'would change' if dry_run else 'changed'}: {shown(change.describe())}")
    echo(f"private key: {pair.key_uri}")
    echo(f"certificate: {pair.certificate_uri}")
