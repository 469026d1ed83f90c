"""One virtual PIV card (a YubiKey 5 look-alike): jcecard's PIV applet plus what it lacks or gets wrong.

Used by tests/peers/pivcard_bridge.py, which feeds it the APDUs pcscd's vpcd reader sends; why each
work-around exists is in tests/peers/piv.py. Everything is in memory: a card lives as long as the
bridge keeps it in its reader.
"""

from __future__ import annotations

import datetime
import functools
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID
from jcecard.apdu import APDUCommand
from jcecard.piv import PIVApplet
from jcecard.piv.data_objects import PIVAlgorithm, PIVKeyData, PIVSlot

#: The ATR of a YubiKey 5 over USB: ykpiv and OpenSC then treat the card as a YubiKey 5.
ATR = bytes.fromhex("3BFD1300008131FE158073C021C057597562694B657940")
PIV_AID = bytes.fromhex("A000000308000010000100")
#: Application property template: AID (PIX part) and the coexistent tag allocation authority.
SELECT_RESPONSE = bytes.fromhex("61114F0600001000010079074F05A000000308")
#: Discovery object: the PIV AID, PIN usage policy "PIV PIN only" (40 00).
DISCOVERY = bytes.fromhex("7E124F0BA0000003080000100001005F2F024000")
DEFAULT_MANAGEMENT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
VERSION = (5, 4, 3)

KEY_SLOTS = frozenset([0x9A, 0x9C, 0x9D, 0x9E, *range(0x82, 0x96)])
ATTESTATION_SLOT = 0xF9
ATTESTATION_OBJECT = bytes.fromhex("5FFF01")
# PIN and touch policies as a YubiKey encodes them
PIN_NEVER, PIN_ONCE, PIN_ALWAYS = 1, 2, 3
TOUCH_NEVER = 1
DEFAULT_PIN_POLICY = {0x9C: PIN_ALWAYS, 0x9E: PIN_NEVER}  # every other slot: PIN_ONCE
ORIGIN_GENERATED, ORIGIN_IMPORTED = 1, 2
YUBICO_OID = "1.3.6.1.4.1.41482.3."

SW_OK = 0x9000
SW_WRONG_LENGTH = 0x6700
SW_SECURITY = 0x6982
SW_BLOCKED = 0x6983
SW_CONDITIONS = 0x6985
SW_WRONG_DATA = 0x6A80
SW_NOT_FOUND = 0x6A82
SW_P1P2 = 0x6A86
SW_NO_REFERENCE = 0x6A88
SW_INS = 0x6D00
SW_UNKNOWN = 0x6F00

CURVES = {PIVAlgorithm.ECC_P256: (ec.SECP256R1(), 32), PIVAlgorithm.ECC_P384: (ec.SECP384R1(), 48)}


# -- BER-TLV -----------------------------------------------------------------------------------------


def ber_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    size = (n.bit_length() + 7) // 8
    return bytes([0x80 | size]) + n.to_bytes(size, "big")


def tlv(tag: int, value: bytes) -> bytes:
    return tag.to_bytes((tag.bit_length() + 7) // 8 or 1, "big") + ber_length(len(value)) + value


def parse_tlvs(data: bytes) -> dict[int, bytes]:
    """Tags of one or two bytes, lengths of any BER form (jcecard reads only short ones)."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        tag = data[i]
        i += 1
        if tag & 0x1F == 0x1F:
            tag = tag << 8 | data[i]
            i += 1
        first = data[i]
        i += 1
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            length = int.from_bytes(data[i : i + count], "big")
            i += count
        if i + length > len(data):
            raise ValueError("TLV runs past its data")
        out[tag] = data[i : i + length]
        i += length
    return out


# -- APDUs -------------------------------------------------------------------------------------------


@dataclass
class Apdu:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    le: int | None
    extended: bool


def parse_apdu(raw: bytes) -> Apdu:
    if len(raw) < 4:
        raise ValueError("APDU shorter than its header")
    body = raw[4:]
    data, le, extended = b"", None, False
    if len(body) == 1:
        le = body[0] or 256
    elif len(body) >= 3 and body[0] == 0:  # extended length
        extended = True
        if len(body) == 3:
            le = int.from_bytes(body[1:3], "big") or 65536
        else:
            lc = int.from_bytes(body[1:3], "big")
            data, rest = body[3 : 3 + lc], body[3 + lc :]
            if len(data) != lc or len(rest) not in (0, 2):
                raise ValueError("bad extended APDU")
            if rest:
                le = int.from_bytes(rest, "big") or 65536
    elif body:
        lc = body[0]
        data, rest = body[1 : 1 + lc], body[1 + lc :]
        if len(data) != lc or len(rest) > 1:
            raise ValueError("bad short APDU")
        if rest:
            le = rest[0] or 256
    return Apdu(raw[0], raw[1], raw[2], raw[3], data, le, extended)


def sw_bytes(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


# -- the card ----------------------------------------------------------------------------------------


class VirtualPiv:
    """A blank PIV card: PIN 123456, PUK 12345678, the given 3DES management key."""

    def __init__(self, serial: int, management_key: bytes | None = None, version: tuple[int, int, int] = VERSION):
        self.applet = PIVApplet()
        self.applet.version = version
        self.applet.serial = serial
        self.applet.selected = True
        key = management_key or DEFAULT_MANAGEMENT_KEY
        if len(key) != 24:
            raise ValueError("the management key is 3DES: 24 bytes")
        self.applet.security.mgmt_key = key
        self.serial = serial
        self.version = version
        self.origin: dict[int, int] = {}
        self.policy: dict[int, tuple[int, int]] = {}
        self.pin_fresh = False  # a VERIFY since the last private key operation (PIN policy "always")
        self._pending = b""  # response chaining: what GET RESPONSE hands out next
        self._chain: tuple[int, int, int, bytes] | None = None  # command chaining: INS, P1, P2, data so far
        self._keys: dict[int, tuple[bytes, object]] = {}  # slot -> (jcecard's PKCS#8, loaded key)
        self._install_attestation_key()

    # jcecard keeps key material as PKCS#8; the bridge does the private key operations itself
    def private_key(self, slot: int):
        data = self.applet.data_objects.get_key(PIVSlot(slot))
        if data is None:
            return None, None
        cached = self._keys.get(slot)
        if cached is None or cached[0] != data.private_key:
            cached = (data.private_key, serialization.load_der_private_key(data.private_key, password=None))
            self._keys[slot] = cached
        return data, cached[1]

    def _install_attestation_key(self) -> None:
        """Slot f9 and object 5fff01, as Yubico ships them (but self-signed)."""
        pkcs8, public, cert = _attestation_identity()
        self.attestation_cert = cert
        self.applet.data_objects.keys[PIVSlot.ATTESTATION] = PIVKeyData(
            algorithm=PIVAlgorithm.RSA_2048, private_key=pkcs8, public_key=public
        )
        self.origin[ATTESTATION_SLOT] = ORIGIN_IMPORTED
        self.policy[ATTESTATION_SLOT] = (PIN_NEVER, TOUCH_NEVER)
        der = cert.public_bytes(serialization.Encoding.DER)
        self.applet.data_objects.put_data_object(ATTESTATION_OBJECT, tlv(0x70, der) + bytes.fromhex("710100FE00"))

    # -- power ---------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Power off, power on and reset: the PIN and management key are no longer verified."""
        self.applet.reset()
        self.applet.selected = True
        self.pin_fresh = False
        self._pending = b""
        self._chain = None

    # -- APDU entry point ----------------------------------------------------------------------------

    def process(self, raw: bytes) -> bytes:
        try:
            apdu = parse_apdu(raw)
        except (ValueError, IndexError):
            return sw_bytes(SW_WRONG_LENGTH)
        if apdu.ins == 0xC0:  # GET RESPONSE
            return self._get_response(apdu)
        self._pending = b""
        if apdu.cla & 0x10:  # command chaining: keep the data, answer when the last part comes
            so_far = b""
            if self._chain and self._chain[:3] == (apdu.ins, apdu.p1, apdu.p2):
                so_far = self._chain[3]
            self._chain = (apdu.ins, apdu.p1, apdu.p2, so_far + apdu.data)
            return sw_bytes(SW_OK)
        if self._chain:
            if self._chain[:3] == (apdu.ins, apdu.p1, apdu.p2):
                apdu.data = self._chain[3] + apdu.data
            self._chain = None
        try:
            data, sw = self._dispatch(apdu)
        except (ValueError, IndexError, KeyError):
            data, sw = b"", SW_WRONG_DATA
        return self._respond(data, sw, apdu)

    def _respond(self, data: bytes, sw: int, apdu: Apdu) -> bytes:
        """Response chaining: at most Le (256 for short APDUs) bytes now, 61xx and GET RESPONSE for the rest."""
        limit = apdu.le if apdu.le is not None else (65536 if apdu.extended else 256)
        if not apdu.extended:
            limit = min(limit, 256)
        if len(data) <= limit:
            return data + sw_bytes(sw)
        self._pending = data[limit:]
        return data[:limit] + bytes([0x61, min(len(self._pending), 256) & 0xFF])

    def _get_response(self, apdu: Apdu) -> bytes:
        if not self._pending:
            return sw_bytes(SW_CONDITIONS)
        limit = min(apdu.le or 256, 256) if not apdu.extended else (apdu.le or 65536)
        data, self._pending = self._pending[:limit], self._pending[limit:]
        if self._pending:
            return data + bytes([0x61, min(len(self._pending), 256) & 0xFF])
        return data + sw_bytes(SW_OK)

    def _dispatch(self, apdu: Apdu) -> tuple[bytes, int]:
        handler = {
            0xA4: self._select,
            0x20: self._verify,
            0xCB: self._get_data,
            0xDB: self._put_data,
            0x47: self._generate,
            0x87: self._general_authenticate,
            0xFD: lambda a: (bytes(self.version), SW_OK),
            0xF8: lambda a: (self.serial.to_bytes(4, "big"), SW_OK),
            0xF7: self._metadata,
            0xF9: self._attest,
            0xFF: self._set_management_key,
        }.get(apdu.ins)
        if handler is not None:
            return handler(apdu)
        if apdu.ins in (0x24, 0x2C):  # CHANGE REFERENCE DATA, RESET RETRY COUNTER: jcecard's own
            return self._jcecard(apdu)
        return b"", SW_INS

    def _jcecard(self, apdu: Apdu) -> tuple[bytes, int]:
        command = APDUCommand(cla=0, ins=apdu.ins, p1=apdu.p1, p2=apdu.p2, data=apdu.data, le=apdu.le)
        response = self.applet.process_apdu(command)
        return response.data, response.sw

    # -- commands ------------------------------------------------------------------------------------

    def _select(self, apdu: Apdu) -> tuple[bytes, int]:
        # jcecard knows only the bare RID, answers without the 61 template and forgets the PIN
        if apdu.p1 == 0x04 and len(apdu.data) >= 5 and PIV_AID.startswith(apdu.data):
            return SELECT_RESPONSE, SW_OK
        return b"", SW_NOT_FOUND

    def _verify(self, apdu: Apdu) -> tuple[bytes, int]:
        security = self.applet.security
        if apdu.p2 == 0x80 and apdu.p1 == 0xFF and not apdu.data:  # SP 800-73-4: reset the verified state
            security.pin_verified = False
            self.pin_fresh = False
            return b"", SW_OK
        if apdu.p2 == 0x80 and not apdu.data:
            if security.pin_retries_remaining == 0:
                return b"", SW_BLOCKED
            if security.pin_verified:
                return b"", SW_OK
        if apdu.p2 == 0x80 and apdu.data and security.pin_retries_remaining == 0:
            return b"", SW_BLOCKED
        data, sw = self._jcecard(apdu)
        if apdu.p2 == 0x80 and apdu.data:
            self.pin_fresh = sw == SW_OK
        return data, sw

    def _get_data(self, apdu: Apdu) -> tuple[bytes, int]:
        if apdu.p1 != 0x3F or apdu.p2 != 0xFF:
            return b"", SW_P1P2
        tag = parse_tlvs(apdu.data).get(0x5C)
        if tag is None:
            return b"", SW_WRONG_DATA
        if tag == b"\x7e":
            return DISCOVERY, SW_OK
        data, sw = self._jcecard(apdu)
        if sw == SW_OK and data in (b"", b"\x53\x00"):  # written empty: deleted
            return b"", SW_NOT_FOUND
        return data, sw

    def _put_data(self, apdu: Apdu) -> tuple[bytes, int]:
        if not self.applet.security.mgmt_authenticated:
            return b"", SW_SECURITY
        fields = parse_tlvs(apdu.data)
        if 0x5C not in fields or 0x53 not in fields:
            return b"", SW_WRONG_DATA
        if fields[0x5C] in (b"\x7e", ATTESTATION_OBJECT):
            return b"", SW_SECURITY
        self.applet.data_objects.put_data_object(fields[0x5C], fields[0x53])
        return b"", SW_OK

    def _generate(self, apdu: Apdu) -> tuple[bytes, int]:
        if apdu.p2 not in KEY_SLOTS:
            return b"", SW_P1P2
        if not self.applet.security.mgmt_authenticated:
            return b"", SW_SECURITY
        template = parse_tlvs(apdu.data).get(0xAC)
        if template is None:
            return b"", SW_WRONG_DATA
        fields = parse_tlvs(template)
        algorithm = fields.get(0x80, b"")
        if len(algorithm) != 1 or algorithm[0] not in (0x06, 0x07, 0x11, 0x14):
            return b"", SW_P1P2
        pin = fields.get(0xAA, b"\x00")[0] or DEFAULT_PIN_POLICY.get(apdu.p2, PIN_ONCE)
        touch = fields.get(0xAB, b"\x00")[0] or TOUCH_NEVER
        # jcecard parses the template itself: hand it only the algorithm
        command = Apdu(0, 0x47, 0, apdu.p2, tlv(0xAC, tlv(0x80, algorithm)), None, False)
        data, sw = self._jcecard(command)
        if sw == SW_OK:
            self.origin[apdu.p2] = ORIGIN_GENERATED
            self.policy[apdu.p2] = (pin, touch)
            self._keys.pop(apdu.p2, None)
        return data, sw

    def _general_authenticate(self, apdu: Apdu) -> tuple[bytes, int]:
        if apdu.p2 == 0x9B:  # management key: jcecard's 3DES witness/challenge
            if apdu.p1 not in (0x00, 0x03):
                return b"", SW_P1P2
            return self._jcecard(apdu)
        if apdu.p2 not in KEY_SLOTS:
            return b"", SW_P1P2
        key_data, key = self.private_key(apdu.p2)
        if key_data is None:
            return b"", SW_NO_REFERENCE
        if apdu.p1 != key_data.algorithm:
            return b"", SW_P1P2
        pin_policy = self.policy.get(apdu.p2, (DEFAULT_PIN_POLICY.get(apdu.p2, PIN_ONCE), TOUCH_NEVER))[0]
        verified = self.applet.security.pin_verified
        if (pin_policy == PIN_ONCE and not verified) or (
            pin_policy == PIN_ALWAYS and not (verified and self.pin_fresh)
        ):
            return b"", SW_SECURITY
        template = parse_tlvs(apdu.data).get(0x7C)
        if template is None:
            return b"", SW_WRONG_DATA
        fields = parse_tlvs(template)
        if fields.get(0x82) != b"":
            return b"", SW_WRONG_DATA
        if 0x81 in fields:
            result = self._sign(key_data, key, fields[0x81])
        elif 0x85 in fields and key_data.algorithm in CURVES:
            result = self._ecdh(key_data, key, fields[0x85])
        else:
            return b"", SW_WRONG_DATA
        if result is None:
            return b"", SW_WRONG_DATA
        self.pin_fresh = False
        return tlv(0x7C, tlv(0x82, result)), SW_OK

    @staticmethod
    def _sign(key_data: PIVKeyData, key, challenge: bytes) -> bytes | None:
        if isinstance(key, rsa.RSAPrivateKey):  # the raw operation on the whole block: the host pads
            numbers = key.private_numbers()
            n = numbers.public_numbers.n
            size = (n.bit_length() + 7) // 8
            m = int.from_bytes(challenge, "big")
            if len(challenge) > size or m >= n:
                return None
            m1 = pow(m, numbers.dmp1, numbers.p)
            m2 = pow(m, numbers.dmq1, numbers.q)
            h = numbers.iqmp * (m1 - m2) % numbers.p
            return (m2 + h * numbers.q).to_bytes(size, "big")
        # ECDSA on a hash of any length: its leftmost bits, as many as the order has (FIPS 186-4)
        size = CURVES[PIVAlgorithm(key_data.algorithm)][1]
        digest = challenge[:size].rjust(size, b"\x00")
        prehashed = Prehashed(hashes.SHA256() if size == 32 else hashes.SHA384())
        return key.sign(digest, ec.ECDSA(prehashed))

    @staticmethod
    def _ecdh(key_data: PIVKeyData, key, point: bytes) -> bytes | None:
        curve = CURVES[PIVAlgorithm(key_data.algorithm)][0]
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        except ValueError:
            return None
        return key.exchange(ec.ECDH(), peer)

    def _metadata(self, apdu: Apdu) -> tuple[bytes, int]:
        """Yubico's GET METADATA (firmware 5.3+): ykcs11 shows a key without a certificate from it."""
        security = self.applet.security
        if apdu.p2 == 0x9B:
            default = security.mgmt_key == DEFAULT_MANAGEMENT_KEY
            return tlv(0x01, b"\x03") + tlv(0x02, b"\x00\x01") + tlv(0x05, bytes([default])), SW_OK
        if apdu.p2 in (0x80, 0x81):
            pin = apdu.p2 == 0x80
            default = security.pin == b"123456" if pin else security.puk == b"12345678"
            total = security.pin_retries if pin else security.puk_retries
            left = security.pin_retries_remaining if pin else security.puk_retries_remaining
            return tlv(0x05, bytes([default])) + tlv(0x06, bytes([total, left])), SW_OK
        if apdu.p2 not in KEY_SLOTS and apdu.p2 != ATTESTATION_SLOT:
            return b"", SW_P1P2
        key_data = self.applet.data_objects.get_key(PIVSlot(apdu.p2))
        if key_data is None:
            return b"", SW_NO_REFERENCE
        pin, touch = self.policy.get(apdu.p2, (DEFAULT_PIN_POLICY.get(apdu.p2, PIN_ONCE), TOUCH_NEVER))
        public = parse_tlvs(key_data.public_key)[0x7F49]
        data = (
            tlv(0x01, bytes([key_data.algorithm]))
            + tlv(0x02, bytes([pin, touch]))
            + tlv(0x03, bytes([self.origin.get(apdu.p2, ORIGIN_IMPORTED)]))
            + tlv(0x04, public)
        )
        return data, SW_OK

    def _attest(self, apdu: Apdu) -> tuple[bytes, int]:
        """Yubico's ATTEST: a certificate for a generated key, signed by the key in slot f9."""
        slot = apdu.p1
        if slot not in KEY_SLOTS:
            return b"", SW_P1P2
        key_data, key = self.private_key(slot)
        if key_data is None:
            return b"", SW_NO_REFERENCE
        if self.origin.get(slot) != ORIGIN_GENERATED:
            return b"", SW_WRONG_DATA
        _, attestation_key = self.private_key(ATTESTATION_SLOT)
        pin, touch = self.policy[slot]
        issuer = self.attestation_cert
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"YubiKey PIV Attestation {slot:02x}")]))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(int.from_bytes(os.urandom(16), "big") >> 1)
            .not_valid_before(issuer.not_valid_before_utc)
            .not_valid_after(issuer.not_valid_after_utc)
        )
        for suffix, value in (
            ("3", bytes(self.version)),
            ("7", _der_integer(self.serial)),
            ("8", bytes([pin, touch])),
            ("9", b"\x01"),
        ):
            oid = x509.ObjectIdentifier(YUBICO_OID + suffix)
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
        cert = builder.sign(attestation_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.DER), SW_OK

    def _set_management_key(self, apdu: Apdu) -> tuple[bytes, int]:
        """Yubico's SET MANAGEMENT KEY (3DES only, like jcecard's authentication)."""
        if apdu.p1 != 0xFF or apdu.p2 not in (0xFE, 0xFF):
            return b"", SW_P1P2
        if not self.applet.security.mgmt_authenticated:
            return b"", SW_SECURITY
        data = apdu.data
        if len(data) != 27 or data[:3] != b"\x03\x9b\x18":
            return b"", SW_WRONG_DATA
        self.applet.security.mgmt_key = data[3:]
        return b"", SW_OK


@functools.cache
def _attestation_identity() -> tuple[bytes, bytes, x509.Certificate]:
    """One RSA-2048 attestation key and certificate per bridge process (generating one per card would
    cost ~0.1 s a card); every card's f9 slot holds it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Virtual YubiKey PIV Attestation")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    numbers = key.public_key().public_numbers()
    public = tlv(0x7F49, tlv(0x81, numbers.n.to_bytes(256, "big")) + tlv(0x82, numbers.e.to_bytes(3, "big")))
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pkcs8, public, cert


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return b"\x02" + ber_length(len(body)) + body
