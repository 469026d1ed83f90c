"""Value forms that certreq accepts: booleans, numbers, symbolic flag sets, choices, dates.

Each parser raises `ValueProblem` with a message that names the accepted forms; the policy
resolver adds file:line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime


class ValueProblem(ValueError):
    pass


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueProblem(f"'{text}' is not a boolean (TRUE, FALSE, 1, 0, yes, no)")


def parse_int(text: str) -> int:
    """Decimal, ``0x`` hexadecimal, or bare hexadecimal when it has a letter a-f (certreq's ``fd00``)."""
    value = text.strip().lower()
    try:
        if value.startswith("0x"):
            return int(value[2:], 16)
        if value.isdigit():
            return int(value, 10)
        if re.fullmatch(r"[0-9a-f]+", value):
            return int(value, 16)
    except ValueError:
        pass
    raise ValueProblem(f"'{text}' is not a number (decimal, or hexadecimal like 0xa0)")


def _symbol_key(name: str) -> str:
    key = name.strip().upper()
    return key[4:] if key.startswith("XCN_") else key


def parse_flags(text: str, symbols: Mapping[str, int], what: str) -> int:
    """``NAME | NAME | 0x20``: symbolic names (with or without XCN_) and numbers, OR-ed."""
    table = {_symbol_key(k): v for k, v in symbols.items()}
    total = 0
    parts = [p for p in re.split(r"\|", text) if p.strip()]
    if not parts:
        raise ValueProblem(f"empty {what}")
    for part in parts:
        key = _symbol_key(part)
        if key in table:
            total |= table[key]
            continue
        try:
            total |= parse_int(part)
        except ValueProblem:
            known = ", ".join(sorted(symbols)[:6])
            raise ValueProblem(f"unknown {what} '{part.strip()}' (known: {known}, ... or a number)") from None
    return total


def parse_choice(text: str, choices: Mapping[str, object], what: str) -> object:
    """A symbolic name (case-insensitive, optional XCN_) or its number."""
    table = {_symbol_key(k): v for k, v in choices.items()}
    key = _symbol_key(text)
    if key in table:
        return table[key]
    try:
        number = parse_int(text)
    except ValueProblem:
        number = None
    if number is not None:
        for value in choices.values():
            if value == number or getattr(value, "value", None) == number:
                return value
    names = ", ".join(dict.fromkeys(str(k) for k in choices))
    raise ValueProblem(f"unknown {what} '{text}' (one of: {names})")


_MONTHS = {
    name: index
    for index, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}
_TIME = (
    r"(?:[ T,]+(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?\s*(?P<ampm>[AaPp]\.?[Mm]\.?)?)?"
    r"\s*(?P<tz>Z|UTC|GMT|[+-]\d{2}:?\d{2})?"
)
# Pattern texts, not compiled patterns: re compiles (and caches) one on the first date an INF has,
# so the many INFs without NotBefore/NotAfter do not pay for compiling four of them at import.
_DATE_FORMS = (
    # 7/24/2012 10:31 AM  (US order, as certreq documents it)
    r"(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4})" + _TIME,
    # 2012-07-24[ 10:31[:00]][Z]
    r"(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})" + _TIME,
    # July 24, 2012 [10:31 AM]   /  Jul 24 2012
    r"(?P<mon>[A-Za-z]+)\.?\s+(?P<d>\d{1,2}),?\s+(?P<y>\d{4})" + _TIME,
    # 24 July 2012 [10:31]   /  24-Jul-2012
    r"(?P<d>\d{1,2})[\s-]+(?P<mon>[A-Za-z]+)\.?[\s-]+(?P<y>\d{4})" + _TIME,
)


def parse_date(text: str) -> datetime:
    """certreq's date forms, read as UTC unless an offset is given (certreq uses local time)."""
    value = " ".join(text.strip().split())
    for form in _DATE_FORMS:
        match = re.fullmatch(form, value)
        if not match:
            continue
        groups = match.groupdict()
        month = int(groups["m"]) if groups.get("m") else _MONTHS.get((groups.get("mon") or "").lower())
        if month is None:
            raise ValueProblem(f"unknown month name in '{text}'")
        hour = int(groups["h"] or 0)
        ampm = (groups.get("ampm") or "").lower().replace(".", "")
        if ampm:
            if not 1 <= hour <= 12:
                raise ValueProblem(f"hour {hour} with {ampm.upper()} in '{text}'")
            hour = hour % 12 + (12 if ampm == "pm" else 0)
        try:
            moment = datetime(
                int(groups["y"]),
                month,
                int(groups["d"]),
                hour,
                int(groups["mi"] or 0),
                int(groups["s"] or 0),
                tzinfo=UTC,
            )
        except ValueError as exc:
            raise ValueProblem(f"'{text}' is not a valid date: {exc}") from None
        tz = (groups.get("tz") or "").upper()
        if tz and tz not in ("Z", "UTC", "GMT"):
            sign = 1 if tz[0] == "+" else -1
            digits = tz[1:].replace(":", "")
            offset_minutes = sign * (int(digits[:2]) * 60 + int(digits[2:]))
            from datetime import timedelta

            moment -= timedelta(minutes=offset_minutes)
        return moment
    raise ValueProblem(
        f"'{text}' is not a date certreq accepts (e.g. 7/24/2012 10:31 AM, July 24, 2012, 2012-07-24 10:31)"
    )
