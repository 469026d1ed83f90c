"""PKCS#11 names as the providers room writes them (``"CKA_SIGN"``, ``"CKM_EC_KEY_PAIR_GEN"``) turned
into python-pkcs11 values: the one place where planning meets python-pkcs11, so nothing above
token/ imports pkcs11. Also the python-pkcs11 0.10 gaps tokenagent fills."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pkcs11
import pkcs11.attributes
from pkcs11 import Attribute, Mechanism

from tokenagent.token.ckr import exception_rv_name

# python-pkcs11 0.10 has no packer for CKA_CERTIFICATE_CATEGORY (a CK_ULONG): register one for
# every session (python-pkcs11 0.10 reads this table directly).
pkcs11.attributes.ATTRIBUTE_TYPES.setdefault(Attribute.CERTIFICATE_CATEGORY, pkcs11.attributes.handle_ulong)


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


def rv(exc: BaseException) -> str:
    """The CKR_ name behind a python-pkcs11 exception ("CKR_GENERAL_ERROR"), as the token said it."""
    return exception_rv_name(exc)
