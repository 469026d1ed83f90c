"""PIV cards (YubiKeys) through Yubico's ykcs11: fixed key slots instead of free key objects.

A PIV card holds at most one key per slot, and ykcs11 names each slot's key, public key and
certificate by one fixed CKA_ID (NIST SP 800-73-4 slot -> ykcs11 id):

  9a -> 01  PIV Authentication (smart-card logon, client TLS), PIN once per session
  9c -> 02  Digital Signature (documents, e-mail), PIN for every signature
  9d -> 03  Key Management (decryption, key agreement)
  9e -> 04  Card Authentication (physical access), no PIN
  82..95 -> 05..18  Retired Key Management 1..20

So on PIV the slot, not the SHA-1-of-the-public-key CKA_ID convention, links a key to its
certificate; labels are ykcs11's own ("Private key for PIV Authentication") and cannot be set.
ykcs11 needs the security officer's login, whose PIN is the card's management key (48 hex
digits for 3DES/AES-192), to generate a key or write a certificate; the user PIN signs.

Which slot an INF's key goes to (docs/piv.md):
  1. KeyContainer = "PIV 9c" names it;
  2. a smart-card logon or client authentication EKU -> 9a;
  3. KeySpec = AT_KEYEXCHANGE with key encipherment / key agreement and no signing usage -> 9d;
  4. KeySpec = AT_SIGNATURE with a document-signing or e-mail EKU, or a KeyUsage written out
     with non-repudiation -> 9c;
  5. otherwise 9a.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tokenagent.errors import PolicyError
from tokenagent.inf.policy import KeySpec, RequestPolicy
from tokenagent.request.oids import OID_EXTENDED_KEY_USAGE

#: the factory default 3DES management key of every YubiKey (and of most PIV test cards): a card
#: that still accepts it can be rewritten by anyone holding it
FACTORY_MANAGEMENT_KEY = "010203040506070801020304050607080102030405060708"

OID_SMART_CARD_LOGON = "1.3.6.1.4.1.311.20.2.2"
OID_CLIENT_AUTH = "1.3.6.1.5.5.7.3.2"
OID_EMAIL_PROTECTION = "1.3.6.1.5.5.7.3.4"
OID_DOCUMENT_SIGNING = "1.3.6.1.4.1.311.10.3.12"
OID_CODE_SIGNING = "1.3.6.1.5.5.7.3.3"
_SIGNING_EKUS = (OID_EMAIL_PROTECTION, OID_DOCUMENT_SIGNING, OID_CODE_SIGNING)

# wincrypt KeyUsage bits
_DIGITAL_SIGNATURE = 0x80
_NON_REPUDIATION = 0x40
_KEY_ENCIPHERMENT = 0x20
_KEY_AGREEMENT = 0x08


@dataclass(frozen=True)
class PivSlot:
    name: str  # "9a"
    key_id: int  # ykcs11's CKA_ID byte
    purpose: str
    pin_policy: str  # the slot's default: once | always | never
    touch_policy: str = "never"

    @property
    def cka_id(self) -> bytes:
        return bytes([self.key_id])

    @property
    def always_authenticate(self) -> bool:
        return self.pin_policy == "always"

    def describe(self) -> str:
        return f"PIV slot {self.name} ({self.purpose}, CKA_ID {self.key_id:02x})"


SLOTS: tuple[PivSlot, ...] = (
    PivSlot("9a", 0x01, "PIV Authentication", "once"),
    PivSlot("9c", 0x02, "Digital Signature", "always"),
    PivSlot("9d", 0x03, "Key Management", "once"),
    PivSlot("9e", 0x04, "Card Authentication", "never"),
    *(PivSlot(f"{0x82 + n:02x}", 0x05 + n, f"Retired Key Management {n + 1}", "once") for n in range(20)),
)
SLOTS_BY_NAME = {slot.name: slot for slot in SLOTS}
SLOTS_BY_ID = {slot.key_id: slot for slot in SLOTS}

_CONTAINER = re.compile(r"^\s*PIV\s+(?:slot\s+)?([0-9a-fA-F]{2})\s*$", re.IGNORECASE)

PIN_POLICIES = ("default", "never", "once", "always")
TOUCH_POLICIES = ("default", "never", "always", "cached")


def slot_for_id(key_id: bytes) -> PivSlot | None:
    """The slot a ykcs11 CKA_ID names (None for anything else)."""
    return SLOTS_BY_ID.get(key_id[0]) if len(key_id) == 1 else None


def named_slot(key_container: str | None) -> PivSlot | None:
    """``KeyContainer = "PIV 9c"``: the slot it names, None when it names no slot."""
    if key_container is None:
        return None
    match = _CONTAINER.match(key_container)
    if match is None:
        return None
    return SLOTS_BY_NAME.get(match.group(1).lower())


def choose_slot(policy: RequestPolicy) -> tuple[PivSlot, str]:
    """The slot the INF's key goes to, and why (for --dry-run and docs/piv.md's table)."""
    if policy.key_container is not None and _CONTAINER.match(policy.key_container):
        slot = named_slot(policy.key_container)
        if slot is None:
            raise PolicyError(
                f"{policy.where('key_container')}: KeyContainer = {policy.key_container}: no such PIV slot "
                f"(slots: {', '.join(SLOTS_BY_NAME)})"
            )
        return slot, f"KeyContainer = {policy.key_container.strip()}"
    eku = policy.extension(OID_EXTENDED_KEY_USAGE)
    usages = eku.usages if eku is not None else ()
    if OID_SMART_CARD_LOGON in usages or OID_CLIENT_AUTH in usages:
        return SLOTS_BY_NAME["9a"], "smart-card logon / client authentication EKU"
    signs = bool(policy.key_usage & (_DIGITAL_SIGNATURE | _NON_REPUDIATION))
    encrypts = bool(policy.key_usage & (_KEY_ENCIPHERMENT | _KEY_AGREEMENT))
    if policy.key_spec == KeySpec.AT_KEYEXCHANGE and encrypts and not signs:
        return SLOTS_BY_NAME["9d"], "KeySpec = AT_KEYEXCHANGE for encryption or key agreement only"
    # certreq's default KeyUsage for signature keys includes non-repudiation: only a KeyUsage the
    # INF writes out says "document signing" (9c asks the PIN for every signature)
    written = policy.origins.get("key_usage")
    non_repudiation = bool(policy.key_usage & _NON_REPUDIATION) and written is not None and written.source == "file"
    if policy.key_spec == KeySpec.AT_SIGNATURE and (any(oid in usages for oid in _SIGNING_EKUS) or non_repudiation):
        return SLOTS_BY_NAME["9c"], "KeySpec = AT_SIGNATURE for document or e-mail signing"
    return SLOTS_BY_NAME["9a"], "the default slot (PIV Authentication)"
