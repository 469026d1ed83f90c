"""What `accept` and `repair` both check about a certificate and the token key it belongs to.

The public keys are compared before anything is written (a certificate for another key is never
installed); these checks add what a comparison cannot show: whether the certificate is usable now,
whether its KeyUsage fits what the key may do on the token, and whether the key really signs (the
"signature test" certutil -repairstore runs).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tokenagent.display import dn_text
from tokenagent.errors import PinError, VerificationError
from tokenagent.request.algorithms import digest, digest_info, ecdsa_der_signature
from tokenagent.token.facts import SignMechanism
from tokenagent.token.uri import Pkcs11Uri

if TYPE_CHECKING:
    from cryptography import x509

    from tokenagent.token.library import TokenHandle
    from tokenagent.token.session import TokenSession

#: RFC 5280 KeyUsage bit -> the PKCS#11 usages (pkcs11-tool's names) any one of which allows it.
USAGE_NEEDS: dict[str, tuple[str, ...]] = {
    "digital_signature": ("sign",),
    "content_commitment": ("sign",),
    "key_cert_sign": ("sign",),
    "crl_sign": ("sign",),
    "key_encipherment": ("unwrap", "decrypt"),
    "data_encipherment": ("decrypt",),
    "key_agreement": ("derive",),
}

NO_KEY = "no private key on any selected token matches this certificate"


@dataclass(frozen=True)
class KeyTest:
    """The outcome of signing a random challenge with the token key: passed, or skipped and why."""

    status: str  # passed | skipped | not-run
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"status": self.status, "detail": self.detail}


NOT_RUN = KeyTest("not-run", "skipped with --no-key-test")


def load_certificate(der: bytes, what: str) -> x509.Certificate:
    from cryptography import x509

    from tokenagent.errors import InputError

    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion) as exc:
        raise InputError(f"{what}: the certificate cannot be read: {exc}") from None


def certificate_spki(der: bytes, what: str) -> bytes:
    """The DER SubjectPublicKeyInfo of a certificate (compared byte for byte with the token key's)."""
    from asn1crypto import x509

    from tokenagent.errors import InputError

    try:
        return x509.Certificate.load(der).public_key.dump(force=True)
    except (ValueError, TypeError, KeyError) as exc:  # KeyError: asn1crypto, a key algorithm it does not know
        raise InputError(f"{what}: the certificate's public key cannot be read: {exc}") from None


def certificate_summary(der: bytes, what: str) -> dict[str, Any]:
    cert = load_certificate(der, what)
    return {
        "subject": dn_text(cert.subject),
        "issuer": dn_text(cert.issuer),
        "serial": f"{cert.serial_number:x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha1": hashlib.sha1(der).hexdigest(),
        "sha256": hashlib.sha256(der).hexdigest(),
    }


def display_name(der: bytes) -> str:
    """A certificate's subject common name, else its whole subject (CA certificates' labels)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        return str(names[0].value)
    return dn_text(cert.subject) or hashlib.sha1(der).hexdigest()


def validity_warnings(cert: x509.Certificate, now: datetime) -> list[str]:
    sha1 = cert.fingerprint(_sha1()).hex()
    if now > cert.not_valid_after_utc:
        return [f"the certificate {sha1} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z"]
    if now < cert.not_valid_before_utc:
        return [f"the certificate {sha1} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z"]
    return []


def usage_warnings(cert: x509.Certificate, capabilities: frozenset[str], key_label: str) -> list[str]:
    """KeyUsage bits the token key is not allowed to serve (its CKA_SIGN/DECRYPT/UNWRAP/DERIVE)."""
    from cryptography import x509

    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return []
    missing = []
    for bit, needs in USAGE_NEEDS.items():
        try:
            asserted = bool(getattr(usage, bit))
        except ValueError:
            asserted = False
        if asserted and not capabilities & set(needs):
            missing.append(f"{bit} (needs CKA_{'/CKA_'.join(n.upper() for n in needs)})")
    if not missing:
        return []
    return [
        f"the certificate's KeyUsage asks for {', '.join(missing)}, which the key '{key_label}' on the token "
        "does not allow; applications will fail to use the pair for that"
    ]


def object_uri(handle: TokenHandle, object_type: str, label: str | None, key_id: bytes | None) -> str:
    """RFC 7512 URI of one object, for OpenSSL's engine/provider, p11-kit and GnuTLS."""
    path = dict(handle.uri().path)
    if label:
        path["object"] = label
    path["type"] = object_type
    return str(Pkcs11Uri(path=path, object_id=key_id or None))


@dataclass(frozen=True)
class LinkedPair:
    """A private key and its certificate object on one token, linked by CKA_ID (accept, repair)."""

    token: TokenHandle
    key_id: bytes
    key_label: str
    certificate_label: str

    @property
    def key_uri(self) -> str:
        return object_uri(self.token, "private", self.key_label, self.key_id)

    @property
    def certificate_uri(self) -> str:
        return object_uri(self.token, "cert", self.certificate_label, self.key_id)

    def token_json(self) -> dict[str, str]:
        return {"label": self.token.label, "serial": self.token.serial, "uri": str(self.token.uri())}


#: The mechanisms the key test signs with, by key family, in order of preference (raw first: it
#: works for every hash the certificate may use).
_KEY_TEST_MECHANISMS: dict[str, tuple[SignMechanism, ...]] = {
    "RSA": (
        SignMechanism("CKM_RSA_PKCS", "digest_info", "sha256"),
        SignMechanism("CKM_SHA256_RSA_PKCS", "data", "sha256"),
    ),
    "EC": (
        SignMechanism("CKM_ECDSA", "digest", "sha256", ecdsa=True),
        SignMechanism("CKM_ECDSA_SHA256", "data", "sha256", ecdsa=True),
    ),
}


def key_test(ts: TokenSession, private: Any, spki_der: bytes, capabilities: frozenset[str]) -> KeyTest:
    """Sign 32 random bytes on the token and verify with the certificate's public key.

    Raises VerificationError when the signature does not verify: the key is not the certificate's
    even though the public halves matched (a broken token, or a key object that lies).
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    from tokenagent.token.signing import always_authenticate, sign_raw
    from tokenagent.token.tokeninfo import first_mechanism

    if "sign" not in capabilities:
        return KeyTest("skipped", "the key may not sign (CKA_SIGN is FALSE)")
    public = serialization.load_der_public_key(spki_der)
    family = (
        "RSA" if isinstance(public, rsa.RSAPublicKey) else "EC" if isinstance(public, ec.EllipticCurvePublicKey) else ""
    )
    candidates = _KEY_TEST_MECHANISMS.get(family, ())
    chosen = first_mechanism(ts, [m.mechanism for m in candidates])
    how = next((m for m in candidates if m.mechanism == chosen), None)
    if how is None:
        return KeyTest("skipped", "the token offers no PKCS#1 v1.5 or ECDSA mechanism for this key")
    challenge = os.urandom(32)
    data = {
        "data": challenge,
        "digest": digest("sha256", challenge),
        "digest_info": digest_info("sha256", digest("sha256", challenge)),
    }[how.input]
    try:
        signature = sign_raw(ts, private, how, data, context_login=always_authenticate(private))
    except PinError as exc:
        return KeyTest("skipped", f"the key needs the PIN for every use and none can be given again ({exc.message})")
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, challenge, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(ecdsa_der_signature(signature), challenge, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise VerificationError(
            f"key test failed on token '{ts.handle.label}': the key signed with {how.mechanism}, and the "
            "certificate's public key does not verify the signature; nothing was changed"
        ) from None
    return KeyTest("passed", f"signed 32 random bytes with {how.mechanism} (SHA-256); the certificate verifies it")


def _sha1() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA1()
