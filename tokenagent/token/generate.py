"""Key pair generation with explicit templates, and the CKA_ID convention applied to the result."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, MechanismFlag
from pkcs11 import exceptions as p11
from pkcs11.constants import DEFAULT

from tokenagent.errors import CapacityError, TokenOperationError
from tokenagent.token.names import mechanism, template
from tokenagent.token.names import rv as _rv
from tokenagent.token.objects import destroy_objects, key_id_for, public_key_info
from tokenagent.token.session import TokenSession

_KEY_TYPES = {"CKK_RSA": KeyType.RSA, "CKK_EC": KeyType.EC}
_USAGES = (
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.DERIVE,
)


@dataclass(frozen=True)
class KeyPair:
    public: pkcs11.Object
    private: pkcs11.Object
    spki: bytes  # DER SubjectPublicKeyInfo
    key_id: bytes  # CKA_ID of both halves
    label: str
    generated: bool  # False: an existing pair found for UseExistingKeySet


def _exact_templates(
    public_template: Mapping[str, Any], private_template: Mapping[str, Any], key_id: bytes | None
) -> tuple[dict[Attribute, Any], dict[Attribute, Any]]:
    """The plan's templates for python-pkcs11, which adds every usage attribute, FALSE unless in
    `capabilities`: DEFAULT drops those the plan leaves out, so the token decides them (tpm2-pkcs11
    refuses a CKA_ENCRYPT FALSE beside a CKA_SIGN TRUE: token/implementations.py)."""
    public_attrs = template(public_template)
    private_attrs = template(private_template)
    if key_id is not None:
        public_attrs[Attribute.ID] = private_attrs[Attribute.ID] = key_id
    for attribute in _USAGES:
        public_attrs.setdefault(attribute, DEFAULT)
        private_attrs.setdefault(attribute, DEFAULT)
    return public_attrs, private_attrs


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
) -> KeyPair:
    """Generate on the token, then set CKA_ID = SHA-1 of the public key on both halves.

    ``temporary_id`` is the CKA_ID both halves are born with, so that a run killed at any moment
    leaves only objects that its intent names (store/intents.py); ``before_final_id`` is told the
    final CKA_ID before it is set, to record it in the intent. If anything fails after
    C_GenerateKeyPair (reading the public key, setting CKA_ID, Ctrl-C), both halves are destroyed
    before the exception propagates.

    ``fixed_id``: the key is born with this CKA_ID and keeps it (a PIV slot's: ykcs11 picks the
    slot by it and cannot change it afterwards); no temporary ID, no C_SetAttributeValue.
    """
    name = f"'{ts.handle.label}'"
    public_attrs, private_attrs = _exact_templates(public_template, private_template, fixed_id or temporary_id)
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
    try:
        spki = public_key_info(public)
        if spki is None:
            raise TokenOperationError(f"token {name}: cannot read the new public key")
        key_id = fixed_id if fixed_id is not None else key_id_for(spki)
        if before_final_id is not None:
            before_final_id(key_id)
        if fixed_id is None:
            public[Attribute.ID] = key_id
            private[Attribute.ID] = key_id
    except BaseException as exc:
        destroy_objects([public, private], what="new key pair")
        if isinstance(exc, p11.PKCS11Error):
            raise TokenOperationError(f"token {name}: cannot set CKA_ID on the new key: {_rv(exc)}") from None
        raise
    return KeyPair(public, private, spki, key_id, str(private_template.get("CKA_LABEL", "")), True)
