"""`tokenagent tokens`: modules, slots and tokens, like `pkcs11-tool -L` for every module."""

from __future__ import annotations

import click

from tokenagent.cli.options import json_option, module_option
from tokenagent.cli.output import emit_json, field_line


@click.command("tokens")
@module_option
@click.option("--mechanisms", is_flag=True, help="Also list each token's mechanisms, key sizes and flags.")
@json_option
def tokens(modules: tuple[str, ...], mechanisms: bool, as_json: bool) -> None:
    """List PKCS#11 modules, slots and tokens, with PIN state and (optionally) mechanisms."""
    from tokenagent.token.inventory import inventory
    from tokenagent.token.modules import discover_modules

    reports = inventory(discover_modules(modules), mechanisms=mechanisms, strict=bool(modules))
    if as_json:
        emit_json({"format_version": 1, "modules": [r.to_json() for r in reports]})
        return
    for report in reports:
        click.echo(f"Module {report.name}: {report.path}")
        if report.error:
            click.echo(f"  error: {report.error}")
            continue
        click.echo(
            f"  {report.description} by {report.manufacturer}, version {report.library_version}, "
            f"Cryptoki {report.cryptoki_version}"
        )
        if not report.slots:
            click.echo("  (no slots)")
        for slot in report.slots:
            click.echo(f"  Slot {slot.slot_id}: {slot.description}")
            if slot.token is None:
                click.echo("    (no token present)")
                continue
            token = slot.token
            if "TOKEN_INITIALIZED" not in token.flags:
                click.echo("    (token not initialized)")
                continue
            click.echo(field_line("token label", token.label))
            click.echo(field_line("serial", token.serial))
            click.echo(field_line("manufacturer", token.manufacturer))
            click.echo(field_line("model", token.model))
            click.echo(field_line("flags", ", ".join(token.flags)))
            click.echo(field_line("user PIN", _pin_summary(token.pin)))
            click.echo(field_line("uri", token.uri))
            if token.mechanisms is not None:
                click.echo(field_line("mechanisms", len(token.mechanisms)))
                for mech in token.mechanisms:
                    sizes = f"{mech.min_key_size}..{mech.max_key_size}" if mech.max_key_size is not None else "-"
                    click.echo(f"      {mech.name:<34} {sizes:>12}  {', '.join(mech.flags)}")


def _pin_summary(pin: object) -> str:
    from tokenagent.token.session import PinState

    assert isinstance(pin, PinState)
    if not pin.initialized:
        return "not initialized"
    parts = ["login required" if pin.login_required else "no login required"]
    if pin.locked:
        parts.append("LOCKED")
    elif pin.final_try:
        parts.append("FINAL TRY")
    elif pin.count_low:
        parts.append("count low")
    else:
        parts.append("ok")
    if pin.to_be_changed:
        parts.append("must be changed")
    if pin.protected_authentication_path:
        parts.append("PIN pad")
    return ", ".join(parts)
