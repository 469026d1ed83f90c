"""Finding the key pairs already on a token: by CKA_ID, by label (KeyContainer), by a certificate's
thumbprint (RenewalCert), and the empty key objects a killed generation can leave."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pkcs11
from asn1crypto import x509
from pkcs11 import Attribute, ObjectClass

from tokenagent.errors import AmbiguousObjectError, ObjectNotFoundError, TokenOperationError
from tokenagent.token import raw
from tokenagent.token.generate import KeyPair
from tokenagent.token.objects import find_objects, find_private_key_for, public_key_info, read_attributes
from tokenagent.token.session import TokenSession

log = logging.getLogger("tokenagent")


def objects_with_id(ts: TokenSession, object_id: bytes) -> list[pkcs11.Object]:
    """Every object with this CKA_ID, whatever its class (keys, certificates)."""
    return find_objects(ts.session, object_id=object_id)


def empty_key_objects(ts: TokenSession, *, thorough: bool = False) -> list[pkcs11.Object]:
    """Objects in the token's store that carry nothing: husks left by a killed key generation.

    SoftHSM 2.6.1 writes a new object in steps (an empty object file, then its defaults, then the
    template and the key in one transaction), so a process killed in between leaves an object with
    no attributes at all, or with the defaults only: CKA_TOKEN FALSE although it is in the token's
    store, no CKA_ID, no label, no key material (the class can even be the default, CKO_DATA). It
    cannot be anyone's key or data, so recovery removes it. A real token object has CKA_TOKEN TRUE,
    and a key with key material (a modulus, curve parameters) is never taken.

    The targeted search finds husks that have their defaults; an object without any attribute
    matches no search template, so ``thorough`` also reads every object's class (a scan of the
    whole token: only when there is reason to, see enroll/recovery.py).
    """
    path = ts.handle.module.path
    husks: list[Any] = []
    # One search, through token/raw.py: python-pkcs11 wraps every object it finds after reading ten
    # attributes, and a half-written object can fail that read (AttributeValueInvalid); it also
    # made three searches by class of what one search finds (issue 15: six calls per `new`).
    found = _targeted(ts, path)
    failed = found is None
    for handle in found or []:
        values = _husk_attributes(ts, path, handle)
        if values is not None and _is_husk(values):
            husks.append(raw.RawObject(ts.session, path, handle))
    if thorough or failed:
        known = {obj.handle for obj in husks}
        for handle in raw.find_handles(ts.session, path, {}):
            if handle in known:
                continue
            try:
                has_class = Attribute.CLASS in raw.read_raw(ts.session, path, handle, [Attribute.CLASS])
            except TokenOperationError:  # not even its class can be read: nothing anyone could use
                has_class = False
            if not has_class:
                husks.append(raw.RawObject(ts.session, path, handle))
    return husks


#: what tells a husk from an object someone made (a real token object has CKA_TOKEN TRUE)
_HUSK_ATTRIBUTES = (
    Attribute.CLASS,
    Attribute.ID,
    Attribute.MODULUS,
    Attribute.EC_PARAMS,
    Attribute.APPLICATION,
    Attribute.VALUE,
)


def _husk_attributes(ts: TokenSession, path: str, handle: int) -> dict[int, bytes] | None:
    try:
        return raw.read_raw(ts.session, path, handle, _HUSK_ATTRIBUTES)
    except TokenOperationError:
        return {}  # nothing readable at all: a husk


def _is_husk(values: dict[int, bytes]) -> bool:
    """A key object without CKA_ID and key material, a data object without application and value,
    or an object without even a class."""
    if Attribute.CLASS not in values:
        return True
    object_class = raw.as_int(values[Attribute.CLASS])
    if object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
        return (
            not values.get(Attribute.ID) and not values.get(Attribute.MODULUS) and not values.get(Attribute.EC_PARAMS)
        )
    if object_class == ObjectClass.DATA:
        return not values.get(Attribute.APPLICATION) and not values.get(Attribute.VALUE)
    return False


def _targeted(ts: TokenSession, path: str) -> list[int] | None:
    """Handles of objects with CKA_TOKEN FALSE and an empty label, where husks are; None when the
    token fails the search (a half-written object can make SoftHSM refuse a template it otherwise
    takes): the whole-token scan then looks for them instead."""
    try:
        return raw.find_handles(ts.session, path, {Attribute.TOKEN: False, Attribute.LABEL: ""})
    except TokenOperationError as exc:
        log.info("token '%s': a search for empty key objects failed (%s); scanning every object", ts.handle.label, exc)
        return None


def key_pair_objects(ts: TokenSession, key_id: bytes) -> list[pkcs11.Object]:
    """The private and public key objects with this CKA_ID (certificates are left out)."""
    return [
        obj
        for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
        for obj in find_objects(ts.session, object_class=object_class, object_id=key_id)
    ]


def find_key_pair_by_label(ts: TokenSession, label: str) -> KeyPair:
    privates = find_objects(ts.session, object_class=ObjectClass.PRIVATE_KEY, label=label)
    if not privates:
        raise ObjectNotFoundError(f"token '{ts.handle.label}': no private key labelled '{label}' (KeyContainer)")
    if len(privates) > 1:
        raise AmbiguousObjectError(
            f"token '{ts.handle.label}': {len(privates)} private keys are labelled '{label}'; "
            "give a unique KeyContainer"
        )
    return _pair_for_private(ts, privates[0], label)


def find_key_pair_by_certificate(ts: TokenSession, thumbprint: bytes) -> tuple[KeyPair, bytes]:
    """RenewalCert: the certificate on the token with this SHA-1 thumbprint, and its key pair."""
    for cert in find_objects(ts.session, object_class=ObjectClass.CERTIFICATE):
        value = read_attributes(cert, [Attribute.VALUE]).get(Attribute.VALUE)
        if value is None or hashlib.sha1(bytes(value)).digest() != thumbprint:
            continue
        try:
            spki = x509.Certificate.load(bytes(value)).public_key.dump()
        except ValueError:
            continue
        private = find_private_key_for(ts.session, spki)
        if private is None:
            raise ObjectNotFoundError(
                f"token '{ts.handle.label}': the certificate {thumbprint.hex()} has no private key on the token"
            )
        label = str(read_attributes(private, [Attribute.LABEL]).get(Attribute.LABEL) or "")
        return _pair_for_private(ts, private, label), bytes(value)
    raise ObjectNotFoundError(f"token '{ts.handle.label}': no certificate with SHA-1 thumbprint {thumbprint.hex()}")


def _pair_for_private(ts: TokenSession, private: pkcs11.Object, label: str) -> KeyPair:
    spki = public_key_info(private, ts.session)
    if spki is None:
        raise ObjectNotFoundError(f"token '{ts.handle.label}': cannot read the public key of the key '{label}'")
    key_id = bytes(read_attributes(private, [Attribute.ID]).get(Attribute.ID) or b"")
    publics = find_objects(ts.session, object_class=ObjectClass.PUBLIC_KEY, object_id=key_id) if key_id else []
    public = next((p for p in publics if public_key_info(p) == spki), None)
    return KeyPair(public if public is not None else private, private, spki, key_id, label, False)
