"""Certificate objects on a token: finding them, and fixing how they link to their keys.

PKCS#11 consumers (OpenSSL's engine and provider, NSS, OpenSC's minidriver, pam_pkcs11, sssd)
pair a certificate with its private key by equal CKA_ID, so `accept` and `repair` are mostly
about that one attribute. Certificates are public objects: finding them needs no login.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pkcs11
from asn1crypto import keys, x509
from pkcs11 import Attribute, CertificateType, ObjectClass
from pkcs11 import exceptions as p11

from tokenagent.errors import CapacityError, TokenOperationError
from tokenagent.token import raw
from tokenagent.token.names import attribute, rv
from tokenagent.token.objects import KEY_USAGE, find_objects, key_id_for, public_key_info, read_attributes, search
from tokenagent.token.session import TokenSession

log = logging.getLogger("tokenagent")

#: What a certificate object carries; copied when a token will not modify one in place.
_CERTIFICATE_ATTRIBUTES = (
    Attribute.CLASS,
    Attribute.CERTIFICATE_TYPE,
    Attribute.TOKEN,
    Attribute.PRIVATE,
    Attribute.ID,
    Attribute.LABEL,
    Attribute.SUBJECT,
    Attribute.ISSUER,
    Attribute.SERIAL_NUMBER,
    Attribute.VALUE,
    Attribute.CERTIFICATE_CATEGORY,
)


@dataclass
class CertificateObject:
    """A certificate on the token with the attributes `accept` and `repair` look at."""

    obj: pkcs11.Object
    der: bytes
    key_id: bytes
    label: str
    trusted: bool | None
    category: int | None

    @property
    def thumbprint(self) -> bytes:
        return hashlib.sha1(self.der).digest()

    @property
    def spki(self) -> bytes | None:
        try:
            return x509.Certificate.load(self.der).public_key.dump()
        except ValueError:
            return None


def certificate_objects(
    session: raw.Session, *, der: bytes | None = None, key_id: bytes | None = None
) -> list[CertificateObject]:
    """Every X.509 certificate object, or those whose CKA_VALUE is ``der`` or whose CKA_ID is
    ``key_id`` (the token matches them: no read of every certificate)."""
    template: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.CERTIFICATE}
    if der is not None:
        template[Attribute.VALUE] = der
    if key_id is not None:
        template[Attribute.ID] = key_id
    found = []
    for obj in search(session, template):
        values = read_attributes(
            obj, [Attribute.VALUE, Attribute.ID, Attribute.LABEL, Attribute.TRUSTED, Attribute.CERTIFICATE_CATEGORY]
        )
        value = values.get(Attribute.VALUE)
        if not value:
            continue
        trusted = values.get(Attribute.TRUSTED)
        category = values.get(Attribute.CERTIFICATE_CATEGORY)
        found.append(
            CertificateObject(
                obj=obj,
                der=bytes(value),
                key_id=bytes(values.get(Attribute.ID) or b""),
                label=str(values.get(Attribute.LABEL) or ""),
                trusted=None if trusted is None else bool(trusted),
                category=None if category is None else int(category),
            )
        )
    return found


def find_certificates_by_thumbprint(session: raw.Session, thumbprint: bytes) -> list[CertificateObject]:
    return [c for c in certificate_objects(session) if c.thumbprint == thumbprint]


def find_public_keys_for(session: raw.Session, spki_der: bytes) -> list[pkcs11.Object]:
    """Public key objects whose key is ``spki_der`` (no login needed): CKA_ID convention first,
    then every public key, because other tools choose other CKA_IDs."""
    wanted = keys.PublicKeyInfo.load(spki_der).dump()
    by_id = find_objects(session, object_class=ObjectClass.PUBLIC_KEY, object_id=key_id_for(wanted))
    matches = [obj for obj in by_id if public_key_info(obj) == wanted]
    if matches:
        return matches
    return [obj for obj in find_objects(session, object_class=ObjectClass.PUBLIC_KEY) if public_key_info(obj) == wanted]


def key_id_of(obj: pkcs11.Object) -> bytes:
    return bytes(read_attributes(obj, [Attribute.ID]).get(Attribute.ID) or b"")


def label_of(obj: pkcs11.Object) -> str:
    return str(read_attributes(obj, [Attribute.LABEL]).get(Attribute.LABEL) or "")


def key_capabilities(private: pkcs11.Object) -> frozenset[str]:
    """The usage attributes that are TRUE on a private key, by pkcs11-tool's names (sign, decrypt, ...)."""
    values = read_attributes(private, KEY_USAGE.values())
    return frozenset(name for name, attr in KEY_USAGE.items() if values.get(attr))


def update_attributes(ts: TokenSession, obj: pkcs11.Object, changes: Mapping[str, Any]) -> pkcs11.Object:
    """Set attributes (by PKCS#11 name) on an object; returns the object that now holds them.

    A certificate the token will not modify in place (CKA_MODIFIABLE FALSE, or a card that refuses
    C_SetAttributeValue) is re-created with the new values and the old one destroyed afterwards,
    so a failure at any point leaves one complete certificate on the token.
    """
    name = f"'{ts.handle.label}'"
    values = {attribute(key): value for key, value in changes.items()}
    try:
        for attr, value in values.items():
            obj[attr] = value
        return obj
    except (p11.AttributeReadOnly, p11.FunctionNotSupported) as exc:
        refused = type(exc).__name__
    except p11.PKCS11Error as exc:
        raise TokenOperationError(f"token {name}: cannot change {', '.join(changes)}: {type(exc).__name__}") from None
    if read_attributes(obj, [Attribute.CLASS]).get(Attribute.CLASS) != ObjectClass.CERTIFICATE:
        raise TokenOperationError(f"token {name} refused to change {', '.join(changes)} on a key ({refused})")
    log.info("token %s refused to change the certificate in place (%s): re-creating it", name, refused)
    template = {
        attr: value for attr, value in read_attributes(obj, _CERTIFICATE_ATTRIBUTES).items() if value is not None
    }
    template.update(values)
    try:
        copy = ts.session.create_object(template)
    except p11.DeviceMemory:
        raise CapacityError(f"token {name} is full (CKR_DEVICE_MEMORY): the certificate was not changed") from None
    except p11.PKCS11Error as exc:
        raise TokenOperationError(f"token {name}: cannot re-create the certificate: {type(exc).__name__}") from None
    try:
        obj.destroy()
    except p11.PKCS11Error as exc:
        try:
            copy.destroy()
        except p11.PKCS11Error:
            log.error("token %s: the certificate now exists twice; delete one of them", name)
        raise TokenOperationError(f"token {name}: cannot replace the certificate: {type(exc).__name__}") from None
    return copy


def write_certificate(
    ts: TokenSession, der: bytes, *, key_id: bytes, label: str, category: int | None = 1, trusted: bool = False
) -> pkcs11.Object:
    """A CKO_CERTIFICATE token object next to its key (same CKA_ID), as OpenSC and NSS expect.

    ``trusted`` sets CKA_TRUSTED, which PKCS#11 lets only a security-officer session set; it is
    given at creation because SoftHSM 2.6.1 refuses to change it afterwards even for the SO.
    On a PIV card (ykcs11) the object is the slot's certificate (CKA_ID = the slot's): writing it
    replaces what the slot held, and ykcs11 refuses CKA_CERTIFICATE_CATEGORY, so it is left out.
    """
    name = f"'{ts.handle.label}'"
    cert = x509.Certificate.load(der)
    attrs = {
        Attribute.CLASS: ObjectClass.CERTIFICATE,
        Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.ID: key_id,
        Attribute.LABEL: label,
        Attribute.SUBJECT: cert.subject.dump(),
        Attribute.ISSUER: cert.issuer.dump(),
        Attribute.SERIAL_NUMBER: cert["tbs_certificate"]["serial_number"].dump(),
        Attribute.VALUE: der,
    }
    if category is not None and not ts.handle.is_piv:
        attrs[Attribute.CERTIFICATE_CATEGORY] = category
    if trusted:
        attrs[Attribute.TRUSTED] = True
    try:
        return ts.session.create_object(attrs)
    except p11.DeviceMemory:
        raise CapacityError(f"token {name} is full (CKR_DEVICE_MEMORY): the certificate was not written") from None
    except p11.PKCS11Error as exc:
        raise TokenOperationError(f"token {name}: cannot write the certificate: {rv(exc)}") from None
