"""One signature with a key on the token (C_Sign), with the context-specific login that
CKA_ALWAYS_AUTHENTICATE keys need."""

from __future__ import annotations

from typing import Any

import pkcs11
from pkcs11 import MGF, Attribute
from pkcs11 import exceptions as p11

from tokenagent.errors import CapacityError, PinError, TokenOperationError
from tokenagent.token import raw
from tokenagent.token.ckr import rv_name
from tokenagent.token.facts import SignMechanism
from tokenagent.token.names import mechanism
from tokenagent.token.names import rv as _rv
from tokenagent.token.objects import read_attributes
from tokenagent.token.pins import ProtectedAuthentication
from tokenagent.token.session import TokenSession


def always_authenticate(key: pkcs11.Object) -> bool:
    """CKA_ALWAYS_AUTHENTICATE: read once per key by callers that sign repeatedly."""
    return bool(read_attributes(key, [Attribute.ALWAYS_AUTHENTICATE]).get(Attribute.ALWAYS_AUTHENTICATE))


def sign_raw(ts: TokenSession, key: Any, how: SignMechanism, data: bytes, *, context_login: bool) -> bytes:
    """One C_Sign with ``how``'s mechanism on ``data`` prepared by the caller as ``how.input`` says.
    ``key`` is any object with the key's handle (python-pkcs11's, or token/raw.py's for a key just
    generated). ``context_login`` (the key is CKA_ALWAYS_AUTHENTICATE, see `always_authenticate`)
    adds the context-specific login with the PIN the session logged in with; PKCS#11 allows no other
    way. Through token/raw.py: python-pkcs11 reads CKA_KEY_TYPE before each signature and asks for
    the signature's size first, two calls a smart card answers over APDUs."""
    name = f"'{ts.handle.label}'"
    pss = None
    if how.pss is not None:
        hash_mech, mgf, salt = how.pss
        pss = (int(mechanism(hash_mech)), int(MGF[mgf.removeprefix("CKG_MGF1_")]), salt)
    after_init = None
    if context_login or ts.signs_with_context_login:
        credential = ts.signing_pin()
        if credential is None or isinstance(credential, ProtectedAuthentication):
            raise PinError(
                f"token {name}: the key needs the PIN for every use (CKA_ALWAYS_AUTHENTICATE) and no PIN was entered"
            )

        def after_init() -> None:  # C_Login(CKU_CONTEXT_SPECIFIC) between C_SignInit and C_Sign
            ts.session.reaffirm_credentials(credential.reveal())

    try:
        code, signature = raw.sign(
            ts.session, ts.handle.module.path, int(key.handle), int(mechanism(how.mechanism)), data,
            pss=pss, after_init=after_init,
        )  # fmt: skip
    except p11.PinIncorrect:
        raise PinError(f"token {name}: the context-specific login for the key failed") from None
    except p11.PKCS11Error as exc:
        raise TokenOperationError(f"token {name}: signing with {how.mechanism} failed: {_rv(exc)}") from None
    if code == raw.CKR_OK:
        return signature
    if rv_name(code) == "CKR_DEVICE_MEMORY":
        raise CapacityError(f"token {name}: CKR_DEVICE_MEMORY while signing")
    raise TokenOperationError(f"token {name}: signing with {how.mechanism} failed: {rv_name(code)}")


CKR_KEY_FUNCTION_NOT_PERMITTED = 0x068


def decrypt_rsa_pkcs1(ts: TokenSession, key: Any, ciphertext: bytes) -> bytes:
    """One C_Decrypt with CKM_RSA_PKCS (a CA's RSA key transport to the requester: SCEP's CertRep).
    Through token/raw.py, as `sign_raw`: ``key`` is any object with the key's handle."""
    name = f"'{ts.handle.label}'"
    code, plain = raw.decrypt(
        ts.session, ts.handle.module.path, int(key.handle), int(mechanism("CKM_RSA_PKCS")), ciphertext
    )
    if code == CKR_KEY_FUNCTION_NOT_PERMITTED:
        raise CapacityError(
            f"token {name}: the key may not decrypt (CKA_DECRYPT is FALSE); the CA encrypts its answer to it"
        )
    if code != raw.CKR_OK:
        raise TokenOperationError(f"token {name}: decrypting with CKM_RSA_PKCS failed: {rv_name(code)}")
    return plain
