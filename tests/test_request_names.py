"""Subject DNs -> DER Names: order, multi-valued RDNs, string types and X500NameFlags (checked with pyasn1)."""

from __future__ import annotations

import re

import pytest
from asn1crypto import x509
from pyasn1.codec.der import decoder
from pyasn1_modules import rfc5280

from tokenagent.inf.extensions import GeneralNameSpec, parse_san_item
from tokenagent.inf.names import parse_name
from tokenagent.inf.values import ValueProblem
from tokenagent.request.extensions import general_name
from tokenagent.request.names import x509_name

FORCE_UTF8 = 0x80000
DISABLE_UTF8 = 0x100000
ENABLE_T61 = 0x20000
ENABLE_UTF8_UNICODE = 0x40000

# universal tag numbers
UTF8, PRINTABLE, T61, IA5, NUMERIC, BMP, OCTETS = 12, 19, 20, 22, 18, 30, 4


def encoded(text: str, flags: int = 0) -> list[list[tuple[str, int, bytes]]]:
    """(OID, universal tag, value bytes) per attribute, per RDN, as pyasn1 decodes the DER."""
    name = x509_name(parse_name(text, flags), flags)
    assert isinstance(name, x509.Name)
    decoded, rest = decoder.decode(name.dump(), asn1Spec=rfc5280.Name())
    assert rest == b""
    result = []
    for rdn in decoded[0]:
        row = []
        for attribute in rdn:
            value = bytes(attribute["value"])
            inner, rest = decoder.decode(value)
            assert rest == b""
            row.append((str(attribute["type"]), value[0], bytes(inner) if value[0] in (OCTETS,) else value[2:]))
        result.append(row)
    return result


def tags(text: str, flags: int = 0) -> list[int]:
    return [tag for rdn in encoded(text, flags) for _, tag, _ in rdn]


def test_rdns_keep_the_order_written() -> None:
    assert [rdn[0][0] for rdn in encoded("CN=John Smith,CN=Users,DC=Contoso,DC=com")] == [
        "2.5.4.3",
        "2.5.4.3",
        "0.9.2342.19200300.100.1.25",
        "0.9.2342.19200300.100.1.25",
    ]


def test_multi_valued_rdn_is_one_set_sorted_as_der_requires() -> None:
    (rdn,) = encoded("OU=Users+CN=Zed")
    # DER SET OF: sorted by encoding; CN (2.5.4.3) sorts before OU (2.5.4.11)
    assert [oid for oid, _, _ in rdn] == ["2.5.4.3", "2.5.4.11"]


def test_default_string_types() -> None:
    text = (
        "CN=Zoë,O=Contoso,C=us,E=a@example.com,DC=example,SERIALNUMBER=1234-AB,"
        "SERIALNUMBER=12_34,dnQualifier=x,X21Address=123 456,OID.1.2.3.4=free text"
    )
    assert tags(text) == [UTF8, UTF8, PRINTABLE, IA5, IA5, PRINTABLE, UTF8, PRINTABLE, NUMERIC, UTF8]
    assert encoded("CN=Zoë")[0][0][2] == "Zoë".encode()


def test_hex_values_are_octet_strings() -> None:
    ((attribute,),) = encoded("1.2.3 = # AB CD 01")
    assert attribute == ("1.2.3", OCTETS, b"\xab\xcd\x01")


def test_force_utf8_flag() -> None:
    assert tags("CN=plain,O=Zoë,C=US", FORCE_UTF8) == [UTF8, UTF8, PRINTABLE]
    assert tags("CN=plain", FORCE_UTF8 | DISABLE_UTF8) == [UTF8]


def test_disable_utf8_flag_picks_printable_then_bmp() -> None:
    assert tags("CN=plain,O=Zoë,L=a&b", DISABLE_UTF8) == [PRINTABLE, BMP, BMP]
    assert encoded("O=Zoë", DISABLE_UTF8)[0][0][2] == "Zoë".encode("utf-16-be")


def test_t61_flag_for_latin1_values() -> None:
    assert tags("CN=plain,O=Zoë,L=Łódź", ENABLE_T61) == [PRINTABLE, T61, BMP]
    assert encoded("O=Zoë", ENABLE_T61)[0][0][2] == "Zoë".encode("latin-1")
    assert tags("L=Łódź", ENABLE_T61 | ENABLE_UTF8_UNICODE) == [UTF8]


def test_empty_name() -> None:
    assert x509_name(None).dump() == b"\x30\x00"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("C=USA", "C must be a two-letter country code"),
        ("C=1A", "C must be a two-letter country code"),
        ("E=zoë@example.com", "must be ASCII (IA5String)"),
        ("DC=zoë", "must be ASCII (IA5String)"),
        ("X21Address=12a", "NumericString"),
        ('CN=""', "CN is empty"),
    ],
)
def test_values_their_type_cannot_hold(text: str, message: str) -> None:
    with pytest.raises(ValueProblem, match=re.escape(message)):
        x509_name(parse_name(text))


def test_general_names_are_written_verbatim() -> None:
    # asn1crypto's own URI and DNSName classes would escape or IDNA-encode these; certreq does not
    url = general_name(GeneralNameSpec("url", "http://host.example/a b?x=1&y=2"))
    assert isinstance(url, x509.GeneralName)
    assert url.dump() == b"\x86\x1fhttp://host.example/a b?x=1&y=2"
    assert general_name(GeneralNameSpec("dns", "*.Example.COM")).dump() == b"\x82\x0d*.Example.COM"
    assert general_name(parse_san_item("IPAddress=192.0.2.1")).dump() == b"\x87\x04\xc0\x00\x02\x01"
    directory = general_name(parse_san_item("DirectoryName=CN=Name,DC=Domain"))
    decoded, rest = decoder.decode(directory.dump(), asn1Spec=rfc5280.GeneralName())
    assert rest == b"" and len(decoded["directoryName"][0]) == 2
    upn = general_name(parse_san_item("UPN=zoë@example.com")).dump()
    assert upn.endswith("zoë@example.com".encode()) and b"\xa0" in upn  # [0] EXPLICIT UTF8String
