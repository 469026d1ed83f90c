"""Signature algorithms as PKCS#10 and X.509 name them (RFC 4055, RFC 5758), and host-side hashing.

Tokens sign; the host hashes only when a token has nothing better than raw CKM_RSA_PKCS or
CKM_ECDSA, and then needs `digest_info` or `ecdsa_der_signature` to finish the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from asn1crypto import algos, core
from cryptography.hazmat.primitives import hashes

from tokenagent.errors import PolicyError
from tokenagent.request.oids import OID_MGF1, OID_RSASSA_PSS

if TYPE_CHECKING:
    from tokenagent.inf.policy import RequestPolicy

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
PADDINGS = ("pkcs1v15", "pss", "ecdsa")

# RFC 4055 section 5 / RFC 8017 appendix C; the hash OIDs are RFC 5754's.
_RSA_PKCS1 = {
    "sha1": ("1.2.840.113549.1.1.5", "sha1WithRSAEncryption"),
    "sha256": ("1.2.840.113549.1.1.11", "sha256WithRSAEncryption"),
    "sha384": ("1.2.840.113549.1.1.12", "sha384WithRSAEncryption"),
    "sha512": ("1.2.840.113549.1.1.13", "sha512WithRSAEncryption"),
}
# RFC 3279 (SHA-1) and RFC 5758 section 3.2
_ECDSA = {
    "sha1": ("1.2.840.10045.4.1", "ecdsa-with-SHA1"),
    "sha256": ("1.2.840.10045.4.3.2", "ecdsa-with-SHA256"),
    "sha384": ("1.2.840.10045.4.3.3", "ecdsa-with-SHA384"),
    "sha512": ("1.2.840.10045.4.3.4", "ecdsa-with-SHA512"),
}
_HASH_OIDS = {
    "sha1": "1.3.14.3.2.26",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}


def _hash_class(hash_name: str) -> type[hashes.HashAlgorithm]:
    try:
        return HASHES[hash_name]
    except KeyError:
        raise ValueError(f"unsupported hash '{hash_name}' (one of: {', '.join(HASHES)})") from None


def digest_algorithm(hash_name: str) -> algos.DigestAlgorithm:
    """The hash's AlgorithmIdentifier (CMS digestAlgorithm, PSS hashAlgorithm, DigestInfo).

    RFC 4055 2.1: the SHA-2 identifiers are written with NULL parameters, as Windows and OpenSSL
    do (RFC 5754 section 2 asks every receiver to accept NULL as well as absent parameters).
    """
    _hash_class(hash_name)
    return algos.DigestAlgorithm({"algorithm": _HASH_OIDS[hash_name], "parameters": core.Null()})


@dataclass(frozen=True)
class SignatureAlgorithm:
    hash: str  # "sha1" | "sha256" | "sha384" | "sha512"
    padding: str  # "pkcs1v15" | "pss" | "ecdsa"

    def __post_init__(self) -> None:
        _hash_class(self.hash)
        if self.padding not in PADDINGS:
            raise ValueError(f"unsupported signature padding '{self.padding}' (one of: {', '.join(PADDINGS)})")

    @property
    def digest_size(self) -> int:
        return _hash_class(self.hash)().digest_size

    @property
    def name(self) -> str:
        if self.padding == "pss":
            return f"RSASSA-PSS ({self.hash}, MGF1-{self.hash}, salt {self.digest_size})"
        table = _ECDSA if self.padding == "ecdsa" else _RSA_PKCS1
        return table[self.hash][1]

    def identifier(self) -> algos.SignedDigestAlgorithm:
        if self.padding == "pkcs1v15":
            # RFC 4055 section 5: the parameters MUST be NULL (asn1crypto would leave sha1's out)
            return algos.SignedDigestAlgorithm({"algorithm": _RSA_PKCS1[self.hash][0], "parameters": core.Null()})
        if self.padding == "ecdsa":
            # RFC 5758 section 3.2: the parameters MUST be absent
            return algos.SignedDigestAlgorithm({"algorithm": _ECDSA[self.hash][0]})
        # Explicit parameters even for SHA-1: the defaults would say SHA-1/MGF1-SHA-1/salt 20, and
        # some verifiers reject PSS parameters that are left out. trailerField 1 is the DEFAULT, so
        # DER leaves it out (asn1crypto drops fields equal to their default).
        params = algos.RSASSAPSSParams(
            {
                "hash_algorithm": digest_algorithm(self.hash),
                "mask_gen_algorithm": {"algorithm": OID_MGF1, "parameters": digest_algorithm(self.hash)},
                "salt_length": self.digest_size,
                "trailer_field": 1,
            }
        )
        return algos.SignedDigestAlgorithm({"algorithm": OID_RSASSA_PSS, "parameters": params})


def signature_algorithm(policy: RequestPolicy) -> SignatureAlgorithm:
    """The algorithm certreq would sign with for this policy's KeyAlgorithm and HashAlgorithm.

    AlternateSignatureAlgorithm means RSA-PSS for RSA keys. For EC keys Windows then writes
    ecdsa-with-Specified, which OpenSSL and most CAs do not read; tokenagent keeps ecdsa-with-SHA*.
    """
    family = policy.key_family
    if family == "RSA":
        return SignatureAlgorithm(policy.hash_algorithm, "pss" if policy.alternate_signature_algorithm else "pkcs1v15")
    if family in ("ECDSA", "ECDH"):
        return SignatureAlgorithm(policy.hash_algorithm, "ecdsa")
    line = policy.origins["key_algorithm"].line if "key_algorithm" in policy.origins else None
    where = f"{policy.filename}:{line}" if line else policy.filename
    raise PolicyError(
        f"{where}: KeyAlgorithm = {policy.key_algorithm} is not supported: "
        "tokenagent signs with RSA, ECDSA or ECDH keys"
    )


def digest(hash_name: str, data: bytes) -> bytes:
    hasher = hashes.Hash(_hash_class(hash_name)())
    hasher.update(data)
    return hasher.finalize()


def digest_info(hash_name: str, digest: bytes) -> bytes:
    """DER DigestInfo (RFC 8017 9.2 step 2): what CKM_RSA_PKCS pads and signs for PKCS#1 v1.5."""
    size = _hash_class(hash_name)().digest_size
    if len(digest) != size:
        raise ValueError(f"a {hash_name} digest has {size} bytes, not {len(digest)}")
    return algos.DigestInfo({"digest_algorithm": digest_algorithm(hash_name), "digest": digest}).dump()


def ecdsa_der_signature(raw: bytes) -> bytes:
    """PKCS#11 CKM_ECDSA output (r || s, equal halves) -> the DER Ecdsa-Sig-Value of RFC 3279 2.2.3."""
    if not raw or len(raw) % 2:
        raise ValueError(f"an ECDSA signature from PKCS#11 has two equal halves; got {len(raw)} bytes")
    return algos.DSASignature.from_p1363(raw).dump()
