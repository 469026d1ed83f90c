"""One rendering rule for every string that came from an input and is shown to a person.

A request, certificate, CMS message, INF file or token label can carry characters a terminal acts
on instead of showing: ESC/CSI sequences that move the cursor or erase lines, a carriage return
that overwrites the line, bidi overrides that reverse text, zero-width characters that hide a
difference. An enrollment agent's confirmation screen must show exactly what is signed, so each
such character is shown as an escape (``\\x1b``, ``\\u202e``) and never passed through.

`escape` is for values (names, labels, file names): newlines are escaped too, so a value never
makes a fake line. `terminal_safe` is the last filter before text reaches stdout or stderr: it
keeps the newlines of tokenagent's own multi-line output and escapes the rest, so whatever slips
past a value's `escape` still cannot act on the terminal. ``--json`` output keeps exact values
(JSON escaping shows control characters as ``\\u001b``).

Backslashes are not doubled, so ``DOMAIN\\user`` reads as it should; `has_hidden` tells a screen
to say plainly that a name holds escaped characters, so a literal ``\\x1b`` is never mistaken
for one.
"""

from __future__ import annotations

import unicodedata
from typing import Any

#: Unicode categories never passed through: controls (C0, DEL, C1), format characters (bidi
#: marks, overrides and isolates, zero-width space/joiners, soft hyphen, BOM), line and paragraph
#: separators, surrogates, private use and unassigned code points.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def is_hidden(char: str) -> bool:
    """True for a character shown escaped: controls, invisible format characters, and every
    space other than U+0020 (a no-break or ideographic space looks like a space but is not one)."""
    category = unicodedata.category(char)
    return category in _HIDDEN_CATEGORIES or (category == "Zs" and char != " ")


def _escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with every hidden character (newlines and tabs included) shown as an escape."""
    if text.isascii() and text.isprintable():
        return text  # the common case, without a per-character look-up
    return "".join(_escape_char(char) if is_hidden(char) else char for char in text)


def terminal_safe(text: str) -> str:
    """Like `escape`, but keeps newlines: for whole lines of output about to be printed."""
    if text.isascii() and text.replace("\n", "").isprintable():
        return text
    return "\n".join(escape(line) for line in text.split("\n"))


def has_hidden(text: str) -> bool:
    """True if `escape` would change ``text``."""
    return not (text.isascii() and text.isprintable()) and any(is_hidden(char) for char in text)


#: What a screen says when a value it shows held hidden characters.
HIDDEN_NOTE = (
    "some values hold control or invisible characters, shown here as \\x.. or \\u.... escapes; "
    "the data itself holds the characters"
)


def has_hidden_anywhere(value: object) -> bool:
    """`has_hidden` for any string in nested dicts, lists and tuples."""
    if isinstance(value, str):
        return has_hidden(value)
    if isinstance(value, dict):
        return any(has_hidden_anywhere(key) or has_hidden_anywhere(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_hidden_anywhere(item) for item in value)
    return False


def escape_tree(value: Any) -> Any:
    """`escape` applied to every string in nested dicts, lists and tuples (dict keys too)."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {escape_tree(key): escape_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(escape_tree(item) for item in value)
    return value


def dn_text(name: object) -> str:
    """A cryptography `x509.Name` as tokenagent prints every name: the RDNs in the order they are
    encoded, which is certreq's order (the order of the INF's Subject, as CertStrToName encodes it
    and certutil and `openssl x509 -subject` print it), each RDN escaped as RFC 4514 says. RFC 4514's
    whole-name string reverses the RDNs: a certreq subject would read DC=com, ..., CN=... there.
    request/names.py `name_text` writes asn1crypto names the same way."""
    return ", ".join(rdn.rfc4514_string() for rdn in name.rdns)  # type: ignore[attr-defined]
