"""Is an answer from the CA we trust? The configured trust anchors against a signer or a certificate.

A CMC response is signed (RFC 5272 3.3); `request/response.py` checks that the signature is intact
with the certificate the response carries, which proves nothing about who signed. Here the signer's
certificate must lead, issuer by issuer (names and signatures, each valid now, every issuer a CA),
to one of the certificates of the CA's trust file. The same walk checks an issued certificate
that came without a signature (a certs-only PKCS#7 or a bare certificate).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from tokenagent.display import dn_text
from tokenagent.errors import CAConfigError, VerificationError
from tokenagent.inputs import read_input
from tokenagent.request.armor import read_der
from tokenagent.request.der import CERTIFICATE_ERRORS

_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_DER = Encoding.DER
#: Longer chains than this are not followed (a loop of cross-certificates ends here too).
MAX_CHAIN = 8


def load_trust(path: Path) -> tuple[bytes, ...]:
    """The certificates of a PEM bundle (or one DER certificate) as DER; `CAConfigError` otherwise."""
    data = read_input(path, "CA trust file")
    try:
        if _PEM_CERTIFICATE in data:
            certificates = tuple(c.public_bytes(_DER) for c in x509.load_pem_x509_certificates(data))
        else:
            certificates = (x509.load_der_x509_certificate(read_der(data, str(path))).public_bytes(_DER),)
    except (*CERTIFICATE_ERRORS, ValueError) as exc:
        raise CAConfigError(f"CA trust file {path} holds no readable certificate ({exc})") from None
    return certificates


def check_issued_under(
    certificate: bytes, others: Sequence[bytes], anchors: Sequence[bytes], what: str, *, at: datetime | None = None
) -> list[bytes]:
    """The path from ``certificate`` up to an anchor (the anchor last); `VerificationError` if none.

    ``others`` are certificates that may be intermediates (those the response carried)."""
    now = at or datetime.now(UTC)
    anchor_set = {bytes(a) for a in anchors}
    loaded = {der: _load(der) for der in (*others, *anchors)}
    current_der = certificate
    current = _load(certificate)
    path = [certificate]
    for _ in range(MAX_CHAIN):
        if current_der in anchor_set:
            return path
        _check_time(current, what, now)
        issuer = next(
            (
                der
                for der, cert in loaded.items()
                if der not in path and _issued_by(current, cert) and (der in anchor_set or _is_ca(cert))
            ),
            None,
        )
        if issuer is None:
            break
        path.append(issuer)
        current_der, current = issuer, loaded[issuer]
    subject = dn_text(current.subject) or "(empty subject)"
    raise VerificationError(
        f"{what}: {subject} does not lead to a certificate of the CA trust (issuer {dn_text(current.issuer)}); "
        "nothing was installed"
    )


def _load(der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(der)


def _issued_by(subject: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        subject.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _check_time(certificate: x509.Certificate, what: str, now: datetime) -> None:
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise VerificationError(
            f"{what}: {dn_text(certificate.subject)} is not valid now "
            f"({certificate.not_valid_before_utc:%Y-%m-%d} to {certificate.not_valid_after_utc:%Y-%m-%d})"
        )
