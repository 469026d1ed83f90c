"""Key pair generation with explicit templates, and the CKA_ID convention applied to the result."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pkcs11 import Attribute, ObjectClass

from tokenagent.errors import CapacityError, TokenOperationError
from tokenagent.token import raw
from tokenagent.token.ckr import rv_name
from tokenagent.token.names import mechanism, template
from tokenagent.token.objects import destroy_objects, ec_spki, key_id_for, rsa_spki
from tokenagent.token.session import TokenSession


@dataclass(frozen=True)
class KeyPair:
    public: Any  # pkcs11.Object for a pair found on the token, raw.RawObject for one just generated
    private: Any
    spki: bytes  # DER SubjectPublicKeyInfo
    key_id: bytes  # CKA_ID of both halves
    label: str
    generated: bool  # False: an existing pair found for UseExistingKeySet


def _exact_templates(
    public_template: Mapping[str, Any], private_template: Mapping[str, Any], key_id: bytes | None
) -> tuple[dict[Attribute, Any], dict[Attribute, Any]]:
    """The plan's templates as sent: exactly what the plan names, plus CKA_CLASS and the CKA_ID the
    pair is born with. Nothing is added on the plan's behalf (python-pkcs11's generate_keypair added
    every usage attribute, FALSE, which tpm2-pkcs11 refuses: token/implementations.py)."""
    public_attrs = {Attribute.CLASS: ObjectClass.PUBLIC_KEY, **template(public_template)}
    private_attrs = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, **template(private_template)}
    if key_id is not None:
        public_attrs[Attribute.ID] = private_attrs[Attribute.ID] = key_id
    return public_attrs, private_attrs


_REFUSED_GENERATION = frozenset({"CKR_MECHANISM_INVALID", "CKR_KEY_SIZE_RANGE", "CKR_DOMAIN_PARAMS_INVALID"})
_REFUSED_TEMPLATE = frozenset({"CKR_TEMPLATE_INCONSISTENT", "CKR_TEMPLATE_INCOMPLETE", "CKR_ATTRIBUTE_VALUE_INVALID"})


def _generation_error(name: str, code: str, mechanism_name: str) -> Exception:
    if code == "CKR_DEVICE_MEMORY":
        return CapacityError(f"token {name} is full (CKR_DEVICE_MEMORY); nothing was created")
    if code in _REFUSED_GENERATION:
        return CapacityError(
            f"token {name} refused to generate the key ({code}): {mechanism_name} with these parameters"
        )
    if code in _REFUSED_TEMPLATE:
        return CapacityError(f"token {name} refused the key template ({code})")
    return TokenOperationError(f"token {name}: key generation failed: {code}")


def _public_key(ts: TokenSession, public: raw.RawObject, public_attrs: Mapping[Attribute, Any]) -> bytes | None:
    """The new public key as a SubjectPublicKeyInfo, from one attribute read of the public half
    (its curve is the template's)."""
    if Attribute.MODULUS_BITS in public_attrs:
        values = raw.read_raw(
            ts.session, public.module_path, public.handle, [Attribute.MODULUS, Attribute.PUBLIC_EXPONENT]
        )
        modulus, exponent = values.get(Attribute.MODULUS), values.get(Attribute.PUBLIC_EXPONENT)
        return rsa_spki(modulus, exponent) if modulus and exponent else None
    ec_point = raw.read_raw(ts.session, public.module_path, public.handle, [Attribute.EC_POINT]).get(Attribute.EC_POINT)
    return ec_spki(bytes(public_attrs[Attribute.EC_PARAMS]), ec_point) if ec_point else None


def generate_key_pair(
    ts: TokenSession,
    *,
    key_type: str,
    generation_mechanism: str,
    public_template: Mapping[str, Any],
    private_template: Mapping[str, Any],
    temporary_id: bytes | None = None,
    before_final_id: Callable[[bytes], None] | None = None,
    fixed_id: bytes | None = None,
    defer_id: bool = False,
) -> KeyPair:
    """Generate on the token, then set CKA_ID = SHA-1 of the public key on both halves.

    ``temporary_id`` is the CKA_ID both halves are born with, so that a run killed at any moment
    leaves only objects that its intent names (store/intents.py); ``before_final_id`` is told the
    final CKA_ID before it is set, to record it in the intent. If anything fails after
    C_GenerateKeyPair (reading the public key, setting CKA_ID, Ctrl-C), both halves are destroyed
    before the exception propagates.

    ``defer_id``: the final CKA_ID is computed and told to ``before_final_id`` but not set: the
    caller sets it later with `finish_key_pair` (a batch's spare key pair, whose label is set then too).

    ``fixed_id``: the key is born with this CKA_ID and keeps it (a PIV slot's: ykcs11 picks the
    slot by it and cannot change it afterwards); no temporary ID, no C_SetAttributeValue.
    """
    name = f"'{ts.handle.label}'"
    public_attrs, private_attrs = _exact_templates(public_template, private_template, fixed_id or temporary_id)
    path = ts.handle.module.path
    if key_type == "CKK_RSA" and Attribute.PUBLIC_EXPONENT not in public_attrs:
        raise ValueError("an RSA template must set CKA_PUBLIC_EXPONENT")  # planning always does
    code, public_handle, private_handle = raw.generate_key_pair(
        ts.session, path, int(mechanism(generation_mechanism)), public_attrs, private_attrs
    )
    if code != raw.CKR_OK:
        raise _generation_error(name, rv_name(code), generation_mechanism)
    public = raw.RawObject(ts.session, path, public_handle)
    private = raw.RawObject(ts.session, path, private_handle)
    try:
        spki = _public_key(ts, public, public_attrs)
        if spki is None:
            raise TokenOperationError(f"token {name}: cannot read the new public key")
        key_id = fixed_id if fixed_id is not None else key_id_for(spki)
        if before_final_id is not None:
            before_final_id(key_id)
        if fixed_id is None and not defer_id:
            for half in (public, private):
                code = raw.set_attributes(ts.session, path, half.handle, {Attribute.ID: key_id})
                if code != raw.CKR_OK:
                    raise TokenOperationError(f"token {name}: cannot set CKA_ID on the new key: {rv_name(code)}")
    except BaseException:
        destroy_objects([public, private], what="new key pair")
        raise
    return KeyPair(public, private, spki, key_id, str(private_template.get("CKA_LABEL", "")), True)


def finish_key_pair(pair: KeyPair, label: str | None) -> bool:
    """The CKA_ID `generate_key_pair(defer_id=True)` computed, and ``label`` if given, set on both
    halves in one C_SetAttributeValue each; False when the token refuses one."""
    values: dict[Attribute, Any] = {Attribute.ID: pair.key_id}
    if label is not None:
        values[Attribute.LABEL] = label
    return all(
        raw.set_attributes(half.session, half.module_path, half.handle, values) == raw.CKR_OK
        for half in (pair.public, pair.private)
    )
