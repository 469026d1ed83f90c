"""Base64 armor as certreq writes it, and reading whatever a user or a CA hands back.

`read_der` accepts DER, PEM with any label, bare base64 (what certreq -submit and the CA web pages
often give) and UTF-16 text (Windows "Unicode" files), and returns exactly one complete DER value.
Every failure is an `InputError` that says what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import re

from tokenagent.errors import InputError
from tokenagent.inf.extensions import check_der
from tokenagent.inf.values import ValueProblem

REQUEST_LABEL = "NEW CERTIFICATE REQUEST"
_BEGIN = re.compile(r"^-----BEGIN ([A-Z0-9 #]*)-----[ \t\r]*$", re.MULTILINE)
_END = re.compile(r"^-----END ([A-Z0-9 #]*)-----[ \t\r]*$", re.MULTILINE)
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def armor(der: bytes, label: str = REQUEST_LABEL) -> str:
    """-----BEGIN label-----, base64 in 64-character lines, -----END label-----, CRLF line ends."""
    text = base64.b64encode(der).decode("ascii")
    lines = [f"-----BEGIN {label}-----"]
    lines += [text[i : i + 64] for i in range(0, len(text), 64)]
    lines.append(f"-----END {label}-----")
    return "\r\n".join(lines) + "\r\n"


def read_der(data: bytes | str, what: str = "request") -> bytes:
    """The one DER value in ``data``; `InputError` ("cannot read {what}: reason") for anything else."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        return _read(bytes(data))
    except _Unreadable as exc:
        raise InputError(f"cannot read {what}: {exc}") from None


class _Unreadable(Exception):
    pass


def _read(data: bytes) -> bytes:
    if not data.strip():
        raise _Unreadable("the input is empty")
    if data[0] == 0x30:  # a DER SEQUENCE; PEM and base64 text never start with '0'
        return _check(data)
    text = _text(data)
    if "-----BEGIN" in text or "-----END" in text:
        return _check(_pem_body(text))
    return _check(_base64(text, "the base64 text"))


def _text(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    elif len(data) >= 4 and len(data) % 2 == 0 and data[1::2].count(0) == len(data) // 2:
        encoding = "utf-16-le"  # Notepad without a BOM: every second byte is NUL
    elif len(data) >= 4 and len(data) % 2 == 0 and data[0::2].count(0) == len(data) // 2:
        encoding = "utf-16-be"
    else:
        encoding = "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        raise _Unreadable(
            f"neither DER (it starts with byte 0x{data[0]:02x}, not a SEQUENCE) nor PEM or base64 text"
        ) from None
    if not text.isascii():
        position = next(i for i, c in enumerate(text) if not c.isascii())
        raise _Unreadable(f"not PEM or base64 text: a non-ASCII character at offset {position}")
    return text


def _pem_body(text: str) -> bytes:
    begins = list(_BEGIN.finditer(text))
    if not begins:
        raise _Unreadable("PEM text without a valid -----BEGIN LABEL----- line")
    if len(begins) > 1:
        labels = ", ".join(m.group(1) for m in begins)
        raise _Unreadable(f"{len(begins)} PEM blocks ({labels}); expected exactly one")
    begin = begins[0]
    label = begin.group(1)
    end = _END.search(text, begin.end())
    if end is None:
        raise _Unreadable(f"the PEM block {label} has no -----END {label}----- line (truncated?)")
    if end.group(1) != label:
        raise _Unreadable(f"the PEM block begins with {label} but ends with {end.group(1)}")
    body = text[begin.end() : end.start()]
    # RFC 1421 headers (Proc-Type:, DEK-Info:) would mean encryption: nothing tokenagent reads has them
    if re.search(r"^[\w-]+:", body, re.MULTILINE):
        raise _Unreadable(f"the PEM block {label} has headers (an encrypted PEM?)")
    return _base64(body, f"the PEM block {label}")


def _base64(text: str, where: str) -> bytes:
    compact = re.sub(r"\s+", "", text)
    if not compact:
        raise _Unreadable(f"{where} is empty")
    invalid = next((c for c in compact if c not in _ALPHABET and c != "="), None)
    if invalid is not None:
        raise _Unreadable(f"{where} is not valid base64 (the character {invalid!r})")
    if not _BASE64.fullmatch(compact):
        raise _Unreadable(f"{where} is not valid base64 ('=' before the end)")
    if len(compact.rstrip("=")) % 4 == 1:
        raise _Unreadable(f"{where} is not valid base64 (its length {len(compact)} cannot be decoded)")
    try:
        return base64.b64decode(compact.rstrip("=") + "=" * (-len(compact.rstrip("=")) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _Unreadable(f"{where} is not valid base64") from None


def _length(data: bytes) -> tuple[int, int]:
    """(header length, content length) of the outer TLV; single-byte tags only, as SEQUENCE is."""
    if len(data) < 2:
        raise _Unreadable(f"truncated DER: {len(data)} byte(s), not even a tag and a length")
    first = data[1]
    if first < 0x80:
        return 2, first
    count = first & 0x7F
    if count == 0:
        raise _Unreadable("not DER: indefinite length (BER)")
    if count > 4:
        raise _Unreadable(f"not DER: a {count}-byte length")
    if len(data) < 2 + count:
        raise _Unreadable(f"truncated DER: the length needs {count} more byte(s), {len(data) - 2} present")
    return 2 + count, int.from_bytes(data[2 : 2 + count], "big")


def _check(der: bytes) -> bytes:
    if not der:
        raise _Unreadable("the decoded data is empty")
    if der[0] != 0x30:
        raise _Unreadable(f"not a DER SEQUENCE: it starts with byte 0x{der[0]:02x}")
    header, length = _length(der)
    if header + length > len(der):
        raise _Unreadable(f"truncated DER: the SEQUENCE needs {header + length} bytes, {len(der)} present")
    if header + length < len(der):
        raise _Unreadable(f"{len(der) - header - length} byte(s) after the end of the DER SEQUENCE")
    try:
        check_der(der)
    except ValueProblem as exc:
        raise _Unreadable(f"damaged DER inside the SEQUENCE: {exc}") from None
    return der
