"""RFC 7512 parsing and formatting, including the RFC's own examples."""

from __future__ import annotations

import pytest

from tokenagent.errors import UsageError
from tokenagent.token.uri import Pkcs11Uri, format_uri, is_pkcs11_uri, parse_uri

RFC_EXAMPLES = [
    "pkcs11:",
    "pkcs11:object=my-pubkey;type=public",
    "pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
    "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;"
    "object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin",
    "pkcs11:object=my-sign-key;type=private?module-name=mypkcs11",
    "pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1",
    "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin",
    "pkcs11:slot-description=Sun%20Metaslot",
    "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23",
    "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
    "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert",
    "pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a?pin-source=file:/etc/token_pin"
    "&vendor-bbb=value-b",
]


@pytest.mark.parametrize("text", RFC_EXAMPLES[:-1])
def test_rfc7512_examples_parse_and_round_trip(text: str) -> None:
    uri = parse_uri(text)
    assert parse_uri(format_uri(uri)) == uri


def test_values_are_percent_decoded() -> None:
    uri = parse_uri(RFC_EXAMPLES[3])
    assert uri.token == "The Software PKCS#11 Softtoken"
    assert uri.manufacturer == "Snake Oil, Inc."
    assert uri.object_id == bytes.fromhex("69953e5cf4bdec91")
    assert uri.type == "cert"
    assert uri.serial == ""
    assert uri.pin_source == "file:/etc/token_pin"
    assert parse_uri(RFC_EXAMPLES[10]).token == "Name with a small A with acute: á"
    assert parse_uri(RFC_EXAMPLES[9]).token == "A name with a substring %;"


def test_unknown_non_vendor_attribute_is_refused() -> None:
    # RFC 7512 §2.3: vendor attributes must start with "x-"; the RFC example above uses
    # "vendor-aaa" to show what a parser may reject.
    with pytest.raises(UsageError, match="vendor-aaa"):
        parse_uri(RFC_EXAMPLES[-1])
    assert parse_uri("pkcs11:token=t;x-vendor=1").path["x-vendor"] == "1"


def test_format_encodes_id_bytes_and_special_characters() -> None:
    uri = Pkcs11Uri(path={"token": "a;b c", "object": "k/1"}, object_id=b"\x01\xab")
    text = format_uri(uri)
    assert text == "pkcs11:token=a%3Bb%20c;id=%01%AB;object=k/1"
    assert parse_uri(text) == uri


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pkcs11:token", "without a value"),
        ("pkcs11:token=a;token=b", "repeats"),
        ("pkcs11:id=%zz", "percent-escape"),
        ("pkcs11:id=%4", "percent-escape"),
        ("pkcs11:type=key", "type must be"),
        ("pkcs11:slot-id=abc", "slot-id"),
        ("pkcs11:token=%ff%fe", "UTF-8"),
        ("pkcs11:?pin-colour=1", "unknown query"),
        ("token=abc", "not a pkcs11: URI"),
    ],
)
def test_malformed_uris_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_uri(text)


def test_pin_value_never_shows_in_repr_or_errors() -> None:
    uri = parse_uri("pkcs11:token=t?pin-value=s3cret")
    assert "s3cret" not in repr(uri)
    with pytest.raises(UsageError) as info:
        parse_uri("pkcs11:token?pin-value=s3cret")
    assert "s3cret" not in str(info.value)


def test_scheme_is_case_insensitive_and_slot_id_is_numeric() -> None:
    assert is_pkcs11_uri("PKCS11:token=x")
    assert parse_uri("pkcs11:slot-id=7").slot_id == 7
    assert parse_uri("pkcs11:token=x;object=y;type=private").token_part() == Pkcs11Uri(path={"token": "x"})
