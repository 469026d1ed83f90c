"""Who signs a request or certificate: a token key (tokenagent.token) or a software key (tests, test CA).

Builders only need `algorithm` and `sign`; the signature they get back is already in the form
X.509 and PKCS#10 carry (PKCS#1 or PSS bytes for RSA, DER Ecdsa-Sig-Value for ECDSA).
"""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tokenagent.request.algorithms import HASHES, SignatureAlgorithm


class Signer(Protocol):
    @property
    def algorithm(self) -> SignatureAlgorithm: ...

    def sign(self, data: bytes) -> bytes: ...


class SoftwareSigner:
    """A cryptography RSA or EC private key that signs with a fixed `SignatureAlgorithm`."""

    def __init__(self, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, algorithm: SignatureAlgorithm) -> None:
        if isinstance(key, rsa.RSAPrivateKey):
            if algorithm.padding not in ("pkcs1v15", "pss"):
                raise ValueError(f"an RSA key cannot sign with {algorithm.name}")
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            if algorithm.padding != "ecdsa":
                raise ValueError(f"an EC key cannot sign with {algorithm.name}")
        else:
            raise TypeError(f"SoftwareSigner takes an RSA or EC private key, not {type(key).__name__}")
        self._key = key
        self._algorithm = algorithm

    @property
    def algorithm(self) -> SignatureAlgorithm:
        return self._algorithm

    def sign(self, data: bytes) -> bytes:
        hash_algorithm: hashes.HashAlgorithm = HASHES[self._algorithm.hash]()
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(data, ec.ECDSA(hash_algorithm))  # already DER Ecdsa-Sig-Value
        if self._algorithm.padding == "pss":
            # salt = digest size, as the identifier's RSASSA-PSS-params say
            pss = padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=self._algorithm.digest_size)
            return self._key.sign(data, pss, hash_algorithm)
        return self._key.sign(data, padding.PKCS1v15(), hash_algorithm)

    def public_key_info(self) -> bytes:
        # imported here: serialization pulls in ssh, ciphers and bcrypt (~3 ms a token `new` does not need)
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
