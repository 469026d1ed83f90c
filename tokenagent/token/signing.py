"""One signature with a key on the token (C_Sign), with the context-specific login that
CKA_ALWAYS_AUTHENTICATE keys need."""

from __future__ import annotations

import pkcs11
from pkcs11 import MGF, Attribute
from pkcs11 import exceptions as p11

from tokenagent.errors import CapacityError, PinError, TokenOperationError
from tokenagent.token.facts import SignMechanism
from tokenagent.token.names import mechanism
from tokenagent.token.names import rv as _rv
from tokenagent.token.objects import read_attributes
from tokenagent.token.pins import ProtectedAuthentication
from tokenagent.token.session import TokenSession


def always_authenticate(key: pkcs11.Object) -> bool:
    """CKA_ALWAYS_AUTHENTICATE: read once per key by callers that sign repeatedly."""
    return bool(read_attributes(key, [Attribute.ALWAYS_AUTHENTICATE]).get(Attribute.ALWAYS_AUTHENTICATE))


def sign_raw(ts: TokenSession, key: pkcs11.Object, how: SignMechanism, data: bytes, *, context_login: bool) -> bytes:
    """One C_Sign with ``how``'s mechanism on ``data`` prepared by the caller as ``how.input`` says.

    ``context_login`` (the key is CKA_ALWAYS_AUTHENTICATE, see `always_authenticate`) adds the
    context-specific login with the PIN the session logged in with; PKCS#11 allows no other way.
    """
    name = f"'{ts.handle.label}'"
    param = None
    if how.pss is not None:
        hash_mech, mgf, salt = how.pss
        param = (mechanism(hash_mech), MGF[mgf.removeprefix("CKG_MGF1_")], salt)
    pin = None
    if context_login or ts.signs_with_context_login:
        credential = ts.signing_pin()
        if credential is None or isinstance(credential, ProtectedAuthentication):
            raise PinError(
                f"token {name}: the key needs the PIN for every use (CKA_ALWAYS_AUTHENTICATE) and no PIN was entered"
            )
        pin = credential.reveal()
    try:
        return bytes(key.sign(data, mechanism=mechanism(how.mechanism), mechanism_param=param, pin=pin))
    except p11.PinIncorrect:
        raise PinError(f"token {name}: the context-specific login for the key failed") from None
    except p11.DeviceMemory:
        raise CapacityError(f"token {name}: CKR_DEVICE_MEMORY while signing") from None
    except p11.PKCS11Error as exc:
        raise TokenOperationError(f"token {name}: signing with {how.mechanism} failed: {_rv(exc)}") from None
