"""The request's own key, on its token, lent to a CA connector (`ca.connector.RequesterKey`).

SCEP signs its pkiMessage with the requester's key and encrypts the certificate back to it; CMP
signs the proof of possession (and may protect the message) with it; EST re-enrollment proves
the old key in the TLS handshake. `enroll` has the session the key was made in, so it lends the
key to the connector for the one exchange; `submit` and `retrieve` have no session and lend none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenagent.enroll.signer import token_signer
from tokenagent.errors import CapacityError, InputError, UsageError
from tokenagent.request.signer import Signer
from tokenagent.token.objects import find_private_key_for, private_key_uri
from tokenagent.token.pins import Pin
from tokenagent.token.session import TokenSession
from tokenagent.token.signing import decrypt_rsa_pkcs1


class TokenRequesterKey:
    """One private key in one open session: signatures and RSA PKCS#1 v1.5 decryption on the token."""

    def __init__(
        self,
        session: TokenSession,
        private_key: Any,
        public_key_info: bytes,
        uri: str,
        signers: Mapping[str, Signer] | None = None,
    ) -> None:
        """``signers``: signers already made for this key, by hash name (the agent's, which the
        station's card threads share behind a lock)."""
        from asn1crypto import keys

        algorithm = keys.PublicKeyInfo.load(public_key_info).algorithm
        self.family = {"rsa": "RSA", "ec": "EC"}.get(algorithm, algorithm.upper())
        self.public_key_info = public_key_info
        self.uri = uri
        self.module_path = session.handle.module.path
        self._session = session
        self._key = private_key
        self._signers: dict[str, Signer] = dict(signers or {})

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
        return plain

    def key_beside(self, uri: str) -> TokenRequesterKey:
        """Another private key of this session's token, by its ``pkcs11:`` URI (ACME's account key).

        Only this token: a second token would need a second login, and its PIN source, which the
        CA profile has no place for."""
        from tokenagent.token.library import TokenSelector
        from tokenagent.token.objects import find_private_keys, public_key_info
        from tokenagent.token.uri import parse_uri

        handle = self._session.handle
        try:
            wanted = parse_uri(uri)
        except UsageError as exc:
            raise LookupError(exc.message) from None
        if wanted.has_pin_value:  # never echoed: a PIN comes from --pin-source, not from a CA profile
            raise LookupError("the key's pkcs11: URI holds a pin-value: leave it out (the PIN is --pin-source's)")
        if wanted.type not in (None, "private"):
            raise LookupError(f"{uri} names a {wanted.type} object: name the private key (type=private)")
        if wanted.object is None and wanted.object_id is None:
            raise LookupError(f"{uri} names no key: give its object= (CKA_LABEL) or id= (CKA_ID)")
        if not TokenSelector(uri, wanted).matches(handle):
            raise LookupError(
                f"{uri} names another token than the request's, '{handle.label}' (serial {handle.serial}): "
                "the key must be on the token the request's key is on"
            )
        found = find_private_keys(self._session.session, label=wanted.object, object_id=wanted.object_id)
        if not found:
            raise LookupError(f"token '{handle.label}' holds no private key {uri}")
        if len(found) > 1:
            raise LookupError(f"token '{handle.label}' holds {len(found)} private keys that match {uri}: add id=")
        spki = public_key_info(found[0], self._session.session)
        if spki is None:
            raise LookupError(f"token '{handle.label}' does not tell the public half of {uri} (no public key object)")
        return TokenRequesterKey(self._session, found[0], spki, private_key_uri(dict(handle.uri().path), found[0]))


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
