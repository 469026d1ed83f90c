"""Finding the key pairs already on a token: by CKA_ID, by label (KeyContainer), by a certificate's
thumbprint (RenewalCert), and the empty key objects a killed generation can leave."""

from __future__ import annotations

import hashlib

import pkcs11
from asn1crypto import x509
from pkcs11 import Attribute, ObjectClass

from tokenagent.errors import AmbiguousObjectError, ObjectNotFoundError
from tokenagent.token.generate import KeyPair
from tokenagent.token.objects import find_objects, find_private_key_for, public_key_info, read_attributes
from tokenagent.token.session import TokenSession


def objects_with_id(ts: TokenSession, object_id: bytes) -> list[pkcs11.Object]:
    """Every object with this CKA_ID, whatever its class (keys, certificates)."""
    return find_objects(ts.session, object_id=object_id)


def empty_key_objects(ts: TokenSession) -> list[pkcs11.Object]:
    """Key objects with no CKA_ID, no label and no key material: husks, not keys.

    SoftHSM 2.6.1 writes a new key object in two steps (the object with its defaults, then the
    template and the key in one transaction), so a process killed in between leaves a key object
    that carries nothing of the template (not even the temporary CKA_ID an intent knows it by)
    and no key. It cannot be anyone's key, so recovery removes it. A key object that has key
    material (a modulus, curve parameters) is never one of these, whatever its label or CKA_ID.
    """
    husks = []
    for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
        for obj in ts.session.get_objects({Attribute.CLASS: object_class, Attribute.ID: b"", Attribute.LABEL: ""}):
            values = read_attributes(obj, [Attribute.KEY_TYPE, Attribute.MODULUS, Attribute.EC_PARAMS])
            if not values.get(Attribute.MODULUS) and not values.get(Attribute.EC_PARAMS):
                husks.append(obj)
    return husks


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
