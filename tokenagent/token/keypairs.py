"""Finding the key pairs already on a token: by CKA_ID, by label (KeyContainer), by a certificate's
thumbprint (RenewalCert), and the empty key objects a killed generation can leave."""

from __future__ import annotations

import hashlib
import logging

import pkcs11
from asn1crypto import x509
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import PKCS11Error

from tokenagent.errors import AmbiguousObjectError, ObjectNotFoundError, TokenOperationError
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

    The targeted searches find husks that have their defaults; an object without any attribute
    matches no search template, so ``thorough`` also reads every object's class (a scan of the
    whole token: only when there is reason to, see enroll/recovery.py).
    """
    husks = []
    # Three searches by class (what the SIGKILL tests validated). One classless search would save
    # six calls per `new` (issue 15), but a full test run failed once with it (AttributeValueInvalid
    # after a SIGKILL, most likely python-pkcs11 reading a half-written object it found): kept.
    empty = {Attribute.TOKEN: False, Attribute.LABEL: ""}
    searches = [
        {**empty, Attribute.CLASS: c, Attribute.ID: b""} for c in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
    ]
    searches.append({**empty, Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: "", Attribute.VALUE: b""})
    failed = False
    for template in searches:
        found = _targeted(ts, template)
        failed = failed or found is None
        for obj in found or []:
            if template[Attribute.CLASS] == ObjectClass.DATA:
                husks.append(obj)
                continue
            values = read_attributes(obj, [Attribute.MODULUS, Attribute.EC_PARAMS])
            if not values.get(Attribute.MODULUS) and not values.get(Attribute.EC_PARAMS):
                husks.append(obj)
    if thorough or failed:
        # by handle, through token/raw.py: python-pkcs11 wraps every object it finds after reading
        # its attributes, and a half-written object can fail that read (AttributeValueInvalid), which
        # made this scan itself fail now and then after the SIGKILL tests
        from tokenagent.token import raw

        known = {obj.handle for obj in husks}
        path = ts.handle.module.path
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


def _targeted(ts: TokenSession, template: dict[Attribute, object]) -> list[pkcs11.Object] | None:
    """A search for husks; None when the token fails it (a half-written object can make SoftHSM
    refuse a template it otherwise takes): the whole-token scan then looks for them instead."""
    try:
        return list(ts.session.get_objects(template))
    except PKCS11Error as exc:
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
