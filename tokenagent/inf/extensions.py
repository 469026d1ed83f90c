"""[Extensions] values and SAN tag lists, parsed into typed specifications.

Value forms of an extension line ``OID = VALUE``:
  ``{text}...``       readable syntax, for 2.5.29.17 (SAN), 2.5.29.37 (EKU), 2.5.29.19 (basic constraints)
  ``BASE64``          the DER extnValue, base64 (``_continue_`` fragments concatenate)
  ``{hex}HEX``        the DER extnValue in hex (blanks ignored)
  ``{asn}BASE64``     the DER extnValue, base64
  ``{octet}BASE64``   bytes wrapped in an OCTET STRING  (``{octet}{hex}...`` for hex bytes)
  ``{utf8}TEXT``      text wrapped in a UTF8String

SAN tags (``tag=value`` joined by ``&``): UPN, EMail, DNS, DirectoryName, URL, IPAddress (v4 and
v6), RegisteredId, GUID, and ``OID=value`` for an otherName whose value takes the same
``{utf8}``/``{octet}``/``{asn}``/``{hex}`` prefixes (``{utf8}`` when none is given).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import uuid
from dataclasses import dataclass

from asn1crypto import core

from tokenagent.inf.names import DistinguishedName, check_oid, parse_name
from tokenagent.inf.values import ValueProblem
from tokenagent.request.oids import (
    OID_BASIC_CONSTRAINTS,
    OID_EXTENDED_KEY_USAGE,
    OID_SUBJECT_ALT_NAME,
)

SAN_KINDS = {
    "upn": "upn",
    "email": "email",
    "dns": "dns",
    "directoryname": "directory_name",
    "dn": "directory_name",
    "url": "url",
    "ipaddress": "ip_address",
    "registeredid": "registered_id",
    "guid": "guid",
    "oid": "registered_id",  # the [RequestAttributes] SAN form "oid=2.5.29.17"
}


@dataclass(frozen=True)
class GeneralNameSpec:
    """One SAN entry. ``value`` is text, except: directory_name (DistinguishedName), ip_address
    (packed address bytes), guid (the 16 GUID bytes as Windows stores them), other_name (DER of
    the value that goes inside [0] EXPLICIT)."""

    kind: str  # upn | email | dns | directory_name | url | ip_address | registered_id | guid | other_name
    value: str | bytes | DistinguishedName
    other_oid: str | None = None

    def describe(self) -> str:
        if self.kind == "ip_address":
            assert isinstance(self.value, bytes)
            return f"IPAddress={ipaddress.ip_address(self.value)}"
        if self.kind == "guid":
            assert isinstance(self.value, bytes)
            return f"GUID={uuid.UUID(bytes_le=self.value)}"
        if self.kind == "other_name":
            assert isinstance(self.value, bytes)
            return f"{self.other_oid}={{asn}}{base64.b64encode(self.value).decode()}"
        label = {
            "upn": "UPN",
            "email": "EMail",
            "dns": "DNS",
            "directory_name": "DirectoryName",
            "url": "URL",
            "registered_id": "RegisteredId",
        }[self.kind]
        assert not isinstance(self.value, bytes)
        return f"{label}={self.value}"


@dataclass(frozen=True)
class ExtensionSpec:
    oid: str
    critical: bool
    line: int
    kind: str  # subject_alt_name | extended_key_usage | basic_constraints | raw
    alt_names: tuple[GeneralNameSpec, ...] = ()
    usages: tuple[str, ...] = ()
    ca: bool | None = None
    path_length: int | None = None
    der: bytes | None = None  # kind == "raw": the extnValue DER

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "oid": self.oid,
            "critical": self.critical,
            "kind": self.kind,
            "line": self.line,
        }
        if self.kind == "subject_alt_name":
            data["names"] = [n.describe() for n in self.alt_names]
        elif self.kind == "extended_key_usage":
            data["usages"] = list(self.usages)
        elif self.kind == "basic_constraints":
            data["ca"] = self.ca
            data["path_length"] = self.path_length
        else:
            data["der_hex"] = self.der.hex() if self.der else None
        return data


# -- byte forms ----------------------------------------------------------------------------------


def decode_base64(text: str) -> bytes:
    compact = re.sub(r"\s+", "", text)
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueProblem("not valid base64") from None


def decode_hex(text: str) -> bytes:
    try:
        return bytes.fromhex(re.sub(r"\s+", "", text))
    except ValueError:
        raise ValueProblem("not valid hexadecimal") from None


def check_der(data: bytes) -> bytes:
    """The bytes must be exactly one complete DER element, every nested length consistent."""
    if not data:
        raise ValueProblem("empty DER value")
    if _walk_tlv(data, 0, len(data), depth=0) != len(data):
        raise ValueProblem("not a single DER value (trailing bytes)")
    return data


def _walk_tlv(data: bytes, offset: int, end: int, depth: int) -> int:
    """Walk one TLV at offset; return the offset after it. Constructed values are walked inside."""
    if depth > 64:
        raise ValueProblem("DER nested too deeply")
    if offset + 2 > end:
        raise ValueProblem("not a complete DER value (truncated)")
    tag = data[offset]
    offset += 1
    if tag & 0x1F == 0x1F:  # high tag number form
        while offset < end and data[offset] & 0x80:
            offset += 1
        offset += 1
    if offset >= end:
        raise ValueProblem("not a complete DER value (truncated)")
    length = data[offset]
    offset += 1
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or offset + count > end:
            raise ValueProblem("not a complete DER value (bad length)")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    if offset + length > end:
        raise ValueProblem("not a complete DER value (truncated)")
    if tag & 0x20:  # constructed: its contents are TLVs too
        inner = offset
        while inner < offset + length:
            inner = _walk_tlv(data, inner, offset + length, depth + 1)
    return offset + length


def tagged_value(text: str, *, default: str) -> bytes:
    """A ``{utf8}``/``{octet}``/``{asn}``/``{hex}``-prefixed value as DER; ``default`` applies
    when there is no prefix ("utf8" inside SAN otherNames, "asn" for whole extensions)."""
    value = text.strip()
    lowered = value.lower()
    if lowered.startswith("{utf8}"):
        return core.UTF8String(value[6:]).dump()
    if lowered.startswith("{octet}{hex}"):
        return core.OctetString(decode_hex(value[12:])).dump()
    if lowered.startswith("{octet}"):
        return core.OctetString(decode_base64(value[7:])).dump()
    if lowered.startswith("{asn}"):
        return check_der(decode_base64(value[5:].lstrip("=")))
    if lowered.startswith("{hex}"):
        return check_der(decode_hex(value[5:]))
    if default == "utf8":
        return core.UTF8String(value).dump()
    return check_der(decode_base64(value))


# -- SAN -----------------------------------------------------------------------------------------

_TAG_START = re.compile(
    r"&\s*(?=(?:upn|email|dns|directoryname|dn|url|ipaddress|registeredid|guid|oid|[0-2](?:\.\d+)+)\s*=)",
    re.IGNORECASE,
)


def split_san_items(fragments: list[str]) -> list[str]:
    """Split SAN text on '&' that starts a new ``tag=`` (so a URL's own '&' survives)."""
    items: list[str] = []
    for fragment in fragments:
        for item in _TAG_START.split(fragment):
            item = item.strip()
            if item.endswith("&"):
                item = item[:-1].rstrip()
            if item:
                items.append(item)
    return items


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_san_item(item: str, name_flags: int = 0) -> GeneralNameSpec:
    tag, sep, raw = item.partition("=")
    if not sep:
        raise ValueProblem(f"SAN entry '{item}' is not tag=value")
    tag = tag.strip()
    value = _unquote(raw)
    kind = SAN_KINDS.get(tag.lower())
    if kind is None:
        oid = check_oid(tag) if tag[:1].isdigit() else None
        if oid is None:
            raise ValueProblem(
                f"unknown SAN tag '{tag}' "
                "(UPN, EMail, DNS, DirectoryName, URL, IPAddress, RegisteredId, GUID or an OID)"
            )
        return GeneralNameSpec("other_name", tagged_value(value, default="utf8"), other_oid=oid)
    if not value:
        raise ValueProblem(f"SAN {tag} has an empty value")
    if kind == "ip_address":
        try:
            return GeneralNameSpec(kind, ipaddress.ip_address(value).packed)
        except ValueError:
            raise ValueProblem(f"'{value}' is not an IPv4 or IPv6 address") from None
    if kind == "guid":
        try:
            return GeneralNameSpec(kind, uuid.UUID(value.strip("{}")).bytes_le)
        except ValueError:
            raise ValueProblem(f"'{value}' is not a GUID") from None
    if kind == "registered_id":
        return GeneralNameSpec(kind, check_oid(value))
    if kind == "directory_name":
        return GeneralNameSpec(kind, parse_name(value, name_flags))
    if kind in ("email", "dns") and not value.isascii():
        raise ValueProblem(f"SAN {tag} '{value}' must be ASCII (IA5String)")
    return GeneralNameSpec(kind, value)


def parse_san_text(fragments: list[str], name_flags: int = 0) -> tuple[GeneralNameSpec, ...]:
    items = split_san_items(fragments)
    if not items:
        raise ValueProblem("the SAN has no entries")
    return tuple(parse_san_item(item, name_flags) for item in items)


# -- EKU and basic constraints -------------------------------------------------------------------


def parse_eku_text(fragments: list[str]) -> tuple[str, ...]:
    usages: list[str] = []
    for fragment in fragments:
        for part in fragment.split(","):
            if part.strip():
                usages.append(check_oid(part))
    if not usages:
        raise ValueProblem("the enhanced key usage list is empty")
    return tuple(dict.fromkeys(usages))


# a pattern text: re compiles (and caches) it for the rare INF with basic constraints, not at import
_BC_PART = r"(?i)(?<![a-z])(ca|pathlength)\s*=\s*(true|false|yes|no|none|-?\d+)"


def parse_basic_constraints_text(fragments: list[str]) -> tuple[bool, int | None]:
    text = "&".join(fragments)
    found = {key.lower(): value.lower() for key, value in re.findall(_BC_PART, text)}
    leftover = re.sub(_BC_PART, "", text).replace("&", "").strip()
    if leftover or ("ca" not in found and "pathlength" not in found):
        raise ValueProblem(f"basic constraints must be ca=0|1[&pathlength=N], not '{text}'")
    ca = found.get("ca", "0") in ("1", "true", "yes")
    path = found.get("pathlength")
    path_length = None if path is None or path in ("none", "-1") else int(path)
    if path_length is not None and path_length < 0:
        raise ValueProblem("pathlength must be 0 or more")
    # RFC 5280 allows pathLenConstraint only with cA TRUE; certreq's own example writes
    # "ca=0&pathlength=3", so the length is dropped for an end-entity instead of refused.
    return ca, path_length if ca else None


def parse_extension(oid: str, fragments: list[str], line: int, critical: bool, name_flags: int) -> ExtensionSpec:
    first = fragments[0].lstrip()
    if first.lower().startswith("{text}"):
        rest = [first[6:], *fragments[1:]]
        if oid == OID_SUBJECT_ALT_NAME:
            return ExtensionSpec(oid, critical, line, "subject_alt_name", alt_names=parse_san_text(rest, name_flags))
        if oid == OID_EXTENDED_KEY_USAGE:
            return ExtensionSpec(oid, critical, line, "extended_key_usage", usages=parse_eku_text(rest))
        if oid == OID_BASIC_CONSTRAINTS:
            ca, path_length = parse_basic_constraints_text(rest)
            return ExtensionSpec(oid, critical, line, "basic_constraints", ca=ca, path_length=path_length)
        raise ValueProblem(f"the {{text}} form is defined for SAN, EKU and basic constraints, not {oid}")
    joined = "".join(f.strip() for f in fragments)
    return ExtensionSpec(oid, critical, line, "raw", der=tagged_value(joined, default="asn"))
