"""Key pairs and certificates on a token: facts for capacity checks, generation with explicit
templates, raw signing, certificate objects, and deletion for rollback.

Templates arrive as PKCS#11 names (``{"CKA_SIGN": True}``) from the providers room; this module is
where they become python-pkcs11 values, so nothing above it imports pkcs11.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pkcs11
import pkcs11.attributes
from asn1crypto import x509
from pkcs11 import MGF, Attribute, CertificateType, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11

from tokenagent.errors import CapacityError, ObjectNotFoundError, PinError, TokenOperationError
from tokenagent.token.facts import MechanismRange, SignMechanism, TokenFacts
from tokenagent.token.library import TokenHandle
from tokenagent.token.objects import find_objects, find_private_key_for, key_id_for, public_key_info, read_attributes
from tokenagent.token.pins import ProtectedAuthentication
from tokenagent.token.session import PinState, TokenSession

log = logging.getLogger("tokenagent")

_KEY_TYPES = {"CKK_RSA": KeyType.RSA, "CKK_EC": KeyType.EC}

# python-pkcs11 0.10 has no packer for CKA_CERTIFICATE_CATEGORY (a CK_ULONG): register one for
# every session (python-pkcs11 0.10 reads this table directly).
pkcs11.attributes.ATTRIBUTE_TYPES.setdefault(Attribute.CERTIFICATE_CATEGORY, pkcs11.attributes.handle_ulong)
_UNAVAILABLE = (1 << 64) - 1  # CK_UNAVAILABLE_INFORMATION for a 64-bit CK_ULONG


def attribute(name: str) -> Attribute:
    if not name.startswith("CKA_"):
        raise ValueError(f"not an attribute name: {name}")
    return Attribute[name[4:]]


def mechanism(name: str) -> Mechanism:
    if not name.startswith("CKM_"):
        raise ValueError(f"not a mechanism name: {name}")
    return Mechanism[name[4:]]


def template(names: Mapping[str, Any]) -> dict[Attribute, Any]:
    return {attribute(name): value for name, value in names.items()}


# -- facts ----------------------------------------------------------------------------------------


def gather_facts(ts: TokenSession) -> TokenFacts:
    """What the capacity check needs: flags, mechanisms with ranges, what is already stored."""
    handle = ts.handle.refresh()
    state = PinState.from_flags(handle.flags)
    mechanisms: dict[str, MechanismRange] = {}
    try:
        available = handle.slot.get_mechanisms()
    except p11.PKCS11Error as exc:
        raise TokenOperationError(f"token '{handle.label}': cannot list mechanisms: {type(exc).__name__}") from None
    for mech in available:
        if not isinstance(mech, Mechanism):
            continue  # vendor-defined numbers: not ours to plan with
        try:
            info = handle.slot.get_mechanism_info(mech)
        except p11.PKCS11Error:
            continue
        flags = frozenset(flag.name for flag in MechanismFlag if flag.value and info.flags & flag and flag.name)
        mechanisms[f"CKM_{mech.name}"] = MechanismRange(
            int(info.min_key_length or 0), int(info.max_key_length or 0), flags
        )
    # only private keys need an attribute read; the rest are just counted
    count = sum(1 for _ in ts.session.get_objects({}))
    labels = [
        str(read_attributes(obj, [Attribute.LABEL]).get(Attribute.LABEL) or "")
        for obj in find_objects(ts.session, object_class=ObjectClass.PRIVATE_KEY)
    ]
    free_public, free_private = _free_memory(ts)
    return TokenFacts(
        label=handle.label,
        serial=handle.serial,
        model=handle.model,
        initialized=handle.initialized,
        write_protected=bool(handle.flags & pkcs11.TokenFlag.WRITE_PROTECTED),
        user_pin_initialized=state.initialized,
        user_pin_locked=state.locked,
        mechanisms=mechanisms,
        private_key_labels=tuple(labels),
        object_count=count,
        free_public_memory=free_public,
        free_private_memory=free_private,
        pin_pad=state.protected_authentication_path,
    )


def mechanism_names(ts: TokenSession) -> frozenset[str]:
    """The CKM_* names the slot lists, without reading each mechanism's info (cheap)."""
    try:
        return frozenset(f"CKM_{m.name}" for m in ts.handle.slot.get_mechanisms() if isinstance(m, Mechanism))
    except p11.PKCS11Error as exc:
        raise TokenOperationError(f"token '{ts.handle.label}': cannot list mechanisms: {_rv(exc)}") from None


class _TokenInfo(ctypes.Structure):
    """CK_TOKEN_INFO (PKCS#11 v2.40 §3.2), laid out for Linux's unsigned long CK_ULONG."""

    _fields_ = [
        ("label", ctypes.c_char * 32),
        ("manufacturerID", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serialNumber", ctypes.c_char * 16),
        ("flags", ctypes.c_ulong),
        ("ulMaxSessionCount", ctypes.c_ulong),
        ("ulSessionCount", ctypes.c_ulong),
        ("ulMaxRwSessionCount", ctypes.c_ulong),
        ("ulRwSessionCount", ctypes.c_ulong),
        ("ulMaxPinLen", ctypes.c_ulong),
        ("ulMinPinLen", ctypes.c_ulong),
        ("ulTotalPublicMemory", ctypes.c_ulong),
        ("ulFreePublicMemory", ctypes.c_ulong),
        ("ulTotalPrivateMemory", ctypes.c_ulong),
        ("ulFreePrivateMemory", ctypes.c_ulong),
        ("hardwareVersion", ctypes.c_ubyte * 2),
        ("firmwareVersion", ctypes.c_ubyte * 2),
        ("utcTime", ctypes.c_char * 16),
    ]


def read_token_info(handle: TokenHandle) -> _TokenInfo | None:
    """CK_TOKEN_INFO straight from the module's exported C_GetTokenInfo: python-pkcs11 does not
    expose the memory fields. The library is already initialized by python-pkcs11."""
    try:
        lib = ctypes.CDLL(handle.module.path)
        info = _TokenInfo()
        if lib.C_GetTokenInfo(ctypes.c_ulong(handle.slot_id), ctypes.byref(info)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return info


def _free_memory(ts: TokenSession) -> tuple[int | None, int | None]:
    info = read_token_info(ts.handle)
    if info is None:
        return None, None

    def known(value: int) -> int | None:
        # CK_UNAVAILABLE_INFORMATION, and CK_EFFECTIVELY_INFINITE (0) for memory, mean "no limit to check"
        return None if value in (_UNAVAILABLE, 0) else value

    return known(info.ulFreePublicMemory), known(info.ulFreePrivateMemory)


# -- generation -----------------------------------------------------------------------------------


@dataclass
class KeyPair:
    public: pkcs11.Object
    private: pkcs11.Object
    spki: bytes  # DER SubjectPublicKeyInfo
    key_id: bytes  # CKA_ID of both halves
    label: str
    generated: bool  # False: an existing pair found for UseExistingKeySet


def generate_key_pair(
    ts: TokenSession,
    *,
    key_type: str,
    generation_mechanism: str,
    public_template: Mapping[str, Any],
    private_template: Mapping[str, Any],
    temporary_id: bytes | None = None,
    before_final_id: Callable[[bytes], None] | None = None,
) -> KeyPair:
    """Generate on the token, then set CKA_ID = SHA-1 of the public key on both halves.

    ``temporary_id`` is the CKA_ID both halves are born with, so that a run killed at any moment
    leaves only objects that its intent names (store/intents.py); ``before_final_id`` is told the
    final CKA_ID before it is set, to record it in the intent. If anything fails after
    C_GenerateKeyPair (reading the public key, setting CKA_ID, Ctrl-C), both halves are destroyed
    before the exception propagates.
    """
    name = f"'{ts.handle.label}'"
    public_attrs = template(public_template)
    private_attrs = template(private_template)
    if temporary_id is not None:
        public_attrs[Attribute.ID] = private_attrs[Attribute.ID] = temporary_id
    kind = _KEY_TYPES[key_type]
    bits = public_attrs.pop(Attribute.MODULUS_BITS, None) if kind == KeyType.RSA else None
    try:
        public, private = ts.session.generate_keypair(
            kind,
            bits,
            mechanism=mechanism(generation_mechanism),
            store=bool(private_attrs.get(Attribute.TOKEN, True)),
            capabilities=MechanismFlag(0),  # no defaults: the templates say everything
            public_template=public_attrs,
            private_template=private_attrs,
        )
    except p11.DeviceMemory:
        raise CapacityError(f"token {name} is full (CKR_DEVICE_MEMORY); nothing was created") from None
    except (p11.MechanismInvalid, p11.KeySizeRange, p11.DomainParamsInvalid) as exc:
        raise CapacityError(
            f"token {name} refused to generate the key ({_rv(exc)}): {generation_mechanism} with these parameters"
        ) from None
    except (p11.TemplateInconsistent, p11.TemplateIncomplete, p11.AttributeValueInvalid) as exc:
        raise CapacityError(f"token {name} refused the key template ({_rv(exc)})") from None
    except p11.PKCS11Error as exc:
        raise TokenOperationError(f"token {name}: key generation failed: {_rv(exc)}") from None
    pair = KeyPair(public, private, b"", b"", str(private_template.get("CKA_LABEL", "")), True)
    try:
        spki = public_key_info(public)
        if spki is None:
            raise TokenOperationError(f"token {name}: cannot read the new public key")
        pair.spki = spki
        pair.key_id = key_id_for(spki)
        if before_final_id is not None:
            before_final_id(pair.key_id)
        public[Attribute.ID] = pair.key_id
        private[Attribute.ID] = pair.key_id
    except BaseException as exc:
        destroy_objects([public, private], what="new key pair")
        if isinstance(exc, p11.PKCS11Error):
            raise TokenOperationError(f"token {name}: cannot set CKA_ID on the new key: {_rv(exc)}") from None
        raise
    return pair


def destroy_objects(objects: Sequence[pkcs11.Object], *, what: str) -> list[str]:
    """Best-effort C_DestroyObject on each; returns problems instead of raising (rollback path)."""
    problems = []
    for obj in objects:
        try:
            obj.destroy()
        except p11.PKCS11Error as exc:
            problems.append(f"cannot delete an object of the {what}: {_rv(exc)}")
    for problem in problems:
        log.error("%s", problem)
    return problems


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
        raise ObjectNotFoundError(
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


# -- signing ----------------------------------------------------------------------------------------


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
    if context_login:
        credential = ts._pin
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


# -- certificates -----------------------------------------------------------------------------------


def write_certificate(
    ts: TokenSession, der: bytes, *, key_id: bytes, label: str, category: int = 1, trusted: bool = False
) -> pkcs11.Object:
    """A CKO_CERTIFICATE token object next to its key (same CKA_ID), as OpenSC and NSS expect.

    ``trusted`` sets CKA_TRUSTED, which PKCS#11 lets only a security-officer session set; it is
    given at creation because SoftHSM 2.6.1 refuses to change it afterwards even for the SO.
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
        Attribute.CERTIFICATE_CATEGORY: category,
    }
    if trusted:
        attrs[Attribute.TRUSTED] = True
    try:
        return ts.session.create_object(attrs)
    except p11.DeviceMemory:
        raise CapacityError(f"token {name} is full (CKR_DEVICE_MEMORY): the certificate was not written") from None
    except p11.PKCS11Error as exc:
        raise TokenOperationError(f"token {name}: cannot write the certificate: {_rv(exc)}") from None


def _rv(exc: BaseException) -> str:
    return type(exc).__name__
