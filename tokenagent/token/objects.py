"""Keys and certificates on a token: robust attribute reads, descriptions, and look-ups.

Tokens differ in which attributes they will answer: a card may refuse CKA_MODULUS on a private
key, or not know CKA_ALWAYS_AUTHENTICATE. Every read here degrades to "unknown" (None) instead of
failing, so a listing never crashes on a token we have not met.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pkcs11
from asn1crypto import core, keys
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.exceptions import PKCS11Error

from tokenagent.display import dn_text
from tokenagent.token import raw
from tokenagent.token.library import TokenHandle
from tokenagent.token.names import rv
from tokenagent.token.uri import Pkcs11Uri

log = logging.getLogger("tokenagent")

CLASS_NAMES: dict[int, str] = {
    ObjectClass.DATA: "data",
    ObjectClass.CERTIFICATE: "certificate",
    ObjectClass.PUBLIC_KEY: "public-key",
    ObjectClass.PRIVATE_KEY: "private-key",
    ObjectClass.SECRET_KEY: "secret-key",
}
#: RFC 7512 `type=` for each class.
URI_TYPES: dict[int, str] = {
    ObjectClass.DATA: "data",
    ObjectClass.CERTIFICATE: "cert",
    ObjectClass.PUBLIC_KEY: "public",
    ObjectClass.PRIVATE_KEY: "private",
    ObjectClass.SECRET_KEY: "secret-key",
}

#: Boolean attributes reported for keys, by the name used in output.
KEY_FLAGS: dict[str, Attribute] = {
    "token": Attribute.TOKEN,
    "private": Attribute.PRIVATE,
    "modifiable": Attribute.MODIFIABLE,
    "local": Attribute.LOCAL,
    "sensitive": Attribute.SENSITIVE,
    "extractable": Attribute.EXTRACTABLE,
    "always_sensitive": Attribute.ALWAYS_SENSITIVE,
    "never_extractable": Attribute.NEVER_EXTRACTABLE,
    "always_authenticate": Attribute.ALWAYS_AUTHENTICATE,
}
#: Usage attributes, by the name used in output (pkcs11-tool's words).
KEY_USAGE: dict[str, Attribute] = {
    "encrypt": Attribute.ENCRYPT,
    "decrypt": Attribute.DECRYPT,
    "sign": Attribute.SIGN,
    "sign_recover": Attribute.SIGN_RECOVER,
    "verify": Attribute.VERIFY,
    "verify_recover": Attribute.VERIFY_RECOVER,
    "wrap": Attribute.WRAP,
    "unwrap": Attribute.UNWRAP,
    "derive": Attribute.DERIVE,
}


def read_attributes(obj: pkcs11.Object, attributes: Iterable[Attribute]) -> dict[Attribute, Any]:
    """The attributes the token will give; refused or unknown ones are simply absent."""
    wanted = list(attributes)
    try:
        return obj.get_attributes(wanted)
    except (PKCS11Error, ValueError, TypeError):
        pass
    # One refused attribute can fail the whole batch on some tokens: fall back to one at a time.
    values: dict[Attribute, Any] = {}
    for attribute in wanted:
        try:
            values[attribute] = obj[attribute]
        except (PKCS11Error, ValueError, TypeError, KeyError):
            continue
    return values


def read_attribute(obj: pkcs11.Object, attribute: Attribute) -> Any | None:
    return read_attributes(obj, [attribute]).get(attribute)


@dataclass
class CertificateSummary:
    subject: str
    issuer: str
    serial: str
    not_before: datetime | None
    not_after: datetime | None
    sha1_fingerprint: str


@dataclass
class ObjectInfo:
    """One object as `tokenagent objects` reports it (see docs/json.md for the JSON shape)."""

    object_class: str
    label: str | None
    id: bytes | None
    uri: Pkcs11Uri
    key_type: str | None = None
    key_size: int | None = None
    curve: str | None = None
    flags: dict[str, bool | None] = field(default_factory=dict)
    usage: list[str] = field(default_factory=list)
    certificate: CertificateSummary | None = None


def _describe_values(raw_values: dict[int, bytes], token: TokenHandle) -> ObjectInfo:
    """One object as `objects` lists it, from the raw attribute bytes token/raw.py read."""
    object_class = raw.as_int(raw_values.get(Attribute.CLASS))
    label = raw.as_text(raw_values.get(Attribute.LABEL))
    object_id = raw_values.get(Attribute.ID)
    class_name = CLASS_NAMES.get(int(object_class or 0), f"0x{int(object_class or 0):x}")
    path = dict(token.uri().path)
    if label:
        path["object"] = label
    if object_class in URI_TYPES:
        path["type"] = URI_TYPES[object_class]
    info = ObjectInfo(
        object_class=class_name,
        label=label,
        id=bytes(object_id) if object_id else None,
        uri=Pkcs11Uri(path=path, object_id=bytes(object_id) if object_id else None),
    )
    if object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.SECRET_KEY):
        values: dict[Attribute, Any] = {}
        for attribute in (Attribute.KEY_TYPE, Attribute.MODULUS_BITS, Attribute.VALUE_LEN):
            if attribute in raw_values:
                values[attribute] = raw.as_int(raw_values[attribute])
        for attribute in (Attribute.MODULUS, Attribute.EC_PARAMS):
            if attribute in raw_values:
                values[attribute] = raw_values[attribute]
        for attribute in (*KEY_FLAGS.values(), *KEY_USAGE.values()):
            if attribute in raw_values:
                values[attribute] = raw.as_bool(raw_values[attribute])
        _describe_key_values(values, info)
    elif object_class == ObjectClass.CERTIFICATE and raw_values.get(Attribute.VALUE):
        info.certificate = summarize_certificate(bytes(raw_values[Attribute.VALUE]))
    return info


def _describe_key_values(values: dict[Attribute, Any], info: ObjectInfo) -> None:
    key_type = values.get(Attribute.KEY_TYPE)
    info.key_type = _key_type_name(key_type)
    if key_type == KeyType.RSA:
        if values.get(Attribute.MODULUS_BITS):
            info.key_size = int(values[Attribute.MODULUS_BITS])
        elif values.get(Attribute.MODULUS):
            info.key_size = int.from_bytes(values[Attribute.MODULUS], "big").bit_length()
    elif key_type in (KeyType.EC, KeyType.EC_EDWARDS) and values.get(Attribute.EC_PARAMS):
        info.curve, info.key_size = curve_of(bytes(values[Attribute.EC_PARAMS]))
    elif values.get(Attribute.VALUE_LEN):
        info.key_size = int(values[Attribute.VALUE_LEN]) * 8
    info.flags = {name: _bool(values.get(attr)) for name, attr in KEY_FLAGS.items()}
    info.usage = [name for name, attr in KEY_USAGE.items() if values.get(attr)]


def _bool(value: object) -> bool | None:
    return None if value is None else bool(value)


def _key_type_name(key_type: object) -> str | None:
    if key_type is None:
        return None
    try:
        return KeyType(key_type).name.lstrip("_")
    except ValueError:
        return f"0x{int(key_type):x}"  # type: ignore[call-overload]


_CURVE_BITS = {
    "secp256r1": 256,
    "secp384r1": 384,
    "secp521r1": 521,
    "secp256k1": 256,
    "secp224r1": 224,
    "secp192r1": 192,
    "ed25519": 255,
    "ed448": 448,
}
_ED_CURVES = {"1.3.101.112": "ed25519", "1.3.101.113": "ed448"}


def curve_of(ec_params: bytes) -> tuple[str | None, int | None]:
    """CKA_EC_PARAMS (a DER ECParameters, usually a namedCurve OID) to (name, bits)."""
    try:
        params = keys.ECDomainParameters.load(ec_params)
        if params.name == "named":
            name = params.chosen.native
            return name, _CURVE_BITS.get(name)
    except (ValueError, TypeError):
        pass
    try:
        oid = core.ObjectIdentifier.load(ec_params).dotted
        name = _ED_CURVES.get(oid, oid)
        return name, _CURVE_BITS.get(name)
    except (ValueError, TypeError):
        pass
    try:  # RFC 8410 curves given as a PrintableString, as some tokens do
        name = core.PrintableString.load(ec_params).native.lower()
        return name, _CURVE_BITS.get(name)
    except (ValueError, TypeError):
        return None, None


def summarize_certificate(der: bytes) -> CertificateSummary | None:
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
        return CertificateSummary(
            subject=dn_text(cert.subject),
            issuer=dn_text(cert.issuer),
            serial=f"{cert.serial_number:x}",
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            sha1_fingerprint=hashlib.sha1(der).hexdigest(),
        )
    except (ValueError, TypeError):
        return None


#: everything a listing shows, read in one C_GetAttributeValue per object (with its size query)
_LISTED = (
    Attribute.CLASS,
    Attribute.LABEL,
    Attribute.ID,
    Attribute.KEY_TYPE,
    Attribute.MODULUS,
    Attribute.MODULUS_BITS,
    Attribute.EC_PARAMS,
    Attribute.VALUE_LEN,
    Attribute.CERTIFICATE_TYPE,
    *KEY_FLAGS.values(),
    *KEY_USAGE.values(),
)


def list_objects(session: raw.Session, token: TokenHandle) -> list[ObjectInfo]:
    """Every object the session can see, keys first, then certificates, then the rest.

    Two calls per object (token/raw.py) plus one more for a certificate's value; python-pkcs11's
    objects cost ~9 calls each on SoftHSM before anything was read."""
    order = {"private-key": 0, "public-key": 1, "secret-key": 2, "certificate": 3, "data": 4}
    path = token.module.path
    infos = []
    for handle in raw.find_handles(session, path, {}):
        values = raw.read_raw(session, path, handle, _LISTED)
        if raw.as_int(values.get(Attribute.CLASS)) == ObjectClass.CERTIFICATE:
            values.update(raw.read_raw(session, path, handle, [Attribute.VALUE]))
        infos.append(_describe_values(values, token))
    infos.sort(key=lambda i: (order.get(i.object_class, 9), i.id or b"", i.label or ""))
    return infos


# -- look-ups -----------------------------------------------------------------------------------


def find_objects(
    session: raw.Session,
    *,
    object_class: ObjectClass | None = None,
    object_id: bytes | None = None,
    label: str | None = None,
) -> list[pkcs11.Object]:
    template: dict[Attribute, Any] = {}
    if object_class is not None:
        template[Attribute.CLASS] = object_class
    if object_id is not None:
        template[Attribute.ID] = object_id
    if label is not None:
        template[Attribute.LABEL] = label
    return search(session, template)


def search(session: raw.Session, template: dict[Attribute, Any]) -> list[raw.RawObject]:
    """C_FindObjects*, as `raw.RawObject`s (one search, then one read per need: issue 15); a token
    that fails the search is a `TokenOperationError`, not a crash."""
    return session.get_objects(template)


def public_key_info(obj: pkcs11.Object, session: raw.Session | None = None) -> bytes | None:
    """DER SubjectPublicKeyInfo of a public or private key object, or None if the token won't say.

    RSA private keys carry their modulus and exponent; an EC private key does not carry its point,
    so its public half is found through the public key object with the same CKA_ID.
    """
    values = read_attributes(
        obj,
        [
            Attribute.CLASS,
            Attribute.KEY_TYPE,
            Attribute.ID,
            Attribute.MODULUS,
            Attribute.PUBLIC_EXPONENT,
            Attribute.EC_PARAMS,
            Attribute.EC_POINT,
        ],
    )
    key_type = values.get(Attribute.KEY_TYPE)
    if key_type == KeyType.RSA and values.get(Attribute.MODULUS) and values.get(Attribute.PUBLIC_EXPONENT):
        return rsa_spki(bytes(values[Attribute.MODULUS]), bytes(values[Attribute.PUBLIC_EXPONENT]))
    if key_type == KeyType.EC and values.get(Attribute.EC_PARAMS):
        if values.get(Attribute.EC_POINT):
            return ec_spki(bytes(values[Attribute.EC_PARAMS]), bytes(values[Attribute.EC_POINT]))
        if values.get(Attribute.CLASS) == ObjectClass.PRIVATE_KEY and session is not None:
            for public in find_objects(
                session, object_class=ObjectClass.PUBLIC_KEY, object_id=values.get(Attribute.ID)
            ):
                spki = public_key_info(public)
                if spki is not None:
                    return spki
    return None


def rsa_spki(modulus: bytes, exponent: bytes) -> bytes:
    public = keys.RSAPublicKey(
        {"modulus": int.from_bytes(modulus, "big"), "public_exponent": int.from_bytes(exponent, "big")}
    )
    return keys.PublicKeyInfo({"algorithm": keys.PublicKeyAlgorithm({"algorithm": "rsa"}), "public_key": public}).dump()


def ec_spki(ec_params: bytes, ec_point: bytes) -> bytes:
    point = ec_point
    # PKCS#11 says CKA_EC_POINT is a DER OCTET STRING; some tokens hand back the bare point.
    if ec_point[:1] == b"\x04" and len(ec_point) > 2:
        try:
            inner = core.OctetString.load(ec_point).native
            if inner[:1] in (b"\x04", b"\x02", b"\x03"):
                point = inner
        except ValueError:
            point = ec_point
    algorithm = keys.PublicKeyAlgorithm({"algorithm": "ec", "parameters": keys.ECDomainParameters.load(ec_params)})
    return keys.PublicKeyInfo({"algorithm": algorithm, "public_key": point}).dump()


def key_id_for(spki_der: bytes) -> bytes:
    """CKA_ID convention for a new key pair: SHA-1 of the public key (NSS, OpenSC, p11tool).

    The hash is over the subjectPublicKey bit string contents (the RSAPublicKey DER or EC point),
    the same value as RFC 5280's method-1 subject key identifier.
    """
    info = keys.PublicKeyInfo.load(spki_der)
    return hashlib.sha1(info["public_key"].contents[1:]).digest()


def find_private_key_for(session: raw.Session, spki_der: bytes) -> pkcs11.Object | None:
    """The private key whose public half is `spki_der`; tries the CKA_ID convention first."""
    wanted = keys.PublicKeyInfo.load(spki_der).dump()
    by_id = find_objects(session, object_class=ObjectClass.PRIVATE_KEY, object_id=key_id_for(wanted))
    for candidate in by_id:
        if public_key_info(candidate, session) == wanted:
            return candidate
    # Only when the convention fails (other tools choose other CKA_IDs) is every private key read:
    # listing them all costs attribute reads per key, which on a token of 1,000 keys was 0.15 s.
    seen = {c.handle for c in by_id}
    for candidate in find_objects(session, object_class=ObjectClass.PRIVATE_KEY):
        if candidate.handle not in seen and public_key_info(candidate, session) == wanted:
            return candidate
    return None


def private_key_uri(token_uri_path: dict[str, str], private: Any) -> str:
    """RFC 7512 URI of a private key found on the token (its CKA_LABEL and CKA_ID), for a PKCS#11
    client in another process (curl with OpenSSL's pkcs11 engine)."""
    from tokenagent.token.uri import Pkcs11Uri

    values = read_attributes(private, [Attribute.LABEL, Attribute.ID])
    path = dict(token_uri_path)
    if values.get(Attribute.LABEL):
        path["object"] = str(values[Attribute.LABEL])
    path["type"] = "private"
    return str(Pkcs11Uri(path=path, object_id=bytes(values.get(Attribute.ID) or b"") or None))


def find_private_keys(
    session: raw.Session, *, label: str | None = None, object_id: bytes | None = None
) -> list[pkcs11.Object]:
    """Private keys by CKA_LABEL and/or CKA_ID (an agent key named by --agent)."""
    return find_objects(session, object_class=ObjectClass.PRIVATE_KEY, label=label, object_id=object_id)


def destroy_objects(objects: Sequence[pkcs11.Object], *, what: str) -> list[str]:
    """Best-effort C_DestroyObject on each; returns problems instead of raising (rollback path)."""
    problems = []
    for obj in objects:
        try:
            obj.destroy()
        except PKCS11Error as exc:
            problems.append(f"cannot delete an object of the {what}: {rv(exc)}")
    for problem in problems:
        log.error("%s", problem)
    return problems
