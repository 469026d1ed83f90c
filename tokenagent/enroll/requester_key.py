"""The request's own key, on its token, lent to a CA connector (`ca.connector.RequesterKey`).

SCEP signs its pkiMessage with the requester's key and encrypts the certificate back to it; CMP
signs the proof of possession (and may protect the message) with it; EST re-enrollment proves
the old key in the TLS handshake. `enroll` has the session the key was made in, so it lends the
key to the connector for the one exchange; `submit` and `retrieve` have no session and lend none.
"""

from __future__ import annotations

from typing import Any

from tokenagent.enroll.signer import TokenSigner, token_signer
from tokenagent.errors import CapacityError, InputError
from tokenagent.token.objects import find_private_key_for, private_key_uri
from tokenagent.token.pins import Pin
from tokenagent.token.session import TokenSession
from tokenagent.token.signing import decrypt_rsa_pkcs1


class TokenRequesterKey:
    """One private key in one open session: signatures and RSA PKCS#1 v1.5 decryption on the token."""

    def __init__(self, session: TokenSession, private_key: Any, public_key_info: bytes, uri: str) -> None:
        from asn1crypto import keys

        algorithm = keys.PublicKeyInfo.load(public_key_info).algorithm
        self.family = {"rsa": "RSA", "ec": "EC"}.get(algorithm, algorithm.upper())
        self.public_key_info = public_key_info
        self.uri = uri
        self.module_path = session.handle.module.path
        self._session = session
        self._key = private_key
        self._signers: dict[str, TokenSigner] = {}
        self.decryptions = 0  # counted for tests: SCEP's CertRep is decrypted here, on the token

    def sign(self, data: bytes, hash_name: str = "sha256") -> bytes:
        signer = self._signers.get(hash_name)
        if signer is None:
            signer = token_signer(self._session, self._key, self.public_key_info, hash_name=hash_name)
            self._signers[hash_name] = signer
        return signer.sign(data)

    def external_pin(self) -> bytes | None:
        """The PIN this session logged in with, for a PKCS#11 client in another process (curl with
        libp11 for EST's TLS client authentication) that must log in itself; None for a PIN pad."""
        pin = self._session.signing_pin()
        return pin.reveal().encode("utf-8") if isinstance(pin, Pin) else None

    def decrypt(self, ciphertext: bytes) -> bytes:
        if self.family != "RSA":
            raise CapacityError(f"a {self.family} key cannot undo RSA key transport")
        plain = decrypt_rsa_pkcs1(self._session, self._key, ciphertext)
        self.decryptions += 1
        return plain


def requester_key(session: TokenSession, public_key_info: bytes, uri: str) -> TokenRequesterKey:
    """The private key of ``public_key_info`` in ``session`` (found by the CKA_ID convention first).

    Without ``uri`` (`enroll --resume` knows the key only by its public key), the URI is made
    from the token and the key's CKA_ID and CKA_LABEL."""
    private = find_private_key_for(session.session, public_key_info)
    if private is None:
        raise InputError(f"token '{session.handle.label}' holds no private key for the request's public key")
    if not uri:
        uri = private_key_uri(dict(session.handle.uri().path), private)
    return TokenRequesterKey(session, private, public_key_info, uri)
