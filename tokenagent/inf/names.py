"""Distinguished names as certreq writes them: Windows CertStrToName syntax.

- RDN separators: ``,`` or ``;`` (only ``;`` with CERT_NAME_STR_SEMICOLON_FLAG, only ``,`` with
  CERT_NAME_STR_COMMA_FLAG, only CR/LF with CERT_NAME_STR_CRLF_FLAG); ``+`` joins the values of
  a multi-valued RDN (not with CERT_NAME_STR_NO_PLUS_FLAG).
- Values may be double-quoted, ``""`` being a quote inside (not with
  CERT_NAME_STR_NO_QUOTING_FLAG); RFC 4514 backslash escapes (``\\,`` ``\\+`` ``\\;`` ``\\"``
  ``\\\\`` ``\\=``) are accepted as well; blanks around keys and values are ignored.
- A value starting with ``#`` is hexadecimal and becomes an OCTET STRING, as in CertStrToName.
- Keys: CertStrToName's X.500 names (CN, E/EMAIL, S/ST, SERIALNUMBER, ...), ``OID.1.2.3`` and bare
  dotted OIDs.
- Order: the RDNs are encoded in the order written (so ``CN=John Smith,CN=Users,DC=Contoso,DC=com``
  puts the CN first in the DER, as certreq does); CERT_NAME_STR_REVERSE_FLAG reverses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tokenagent.inf.values import ValueProblem

# X500NameFlags bits that change parsing (values from wincrypt.h / the certreq reference)
SEMICOLON_FLAG = 0x40000000
NO_PLUS_FLAG = 0x20000000
NO_QUOTING_FLAG = 0x10000000
CRLF_FLAG = 0x08000000
COMMA_FLAG = 0x04000000
REVERSE_FLAG = 0x02000000

#: CertStrToName's X.500 keys (upper-case) -> (OID, the short name tokenagent prints)
NAME_KEYS: dict[str, tuple[str, str]] = {
    "CN": ("2.5.4.3", "CN"),
    "L": ("2.5.4.7", "L"),
    "O": ("2.5.4.10", "O"),
    "OU": ("2.5.4.11", "OU"),
    "E": ("1.2.840.113549.1.9.1", "E"),
    "EMAIL": ("1.2.840.113549.1.9.1", "E"),
    "C": ("2.5.4.6", "C"),
    "S": ("2.5.4.8", "S"),
    "ST": ("2.5.4.8", "S"),
    "STREET": ("2.5.4.9", "STREET"),
    "T": ("2.5.4.12", "T"),
    "TITLE": ("2.5.4.12", "T"),
    "G": ("2.5.4.42", "G"),
    "GN": ("2.5.4.42", "G"),
    "GIVENNAME": ("2.5.4.42", "G"),
    "I": ("2.5.4.43", "I"),
    "INITIALS": ("2.5.4.43", "I"),
    "SN": ("2.5.4.4", "SN"),
    "SURNAME": ("2.5.4.4", "SN"),
    "DC": ("0.9.2342.19200300.100.1.25", "DC"),
    "SERIALNUMBER": ("2.5.4.5", "SERIALNUMBER"),
    "DESCRIPTION": ("2.5.4.13", "Description"),
    "POSTALCODE": ("2.5.4.17", "PostalCode"),
    "POBOX": ("2.5.4.18", "POBox"),
    "PHONE": ("2.5.4.20", "Phone"),
    "X21ADDRESS": ("2.5.4.24", "X21Address"),
    "DNQUALIFIER": ("2.5.4.46", "dnQualifier"),
    "UNSTRUCTUREDNAME": ("1.2.840.113549.1.9.2", "UnstructuredName"),
    "UNSTRUCTUREDADDRESS": ("1.2.840.113549.1.9.8", "UnstructuredAddress"),
    "UID": ("0.9.2342.19200300.100.1.1", "UID"),
    "PSEUDONYM": ("2.5.4.65", "Pseudonym"),
    "GENERATIONQUALIFIER": ("2.5.4.44", "GenerationQualifier"),
    "ORGANIZATIONIDENTIFIER": ("2.5.4.97", "OrganizationIdentifier"),
}
_SHORT_BY_OID = {oid: short for oid, short in NAME_KEYS.values()}

OID_PATTERN = re.compile(r"[0-2](\.(0|[1-9]\d*))+")


def check_oid(text: str) -> str:
    value = text.strip()
    if not OID_PATTERN.fullmatch(value):
        raise ValueProblem(f"'{text}' is not an object identifier (dotted numbers like 1.3.6.1.5.5.7.3.2)")
    first, second = (int(x) for x in value.split(".")[:2])
    if first < 2 and second > 39:
        raise ValueProblem(f"'{text}' is not a valid object identifier (second arc > 39)")
    return value


@dataclass(frozen=True)
class NameAttribute:
    oid: str
    value: str | bytes  # bytes: a '#hex' value, encoded as an OCTET STRING

    @property
    def short_name(self) -> str:
        return _SHORT_BY_OID.get(self.oid, f"OID.{self.oid}")

    def __str__(self) -> str:
        if isinstance(self.value, bytes):
            return f"{self.short_name}=#{self.value.hex().upper()}"
        value = self.value
        if re.search(r'[,;+="\n<>#]', value) or value != value.strip():
            value = '"' + value.replace('"', '""') + '"'
        return f"{self.short_name}={value}"


@dataclass(frozen=True)
class DistinguishedName:
    """RDNs in DER order; each RDN a tuple of attributes (more than one for ``A=x+B=y``)."""

    rdns: tuple[tuple[NameAttribute, ...], ...]

    def __str__(self) -> str:
        return ", ".join("+".join(str(a) for a in rdn) for rdn in self.rdns)

    def to_json(self) -> list[list[dict[str, str]]]:
        return [
            [
                {
                    "oid": a.oid,
                    "name": a.short_name,
                    "value": a.value if isinstance(a.value, str) else "#" + a.value.hex(),
                }
                for a in rdn
            ]
            for rdn in self.rdns
        ]


def _separators(flags: int) -> str:
    if flags & CRLF_FLAG:
        return "\r\n"
    if flags & SEMICOLON_FLAG and not flags & COMMA_FLAG:
        return ";"
    if flags & COMMA_FLAG and not flags & SEMICOLON_FLAG:
        return ","
    return ",;"


def _key_oid(key: str) -> str:
    name = key.strip()
    upper = name.upper()
    if upper in NAME_KEYS:
        return NAME_KEYS[upper][0]
    if upper.startswith("OID."):
        return check_oid(name[4:])
    if name[:1].isdigit():
        return check_oid(name)
    raise ValueProblem(f"unknown name attribute '{name}' (use CN, O, OU, E, DC, ... or OID.1.2.3)")


def parse_name(text: str, flags: int = 0) -> DistinguishedName:
    """Parse a Subject (or SAN DirectoryName) string; `ValueProblem` names what is wrong."""
    reader = _NameReader(text, flags)
    rdns: list[list[NameAttribute]] = [[]]
    while True:
        key = reader.key(first=rdns == [[]])
        oid = _key_oid(key)
        rdns[-1].append(NameAttribute(oid, reader.value(key.strip())))
        if reader.at_end():
            break
        if reader.joins_rdn():
            continue
        reader.skip_separator()
        if reader.at_end():
            break  # a trailing separator, as in "CN=x,"
        rdns.append([])
    result = tuple(tuple(rdn) for rdn in rdns if rdn)
    if flags & REVERSE_FLAG:
        result = tuple(reversed(result))
    return DistinguishedName(result)


class _NameReader:
    """A position in a name string, with the separator, ``+`` and quoting rules of its flags.

    The loops index the text directly: a Subject may be megabytes long in a hostile file."""

    def __init__(self, text: str, flags: int) -> None:
        self.text = text
        self.pos = 0
        self.separators = _separators(flags)
        self.plus = not flags & NO_PLUS_FLAG
        self.quoting = not flags & NO_QUOTING_FLAG

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def _ends_value(self, char: str) -> bool:
        return char in self.separators or (self.plus and char == "+")

    def _skip(self, blanks: str) -> None:
        text, n, i = self.text, len(self.text), self.pos
        while i < n and text[i] in blanks:
            i += 1
        self.pos = i

    def key(self, first: bool) -> str:
        """The text up to '=' (consumed); `first` tells an empty name from a missing key."""
        text, n, start = self.text, len(self.text), self.pos
        i = start
        while i < n and text[i] != "=" and text[i] not in self.separators:
            i += 1
        self.pos = i
        key = text[start:i]
        if i >= n or text[i] != "=":
            if first and not key.strip() and i >= n:
                raise ValueProblem("empty name")
            raise ValueProblem(f"expected 'KEY=value' at '{text[start : start + 30]}'")
        self.pos += 1
        return key

    def value(self, key: str) -> str | bytes:
        self._skip(" \t")
        if self.quoting and not self.at_end() and self.text[self.pos] == '"':
            return self._quoted(key)  # a quoted '#...' stays text
        value = self._unquoted()
        return _hex_value(value) if value.startswith("#") else value

    def _quoted(self, key: str) -> str:
        text, n, i = self.text, len(self.text), self.pos + 1
        chars: list[str] = []
        while True:
            if i >= n:
                raise ValueProblem(f"unterminated quote in the value of {key}")
            if text[i] == '"':
                if text[i + 1 : i + 2] == '"':
                    chars.append('"')
                    i += 2
                    continue
                i += 1
                break
            chars.append(text[i])
            i += 1
        self.pos = i
        self._skip(" \t")
        if not self.at_end() and not self._ends_value(self.text[self.pos]):
            raise ValueProblem(f"text after the quoted value of {key}")
        return "".join(chars)

    def _unquoted(self) -> str:
        text, n, i = self.text, len(self.text), self.pos
        chars: list[str] = []
        while i < n and not self._ends_value(text[i]):
            if text[i] == "\\" and i + 1 < n:
                chars.append(text[i + 1])
                i += 2
                continue
            chars.append(text[i])
            i += 1
        self.pos = i
        return "".join(chars).strip()

    def joins_rdn(self) -> bool:
        """Consume a '+' that adds the next attribute to the same RDN."""
        if self.plus and self.text[self.pos] == "+":
            self.pos += 1
            return True
        return False

    def skip_separator(self) -> None:
        self.pos += 1
        self._skip(" \t\r\n")


def _hex_value(value: str) -> bytes:
    """CertStrToName's ``#hex`` value, encoded as an OCTET STRING."""
    try:
        return bytes.fromhex(re.sub(r"\s+", "", value[1:]))
    except ValueError:
        raise ValueProblem(f"'{value}' starts with '#' but is not hexadecimal") from None
