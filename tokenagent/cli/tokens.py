"""`tokenagent tokens`: modules, slots and tokens, like `pkcs11-tool -L` for every module."""

from __future__ import annotations

import click

from tokenagent.cli.options import json_option, module_option
from tokenagent.cli.output import echo, emit_json, field_line, shown


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
        echo(f"Module {shown(report.name)}: {shown(str(report.path))}")
        if report.error:
            echo(f"  error: {report.error}")
            continue
        echo(
            f"  {shown(str(report.description))} by {shown(str(report.manufacturer))}, "
            f"version {report.library_version}, "
            f"Cryptoki {report.cryptoki_version}"
        )
        if not report.slots:
            echo("  (no slots)")
        for slot in report.slots:
            echo(f"  Slot {slot.slot_id}: {shown(slot.description)}")
            if slot.token is None:
                echo("    (no token present)")
                continue
            token = slot.token
            if "TOKEN_INITIALIZED" not in token.flags:
                echo("    (token not initialized)")
                continue
            echo(field_line("token label", token.label))
            echo(field_line("serial", token.serial))
            echo(field_line("manufacturer", token.manufacturer))
            echo(field_line("model", token.model))
            echo(field_line("flags", ", ".join(token.flags)))
            echo(field_line("user PIN", _pin_summary(token.pin)))
            echo(field_line("uri", token.uri))
            if token.piv:
                echo(
                    field_line(
                        "PIV slots", "9a 9c 9d 9e 82-95 (CKA_ID 01-18); keys and certificates need the management key"
                    )
                )
            if token.mechanisms is not None:
                echo(field_line("mechanisms", len(token.mechanisms)))
                for mech in token.mechanisms:
                    sizes = f"{mech.min_key_size}..{mech.max_key_size}" if mech.max_key_size is not None else "-"
                    echo(f"      {mech.name:<34} {sizes:>12}  {', '.join(mech.flags)}")


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
