"""Known cards by ATR, for `tokenagent readers`.

Each entry is written as in pcsc-tools' smartcard_list.txt (Ludovic Rousseau, GPL-2.0+; Debian
package pcsc-tools 1.6.2-1, /usr/share/pcsc/smartcard_list.txt): the ATR's bytes in hex, ``..``
for a byte that varies between cards of the kind (a ``.`` alone is one varying hex digit), matched
against the whole ATR. `atr` and `mask` are the same pattern as bytes: an ATR matches when
``atr_byte & mask == entry.atr & mask`` for every byte and the lengths agree (OpenSC's card_atr
"atr:mask" convention). Every pattern and name below is copied from that file; the comment after
each entry gives its line number there, so an entry can be checked (tests/test_readers.py does when
the file is installed). Nothing here is invented: a card not in this table is "unknown", not guessed.

The family is ours: the kind of card that tokenagent handles the same way (a YubiKey's PIV applet
through ykcs11, an IDPrime through its own module or OpenSC, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Where the patterns come from, for the JSON output and the docs.
SOURCE = "pcsc-tools smartcard_list.txt (1.6.2)"


@dataclass(frozen=True)
class KnownCard:
    pattern: str  # smartcard_list.txt form: "3B FD 13 .. 00"
    name: str  # the first description line of the entry
    family: str  # YubiKey, PIV, IDPrime, CardOS, SmartCard-HSM, OpenPGP, Nitrokey
    line: int  # line of the pattern in smartcard_list.txt 1.6.2

    @property
    def atr(self) -> bytes:
        return bytes.fromhex("".join(pair.replace(".", "0") for pair in self.pattern.split()))

    @property
    def mask(self) -> bytes:
        return bytes.fromhex("".join("".join("0" if c == "." else "F" for c in pair) for pair in self.pattern.split()))

    def matches(self, atr: bytes) -> bool:
        expected, mask = self.atr, self.mask
        return len(atr) == len(expected) and all(a & m == e & m for a, e, m in zip(atr, expected, mask, strict=True))


# Order matters only where patterns overlap: the first match wins, so exact entries come before
# the wildcard ones of the same family.
KNOWN_CARDS: tuple[KnownCard, ...] = (
    # YubiKey (USB over CCID, and over NFC readers)
    KnownCard(
        "3B FD 13 00 00 81 31 FE 15 80 73 C0 21 C0 57 59 75 62 69 4B 65 79 40",
        "Yubico YubiKey 5 NFC (PKI)",
        "YubiKey",
        12745,
    ),
    KnownCard(
        "3B 8D 80 01 80 73 C0 21 C0 57 59 75 62 69 4B 65 79 F9", "Yubikey 5 NFC (via NFC) (Other)", "YubiKey", 7207
    ),
    KnownCard("3B F8 13 00 00 81 31 FE 15 59 75 62 69 6B 65 79 34 D4", "Yubico Yubikey 4 OTP+CCID", "YubiKey", 12236),
    KnownCard(
        "3B FC 13 00 00 81 31 FE 15 59 75 62 69 6B 65 79 4E 45 4F 72 33 E1", "YubiKey NEO (PKI)", "YubiKey", 12690
    ),
    # PIV cards
    KnownCard(
        "3B 7D 96 00 00 80 31 80 65 B0 83 11 17 E5 83 00 90 00", "Gemalto IDPrime PIV Card2.0 (eID)", "PIV", 4925
    ),
    # Thales (Gemalto) IDPrime
    KnownCard(
        "3B 7F 96 00 00 80 31 80 65 B0 84 61 60 FB 12 0F FD 82 90 00",
        "IDPrime 930/3930 FIPS Level 2 or Level 3 (T=0 CT=96) (BAI1, BAI2, BAI3, BAI5, BAI7) (PKI)",
        "IDPrime",
        5471,
    ),
    KnownCard(
        "3B 7F .. 00 00 80 31 80 65 B0 .. .. .. .. 12 0F FE 82 90 00",
        "IDPrime MD 8840, 3840, 3810, 840 and 830 Cards T=0",
        "IDPrime",
        5050,
    ),
    KnownCard(
        "3B FF .. 00 00 81 31 .. 43 80 31 80 65 B0 .. .. .. .. 12 0F FE 82 90 00 ..",
        "IDPrime MD 8840, 3840, 3810, 840 and 830 Cards T=1",
        "IDPrime",
        12963,
    ),
    # Atos (Eviden) CardOS
    KnownCard("3B D2 18 00 81 31 FE 58 C9 01 14", "Atos CardOS5 (PKI)", "CardOS", 10687),
    KnownCard("3B D2 18 00 81 31 FE 58 C9 02 17", "Atos CardOS 5.3 (PKI)", "CardOS", 10691),
    KnownCard("3B D2 18 00 81 31 FE 58 CA 60 76", "CardOS IoT V5.4 (PKI)", "CardOS", 10702),
    KnownCard("3B F2 18 00 02 C1 0A 31 FE 58 C8 08 74", "Siemens CardOS V4.3B", "CardOS", 12007),
    # CardContact SmartCard-HSM (also inside the Nitrokey HSM)
    KnownCard(
        "3B FE 18 00 00 81 31 FE 45 80 31 81 54 48 53 4D 31 73 80 21 40 81 07 FA",
        "Smartcard-HSM",
        "SmartCard-HSM",
        12900,
    ),
    KnownCard(
        "3B DE 18 FF 81 91 FE 1F C3 80 31 81 54 48 53 4D 31 73 80 21 40 81 07 1C",
        "SmartCard-HSM 4K USB-Token (JavaCard)",
        "SmartCard-HSM",
        11186,
    ),
    KnownCard(
        "3B 8E 80 01 80 31 81 54 48 53 4D 31 73 80 21 40 81 07 18",
        "Smartcard-HSM (Contactless Interface) (PKI)",
        "SmartCard-HSM",
        7301,
    ),
    # OpenPGP cards
    KnownCard("3B DA 18 FF 81 B1 FE 75 1F 03 00 31 C5 73 C0 01 40 00 90 00 0C", "OpenPGP Card V2", "OpenPGP", 10878),
    KnownCard("3B DA 18 FF 81 B1 FE 75 1F 03 00 31 F5 73 C0 01 60 00 90 00 1C", "OpenPGP Card V3", "OpenPGP", 10881),
    KnownCard(
        "3B DA 11 FF 81 B1 FE 55 1F 03 00 31 84 73 80 01 80 00 90 00 E4", "Gnuk OpenPGP Token (PKI)", "OpenPGP", 10847
    ),
    # Nitrokey
    KnownCard(
        "3B DA 11 FF 81 B1 FE 55 1F 03 00 31 84 73 80 01 80 05 90 00 E1",
        "Nitrokey Start (Openpgp USB) (Other)",
        "Nitrokey",
        10851,
    ),
    KnownCard(
        "3B 8C 01 80 5A 4E 69 74 72 6F 6B 65 79 20 33 7D",
        '"Nitrokey 3C NFC" USB authentication and security token (Other)',
        "Nitrokey",
        6742,
    ),
)


def identify(atr: bytes) -> KnownCard | None:
    """The first entry whose pattern matches the whole ATR, or None."""
    return next((card for card in KNOWN_CARDS if card.matches(atr)), None)


def atr_text(atr: bytes) -> str:
    """An ATR as pcsc_scan and smartcard_list.txt print it: upper-case hex, bytes apart."""
    return " ".join(f"{byte:02X}" for byte in atr)
