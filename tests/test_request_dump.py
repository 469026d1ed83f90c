"""`request.dump`: describe/render every form `tokenagent show` reads, built as in test_request_cms.py and by
the openssl test CA (certificates, .p7b chains, CMC responses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.ca import OpenSslCA, openssl, pem_to_der
from tests.conftest import der_order
from tests.test_request_cms import DOMAIN_USER, IDENTIFICATION, SECRET, Agent, User, _agent, eobo_controls, make_user
from tokenagent.errors import InputError
from tokenagent.request.algorithms import SignatureAlgorithm
from tokenagent.request.armor import armor
from tokenagent.request.cmc import CmcControls, pki_data, pop_link_witness_attribute, revoke_request
from tokenagent.request.cms_sign import SignerSpec, append_signer, requester_name_attribute, sign_content
from tokenagent.request.dump import describe, render
from tokenagent.request.oids import OID_DATA

OID_PKI_DATA = "1.3.6.1.5.5.7.12.2"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dump")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> OpenSslCA:
    return OpenSslCA.create(tmp_path_factory.mktemp("dump-ca"))


@pytest.fixture(scope="module")
def agent(ca: OpenSslCA, work: Path) -> Agent:
    return _agent(ca, work, "dump", rsa.generate_private_key(65537, 2048), SignatureAlgorithm("sha256", "pss"))


@pytest.fixture(scope="module")
def user() -> User:
    return make_user()


@pytest.fixture(scope="module")
def pkcs7(agent: Agent, user: User) -> bytes:
    return sign_content(OID_DATA, user.request, [agent.spec(requester_name_attribute(DOMAIN_USER))])


@pytest.fixture(scope="module")
def cmc_eobo(agent: Agent, user: User) -> bytes:
    content = pki_data(user.request, eobo_controls()).dump()
    return sign_content(OID_PKI_DATA, content, [user.spec(), agent.spec()])


def shown(data: bytes | str, **kwargs: object) -> tuple[dict, list[str]]:
    description = describe(data, "file", **kwargs)  # type: ignore[arg-type]
    assert json.loads(json.dumps(description)) == description  # JSON-ready as it is
    lines = render(description)
    assert lines and all(isinstance(line, str) and "\n" not in line for line in lines)
    return description, lines


def test_pkcs10(user: User) -> None:
    d, lines = shown(user.request)
    assert d["kind"] == "pkcs10"
    assert d["subject"] == der_order(x509.load_der_x509_csr(user.request).subject)
    assert d["signature"] == {"ok": True, "reason": "the signature verifies"}
    assert d["template"] == "User" and d["name_value_pairs"] == [["CertificateTemplate", "User"]]
    assert d["public_key"] == {"algorithm": "EC P-256", "key_identifier": user.ski.hex()}
    ski = next(e for e in d["extensions"] if e["oid"] == "2.5.29.14")
    assert ski["value"] == user.ski.hex() and ski["name"] == "Subject Key Identifier"
    names = [a["name"] for a in d["attributes"]]
    assert "Enrollment Name-Value Pair" in names and "Extension Request" in names
    assert lines[0] == "PKCS #10 certificate request"
    assert any("Signature: ecdsa-with-SHA256, valid" in line for line in lines)


def test_pkcs7_eobo(pkcs7: bytes, agent: Agent, user: User) -> None:
    d, lines = shown(armor(pkcs7))
    assert d["kind"] == "cms-pkcs7" and d["version"] == 1 and d["content_type_name"] == "id-data"
    subject = der_order(x509.load_der_x509_csr(user.request).subject)
    assert d["request"]["subject"] == subject and d["request"]["signature"]["ok"] is True
    (signer,) = d["signers"]
    assert signer["requester_name"] == DOMAIN_USER and signer["status"] == "valid"
    assert signer["subject"] == agent.subject and signer["version"] == 1
    assert signer["signature_algorithm"] == "RSASSA-PSS (sha256, MGF1-sha256, salt 32)"
    assert [a["name"] for a in signer["signed_attributes"]] == [
        "contentType",
        "messageDigest",
        "enrollmentNameValuePair",
    ]
    assert d["certificates"][0]["subject"] == agent.subject
    assert any(f"enrollmentNameValuePair: RequesterName={DOMAIN_USER}" in line for line in lines)


def test_cmc_eobo_and_more_signers(cmc_eobo: bytes, agent: Agent, ca: OpenSslCA, work: Path) -> None:
    second = _agent(ca, work, "dump-ec", ec.generate_private_key(ec.SECP256R1()), SignatureAlgorithm("sha256", "ecdsa"))
    d, lines = shown(append_signer(cmc_eobo, second.spec()))
    assert d["kind"] == "cmc-request" and d["signed"] and d["version"] == 3
    assert [c["name"] for c in d["controls"]] == ["transactionId", "senderNonce", "regInfo"]
    assert d["controls"][0]["values"] == [4711] and d["controls"][1]["values"] == ["01" * 16]
    assert d["controls"][2]["values"] == [
        {
            "text": "RequesterName=CONTOSO%5Cjsmith&CertificateTemplate=User&",
            "pairs": [["RequesterName", DOMAIN_USER], ["CertificateTemplate", "User"]],
        }
    ]
    assert d["body_part_ids"] == [2, 3, 4, 1] and d["duplicate_body_part_ids"] == []
    (request,) = d["requests"]
    assert request["body_part_id"] == 1 and request["kind"] == "tcr" and request["request"]["signature"]["ok"]
    assert [s["status"] for s in d["signers"]] == ["valid"] * 3
    assert [s["subject"] for s in d["signers"]] == [None, agent.subject, second.subject]
    assert d["signers"][0]["sid"].startswith("subjectKeyIdentifier ")
    assert "Control [4] regInfo: RequesterName=CONTOSO%5Cjsmith&CertificateTemplate=User&" in [s.strip() for s in lines]


def test_selfsign_and_revoke_controls(agent: Agent, ca: OpenSslCA) -> None:
    random = b"\x05" * 64
    requester = make_user([pop_link_witness_attribute(SECRET, IDENTIFICATION, random)])
    controls = CmcControls(identification=IDENTIFICATION, shared_secret=SECRET, pop_link_random=random)
    content = pki_data(requester.request, controls).dump()
    d, _ = shown(sign_content(OID_PKI_DATA, content, [requester.spec()]))
    assert [c["name"] for c in d["controls"]] == ["identification", "popLinkRandom", "identityProofV2"]
    assert d["controls"][2]["values"][0].startswith("sha256, HMAC sha256 (1.2.840.113549.2.9), witness ")
    attributes = {a["name"]: a["values"] for a in d["requests"][0]["request"]["attributes"]}
    assert attributes["popLinkWitnessV2"][0].startswith("sha256, HMAC sha256")
    assert d["signers"][0]["status"] == "valid" and d["certificates"] == []

    issuer = x509.load_der_x509_certificate(ca.sub_der).subject
    revoke = revoke_request(issuer.public_bytes(), 0xABC, "cessationOfOperation", comment="left")
    der = sign_content(OID_PKI_DATA, pki_data(None, CmcControls(), revoke=revoke).dump(), [agent.spec()])
    d, _ = shown(der)
    (control,) = d["controls"]
    assert control["name"] == "revokeRequest" and control["body_part_id"] == 2
    assert control["values"] == [
        {
            "issuer": der_order(issuer),
            "serial": "0xabc",
            "reason": "cessationOfOperation",
            "invalidity_date": None,
            "passphrase": None,
            "comment": "left",
        }
    ]
    assert d["requests"] == []


def test_bare_pki_data(user: User) -> None:
    d, lines = shown(pki_data(user.request, eobo_controls()).dump())
    assert d["kind"] == "cmc-request" and d["signed"] is False and d["signers"] == []
    assert lines[1].strip() == "Unsigned PKIData (no CMS SignedData around it)"


def test_certificate_with_names(work: Path) -> None:
    pem = work / "names.pem"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes", "-keyout", work / "n.key",
        "-out", pem, "-subj", "/CN=names.example/O=Example, Inc.", "-days", "1",
        "-addext", "subjectAltName=DNS:a.example,email:x@example.com,IP:10.0.0.1,"
        "otherName:1.3.6.1.4.1.311.20.2.3;UTF8:user@example.com,URI:http://a.example/x",
        "-addext", "extendedKeyUsage=clientAuth,1.3.6.1.4.1.311.20.2.2",
    )  # fmt: skip
    der = pem_to_der(pem)
    d, lines = shown(der)
    assert d["kind"] == "certificate"
    assert d["subject"] == der_order(x509.load_der_x509_certificate(der).subject)
    assert d["subject_alt_names"] == [
        "DNS:a.example",
        "email:x@example.com",
        "IP:10.0.0.1",
        "UPN:user@example.com",
        "URI:http://a.example/x",
    ]
    eku = next(e for e in d["extensions"] if e["name"] == "Extended Key Usage")
    assert eku["value"] == "clientAuth (1.3.6.1.5.5.7.3.2), smartcardLogon (1.3.6.1.4.1.311.20.2.2)"
    assert d["public_key"]["algorithm"] == "EC P-384"
    assert "SHA-1 thumbprint" in lines[-1]


def test_agent_certificate(agent: Agent) -> None:
    d, _ = shown(agent.certificate)
    values = {e["name"]: e["value"] for e in d["extensions"]}
    assert values["Extended Key Usage"] == "certificateRequestAgent (1.3.6.1.4.1.311.20.2.1)"
    assert values["Key Usage"] == "digitalSignature" and values["Basic Constraints"] == "CA=FALSE"
    assert d["public_key"]["algorithm"] == "RSA 2048"


def test_ca_answers(ca: OpenSslCA, agent: Agent, work: Path) -> None:
    p7b = ca.p7b([ca.root_cert, ca.sub_cert], work / "chain.p7b")
    d, _ = shown(p7b)
    assert d["kind"] == "pkcs7-certs" and d["signers"] == [] and len(d["certificates"]) == 2
    response = ca.cmc_response([agent.certificate, ca.sub_der], work / "ok.rsp", status_string="issued")
    d, lines = shown(response)
    assert d["kind"] == "cmc-response" and d["signers"][0]["status"] == "valid"
    (control,) = d["controls"]
    assert control["name"] == "statusInfoV2"
    assert control["values"] == [{"status": "success", "body_list": [1], "status_string": "issued", "other_info": None}]
    assert any("statusInfoV2: status=success" in line for line in lines)


def test_broken_request_signature_and_unknown_signer(user: User, agent: Agent) -> None:
    broken = user.request[:-3] + bytes([user.request[-3] ^ 0x01]) + user.request[-2:]
    d, lines = shown(broken)
    assert d["signature"]["ok"] is False
    assert any("INVALID" in line for line in lines)
    key_only = SignerSpec(agent.signer, subject_key_identifier=b"\x09" * 20)
    der = sign_content(OID_DATA, user.request, [key_only])
    d, _ = shown(der)
    assert d["signers"][0]["status"] == "unverifiable" and d["version"] == 3


def test_garbage_and_truncation(cmc_eobo: bytes) -> None:
    for data in (b"", b"\x30\x03\x02\x01\x01", b"\x04\x01x"):
        with pytest.raises(InputError):
            describe(data, "file")
    for length in range(0, len(cmc_eobo), 3):
        with pytest.raises(InputError):
            describe(cmc_eobo[:length], "file")
