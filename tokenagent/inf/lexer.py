"""The lexical level of certreq INF files (the Windows SetupAPI INF dialect certreq reads).

- Encodings: UTF-8 (with or without BOM), UTF-16 LE/BE with BOM (Notepad's "Unicode"), UTF-16
  without BOM when the NUL pattern is unmistakable, and Windows-1252 ("ANSI") as a last resort.
- ``[Section]`` headers and ``key = value`` lines; section names and keys are case-insensitive;
  a section named twice is one section.
- ``;`` starts a comment outside double quotes. Inside quotes ``""`` is a literal quote, and
  ``;`` and ``=`` are literal. Quoted and unquoted parts of a value concatenate; blanks at the
  ends of the unquoted parts are trimmed.
- ``_continue_ = ...`` (or ``continue = ...``) appends a fragment to the previous key's value.
  Fragments are kept apart because their joining depends on the key: base64 concatenates, SAN
  tags split on ``&``, EKU OIDs on ``,``.
- ``[Strings]`` may stand anywhere; ``%name%`` is replaced in keys and values (after quoting is
  resolved, as SetupAPI does); ``%%`` is a literal percent sign. A caller may give values that
  replace [Strings] entries (``tokenize(..., strings=)``: `tokenagent batch` fills them from a CSV row).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from tokenagent.inf.diagnostics import Diagnostics

CONTINUATION_KEYS = ("_continue_", "continue")


@dataclass
class Entry:
    key: str
    fragments: list[str]
    line: int
    #: line of each fragment, for diagnostics about continued values
    fragment_lines: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.key.lower()

    @property
    def value(self) -> str:
        """The fragments joined as they stand (right for base64 and free text)."""
        return "".join(self.fragments)


@dataclass
class Section:
    name: str
    line: int
    entries: list[Entry] = field(default_factory=list)

    def get(self, key: str) -> list[Entry]:
        return [e for e in self.entries if e.name == key.lower()]


@dataclass
class InfFile:
    filename: str
    encoding: str
    sections: dict[str, Section]
    line_count: int

    def section(self, name: str) -> Section | None:
        return self.sections.get(name.lower())


def decode(data: bytes, diag: Diagnostics) -> tuple[str, str]:
    """Bytes to text, by BOM, by NUL pattern, then UTF-8, then Windows-1252."""
    if data.startswith(b"\xef\xbb\xbf"):
        return _decode(data[3:], "utf-8", diag), "utf-8-sig"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16-le" if data.startswith(b"\xff\xfe") else "utf-16-be"
        return _decode(data[2:], encoding, diag), encoding
    sample = data[:200]
    if len(sample) >= 4 and sample[1::2].count(0) > len(sample) // 4 and sample[0::2].count(0) == 0:
        return _decode(data, "utf-16-le", diag), "utf-16-le"
    if len(sample) >= 4 and sample[0::2].count(0) > len(sample) // 4 and sample[1::2].count(0) == 0:
        return _decode(data, "utf-16-be", diag), "utf-16-be"
    try:
        return _decode(data, "utf-8", diag, strict=True), "utf-8"
    except UnicodeDecodeError:
        diag.warning(1, "not UTF-8: read as Windows-1252 (save the INF as UTF-8 to avoid ambiguity)")
        return _decode(data, "cp1252", diag), "cp1252"


def _decode(data: bytes, encoding: str, diag: Diagnostics, strict: bool = False) -> str:
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        if strict:
            raise
        line = data[: exc.start].count(b"\n" if encoding.startswith("utf-8") else "\n".encode(encoding)) + 1
        diag.error(
            line,
            f"not valid {encoding.upper()} text (byte offset {exc.start}); the file is damaged or truncated",
        )
    return text


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


# One token of a line: a quoted string ("" inside is a quote), a comment start, or plain text.
_TOKEN = re.compile(r'"((?:[^"]+|"")*)("?)|(;)|([^";]+)')


def _split_value(text: str, line: int, diag: Diagnostics) -> list[tuple[str, bool]]:
    """Split a line into (text, quoted) segments, dropping a trailing comment.

    A regular expression walks the line, so a line of megabytes costs one linear scan in C
    rather than a Python step per character."""
    segments: list[tuple[str, bool]] = []
    plain: list[str] = []  # plain text between quoted strings, kept as one segment
    for match in _TOKEN.finditer(text):
        quoted, closed, comment, rest = match.groups()
        if comment:
            break
        if rest is not None:
            plain.append(rest)
            continue
        segments.append(("".join(plain), False))
        plain = []
        if not closed:
            diag.error(line, "unterminated double quote")
        segments.append((quoted.replace('""', '"'), True))
    segments.append(("".join(plain), False))
    return [s for s in segments if s[0] or s[1]]


def _partition(
    segments: list[tuple[str, bool]],
) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]] | None:
    """Split segments at the first '=' that is outside quotes."""
    for index, (text, quoted) in enumerate(segments):
        if not quoted and "=" in text:
            before, _, after = text.partition("=")
            key = [*segments[:index], (before, False)]
            value = [(after, False), *segments[index + 1 :]]
            return key, value
    return None


def _join(segments: list[tuple[str, bool]]) -> str:
    """The segments as one value; blanks around it are dropped unless they are quoted."""
    kept = [segment for segment in segments if segment[0] or segment[1]]
    if not kept:
        return ""
    texts = [text for text, _ in kept]
    if not kept[0][1]:
        texts[0] = texts[0].lstrip()
    if not kept[-1][1]:
        texts[-1] = texts[-1].rstrip()
    return "".join(texts)


@dataclass
class _RawLine:
    line: int
    section: str
    key: list[tuple[str, bool]]
    value: list[tuple[str, bool]]


def tokenize(
    data: bytes | str, filename: str, diag: Diagnostics, *, strings: Mapping[str, str] | None = None
) -> InfFile:
    """``strings``: values that replace the [Strings] entries of the same (case-insensitive) name."""
    text, encoding = _text(data, diag)
    lines = _LINE_BREAK.split(text)
    raw, headers = _raw_lines(lines, diag)
    sections = _sections(raw, headers, diag, strings or {})
    return InfFile(filename=filename, encoding=encoding, sections=sections, line_count=len(lines))


def string_names(data: bytes | str, filename: str) -> dict[str, tuple[str, int]]:
    """The [Strings] entries of an INF: lower-case name -> (name as written, line of its last definition)."""
    diag = Diagnostics(filename)
    text, _ = _text(data, diag)
    raw, _ = _raw_lines(_LINE_BREAK.split(text), diag)
    return {_join(item.key).lower(): (_join(item.key), item.line) for item in raw if item.section == "strings"}


def _text(data: bytes | str, diag: Diagnostics) -> tuple[str, str]:
    """The file as text, and the encoding it was read with ("str" when given text)."""
    text, encoding = (data, "str") if isinstance(data, str) else decode(data, diag)
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        diag.error(line, "NUL character: this is not a text INF file")
    return text, encoding


def _raw_lines(lines: list[str], diag: Diagnostics) -> tuple[list[_RawLine], dict[str, tuple[str, int]]]:
    """Every ``key = value`` line with its section, and each section's name and first header line.

    [Strings] may come after the keys that use it, so substitution waits for a second pass."""
    raw: list[_RawLine] = []
    headers: dict[str, tuple[str, int]] = {}
    current: str | None = None
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(";"):
            continue
        if stripped.startswith("["):
            name = _section_header(stripped, number, diag)
            current = name.lower()
            headers.setdefault(current, (name, number))
            continue
        segments = _split_value(line, number, diag)
        if not segments or not _join(segments):
            continue
        if current is None:
            diag.error(number, "a key before any [Section] header")
        parts = _partition(segments)
        if parts is None:
            diag.error(number, f"expected 'key = value' in [{headers[current][0]}]: {_join(segments)[:60]}")
        raw.append(_RawLine(number, current, *parts))
    return raw, headers


def _section_header(stripped: str, number: int, diag: Diagnostics) -> str:
    """The name in ``[Name]``, as written."""
    close = stripped.find("]")
    if close == -1:
        diag.error(number, f"section header without ']': {stripped[:60]}")
    name = stripped[1:close].strip()
    if not name:
        diag.error(number, "empty section name '[]'")
    rest = stripped[close + 1 :].strip()
    if rest and not rest.startswith(";"):
        diag.warning(number, f"text after the section header is ignored: {rest[:40]}")
    return name


def _sections(
    raw: list[_RawLine], headers: dict[str, tuple[str, int]], diag: Diagnostics, overrides: Mapping[str, str]
) -> dict[str, Section]:
    strings = _collect_strings(raw)
    strings.update({name.lower(): value for name, value in overrides.items()})
    sections: dict[str, Section] = {key: Section(name=name, line=line) for key, (name, line) in headers.items()}
    for item in raw:
        section = sections[item.section]
        key, value = _key_and_value(item, strings, diag)
        if not key:
            diag.error(item.line, "empty key before '='")
        if key.lower() in CONTINUATION_KEYS:
            if not section.entries:
                diag.error(item.line, f"'{key}' with no previous key to continue in [{section.name}]")
            section.entries[-1].fragments.append(value)
            section.entries[-1].fragment_lines.append(item.line)
            continue
        section.entries.append(Entry(key=key, fragments=[value], line=item.line, fragment_lines=[item.line]))
    return sections


def _key_and_value(item: _RawLine, strings: dict[str, str], diag: Diagnostics) -> tuple[str, str]:
    if item.section == "strings":  # [Strings] values are taken as written, never substituted
        return _join(item.key), _join(item.value)
    key = _join([(_substitute(t, strings, item.line, diag), q) for t, q in item.key])
    value = _join([(_substitute(t, strings, item.line, diag), q) for t, q in item.value])
    return key, value


def _collect_strings(raw: list[_RawLine]) -> dict[str, str]:
    strings: dict[str, str] = {}
    for item in raw:
        if item.section == "strings":
            strings[_join(item.key).lower()] = _join(item.value)
    return strings


_STRING_NAME = re.compile(r"[A-Za-z_][\w.\-]*")


def _substitute(text: str, strings: dict[str, str], line: int, diag: Diagnostics) -> str:
    if "%" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        if text[i + 1 : i + 2] == "%":
            out.append("%")
            i += 2
            continue
        end = text.find("%", i + 1)
        name = text[i + 1 : end] if end != -1 else ""
        if end != -1 and name.lower() in strings:
            out.append(strings[name.lower()])
            i = end + 1
            continue
        if end != -1 and _STRING_NAME.fullmatch(name):
            diag.warning(line, f"%{name}% is not defined in [Strings]; kept as written")
        out.append("%")
        i += 1
    return "".join(out)
