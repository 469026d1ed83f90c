"""The lexical level: encodings, sections, quoting, comments, continuation, [Strings]."""

from __future__ import annotations

import pytest

from tests.inf_helpers import inf, inf_error, warnings_of
from tokenagent.inf import parse_policy

BASIC = '[NewRequest]\nFriendlyName = "a; b = c"  ; comment\nKeyContainer = x\n'


@pytest.mark.parametrize(
    "data",
    [
        BASIC.encode("utf-8"),
        b"\xef\xbb\xbf" + BASIC.encode("utf-8"),
        BASIC.encode("utf-16"),  # BOM + little-endian
        b"\xfe\xff" + BASIC.encode("utf-16-be"),
        BASIC.encode("utf-16-le"),  # Notepad never does this, but the NUL pattern is unmistakable
        BASIC.replace("\n", "\r\n").encode("utf-8"),
        BASIC.replace("\n", "\r").encode("utf-8"),
    ],
    ids=["utf8", "utf8-bom", "utf16le-bom", "utf16be-bom", "utf16le-nobom", "crlf", "cr"],
)
def test_encodings_and_line_ends(data: bytes) -> None:
    policy = parse_policy(data, "t.inf")
    assert policy.friendly_name == "a; b = c"
    assert policy.key_container == "x"
    assert policy.origins["key_container"].line == 3


def test_windows_1252_is_read_with_a_warning() -> None:
    policy = parse_policy("[NewRequest]\nSubject = CN=Müller\n".encode("cp1252"), "t.inf")
    assert policy.subject.rdns[0][0].value == "Müller"
    assert "Windows-1252" in policy.warnings[0].message


def test_utf8_non_ascii() -> None:
    assert inf("[NewRequest]\nSubject = CN=Zoë Ångström\n").subject.rdns[0][0].value == "Zoë Ångström"


def test_quotes_double_quote_escape_and_concatenation() -> None:
    p = inf('[NewRequest]\nFriendlyName = "say ""hi"""\nKeyContainer = ab"c;d"ef ; tail\n')
    assert p.friendly_name == 'say "hi"'
    assert p.key_container == "abc;def"


def test_blank_lines_comments_and_case_insensitive_names() -> None:
    p = inf("; leading comment\n\n[newREQUEST]\n   ; indented comment\nsUbJeCt=CN=x\n\nEXPORTABLE=true\n")
    assert str(p.subject) == "CN=x" and p.exportable is True


def test_section_named_twice_is_merged() -> None:
    p = inf("[NewRequest]\nSubject=CN=x\n[Extensions]\n[NewRequest]\nFriendlyName=f\n")
    assert p.friendly_name == "f" and str(p.subject) == "CN=x"


def test_repeated_key_last_wins_with_a_warning() -> None:
    p = inf("[NewRequest]\nSubject=CN=a\nSubject=CN=b\n")
    assert str(p.subject) == "CN=b"
    assert warnings_of(p) == [(3, "Subject is repeated (line 2); the last one is used")]


@pytest.mark.parametrize("keyword", ["_continue_", "continue", "_CONTINUE_"])
def test_continuation_keywords(keyword: str) -> None:
    p = inf(f"[NewRequest]\nSubject=CN=x\n[Extensions]\n2.5.29.37={{text}}1.2.3.4\n{keyword} = 1.2.3.5\n")
    assert p.extensions[0].usages == ("1.2.3.4", "1.2.3.5")


def test_strings_substitute_in_keys_and_values_anywhere_in_the_file() -> None:
    text = (
        '[NewRequest]\nSubject = %cn%\nFriendlyName = "%name% 100%% sure"\n'
        "[Extensions]\n%eku%={text}%server%\n"
        "[Strings]\ncn = CN=From Strings\nNAME = Friendly\neku = 2.5.29.37\nserver = 1.3.6.1.5.5.7.3.1\n"
    )
    p = inf(text)
    assert str(p.subject) == "CN=From Strings"
    assert p.friendly_name == "Friendly 100% sure"
    assert p.extensions[0].usages == ("1.3.6.1.5.5.7.3.1",)


def test_undefined_string_is_kept_with_a_warning() -> None:
    p = inf("[NewRequest]\nFriendlyName = %undefined%\nKeyContainer = 50% off, 20%\nSubject=CN=x\n")
    assert p.friendly_name == "%undefined%"
    assert p.key_container == "50% off, 20%"
    assert warnings_of(p) == [(2, "%undefined% is not defined in [Strings]; kept as written")]


def test_strings_value_is_not_reparsed_for_comments() -> None:
    p = inf('[Strings]\nsemi = "a;b"\n[NewRequest]\nFriendlyName = %semi%\n')
    assert p.friendly_name == "a;b"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[NewRequest\nSubject=CN=x\n", 1, "section header without ']'"),
        ("[]\n[NewRequest]\nSubject=CN=x\n", 1, "empty section name"),
        ("Subject=CN=x\n[NewRequest]\nSubject=CN=y\n", 1, "a key before any [Section] header"),
        ("[NewRequest]\nSubject=CN=x\njust some words\n", 3, "expected 'key = value'"),
        ('[NewRequest]\nSubject="CN=x\n', 2, "unterminated double quote"),
        ("[NewRequest]\n_continue_ = x\n", 2, "no previous key to continue"),
        ("[NewRequest]\n = x\n", 2, "empty key"),
        ("[NewRequest]\nSubject=CN=x\x00\n", 2, "NUL character"),
    ],
)
def test_lexical_errors_carry_their_line(text: str, line: int, message: str) -> None:
    error = inf_error(text)
    assert str(error).startswith(f"t.inf:{line}: ") and message in str(error)
    assert error.exit_code == 3


def test_truncated_utf16_is_an_error_with_a_line() -> None:
    data = "[NewRequest]\nSubject=CN=x\n".encode("utf-16")[:-1]
    with pytest.raises(Exception) as info:
        parse_policy(data, "t.inf")
    assert "t.inf:" in str(info.value) and "UTF-16" in str(info.value)


def test_text_after_a_section_header_is_a_warning() -> None:
    p = inf("[NewRequest] junk\nSubject=CN=x\n")
    assert warnings_of(p)[0][0] == 1
