"""What a token can do and holds, for the capacity check: mechanisms with their ranges, the labels
of its private keys, its object count and free memory (CK_TOKEN_INFO)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import pkcs11
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass

from tokenagent.errors import TokenOperationError
from tokenagent.token import raw
from tokenagent.token.ckr import rv_name
from tokenagent.token.facts import MechanismRange, TokenFacts
from tokenagent.token.implementations import NSS_SOFTOKN
from tokenagent.token.library import TokenHandle
from tokenagent.token.objects import find_objects, public_key_info, read_attributes
from tokenagent.token.session import PinState, TokenSession

_UNAVAILABLE = (1 << 64) - 1  # CK_UNAVAILABLE_INFORMATION for a 64-bit CK_ULONG


@dataclass(frozen=True)
class FactNeeds:
    """What one capacity check reads, so that no call goes to the token for anything else: on a
    smart card each call is an APDU round trip, and a scan of every object grows with the token.

    ``mechanisms``: the CKM_* names whose CK_MECHANISM_INFO is read (None: every mechanism);
    ``sign_candidates``: signature mechanisms in order of preference, read one by one until the
    token has one that signs (the capacity check takes the first it has, so later ones are not asked);
    ``label``: the KeyContainer whose collision is looked for by CKA_CLASS + CKA_LABEL;
    ``private_keys`` / ``objects``: count them (a profile's key_containers / max_objects limit).
    """

    mechanisms: frozenset[str] | None = None
    sign_candidates: tuple[str, ...] = ()
    label: str | None = None
    private_keys: bool = True
    objects: bool = True


EVERYTHING = FactNeeds()


def gather_facts(ts: TokenSession, needs: FactNeeds = EVERYTHING) -> TokenFacts:
    """What the capacity check needs: flags, mechanisms with ranges, what is already stored.
    ``needs`` narrows it to one plan's questions (`enroll.new.facts_needed`); the default (a batch,
    which plans many requests against one reading) reads all of it."""
    # the flags open_session read just before its login: a login that worked leaves the PIN usable
    handle = ts.handle if ts.logged_in else ts.handle.refresh()
    state = PinState.from_flags(handle.flags)
    if needs.mechanisms is None:  # every mechanism the slot lists: all asked already
        mechanisms = mechanism_ranges(handle, None)
        asked = set(mechanisms)
    else:  # (an absent one is asked once: `learn_mechanisms` remembers what it asked, found or not)
        mechanisms, asked = {}, set()
    learn_mechanisms(handle, needs, mechanisms, asked)
    count = len(raw.find_handles(ts.session, handle.module.path, {})) if needs.objects else 0
    if needs.private_keys:  # every private key's label: the count, and any label collision
        labels = [
            str(read_attributes(obj, [Attribute.LABEL]).get(Attribute.LABEL) or "")
            for obj in find_objects(ts.session, object_class=ObjectClass.PRIVATE_KEY)
        ]
    elif needs.label is not None:  # only whether this label is taken: the token matches it
        taken = find_objects(ts.session, object_class=ObjectClass.PRIVATE_KEY, label=needs.label)
        labels = [needs.label] if taken else []
    else:
        labels = []
    free_public, free_private = _free_memory(ts)
    slots = piv_slots(ts) if handle.is_piv else None
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
        slot_ids=slots.occupied if slots else frozenset(),
        slot_certificates=slots.certificates if slots else frozenset(),
        slot_keys=slots.keys if slots else {},
    )


#: ykcs11 labels the attestation certificate it makes for a slot's key like this: it proves where
#: the key was generated and is not the slot's certificate
ATTESTATION_LABEL = "X.509 Certificate for PIV Attestation"


@dataclass(frozen=True)
class PivSlots:
    occupied: frozenset[bytes]  # CKA_IDs with a key or a certificate
    certificates: frozenset[bytes]  # CKA_IDs with a certificate (not an attestation)
    keys: dict[bytes, str]  # CKA_ID -> SHA-256 of the public key


def piv_slots(ts: TokenSession) -> PivSlots:
    """What each slot of a PIV card holds, as ykcs11 shows it."""
    occupied: set[bytes] = set()
    certificates: set[bytes] = set()
    keys: dict[bytes, str] = {}
    for obj in find_objects(ts.session, object_class=ObjectClass.CERTIFICATE):
        values = read_attributes(obj, [Attribute.ID, Attribute.LABEL])
        key_id = bytes(values.get(Attribute.ID) or b"")
        occupied.add(key_id)
        if not str(values.get(Attribute.LABEL) or "").startswith(ATTESTATION_LABEL):
            certificates.add(key_id)
    for obj in find_objects(ts.session, object_class=ObjectClass.PRIVATE_KEY):
        occupied.add(bytes(read_attributes(obj, [Attribute.ID]).get(Attribute.ID) or b""))
    for obj in find_objects(ts.session, object_class=ObjectClass.PUBLIC_KEY):
        key_id = bytes(read_attributes(obj, [Attribute.ID]).get(Attribute.ID) or b"")
        occupied.add(key_id)
        spki = public_key_info(obj)
        if spki is not None:
            keys[key_id] = hashlib.sha256(spki).hexdigest()
    return PivSlots(frozenset(occupied), frozenset(certificates), keys)


def mechanism_ranges(handle: TokenHandle, wanted: frozenset[str] | None) -> dict[str, MechanismRange]:
    """CK_MECHANISM_INFO of the wanted mechanisms (of every mechanism the slot lists, for None).
    Wanted ones are asked for directly, without C_GetMechanismList (two calls): a token answers
    CKR_MECHANISM_INVALID for a mechanism it does not have (PKCS#11 v2.40 §5.5)."""
    if wanted is not None:
        candidates = [int(Mechanism[name[4:]]) for name in sorted(wanted) if name[4:] in Mechanism.__members__]
    else:
        rv, listed = raw.mechanism_list(handle.module.path, handle.slot_id)
        if rv != raw.CKR_OK:
            raise TokenOperationError(f"token '{handle.label}': cannot list mechanisms: {rv_name(rv)}")
        candidates = [mech for mech in listed if mech in Mechanism._value2member_map_]  # vendor numbers: not ours
    mechanisms: dict[str, MechanismRange] = {}
    for mech in candidates:
        rv, info = raw.mechanism_info(handle.module.path, handle.slot_id, mech)
        if rv != raw.CKR_OK:
            continue  # CKR_MECHANISM_INVALID: not on this token
        flags = frozenset(flag.name for flag in MechanismFlag if flag.value and info.flags & flag and flag.name)
        low, high = int(info.ulMinKeySize), int(info.ulMaxKeySize)
        mechanisms[f"CKM_{Mechanism(mech).name}"] = MechanismRange(low, high, flags)
    return mechanisms


def learn_mechanisms(handle: TokenHandle, needs: FactNeeds, known: dict[str, MechanismRange], asked: set[str]) -> None:
    """Add to ``known`` what ``needs`` asks that is not in ``asked`` yet (a batch asks each once):
    its mechanisms, then its signature candidates in order until one signs."""
    missing = (needs.mechanisms or frozenset()) - asked
    if missing:
        known.update(mechanism_ranges(handle, frozenset(missing)))
        asked |= missing
    for name in needs.sign_candidates:
        if name not in asked:
            known.update(mechanism_ranges(handle, frozenset({name})))
            asked.add(name)
        if name in known and "SIGN" in known[name].flags:
            break


def first_mechanism(ts: TokenSession, names: Iterable[str]) -> str | None:
    """The first of ``names`` (CKM_*, in order of preference) the token has: one C_GetMechanismInfo
    per name tried, not C_GetMechanismList and a scan (issue 15)."""
    for name in names:
        if mechanism_ranges(ts.handle, frozenset({name})):
            return name
    return None


def read_token_info(handle: TokenHandle) -> raw.CK_TOKEN_INFO:
    """CK_TOKEN_INFO as the token's listing or the last `refresh` read it."""
    return handle.info


def _free_memory(ts: TokenSession) -> tuple[int | None, int | None]:
    info = read_token_info(ts.handle)

    def known(value: int) -> int | None:
        # CK_UNAVAILABLE_INFORMATION, and CK_EFFECTIVELY_INFINITE (0) for memory, mean "no limit to check"
        return None if value in (_UNAVAILABLE, 0) else value

    if ts.handle.implementation == NSS_SOFTOKN:
        return None, None  # softokn says 1 byte total and 1 free: a placeholder, its database has no limit

    return known(info.ulFreePublicMemory), known(info.ulFreePrivateMemory)
