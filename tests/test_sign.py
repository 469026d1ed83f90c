"""Enrollment agent co-signing (`sign`, `new` with RequestType = CMC/PKCS7, `revoke-request`, `show`).

The agent's keys are born on ta-agent with `tokenagent new`, certified by the OpenSSL test CA with
the Certificate Request Agent EKU and installed with `tokenagent accept`; users' requests come from
`tokenagent new` on ta-user. Every message is checked by `openssl cms -verify` and decoded with
pyasn1-modules (rfc5652, rfc6402); the CMC witnesses are recomputed here from RFC 6402's formulas.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import char, univ
from pyasn1_modules import rfc2986, rfc5652, rfc6402

from tests.ca import OpenSslCA, pem_to_der
from tests.conftest import USER_PIN, SoftHSM, pkcs11_tool, run_cli, run_in_terminal

AGENT_TOKEN = "ta-agent"
USER_TOKEN = "ta-user"
AGENT_EKU = "extendedKeyUsage = 1.3.6.1.4.1.311.20.2.1, clientAuth"
REQUESTER = "EXAMPLE\\ada"
OID_NAME_VALUE = univ.ObjectIdentifier("1.3.6.1.4.1.311.13.2.1")
OID_REG_INFO = univ.ObjectIdentifier("1.3.6.1.5.5.7.7.18")

AGENT_INF = """[NewRequest]
Subject = "CN={name},O=Example Corp"
{key}
KeyContainer = {name}
"""
AGENT_KEYS = {
    "agent-ec": "KeyAlgorithm = ECDSA_P256",
    "agent-rsa": "KeyLength = 2048",
    "agent-high": "KeyAlgorithm = ECDSA_P256\nKeyProtection = NCRYPT_UI_FORCE_HIGH_PROTECTION_FLAG",
    "agent-noeku": "KeyAlgorithm = ECDSA_P256",
}
USER_INF = """[NewRequest]
Subject = "CN={name},O=Example Corp"
KeyAlgorithm = ECDSA_P256
KeyContainer = {name}
RequestType = {kind}
{extra}
[Extensions]
2.5.29.17 = "{{text}}UPN={name}@example.com"
[RequestAttributes]
CertificateTemplate = SmartcardLogon
"""


def cli(softhsm: SoftHSM, *args: str, **env: str):
    return run_cli(*args, env=softhsm.env(PIN=USER_PIN, **env))


def agent_uri(name: str) -> str:
    return f"pkcs11:token={AGENT_TOKEN};object={name};type=private"


@dataclass
class Agents:
    ca: OpenSslCA
    certs: dict[str, Path]
    work: Path

    @property
    def ca_bundle(self) -> Path:
        """Root and issuing CA as trust anchors: openssl cms -verify builds no chain from -certfile."""
        bundle = self.work / "ca-bundle.pem"
        bundle.write_bytes(self.ca.root_cert.read_bytes() + self.ca.sub_cert.read_bytes())
        return bundle


@pytest.fixture(scope="module")
def agents(softhsm: SoftHSM, tmp_path_factory: pytest.TempPathFactory) -> Agents:
    work = tmp_path_factory.mktemp("agents")
    ca = OpenSslCA.create(work / "ca")
    certs = {}
    for name, key in AGENT_KEYS.items():
        inf = work / f"{name}.inf"
        inf.write_text(AGENT_INF.format(name=name, key=key))
        req = work / f"{name}.req"
        made = cli(softhsm, "new", str(inf), str(req), "--token", AGENT_TOKEN, "--pin-source", "env:PIN")
        assert made.returncode == 0, made.stderr
        cert = work / f"{name}.cer"
        eku = "extendedKeyUsage = clientAuth" if name == "agent-noeku" else AGENT_EKU
        ca.issue(req, cert, extensions=eku, copy_extensions=False)
        installed = cli(softhsm, "accept", str(cert), "--token", AGENT_TOKEN, "--pin-source", "env:PIN")
        assert installed.returncode == 0, installed.stderr
        certs[name] = cert
    return Agents(ca, certs, work)


def user_request(softhsm: SoftHSM, work: Path, name: str, kind: str = "PKCS10", *extra_args: str, extra: str = ""):
    inf = work / f"{name}.inf"
    inf.write_text(USER_INF.format(name=name, kind=kind, extra=extra))
    req = work / f"{name}.req"
    run = cli(
        softhsm, "new", str(inf), str(req), "--binary", "--token", USER_TOKEN, "--pin-source", "env:PIN", *extra_args
    )
    return run, req


def sign(softhsm: SoftHSM, request: Path, out: Path, agent: str, *extra: str, **env: str):
    return cli(
        softhsm,
        "sign",
        str(request),
        str(out),
        "--binary",
        "--agent",
        agent_uri(agent),
        "--pin-source",
        "env:PIN",
        "--yes",
        *extra,
        **env,
    )


def cms_verify(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["openssl", "cms", "-verify", "-inform", "DER", "-in", str(path), "-binary", "-purpose", "any", "-out",
         "/dev/null", *extra],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip


def signed_data(der: bytes) -> rfc5652.SignedData:
    info, rest = decoder.decode(der, asn1Spec=rfc5652.ContentInfo())
    assert not rest and info["contentType"] == rfc5652.id_signedData
    signed, rest = decoder.decode(bytes(info["content"]), asn1Spec=rfc5652.SignedData())
    assert not rest
    return signed


def name_value_pairs(attribute_values) -> list[tuple[str, str]]:
    pairs = []
    for value in attribute_values:
        seq, _ = decoder.decode(bytes(value))
        pairs.append((str(decoder.decode(encoder.encode(seq[0]), asn1Spec=char.BMPString())[0]), str(seq[1])))
    return pairs


def signed_attribute(signer_info, oid: univ.ObjectIdentifier):
    for attribute in signer_info["signedAttrs"]:
        if attribute["attrType"] == oid:
            return attribute["attrValues"]
    return None


# -- PKCS7 (EOBO) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "extra", "algorithm"),
    [
        ("agent-ec", (), "1.2.840.10045.4.3.2"),
        ("agent-rsa", (), "1.2.840.113549.1.1.11"),
        ("agent-rsa", ("--pss",), "1.2.840.113549.1.1.10"),
        ("agent-high", (), "1.2.840.10045.4.3.2"),
    ],
)
def test_pkcs7_eobo(
    agent: str, extra: tuple[str, ...], algorithm: str, softhsm: SoftHSM, agents: Agents, tmp_path: Path
) -> None:
    made, req = user_request(softhsm, tmp_path, f"u7-{agent}{len(extra)}")
    assert made.returncode == 0, made.stderr
    out = tmp_path / "eobo.p7"
    run = sign(softhsm, req, out, agent, "--requester", REQUESTER, *extra)
    assert run.returncode == 0, run.stderr
    assert cms_verify(out, "-noverify").returncode == 0
    chain = cms_verify(out, "-CAfile", str(agents.ca_bundle))
    assert chain.returncode == 0, chain.stderr
    signed = signed_data(out.read_bytes())
    assert signed["encapContentInfo"]["eContentType"] == rfc5652.id_data
    assert bytes(signed["encapContentInfo"]["eContent"]) == req.read_bytes()  # the user's PKCS#10, unchanged
    first = signed["signerInfos"][0]
    assert str(first["signatureAlgorithm"]["algorithm"]) == algorithm
    assert name_value_pairs(signed_attribute(first, OID_NAME_VALUE)) == [("RequesterName", REQUESTER)]
    # the agent's certificate is in SignedData.certificates
    agent_der = pem_to_der(agents.certs[agent])
    assert any(encoder.encode(c["certificate"]) == agent_der for c in signed["certificates"])


def test_cmc_eobo_with_sign(softhsm: SoftHSM, agents: Agents, tmp_path: Path) -> None:
    _, req = user_request(softhsm, tmp_path, "ucmc")
    out = tmp_path / "eobo.cmc"
    run = sign(softhsm, req, out, "agent-ec", "--requester", REQUESTER, "--format", "cmc", "--template", "User")
    assert run.returncode == 0, run.stderr
    assert cms_verify(out, "-noverify").returncode == 0
    signed = signed_data(out.read_bytes())
    assert signed["encapContentInfo"]["eContentType"] == rfc6402.id_cct_PKIData
    data, rest = decoder.decode(bytes(signed["encapContentInfo"]["eContent"]), asn1Spec=rfc6402.PKIData())
    assert not rest
    reg_info = [c for c in data["controlSequence"] if c["attrType"] == OID_REG_INFO]
    assert len(reg_info) == 1
    value, _ = decoder.decode(bytes(reg_info[0]["attrValues"][0]), asn1Spec=univ.OctetString())
    assert bytes(value) == b"RequesterName=EXAMPLE%5Cada&CertificateTemplate=User&"
    ids = [int(c["bodyPartID"]) for c in data["controlSequence"]]
    ids += [int(r["tcr"]["bodyPartID"]) for r in data["reqSequence"]]
    assert len(ids) == len(set(ids))
    assert encoder.encode(data["reqSequence"][0]["tcr"]["certificationRequest"]) == req.read_bytes()


@pytest.mark.parametrize("form", ["pkcs7", "cmc", "new-cmc"])
def test_two_and_three_agent_signatures(form: str, softhsm: SoftHSM, agents: Agents, tmp_path: Path) -> None:
    one, two, three = tmp_path / "1.p7", tmp_path / "2.p7", tmp_path / "3.p7"
    if form == "new-cmc":  # new with RequestType = CMC and --agent: the request key's and the agent's signatures
        run, one = user_request(
            softhsm, tmp_path, "umulti-n", "CMC", *agent_args(), extra=f'RequesterName = "{REQUESTER}"'
        )
        assert run.returncode == 0, run.stderr
    else:
        _, req = user_request(softhsm, tmp_path, f"umulti-{form}")
        run = sign(softhsm, req, one, "agent-ec", "--requester", REQUESTER, "--format", form)
        assert run.returncode == 0, run.stderr
    first = signed_data(one.read_bytes())
    run = sign(softhsm, one, two, "agent-rsa")
    assert run.returncode == 0, run.stderr
    run = sign(softhsm, two, three, "agent-high")
    assert run.returncode == 0, run.stderr
    final = signed_data(three.read_bytes())
    assert len(final["signerInfos"]) == len(first["signerInfos"]) + 2
    # the content (PKCS#10, or PKIData with its controls and body parts) is untouched
    assert encoder.encode(final["encapContentInfo"]) == encoder.encode(first["encapContentInfo"])
    for earlier in (first, signed_data(two.read_bytes())):
        for index, info in enumerate(earlier["signerInfos"]):
            assert encoder.encode(final["signerInfos"][index]) == encoder.encode(info)  # byte for byte
    digests = [str(d["algorithm"]) for d in final["digestAlgorithms"]]
    assert len(digests) == len(set(digests))
    if form == "new-cmc":  # the request key's own signature names it by SKI: openssl needs its certificate
        cert = tmp_path / "user.cer"
        agents.ca.issue(inner_csr(one.read_bytes()), cert)
        verified = cms_verify(three, "-CAfile", str(agents.ca_bundle), "-certfile", str(cert))
    else:
        verified = cms_verify(three, "-CAfile", str(agents.ca_bundle))
    assert verified.returncode == 0, verified.stderr  # openssl checks every SignerInfo
    if form != "pkcs7":
        data, rest = decoder.decode(bytes(final["encapContentInfo"]["eContent"]), asn1Spec=rfc6402.PKIData())
        assert not rest and len(data["reqSequence"]) == 1
        reg_info = [c for c in data["controlSequence"] if c["attrType"] == OID_REG_INFO]
        assert len(reg_info) == 1
    shown = cli(softhsm, "show", str(three), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.dumps(json.loads(shown.stdout)).count('"valid"') >= 3


# -- new with RequestType = CMC / PKCS7 ---------------------------------------------------------------


def agent_args(name: str = "agent-ec") -> tuple[str, ...]:
    return ("--agent", agent_uri(name), "--agent-pin-source", "env:PIN")


def issue_and_verify_with_user_cert(agents: Agents, req_der: Path, user_csr: bytes, work: Path) -> None:
    """openssl verifies the SKI-named request-key signature once it has a certificate for that key."""
    cert = work / "user.cer"
    agents.ca.issue(user_csr, cert)
    run = cms_verify(req_der, "-noverify", "-certfile", str(cert))
    assert run.returncode == 0, run.stderr


def inner_csr(der: bytes) -> bytes:
    signed = signed_data(der)
    content = bytes(signed["encapContentInfo"]["eContent"])
    if signed["encapContentInfo"]["eContentType"] == rfc6402.id_cct_PKIData:
        data, _ = decoder.decode(content, asn1Spec=rfc6402.PKIData())
        return encoder.encode(data["reqSequence"][0]["tcr"]["certificationRequest"])
    return content


def test_new_cmc_with_agent_in_one_run(softhsm: SoftHSM, agents: Agents, tmp_path: Path) -> None:
    run, req = user_request(softhsm, tmp_path, "ncmc", "CMC", *agent_args(), extra=f'RequesterName = "{REQUESTER}"')
    assert run.returncode == 0, run.stderr
    signed = signed_data(req.read_bytes())
    infos = signed["signerInfos"]
    assert len(infos) == 2
    assert infos[0]["sid"].getName() == "subjectKeyIdentifier" and int(infos[0]["version"]) == 3
    assert infos[1]["sid"].getName() == "issuerAndSerialNumber"
    issue_and_verify_with_user_cert(agents, req, inner_csr(req.read_bytes()), tmp_path)
    pending = cli(softhsm, "pending", "--json")
    assert any(p["request_type"] == "CMC" for p in json.loads(pending.stdout)["pending"])


def test_new_self_signed_cmc_with_identity_proof_and_pop_link(softhsm: SoftHSM, tmp_path: Path) -> None:
    secret, identification = "open sesame", "ada"
    inf = tmp_path / "nself.inf"
    inf.write_text(USER_INF.format(name="nself", kind="CMC", extra=""))
    req = tmp_path / "nself.req"
    run = cli(
        softhsm, "new", str(inf), str(req), "--binary", "--token", USER_TOKEN, "--pin-source", "env:PIN",
        "--shared-secret-source", "env:SECRET", "--identification", identification, "--pop-link",
        "--transaction-id", "4711", SECRET=secret,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    signed = signed_data(req.read_bytes())
    assert len(signed["signerInfos"]) == 1
    assert not signed["certificates"].hasValue() or len(signed["certificates"]) == 0  # selfSign: none
    data, _ = decoder.decode(bytes(signed["encapContentInfo"]["eContent"]), asn1Spec=rfc6402.PKIData())
    controls = {str(c["attrType"]): c for c in data["controlSequence"]}
    key = hashlib.sha256(secret.encode() + identification.encode()).digest()
    # identityProofV2 = HMAC(key, DER(reqSequence)) over the whole SEQUENCE OF TaggedRequest
    proof, _ = decoder.decode(
        bytes(controls[str(rfc6402.id_cmc_identityProofV2)]["attrValues"][0]), asn1Spec=rfc6402.IdentifyProofV2()
    )
    expected = hmac.new(key, encoder.encode(data["reqSequence"]), hashlib.sha256).digest()
    assert bytes(proof["witness"]) == expected
    # popLinkWitnessV2 inside the PKCS#10 = HMAC(key, popLinkRandom)
    random_value, _ = decoder.decode(
        bytes(controls[str(rfc6402.id_cmc_popLinkRandom)]["attrValues"][0]), asn1Spec=univ.OctetString()
    )
    csr = data["reqSequence"][0]["tcr"]["certificationRequest"]
    info = decoder.decode(encoder.encode(csr), asn1Spec=rfc2986.CertificationRequest())[0]["certificationRequestInfo"]
    witnesses = [a for a in info["attributes"] if a["type"] == rfc6402.id_cmc_popLinkWitnessV2]
    assert len(witnesses) == 1
    witness, _ = decoder.decode(bytes(witnesses[0]["values"][0]), asn1Spec=rfc6402.PopLinkWitnessV2())
    assert bytes(witness["witness"]) == hmac.new(key, bytes(random_value), hashlib.sha256).digest()
    transaction, _ = decoder.decode(bytes(controls[str(rfc6402.id_cmc_transactionId)]["attrValues"][0]))
    assert int(transaction) == 4711


def test_new_pkcs7_with_agent(softhsm: SoftHSM, agents: Agents, tmp_path: Path) -> None:
    run, req = user_request(
        softhsm, tmp_path, "np7", "PKCS7", *agent_args("agent-rsa"), extra=f"RequesterName = {REQUESTER}"
    )
    assert run.returncode == 0, run.stderr
    assert cms_verify(req, "-noverify").returncode == 0
    first = signed_data(req.read_bytes())["signerInfos"][0]
    assert name_value_pairs(signed_attribute(first, OID_NAME_VALUE)) == [("RequesterName", REQUESTER)]


def test_new_pkcs7_renewal(softhsm: SoftHSM, tmp_path: Path) -> None:
    inf = tmp_path / "old.inf"
    inf.write_text(
        '[NewRequest]\nSubject = "CN=renew me"\nKeyAlgorithm = ECDSA_P256\n'
        "KeyContainer = renew-me\nRequestType = Cert\n"
    )
    out = tmp_path / "old.cer"
    assert (
        cli(softhsm, "new", str(inf), str(out), "--binary", "--token", USER_TOKEN, "--pin-source", "env:PIN").returncode
        == 0
    )
    thumbprint = hashlib.sha1(out.read_bytes()).hexdigest()
    renewal = tmp_path / "renew.inf"
    renewal.write_text(
        '[NewRequest]\nSubject = "CN=renew me"\nKeyAlgorithm = ECDSA_P256\n'
        f'RequestType = PKCS7\nRenewalCert = "{thumbprint}"\n'
    )
    req = tmp_path / "renew.req"
    run = cli(softhsm, "new", str(renewal), str(req), "--binary", "--token", USER_TOKEN, "--pin-source", "env:PIN")
    assert run.returncode == 0, run.stderr
    old_pem = tmp_path / "old.pem"
    subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(out), "-out", str(old_pem)], check=True)
    verified = cms_verify(req, "-CAfile", str(old_pem))
    assert verified.returncode == 0, verified.stderr  # signed by the old key, with the old certificate
    csr = decoder.decode(inner_csr(req.read_bytes()), asn1Spec=rfc2986.CertificationRequest())[0]
    attributes = {str(a["type"]): a for a in csr["certificationRequestInfo"]["attributes"]}
    assert bytes(attributes["1.3.6.1.4.1.311.13.1"]["values"][0]) == out.read_bytes()


# -- revoke-request -------------------------------------------------------------------------------------


def test_revoke_request(softhsm: SoftHSM, agents: Agents, tmp_path: Path) -> None:
    out = tmp_path / "revoke.cmc"
    victim = agents.certs["agent-noeku"]
    run = cli(
        softhsm, "revoke-request", str(out), "--binary", "--cert", str(victim), "--reason", "keyCompromise",
        "--agent", agent_uri("agent-ec"), "--pin-source", "env:PIN",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert cms_verify(out, "-noverify").returncode == 0
    data, _ = decoder.decode(
        bytes(signed_data(out.read_bytes())["encapContentInfo"]["eContent"]), asn1Spec=rfc6402.PKIData()
    )
    assert len(data["reqSequence"]) == 0
    revokes = [c for c in data["controlSequence"] if c["attrType"] == rfc6402.id_cmc_revokeRequest]
    request, _ = decoder.decode(bytes(revokes[0]["attrValues"][0]), asn1Spec=rfc6402.RevokeRequest())
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(victim.read_bytes())
    assert int(request["serialNumber"]) == cert.serial_number
    assert int(request["reason"]) == 1  # keyCompromise
    # the message: the serial belongs to the certificate, the name to its issuer (certreq's order)
    issuer = ", ".join(rdn.rfc4514_string() for rdn in cert.issuer.rdns)
    said = f"for the certificate with serial number 0x{cert.serial_number:x} issued by {issuer}"
    assert said in run.stdout + run.stderr
    ids = [int(c["bodyPartID"]) for c in data["controlSequence"]]
    assert len(ids) == len(set(ids))


# -- refusals ---------------------------------------------------------------------------------------------


def test_broken_inner_signature_refused(softhsm: SoftHSM, agents: Agents, tmp_path: Path) -> None:
    _, req = user_request(softhsm, tmp_path, "ubroken")
    broken = bytearray(req.read_bytes())
    broken[-3] ^= 0x01  # inside the signature value
    bad = tmp_path / "broken.req"
    bad.write_bytes(bytes(broken))
    out = tmp_path / "out.p7"
    run = sign(softhsm, bad, out, "agent-ec", "--requester", REQUESTER)
    assert run.returncode == 11 and "proof of possession" in run.stderr
    assert not out.exists()


def test_truncated_cms_refused(softhsm: SoftHSM, agents: Agents, tmp_path: Path) -> None:
    _, req = user_request(softhsm, tmp_path, "utrunc")
    one = tmp_path / "1.p7"
    assert sign(softhsm, req, one, "agent-ec", "--requester", REQUESTER).returncode == 0
    data = one.read_bytes()
    for cut in (len(data) // 3, len(data) - 1):
        truncated = tmp_path / f"t{cut}.p7"
        truncated.write_bytes(data[:cut])
        out = tmp_path / f"o{cut}.p7"
        run = sign(softhsm, truncated, out, "agent-rsa")
        assert run.returncode == 4, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and not out.exists()


def test_wrong_agent_pin_writes_nothing(softhsm: SoftHSM, agents: Agents, tmp_path: Path) -> None:
    _, req = user_request(softhsm, tmp_path, "uwrongpin")
    out = tmp_path / "out.p7"
    run = cli(
        softhsm, "sign", str(req), str(out), "--agent", agent_uri("agent-ec"), "--requester", REQUESTER,
        "--yes", "--pin-source", "env:BAD", BAD="0000",
    )  # fmt: skip
    assert run.returncode == 7 and "will not retry" in run.stderr
    assert not out.exists()


def test_new_with_wrong_agent_pin_creates_no_key(softhsm: SoftHSM, agents: Agents, tmp_path: Path) -> None:
    before = pkcs11_tool(softhsm, "-O", token=USER_TOKEN)
    inf = tmp_path / "nopin.inf"
    inf.write_text(USER_INF.format(name="nopin", kind="CMC", extra=f"RequesterName = {REQUESTER}"))
    run = cli(
        softhsm, "new", str(inf), str(tmp_path / "x.req"), "--token", USER_TOKEN, "--pin-source", "env:PIN",
        "--agent", agent_uri("agent-ec"), "--agent-pin-source", "env:BAD", BAD="0000",
    )  # fmt: skip
    assert run.returncode == 7
    assert pkcs11_tool(softhsm, "-O", token=USER_TOKEN) == before


def test_agent_certificate_for_another_key(softhsm: SoftHSM, agents: Agents, tmp_path: Path) -> None:
    _, req = user_request(softhsm, tmp_path, "uother")
    out = tmp_path / "out.p7"
    run = sign(softhsm, req, out, "agent-ec", "--requester", REQUESTER, "--agent-cert", str(agents.certs["agent-rsa"]))
    assert run.returncode == 9 and "another key" in run.stderr
    assert not out.exists()


def test_agent_without_eku_warns_and_strict_refuses(softhsm: SoftHSM, agents: Agents, tmp_path: Path) -> None:
    _, req = user_request(softhsm, tmp_path, "unoeku")
    out = tmp_path / "out.p7"
    lenient = sign(softhsm, req, out, "agent-noeku", "--requester", REQUESTER)
    assert lenient.returncode == 0 and "1.3.6.1.4.1.311.20.2.1" in lenient.stderr and "warning" in lenient.stderr
    strict_out = tmp_path / "strict.p7"
    strict = sign(softhsm, req, strict_out, "agent-noeku", "--requester", REQUESTER, "--strict")
    assert strict.returncode == 11 and not strict_out.exists()


def test_confirmation_needed_without_a_terminal(softhsm: SoftHSM, agents: Agents, tmp_path: Path) -> None:
    _, req = user_request(softhsm, tmp_path, "unoyes")
    out = tmp_path / "out.p7"
    run = cli(
        softhsm, "sign", str(req), str(out), "--agent", agent_uri("agent-ec"), "--requester", REQUESTER,
        "--pin-source", "env:PIN",
    )  # fmt: skip
    assert run.returncode == 2 and "--yes" in run.stderr and not out.exists()


@pytest.mark.parametrize(("answer", "code"), [("y", 0), ("n", 2)])
def test_confirmation_on_a_terminal_shows_the_request(
    answer: str, code: int, softhsm: SoftHSM, agents: Agents, tmp_path: Path
) -> None:
    _, req = user_request(softhsm, tmp_path, f"utty{answer}")
    out = tmp_path / "out.p7"
    args = ["sign", str(req), str(out), "--agent", agent_uri("agent-ec"), "--requester", REQUESTER,
            "--pin-source", "env:PIN"]  # fmt: skip
    status, text, _ = run_in_terminal(
        args, softhsm.env(PIN=USER_PIN), b"Sign this request as the enrollment agent?", answer
    )
    assert status == code, text
    assert f"CN=utty{answer}" in text  # the subject ...
    assert "otherName 1.3.6.1.4.1.311.20.2.3" in text  # ... and the UPN SAN are shown before asking
    assert "template: SmartcardLogon" in text
    assert out.exists() == (answer == "y")


def test_self_signed_cmc_verifies_with_openssl(softhsm: SoftHSM, agents: Agents, tmp_path: Path) -> None:
    """selfSign CMC carries no certificate: openssl checks the SKI-named signature once the CA has
    issued a certificate for the request key (given with -certfile)."""
    run, req = user_request(softhsm, tmp_path, "uself", "CMC")
    assert run.returncode == 0, run.stderr
    signed = signed_data(req.read_bytes())
    assert signed["signerInfos"][0]["sid"].getName() == "subjectKeyIdentifier"
    data, _ = decoder.decode(bytes(signed["encapContentInfo"]["eContent"]), asn1Spec=rfc6402.PKIData())
    ids = [int(c["bodyPartID"]) for c in data["controlSequence"]] + [
        int(r["tcr"]["bodyPartID"]) for r in data["reqSequence"]
    ]
    assert len(ids) == len(set(ids)) and 1 in ids
    issue_and_verify_with_user_cert(agents, req, inner_csr(req.read_bytes()), tmp_path)


def test_an_agent_signing_the_same_request_twice_is_warned(softhsm: SoftHSM, agents: Agents, tmp_path: Path) -> None:
    _, req = user_request(softhsm, tmp_path, "twice")
    once, twice, other = tmp_path / "once.p7", tmp_path / "twice.p7", tmp_path / "other.p7"
    assert sign(softhsm, req, once, "agent-ec", "--requester", REQUESTER).returncode == 0
    again = sign(softhsm, once, twice, "agent-ec")
    assert again.returncode == 0, again.stderr
    assert "this agent already signed" in again.stderr and "(signature 1)" in again.stderr
    assert len(signed_data(twice.read_bytes())["signerInfos"]) == 2  # a warning, not a refusal
    different = sign(softhsm, once, other, "agent-rsa")
    assert different.returncode == 0 and "already signed" not in different.stderr
