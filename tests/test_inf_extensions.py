"""[Extensions], [EnhancedKeyUsageExtension] and [RequestAttributes]; raw values checked with pyasn1."""

from __future__ import annotations

import base64
import ipaddress
import uuid

import pytest
from pyasn1.codec.der import decoder
from pyasn1.type import char, univ

from tests.inf_helpers import inf_error, new_request, warnings_of
from tokenagent.inf.extensions import parse_san_item

SUBJECT = "Subject = CN=t"


def ext(lines: str):
    return new_request(SUBJECT, "[Extensions]\n" + lines).extensions


@pytest.mark.parametrize(
    ("item", "kind", "value"),
    [
        ("UPN=User@Domain.com", "upn", "User@Domain.com"),
        ("upn=John.Smith@contoso.com", "upn", "John.Smith@contoso.com"),
        ("EMail=User@Domain.com", "email", "User@Domain.com"),
        ("email=John.Smith@contoso.com", "email", "John.Smith@contoso.com"),
        ("DNS=host.domain.com", "dns", "host.domain.com"),
        ('dns="w2k3bodc.contoso.com"', "dns", "w2k3bodc.contoso.com"),
        ("URL=http://host.domain.com/default.html", "url", "http://host.domain.com/default.html"),
        ("IPAddress=10.0.0.1", "ip_address", ipaddress.ip_address("10.0.0.1").packed),
        ("ipaddress=172.134.10.134", "ip_address", ipaddress.ip_address("172.134.10.134").packed),
        ("IPAddress=fe80::1:2", "ip_address", ipaddress.ip_address("fe80::1:2").packed),
        ("RegisteredId=1.2.3.4.5", "registered_id", "1.2.3.4.5"),
        ("oid=2.5.29.17", "registered_id", "2.5.29.17"),
        (
            "GUID=f7c3ac41-b8ce-4fb4-aa58-3d1dc0e36b39",
            "guid",
            uuid.UUID("f7c3ac41-b8ce-4fb4-aa58-3d1dc0e36b39").bytes_le,
        ),
        (
            "guid={f7c3ac41-b8ce-4fb4-aa58-3d1dc0e36b39}",
            "guid",
            uuid.UUID("f7c3ac41-b8ce-4fb4-aa58-3d1dc0e36b39").bytes_le,
        ),
    ],
)
def test_san_tags(item: str, kind: str, value: object) -> None:
    spec = parse_san_item(item)
    assert (spec.kind, spec.value) == (kind, value)


def test_directory_name_tag() -> None:
    for item in ("DirectoryName=CN=Name,DC=Domain,DC=com", 'dn="CN=W2K3BODC,OU=Domain Controllers,DC=contoso,DC=com"'):
        spec = parse_san_item(item)
        assert spec.kind == "directory_name" and spec.value.rdns[0][0].short_name == "CN"


@pytest.mark.parametrize(
    ("item", "spec", "expected"),
    [
        ("1.2.3.4.6.1={utf8}String", char.UTF8String(), "String"),
        ("1.2.3.4.6.1=Plain text", char.UTF8String(), "Plain text"),
        ("1.2.3.4.6.2={octet}AAECAwQFBgc=", univ.OctetString(), bytes(range(8))),
        ("1.2.3.4.6.2={octet}{hex}00 01 02 03 04 05 06 07", univ.OctetString(), bytes(range(8))),
        ("1.2.3.4.6.3={asn}BAgAAQIDBAUGBw==", univ.OctetString(), bytes(range(8))),
        ("1.2.3.4.6.3={hex}04 08 00 01 02 03 04 05 06 07", univ.OctetString(), bytes(range(8))),
    ],
)
def test_other_name_value_forms_decode_independently(item: str, spec: object, expected: object) -> None:
    parsed = parse_san_item(item)
    assert parsed.kind == "other_name" and parsed.other_oid == item.split("=")[0]
    value, rest = decoder.decode(parsed.value, asn1Spec=spec)
    assert rest == b""
    assert (str(value) if isinstance(expected, str) else bytes(value)) == expected


def test_url_keeps_its_own_ampersands() -> None:
    (san,) = ext('2.5.29.17 = "{text}URL=http://h/x?a=1&b=2&DNS=h"')
    assert [n.describe() for n in san.alt_names] == ["URL=http://h/x?a=1&b=2", "DNS=h"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("Foo=bar", "unknown SAN tag"),
        ("IPAddress=10.0.0.300", "not an IPv4 or IPv6"),
        ("GUID=nope", "not a GUID"),
        ("RegisteredId=x.y", "not an object identifier"),
        ("1.2.3={asn}BAgAAQ==", "not a complete DER"),
        ("1.2.3={hex}04 08 00", "truncated"),
        ("1.2.3={octet}!!!", "not valid base64"),
        ("1.2.3={octet}{hex}zz", "not valid hexadecimal"),
        ("DNS=", "empty value"),
        ("DNS=bücher.example", "must be ASCII"),
        ("novalue", "not tag=value"),
    ],
)
def test_bad_san_items(item: str, message: str) -> None:
    error = inf_error(f'[NewRequest]\n{SUBJECT}\n[Extensions]\n2.5.29.17 = "{{text}}{item}"\n')
    assert str(error).startswith("t.inf:4: extension 2.5.29.17: ") and message in str(error), str(error)


def test_eku_comma_separated_and_continued() -> None:
    (eku,) = ext("2.5.29.37={text}1.3.6.1.5.5.7.3.1, 1.3.6.1.5.5.7.3.2,\n_continue_ = 1.3.6.1.4.1.311.20.2.2")
    assert eku.usages == ("1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2", "1.3.6.1.4.1.311.20.2.2")


def test_enhanced_key_usage_section_merges_with_text_eku() -> None:
    policy = new_request(
        SUBJECT,
        "[EnhancedKeyUsageExtension]\nOID = 1.3.6.1.5.5.7.3.1\nOID = 1.3.6.1.5.5.7.3.2\nCritical = TRUE\n",
    )
    (eku,) = policy.extensions
    assert eku.usages == ("1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2") and eku.critical


@pytest.mark.parametrize(
    ("text", "ca", "path_length"),
    [
        ("ca=1&pathlength=3", True, 3),
        ("ca=0", False, None),
        ("ca=true", True, None),
        ("ca=0pathlength=3", False, None),
        ("CA=1 & PathLength=0", True, 0),
    ],
)
def test_basic_constraints(text: str, ca: bool, path_length: int | None) -> None:
    (bc,) = ext(f'2.5.29.19 = "{{text}}{text}"')
    assert (bc.ca, bc.path_length) == (ca, path_length)


def test_raw_forms_and_critical_list() -> None:
    der = bytes.fromhex("30060101ff020101")  # SEQUENCE { BOOLEAN TRUE, INTEGER 1 }
    specs = ext(
        f"1.2.3.1 = {base64.b64encode(der).decode()}\n"
        f"1.2.3.2 = {{hex}}{der.hex(' ')}\n"
        f"1.2.3.3 = {{asn}}{base64.b64encode(der).decode()}\n"
        "1.2.3.4 = {utf8}hello\n"
        "1.2.3.5 = {octet}AAE=\n"
        "Critical = 1.2.3.1, 1.2.3.4\n"
    )
    assert [s.der for s in specs[:3]] == [der, der, der]
    assert decoder.decode(specs[3].der, asn1Spec=char.UTF8String())[0] == "hello"
    assert bytes(decoder.decode(specs[4].der, asn1Spec=univ.OctetString())[0]) == b"\x00\x01"
    assert [s.critical for s in specs] == [True, False, False, True, False]


@pytest.mark.parametrize(
    ("lines", "line", "message"),
    [
        ("2.5.29.17 = !!notbase64", 4, "not valid base64"),
        ("1.2.3 = {text}abc", 4, "{text} form is defined for SAN, EKU and basic constraints"),
        ("2.5.29.37 = {text}1.2.3,not-an-oid", 4, "not an object identifier"),
        ("2.5.29.37 = {text}", 4, "list is empty"),
        ("2.5.29.19 = {text}ca=maybe", 4, "basic constraints must be"),
        ("SomeName = {text}x", 4, "is not an OID"),
        ("Critical = 2.5.29.x", 4, "Critical:"),
        ("1.2.3 = {hex}0400\n1.2.3 = {hex}0400", 5, "given twice"),
    ],
)
def test_extension_errors_carry_lines(lines: str, line: int, message: str) -> None:
    error = inf_error(f"[NewRequest]\n{SUBJECT}\n[Extensions]\n{lines}\n")
    assert str(error).startswith(f"t.inf:{line}: ") and message in str(error), str(error)


def test_critical_for_an_absent_extension_warns() -> None:
    policy = new_request(SUBJECT, "[Extensions]\nCritical = 2.5.29.17\n")
    assert warnings_of(policy) == [(4, "Critical names 2.5.29.17, which is not among the [Extensions]")]


def test_request_attributes_are_kept_in_order() -> None:
    policy = new_request(
        SUBJECT, '[RequestAttributes]\nCertificateTemplate = User\nSAN = "dns=a&email=b@c"\nFoo = Bar\n'
    )
    assert policy.request_attributes == (("CertificateTemplate", "User"), ("SAN", "dns=a&email=b@c"), ("Foo", "Bar"))
    assert [n.kind for n in policy.san_attribute] == ["dns", "email"]
    error = inf_error(f'[NewRequest]\n{SUBJECT}\n[RequestAttributes]\nSAN = "nope=1"\n')
    assert str(error).startswith("t.inf:4: SAN attribute: unknown SAN tag")
