"""`tokenagent inf show FILE`: the resolved policy, field by field, with where each value came from."""

from __future__ import annotations

import click

from tokenagent.cli.options import json_option
from tokenagent.cli.output import echo, emit_json, shown, warn


@click.group("inf")
def inf() -> None:
    """Read certreq INF policy files."""


@inf.command("show")
@click.argument("file", type=click.Path())
@json_option
def show(file: str, as_json: bool) -> None:
    """Print the policy FILE resolves to: every field, its value, and whether it came from the
    file (with its line) or a default; then the warnings. Exit 3 if the INF has an error."""
    from tokenagent.inf import load_policy

    policy = load_policy(file)
    data = policy.to_json()
    if as_json:
        emit_json(data)
    else:
        echo(f"Policy {shown(file)}")
        for name, entry in data["policy"].items():
            value = entry["value"]
            if name == "subject" and value is not None:
                value = value["text"]
            elif name == "key_usage":
                value = f"0x{value:x} ({', '.join(entry['names']) or 'none'})"
            elif name in ("key_usage_property", "x500_name_flags", "subject_name_flags") and value is not None:
                value = f"0x{value:x}"
            elif name == "extensions":
                continue
            where = (
                f"line {entry['line']}"
                if entry["source"] == "file"
                else f"default{': ' + entry['note'] if entry['note'] else ''}"
            )
            echo(f"  {_label(name):<30} {shown(_show(value)):<44} [{shown(where)}]")
        extensions = data["policy"]["extensions"]["value"]
        echo(f"  extensions ({len(extensions)})")
        for ext in extensions:
            critical = ", critical" if ext["critical"] else ""
            echo(f"    {ext['oid']} {ext['kind']}{critical}  [line {ext['line']}]")
            for item in ext.get("names", []) + ext.get("usages", []):
                echo(f"      {shown(str(item))}")
            if ext["kind"] == "basic_constraints":
                echo(f"      ca={ext['ca']} path_length={ext['path_length']}")
            if ext["kind"] == "raw":
                echo(f"      DER {ext['der_hex']}")
    for diagnostic in policy.warnings:
        warn(f"{diagnostic.filename}:{diagnostic.line}: {diagnostic.message}")


#: fields that no [NewRequest] key sets directly, named as a person reading the INF would look for them
_OTHER_LABELS = {
    "key_usage_critical": "KeyUsage critical",
    "pkcs10_without_wrapping": "RequestType = PKCS10- (no wrapping)",
    "certificate_template": "[RequestAttributes] CertificateTemplate",
    "request_attributes": "[RequestAttributes]",
    "san_attribute": "[RequestAttributes] SAN",
}


def _label(field_name: str) -> str:
    """The INF key a policy field comes from (KeySpec, not key_spec): what the user wrote."""
    from tokenagent.inf.policy import NEWREQUEST_TABLE

    for row in NEWREQUEST_TABLE:
        if row.field == field_name and row.key and field_name not in _OTHER_LABELS:
            return str(row.key)
    return _OTHER_LABELS.get(field_name, field_name)


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        items = [f"{v[0]}={v[1]}" if isinstance(v, list) and len(v) == 2 else str(v) for v in value]
        return "; ".join(items) or "-"
    return str(value)
