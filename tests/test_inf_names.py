"""Subject distinguished names in CertStrToName syntax."""

from __future__ import annotations

import pytest

from tests.inf_helpers import inf_error, new_request
from tokenagent.inf.names import parse_name
from tokenagent.inf.values import ValueProblem


def rdns(text: str, flags: int = 0) -> list[list[tuple[str, object]]]:
    return [[(a.short_name, a.value) for a in rdn] for rdn in parse_name(text, flags).rdns]


def test_certreq_order_is_kept() -> None:
    assert rdns("CN=John Smith,CN=Users,DC=Contoso,DC=com") == [
        [("CN", "John Smith")],
        [("CN", "Users")],
        [("DC", "Contoso")],
        [("DC", "com")],
    ]


@pytest.mark.parametrize(
    ("key", "oid"),
    [
        ("E", "1.2.840.113549.1.9.1"),
        ("EMAIL", "1.2.840.113549.1.9.1"),
        ("S", "2.5.4.8"),
        ("ST", "2.5.4.8"),
        ("SERIALNUMBER", "2.5.4.5"),
        ("OID.1.2.3.4", "1.2.3.4"),
        ("1.2.3.5", "1.2.3.5"),
        ("cn", "2.5.4.3"),
        ("L", "2.5.4.7"),
        ("O", "2.5.4.10"),
        ("OU", "2.5.4.11"),
        ("C", "2.5.4.6"),
        ("STREET", "2.5.4.9"),
        ("T", "2.5.4.12"),
        ("G", "2.5.4.42"),
        ("I", "2.5.4.43"),
        ("SN", "2.5.4.4"),
        ("DC", "0.9.2342.19200300.100.1.25"),
        ("UID", "0.9.2342.19200300.100.1.1"),
        ("Description", "2.5.4.13"),
        ("PostalCode", "2.5.4.17"),
    ],
)
def test_keys(key: str, oid: str) -> None:
    assert parse_name(f"{key}=v").rdns[0][0].oid == oid


def test_quoted_values_with_separators_and_doubled_quotes() -> None:
    assert rdns('CN="Smith, John", O="A ""quoted"" org"') == [[("CN", "Smith, John")], [("O", 'A "quoted" org')]]


def test_backslash_escapes() -> None:
    assert rdns(r"CN=Smith\, John+OU=a\+b, O=x\;y") == [[("CN", "Smith, John"), ("OU", "a+b")], [("O", "x;y")]]


def test_multi_valued_rdn_and_blanks() -> None:
    assert rdns("  CN = a + OU = b ;  O = c ") == [[("CN", "a"), ("OU", "b")], [("O", "c")]]


def test_hex_value_is_octets() -> None:
    assert rdns("1.2.3 = # AB CD 01") == [[("OID.1.2.3", b"\xab\xcd\x01")]]
    assert rdns('CN="#not hex"') == [[("CN", "#not hex")]]


def test_semicolon_flag_makes_commas_literal() -> None:
    assert rdns("CN=Smith, John;O=Contoso", 0x40000000) == [[("CN", "Smith, John")], [("O", "Contoso")]]


def test_comma_flag_makes_semicolons_literal() -> None:
    assert rdns("CN=a;b,O=c", 0x04000000) == [[("CN", "a;b")], [("O", "c")]]


def test_crlf_flag() -> None:
    assert rdns("CN=a, b\r\nO=c", 0x08000000) == [[("CN", "a, b")], [("O", "c")]]


def test_no_plus_and_no_quoting_flags() -> None:
    assert rdns("CN=a+b", 0x20000000) == [[("CN", "a+b")]]
    assert rdns('CN="x"', 0x10000000) == [[("CN", '"x"')]]


def test_reverse_flag() -> None:
    assert rdns("CN=a,O=b", 0x02000000) == [[("O", "b")], [("CN", "a")]]


def test_trailing_separator_is_tolerated() -> None:
    assert rdns("CN=a,") == [[("CN", "a")]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("CN", "expected 'KEY=value'"),
        ("XX=1", "unknown name attribute"),
        ("OID.1.2.x=1", "not an object identifier"),
        ("1.50.3=1", "second arc"),
        ('CN="open', "unterminated quote"),
        ('CN="a" b', "text after the quoted value"),
        ("1.2.3=#zz", "not hexadecimal"),
        ("CN=a,,O=b", "expected 'KEY=value'"),
    ],
)
def test_bad_names(text: str, message: str) -> None:
    with pytest.raises(ValueProblem, match=message):
        parse_name(text)


def test_subject_flags_come_from_x500nameflags_even_when_written_after() -> None:
    policy = new_request("Subject = CN=Smith, John;O=Contoso\nX500NameFlags = CERT_NAME_STR_SEMICOLON_FLAG")
    assert policy.subject.rdns[0][0].value == "Smith, John"


def test_bad_subject_names_its_line() -> None:
    assert str(inf_error("[NewRequest]\n\nSubject = CN=a,XX=b\n")).startswith("t.inf:3: Subject: unknown name")


def test_empty_subject_is_none() -> None:
    assert new_request('Subject = ""\nFriendlyName=x').subject is None
