"""certreq-style armor out; DER, PEM, bare base64 and UTF-16 in; every bad input an InputError."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenagent.errors import InputError
from tokenagent.inf import parse_policy
from tokenagent.request.algorithms import signature_algorithm
from tokenagent.request.armor import REQUEST_LABEL, armor, read_der
from tokenagent.request.pkcs10 import build_request
from tokenagent.request.signer import SoftwareSigner


@pytest.fixture(scope="module")
def request_der() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    policy = parse_policy("[NewRequest]\nSubject = CN=armor,O=Test\nKeyAlgorithm = ECDSA_P256\n", "t.inf")
    signer = SoftwareSigner(key, signature_algorithm(policy))
    return build_request(policy, signer.public_key_info(), signer)


def openssl(*args: str) -> bytes:
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def test_armor_is_certreq_style(request_der: bytes) -> None:
    text = armor(request_der)
    lines = text.split("\r\n")
    assert lines[0] == "-----BEGIN NEW CERTIFICATE REQUEST-----"
    assert lines[-2] == "-----END NEW CERTIFICATE REQUEST-----" and lines[-1] == ""
    assert "\n" not in text.replace("\r\n", "")
    body = lines[1:-2]
    assert all(len(line) == 64 for line in body[:-1]) and 0 < len(body[-1]) <= 64
    assert base64.b64decode("".join(body)) == request_der
    assert REQUEST_LABEL == "NEW CERTIFICATE REQUEST"


def test_openssl_reads_the_armor(tmp_path: Path, request_der: bytes) -> None:
    path = tmp_path / "r.req"
    path.write_bytes(armor(request_der).encode("ascii"))
    assert openssl("req", "-in", str(path), "-outform", "DER") == request_der


def forms(der: bytes, tmp_path: Path) -> dict[str, bytes]:
    b64 = base64.b64encode(der).decode()
    source = tmp_path / "r.der"
    source.write_bytes(der)
    openssl_pem = openssl("req", "-inform", "DER", "-in", str(source))  # "CERTIFICATE REQUEST", LF
    certreq = armor(der)
    return {
        "der": der,
        "certreq": certreq.encode(),
        "openssl pem": openssl_pem,
        "pem with text around": b"Request for the CA\n" + openssl_pem + b"\nthanks\n",
        "bare base64": b64.encode(),
        "bare base64 lines": "\r\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)).encode() + b"\r\n",
        "base64 without padding": b64.rstrip("=").encode(),
        "utf-16 with bom": certreq.encode("utf-16"),
        "utf-16-le without bom": certreq.encode("utf-16-le"),
        "utf-16-be without bom": certreq.encode("utf-16-be"),
        "utf-8 bom": b"\xef\xbb\xbf" + certreq.encode(),
        "bare base64 utf-16": b64.encode("utf-16"),
    }


def test_every_form_reads_back(tmp_path: Path, request_der: bytes) -> None:
    for name, data in forms(request_der, tmp_path).items():
        assert read_der(data) == request_der, name


def test_text_is_accepted_as_well_as_bytes(request_der: bytes) -> None:
    assert read_der(armor(request_der)) == request_der


def test_pkcs7_and_certificate_labels(tmp_path: Path) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-subj", "/CN=armor", "-days", "1",
    )  # fmt: skip
    cert_der = openssl("x509", "-in", str(cert), "-outform", "DER")
    assert read_der(cert.read_bytes(), "certificate") == cert_der
    p7 = tmp_path / "c.p7b"
    p7.write_bytes(openssl("crl2pkcs7", "-nocrl", "-certfile", str(cert)))
    assert b"-----BEGIN PKCS7-----" in p7.read_bytes()
    assert read_der(p7.read_bytes(), "response") == openssl("pkcs7", "-in", str(p7), "-outform", "DER")


def unreadable(data: bytes, what: str = "request") -> str:
    with pytest.raises(InputError) as info:
        read_der(data, what)
    message = str(info.value)
    assert message.startswith(f"cannot read {what}: ") and "\n" not in message
    return message


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "the input is empty"),
        (b" \r\n\t", "the input is empty"),
        (b"\x00\x01\x02\xff\xfe\x80", "neither DER"),
        (b"hello, world", "not valid base64 (the character ',')"),
        (b"hello world", "not a DER SEQUENCE: it starts with byte 0x85"),  # blanks are skipped in base64
        (b"MIIB*AAA", "not valid base64 (the character '*')"),
        (b"MII=BAAA", "'=' before the end"),
        (b"MIIBA", "cannot be decoded"),
        (b"AAAA", "not a DER SEQUENCE: it starts with byte 0x00"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n", "has no -----END CERTIFICATE REQUEST----- line"),
        (b"-----BEGIN X-----\nMAA=\n-----END Y-----\n", "begins with X but ends with Y"),
        (b"-----BEGIN X-----\n-----END X-----\n", "the PEM block X is empty"),
        (b"-----END X-----\n", "without a valid -----BEGIN LABEL----- line"),
        (b"-----BEGIN X-----\nMAA=\n-----END X-----\n-----BEGIN Y-----\nMAA=\n-----END Y-----\n", "2 PEM blocks"),
        (b"-----BEGIN X-----\nProc-Type: 4,ENCRYPTED\n\nMAA=\n-----END X-----\n", "has headers"),
        ("MIIB\u00e9AAA".encode(), "a non-ASCII character at offset 4"),
        (b"\x30\x80\x00\x00", "indefinite length"),
        (b"\x30\x85\x01\x02\x03\x04\x05", "a 5-byte length"),
        (b"\x30\x03\x04\x05\x00", "damaged DER inside the SEQUENCE"),
    ],
)
def test_garbage_is_named(data: bytes, reason: str) -> None:
    assert reason in unreadable(data)


def test_the_caller_names_what_is_read() -> None:
    assert unreadable(b"", "certificate") == "cannot read certificate: the input is empty"


def test_every_truncation_of_a_real_request_is_an_input_error(request_der: bytes) -> None:
    for length in range(len(request_der)):
        unreadable(request_der[:length])


def test_every_truncation_of_the_armor_is_an_input_error(request_der: bytes) -> None:
    text = armor(request_der).encode()
    end = text.index(b"-----END")
    for length in range(end):  # cut anywhere before the END line: never a whole request
        unreadable(text[:length])


def test_truncated_der_reason(request_der: bytes) -> None:
    message = unreadable(request_der[:-10])
    assert f"needs {len(request_der)} bytes, {len(request_der) - 10} present" in message


def test_trailing_junk(request_der: bytes) -> None:
    assert "1 byte(s) after the end of the DER SEQUENCE" in unreadable(request_der + b"\x00")
    assert "4 byte(s) after the end" in unreadable(base64.b64encode(request_der + b"junk"))
    assert "2 byte(s) after the end" in unreadable(armor(request_der + b"\x05\x00").encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_read_or_refused_with_input_error(data: bytes) -> None:
    try:
        der = read_der(data)
    except InputError:
        return
    assert der[0] == 0x30


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \n-", max_size=120))
def test_random_base64ish_text_is_read_or_refused_with_input_error(text: str) -> None:
    try:
        der = read_der(text.encode())
    except InputError:
        return
    assert der[0] == 0x30
