"""Fuzzing every command that reads a file: bad input is a one-line `TokenAgentError`, never a crash.

Seeds come from the real tools, once for the module: a PKCS#10 from `tokenagent new` on ta-user
and one from openssl (RSA-PSS, many extensions and attributes), a certificate, a .p7b and CMC
responses (success, pending) from tests/ca.py's OpenSslCA, a PKCS7 and a CMC request from
`tokenagent sign`, and the INF documents in tests/data/inf/seeds/.

Mutations: truncations at many lengths, bit flips, byte edits, DER-aware edits on the TLV tree
(tags, contents, lengths, dropped, doubled and foreign elements, also inside OCTET STRINGs and BIT
STRINGs that hold DER, such as an eContent or an extnValue), hostile inputs (10,000 nested
SEQUENCEs or constructed OCTET STRINGs, outside and inside an eContent, deeply nested INF-like
text, every seed where another kind is expected, empty files, PEM with a wrong label, UTF-16
text, 4 MiB of base64) and, with hypothesis, sequences of the edits above.

The bulk runs in-process against the library functions behind the commands, and each mutation
must either pass or raise a `TokenAgentError` subclass other than the bare class (exit code 1,
"internal error"). A sample of a few dozen inputs per command then goes through the real CLI in
child processes (`conftest.run_cli`), which must exit with a documented code and print exactly one
`tokenagent: error:` line and nothing Python-made (no traceback, no warning text).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asn1crypto import core
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ca import OpenSslCA, openssl
from tests.conftest import USER_PIN, SoftHSM, run_cli
from tokenagent.display import dn_text
from tokenagent.enroll.agent import Agent, check_agent_certificate
from tokenagent.enroll.linkage import (
    certificate_spki,
    certificate_summary,
    display_name,
    load_certificate,
    usage_warnings,
    validity_warnings,
)
from tokenagent.enroll.new import NewOptions, prepare
from tokenagent.enroll.revoke import target_from_certificate
from tokenagent.enroll.sign import co_sign
from tokenagent.errors import InputError, PolicyError, TokenAgentError, VerificationError
from tokenagent.inf.policy import parse_policy
from tokenagent.inputs import MAX_INPUT_BYTES
from tokenagent.providers.plan import plan_key
from tokenagent.providers.registry import ProviderRegistry
from tokenagent.request.algorithms import SignatureAlgorithm
from tokenagent.request.armor import read_der
from tokenagent.request.dump import describe, render
from tokenagent.request.inspect import inspect_request
from tokenagent.request.oids import OID_PKI_DATA, OID_PKI_RESPONSE, OID_REG_INFO, OID_STATUS_INFO_V2
from tokenagent.request.pkcs10 import planned_contents
from tokenagent.request.response import read_response
from tokenagent.request.signed_data import encapsulated
from tokenagent.request.signer import SoftwareSigner

# cryptography warns about what it reads in damaged certificates (a serial number of 0, an empty
# CN): expected here (the CLI prints them as one-line tokenagent warnings)
pytestmark = [
    pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning"),
]

AGENT_TOKEN = "ta-agent"
AGENT_LABEL = "agent-fuzz"
USER_TOKEN = "ta-user"
REQUESTER = "EXAMPLE\\fuzz"
SEED_INFS = sorted((Path(__file__).parent / "data" / "inf" / "seeds").glob("*.inf"))
OID_DATA = "1.2.840.113549.1.7.1"
OID_SIGNED_DATA = "1.2.840.113549.1.7.2"


def cli(softhsm: SoftHSM, *args: str):
    return run_cli(*args, env=softhsm.env(PIN=USER_PIN))


# -- a DER tree to edit (lengths are recomputed when it is encoded again) -------------------------


@dataclass
class Node:
    tag: int  # single-byte identifiers only: all the seeds use
    content: bytes = b""  # primitive contents, when ``children`` is None
    children: list[Node] | None = None
    prefix: bytes = b""  # the unused-bits octet of a BIT STRING that holds DER
    length_form: str = "der"  # der | long (a non-minimal length) | indefinite (BER)

    def encode(self) -> bytes:
        body = self.content if self.children is None else self.prefix + b"".join(c.encode() for c in self.children)
        if self.length_form == "indefinite" and self.tag & 0x20:
            return bytes([self.tag, 0x80]) + body + b"\x00\x00"
        if self.length_form == "long":
            return bytes([self.tag, 0x84]) + len(body).to_bytes(4, "big") + body
        return bytes([self.tag]) + der_length(len(body)) + body

    def walk(self) -> Iterator[tuple[Node, Node | None]]:
        """Every node with its parent, this one first."""
        stack: list[tuple[Node, Node | None]] = [(self, None)]
        while stack:
            node, parent = stack.pop()
            yield node, parent
            stack.extend((child, node) for child in reversed(node.children or []))


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_length(len(content)) + content


def parse_tree(data: bytes, depth: int = 0) -> list[Node]:
    """DER to nodes; primitive OCTET and BIT STRINGs holding complete DER are opened as well."""
    nodes, offset = [], 0
    while offset < len(data):
        tag = data[offset]
        if tag & 0x1F == 0x1F or offset + 2 > len(data):
            raise ValueError("not for this tree")
        first = data[offset + 1]
        offset += 2
        length = first
        if first & 0x80:
            count = first & 0x7F
            if not 0 < count <= 4:
                raise ValueError("not for this tree")
            length = int.from_bytes(data[offset : offset + count], "big")
            offset += count
        content = data[offset : offset + length]
        if len(content) != length:
            raise ValueError("truncated")
        offset += length
        node = Node(tag, content)
        if tag & 0x20 and depth < 40:
            node.children, node.content = parse_tree(content, depth + 1), b""
        elif tag in (0x03, 0x04) and depth < 40:
            prefix = content[:1] if tag == 0x03 else b""
            inner = content[len(prefix) :]
            if prefix in (b"", b"\x00") and inner[:1] in (b"\x30", b"\x31", b"\x04", b"\x0c", b"\x1e", b"\x02"):
                with contextlib.suppress(ValueError):  # not DER after all: keep the bytes
                    node.children, node.prefix, node.content = parse_tree(inner, depth + 1), prefix, b""
        nodes.append(node)
    return nodes


def tree(der: bytes) -> Node:
    nodes = parse_tree(der)
    assert len(nodes) == 1
    return nodes[0]


# -- mutations -------------------------------------------------------------------------------------

TAGS = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x16, 0x17, 0x18, 0x1E, 0x24, 0x30, 0x31, 0x80, 0xA0, 0xA3]
ODD_CONTENTS = [
    b"",
    b"\x00",
    b"\x80",
    b"\xff" * 9,
    b"\x00\x00",
    b"\x80" + b"\x00" * 300,  # a huge (or negative) INTEGER
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f",  # an OID arc of 63+ bits
    b"\x2a\x86",  # an OID cut in the middle of an arc
    b"991231235960Z",  # second 60
    b"20501301000000Z",  # month 13
    b"\xc3\x28",  # not UTF-8
    b"\x00\x00\x00",  # BMPString of odd length
    "\u202eevil\x00".encode(),
]


def edit_tree(rng: random.Random, der: bytes, donors: list[bytes]) -> bytes:
    """One DER-aware edit: the result is well-formed DER whenever the edit keeps it so."""
    try:
        root = tree(der)
    except (ValueError, AssertionError):
        return flip_bits(rng, der)
    nodes = list(root.walk())
    node, parent = rng.choice(nodes)
    kind = rng.randrange(9)
    if kind == 0:
        node.tag = rng.choice(TAGS)
    elif kind == 1:
        node.children, node.content = None, rng.choice(ODD_CONTENTS)
    elif kind == 2 and node.children is None and node.content:
        content = bytearray(node.content)
        content[rng.randrange(len(content))] = rng.randrange(256)
        node.content = bytes(content)
    elif kind == 3 and parent is not None and parent.children:
        parent.children.remove(node)
    elif kind == 4 and parent is not None and parent.children:
        parent.children.insert(parent.children.index(node), Node(node.tag, node.content, node.children, node.prefix))
    elif kind == 5 and parent is not None and parent.children:
        donor = rng.choice(donors)
        try:
            candidates = [n for n, _ in tree(donor).walk()]
        except (ValueError, AssertionError):
            candidates = []
        if candidates:
            parent.children[parent.children.index(node)] = rng.choice(candidates)
    elif kind == 6 and node.children and len(node.children) > 1:
        rng.shuffle(node.children)
    elif kind == 7:
        node.length_form = rng.choice(["long", "indefinite"])
    elif kind == 8:  # wrap the element in more of the same
        wrapped = Node(node.tag, node.content, node.children, node.prefix)
        node.tag, node.children, node.content, node.prefix = 0x30, [wrapped] * rng.randint(1, 3), b"", b""
    return root.encode()


def flip_bits(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return b"\x30"
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def edit_bytes(rng: random.Random, data: bytes) -> bytes:
    if len(data) < 2:
        return data + bytes([rng.randrange(256)])
    i = rng.randrange(len(data))
    kind = rng.randrange(4)
    if kind == 0:
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]
    if kind == 1:
        return data[:i] + rng.randbytes(rng.randint(1, 8)) + data[i:]
    if kind == 2:
        return data[:i] + data[i + rng.randint(1, 16) :]
    return data[:i] + data[i:][::-1][: rng.randint(1, 40)] + data[i:]


def pem(der: bytes, label: str) -> bytes:
    text = base64.b64encode(der).decode()
    body = "\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode()


def wrap(rng: random.Random, der: bytes) -> bytes:
    """The same bytes in another form read_der accepts (or nearly accepts)."""
    kind = rng.randrange(6)
    if kind == 0:
        return pem(der, rng.choice(["CERTIFICATE", "NEW CERTIFICATE REQUEST", "PKCS7", "PRIVATE KEY", "X"]))
    if kind == 1:
        return pem(der, "CERTIFICATE").decode().encode(rng.choice(["utf-16", "utf-16-le", "utf-16-be"]))
    if kind == 2:
        return base64.b64encode(der)
    if kind == 3:
        return pem(der, "CERTIFICATE").replace(b"-----END CERTIFICATE", b"-----END CERTIFICATE REQUEST")
    if kind == 4:
        return b"\xef\xbb\xbf" + pem(der, "CERTIFICATE")[: rng.randrange(20, 200)]
    return pem(der, "CERTIFICATE") * 2


def truncations(data: bytes, count: int) -> list[bytes]:
    """Cuts at ``count`` lengths spread over the input, plus the first and the last few bytes."""
    step = max(1, len(data) // count)
    lengths = set(range(0, len(data), step)) | set(range(1, 6)) | {len(data) - k for k in range(1, 6)}
    return [data[:n] for n in sorted(lengths) if 0 <= n < len(data)]


def mutants(seeds: dict[str, bytes], rng: random.Random, per_seed: int) -> list[tuple[str, bytes]]:
    """(description, bytes): truncations, bit flips, byte edits, tree edits, wrapped forms."""
    donors = list(seeds.values())
    found: list[tuple[str, bytes]] = []
    for name, der in seeds.items():
        found += [(f"{name} cut to {len(cut)}", cut) for cut in truncations(der, per_seed // 4)]
        for number in range(per_seed):
            data, steps = der, []
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                kind = rng.randrange(10)
                if kind < 2:
                    data, step = flip_bits(rng, data), "bits"
                elif kind < 3:
                    data, step = edit_bytes(rng, data), "bytes"
                else:
                    data, step = edit_tree(rng, data, donors), "tree"
                steps.append(step)
            if rng.random() < 0.1:
                data, steps = wrap(rng, data), [*steps, "wrap"]
            found.append((f"{name} #{number} ({'+'.join(steps)})", data))
    return found


# -- hostile inputs -----------------------------------------------------------------------------------


def nest(tag: int, depth: int, inner: bytes = b"\x05\x00") -> bytes:
    for _ in range(depth):
        inner = tlv(tag, inner)
    return inner


def oid(dotted: str) -> bytes:
    return core.ObjectIdentifier(dotted).dump()


def signed_data(econtent_type: str, econtent: bytes | None, certificates: bytes = b"", signers: bytes = b"") -> bytes:
    """ContentInfo(signedData v3) around ``econtent``, without SignerInfos unless given."""
    content = tlv(0xA0, tlv(0x04, econtent)) if econtent is not None else b""
    signed = b"\x02\x01\x03" + tlv(0x31, b"") + tlv(0x30, oid(econtent_type) + content)
    signed += tlv(0xA0, certificates) if certificates else b""
    return tlv(0x30, oid(OID_SIGNED_DATA) + tlv(0xA0, tlv(0x30, signed + tlv(0x31, signers))))


def pki_body(control_type: str, value: bytes, *, request: bool) -> bytes:
    """PKIData (four sequences) or PKIResponse (three) with one control of ``control_type``."""
    control = tlv(0x30, b"\x02\x01\x01" + oid(control_type) + tlv(0x31, value))
    return tlv(0x30, tlv(0x30, control) + tlv(0x30, b"") * (3 if request else 2))


def replace_at(der: bytes, path: list[int], change: Callable[[Node], None]) -> bytes:
    root = tree(der)
    node = root
    for index in path:
        assert node.children is not None
        node = node.children[index]
    change(node)
    return root.encode()


def add_request_attribute(request: bytes, attribute_type: str, value: bytes) -> bytes:
    def add(info: Node) -> None:
        assert info.children is not None
        attributes = info.children[3]
        assert attributes.children is not None
        attributes.children.append(
            Node(0x30, children=tree(tlv(0x30, oid(attribute_type) + tlv(0x31, value))).children)
        )

    return replace_at(request, [0], add)


def set_content(content: bytes) -> Callable[[Node], None]:
    def change(node: Node) -> None:
        node.children, node.content = None, content

    return change


def set_tag(tag: int) -> Callable[[Node], None]:
    def change(node: Node) -> None:
        node.tag = tag

    return change


def set_extension_value(extension_type: str, value: bytes) -> Callable[[Node], None]:
    """Replace the extnValue of the extension ``extension_type`` of a certificate's [3] node."""

    def change(node: Node) -> None:
        assert node.children is not None and node.children[0].children is not None
        for extension in node.children[0].children:
            assert extension.children is not None
            if extension.children[0].content == oid(extension_type)[2:]:
                extension.children[-1] = Node(0x04, value)
                return
        raise AssertionError(f"no extension {extension_type}")

    return change


def duplicate_last_extension(node: Node) -> None:
    assert node.children is not None
    extensions = node.children[0]  # [3] EXPLICIT { Extensions }
    assert extensions.children is not None
    extensions.children.append(extensions.children[-1])


def hostile(seeds: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Inputs built on purpose: deep nesting, wrong types, odd encodings; each crash found stays here."""
    deep = nest(0x30, 10_000)
    deep_octets = nest(0x24, 10_000, b"\x04\x01\x00")
    csr, cert = seeds["pkcs10-openssl"], seeds["certificate"]
    cases = [
        ("empty file", b""),
        ("blank lines", b" \r\n\t\n"),
        ("one byte", b"\x30"),
        ("NUL bytes", b"\x00" * 64),
        ("random bytes", random.Random(7).randbytes(3000)),
        ("10,000 nested SEQUENCEs", deep),
        ("10,000 nested constructed OCTET STRINGs", deep_octets),
        ("10,000 nested SEQUENCEs as PEM", pem(deep, "CERTIFICATE")),
        ("10,000 nested SEQUENCEs in a PKCS7 eContent", signed_data(OID_DATA, deep)),
        ("10,000 nested SEQUENCEs as PKIData", signed_data(OID_PKI_DATA, deep)),
        ("10,000 nested SEQUENCEs as PKIResponse", signed_data(OID_PKI_RESPONSE, deep)),
        ("constructed OCTET STRINGs as PKIResponse", signed_data(OID_PKI_RESPONSE, deep_octets)),
        # found: RecursionError in read_response (`.native` over an unknown control's ANY value)
        (
            "a PKIResponse control nested 5,000 deep",
            signed_data(OID_PKI_RESPONSE, pki_body("1.2.3.4", nest(0x30, 5000), request=False)),
        ),
        (
            "statusInfoV2 nested 5,000 deep",
            signed_data(OID_PKI_RESPONSE, pki_body(OID_STATUS_INFO_V2, nest(0x30, 5000), request=False)),
        ),
        (
            "regInfo of nested OCTET STRINGs",
            signed_data(OID_PKI_DATA, pki_body(OID_REG_INFO, nest(0x24, 5000, b"\x04\x01a"), request=True)),
        ),
        (
            "an OS version attribute nested 5,000 deep in an eContent",
            signed_data(OID_DATA, add_request_attribute(csr, "1.3.6.1.4.1.311.13.2.3", nest(0x30, 5000))),
        ),
        (
            "an unknown attribute nested 5,000 deep in an eContent",
            signed_data(OID_DATA, add_request_attribute(csr, "1.2.3.4", nest(0x30, 5000))),
        ),
        # found: IndexError in inspect_request (a PKCS7 request without SignerInfos)
        ("a PKCS7 request without SignerInfos", signed_data(OID_DATA, seeds["pkcs10-token"])),
        (
            "a CMC request without SignerInfos",
            signed_data(OID_PKI_DATA, encapsulated(seeds["cmc-request"], "seed")[1]),
        ),
        # found: AttributeError ('int' has no lstrip) for a version asn1crypto has no name for
        (
            "a PKCS7 request of SignedData version 7",
            replace_at(seeds["pkcs7-request"], [1, 0, 0], set_content(b"\x07")),
        ),
        (
            "a CMC request whose SignerInfo has version 9",
            replace_at(seeds["cmc-request"], [1, 0, -1, 0, 0], set_content(b"\x09")),
        ),
        ("a signedData without eContent", signed_data(OID_PKI_RESPONSE, None)),
        ("a certs-only bag with a PKCS#10 for a certificate", signed_data(OID_DATA, b"", tlv(0x30, b"") + csr)),
        # found: x509.InvalidVersion from cryptography's CSR loader (describe, inspect_request)
        ("a PKCS#10 of version 26", replace_at(csr, [0, 0], set_content(b"\x1a"))),
        (
            "a PKCS7 around a PKCS#10 of version 1",
            signed_data(OID_DATA, replace_at(csr, [0, 0], set_content(b"\x01"))),
        ),
        # found: ValueError / UnsupportedAlgorithm from cryptography's is_signature_valid (inspect_request)
        (
            "a PKCS#10 with an unknown key algorithm",
            replace_at(csr, [0, 2, 0, 0], set_content(oid("1.2.3.4.5")[2:])),
        ),
        (
            "a PKCS#10 with an unknown curve",
            replace_at(seeds["pkcs10-token"], [0, 2, 0, 1], set_content(oid("1.2.840.10045.3.1.99")[2:])),
        ),
        ("a PKCS#10 with a damaged RSA key", replace_at(csr, [0, 2, 1, 0, 1], set_content(b"\x02"))),
        # found: lazily read names and extensions (cryptography) in accept, repair, revoke-request
        ("a certificate with a duplicate extension", replace_at(cert, [0, 7], duplicate_last_extension)),
        ("a certificate with an empty RDN in its subject", replace_at(cert, [0, 5], set_content(tlv(0x31, b"")))),
        (
            "a certificate whose SAN is not GeneralNames",
            replace_at(cert, [0, 7], set_extension_value("2.5.29.17", b"\x05\x00")),
        ),
        (
            "a certificate with an unknown key algorithm",
            replace_at(cert, [0, 6, 0, 0], set_content(oid("1.2.840.10045.2.91")[2:])),
        ),
        # found: asn1crypto refuses a CN that is not a DirectoryString (revoke-request's issuer text)
        ("a certificate whose issuer CN is an OCTET STRING", replace_at(cert, [0, 3, -1, 0, 1], set_tag(0x04))),
        # cryptography warns (a multi-line Python warning on stderr before): now one tokenagent line
        ("a certificate with serial number 0", replace_at(cert, [0, 1], set_content(b"\x00"))),
        ("a PEM with the wrong label", pem(cert, "RSA PRIVATE KEY")),
        ("a PEM with two blocks", pem(cert, "CERTIFICATE") + pem(csr, "CERTIFICATE REQUEST")),
        ("a PEM without its END line", pem(cert, "CERTIFICATE")[:-30]),
        ("an encrypted PEM", pem(cert, "CERTIFICATE").replace(b"-----\n", b"-----\nProc-Type: 4,ENCRYPTED\n", 1)),
        ("UTF-16 PEM", pem(cert, "CERTIFICATE").decode().encode("utf-16")),
        ("UTF-16 text without BOM", "hello, this is not a request at all\n".encode("utf-16-le")),
        ("UTF-16 of odd length", "x".encode("utf-16") + b"\x00"),
        ("base64 with a stray character", base64.b64encode(cert)[:100] + b"!" + base64.b64encode(cert)[100:]),
        ("base64 cut inside a quantum", base64.b64encode(cert)[:-3]),
        ("4 MiB of base64", four_mib_of_base64()),
        ("an INF file", SEED_INFS[0].read_bytes()),
    ]
    return [*cases, *((f"{name} (as it is)", der) for name, der in seeds.items())]


def four_mib_of_base64() -> bytes:
    """76-character lines of base64 of a SEQUENCE { 3 MiB OCTET STRING }: just under MAX_INPUT_BYTES."""
    raw_size = (MAX_INPUT_BYTES // 77) * 76 // 4 * 3
    der = b"\x30\x84" + (raw_size - 6).to_bytes(4, "big") + b"\x04\x84" + (raw_size - 12).to_bytes(4, "big")
    der += bytes(i % 251 for i in range(raw_size - 12))
    text = base64.b64encode(der)
    lines = b"\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert len(lines) <= MAX_INPUT_BYTES
    return lines


# -- seeds ----------------------------------------------------------------------------------------------------

OPENSSL_REQUEST_CONFIG = """[req]
distinguished_name = dn
prompt = no
req_extensions = ext
attributes = attrs
[dn]
CN = Fuzz Seed
O = Example
[attrs]
challengePassword = not-a-secret
[ext]
subjectAltName = email:a@example.com,DNS:x.example.com,IP:10.0.0.1,URI:http://x/?a&b,dirName:dir,otherName:1.3.6.1.4.1.311.20.2.3;UTF8:ada@example.com
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth,1.3.6.1.4.1.311.20.2.2
basicConstraints = CA:FALSE
subjectKeyIdentifier = hash
1.3.6.1.4.1.311.20.2 = ASN1:BMPString:SmartcardLogon
[dir]
CN = dir
"""

USER_INF = """[NewRequest]
Subject = "CN=Fuzz User,O=Example Corp"
KeyAlgorithm = ECDSA_P256
KeyContainer = fuzz-user
[Extensions]
2.5.29.17 = "{text}UPN=fuzz@example.com&DNS=fuzz.example.com"
[RequestAttributes]
CertificateTemplate = SmartcardLogon
"""


@dataclass(repr=False)  # hypothesis prints a failing example's arguments: not these bytes
class Seeds:
    work: Path
    ca: OpenSslCA
    der: dict[str, bytes]  # name -> DER
    inf: dict[str, bytes]  # file name -> INF bytes
    agent: Agent  # a software enrollment agent for in-process co-signing
    calls: list[int] = field(default_factory=list)  # one entry per signature of the software agent

    def __repr__(self) -> str:
        return f"Seeds({', '.join(self.der)})"

    @property
    def requests(self) -> dict[str, bytes]:
        return {k: v for k, v in self.der.items() if k.startswith(("pkcs10", "pkcs7", "cmc-request"))}


class CountingSigner(SoftwareSigner):
    """A software agent key that counts its signatures."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, algorithm: SignatureAlgorithm, calls: list[int]) -> None:
        super().__init__(key, algorithm)
        self.calls = calls

    def sign(self, data: bytes) -> bytes:
        self.calls.append(1)
        return super().sign(data)


@pytest.fixture(scope="module")
def seeds(softhsm: SoftHSM, tmp_path_factory: pytest.TempPathFactory) -> Seeds:
    work = tmp_path_factory.mktemp("fuzz")
    ca = OpenSslCA.create(work / "ca")
    der: dict[str, bytes] = {}

    # the enrollment agent on ta-agent, as test_sign.py makes it (for `sign` and `revoke-request`)
    inf = work / "agent.inf"
    inf.write_text(
        f'[NewRequest]\nSubject = "CN=Fuzz Agent"\nKeyAlgorithm = ECDSA_P256\nKeyContainer = {AGENT_LABEL}\n'
    )
    made = cli(softhsm, "new", str(inf), str(work / "agent.req"), "--token", AGENT_TOKEN, "--pin-source", "env:PIN")
    assert made.returncode == 0, made.stderr
    agent_cert = work / "agent.cer"
    ca.issue_agent(work / "agent.req", agent_cert)
    installed = cli(softhsm, "accept", str(agent_cert), "--token", AGENT_TOKEN, "--pin-source", "env:PIN")
    assert installed.returncode == 0, installed.stderr

    # a user's request from `tokenagent new`, and one from openssl with many extensions
    inf = work / "user.inf"
    inf.write_text(USER_INF)
    made = cli(
        softhsm, "new", str(inf), str(work / "user.req"), "--binary", "--token", USER_TOKEN, "--pin-source", "env:PIN"
    )
    assert made.returncode == 0, made.stderr
    der["pkcs10-token"] = (work / "user.req").read_bytes()
    config = work / "req.cnf"
    config.write_text(OPENSSL_REQUEST_CONFIG)
    openssl(
        "req", "-new", "-config", config, "-newkey", "rsa:2048", "-nodes", "-keyout", work / "seed.key",
        "-sigopt", "rsa_padding_mode:pss", "-outform", "DER", "-out", work / "seed.csr",
    )  # fmt: skip
    der["pkcs10-openssl"] = (work / "seed.csr").read_bytes()

    # what a CA answers, for a key that is on no token (so accept and repair can never install it)
    der["certificate"] = ca.issue(der["pkcs10-openssl"], work / "seed.cer")
    der["p7b"] = ca.p7b([work / "seed.cer", ca.sub_cert, ca.root_cert], work / "seed.p7b")
    der["cmc-response"] = ca.cmc_response([der["certificate"], ca.sub_der, ca.root_der], work / "seed.rsp")
    der["cmc-pending"] = ca.cmc_response(
        [], work / "pending.rsp", status=3, pend_token=b"t0k3n", pend_time=datetime(2030, 1, 1), body_list=((1, 2),)
    )

    # the agent's PKCS7 and CMC requests from `tokenagent sign`
    for form in ("pkcs7", "cmc"):
        out = work / f"seed.{form}"
        run = cli(
            softhsm, "sign", str(work / "user.req"), str(out), "--binary", "--format", form, "--template", "User",
            "--agent", agent_uri(), "--requester", REQUESTER, "--pin-source", "env:PIN", "--yes",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        der["pkcs7-request" if form == "pkcs7" else "cmc-request"] = out.read_bytes()

    # a software agent for in-process co-signing (Agent.co_sign without a token)
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (work / "soft-agent.key").write_bytes(key_pem)
    openssl("req", "-new", "-key", work / "soft-agent.key", "-subj", "/CN=Software Agent", "-out", work / "soft.csr")
    soft_cert = ca.issue_agent(work / "soft.csr", work / "soft-agent.cer")
    calls: list[int] = []
    signer = CountingSigner(key, SignatureAlgorithm("sha256", "ecdsa"), calls)
    agent = Agent(session=None, key=None, key_id=b"", certificate=soft_cert, signer=signer)  # type: ignore[arg-type]
    inf_seeds = {path.name: path.read_bytes() for path in SEED_INFS}
    return Seeds(work, ca, der, inf_seeds, agent, calls)


def agent_uri() -> str:
    return f"pkcs11:token={AGENT_TOKEN};object={AGENT_LABEL};type=private"


# -- the library functions behind the commands ----------------------------------------------------------


def show_target(data: bytes, seeds: Seeds) -> None:
    """`show`: describe, then what the command prints (text and --json)."""
    description = describe(data, "fuzz input")
    render(description)
    json.dumps(description)


def response_target(data: bytes, seeds: Seeds) -> None:
    """accept, repair, revoke-request --cert and sign --agent-cert: the response and its certificates."""
    response = read_response(data, "fuzz input")
    leaves = response.end_entities()
    for leaf in leaves:  # what accept and repair read of the certificate they install or relink
        certificate = load_certificate(leaf, "fuzz input")
        spki = certificate_spki(leaf, "fuzz input")
        display_name(leaf)
        certificate_summary(leaf, "fuzz input")
        validity_warnings(certificate, datetime.now(UTC))
        usage_warnings(certificate, frozenset({"sign"}), "key")
        for above in response.chain_for(leaf):  # accept --chain
            dn_text(load_certificate(above, "CA certificate").subject)
            certificate_spki(above, "CA certificate")
            display_name(above)
        with contextlib.suppress(VerificationError):  # --strict refuses, with a message: fine
            check_agent_certificate(leaf, spki, strict=True)  # sign --agent-cert FILE
    if len(leaves) == 1:  # revoke-request --cert FILE
        path = seeds.work / "revoke-target.bin"
        path.write_bytes(data)
        target_from_certificate(path)
    response.raise_for_status()


def sign_target(data: bytes, seeds: Seeds) -> None:
    """`sign`: read_der, inspect_request, then the co-signature (with a software agent key).

    Nothing may be signed when the request is refused."""
    before = len(seeds.calls)
    form = "cmc" if hashlib.sha1(data).digest()[0] & 1 else "pkcs7"
    try:
        co_sign(seeds.agent, data, requester=REQUESTER, format=form, template="User", what="fuzz input", yes=True)
    except TokenAgentError:
        assert len(seeds.calls) == before, "a refused request was signed"
        raise


def inspect_target(data: bytes, seeds: Seeds) -> None:
    inspect_request(read_der(data, "fuzz input"), "fuzz input")


def read_der_target(data: bytes, seeds: Seeds) -> None:
    read_der(data, "fuzz input")


def inf_target(data: bytes, seeds: Seeds) -> None:
    """`inf show` (parse_policy, to_json) and `new --dry-run` up to the token (prepare, planned_contents)."""
    parse_policy(data, "fuzz.inf").to_json()
    path = seeds.work / "fuzz.inf"
    path.write_bytes(data)
    warnings: list[str] = []
    prepared = prepare(NewOptions(policy=path, dry_run=True), warnings.append, registry=ProviderRegistry())
    planned_contents(prepared.policy)


DER_TARGETS: dict[str, Callable[[bytes, Seeds], None]] = {
    "read_der": read_der_target,
    "describe (show)": show_target,
    "read_response (accept/repair/revoke-request)": response_target,
    "inspect_request": inspect_target,
    "co_sign (sign)": sign_target,
}
COUNTS: Counter[str] = Counter()
_COUNTS_LOCK = threading.Lock()


def check(target: str, function: Callable[[bytes, Seeds], None], description: str, data: bytes, seeds: Seeds) -> str:
    """'' when ``function`` passes or raises a proper TokenAgentError; else what went wrong."""
    with _COUNTS_LOCK:
        COUNTS[target] += 1
    try:
        function(data, seeds)
    except TokenAgentError as exc:
        if type(exc) is TokenAgentError:  # exit code 1: reserved for bugs
            return f"{target}: {description}: a bare TokenAgentError: {exc}"
        if "\n" in exc.one_line() or not exc.message.strip():
            return f"{target}: {description}: not a one-line message: {exc.message!r}"
    except AssertionError as exc:
        return f"{target}: {description}: {exc}"
    except Exception as exc:
        return f"{target}: {description}: {type(exc).__name__}: {str(exc)[:200]}"
    return ""


def run_all(items: list[tuple[str, bytes]], targets: dict[str, Callable[[bytes, Seeds], None]], seeds: Seeds) -> None:
    problems = [
        problem
        for description, data in items
        for target, function in targets.items()
        if (problem := check(target, function, description, data, seeds))
    ]
    assert not problems, f"{len(problems)} crash(es):\n" + "\n".join(problems[:40])


# -- in-process ------------------------------------------------------------------------------------------


def test_der_mutations_in_process(seeds: Seeds) -> None:
    """Truncations, bit flips, byte and tree edits of every DER seed, into every DER reader."""
    run_all(mutants(seeds.der, random.Random(20240601), per_seed=300), DER_TARGETS, seeds)


def test_hostile_inputs_in_process(seeds: Seeds) -> None:
    """Deep nesting, wrong types, odd encodings, and each crash found so far, into every reader."""
    cases = hostile(seeds.der)
    run_all(cases, {**DER_TARGETS, "parse_policy/prepare (inf show, new --dry-run)": inf_target}, seeds)


def test_crashes_found_are_named_errors(seeds: Seeds) -> None:
    """The inputs that crashed before the fixes get the error class and message their kind calls for."""
    cases = dict(hostile(seeds.der))

    def error(function: Callable[[], object]) -> TokenAgentError:
        with pytest.raises(TokenAgentError) as info:
            function()
        return info.value

    deep = cases["a PKIResponse control nested 5,000 deep"]
    assert "nested too deeply" in str(error(lambda: read_response(deep, "r.rsp")))
    no_signers = read_der(cases["a PKCS7 request without SignerInfos"])
    found = error(lambda: inspect_request(no_signers, "r.p7"))
    assert isinstance(found, InputError) and "without any SignerInfo" in found.message
    version = cases["a PKCS#10 of version 26"]
    assert isinstance(error(lambda: inspect_request(version, "r.req")), InputError)
    assert isinstance(error(lambda: describe(version, "r.req")), InputError)
    unknown = cases["a PKCS#10 with an unknown key algorithm"]
    assert isinstance(error(lambda: inspect_request(unknown, "r.req")), VerificationError)
    damaged = cases["a PKCS#10 with a damaged RSA key"]
    assert "public key cannot be read" in str(error(lambda: inspect_request(damaged, "r.req")))
    certificate = read_der(cases["a certificate with a duplicate extension"])
    assert "Duplicate" in str(error(lambda: read_response(certificate, "c.cer")))
    found = error(lambda: inspect_request(seeds.der["certificate"], "c.cer"))
    assert found.message == "c.cer is an X.509 certificate, not a request to sign"
    issuer = seeds.work / "issuer.cer"
    issuer.write_bytes(cases["a certificate whose issuer CN is an OCTET STRING"])
    assert "cannot read the issuer" in str(error(lambda: target_from_certificate(issuer)))
    policy = parse_policy(b'[NewRequest]\nSubject = "CN=a"\n[Extensions]\n2.5.29.19 = {hex}04 00\n', "x.inf")
    found = error(lambda: planned_contents(policy))
    assert isinstance(found, PolicyError) and found.message.startswith("x.inf:4: extension 2.5.29.19")


@settings(
    max_examples=600,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_edit_sequences_hypothesis(seeds: Seeds, data: st.DataObject) -> None:
    """hypothesis chooses the seed and a sequence of edits (and shrinks a failing one)."""
    name = data.draw(st.sampled_from(sorted(seeds.der)), label="seed")
    steps = data.draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**32)), min_size=1, max_size=5))
    blob = seeds.der[name]
    for kind, number in steps:
        rng = random.Random(number)
        if kind == 0:
            blob = flip_bits(rng, blob)
        elif kind == 1:
            blob = edit_bytes(rng, blob)
        elif kind == 2:
            blob = edit_tree(rng, blob, list(seeds.der.values()))
        else:
            blob = wrap(rng, blob)
    problems = [p for target, f in DER_TARGETS.items() if (p := check(target, f, f"{name} {steps}", blob, seeds))]
    assert not problems, "\n".join(problems)


# -- INF ------------------------------------------------------------------------------------------------

INF_VALUES = [
    "", "0", "-1", "99999999999999999999999", "0x", "0xffffffffffffffff", "TRUE", '"', '""', "%", "%a%",
    "{text}", "{hex}zz", "{hex}30 80", "{asn}", "{octet}", "{utf8}", "CN=", "CN=a+CN=b", "=", ";", "\x00",
    "\u202e", "1.2", "1.2.3.4.", "2.999999999999999999999", "ECDSA_P521", "RSA", "CMC", "Cert", "PKCS7",
    "12/31/9999 23:59 PM", "0/0/0", "sha1", "md5", "{text}IPAddress=1.2.3.4.5", "{text}IPAddress=::1",
    "{text}GUID=zz", "{text}RegisteredId=9.9", "{text}1.2.3={asn}MAA=", "{text}DirectoryName=CN=a,CN=",
    "{text}UPN=", "{text}ca=1&pathlength=-1", "{text}ca=1&pathlength=99999999999999999999", "A" * 5000,
    "{hex}04 00", "{hex}03 02 07 80", "{hex}02 01 05", "{asn}" + base64.b64encode(nest(0x30, 60)).decode(),
]  # fmt: skip
INF_LINES = [
    b"[Strings]", b'a = "%b%"', b"[Extensions]", b"_continue_ = &DNS=x", b"Critical = 2.5.29.17",
    b"[RequestAttributes]", b'SAN = "dns=x&upn=y"', b"[NewRequest]", b"RequestType = CMC", b"RequestType = Cert",
    b"KeyUsageProperty = 0xffffffff", b"2.5.29.15 = {hex}03 02 05 a0", b"2.5.29.19 = {hex}04 00",
    b"2.5.29.17 = {hex}04 00", b"2.5.29.37 = {asn}BAA=", b"RenewalCert = 00", b"RequesterName = a\\b",
]  # fmt: skip


EXTENSION_LINES = [
    b"2.5.29.19 = {hex}04 00", b"2.5.29.17 = {hex}04 00", b"2.5.29.37 = {asn}BAA=", b"2.5.29.15 = {hex}30 00",
    b"2.5.29.15 = {hex}03 02 05 a0", b"2.5.29.14 = {hex}30 00", b"2.5.29.19 = {text}ca=true&pathlength=1",
    b"2.5.29.17 = {text}IPAddress=10.0.0.256", b"2.5.29.17 = {text}1.2.3={hex}a0 00", b"1.2.3 = {octet}{hex}zz",
    b"2.5.29.17 = {text}DirectoryName=CN=\\", b"2.5.29.37 = {text}1.2.3.99999999999999999999999",
]  # fmt: skip


def mutate_inf(rng: random.Random, data: bytes, donors: list[bytes]) -> bytes:
    kind = rng.randrange(9)
    if kind == 8:  # one more line in [Extensions] (a section named twice is one section)
        return data + b"\n[Extensions]\n" + rng.choice(EXTENSION_LINES) + b"\n"
    if kind == 0:
        return data[: rng.randrange(len(data) + 1)]
    if kind == 1:
        return flip_bits(rng, data)
    lines = data.split(b"\n")
    if kind == 2 and lines:
        del lines[rng.randrange(len(lines))]
    elif kind == 3:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(rng.choice(donors).split(b"\n")))
    elif kind in (4, 5):
        keyed = [i for i, line in enumerate(lines) if b"=" in line]
        if keyed:
            i = rng.choice(keyed)
            lines[i] = lines[i].split(b"=", 1)[0] + b"= " + rng.choice(INF_VALUES).encode()
    elif kind == 6:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(INF_LINES))
    else:
        return data.decode("utf-8", "replace").encode(
            rng.choice(["utf-16", "utf-16-le", "utf-16-be", "cp1252"]), "replace"
        )
    return b"\n".join(lines)


def inf_mutants(seeds: dict[str, bytes], rng: random.Random, per_seed: int) -> list[tuple[str, bytes]]:
    donors = list(seeds.values())
    found: list[tuple[str, bytes]] = []
    for name, text in seeds.items():
        found += [(f"{name} cut to {len(cut)}", cut) for cut in truncations(text, per_seed // 6)]
        for number in range(per_seed):
            data = text
            for _ in range(rng.choice([1, 1, 2, 3, 5])):
                data = mutate_inf(rng, data, donors)
            found.append((f"{name} #{number}", data))
    return found


def deep_inf() -> list[tuple[str, bytes]]:
    """Deeply nested and very long INF-like text."""
    head = b'[NewRequest]\nSubject = "CN=a"\n'
    return [
        ("10,000 '[' ", b"[" * 10_000 + b"\n"),
        ("10,000 nested sections", b"".join(b"[" * n + b"]" * n + b"\n" for n in (1, 100, 10_000))),
        ("10,001 quotes", head + b'KeyContainer = "' + b'"' * 10_000 + b"\n"),
        (
            "10,000 %x% references",
            head + b"[Strings]\n" + b"".join(b"s%d = %%s%d%%\n" % (i, i + 1) for i in range(10_000)),
        ),
        (
            "10,000 _continue_ lines",
            head + b"[Extensions]\n2.5.29.17 = {text}DNS=a\n" + b"_continue_ = &DNS=b\n" * 10_000,
        ),
        ("10,000 RDNs", b'[NewRequest]\nSubject = "' + b"CN=a," * 10_000 + b'O=b"\n'),
        ("10,000 '+' RDN parts", b'[NewRequest]\nSubject = "CN=a' + b"+CN=b" * 10_000 + b'"\n'),
        ("10,000 backslashes", b'[NewRequest]\nSubject = "CN=' + b"\\" * 10_000 + b'"\n'),
        ("10,000 nested braces", head + b"[Extensions]\n1.2.3 = " + b"{" * 10_000 + b"}" * 10_000 + b"\n"),
        (
            "{asn} of 10,000 nested SEQUENCEs",
            head + b"[Extensions]\n1.2.3 = {asn}" + base64.b64encode(nest(0x30, 10_000)) + b"\n",
        ),
        (
            "{hex} of 10,000 nested SEQUENCEs",
            head + b"[Extensions]\n1.2.3 = {hex}" + nest(0x30, 10_000).hex().encode() + b"\n",
        ),
        (
            "a SAN DirectoryName nested in DirectoryNames",
            head + b'[Extensions]\n2.5.29.17 = "{text}DirectoryName=' + b"CN=DirectoryName=" * 2000 + b'x"\n',
        ),
        ("UTF-16 INF", SEED_INFS[0].read_text().encode("utf-16")),
        ("a DER certificate as INF", nest(0x30, 3)),
        ("empty", b""),
    ]


def test_inf_mutations_in_process(seeds: Seeds) -> None:
    """INF seeds mutated by line and by byte, and deeply nested INF-like text: `inf show`'s and
    `new --dry-run`'s library path (parse_policy, prepare, planned_contents) raises only PolicyError
    and the like."""
    items = inf_mutants(seeds.inf, random.Random(4711), per_seed=600) + deep_inf()
    run_all(items, {"parse_policy/prepare (inf show, new --dry-run)": inf_target}, seeds)


# -- providers.toml (`new --providers FILE`) ------------------------------------------------------------

PROVIDERS_TOML = b"""[profiles.luna]
kind = "hsm"
algorithms = { RSA = [2048, 3072], ECDSA = [256] }
exportable = true
key_containers = 4

[providers."SafeNet Key Storage Provider"]
profile = "luna"
module = "/opt/luna/libCryptoki2_64.so"
token = "user-part"
machine_token = "server-part"
families = ["RSA", "ECDSA"]

[providers."Microsoft Smart Card Key Storage Provider"]
module = "/usr/lib/softhsm/libsofthsm2.so"
max_objects = 10
"""
TOML_VALUES = [
    b"5",
    b'"x"',
    b"true",
    b"[]",
    b'[1, "a"]',
    b"{}",
    b"{ RSA = 5 }",
    b"{ RSA = [0] }",
    b"-1",
    b"1.5",
    b"[[1]]",
]


def providers_target(data: bytes, seeds: Seeds) -> None:
    path = seeds.work / "providers.toml"
    path.write_bytes(data)
    registry = ProviderRegistry()
    registry.load_file(path)
    policy = parse_policy(b"[NewRequest]\nSubject = CN=a\nProviderName = SafeNet Key Storage Provider\n", "p.inf")
    for entry in registry.providers.values():
        entry.to_json()
        entry.token_for(machine=True)
    plan_key(policy, registry.lookup(policy.provider_name))


def test_providers_file_in_process(seeds: Seeds) -> None:
    """Every value of the providers file replaced by values of every TOML type, plus byte damage:
    found a TypeError for `families = 5` and for `profile = []` (now InputError)."""
    lines = PROVIDERS_TOML.split(b"\n")
    items = [
        (
            f"line {number}: {value.decode()}",
            b"\n".join([*lines[:number], line.split(b"=")[0] + b"= " + value, *lines[number + 1 :]]),
        )
        for number, line in enumerate(lines)
        if b"=" in line
        for value in TOML_VALUES
    ]
    rng = random.Random(5)
    items += [(f"cut to {len(cut)}", cut) for cut in truncations(PROVIDERS_TOML, 60)]
    items += [(f"bits #{n}", flip_bits(rng, PROVIDERS_TOML)) for n in range(200)]
    run_all(items, {"ProviderRegistry.load_file (new --providers)": providers_target}, seeds)


# -- through the CLI --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...]  # "{in}" and "{out}" are replaced by paths
    codes: frozenset[int]  # the documented exit codes this command may give for these inputs
    lane: str  # runs on one lane follow each other; "free" runs go in parallel


PIN = "--pin-source env:PIN"
COMMANDS = [
    Command("show", ("show", "{in}"), frozenset({0, 4}), "free"),
    Command("show --json", ("show", "--json", "{in}"), frozenset({0, 4}), "free"),
    Command("inf show", ("inf", "show", "{in}"), frozenset({0, 3}), "free"),
    # --dry-run logs in to ta-new: SoftHSM rewrites a token's file at each login, so those take turns
    Command(
        "new --dry-run", tuple(f"new {{in}} --dry-run --token ta-new {PIN}".split()), frozenset({0, 2, 3, 8}), "ta-new"
    ),
    # the certificates are for a key on no token: 9 when the response is readable; 2 when a
    # response whose chain does not link holds several end-entity certificates ("one at a time").
    # A readable certificate gets as far as the login on ta-acc, so these take turns too: a run
    # that read the token while another one's login rewrote it saw no token (exit 6, seen once).
    Command("accept", tuple(f"accept {{in}} --token ta-acc {PIN}".split()), frozenset({2, 4, 9, 11, 12, 14}), "ta-acc"),
    Command("repair", tuple(f"repair {{in}} --token ta-acc {PIN} --dry-run".split()), frozenset({4, 9}), "ta-acc"),
    Command(
        "revoke-request",
        tuple(f"revoke-request {{out}} --cert {{in}} --agent {agent_uri()} {PIN}".split()),
        frozenset({0, 4}),
        "ta-agent",
    ),
    Command(
        "sign",
        tuple(f"sign {{in}} {{out}} --binary --agent {agent_uri()} --requester {REQUESTER} {PIN} --yes".split()),
        frozenset({0, 4, 11}),
        "ta-agent",
    ),
]


@dataclass
class Outcome:
    command: Command
    description: str
    data: bytes
    returncode: int
    stderr: str
    out_exists: bool


def sample(items: list[tuple[str, bytes]], count: int, rng: random.Random) -> list[tuple[str, bytes]]:
    return rng.sample(items, min(count, len(items)))


#: Hostile inputs every command of the CLI sample gets (the rest is drawn at random).
ALWAYS = [
    "empty file",
    "10,000 nested SEQUENCEs",
    "UTF-16 PEM",
    "a PEM with the wrong label",
    "a certificate with serial number 0",
]
ALWAYS_FOR = {
    "show": ["a PKCS#10 of version 26", "a PKCS7 around a PKCS#10 of version 1", "4 MiB of base64"],
    "show --json": [
        "an OS version attribute nested 5,000 deep in an eContent",
        "a PKCS7 request without SignerInfos",
        "a CMC request whose SignerInfo has version 9",
    ],
    "accept": ["statusInfoV2 nested 5,000 deep", "a certificate with a duplicate extension", "4 MiB of base64"],
    "repair": ["a certificate with an empty RDN in its subject", "a certificate with an unknown key algorithm"],
    "revoke-request": ["a certificate whose issuer CN is an OCTET STRING", "a PKIResponse control nested 5,000 deep"],
    "sign": [
        "a PKCS7 request without SignerInfos",
        "a PKCS7 request of SignedData version 7",
        "a PKCS#10 of version 26",
        "a PKCS#10 with an unknown curve",
        "a PKCS#10 with a damaged RSA key",
        "4 MiB of base64",
    ],
}
#: An INF whose raw {hex} value is no Basic Constraints (an asn1crypto ValueError before the fix).
RAW_MISMATCH_INF = b'[NewRequest]\nSubject = "CN=a"\nKeyAlgorithm = ECDSA_P256\n[Extensions]\n2.5.29.19 = {hex}04 00\n'


def cli_inputs(seeds: Seeds, command: Command, rng: random.Random) -> list[tuple[str, bytes]]:
    """A few dozen inputs for one command: its own seeds mutated, hostile ones, every seed as is."""
    if command.name in ("inf show", "new --dry-run"):
        chosen = sample(inf_mutants(seeds.inf, rng, per_seed=20), 16, rng)
        chosen += sample(deep_inf(), 5, rng)
        return [
            *chosen,
            ("a raw DER value that is no Basic Constraints", RAW_MISMATCH_INF),
            ("a certificate", seeds.der["certificate"]),
            ("the first INF seed", SEED_INFS[0].read_bytes()),
        ]
    hostile_cases = dict(hostile(seeds.der))
    fixed = [(name, hostile_cases[name]) for name in ALWAYS + ALWAYS_FOR.get(command.name, [])]
    others = [(name, data) for name, data in hostile_cases.items() if name not in dict(fixed) and "4 MiB" not in name]
    if command.name.startswith("show"):
        own = seeds.der
    elif command.name == "sign":
        own = seeds.requests
    else:
        names = ("certificate", "p7b", "cmc-response") + (("cmc-pending",) if command.name == "accept" else ())
        own = {name: seeds.der[name] for name in names}
    return sample(mutants(own, rng, per_seed=12), 12, rng) + fixed + sample(others, 6, rng)


def run_one(softhsm: SoftHSM, work: Path, command: Command, number: int, description: str, data: bytes) -> Outcome:
    source = work / f"{command.name.replace(' ', '_')}-{number}.in"
    source.write_bytes(data)
    out = work / f"{command.name.replace(' ', '_')}-{number}.out"
    args = [a.replace("{in}", str(source)).replace("{out}", str(out)) for a in command.args]
    run = cli(softhsm, *args)
    return Outcome(command, description, data, run.returncode, run.stderr, out.exists())


def problems_of(outcome: Outcome) -> list[str]:
    where = f"{outcome.command.name}: {outcome.description}: exit {outcome.returncode}"
    found = []
    lines = outcome.stderr.splitlines()
    errors = [line for line in lines if line.startswith("tokenagent: error:")]
    if outcome.returncode not in outcome.command.codes:
        found.append(f"{where}: not one of {sorted(outcome.command.codes)}: {outcome.stderr.strip()[:300]}")
    if outcome.returncode != 0 and len(errors) != 1:
        found.append(f"{where}: {len(errors)} error lines: {outcome.stderr.strip()[:300]}")
    if outcome.returncode == 0 and errors:
        found.append(f"{where}: success with an error line: {errors[0]}")
    if "Traceback" in outcome.stderr or "internal error" in outcome.stderr:
        found.append(f"{where}: {outcome.stderr.strip()[-500:]}")
    stray = [line for line in lines if not line.startswith(("tokenagent: error:", "tokenagent: warning:"))]
    if stray:
        found.append(f"{where}: stderr lines that are not tokenagent's: {stray[:3]}")
    if outcome.command.name == "sign" and outcome.returncode != 0 and outcome.out_exists:
        found.append(f"{where}: a refused request left an output file")
    return found


@pytest.mark.slow
def test_cli_sample(softhsm: SoftHSM, seeds: Seeds, tmp_path: Path) -> None:
    """A few dozen inputs per command through the real CLI, in child processes.

    Runs that log in to a token go one after the other on that token's lane (SoftHSM rewrites the
    token's file at a login, and a process starting meanwhile may not see the token); the others
    run in parallel beside them."""
    rng = random.Random(1234)
    jobs = {command: cli_inputs(seeds, command, rng) for command in COMMANDS}
    lanes: dict[str, list[tuple[Command, int, str, bytes]]] = {}
    free: list[tuple[Command, int, str, bytes]] = []
    for command, items in jobs.items():
        for number, (description, data) in enumerate(items):
            (free if command.lane == "free" else lanes.setdefault(command.lane, [])).append(
                (command, number, description, data)
            )

    def lane(runs: list[tuple[Command, int, str, bytes]]) -> list[Outcome]:
        return [run_one(softhsm, tmp_path, *run) for run in runs]

    with ThreadPoolExecutor(max_workers=len(lanes) + 2) as pool:
        futures = [pool.submit(lane, runs) for runs in lanes.values()]
        futures += [pool.submit(lane, [run]) for run in free]
        outcomes = [outcome for future in futures for outcome in future.result()]

    counts = Counter(outcome.command.name for outcome in outcomes)
    COUNTS.update({f"CLI {name}": n for name, n in counts.items()})
    problems = [problem for outcome in outcomes for problem in problems_of(outcome)]
    # sign: whatever was signed must be a request that verifies, so nothing damaged got through
    for outcome in outcomes:
        if outcome.command.name == "sign" and outcome.returncode == 0:
            try:
                inspect_request(read_der(outcome.data), "signed input")
            except TokenAgentError as exc:
                problems.append(f"sign: {outcome.description}: signed although {exc.one_line()}")
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:30])
    assert all(n >= 24 for n in counts.values()), counts


def test_counts_summary() -> None:
    """Not a check: prints how many mutations each target saw (pytest -s)."""
    for target, count in sorted(COUNTS.items()):
        print(f"{target}: {count}")
