"""Self-signed certificates (RequestType = Cert): openssl verifies them and shows the computed validity."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pyasn1.codec.der import decoder
from pyasn1_modules import rfc5280

from tokenagent.errors import PolicyError
from tokenagent.inf import RequestPolicy, load_policy, parse_policy
from tokenagent.request.algorithms import signature_algorithm
from tokenagent.request.armor import armor
from tokenagent.request.certificate import self_signed_certificate, validity
from tokenagent.request.signer import SoftwareSigner

SEEDS = Path(__file__).parent / "data" / "inf" / "seeds"
NOW = datetime(2024, 1, 31, 12, 0, 0, 654321, tzinfo=UTC)


def inf(body: str) -> RequestPolicy:
    return parse_policy("[NewRequest]\nRequestType = Cert\n" + body, "t.inf")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def make(policy: RequestPolicy, key, now: datetime = NOW) -> bytes:
    signer = SoftwareSigner(key, signature_algorithm(policy))
    return self_signed_certificate(policy, signer.public_key_info(), signer, now=now)


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], check=True, capture_output=True, text=True).stdout


def verify(tmp_path: Path, der: bytes) -> str:
    """openssl verify with the certificate as its own trust anchor; returns `openssl x509 -text`."""
    path = tmp_path / "c.pem"
    path.write_text(armor(der, "CERTIFICATE"))
    # -attime: the certificates are made for fixed dates in the past
    start = cx509.load_der_x509_certificate(der).not_valid_before_utc
    at = str(int(start.timestamp()) + 1)
    out = openssl("verify", "-attime", at, "-CAfile", str(path), str(path))
    assert out.strip().endswith(": OK")
    return openssl("x509", "-noout", "-text", "-in", str(path))


def dates(tmp_path: Path, der: bytes) -> tuple[str, str]:
    path = tmp_path / "d.der"
    path.write_bytes(der)
    out = openssl("x509", "-inform", "DER", "-in", str(path), "-noout", "-startdate", "-enddate").splitlines()
    return out[0].removeprefix("notBefore="), out[1].removeprefix("notAfter=")


@pytest.mark.parametrize(
    "body",
    [
        "Subject = CN=rsa\n",
        "Subject = CN=pss\nAlternateSignatureAlgorithm = TRUE\nHashAlgorithm = sha384\n",
        "Subject = CN=ec\nKeyAlgorithm = ECDSA_P384\nHashAlgorithm = sha384\n",
    ],
)
def test_self_signed_certificates_verify(tmp_path: Path, rsa_key, ec_key, body: str) -> None:
    policy = inf(body)
    der = make(policy, rsa_key if policy.key_family == "RSA" else ec_key)
    text = verify(tmp_path, der)
    assert "Version: 3 (0x2)" in text
    certificate = cx509.load_der_x509_certificate(der)
    certificate.verify_directly_issued_by(certificate)  # cryptography as the second verifier
    assert certificate.issuer == certificate.subject
    ski = certificate.extensions.get_extension_for_class(cx509.SubjectKeyIdentifier).value.digest
    aki = certificate.extensions.get_extension_for_class(cx509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski == cx509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest
    assert aki.authority_cert_issuer is None and aki.authority_cert_serial_number is None
    key_usage = certificate.extensions.get_extension_for_class(cx509.KeyUsage)
    assert key_usage.critical and key_usage.value.digital_signature


def test_serial_is_positive_random_and_at_most_16_bytes(tmp_path: Path, ec_key) -> None:
    policy = inf("Subject = CN=serial\nKeyAlgorithm = ECDSA_P384\n")
    serials = set()
    for _ in range(8):
        der = make(policy, ec_key)
        serial = cx509.load_der_x509_certificate(der).serial_number
        assert 0 < serial < 2**127
        serials.add(serial)
    assert len(serials) == 8
    path = tmp_path / "c.der"
    path.write_bytes(der)
    shown = openssl("x509", "-inform", "DER", "-in", str(path), "-noout", "-serial").strip()
    assert int(shown.removeprefix("serial="), 16) == serial


def test_default_validity_is_one_year_from_now(tmp_path: Path, ec_key) -> None:
    der = make(inf("Subject = CN=v\nKeyAlgorithm = ECDSA_P384\n"), ec_key)
    assert dates(tmp_path, der) == ("Jan 31 12:00:00 2024 GMT", "Jan 31 12:00:00 2025 GMT")


@pytest.mark.parametrize(
    ("units", "period", "not_after"),
    [
        (1, "Months", "Feb 29 12:00:00 2024 GMT"),  # Jan 31 + 1 month: the last day of February
        (13, "Months", "Feb 28 12:00:00 2025 GMT"),
        (2, "Years", "Jan 31 12:00:00 2026 GMT"),
        (3, "Weeks", "Feb 21 12:00:00 2024 GMT"),
        (10, "Days", "Feb 10 12:00:00 2024 GMT"),
        (36, "Hours", "Feb  2 00:00:00 2024 GMT"),
        (90, "Minutes", "Jan 31 13:30:00 2024 GMT"),
        (30, "Seconds", "Jan 31 12:00:30 2024 GMT"),
    ],
)
def test_validity_period_units(tmp_path: Path, ec_key, units: int, period: str, not_after: str) -> None:
    policy = inf(
        f"Subject = CN=v\nKeyAlgorithm = ECDSA_P384\nValidityPeriod = {period}\nValidityPeriodUnits = {units}\n"
    )
    der = make(policy, ec_key)
    assert dates(tmp_path, der) == ("Jan 31 12:00:00 2024 GMT", not_after)
    verify(tmp_path, der)


def test_leap_day_plus_a_year() -> None:
    policy = inf("Subject = CN=v\nNotBefore = 2024-02-29T08:00Z\nValidityPeriod = Years\nValidityPeriodUnits = 1\n")
    assert validity(policy, NOW) == (datetime(2024, 2, 29, 8, tzinfo=UTC), datetime(2025, 2, 28, 8, tzinfo=UTC))


def test_not_before_and_not_after_with_generalized_time_from_2050(tmp_path: Path, rsa_key) -> None:
    policy = inf("Subject = CN=long\nNotBefore = 2024-03-01T00:00Z\nNotAfter = 2051-06-30T23:59:59Z\n")
    der = make(policy, rsa_key)
    assert dates(tmp_path, der) == ("Mar  1 00:00:00 2024 GMT", "Jun 30 23:59:59 2051 GMT")
    text = verify(tmp_path, der)
    assert "Not After : Jun 30 23:59:59 2051 GMT" in text
    certificate, rest = decoder.decode(der, asn1Spec=rfc5280.Certificate())
    assert rest == b""
    period = certificate["tbsCertificate"]["validity"]
    assert period["notBefore"].getName() == "utcTime" and str(period["notBefore"]["utcTime"]) == "240301000000Z"
    assert period["notAfter"].getName() == "generalTime"
    assert str(period["notAfter"]["generalTime"]) == "20510630235959Z"


def test_not_before_with_a_period(tmp_path: Path, ec_key) -> None:
    policy = inf(
        "Subject = CN=v\nKeyAlgorithm = ECDSA_P384\nNotBefore = 2030-12-31T10:00+02:00\n"
        "ValidityPeriod = Days\nValidityPeriodUnits = 1\n"
    )
    assert dates(tmp_path, make(policy, ec_key)) == ("Dec 31 08:00:00 2030 GMT", "Jan  1 08:00:00 2031 GMT")


def test_naive_now_is_utc() -> None:
    policy = inf("Subject = CN=v\n")
    start, end = validity(policy, datetime(2024, 5, 6, 7, 8, 9, 999))
    assert start == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC) and end == datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_not_after_before_now_is_refused(ec_key) -> None:
    policy = inf("Subject = CN=v\nKeyAlgorithm = ECDSA_P384\nNotAfter = 2020-01-01T00:00Z\n")
    with pytest.raises(PolicyError, match=r"^t\.inf:5: NotAfter 2020-01-01T00:00:00\+00:00 is not after NotBefore"):
        make(policy, ec_key)


def test_a_certificate_needs_a_subject(ec_key) -> None:
    policy = inf("KeyAlgorithm = ECDSA_P384\n[Extensions]\n2.5.29.17 = {text}DNS=a.example\n")
    with pytest.raises(PolicyError, match=r"^t\.inf: RequestType = Cert needs a Subject"):
        make(policy, ec_key)


def test_suppress_defaults_certificate_has_no_ski_and_no_aki(tmp_path: Path, ec_key) -> None:
    policy = inf(
        "Subject = CN=bare\nKeyAlgorithm = ECDSA_P384\nSuppressDefaults = TRUE\n"
        "[Extensions]\n2.5.29.19 = {text}ca=1&pathlength=0\nCritical = 2.5.29.19\n"
    )
    der = make(policy, ec_key)
    verify(tmp_path, der)
    certificate = cx509.load_der_x509_certificate(der)
    assert [e.oid.dotted_string for e in certificate.extensions] == ["2.5.29.19"]


def test_seed_with_request_type_cert(tmp_path: Path, rsa_key) -> None:
    policy = load_policy(SEEDS / "reference-strings.inf")
    der = make(policy, rsa_key)
    text = verify(tmp_path, der)
    assert "Subject: CN = TestSelfSignedCert" in text and "Issuer: CN = TestSelfSignedCert" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    certificate = cx509.load_der_x509_certificate(der)
    assert [e.oid.dotted_string for e in certificate.extensions] == [
        "2.5.29.15",
        "2.5.29.37",
        "2.5.29.14",
        "2.5.29.35",
    ]
