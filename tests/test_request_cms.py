"""CMS SignedData for enroll-on-behalf-of and CMC (request.cms, request.cmc builders), checked by tools we
did not write: `openssl cms -verify`, pyasn1-modules' RFC 5652 / RFC 6402 decoders, cryptography and
hashlib/hmac recomputing every signature and witness from the formulas in docs/wire-formats.md.

Agent certificates come from tests/ca.py (openssl only); agent and request keys are SoftwareSigners.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import char, namedtype, univ
from pyasn1_modules import rfc2986, rfc5280, rfc5652, rfc6402

from tests.ca import OpenSslCA, openssl
from tests.conftest import der_order
from tokenagent.errors import InputError, VerificationError
from tokenagent.inf import parse_policy
from tokenagent.request.algorithms import SignatureAlgorithm, signature_algorithm
from tokenagent.request.asn1.cmc import TaggedCertificationRequest, TaggedRequest
from tokenagent.request.cmc import (
    CRL_REASONS,
    CmcControls,
    pki_data,
    pop_link_witness_attribute,
    reg_info_value,
    revoke_request,
)
from tokenagent.request.cms_sign import (
    SignerSpec,
    append_signer,
    renewal_certificate_attribute,
    requester_name_attribute,
    sign_content,
)
from tokenagent.request.cms_verify import verify_certification_request, verify_signers
from tokenagent.request.oids import OID_DATA
from tokenagent.request.pkcs10 import build_request
from tokenagent.request.signed_data import encapsulated, inner_certification_request
from tokenagent.request.signer import SoftwareSigner

DOMAIN_USER = "CONTOSO\\jsmith"
OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_NAME_VALUE_PAIR = "1.3.6.1.4.1.311.13.2.1"
OID_RENEWAL_CERTIFICATE = "1.3.6.1.4.1.311.13.1"
OID_PKI_DATA = "1.3.6.1.5.5.7.12.2"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_SHA384 = "2.16.840.1.101.3.4.2.2"
SIGNATURE_OIDS = {
    "rsa": "1.2.840.113549.1.1.11",  # sha256WithRSAEncryption
    "pss": "1.2.840.113549.1.1.10",  # RSASSA-PSS
    "ec": "1.2.840.10045.4.3.2",  # ecdsa-with-SHA256
    "ec384": "1.2.840.10045.4.3.3",  # ecdsa-with-SHA384
}
USER_INF = """[NewRequest]
Subject = "CN=John Smith,O=Contoso"
KeyAlgorithm = ECDSA_P256
[RequestAttributes]
CertificateTemplate = User
"""
SECRET = b"shared secret from the CA"
IDENTIFICATION = "jsmith"


class NameValuePair(univ.Sequence):
    """MS-WCCE 2.2.2.7.10, declared here with pyasn1 (not the asn1crypto class under test)."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("name", char.BMPString()),
        namedtype.NamedType("value", char.BMPString()),
    )


# -- fixtures: keys are SoftwareSigners, certificates come from the openssl CA -----------------------------


@dataclass(frozen=True)
class Agent:
    name: str
    signer: SoftwareSigner
    certificate: bytes
    pem: Path

    def spec(self, *extra: asn1_cms.CMSAttribute) -> SignerSpec:
        return SignerSpec(self.signer, certificate=self.certificate, extra_signed_attributes=extra)

    @property
    def subject(self) -> str:
        return der_order(x509.load_der_x509_certificate(self.certificate).subject)


@dataclass(frozen=True)
class User:
    signer: SoftwareSigner
    request: bytes
    ski: bytes  # the request's Subject Key Identifier extension (read with cryptography)

    def spec(self) -> SignerSpec:
        return SignerSpec(self.signer, subject_key_identifier=self.ski)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cms")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> OpenSslCA:
    return OpenSslCA.create(tmp_path_factory.mktemp("ca"))


def _agent(ca: OpenSslCA, work: Path, name: str, key, algorithm: SignatureAlgorithm) -> Agent:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Agent {name}")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    pem = work / f"agent-{name}.pem"
    certificate = ca.issue_agent(csr.public_bytes(serialization.Encoding.DER), pem)
    return Agent(name, SoftwareSigner(key, algorithm), certificate, pem)


@pytest.fixture(scope="module")
def agents(ca: OpenSslCA, work: Path) -> dict[str, Agent]:
    rsa_key = rsa.generate_private_key(65537, 2048)
    pss_key = rsa.generate_private_key(65537, 2048)
    return {
        "rsa": _agent(ca, work, "rsa", rsa_key, SignatureAlgorithm("sha256", "pkcs1v15")),
        "pss": _agent(ca, work, "pss", pss_key, SignatureAlgorithm("sha256", "pss")),
        "ec": _agent(ca, work, "ec", ec.generate_private_key(ec.SECP256R1()), SignatureAlgorithm("sha256", "ecdsa")),
        "ec384": _agent(
            ca, work, "ec384", ec.generate_private_key(ec.SECP384R1()), SignatureAlgorithm("sha384", "ecdsa")
        ),
    }


def make_user(extra_attributes=()) -> User:
    policy = parse_policy(USER_INF, "user.inf")
    signer = SoftwareSigner(ec.generate_private_key(ec.SECP256R1()), signature_algorithm(policy))
    request = build_request(policy, signer.public_key_info(), signer, extra_attributes=extra_attributes)
    csr = x509.load_der_x509_csr(request)
    ski = csr.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    return User(signer, request, ski)


@pytest.fixture(scope="module")
def user() -> User:
    return make_user()


@pytest.fixture(scope="module")
def user_cert(ca: OpenSslCA, user: User, work: Path) -> Path:
    """A certificate for the request key, only so that openssl can check the request key's SignerInfo."""
    ca.issue(user.request, work / "user.pem")
    return work / "user.pem"


@pytest.fixture(scope="module")
def pkcs7(agents: dict[str, Agent], user: User) -> bytes:
    return sign_content(OID_DATA, user.request, [agents["rsa"].spec(requester_name_attribute(DOMAIN_USER))])


def eobo_controls(**changes: object) -> CmcControls:
    base = {
        "transaction_id": 4711,
        "sender_nonce": b"\x01" * 16,
        "requester_name": DOMAIN_USER,
        "reg_info": (("CertificateTemplate", "User"),),
    }
    return CmcControls(**{**base, **changes})


@pytest.fixture(scope="module")
def cmc_eobo(agents: dict[str, Agent], user: User) -> bytes:
    content = pki_data(user.request, eobo_controls()).dump()
    return sign_content(OID_PKI_DATA, content, [user.spec(), agents["ec"].spec()])


# -- independent helpers -----------------------------------------------------------------------------------


def signed_data(der: bytes) -> rfc5652.SignedData:
    """pyasn1's reading of the whole message, independent of asn1crypto."""
    info, rest = decoder.decode(der, asn1Spec=rfc5652.ContentInfo())
    assert rest == b"" and str(info["contentType"]) == OID_SIGNED_DATA
    data, rest = decoder.decode(info["content"], asn1Spec=rfc5652.SignedData())
    assert rest == b""
    return data


def pki_data_of(der: bytes) -> rfc6402.PKIData:
    data = signed_data(der)
    assert str(data["encapContentInfo"]["eContentType"]) == OID_PKI_DATA
    pki, rest = decoder.decode(bytes(data["encapContentInfo"]["eContent"]), asn1Spec=rfc6402.PKIData())
    assert rest == b""
    return pki


def signer_info_bytes(der: bytes) -> list[bytes]:
    """Each SignerInfo re-encoded by pyasn1 (DER), checked to be the bytes in the message itself."""
    encoded = [encoder.encode(info) for info in signed_data(der)["signerInfos"]]
    for raw in encoded:
        assert raw in der
    return encoded


def certificates(der: bytes) -> list[bytes]:
    data = signed_data(der)
    if not data["certificates"].isValue:
        return []
    return [encoder.encode(choice["certificate"]) for choice in data["certificates"]]


def attributes(info: rfc5652.SignerInfo) -> dict[str, list[bytes]]:
    return {str(a["attrType"]): [bytes(v) for v in a["attrValues"]] for a in info["signedAttrs"]}


def requester_name(info: rfc5652.SignerInfo) -> tuple[str, str]:
    values = attributes(info)[OID_NAME_VALUE_PAIR]
    assert len(values) == 1
    pair, rest = decoder.decode(values[0], asn1Spec=NameValuePair())
    assert rest == b""
    return str(pair["name"]), str(pair["value"])


def check_signer_independently(info: rfc5652.SignerInfo, public_key, content: bytes, content_type: str) -> None:
    """RFC 5652 5.4 recomputed with pyasn1 + hashlib + cryptography: digest, content type, signature."""
    values = attributes(info)
    assert decoder.decode(values["1.2.840.113549.1.9.3"][0], asn1Spec=univ.ObjectIdentifier())[
        0
    ] == univ.ObjectIdentifier(content_type)
    hash_name = {OID_SHA256: "sha256", OID_SHA384: "sha384"}[str(info["digestAlgorithm"]["algorithm"])]
    digest = decoder.decode(values["1.2.840.113549.1.9.4"][0], asn1Spec=univ.OctetString())[0]
    assert bytes(digest) == hashlib.new(hash_name, content).digest()
    signed_attributes = b"\x31" + encoder.encode(info["signedAttrs"])[1:]  # DER SET OF, not [0]
    hash_algorithm = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}[hash_name]
    signature = bytes(info["signature"])
    algorithm = str(info["signatureAlgorithm"]["algorithm"])
    if algorithm == SIGNATURE_OIDS["pss"]:
        pss = padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=hash_algorithm.digest_size)
        public_key.verify(signature, signed_attributes, pss, hash_algorithm)
    elif isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, signed_attributes, padding.PKCS1v15(), hash_algorithm)
    else:
        public_key.verify(signature, signed_attributes, ec.ECDSA(hash_algorithm))


_counter = itertools.count()


def cms_verify(
    work: Path, der: bytes, *, trusted: OpenSslCA | None = None, extra_certs: tuple[Path, ...] = ()
) -> bytes:
    """`openssl cms -verify` over every SignerInfo; returns the content openssl extracted.

    Without ``trusted``: -noverify (signatures only); with it: each signer's chain to the test CA too.
    """
    number = next(_counter)
    message, out = work / f"verify-{number}.der", work / f"verify-{number}.out"
    message.write_bytes(der)
    args: list[str | Path] = ["cms", "-verify", "-inform", "DER", "-in", message, "-binary", "-purpose", "any"]
    args += ["-out", out]
    if trusted is None:
        args.append("-noverify")
    else:
        # openssl cms has no -untrusted: the issuing CA goes into the trust store next to the root
        store = work / f"verify-{number}.ca.pem"
        store.write_bytes(trusted.root_cert.read_bytes() + trusted.sub_cert.read_bytes())
        args += ["-CAfile", store]
    if extra_certs:  # searched for signers' certificates the message does not carry
        bundle = work / f"verify-{number}.certs.pem"
        bundle.write_bytes(b"".join(part.read_bytes() for part in extra_certs))
        args += ["-certfile", bundle]
    openssl(*args)
    return out.read_bytes()


def cms_verify_fails(work: Path, der: bytes) -> str:
    message = work / f"bad-{next(_counter)}.der"
    message.write_bytes(der)
    result = subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            str(message),
            "-binary",
            "-noverify",
            "-out",
            "/dev/null",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    return result.stderr


def all_valid(der: bytes, *extra_keys: bytes) -> list[str]:
    checks = verify_signers(der, extra_keys)
    assert [c.status for c in checks] == ["valid"] * len(checks), [c.reason for c in checks]
    assert all(c.digest_ok and c.signature_ok for c in checks)
    return [c.reason for c in checks]


# -- PKCS7 (docs/wire-formats.md 1a) ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "pss", "ec"])
def test_pkcs7_eobo(kind: str, agents: dict[str, Agent], user: User, ca: OpenSslCA, work: Path) -> None:
    agent = agents[kind]
    der = sign_content(OID_DATA, user.request, [agent.spec(requester_name_attribute(DOMAIN_USER))])

    assert cms_verify(work, der) == user.request
    assert cms_verify(work, der, trusted=ca) == user.request  # agent -> issuing CA -> root

    data = signed_data(der)
    assert int(data["version"]) == 1  # RFC 5652 5.1: id-data, v1 SignerInfos, X.509 certificates only
    assert [str(a["algorithm"]) for a in data["digestAlgorithms"]] == [OID_SHA256]
    assert bytes(data["digestAlgorithms"][0]["parameters"]) == b"\x05\x00"  # NULL, as Windows writes
    assert str(data["encapContentInfo"]["eContentType"]) == OID_DATA
    assert bytes(data["encapContentInfo"]["eContent"]) == user.request
    assert certificates(der) == [agent.certificate]
    (info,) = data["signerInfos"]
    assert int(info["version"]) == 1
    certificate, _ = decoder.decode(agent.certificate, asn1Spec=rfc5280.Certificate())
    sid = info["sid"]["issuerAndSerialNumber"]
    assert encoder.encode(sid["issuer"]) == encoder.encode(certificate["tbsCertificate"]["issuer"])
    assert int(sid["serialNumber"]) == int(certificate["tbsCertificate"]["serialNumber"])
    assert str(info["signatureAlgorithm"]["algorithm"]) == SIGNATURE_OIDS[kind]
    assert requester_name(info) == ("RequesterName", DOMAIN_USER)
    assert set(attributes(info)) == {"1.2.840.113549.1.9.3", "1.2.840.113549.1.9.4", OID_NAME_VALUE_PAIR}
    public_key = x509.load_der_x509_certificate(agent.certificate).public_key()
    check_signer_independently(info, public_key, user.request, OID_DATA)

    (check,) = verify_signers(der)
    assert (check.index, check.status, check.signer_subject) == (0, "valid", agent.subject)
    assert check.certificate == agent.certificate and check.sid.startswith("issuer ")
    assert encapsulated(der, "request") == (OID_DATA, user.request)
    assert inner_certification_request(der, "request") == user.request


def test_requester_name_attribute_bytes() -> None:
    """SET { SEQUENCE { BMPString "RequesterName", BMPString "CONTOSO\\jsmith" } }, byte for byte."""
    attribute = requester_name_attribute(DOMAIN_USER)
    name = "RequesterName".encode("utf-16-be")
    value = DOMAIN_USER.encode("utf-16-be")
    pair = b"\x1e" + bytes([len(name)]) + name + b"\x1e" + bytes([len(value)]) + value
    values = b"\x30" + bytes([len(pair)]) + pair
    oid = b"\x06\x0a\x2b\x06\x01\x04\x01\x82\x37\x0d\x02\x01"
    body = oid + b"\x31" + bytes([len(values)]) + values
    assert attribute.dump() == b"\x30" + bytes([len(body)]) + body
    for bad in ("", "   ", "CONTOSO\\\U0001f600"):
        with pytest.raises(InputError):
            requester_name_attribute(bad)


# -- CMC (docs/wire-formats.md 1b, 3) -----------------------------------------------------------------------------


def test_cmc_eobo(
    cmc_eobo: bytes, agents: dict[str, Agent], user: User, user_cert: Path, ca: OpenSslCA, work: Path
) -> None:
    content = cms_verify(work, cmc_eobo, extra_certs=(user_cert,))
    cms_verify(work, cmc_eobo, trusted=ca, extra_certs=(user_cert,))
    data = signed_data(cmc_eobo)
    assert int(data["version"]) == 3
    assert bytes(data["encapContentInfo"]["eContent"]) == content
    assert certificates(cmc_eobo) == [agents["ec"].certificate]  # the request key has no certificate
    first, second = data["signerInfos"]
    assert int(first["version"]) == 3 and bytes(first["sid"]["subjectKeyIdentifier"]) == user.ski
    assert int(second["version"]) == 1 and second["sid"]["issuerAndSerialNumber"].isValue
    request_key = x509.load_der_x509_csr(user.request).public_key()
    check_signer_independently(first, request_key, content, OID_PKI_DATA)
    agent_key = x509.load_der_x509_certificate(agents["ec"].certificate).public_key()
    check_signer_independently(second, agent_key, content, OID_PKI_DATA)

    pki = pki_data_of(cmc_eobo)
    controls = {str(c["attrType"]): c for c in pki["controlSequence"]}
    assert [int(c["bodyPartID"]) for c in pki["controlSequence"]] == [2, 3, 4]
    assert list(controls) == [str(rfc6402.id_cmc_transactionId), str(rfc6402.id_cmc_senderNonce), "1.3.6.1.5.5.7.7.18"]
    reg_info, _ = decoder.decode(bytes(controls["1.3.6.1.5.5.7.7.18"]["attrValues"][0]), asn1Spec=univ.OctetString())
    assert bytes(reg_info) == b"RequesterName=CONTOSO%5Cjsmith&CertificateTemplate=User&"
    transaction, _ = decoder.decode(bytes(controls[str(rfc6402.id_cmc_transactionId)]["attrValues"][0]))
    assert int(transaction) == 4711
    (tagged,) = pki["reqSequence"]
    assert int(tagged["tcr"]["bodyPartID"]) == 1
    assert encoder.encode(tagged["tcr"]["certificationRequest"]) == user.request
    assert len(pki["cmsSequence"]) == 0 and len(pki["otherMsgSequence"]) == 0

    reasons = all_valid(cmc_eobo)
    assert "the key of the request inside" in reasons[0] and agents["ec"].subject in reasons[1]
    assert inner_certification_request(cmc_eobo, "request") == user.request
    assert encapsulated(cmc_eobo, "request")[0] == OID_PKI_DATA


def test_body_part_ids_follow_the_documented_order(user: User) -> None:
    random = b"\x07" * 64
    requester = make_user([pop_link_witness_attribute(SECRET, IDENTIFICATION, random)])
    revoke = revoke_request(b"\x30\x00", 5, "superseded")
    controls = CmcControls(
        transaction_id=1,
        sender_nonce=b"n",
        identification=IDENTIFICATION,
        shared_secret=SECRET,
        reg_info=(("a", "b"),),
        requester_name=DOMAIN_USER,
        pop_link_random=random,
    )
    der = pki_data(requester.request, controls, revoke=revoke).dump()
    pki, rest = decoder.decode(der, asn1Spec=rfc6402.PKIData())
    assert rest == b""
    got = [(int(c["bodyPartID"]), str(c["attrType"])) for c in pki["controlSequence"]]
    names = [rfc6402.id_cmc_transactionId, rfc6402.id_cmc_senderNonce, rfc6402.id_cmc_identification]
    names += ["1.3.6.1.5.5.7.7.18", rfc6402.id_cmc_popLinkRandom, rfc6402.id_cmc_revokeRequest]
    names += [rfc6402.id_cmc_identityProofV2]
    assert got == [(n, str(oid)) for n, oid in enumerate(names, 2)]
    ids = [n for n, _ in got] + [int(pki["reqSequence"][0]["tcr"]["bodyPartID"])]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(("hash_name", "hmac_oid"), [
    ("sha256", "1.2.840.113549.2.9"),
    ("sha384", "1.2.840.113549.2.10"),
    ("sha512", "1.2.840.113549.2.11"),
])  # fmt: skip
def test_selfsign_cmc_with_identity_proof_and_pop_link(
    hash_name: str, hmac_oid: str, ca: OpenSslCA, work: Path
) -> None:
    """Dogtag's selfSign: request key signs (SKI sid, no certificates); shared-secret witnesses."""
    random = bytes(range(64))
    requester = make_user([pop_link_witness_attribute(SECRET, IDENTIFICATION, random, hash_name)])
    controls = CmcControls(
        transaction_id=7,
        identification=IDENTIFICATION,
        shared_secret=SECRET,
        pop_link_random=random,
        identity_proof_hash=hash_name,
    )
    content = pki_data(requester.request, controls).dump()
    der = sign_content(OID_PKI_DATA, content, [requester.spec()])

    data = signed_data(der)
    assert not data["certificates"].isValue and int(data["version"]) == 3
    (info,) = data["signerInfos"]
    assert bytes(info["sid"]["subjectKeyIdentifier"]) == requester.ski
    check_signer_independently(info, x509.load_der_x509_csr(requester.request).public_key(), content, OID_PKI_DATA)
    # openssl needs a certificate for the SKI: one issued for the request key (same SKI method)
    requester_cert = work / f"selfsign-{hash_name}.pem"
    ca.issue(requester.request, requester_cert)
    assert cms_verify(work, der, extra_certs=(requester_cert,)) == content
    all_valid(der)  # found through the key of the PKCS #10 inside
    all_valid(der, requester.signer.public_key_info())

    key = hashlib.new(hash_name, SECRET + IDENTIFICATION.encode("utf-8")).digest()
    pki = pki_data_of(der)
    proofs = [c for c in pki["controlSequence"] if c["attrType"] == rfc6402.id_cmc_identityProofV2]
    assert len(proofs) == 1 and proofs[0] is pki["controlSequence"][-1]
    proof, _ = decoder.decode(bytes(proofs[0]["attrValues"][0]), asn1Spec=rfc6402.IdentifyProofV2())
    req_sequence = encoder.encode(pki["reqSequence"])  # the whole SEQUENCE OF TaggedRequest, header included
    assert req_sequence in content
    assert bytes(proof["witness"]) == hmac.new(key, req_sequence, hash_name).digest()
    assert str(proof["macAlgId"]["algorithm"]) == hmac_oid
    assert str(proof["proofAlgID"]["algorithm"]) == {"sha256": OID_SHA256, "sha384": OID_SHA384}.get(
        hash_name, "2.16.840.1.101.3.4.2.3"
    )
    randoms = [c for c in pki["controlSequence"] if c["attrType"] == rfc6402.id_cmc_popLinkRandom]
    assert bytes(decoder.decode(bytes(randoms[0]["attrValues"][0]), asn1Spec=univ.OctetString())[0]) == random

    request, _ = decoder.decode(requester.request, asn1Spec=rfc2986.CertificationRequest())
    witnesses = [
        bytes(value)
        for attribute in request["certificationRequestInfo"]["attributes"]
        if str(attribute["type"]) == str(rfc6402.id_cmc_popLinkWitnessV2)
        for value in attribute["values"]
    ]
    assert len(witnesses) == 1
    witness, _ = decoder.decode(witnesses[0], asn1Spec=rfc6402.PopLinkWitnessV2())
    assert bytes(witness["witness"]) == hmac.new(key, random, hash_name).digest()
    assert str(witness["macAlgorithm"]["algorithm"]) == hmac_oid
    assert verify_certification_request(requester.request) == (True, "the signature verifies")


def test_identity_proof_without_identification_hashes_the_secret_alone(user: User) -> None:
    pki = pki_data(user.request, CmcControls(shared_secret=SECRET))
    decoded, _ = decoder.decode(pki.dump(), asn1Spec=rfc6402.PKIData())
    (control,) = decoded["controlSequence"]
    assert int(control["bodyPartID"]) == 2
    proof, _ = decoder.decode(bytes(control["attrValues"][0]), asn1Spec=rfc6402.IdentifyProofV2())
    key = hashlib.sha256(SECRET).digest()
    assert bytes(proof["witness"]) == hmac.new(key, encoder.encode(decoded["reqSequence"]), "sha256").digest()


def test_pop_link_random_needs_the_matching_witness(user: User) -> None:
    random = b"\x42" * 64
    with pytest.raises(InputError, match="0 popLinkWitnessV2"):
        pki_data(user.request, CmcControls(shared_secret=SECRET, pop_link_random=random))
    linked = make_user([pop_link_witness_attribute(SECRET, IDENTIFICATION, random)])
    for controls in (
        CmcControls(shared_secret=b"other", identification=IDENTIFICATION, pop_link_random=random),
        CmcControls(shared_secret=SECRET, identification="someone", pop_link_random=random),
        CmcControls(shared_secret=SECRET, identification=IDENTIFICATION, pop_link_random=b"\x43" * 64),
    ):
        with pytest.raises(InputError, match="was not made from"):
            pki_data(linked.request, controls)
    with pytest.raises(InputError, match="needs the shared secret"):
        pki_data(linked.request, CmcControls(pop_link_random=random))


def test_reg_info_value(user: User) -> None:
    pairs = (("RequesterName", "CONTOSO\\jsmith"), ("SAN", "dns=a.example&upn=x@y"), ("Note", "é ü"))
    assert reg_info_value(pairs) == (
        b"RequesterName=CONTOSO%5Cjsmith&SAN=dns%3Da.example%26upn%3Dx%40y&Note=%C3%A9%20%C3%BC&"
    )
    with pytest.raises(InputError):
        reg_info_value((("", "x"),))
    # requester_name comes first, before the other pairs
    controls = CmcControls(reg_info=(("CertificateTemplate", "User"),), requester_name="D\\u")
    decoded, _ = decoder.decode(pki_data(user.request, controls).dump(), asn1Spec=rfc6402.PKIData())
    (control,) = decoded["controlSequence"]
    value, _ = decoder.decode(bytes(control["attrValues"][0]), asn1Spec=univ.OctetString())
    assert bytes(value) == b"RequesterName=D%5Cu&CertificateTemplate=User&"


def test_revoke_request(agents: dict[str, Agent], ca: OpenSslCA, work: Path) -> None:
    issuer = x509.load_der_x509_certificate(ca.sub_der).subject.public_bytes()
    when = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=timezone(timedelta(hours=2)))
    revoke = revoke_request(issuer, 0x1234ABCD, "keyCompromise", when, "lost the card")
    content = pki_data(None, CmcControls(transaction_id=9, sender_nonce=b"nonce"), revoke=revoke).dump()
    der = sign_content(OID_PKI_DATA, content, [agents["pss"].spec()])
    assert cms_verify(work, der, trusted=ca) == content
    all_valid(der)

    pki = pki_data_of(der)
    assert len(pki["reqSequence"]) == 0
    assert [int(c["bodyPartID"]) for c in pki["controlSequence"]] == [2, 3, 4]
    control = pki["controlSequence"][2]
    assert control["attrType"] == rfc6402.id_cmc_revokeRequest
    value, _ = decoder.decode(bytes(control["attrValues"][0]), asn1Spec=rfc6402.RevokeRequest())
    assert encoder.encode(value["issuerName"]) == issuer
    assert int(value["serialNumber"]) == 0x1234ABCD and int(value["reason"]) == 1
    assert str(value["invalidityDate"]) == "20300102010405Z"  # UTC, no fraction
    assert str(value["comment"]) == "lost the card" and not value["passphrase"].isValue
    with pytest.raises(InputError, match="no PKCS #10"):
        inner_certification_request(der, "revocation")

    by_secret = revoke_request(issuer, 2, "cacompromise", passphrase=b"secret")
    again, _ = decoder.decode(by_secret.dump(), asn1Spec=rfc6402.RevokeRequest())
    assert int(again["reason"]) == 2 and bytes(again["passphrase"]) == b"secret"
    assert not again["invalidityDate"].isValue and not again["comment"].isValue
    for name, number in CRL_REASONS.items():
        decoded, _ = decoder.decode(revoke_request(issuer, 1, name).dump(), asn1Spec=rfc6402.RevokeRequest())
        assert int(decoded["reason"]) == number
    with pytest.raises(InputError, match="unknown revocation reason"):
        revoke_request(issuer, 1, "lostIt")
    with pytest.raises(InputError, match="time zone"):
        revoke_request(issuer, 1, "superseded", datetime(2030, 1, 1))
    with pytest.raises(InputError, match="issuer name"):
        revoke_request(b"\x04\x01x", 1, "superseded")
    with pytest.raises(InputError, match="needs a certification request or a revocation"):
        pki_data(None, CmcControls())


# -- more signatures (docs/wire-formats.md 1c) ------------------------------------------------------------------


def test_two_and_three_agent_signatures(
    pkcs7: bytes, agents: dict[str, Agent], user: User, ca: OpenSslCA, work: Path
) -> None:
    before = signer_info_bytes(pkcs7)
    econtent = encoder.encode(signed_data(pkcs7)["encapContentInfo"])
    two = append_signer(pkcs7, agents["pss"].spec(), [ca.sub_der])
    three = append_signer(two, agents["ec384"].spec())
    for count, der in ((2, two), (3, three)):
        now = signer_info_bytes(der)
        assert len(now) == count and now[: len(before)] == before  # earlier SignerInfos byte for byte
        assert encoder.encode(signed_data(der)["encapContentInfo"]) == econtent
        assert cms_verify(work, der, trusted=ca) == user.request
        all_valid(der)
        assert requester_name(signed_data(der)["signerInfos"][0]) == ("RequesterName", DOMAIN_USER)
    assert signer_info_bytes(three)[:2] == signer_info_bytes(two)
    data = signed_data(three)
    assert int(data["version"]) == 1
    assert [str(a["algorithm"]) for a in data["digestAlgorithms"]] == [OID_SHA256, OID_SHA384]
    assert certificates(three) == [
        agents["rsa"].certificate,
        agents["pss"].certificate,
        ca.sub_der,
        agents["ec384"].certificate,
    ]
    subjects = [check.signer_subject for check in verify_signers(three)]
    assert subjects == [agents["rsa"].subject, agents["pss"].subject, agents["ec384"].subject]
    # the same agent again: its certificate and digest algorithm are not repeated
    four = append_signer(three, agents["rsa"].spec(), [ca.sub_der])
    assert certificates(four) == certificates(three)
    assert len(signed_data(four)["digestAlgorithms"]) == 2 and len(signer_info_bytes(four)) == 4


def test_append_to_cmc_and_version_raise(
    cmc_eobo: bytes, pkcs7: bytes, agents: dict[str, Agent], user: User, user_cert: Path, work: Path
) -> None:
    more = append_signer(cmc_eobo, agents["rsa"].spec())
    assert signer_info_bytes(more)[:2] == signer_info_bytes(cmc_eobo)
    cms_verify(work, more, extra_certs=(user_cert,))
    all_valid(more)
    # an SKI signer makes a PKCS7 SignedData version 3 (RFC 5652 5.1); the bytes before stay
    raised = append_signer(pkcs7, SignerSpec(agents["ec"].signer, subject_key_identifier=b"\x01" * 20))
    assert int(signed_data(raised)["version"]) == 3
    assert signer_info_bytes(raised)[0] == signer_info_bytes(pkcs7)[0]
    checks = verify_signers(raised)
    assert [c.status for c in checks] == ["valid", "unverifiable"] and checks[1].signature_ok is None
    agent_key = serialization.load_der_public_key(agents["ec"].signer.public_key_info())
    assert isinstance(agent_key, ec.EllipticCurvePublicKey)
    # openssl cannot check an SKI signer without a certificate; cryptography can
    check_signer_independently(signed_data(raised)["signerInfos"][1], agent_key, user.request, OID_DATA)


def test_signer_order_is_kept_not_sorted(agents: dict[str, Agent], user: User) -> None:
    """asn1crypto sorts SET OF encodings; SignerInfos must keep the order given (RequesterName first)."""
    orders = []
    for names in (("rsa", "ec"), ("ec", "rsa")):
        der = sign_content(OID_DATA, user.request, [agents[n].spec() for n in names])
        infos = signer_info_bytes(der)
        orders.append(infos == sorted(infos))
        assert [c.signer_subject for c in verify_signers(der)] == [agents[n].subject for n in names]
    assert orders.count(False) == 1  # exactly one of the two orders is not DER-sorted, and it was kept


def test_renewal_certificate_is_a_request_attribute(agents: dict[str, Agent], ca: OpenSslCA, work: Path) -> None:
    """MS-WCCE 3.1.1.4.3.2.1: the old certificate inside the PKCS #10; the old key signs first."""
    old = agents["ec"]
    renewing = make_user([renewal_certificate_attribute(old.certificate)])
    der = sign_content(OID_DATA, renewing.request, [old.spec()])
    assert cms_verify(work, der, trusted=ca) == renewing.request
    request, _ = decoder.decode(renewing.request, asn1Spec=rfc2986.CertificationRequest())
    values = [
        bytes(v)
        for a in request["certificationRequestInfo"]["attributes"]
        if str(a["type"]) == OID_RENEWAL_CERTIFICATE
        for v in a["values"]
    ]
    assert values == [old.certificate]
    with pytest.raises(InputError):
        renewal_certificate_attribute(b"\x30\x03\x02\x01\x01")


# -- signer specs --------------------------------------------------------------------------------------------


def test_signer_spec_errors(agents: dict[str, Agent], user: User) -> None:
    with pytest.raises(InputError, match="neither a certificate nor a subject key identifier"):
        sign_content(OID_DATA, user.request, [SignerSpec(agents["ec"].signer)])
    content_type = asn1_cms.CMSAttribute({"type": "content_type", "values": [OID_DATA]})
    with pytest.raises(InputError, match="contentType is added by tokenagent"):
        sign_content(OID_DATA, user.request, [agents["ec"].spec(content_type)])
    wrong_key = SignerSpec(agents["ec"].signer, certificate=agents["rsa"].certificate)
    with pytest.raises(VerificationError, match="wrong key"):
        sign_content(OID_DATA, user.request, [wrong_key])
    with pytest.raises(InputError, match="certificate of signer 1"):
        sign_content(OID_DATA, user.request, [SignerSpec(agents["ec"].signer, certificate=b"\x30\x00")])
    with pytest.raises(InputError, match="not a content type"):
        sign_content("pkcs10", user.request, [agents["ec"].spec()])


def test_extra_public_key_for_an_ski_signer_without_certificate(agents: dict[str, Agent], user: User) -> None:
    agent = agents["pss"]
    ski = x509.SubjectKeyIdentifier.from_public_key(
        x509.load_der_x509_certificate(agent.certificate).public_key()
    ).digest
    der = sign_content(OID_DATA, user.request, [SignerSpec(agent.signer, subject_key_identifier=ski)])
    (check,) = verify_signers(der)
    assert check.status == "unverifiable" and check.signature_ok is None and check.digest_ok
    all_valid(der, agent.signer.public_key_info())
    (other,) = verify_signers(der, [agents["rsa"].signer.public_key_info()])
    assert other.status == "unverifiable"
    with pytest.raises(InputError, match="public key 1"):
        verify_signers(der, [b"\x30\x03\x02\x01\x01"])


# -- tampering and garbage -------------------------------------------------------------------------------------


def test_a_broken_inner_request_signature_is_detected(agents: dict[str, Agent], user: User) -> None:
    broken = user.request[:-3] + bytes([user.request[-3] ^ 0x01]) + user.request[-2:]
    der = sign_content(OID_DATA, broken, [agents["rsa"].spec(requester_name_attribute(DOMAIN_USER))])
    all_valid(der)  # the agent signed exactly this: its signature is fine
    inner = inner_certification_request(der, "request")
    ok, reason = verify_certification_request(inner)
    assert ok is False and "does not verify" in reason
    assert not x509.load_der_x509_csr(inner).is_signature_valid  # cryptography agrees


def test_digest_mismatch_is_invalid(pkcs7: bytes, user: User, work: Path) -> None:
    subject = b"John Smith"
    changed = pkcs7.replace(subject, b"John Smyth")
    assert changed != pkcs7 and encapsulated(changed, "request")[1] != user.request
    (check,) = verify_signers(changed)
    assert check.status == "invalid" and not check.digest_ok and "messageDigest" in check.reason
    assert "verify_content" in cms_verify_fails(work, changed)  # openssl's content digest check


def test_a_changed_signature_is_invalid(pkcs7: bytes) -> None:
    signature = bytes(signed_data(pkcs7)["signerInfos"][0]["signature"])
    position = pkcs7.index(signature) + 10
    changed = pkcs7[:position] + bytes([pkcs7[position] ^ 0x01]) + pkcs7[position + 1 :]
    (check,) = verify_signers(changed)
    assert check.status == "invalid" and check.digest_ok and check.signature_ok is False


def every_prefix_is_an_input_error(der: bytes) -> None:
    for length in range(len(der)):
        for call in (lambda d: verify_signers(d), lambda d: encapsulated(d, "request")):
            with pytest.raises(InputError) as info:
                call(der[:length])
            assert "\n" not in str(info.value)


def test_every_truncation_is_an_input_error(pkcs7: bytes, cmc_eobo: bytes) -> None:
    every_prefix_is_an_input_error(pkcs7)
    every_prefix_is_an_input_error(cmc_eobo)


def test_every_truncation_of_the_inner_pki_data_is_an_input_error(agents: dict[str, Agent], user: User) -> None:
    content = pki_data(user.request, eobo_controls()).dump()
    for length in range(0, len(content), 7):
        der = sign_content(OID_PKI_DATA, content[:length], [agents["ec"].spec()])
        with pytest.raises(InputError, match="request"):
            inner_certification_request(der, "request")


def flipped(der: bytes) -> Iterator[tuple[int, bytes]]:
    for position in range(len(der)):
        yield position, der[:position] + bytes([der[position] ^ 0xFF]) + der[position + 1 :]


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_every_changed_byte(cmc_eobo: bytes) -> None:
    """InputError or checks, never another exception; a change inside eContent is never valid."""
    content = bytes(signed_data(cmc_eobo)["encapContentInfo"]["eContent"])
    start = cmc_eobo.index(content)
    outcomes = 0
    for position, changed in flipped(cmc_eobo):
        try:
            checks = verify_signers(changed)
        except InputError as exc:
            assert "\n" not in str(exc)
            continue
        outcomes += 1
        if start <= position < start + len(content):
            assert all(check.status != "valid" for check in checks), position
    assert 0 < outcomes < len(cmc_eobo)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (b"\x30\x03\x02\x01\x01", "not a CMS message"),
    (b"\x30\x0b\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x03", "CMS id-envelopedData"),
    (b"\x30\x0b\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02", "without its content"),
    (b"\x30\x0f\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02\xa0\x02\x30\x00", "damaged"),
    (b"garbage that is no base64 at all!", "cannot read"),
])  # fmt: skip
def test_garbage_is_an_input_error(data: bytes, message: str) -> None:
    for call in (verify_signers, lambda d: encapsulated(d, "request"), lambda d: append_signer(d, None)):  # type: ignore[arg-type]
        with pytest.raises(InputError, match=message):
            call(data)


def test_other_der_is_named(user: User, agents: dict[str, Agent], ca: OpenSslCA, work: Path) -> None:
    with pytest.raises(InputError, match="PKCS #10"):
        verify_signers(user.request)
    with pytest.raises(InputError, match=r"X\.509 certificate"):
        inner_certification_request(agents["ec"].certificate, "request")
    p7b = ca.p7b([ca.sub_cert], work / "chain.p7b")
    with pytest.raises(InputError, match="no encapsulated content"):
        encapsulated(p7b, "chain")
    not_a_request = sign_content(OID_DATA, b"hello", [agents["ec"].spec()])
    with pytest.raises(InputError, match="certification request"):
        inner_certification_request(not_a_request, "request")
    assert encapsulated(not_a_request, "x") == (OID_DATA, b"hello")


def test_two_requests_in_cmc_are_refused(agents: dict[str, Agent], user: User) -> None:
    other = make_user()
    pki = pki_data(user.request, CmcControls())
    request = asn1_csr.CertificationRequest.load(other.request)
    tcr = TaggedCertificationRequest({"body_part_id": 9, "certification_request": request})
    second = TaggedRequest(name="tcr", value=tcr)
    pki["req_sequence"].append(second)
    der = sign_content(OID_PKI_DATA, pki.dump(), [agents["ec"].spec()])
    with pytest.raises(InputError, match="2 PKCS #10 requests"):
        inner_certification_request(der, "request")


def test_input_forms(pkcs7: bytes) -> None:
    """Any form read_der accepts: PEM with certreq's label, base64, UTF-16."""
    from tokenagent.request.armor import armor

    text = armor(pkcs7, "NEW CERTIFICATE REQUEST")
    assert verify_signers(text)[0].status == "valid"
    assert verify_signers(text.encode("utf-16"))[0].status == "valid"
    signer = SoftwareSigner(ec.generate_private_key(ec.SECP256R1()), SignatureAlgorithm("sha256", "ecdsa"))
    appended = append_signer(text, SignerSpec(signer, subject_key_identifier=b"key id"))
    assert signer_info_bytes(appended)[0] == signer_info_bytes(pkcs7)[0]
