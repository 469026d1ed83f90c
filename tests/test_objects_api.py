"""Object helpers of the token layer, on keys that pkcs11-tool made."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from cryptography import x509
from pkcs11 import Attribute, ObjectClass

from tests.conftest import USER_PIN, SoftHSM, pkcs11_tool
from tokenagent.token.library import find_token
from tokenagent.token.objects import find_objects, find_private_key_for, key_id_for, public_key_info, read_attributes
from tokenagent.token.pins import literal_pin_source
from tokenagent.token.session import TokenSession, open_session


@pytest.fixture()
def main_session(softhsm: SoftHSM) -> Iterator[TokenSession]:
    with open_session(find_token("ta-main"), login=True, pin_source=literal_pin_source(USER_PIN)) as session:
        yield session


def public_key_der(softhsm: SoftHSM, tmp_path, ident: str) -> bytes:
    out = tmp_path / f"pub-{ident}.der"
    pkcs11_tool(softhsm, "--read-object", "--type", "pubkey", "--id", ident, "--output-file", str(out))
    return out.read_bytes()


def test_find_by_id_and_label(main_session: TokenSession) -> None:
    session = main_session.session
    (key,) = find_objects(session, object_class=ObjectClass.PRIVATE_KEY, object_id=b"\x01")
    assert key[Attribute.LABEL] == "rsa-key"
    (cert,) = find_objects(session, object_class=ObjectClass.CERTIFICATE, label="test-cert")
    assert cert[Attribute.ID] == b"\x03"
    assert find_objects(session, label="no such label") == []


@pytest.mark.parametrize("ident", ["01", "02"])
def test_find_private_key_by_public_key(main_session: TokenSession, softhsm: SoftHSM, tmp_path, ident: str) -> None:
    spki = public_key_der(softhsm, tmp_path, ident)
    key = find_private_key_for(main_session.session, spki)
    assert key is not None and key[Attribute.ID] == bytes.fromhex(ident)
    assert public_key_info(key, main_session.session) == spki


def test_a_foreign_public_key_matches_nothing(main_session: TokenSession, softhsm: SoftHSM) -> None:
    cert = x509.load_der_x509_certificate((softhsm.directory / "cert" / "c.der").read_bytes())
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert find_private_key_for(main_session.session, spki) is None


def test_key_id_convention_equals_openssl_subject_key_identifier(softhsm: SoftHSM) -> None:
    pem = (softhsm.directory / "cert" / "c.pem").read_bytes()
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectKeyIdentifier"],
        input=pem,
        capture_output=True,
        check=True,
    ).stdout.decode()
    openssl_ski = bytes.fromhex(text.splitlines()[1].strip().replace(":", ""))
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    spki = (
        x509.load_pem_x509_certificate(pem).public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    assert key_id_for(spki) == openssl_ski


def test_refused_and_unknown_attributes_are_absent_not_errors(main_session: TokenSession) -> None:
    (key,) = find_objects(main_session.session, object_class=ObjectClass.PRIVATE_KEY, object_id=b"\x01")
    values = read_attributes(key, [Attribute.LABEL, Attribute.PRIVATE_EXPONENT, Attribute.VALUE, 0x8000BEEF])
    assert values == {Attribute.LABEL: "rsa-key"}
