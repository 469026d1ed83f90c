"""`tokenagent revoke-request`: a CMC revokeRequest signed by an agent (or the holder's own key)."""

from __future__ import annotations

from pathlib import Path

import click

from tokenagent.cli.options import json_option, module_option, pin_options, resolve_pin_source, token_option
from tokenagent.cli.output import echo, emit_json, shown, warn
from tokenagent.cli.sign import (
    agent_from_options,
    agent_options,
    cmc_controls,
    cmc_options,
    echo_request,
    save_request,
    to_stdout,
)

REASONS = (
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "removeFromCRL",
    "privilegeWithdrawn",
    "aACompromise",
)


@click.command("revoke-request")
@click.argument("out", required=False, type=click.Path(path_type=Path))
@click.option("--cert", "cert_file", type=click.Path(path_type=Path), help="The certificate to revoke.")
@click.option("--serial", metavar="N", help="Its serial number (decimal, or 0x hex), with --issuer.")
@click.option("--issuer", metavar="DN", help="Its issuer, e.g. 'CN=Issuing CA,O=Example'.")
@click.option("--reason", default="unspecified", type=click.Choice(REASONS), help="CRLReason.")
@click.option("--comment", help="A comment for the CA operator.")
@click.option("--binary", is_flag=True, help="Write DER instead of base64.")
@click.option("-f", "--overwrite", is_flag=True, help="Replace OUT if it exists.")
@agent_options
@cmc_options
@token_option
@module_option
@pin_options
@json_option
def revoke_request(
    out: Path | None,
    cert_file: Path | None,
    serial: str | None,
    issuer: str | None,
    reason: str,
    comment: str | None,
    binary: bool,
    overwrite: bool,
    agent_key: str | None,
    agent_cert: str | None,
    strict: bool,
    pss: bool,
    agent_hash: str,
    transaction_id: int | None,
    identification: str | None,
    shared_secret_source: str | None,
    reg_info: tuple[str, ...],
    token: str | None,
    modules: tuple[str, ...],
    pin_source: str | None,
    literal_pin: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Write a CMC revocation request for a certificate (--cert FILE, or --serial and --issuer),
    signed with --agent's key on its token."""
    from tokenagent.enroll.agent import open_agent
    from tokenagent.enroll.files import check_output
    from tokenagent.enroll.revoke import build_revoke_request, target_from_certificate, target_from_text
    from tokenagent.errors import UsageError

    if agent_key is None:
        raise UsageError("give the signing key with --agent (a pkcs11: URI or its label with --token)")
    if cert_file is not None and (serial or issuer):
        raise UsageError("give either --cert or --serial with --issuer")
    if cert_file is not None:
        target = target_from_certificate(cert_file)
    elif serial and issuer:
        target = target_from_text(issuer, serial)
    else:
        raise UsageError("name the certificate: --cert FILE, or --serial N --issuer DN")
    if out is not None and not to_stdout(out):
        check_output(out, overwrite)
    options = agent_from_options(
        agent_key,
        token=token,
        certificate=agent_cert,
        modules=modules,
        pin_source=resolve_pin_source(pin_source, literal_pin, token or agent_key),
        force=force,
        agent_hash=agent_hash,
        pss=pss,
        strict=strict,
    )
    controls = cmc_controls(transaction_id, identification, shared_secret_source, reg_info)
    with open_agent(options, on_warning=warn) as agent:
        der = build_revoke_request(agent, target, reason=reason, controls=controls, comment=comment)
    encoded = save_request(der, out, binary)
    stdout = to_stdout(out)
    if as_json:
        import base64

        emit_json(
            {
                "format_version": 1,
                "output": None if stdout else str(out),
                "issuer": target.issuer_text,
                "serial": f"{target.serial:x}",
                "reason": reason,
                "base64": base64.b64encode(der).decode("ascii") if stdout else None,
            }
        )
        return
    if stdout:
        echo_request(encoded, binary)
    echo(
        f"revocation request for serial {target.serial:x} of {shown(target.issuer_text)} ({reason}) -> "
        f"{shown(str(out)) if not stdout else '(standard output)'}",
        err=stdout,
    )
