"""RFC 7512 ``pkcs11:`` URIs: how OpenSSL, GnuTLS and p11-kit name tokens and objects.

    pk11-URI   = "pkcs11:" pk11-path [ "?" pk11-query ]
    pk11-path  = [ pk11-pattr *(";" pk11-pattr) ]
    pk11-query = [ pk11-qattr *("&" pk11-qattr) ]

Values are percent-decoded on parsing; ``id`` is kept as bytes, everything else as text.
Formatting percent-encodes every ``id`` byte (as p11tool and p11-kit do) and, in the other
values, every character outside RFC 3986's unreserved set and RFC 7512's pk11-res-avail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

from tokenagent.errors import UsageError

SCHEME = "pkcs11:"

#: Path attributes defined by RFC 7512 §2.3, in the order tokenagent writes them.
PATH_ATTRIBUTES = (
    "library-manufacturer",
    "library-description",
    "library-version",
    "slot-manufacturer",
    "slot-description",
    "slot-id",
    "manufacturer",
    "model",
    "serial",
    "token",
    "id",
    "object",
    "type",
)
QUERY_ATTRIBUTES = ("pin-source", "pin-value", "module-name", "module-path")
OBJECT_TYPES = ("public", "private", "cert", "secret-key", "data")

# RFC 7512 pk11-res-avail minus ";" "?" "&" which separate attributes; "/" is fine in values.
_SAFE_PATH = ":[]@!$'()*+,=/"
_SAFE_QUERY = ":[]@!$'()*+,=/?|"


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed ``pkcs11:`` URI. Unknown ``x-`` vendor attributes are kept and ignored."""

    path: dict[str, str] = field(default_factory=dict)
    object_id: bytes | None = None
    query: dict[str, str] = field(default_factory=dict)

    # -- attribute accessors, named as in the RFC ---------------------------------------------
    @property
    def token(self) -> str | None:
        return self.path.get("token")

    @property
    def serial(self) -> str | None:
        return self.path.get("serial")

    @property
    def manufacturer(self) -> str | None:
        return self.path.get("manufacturer")

    @property
    def model(self) -> str | None:
        return self.path.get("model")

    @property
    def slot_id(self) -> int | None:
        value = self.path.get("slot-id")
        return None if value is None else int(value)

    @property
    def object(self) -> str | None:
        return self.path.get("object")

    @property
    def type(self) -> str | None:
        return self.path.get("type")

    @property
    def module_path(self) -> str | None:
        return self.query.get("module-path")

    @property
    def module_name(self) -> str | None:
        return self.query.get("module-name")

    @property
    def pin_source(self) -> str | None:
        return self.query.get("pin-source")

    @property
    def has_pin_value(self) -> bool:
        return "pin-value" in self.query

    def token_part(self) -> Pkcs11Uri:
        """The same URI without object attributes and without the query (a token selector)."""
        path = {k: v for k, v in self.path.items() if k not in ("object", "type")}
        return Pkcs11Uri(path=path)

    def __str__(self) -> str:
        return format_uri(self)

    def __repr__(self) -> str:
        # pin-value is a secret: a URI's repr must never carry it into logs or tracebacks.
        shown = dict(self.query)
        if "pin-value" in shown:
            shown["pin-value"] = "***"
        return f"Pkcs11Uri({format_uri(Pkcs11Uri(self.path, self.object_id, shown))!r})"


def is_pkcs11_uri(text: str) -> bool:
    return text[: len(SCHEME)].lower() == SCHEME


def parse_uri(text: str) -> Pkcs11Uri:
    """Parse an RFC 7512 URI; a malformed one is a `UsageError` naming the bad part."""
    if not is_pkcs11_uri(text):
        raise UsageError(f"not a pkcs11: URI: {_shown(text)}")
    body = text[len(SCHEME) :]
    path_text, _, query_text = body.partition("?")
    path: dict[str, str] = {}
    object_id: bytes | None = None
    for part in _split(path_text, ";"):
        name, value = _attribute(part, text)
        if name in path or (name == "id" and object_id is not None):
            raise UsageError(f"pkcs11: URI repeats the attribute '{name}'")
        if name == "id":
            object_id = value
            continue
        decoded = _text(value, name)
        if name not in PATH_ATTRIBUTES and not name.startswith("x-"):
            raise UsageError(f"pkcs11: URI has an unknown path attribute '{name}'")
        if name == "type" and decoded not in OBJECT_TYPES:
            raise UsageError(f"pkcs11: URI type must be one of {', '.join(OBJECT_TYPES)}, not '{decoded}'")
        if name == "slot-id" and not decoded.isdigit():
            raise UsageError(f"pkcs11: URI slot-id must be a decimal number, not '{decoded}'")
        path[name] = decoded
    query: dict[str, str] = {}
    for part in _split(query_text, "&"):
        name, value = _attribute(part, text)
        if name not in QUERY_ATTRIBUTES and not name.startswith("x-"):
            raise UsageError(f"pkcs11: URI has an unknown query attribute '{name}'")
        if name in query:
            raise UsageError(f"pkcs11: URI repeats the attribute '{name}'")
        query[name] = _text(value, name)
    return Pkcs11Uri(path=path, object_id=object_id, query=query)


def format_uri(uri: Pkcs11Uri) -> str:
    parts: list[str] = []
    for name in PATH_ATTRIBUTES:
        if name == "id":
            if uri.object_id is not None:
                parts.append("id=" + "".join(f"%{b:02X}" for b in uri.object_id))
            continue
        if name in uri.path:
            parts.append(f"{name}={quote(uri.path[name], safe=_SAFE_PATH)}")
    parts.extend(f"{name}={quote(value, safe=_SAFE_PATH)}" for name, value in uri.path.items() if name.startswith("x-"))
    text = SCHEME + ";".join(parts)
    if uri.query:
        text += "?" + "&".join(f"{k}={quote(v, safe=_SAFE_QUERY)}" for k, v in uri.query.items())
    return text


def _split(text: str, separator: str) -> list[str]:
    return [part for part in text.split(separator) if part]


def _attribute(part: str, whole: str) -> tuple[str, bytes]:
    name, eq, value = part.partition("=")
    if not eq or not name:
        raise UsageError(f"pkcs11: URI attribute without a value: '{_shown(part)}' in {_shown(whole)}")
    try:
        raw = unquote_to_bytes(_check_percent(value, name))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return name.lower(), raw


def _check_percent(value: str, name: str) -> str:
    i = value.find("%")
    while i != -1:
        hex_digits = value[i + 1 : i + 3]
        if len(hex_digits) != 2 or any(c not in "0123456789abcdefABCDEF" for c in hex_digits):
            raise ValueError(f"pkcs11: URI attribute '{name}' has a bad percent-escape")
        i = value.find("%", i + 3)
    return value


def _text(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"pkcs11: URI attribute '{name}' is not UTF-8 text") from None


def _shown(text: str) -> str:
    """A URI as it may appear in a message: any pin-value is masked."""
    head, sep, query = text.partition("?")
    if not sep:
        return text
    masked = ["pin-value=***" if q.lower().startswith("pin-value=") else q for q in query.split("&")]
    return head + "?" + "&".join(masked)
