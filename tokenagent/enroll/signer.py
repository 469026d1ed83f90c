"""A `request.Signer` whose private key lives on a token.

The request room builds bytes to sign and wants X.509-shaped signatures; the token room makes one
C_Sign with a named mechanism. This glue prepares what the mechanism expects (the data, its hash,
or a DigestInfo) and turns ECDSA's raw r||s into DER.
"""

from __future__ import annotations

from typing import Any

from tokenagent.errors import CapacityError, UsageError
from tokenagent.providers.plan import sign_mechanisms
from tokenagent.request.algorithms import SignatureAlgorithm, digest, digest_info, ecdsa_der_signature
from tokenagent.token.facts import SignMechanism
from tokenagent.token.session import TokenSession
from tokenagent.token.signing import always_authenticate, sign_raw
from tokenagent.token.tokeninfo import first_mechanism


class TokenSigner:
    def __init__(
        self,
        session: TokenSession,
        key: Any,
        how: SignMechanism,
        algorithm: SignatureAlgorithm,
        *,
        always_authenticates: bool | None = None,
    ) -> None:
        """``always_authenticates``: CKA_ALWAYS_AUTHENTICATE when the caller set it in the template
        (a key just generated); None reads it from the key."""
        if how.hash != algorithm.hash:
            raise ValueError("the mechanism's hash and the signature algorithm's hash differ")
        self._session = session
        self._key = key
        self._how = how
        self._algorithm = algorithm
        # one attribute read at most, not one per signature; none for a key whose template said it
        self._context_login = always_authenticate(key) if always_authenticates is None else always_authenticates
        self.signatures = 0  # counted for tests and benchmarks

    @property
    def algorithm(self) -> SignatureAlgorithm:
        return self._algorithm

    def sign(self, data: bytes) -> bytes:
        how = self._how
        if how.input == "data":
            payload = data
        elif how.input == "digest":
            payload = digest(how.hash, data)
        else:
            payload = digest_info(how.hash, digest(how.hash, data))
        raw = sign_raw(self._session, self._key, how, payload, context_login=self._context_login)
        self.signatures += 1
        return ecdsa_der_signature(raw) if how.ecdsa else raw


def token_signer(
    session: TokenSession, key: Any, spki: bytes, *, hash_name: str = "sha256", pss: bool = False
) -> TokenSigner:
    """A signer for a key on the token whose algorithm follows the key (RSA: PKCS#1 v1.5 or, with
    ``pss``, PSS; EC: ECDSA) and whose mechanism is one the token offers."""
    from asn1crypto import keys

    algorithm_name = keys.PublicKeyInfo.load(spki).algorithm
    if algorithm_name == "rsa":
        algorithm = SignatureAlgorithm(hash_name, "pss" if pss else "pkcs1v15")
    elif algorithm_name == "ec":
        if pss:
            raise UsageError("--pss is for RSA agent keys; this agent key is EC")
        algorithm = SignatureAlgorithm(hash_name, "ecdsa")
    else:
        raise CapacityError(f"the agent key is {algorithm_name}; tokenagent signs with RSA or EC keys")
    candidates = sign_mechanisms(algorithm.padding, algorithm.hash)
    chosen = first_mechanism(session, [how.mechanism for how in candidates])
    for how in candidates:
        if how.mechanism == chosen:
            return TokenSigner(session, key, how, algorithm)
    raise CapacityError(
        f"token '{session.handle.label}' offers none of "
        + ", ".join(m.mechanism for m in sign_mechanisms(algorithm.padding, algorithm.hash))
    )
