"""`tokenagent revoke-request`: a CMC revokeRequest signed by an agent (or the holder's own key), or,
with --config, a revocation request sent to the CA (CMP rr)."""

from __future__ import annotations

from pathlib import Path

import click

from tokenagent.cli.options import (
    AgentArgs,
    CaArgs,
    CmcArgs,
    TokenArgs,
    agent_options,
    agent_target,
    agent_token_options,
    ca_options,
    cmc_options,
    json_option,
    token_options,
)
from tokenagent.cli.output import echo, echo_request, emit_json, output_path, shown, warn

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
@agent_token_options
@cmc_options
@token_options
@ca_options
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
    agent: AgentArgs,
    agent_token: str | None,
    agent_pin_source: str | None,
    cmc: CmcArgs,
    tokens: TokenArgs,
    ca: CaArgs,
    as_json: bool,
) -> None:
    """Write a CMC revocation request for a certificate (--cert FILE, or --serial and --issuer),
    signed with --agent's key on its token. With --config (a CMP CA: cmp+http://HOST/PATH or a
    cas.toml profile), send the CA a revocation request for --cert instead (CMP rr, protected with
    the profile's shared secret): exit 0 when the CA revoked it."""
    from tokenagent.enroll.revoke import RevokeOptions, revoke, target_from_certificate, target_from_text
    from tokenagent.errors import UsageError

    if ca.given:
        if ca.config is None:
            raise UsageError(
                "the CA options (--cas, --ca-*, --timeout) go with --config, the CA to send the request to"
            )
        unused = {
            "OUT": out is not None,
            "--agent": agent.key is not None,
            "--comment": comment is not None,
            "--binary": binary,
            "--overwrite": overwrite,
            "--attrib": bool(ca.attributes),
            "the CMC options": cmc.given,
        }
        named = [name for name, given in unused.items() if given]
        if named:
            raise UsageError(
                f"{', '.join(named)}: not with --config (the CA is sent a revocation request protected with "
                "its profile's shared secret; nothing is written)"
            )
        if cert_file is None or serial or issuer:
            raise UsageError("with --config, give the certificate to revoke as --cert FILE (the CA is sent it)")
        _revoke_at_ca(cert_file, reason, ca, as_json)
        return
    if agent.key is None:
        raise UsageError("give the signing key with --agent (a pkcs11: URI or its label with --token)")
    if cert_file is not None and (serial or issuer):
        raise UsageError("give either --cert or --serial with --issuer")
    if cert_file is not None:
        target = target_from_certificate(cert_file)
    elif serial and issuer:
        target = target_from_text(issuer, serial)
    else:
        raise UsageError("name the certificate: --cert FILE, or --serial N --issuer DN")
    agent_options_ = agent.options(agent_target(tokens, agent.key, agent_token, agent_pin_source))
    assert agent_options_ is not None
    options = RevokeOptions(
        agent=agent_options_,
        target=target,
        controls=cmc.controls(),
        reason=reason,
        comment=comment,
        output=output_path(out),
        binary=binary,
        overwrite=overwrite,
    )
    result = revoke(options, on_warning=warn)
    if as_json:
        emit_json(result.to_json())
        return
    if result.output is None:
        echo_request(result.encoded, binary)
    echo(
        f"revocation request ({reason}) for the certificate with serial number 0x{target.serial:x} "
        f"issued by {shown(target.issuer_text)} -> "
        f"{shown(str(out)) if result.output else '(standard output)'}",
        err=result.output is None,
    )


def _revoke_at_ca(cert_file: Path, reason: str, ca: CaArgs, as_json: bool) -> None:
    from tokenagent.enroll.revoke import CaRevokeOptions, revoke_at_ca, target_from_certificate

    target = target_from_certificate(cert_file)
    result = revoke_at_ca(CaRevokeOptions(ca.options(), target, reason))
    if as_json:
        emit_json(result.to_json())
        return
    # "revoked" is what the connector says when the CA gave no statusString: nothing to quote
    said = f"; the CA said: {shown(result.message)}" if result.message != "revoked" else ""
    echo(
        f"revoked by {shown(result.ca)} ({reason}): the certificate with serial number 0x{target.serial:x} "
        f"issued by {shown(target.issuer_text)}{said}"
    )
