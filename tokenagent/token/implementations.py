"""Which PKCS#11 implementation serves a token, and what it does differently (docs/tokens.md,
"Tested implementations"). Told apart by CK_INFO.manufacturerID, which each sets to a constant.

Differences the code acts on:
- tpm2-pkcs11: a TPM key has two usage bits, not PKCS#11's six attributes. TPMA_OBJECT_SIGN_ENCRYPT
  is both CKA_SIGN and CKA_ENCRYPT, TPMA_OBJECT_DECRYPT both CKA_DECRYPT and CKA_VERIFY, on both
  halves; a template that sets one of a pair differently from the other (CKA_SIGN TRUE, CKA_ENCRYPT
  FALSE) is refused with CKR_GENERAL_ERROR ("attr mismatch", src/lib/attrs.c), and it knows no
  CKA_WRAP/CKA_UNWRAP. So only the private half's CKA_SIGN/CKA_DECRYPT are given; the rest follow
  (providers/plan.py `for_implementation`). It offers the RSA-PSS mechanisms only when the TPM signs
  with a hash-length salt, the salt a request declares (a TPM that uses the largest salt gets none,
  and the INF is refused before generation); swtpm does. P-521: refused before generation (its
  signatures fail with CKR_HOST_MEMORY in 1.9).
- NSS softokn: C_Initialize needs its configdir init string (token/modules.py, a p11-kit module
  file's x-init-reserved); both of its tokens have serial 0000000000000000; its memory figures are
  placeholders (token/tokeninfo.py); a CK_ULONG attribute must be read into exactly
  sizeof(CK_ULONG) (token/raw.py).
- SoftHSM: its file store can hold half-written objects after a kill (`LEAVES_HUSKS`).
- ykcs11: PIV slots (providers/piv.py).
"""

from __future__ import annotations

SOFTHSM = "softhsm"
NSS_SOFTOKN = "nss-softokn"
TPM2_PKCS11 = "tpm2-pkcs11"
YKCS11 = "ykcs11"
OPENSC = "opensc"
OTHER = "other"

#: implementations whose store can hold a half-written object after a process was killed inside
#: C_GenerateKeyPair (SoftHSM's file store writes an object in steps), and those not known to be
#: safe: every run looks for such husks there (enroll/recovery.py)
LEAVES_HUSKS = frozenset({SOFTHSM, OTHER})

#: CK_INFO.manufacturerID prefixes
_MANUFACTURERS = (
    ("SoftHSM", SOFTHSM),
    ("Mozilla Foundation", NSS_SOFTOKN),
    ("tpm2-software.github.io", TPM2_PKCS11),
    ("Yubico", YKCS11),
    ("OpenSC", OPENSC),
)


def implementation_of(library_manufacturer: str) -> str:
    for prefix, name in _MANUFACTURERS:
        if library_manufacturer.startswith(prefix):
            return name
    return OTHER
