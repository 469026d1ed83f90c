"""PKCS#10 requests from INF policies, checked by tools we did not write: openssl, pyasn1-modules, cryptography."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pyasn1.codec.der import decoder
from pyasn1.type import char, namedtype, univ
from pyasn1_modules import rfc2986, rfc4055, rfc5280, rfc5751

from tokenagent.errors import InputError, PolicyError
from tokenagent.inf import RequestPolicy, load_policy, parse_policy
from tokenagent.request.algorithms import signature_algorithm
from tokenagent.request.armor import armor
from tokenagent.request.pkcs10 import build_request, planned_contents, request_info, subject_text
from tokenagent.request.signer import SoftwareSigner

SEEDS = Path(__file__).parent / "data" / "inf" / "seeds"
CURVES = {"P256": ec.SECP256R1(), "P384": ec.SECP384R1(), "P521": ec.SECP521R1()}
OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
OID_NAME_VALUE = "1.3.6.1.4.1.311.13.2.1"
OID_CSP = "1.3.6.1.4.1.311.13.2.2"

FULL_INF = r"""[NewRequest]
Subject = "CN=John Smith,CN=Users,DC=Contoso,DC=com"
KeySpec = 1
SMIME = TRUE
[Extensions]
2.5.29.17 = "{text}"
continue = UPN=User@Domain.com&
continue = EMail=User@Domain.com&
continue = DNS=host.domain.com&
continue = DirectoryName=CN=Name,DC=Domain,DC=com&
continue = URL=http://host.domain.com/default.html&
continue = IPAddress=10.0.0.1&
continue = IPAddress=fe80::1:2&
continue = RegisteredId=1.2.3.4.5&
continue = GUID=f7c3ac41-b8ce-4fb4-aa58-3d1dc0e36b39&
continue = 1.2.3.4.6.1={utf8}String
2.5.29.37 = "{text}1.3.6.1.5.5.7.3.2,1.3.6.1.4.1.311.20.2.2"
2.5.29.19 = "{text}ca=1&pathlength=0"
Critical = 2.5.29.19
[RequestAttributes]
CertificateTemplate = User
SAN = "dns=other.example&upn=a@example.com"
"""


# -- independent ASN.1 for the Microsoft attributes (pyasn1, not the asn1crypto classes under test)


class NameValuePair(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("name", char.BMPString()),
        namedtype.NamedType("value", char.BMPString()),
    )


class CspInfo(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("keySpec", univ.Integer()),
        namedtype.NamedType("cspName", char.BMPString()),
        namedtype.NamedType("signature", univ.BitString()),
    )


class TemplateInfo(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("templateID", univ.ObjectIdentifier()),
        namedtype.OptionalNamedType("major", univ.Integer()),
        namedtype.OptionalNamedType("minor", univ.Integer()),
    )


# -- helpers --------------------------------------------------------------------------------------


def inf(text: str) -> RequestPolicy:
    return parse_policy(text, "t.inf")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def ec_keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {name: ec.generate_private_key(curve) for name, curve in CURVES.items()}


def key_for(policy: RequestPolicy, rsa_key, ec_keys):
    return rsa_key if policy.key_family == "RSA" else ec_keys[policy.curve.replace("-", "")]


def build(policy: RequestPolicy, key) -> bytes:
    signer = SoftwareSigner(key, signature_algorithm(policy))
    return build_request(policy, signer.public_key_info(), signer)


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], check=True, capture_output=True, text=True)


def verify_with_openssl(tmp_path: Path, der: bytes) -> str:
    """`openssl req -verify` on the certreq-armored text and on the DER; returns `-text` output."""
    pem, raw = tmp_path / "r.req", tmp_path / "r.der"
    pem.write_bytes(armor(der).encode("ascii"))
    raw.write_bytes(der)
    for args in (["-in", str(pem)], ["-inform", "DER", "-in", str(raw)]):
        result = openssl("req", "-verify", "-noout", *args)
        assert "verify OK" in result.stderr
    return openssl("req", "-noout", "-text", "-in", str(pem)).stdout


def decode(der: bytes):
    request, rest = decoder.decode(der, asn1Spec=rfc2986.CertificationRequest())
    assert rest == b""
    return request


def attributes_of(der: bytes) -> dict[str, list[bytes]]:
    info = decode(der)["certificationRequestInfo"]
    return {str(a["type"]): [bytes(v) for v in a["values"]] for a in info["attributes"]}


def extensions_of(der: bytes) -> list[tuple[str, bool, bytes]]:
    values = attributes_of(der).get(OID_EXTENSION_REQUEST)
    if values is None:
        return []
    assert len(values) == 1
    exts, rest = decoder.decode(values[0], asn1Spec=rfc5280.Extensions())
    assert rest == b""
    return [(str(e["extnID"]), bool(e["critical"]), bytes(e["extnValue"])) for e in exts]


def ext_value(der: bytes, oid: str, spec):
    (value,) = [v for o, _, v in extensions_of(der) if o == oid]
    decoded, rest = decoder.decode(value, asn1Spec=spec)
    assert rest == b""
    return decoded


def name_value_pairs(der: bytes) -> list[tuple[str, str]]:
    pairs = []
    for value in attributes_of(der).get(OID_NAME_VALUE, []):
        pair, rest = decoder.decode(value, asn1Spec=NameValuePair())
        assert rest == b""
        pairs.append((str(pair["name"]), str(pair["value"])))
    return pairs


def cryptography_says_valid(der: bytes) -> bool:
    return cx509.load_der_x509_csr(der).is_signature_valid


# -- signatures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("hash_name", "label"), [("sha256", "sha256"), ("sha384", "sha384"), ("sha512", "sha512")])
def test_rsa_pkcs1_requests_verify(tmp_path: Path, rsa_key, hash_name: str, label: str) -> None:
    policy = inf(f"[NewRequest]\nSubject = CN=rsa\nHashAlgorithm = {hash_name}\n")
    der = build(policy, rsa_key)
    text = verify_with_openssl(tmp_path, der)
    assert f"Signature Algorithm: {label}WithRSAEncryption" in text
    assert cryptography_says_valid(der)


@pytest.mark.parametrize(("hash_name", "salt"), [("sha256", 32), ("sha384", 48), ("sha512", 64)])
def test_rsa_pss_requests_verify_with_explicit_parameters(tmp_path: Path, rsa_key, hash_name: str, salt: int) -> None:
    policy = inf(f"[NewRequest]\nSubject = CN=pss\nHashAlgorithm = {hash_name}\nAlternateSignatureAlgorithm = TRUE\n")
    der = build(policy, rsa_key)
    text = verify_with_openssl(tmp_path, der)
    assert "Signature Algorithm: rsassaPss" in text
    assert f"Hash Algorithm: {hash_name}" in text
    assert f"Mask Algorithm: mgf1 with {hash_name}" in text
    assert f"Salt Length: 0x{salt:X}" in text
    assert cryptography_says_valid(der)

    algorithm = decode(der)["signatureAlgorithm"]
    assert algorithm["algorithm"] == rfc4055.id_RSASSA_PSS
    params, rest = decoder.decode(bytes(algorithm["parameters"]), asn1Spec=rfc4055.RSASSA_PSS_params())
    assert rest == b""
    hash_oid = {"sha256": rfc4055.id_sha256, "sha384": rfc4055.id_sha384, "sha512": rfc4055.id_sha512}[hash_name]
    assert params["hashAlgorithm"]["algorithm"] == hash_oid
    assert params["maskGenAlgorithm"]["algorithm"] == rfc4055.id_mgf1
    mgf_hash, _ = decoder.decode(
        bytes(params["maskGenAlgorithm"]["parameters"]), asn1Spec=rfc5280.AlgorithmIdentifier()
    )
    assert mgf_hash["algorithm"] == hash_oid
    assert int(params["saltLength"]) == salt
    assert int(params["trailerField"]) == 1  # the DEFAULT, so absent from the DER


@pytest.mark.parametrize(
    ("curve", "hash_name"), [("P256", "sha256"), ("P384", "sha384"), ("P521", "sha512"), ("P256", "sha384")]
)
def test_ecdsa_requests_verify(tmp_path: Path, ec_keys, curve: str, hash_name: str) -> None:
    policy = inf(f"[NewRequest]\nSubject = CN=ec\nKeyAlgorithm = ECDSA_{curve}\nHashAlgorithm = {hash_name}\n")
    der = build(policy, ec_keys[curve])
    text = verify_with_openssl(tmp_path, der)
    assert f"Signature Algorithm: ecdsa-with-{hash_name.upper()}" in text
    assert cryptography_says_valid(der)
    algorithm = decode(der)["signatureAlgorithm"]
    assert not algorithm["parameters"].hasValue()  # RFC 5758: absent, not NULL


def test_ecdh_key_requests_are_signed_with_ecdsa(tmp_path: Path, ec_keys) -> None:
    policy = inf("[NewRequest]\nSubject = CN=ecdh\nKeyAlgorithm = ECDH_P384\n")
    der = build(policy, ec_keys["P384"])
    text = verify_with_openssl(tmp_path, der)
    assert "Key Agreement" in text


# -- contents -------------------------------------------------------------------------------------


def test_openssl_shows_subject_every_extension_and_attribute(tmp_path: Path, rsa_key) -> None:
    der = build(inf(FULL_INF), rsa_key)
    text = verify_with_openssl(tmp_path, der)
    assert "Subject: CN = John Smith, CN = Users, DC = Contoso, DC = com" in text  # RDNs in the order written
    assert re.search(
        r"X509v3 Key Usage: critical\n\s+Digital Signature, Non Repudiation, Key Encipherment, Data Encipherment\n",
        text,
    )
    for shown in (
        "othername: UPN::User@Domain.com",
        "email:User@Domain.com",
        "DNS:host.domain.com",
        "DirName:/CN=Name/DC=Domain/DC=com",
        "URI:http://host.domain.com/default.html",
        "IP Address:10.0.0.1",
        "IP Address:FE80:0:0:0:0:0:1:2",
        "Registered ID:1.2.3.4.5",
        "othername: 1.2.3.4.6.1::String",
    ):
        assert shown in text
    assert "X509v3 Subject Alternative Name: \n" in text  # not critical
    assert "TLS Web Client Authentication, Microsoft Smartcard Login" in text
    assert re.search(r"X509v3 Basic Constraints: critical\n\s+CA:TRUE, pathlen:0\n", text)
    ski = cx509.SubjectKeyIdentifier.from_public_key(rsa_key.public_key()).digest
    assert f"X509v3 Subject Key Identifier: \n                    {ski.hex(':').upper()}\n" in text
    assert "S/MIME Capabilities" in text
    assert "1.3.6.1.4.1.311.20.2: \n" in text
    assert OID_CSP in text and OID_NAME_VALUE in text


def test_pyasn1_decodes_every_part(rsa_key) -> None:
    der = build(inf(FULL_INF), rsa_key)
    info = decode(der)["certificationRequestInfo"]
    assert int(info["version"]) == 0
    rdns = [[(str(a["type"]), bytes(a["value"])) for a in rdn] for rdn in info["subject"][0]]
    assert rdns[0] == [("2.5.4.3", b"\x0c\x0aJohn Smith")]  # UTF8String
    assert rdns[2] == [("0.9.2342.19200300.100.1.25", b"\x16\x07Contoso")]  # IA5String

    exts = extensions_of(der)
    assert [(o, c) for o, c, _ in exts] == [
        ("2.5.29.15", True),
        ("2.5.29.17", False),
        ("2.5.29.37", False),
        ("2.5.29.19", True),
        ("2.5.29.14", False),
        ("1.2.840.113549.1.9.15", False),
        ("1.3.6.1.4.1.311.20.2", False),
    ]
    usage = ext_value(der, "2.5.29.15", rfc5280.KeyUsage())
    assert [i for i, bit in enumerate(usage) if bit] == [0, 1, 2, 3]

    names = ext_value(der, "2.5.29.17", rfc5280.GeneralNames())
    upn = names[0]["otherName"]
    assert str(upn["type-id"]) == "1.3.6.1.4.1.311.20.2.3"
    assert str(decoder.decode(bytes(upn["value"]), asn1Spec=char.UTF8String())[0]) == "User@Domain.com"
    assert str(names[1]["rfc822Name"]) == "User@Domain.com"
    assert str(names[2]["dNSName"]) == "host.domain.com"
    assert str(names[4]["uniformResourceIdentifier"]) == "http://host.domain.com/default.html"
    assert bytes(names[5]["iPAddress"]) == bytes([10, 0, 0, 1])
    assert len(bytes(names[6]["iPAddress"])) == 16
    assert str(names[7]["registeredID"]) == "1.2.3.4.5"
    guid = names[8]["otherName"]
    assert str(guid["type-id"]) == "1.3.6.1.4.1.311.25.1"
    guid_bytes = bytes(decoder.decode(bytes(guid["value"]), asn1Spec=univ.OctetString())[0])
    assert guid_bytes == uuid.UUID("f7c3ac41-b8ce-4fb4-aa58-3d1dc0e36b39").bytes_le

    eku = ext_value(der, "2.5.29.37", rfc5280.ExtKeyUsageSyntax())
    assert [str(o) for o in eku] == ["1.3.6.1.5.5.7.3.2", "1.3.6.1.4.1.311.20.2.2"]
    constraints = ext_value(der, "2.5.29.19", rfc5280.BasicConstraints())
    assert bool(constraints["cA"]) and int(constraints["pathLenConstraint"]) == 0
    ski = ext_value(der, "2.5.29.14", rfc5280.SubjectKeyIdentifier())
    assert bytes(ski) == cx509.SubjectKeyIdentifier.from_public_key(rsa_key.public_key()).digest
    caps = ext_value(der, "1.2.840.113549.1.9.15", rfc5751.SMIMECapabilities())
    assert [str(c["capabilityID"]) for c in caps] == [
        "2.16.840.1.101.3.4.1.42",
        "2.16.840.1.101.3.4.1.22",
        "2.16.840.1.101.3.4.1.2",
    ]
    assert str(ext_value(der, "1.3.6.1.4.1.311.20.2", char.BMPString())) == "User"

    assert sorted(name_value_pairs(der)) == [
        ("CertificateTemplate", "User"),
        ("SAN", "dns=other.example&upn=a@example.com"),
    ]
    (csp,) = attributes_of(der)[OID_CSP]
    decoded, rest = decoder.decode(csp, asn1Spec=CspInfo())
    assert rest == b""
    assert int(decoded["keySpec"]) == 1
    assert str(decoded["cspName"]) == "Microsoft Software Key Storage Provider"
    assert len(decoded["signature"]) == 0


def test_ski_is_the_one_openssl_computes_for_the_request_key(tmp_path: Path, ec_keys) -> None:
    policy = inf("[NewRequest]\nSubject = CN=ski\nKeyAlgorithm = ECDSA_P256\n")
    der = build(policy, ec_keys["P256"])
    path = tmp_path / "r.der"
    path.write_bytes(der)
    pem = openssl("req", "-inform", "DER", "-in", str(path), "-pubkey", "-noout").stdout
    key_from_openssl = serialization.load_pem_public_key(pem.encode())
    expected = cx509.SubjectKeyIdentifier.from_public_key(key_from_openssl).digest
    assert bytes(ext_value(der, "2.5.29.14", rfc5280.SubjectKeyIdentifier())) == expected


def test_minimal_policy_gets_key_usage_ski_and_csp_info(rsa_key) -> None:
    der = build(inf("[NewRequest]\nSubject = CN=min\n"), rsa_key)
    assert [(o, c) for o, c, _ in extensions_of(der)] == [("2.5.29.15", True), ("2.5.29.14", False)]
    usage = ext_value(der, "2.5.29.15", rfc5280.KeyUsage())
    assert [i for i, bit in enumerate(usage) if bit] == [0, 1]  # AT_SIGNATURE: 0xC0
    assert set(attributes_of(der)) == {OID_EXTENSION_REQUEST, OID_CSP}
    csp, _ = decoder.decode(attributes_of(der)[OID_CSP][0], asn1Spec=CspInfo())
    assert int(csp["keySpec"]) == 2


def test_decipher_only_is_bit_8(rsa_key) -> None:
    policy = inf(
        "[NewRequest]\nSubject = CN=d\nKeyUsage = CERT_KEY_AGREEMENT_KEY_USAGE | CERT_DECIPHER_ONLY_KEY_USAGE\n"
    )
    usage = ext_value(build(policy, rsa_key), "2.5.29.15", rfc5280.KeyUsage())
    assert [i for i, bit in enumerate(usage) if bit] == [4, 8]


def test_suppress_defaults_keeps_only_what_the_inf_says(tmp_path: Path, rsa_key) -> None:
    policy = inf(
        "[NewRequest]\nSubject = CN=bare\nSuppressDefaults = TRUE\n"
        "[Extensions]\n2.5.29.37 = {text}1.3.6.1.5.5.7.3.2\n"
        "[RequestAttributes]\nCertificateTemplate = User\n"
    )
    der = build(policy, rsa_key)
    verify_with_openssl(tmp_path, der)
    assert [o for o, _, _ in extensions_of(der)] == ["2.5.29.37"]
    assert set(attributes_of(der)) == {OID_EXTENSION_REQUEST, OID_NAME_VALUE}
    assert name_value_pairs(der) == [("CertificateTemplate", "User")]


def test_suppress_defaults_keeps_a_written_key_usage(rsa_key) -> None:
    policy = inf("[NewRequest]\nSubject = CN=bare\nSuppressDefaults = TRUE\nKeyUsage = 0x20\n")
    der = build(policy, rsa_key)
    assert [(o, c) for o, c, _ in extensions_of(der)] == [("2.5.29.15", True)]
    assert set(attributes_of(der)) == {OID_EXTENSION_REQUEST}


def test_suppress_defaults_with_nothing_left_has_an_empty_attribute_set(tmp_path: Path, rsa_key) -> None:
    der = build(inf("[NewRequest]\nSubject = CN=bare\nSuppressDefaults = TRUE\n"), rsa_key)
    verify_with_openssl(tmp_path, der)
    info = decode(der)["certificationRequestInfo"]
    assert info["attributes"].isValue and len(info["attributes"]) == 0  # [0] is there, empty (RFC 2986)


def test_no_subject_is_an_empty_name(tmp_path: Path, rsa_key) -> None:
    policy = inf("[NewRequest]\nKeyLength = 2048\n[Extensions]\n2.5.29.17 = {text}DNS=only.example\n")
    der = build(policy, rsa_key)
    verify_with_openssl(tmp_path, der)
    assert len(decode(der)["certificationRequestInfo"]["subject"][0]) == 0
    assert subject_text(policy) == "(empty)"
    assert subject_text(inf(FULL_INF)) == "CN=John Smith, CN=Users, DC=Contoso, DC=com"


def test_template_oid_gives_the_template_information_extension(rsa_key) -> None:
    oid = "1.3.6.1.4.1.311.21.8.7654321.1234567.1.2"
    der = build(inf(f"[NewRequest]\nSubject = CN=t\n[RequestAttributes]\nCertificateTemplate = {oid}\n"), rsa_key)
    template = ext_value(der, "1.3.6.1.4.1.311.21.7", TemplateInfo())
    assert str(template["templateID"]) == oid and not template["major"].isValue
    assert "1.3.6.1.4.1.311.20.2" not in [o for o, _, _ in extensions_of(der)]
    assert name_value_pairs(der) == [("CertificateTemplate", oid)]


def test_inf_extensions_replace_defaults_with_the_same_oid(rsa_key) -> None:
    policy = inf(
        "[NewRequest]\nSubject = CN=t\n[Extensions]\n"
        "2.5.29.14 = {octet}{hex}01 02 03 04\n"
        "2.5.29.15 = {hex}03 02 05 a0\n"
        "1.3.6.1.4.1.311.20.2 = {hex}1e 04 00 58 00 59\n"
        "[RequestAttributes]\nCertificateTemplate = User\n"
    )
    der = build(policy, rsa_key)
    oids = [o for o, _, _ in extensions_of(der)]
    assert oids == ["2.5.29.14", "2.5.29.15", "1.3.6.1.4.1.311.20.2"]
    assert bytes(ext_value(der, "2.5.29.14", rfc5280.SubjectKeyIdentifier())) == b"\x01\x02\x03\x04"
    assert str(ext_value(der, "1.3.6.1.4.1.311.20.2", char.BMPString())) == "XY"


@pytest.mark.parametrize(
    ("algorithm", "length", "expected"),
    [
        (
            "rc2",
            128,
            [
                ("1.2.840.113549.3.2", 128),
                "2.16.840.1.101.3.4.1.42",
                "2.16.840.1.101.3.4.1.22",
                "2.16.840.1.101.3.4.1.2",
            ],
        ),
        (
            "3des",
            168,
            ["1.2.840.113549.3.7", "2.16.840.1.101.3.4.1.42", "2.16.840.1.101.3.4.1.22", "2.16.840.1.101.3.4.1.2"],
        ),
        ("des", 56, ["1.3.14.3.2.7", "2.16.840.1.101.3.4.1.42", "2.16.840.1.101.3.4.1.22", "2.16.840.1.101.3.4.1.2"]),
        ("aes", 128, ["2.16.840.1.101.3.4.1.2", "2.16.840.1.101.3.4.1.42", "2.16.840.1.101.3.4.1.22"]),
        ("AES", 192, ["2.16.840.1.101.3.4.1.22", "2.16.840.1.101.3.4.1.42", "2.16.840.1.101.3.4.1.2"]),
    ],
)
def test_smime_capabilities_start_with_the_encryption_algorithm(rsa_key, algorithm: str, length: int, expected) -> None:
    policy = inf(
        f"[NewRequest]\nSubject = CN=m\nSMIME = TRUE\nEncryptionAlgorithm = {algorithm}\nEncryptionLength = {length}\n"
    )
    caps = ext_value(build(policy, rsa_key), "1.2.840.113549.1.9.15", rfc5751.SMIMECapabilities())
    found: list[object] = []
    for cap in caps:
        if cap["parameters"].hasValue():
            bits, _ = decoder.decode(bytes(cap["parameters"]), asn1Spec=univ.Integer())
            found.append((str(cap["capabilityID"]), int(bits)))
        else:
            found.append(str(cap["capabilityID"]))
    assert found == expected


def test_smime_is_kept_with_suppress_defaults(rsa_key) -> None:
    policy = inf("[NewRequest]\nSubject = CN=m\nSMIME = TRUE\nSuppressDefaults = TRUE\n")
    assert [o for o, _, _ in extensions_of(build(policy, rsa_key))] == ["1.2.840.113549.1.9.15"]


# -- errors ---------------------------------------------------------------------------------------


def policy_error(text: str, spki: bytes) -> str:
    with pytest.raises(PolicyError) as info:
        request_info(inf(text), spki)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def spki(rsa_key) -> bytes:
    return rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("algorithm", ["DSA", "DH"])
def test_dsa_and_dh_policies_are_refused(spki: bytes, algorithm: str) -> None:
    message = policy_error(f"[NewRequest]\nSubject = CN=x\nKeyAlgorithm = {algorithm}\n", spki)
    assert message.startswith("t.inf:3: ") and f"KeyAlgorithm = {algorithm} is not supported" in message
    with pytest.raises(PolicyError):
        planned_contents(inf(f"[NewRequest]\nSubject = CN=x\nKeyAlgorithm = {algorithm}\n"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[NewRequest]\nSubject = CN=x,C=USA\n", "t.inf:2: Subject: C must be a two-letter country code"),
        ("[NewRequest]\nSubject = E=jörg@example.com\n", "t.inf:2: Subject: E 'jörg@example.com' must be ASCII"),
        ('[NewRequest]\nSubject = "CN="""""\n', "t.inf:2: Subject: CN is empty"),
        (
            "[NewRequest]\nX500NameFlags = CERT_NAME_STR_DISABLE_UTF8_DIR_STR_FLAG\nSubject = CN=\U0001f600\n",
            "t.inf:3: Subject: CN '\U0001f600' has characters outside the BMP",
        ),
        (
            "[NewRequest]\nSubject = CN=x\nSMIME = TRUE\nEncryptionAlgorithm = blowfish\n",
            "t.inf:4: EncryptionAlgorithm 'blowfish' has no S/MIME capability",
        ),
        (
            "[NewRequest]\nSubject = CN=x\nSMIME = TRUE\nEncryptionLength = 100\n",
            "t.inf:4: EncryptionLength 100 is not an AES key size",
        ),
        (
            "[NewRequest]\nSubject = CN=x\n[Extensions]\n2.5.29.17 = {text}1.2.3.4={hex}a1 02 05 00\n",
            "t.inf:4: extension 2.5.29.17: otherName 1.2.3.4: the value must be a universal ASN.1 type",
        ),
        (
            "[NewRequest]\nSubject = CN=x\n[Extensions]\n2.5.29.17 = {text}URL=http://ü.example/\n",
            "t.inf:4: extension 2.5.29.17: URL (percent-encode it) 'http://ü.example/' must be ASCII",
        ),
        (
            "[NewRequest]\nSubject = CN=x\n[RequestAttributes]\nName = \U0001f600\n",
            "t.inf:3: Name value '\U0001f600' has characters a BMPString cannot hold",
        ),
        (
            "[NewRequest]\nSubject = CN=x\nKeyUsage = 0x100\n",
            "t.inf:3: KeyUsage 0x100 has bits that are no key usage",
        ),
    ],
)
def test_unencodable_policies_name_the_line(spki: bytes, text: str, expected: str) -> None:
    assert policy_error(text, spki).startswith(expected)


def test_garbage_public_key_is_an_input_error() -> None:
    with pytest.raises(InputError, match="cannot read public key"):
        request_info(inf("[NewRequest]\nSubject = CN=x\n"), b"\x30\x03\x02\x01\x01")


# -- planned contents -----------------------------------------------------------------------------

PLANS = {
    "full": FULL_INF,
    "minimal": "[NewRequest]\nSubject = CN=min\n",
    "suppressed": "[NewRequest]\nSubject = CN=s\nSuppressDefaults = TRUE\n[RequestAttributes]\nA = b\nC = d\n",
    "suppressed-ku": "[NewRequest]\nSuppressDefaults = TRUE\nKeyUsage = 0x80\n[Extensions]\n2.5.29.17 = {text}DNS=a\n",
    "template-oid": "[NewRequest]\nSubject = CN=t\nKeyAlgorithm = ECDSA_P384\n[RequestAttributes]\n"
    "CertificateTemplate = 1.2.3.4.5\n",
    "inf-ski": "[NewRequest]\nSubject = CN=t\n[Extensions]\n2.5.29.14 = {octet}{hex}0102\nCritical = 2.5.29.14\n",
    "smime-rc2": "[NewRequest]\nSubject = CN=t\nSMIME = TRUE\nEncryptionAlgorithm = rc2\nEncryptionLength = 40\n",
}


@pytest.mark.parametrize("name", sorted(PLANS))
def test_planned_contents_match_a_real_build(rsa_key, ec_keys, name: str) -> None:
    policy = inf(PLANS[name])
    der = build(policy, key_for(policy, rsa_key, ec_keys))
    plan = planned_contents(policy)
    planned_extensions = [(i.oid, i.critical) for i in plan if i.kind == "extension"]
    assert planned_extensions == [(o, c) for o, c, _ in extensions_of(der)]
    built_attributes = sorted(
        (oid, len(values)) for oid, values in attributes_of(der).items() if oid != OID_EXTENSION_REQUEST
    )
    planned_attributes: dict[str, int] = {}
    for item in plan:
        if item.kind == "attribute":
            assert item.critical is None
            planned_attributes[item.oid] = planned_attributes.get(item.oid, 0) + 1
    assert sorted(planned_attributes.items()) == built_attributes
    assert (OID_EXTENSION_REQUEST in attributes_of(der)) == bool(planned_extensions)


def test_planned_contents_say_what_is_a_default() -> None:
    items = {i.oid: i for i in planned_contents(inf(FULL_INF))}
    assert items["2.5.29.14"].text == "(SHA-1 of the public key, known after generation)"
    assert items["2.5.29.14"].default and items["2.5.29.15"].default and items[OID_CSP].default
    assert not items["2.5.29.17"].default and not items[OID_NAME_VALUE].default
    assert items["2.5.29.15"].text == "digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment"
    assert items["2.5.29.37"].text == "clientAuth (1.3.6.1.5.5.7.3.2), smartcardLogon (1.3.6.1.4.1.311.20.2.2)"
    assert items["1.3.6.1.4.1.311.20.2"].name == "Certificate Template Name"
    written = {i.oid: i for i in planned_contents(inf("[NewRequest]\nSubject = CN=x\nKeyUsage = 0xa0\n"))}
    assert not written["2.5.29.15"].default


# -- the seed INFs --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SEEDS.glob("*.inf")), ids=lambda p: p.stem)
def test_every_seed_builds_a_request_openssl_accepts(tmp_path: Path, rsa_key, ec_keys, path: Path) -> None:
    policy = load_policy(path)
    if policy.key_family in ("DSA", "DH"):
        with pytest.raises(PolicyError, match="is not supported"):
            request_info(policy, b"")
        return
    der = build(policy, key_for(policy, rsa_key, ec_keys))
    verify_with_openssl(tmp_path, der)
    assert cryptography_says_valid(der)
    assert [(o, c) for o, c, _ in extensions_of(der)] == [
        (i.oid, i.critical) for i in planned_contents(policy) if i.kind == "extension"
    ]
    assert sorted(name_value_pairs(der)) == sorted(policy.request_attributes)
