"""Signature algorithm identifiers, DigestInfo, ECDSA signature conversion and the software signer."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pyasn1.codec.der import decoder
from pyasn1_modules import rfc5280

from tokenagent.inf import parse_policy
from tokenagent.request.algorithms import (
    SignatureAlgorithm,
    digest,
    digest_info,
    ecdsa_der_signature,
    signature_algorithm,
)
from tokenagent.request.signer import SoftwareSigner

CRYPTO_HASHES = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def ec_keys() -> dict[int, ec.EllipticCurvePrivateKey]:
    return {size: ec.generate_private_key(curve) for size, curve in ((256, ec.SECP256R1()), (521, ec.SECP521R1()))}


@pytest.mark.parametrize(
    ("algorithm", "der_hex", "name"),
    [
        # RFC 4055 / RFC 8017: NULL parameters, sha1 included
        (SignatureAlgorithm("sha1", "pkcs1v15"), "300d06092a864886f70d0101050500", "sha1WithRSAEncryption"),
        (SignatureAlgorithm("sha256", "pkcs1v15"), "300d06092a864886f70d01010b0500", "sha256WithRSAEncryption"),
        (SignatureAlgorithm("sha512", "pkcs1v15"), "300d06092a864886f70d01010d0500", "sha512WithRSAEncryption"),
        # RFC 5758: no parameters
        (SignatureAlgorithm("sha256", "ecdsa"), "300a06082a8648ce3d040302", "ecdsa-with-SHA256"),
        (SignatureAlgorithm("sha384", "ecdsa"), "300a06082a8648ce3d040303", "ecdsa-with-SHA384"),
        # RFC 4055 section 3.1 with sha256 hash and MGF1 identifiers, salt 32 ([2] 0x20), trailerField left out
        (
            SignatureAlgorithm("sha256", "pss"),
            "304106092a864886f70d01010a3034a00f300d06096086480165030402010500"
            "a11c301a06092a864886f70d010108300d06096086480165030402010500a203020120",
            "RSASSA-PSS (sha256, MGF1-sha256, salt 32)",
        ),
    ],
)
def test_identifiers_are_the_rfc_encodings(algorithm: SignatureAlgorithm, der_hex: str, name: str) -> None:
    assert algorithm.identifier().dump().hex() == der_hex
    assert algorithm.name == name
    decoded, rest = decoder.decode(bytes.fromhex(der_hex), asn1Spec=rfc5280.AlgorithmIdentifier())
    assert rest == b"" and str(decoded["algorithm"]) == algorithm.identifier()["algorithm"].dotted


def test_digest_sizes_and_bad_values() -> None:
    assert [SignatureAlgorithm(h, "pss").digest_size for h in ("sha1", "sha256", "sha384", "sha512")] == [
        20,
        32,
        48,
        64,
    ]
    with pytest.raises(ValueError, match="unsupported hash"):
        SignatureAlgorithm("md5", "pkcs1v15")
    with pytest.raises(ValueError, match="unsupported signature padding"):
        SignatureAlgorithm("sha256", "raw")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("KeyAlgorithm = RSA", SignatureAlgorithm("sha256", "pkcs1v15")),
        ("KeyAlgorithm = RSA\nHashAlgorithm = SHA384", SignatureAlgorithm("sha384", "pkcs1v15")),
        ("AlternateSignatureAlgorithm = TRUE\nHashAlgorithm = sha512", SignatureAlgorithm("sha512", "pss")),
        ("KeyAlgorithm = ECDSA_P384\nHashAlgorithm = sha384", SignatureAlgorithm("sha384", "ecdsa")),
        ("KeyAlgorithm = ECDH_P256\nAlternateSignatureAlgorithm = TRUE", SignatureAlgorithm("sha256", "ecdsa")),
    ],
)
def test_signature_algorithm_for_a_policy(text: str, expected: SignatureAlgorithm) -> None:
    assert signature_algorithm(parse_policy(f"[NewRequest]\nSubject = CN=x\n{text}\n", "t.inf")) == expected


@pytest.mark.parametrize("hash_name", ["sha1", "sha256", "sha384", "sha512"])
def test_digest_matches_hashlib(hash_name: str) -> None:
    assert digest(hash_name, b"tokenagent") == hashlib.new(hash_name, b"tokenagent").digest()


@pytest.mark.parametrize("hash_name", ["sha1", "sha256", "sha384", "sha512"])
def test_digest_info_is_what_an_rsa_pkcs1_signature_carries(rsa_key, hash_name: str) -> None:
    signature = rsa_key.sign(b"data", padding.PKCS1v15(), CRYPTO_HASHES[hash_name])
    # cryptography recovers the signed DigestInfo when no hash algorithm is named
    recovered = rsa_key.public_key().recover_data_from_signature(signature, padding.PKCS1v15(), None)
    assert digest_info(hash_name, digest(hash_name, b"data")) == recovered


def test_digest_info_prefix_from_rfc_8017() -> None:
    prefix = bytes.fromhex("3031300d060960864801650304020105000420")  # RFC 8017 9.2 note 1, SHA-256
    assert digest_info("sha256", bytes(32)) == prefix + bytes(32)
    with pytest.raises(ValueError, match="32 bytes"):
        digest_info("sha256", bytes(20))


@pytest.mark.parametrize("size", [256, 521])
def test_ecdsa_raw_signature_becomes_the_der_value(ec_keys, size: int) -> None:
    key = ec_keys[size]
    der = key.sign(b"data", ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    width = (size + 7) // 8
    raw = r.to_bytes(width, "big") + s.to_bytes(width, "big")  # PKCS#11 CKM_ECDSA output
    assert ecdsa_der_signature(raw) == der
    key.public_key().verify(ecdsa_der_signature(raw), b"data", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(ValueError, match="two equal halves"):
        ecdsa_der_signature(raw[:-1])


def test_software_signer_refuses_mismatched_algorithms(rsa_key, ec_keys) -> None:
    with pytest.raises(ValueError, match="RSA key cannot sign"):
        SoftwareSigner(rsa_key, SignatureAlgorithm("sha256", "ecdsa"))
    with pytest.raises(ValueError, match="EC key cannot sign"):
        SoftwareSigner(ec_keys[256], SignatureAlgorithm("sha256", "pss"))


def test_software_signer_pss_uses_digest_sized_salt(rsa_key) -> None:
    signer = SoftwareSigner(rsa_key, SignatureAlgorithm("sha384", "pss"))
    signature = signer.sign(b"data")
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    rsa_key.public_key().verify(signature, b"data", pss, hashes.SHA384())
    wrong_salt = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=20)
    with pytest.raises(InvalidSignature):
        rsa_key.public_key().verify(signature, b"data", wrong_salt, hashes.SHA384())
