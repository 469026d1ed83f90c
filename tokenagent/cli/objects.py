"""`tokenagent objects`: keys and certificates on one token, like `pkcs11-tool -O`."""

from __future__ import annotations

import click

from tokenagent.cli.options import TokenArgs, json_option, token_options
from tokenagent.cli.output import echo, emit_json, shown, warn

CLASSES = ("private-key", "public-key", "secret-key", "certificate", "data")


@click.command("objects")
@token_options
@click.option(
    "--login/--no-login",
    default=None,
    help="Log in to see private objects (default: when a PIN source is configured or stdin is a terminal).",
)
@click.option("--type", "types", multiple=True, type=click.Choice(CLASSES), help="Only objects of this class.")
@json_option
def objects(
    tokens: TokenArgs,
    login: bool | None,
    types: tuple[str, ...],
    as_json: bool,
) -> None:
    """List keys and certificates on a token with their attributes and pkcs11: URIs."""
    from tokenagent.token.library import find_token
    from tokenagent.token.objects import list_objects
    from tokenagent.token.session import PinState, open_session

    handle = find_token(tokens.token, tokens.modules)
    target = tokens.target()
    source = target.pin_source
    pin_state = PinState.from_flags(int(handle.flags))
    asked = login is not None
    if login is None:  # a PIN pad needs no PIN source
        login = source is not None or pin_state.protected_authentication_path
    if not login and not asked and pin_state.login_required:
        warn("not logged in: private objects (such as private keys) are not listed; use --pin-source")
    with open_session(handle, login=login, pin_source=source, force=target.force, on_warning=warn) as session:
        infos = list_objects(session.session, handle)
        logged_in = session.logged_in
    if types:
        infos = [i for i in infos if i.object_class in types]
    if as_json:
        emit_json(
            {
                "format_version": 1,
                "token": {"label": handle.label, "serial": handle.serial, "uri": str(handle.uri())},
                "logged_in": logged_in,
                "piv": handle.is_piv,
                "objects": [_object_json(i, handle.is_piv) for i in infos],
            }
        )
        return
    echo(f"Token {handle.describe()}{'  [logged in]' if logged_in else ''}")
    if not infos:
        echo("  (no objects)")
    if handle.is_piv:
        echo("  PIV card (ykcs11): each key, public key and certificate sits in a fixed slot; its CKA_ID names it")
    for info in infos:
        _print_object(info, handle.is_piv)


def _piv_slot(info: object, piv: bool) -> str | None:
    """The PIV slot (9a, 9c, ...) an object's CKA_ID names on a PIV card."""
    from tokenagent.providers.piv import slot_for_id

    ident = getattr(info, "id", None)
    slot = slot_for_id(ident) if piv and ident else None
    return slot.name if slot is not None else None


def _object_json(info: object, piv: bool = False) -> dict[str, object]:
    from tokenagent.token.objects import ObjectInfo

    assert isinstance(info, ObjectInfo)
    data: dict[str, object] = {
        "class": info.object_class,
        "label": info.label,
        "id": info.id.hex() if info.id is not None else None,
        "uri": str(info.uri),
    }
    if piv:
        data["piv_slot"] = _piv_slot(info, piv)
    if info.key_type is not None or info.object_class.endswith("key"):
        data.update(
            {
                "key_type": info.key_type,
                "key_size": info.key_size,
                "curve": info.curve,
                "flags": info.flags,
                "usage": info.usage,
            }
        )
    if info.object_class == "certificate":
        cert = info.certificate
        data["certificate"] = (
            None
            if cert is None
            else {
                "subject": cert.subject,
                "issuer": cert.issuer,
                "serial": cert.serial,
                "not_before": cert.not_before.isoformat() if cert.not_before else None,
                "not_after": cert.not_after.isoformat() if cert.not_after else None,
                "sha1_fingerprint": cert.sha1_fingerprint,
            }
        )
    return data


def _print_object(info: object, piv: bool = False) -> None:
    from tokenagent.token.objects import ObjectInfo

    assert isinstance(info, ObjectInfo)
    ident = info.id.hex() if info.id else "-"
    slot = _piv_slot(info, piv)
    if slot is not None:
        ident += f" (PIV slot {slot})"
    line = f"  {info.object_class:<12}"
    if info.key_type:
        size = f" {info.key_size}" if info.key_size else ""
        curve = f" {info.curve}" if info.curve else ""
        line += f" {info.key_type}{size}{curve}"
    echo(f"{line}  id={ident}  label={info.label!r}")
    if info.flags:
        on = [name for name, value in info.flags.items() if value]
        off = [f"not {name}" for name in ("sensitive", "extractable") if info.flags.get(name) is False]
        echo(f"      flags: {', '.join(on + off) or '-'}")
        echo(f"      usage: {', '.join(info.usage) or '-'}")
    if info.certificate is not None:
        cert = info.certificate
        echo(f"      subject: {shown(cert.subject)}")
        echo(f"      issuer: {shown(cert.issuer)}")
        echo(f"      serial: {cert.serial}  not after: {cert.not_after:%Y-%m-%d %H:%M:%S}Z")
    elif info.object_class == "certificate":
        echo("      (value is not a readable X.509 certificate)")
    echo(f"      uri: {info.uri}")
