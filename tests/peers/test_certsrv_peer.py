"""The certsrv peer itself, checked with independent clients only: curl, http.client, pyspnego, openssl."""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import ssl
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import spnego
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import char, namedtype, univ
from pyasn1_modules import rfc5280, rfc5652, rfc6402
from spnego.channel_bindings import GssChannelBindings

from tests.peers.certsrv import DEFAULT_PASSWORD, CertsrvPeer

USER = "EXAMPLE\\operator"
EKU_REQUEST_AGENT = "1.3.6.1.4.1.311.20.2.1"
OID_PKI_DATA = "1.3.6.1.5.5.7.12.2"
DISPOSITION = re.compile(r"Disposition message:[^\t]+\t\t([^\r\n]+)")  # what the public certsrv clients parse


def openssl(*args: str | Path, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(["openssl", *map(str, args)], input=stdin, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def make_csr(directory: Path, name: str, *addext: str) -> tuple[Path, bytes]:
    """A P-256 key and a DER PKCS #10 for CN=name."""
    key = directory / f"{name}.key"
    extra = [arg for ext in addext for arg in ("-addext", ext)]
    csr = openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
        "-subj", f"/CN={name}", *extra, "-outform", "DER",
    )  # fmt: skip
    return key, csr


def pem(der: bytes, label: str = "CERTIFICATE REQUEST") -> str:
    b64 = base64.b64encode(der).decode()
    return (
        f"-----BEGIN {label}-----\r\n"
        + "\r\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
        + (f"\r\n-----END {label}-----\r\n")
    )


def form(request: str, template: str | None) -> bytes:
    fields = {"Mode": "newreq", "CertRequest": request, "TargetStoreFlags": "0", "SaveCert": "yes"}
    fields["CertAttrib"] = f"CertificateTemplate:{template}\r\n" if template else ""
    return urllib.parse.urlencode(fields).encode()


class Client:
    """http.client on one kept-alive connection, Basic or NTLM (pyspnego) authentication."""

    def __init__(self, peer: CertsrvPeer) -> None:
        url = urllib.parse.urlsplit(peer.url)
        if url.scheme == "https":
            context = ssl.create_default_context(cafile=str(peer.tls_ca_pem))
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(url.hostname, url.port, context=context)
        else:
            self.conn = http.client.HTTPConnection(url.hostname, url.port)
        self.base = url.path
        self.conn.connect()

    def channel_bindings(self) -> GssChannelBindings:
        der = self.conn.sock.getpeercert(binary_form=True)  # an ecdsa-with-SHA256 certificate: SHA-256
        return GssChannelBindings(application_data=b"tls-server-end-point:" + hashlib.sha256(der).digest())

    def send(self, method: str, path: str, body: bytes = b"", authorization: str | None = None):
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if method == "POST" else {}
        if authorization:
            headers["Authorization"] = authorization
        self.conn.request(method, self.base + path, body=body or None, headers=headers)
        response = self.conn.getresponse()
        return response.status, response, response.read()

    def basic(self, method: str, path: str, body: bytes = b"", user: str = USER, password: str = DEFAULT_PASSWORD):
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return self.send(method, path, body, f"Basic {token}")

    def ntlm(self, method: str, path: str, body: bytes = b"", *, password: str = DEFAULT_PASSWORD, cbt="auto"):
        bindings = self.channel_bindings() if cbt == "auto" else cbt
        context = spnego.client(
            USER, password, hostname="127.0.0.1", service="HTTP", protocol="ntlm", channel_bindings=bindings
        )
        status, response, _ = self.send(method, path, body, "NTLM " + base64.b64encode(context.step()).decode())
        assert status == 401
        (challenge,) = [
            v for k, v in response.getheaders() if k.lower() == "www-authenticate" and v.startswith("NTLM ")
        ]
        token = context.step(base64.b64decode(challenge[5:]))
        return self.send(method, path, body, "NTLM " + base64.b64encode(token).decode())


@pytest.fixture(scope="module")
def peer(certsrv_peer: CertsrvPeer) -> CertsrvPeer:
    """The session's server (tests/conftest.py), started once for every test that needs it."""
    return certsrv_peer


def submit(peer: CertsrvPeer, request: str, template: str | None) -> tuple[str, int | None]:
    status, _, body = Client(peer).basic("POST", "/certfnsh.asp", form(request, template))
    assert status == 200
    text = body.decode()
    found = re.search(r"certnew.cer\?ReqID=(\d+)&", text) or re.search(r"Your Request Id is (\d+)", text)
    return text, int(found.group(1)) if found else None


def fetch(peer: CertsrvPeer, path: str):
    status, response, body = Client(peer).basic("GET", path)
    assert status == 200
    return response.getheader("Content-Type"), body


def test_issue_with_curl_and_basic(peer: CertsrvPeer, tmp_path: Path) -> None:
    _, csr = make_csr(tmp_path, "ada")
    (tmp_path / "req.pem").write_text(pem(csr))
    curl = ["curl", "-sS", "--cacert", str(peer.tls_ca_pem), "-u", f"{USER}:{DEFAULT_PASSWORD}"]
    page = subprocess.run(
        [*curl, "--data-urlencode", "Mode=newreq", "--data-urlencode", f"CertRequest@{tmp_path / 'req.pem'}",
         "--data-urlencode", "CertAttrib=CertificateTemplate:User\r\nSAN:upn=ada@example.com\r\n",
         "--data-urlencode", "TargetStoreFlags=0", "--data-urlencode", "SaveCert=yes", f"{peer.url}/certfnsh.asp"],
        capture_output=True, check=True, text=True,
    ).stdout  # fmt: skip
    assert "Certificate Issued" in page and "The certificate you requested was issued to you." in page
    req_id = re.search(r"certnew.cer\?ReqID=(\d+)&", page).group(1)
    for link in ("cer?ReqID={}&amp;Enc=bin", "cer?ReqID={}&amp;Enc=b64", "p7b?ReqID={}&amp;Enc=bin"):
        assert f'<a href="certnew.{link.format(req_id)}">' in page

    got = subprocess.run(
        [*curl, "-D", str(tmp_path / "headers"), "-o", str(tmp_path / "cert.pem"),
         f"{peer.url}/certnew.cer?ReqID={req_id}&Enc=b64"],
        capture_output=True, check=True,
    )  # fmt: skip
    assert got.returncode == 0
    assert "Content-Type: application/pkix-cert" in (tmp_path / "headers").read_text()
    assert (tmp_path / "cert.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----\r\n")
    assert b": OK" in openssl("verify", "-CAfile", peer.ca_chain_pem, tmp_path / "cert.pem")
    subject = openssl("x509", "-in", tmp_path / "cert.pem", "-noout", "-subject")
    assert subject.strip() == b"subject=CN = ada"

    content_type, der = fetch(peer, f"/certnew.cer?ReqID={req_id}&Enc=bin")
    assert content_type == "application/pkix-cert"
    assert der == openssl("x509", "-in", tmp_path / "cert.pem", "-outform", "DER")
    for enc in ("bin", "b64"):
        content_type, body = fetch(peer, f"/certnew.p7b?ReqID={req_id}&Enc={enc}")
        assert content_type == "application/x-pkcs7-certificates"
        if enc == "b64":  # Windows armors the PKCS #7 with CERTIFICATE lines
            assert body.startswith(b"-----BEGIN CERTIFICATE-----")
            body = base64.b64decode(b"".join(body.splitlines()[1:-1]))
        chain = openssl("pkcs7", "-inform", "DER", "-print_certs", stdin=body)
        assert chain.count(b"-----BEGIN CERTIFICATE-----") == 3

    (record,) = [r for r in peer.requests() if r["id"] == int(req_id)]
    assert record["caller"] == USER and record["template"] == "User" and record["disposition"] == "issued"
    assert record["attributes"]["san"] == "upn=ada@example.com"


def test_ca_certificate_pages(peer: CertsrvPeer) -> None:
    _, page = fetch(peer, "/certcarc.asp")
    assert b"var nRenewals=0;" in page
    content_type, body = fetch(peer, "/certnew.cer?ReqID=CACert&Renewal=0&Enc=b64")
    assert content_type == "application/pkix-cert"
    assert openssl("x509", "-noout", "-subject", stdin=body).strip().endswith(b"CN = Example Issuing CA")
    _, body = fetch(peer, "/certnew.p7b?ReqID=CACert&Renewal=0&Enc=bin")
    assert openssl("pkcs7", "-inform", "DER", "-print_certs", stdin=body).count(b"BEGIN CERTIFICATE") == 2
    status, _, body = Client(peer).basic("GET", "/")
    assert status == 200 and b"Welcome" in body


def test_wrong_or_missing_credentials_are_401(peer: CertsrvPeer) -> None:
    for status, response, _ in (
        Client(peer).basic("GET", "/", password="wrong"),
        Client(peer).basic("GET", "/certnew.cer?ReqID=1", user="EXAMPLE\\mallory"),
        Client(peer).send("GET", "/certcarc.asp"),
        Client(peer).basic("POST", "/certfnsh.asp", form("x", "User"), password="wrong"),
    ):
        assert status == 401
        challenges = [v for k, v in response.getheaders() if k.lower() == "www-authenticate"]
        assert challenges == ['Basic realm="127.0.0.1"', "NTLM"]
        assert response.getheader("Content-Length") and response.getheader("Connection") != "close"
    # like Windows: the user name in any case, with or without the domain
    assert Client(peer).basic("GET", "/", user="example\\OPERATOR")[0] == 200
    assert Client(peer).basic("GET", "/", user="operator")[0] == 200


def test_ntlm_pending_resubmit_on_one_connection(peer: CertsrvPeer, tmp_path: Path) -> None:
    _, csr = make_csr(tmp_path, "grace")
    client = Client(peer)
    status, _, body = client.ntlm("POST", "/certfnsh.asp", form(pem(csr), "ManualApproval"))
    assert status == 200
    page = body.decode()
    assert "Certificate Pending" in page
    assert "However, you must wait for an administrator to issue the certificate you requested." in page
    req_id = int(re.search(r"Your Request Id is (\d+)\.", page).group(1))

    # NTLM authenticated the connection: no Authorization header needed any more
    status, response, body = client.send("GET", f"/certnew.cer?ReqID={req_id}&Enc=b64")
    assert status == 200 and response.getheader("Content-Type") == "text/html"
    assert DISPOSITION.search(body.decode()).group(1) == "Taken Under Submission"

    peer.resubmit(req_id)
    status, response, body = client.send("GET", f"/certnew.cer?ReqID={req_id}&Enc=bin")
    assert status == 200 and response.getheader("Content-Type") == "application/pkix-cert"
    assert b": OK" in openssl(
        "verify", "-CAfile", peer.ca_chain_pem, "/dev/stdin", stdin=pem(body, "CERTIFICATE").encode()
    )
    (record,) = [r for r in peer.requests() if r["id"] == req_id]
    assert record["caller"] == USER and record["message"] == "Resubmitted by EXAMPLE\\Administrator"


def test_ntlm_refuses_wrong_or_missing_channel_binding(peer: CertsrvPeer) -> None:
    wrong = GssChannelBindings(application_data=b"tls-server-end-point:" + bytes(32))
    assert Client(peer).ntlm("GET", "/", cbt=wrong)[0] == 401
    assert Client(peer).ntlm("GET", "/", cbt=None)[0] == 401
    assert Client(peer).ntlm("GET", "/", password="wrong")[0] == 401
    assert Client(peer).ntlm("GET", "/")[0] == 200
    log = (peer.directory / "server.log").read_text()
    assert "BadBindingsError" in log and "none was sent" in log


def test_denials_and_errors(peer: CertsrvPeer, tmp_path: Path) -> None:
    _, csr = make_csr(tmp_path, "denied")
    page, req_id = submit(peer, pem(csr), "NoSuchTemplate")
    assert "Certificate Request Denied" in page and "<P ID=locDenied>Your certificate request was denied." in page
    assert (
        f'Your Request Id is {req_id}. The disposition message is "Denied by Policy Module  0x80094800, The request'
        " was for a certificate template that is not supported by the Active Directory Certificate Services policy:"
        ' NoSuchTemplate."'
    ) in page
    _, body = fetch(peer, f"/certnew.cer?ReqID={req_id}")
    assert DISPOSITION.search(body.decode()).group(1).startswith("Denied by Policy Module  0x80094800, ")
    assert " 0x80094800 (-2146875392 CERTSRV_E_UNSUPPORTED_CERT_TYPE)" in body.decode()

    assert "Denied by Policy Module  0x80094801" in submit(peer, pem(csr), None)[0]
    assert "Denied by Policy Module  0x8009480a" in submit(peer, pem(csr), "SmartcardLogon")[0]
    _, named = make_csr(tmp_path, "named", "1.3.6.1.4.1.311.20.2=ASN1:BMPSTRING:User")
    assert "Denied by Policy Module  0x80094802" in submit(peer, pem(named), "ManualApproval")[0]
    assert "Certificate Issued" in submit(peer, pem(named), None)[0]  # the template from the request alone

    page, _ = submit(peer, "NotACsr", "User")
    assert "Certificate Request Error" in page
    assert "Error Parsing Request  ASN1 bad tag value met. 0x8009310b (ASN: 267 CRYPT_E_ASN1_BADTAG)" in page
    tampered = csr[:-3] + bytes([csr[-3] ^ 1]) + csr[-2:]
    assert "0x80090006 (-2146893818 NTE_BAD_SIGNATURE)" in submit(peer, pem(tampered), "User")[0]

    _, pending = submit(peer, pem(csr), "ManualApproval")
    peer.deny(pending)
    _, body = fetch(peer, f"/certnew.cer?ReqID={pending}&Enc=b64")
    assert DISPOSITION.search(body.decode()).group(1) == "Denied by EXAMPLE\\Administrator"
    assert "0x80094014 (-2146877420 CERTSRV_E_ADMIN_DENIED_REQUEST)" in body.decode()
    content_type, body = fetch(peer, "/certnew.cer?ReqID=999999&Enc=b64")
    assert content_type == "text/html"
    assert "The requested property value is empty. 0x80094004 (-2146877436 CERTSRV_E_PROPERTY_EMPTY)" in body.decode()


def cms_sign(tmp_path: Path, content: bytes, signers: list[tuple[Path, Path]], *options: str) -> bytes:
    (tmp_path / "content.der").write_bytes(content)
    args: list[str | Path] = ["cms", "-sign", "-nodetach", "-binary", "-outform", "DER", "-md", "sha256", *options]
    for certificate, key in signers:
        args += ["-signer", certificate, "-inkey", key]
    return openssl(*args, "-in", tmp_path / "content.der")


def pki_data(csr: bytes, requester: str | None) -> bytes:
    data = rfc6402.PKIData()
    data["controlSequence"].clear()
    if requester:
        control = rfc6402.TaggedAttribute()
        control["bodyPartID"] = 1
        control["attrType"] = rfc6402.id_cmc_regInfo
        reg_info = f"RequesterName={urllib.parse.quote(requester, safe='')}&".encode()
        control["attrValues"].append(encoder.encode(univ.OctetString(reg_info)))
        data["controlSequence"].append(control)
    request = rfc6402.TaggedRequest()
    request["tcr"]["bodyPartID"] = 2
    request["tcr"]["certificationRequest"] = decoder.decode(csr, asn1Spec=rfc6402.CertificationRequest())[0]
    data["reqSequence"].append(request)
    data["cmsSequence"].clear()
    data["otherMsgSequence"].clear()
    return encoder.encode(data)


def drop_certificate(cms: bytes, unwanted: bytes) -> bytes:
    """The SignedData without one certificate (CMC's self-signature names the request key by its SKI only)."""
    info, _ = decoder.decode(cms, asn1Spec=rfc5652.ContentInfo())
    signed, _ = decoder.decode(info["content"], asn1Spec=rfc5652.SignedData())
    kept = [c for c in signed["certificates"] if encoder.encode(c["certificate"]) != unwanted]
    signed["certificates"].clear()
    signed["certificates"].extend(kept)
    info["content"] = encoder.encode(signed)
    return encoder.encode(info)


class NameValuePair(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("name", char.BMPString()), namedtype.NamedType("value", char.BMPString())
    )


def pkcs7_on_behalf_of(csr: bytes, agent_pem: Path, agent_key: Path, requester: str) -> bytes:
    """certreq's enroll-on-behalf-of "PKCS7": the agent's SignerInfo carries RequesterName as a signed attribute."""
    agent_der = openssl("x509", "-in", agent_pem, "-outform", "DER")
    agent, _ = decoder.decode(agent_der, asn1Spec=rfc5280.Certificate())
    pair = NameValuePair()
    pair["name"], pair["value"] = "RequesterName", requester
    signer = rfc5652.SignerInfo()
    signer["version"] = 1
    signer["sid"]["issuerAndSerialNumber"]["issuer"] = agent["tbsCertificate"]["issuer"]
    signer["sid"]["issuerAndSerialNumber"]["serialNumber"] = agent["tbsCertificate"]["serialNumber"]
    signer["digestAlgorithm"]["algorithm"] = univ.ObjectIdentifier("2.16.840.1.101.3.4.2.1")
    for oid, value in (
        (rfc5652.id_contentType, univ.ObjectIdentifier(rfc5652.id_data)),
        (rfc5652.id_messageDigest, univ.OctetString(hashlib.sha256(csr).digest())),
        (univ.ObjectIdentifier("1.3.6.1.4.1.311.13.2.1"), pair),
    ):
        attribute = rfc5652.Attribute()
        attribute["attrType"] = oid
        attribute["attrValues"].append(encoder.encode(value))
        signer["signedAttrs"].append(attribute)
    signed_attrs = b"\x31" + encoder.encode(signer["signedAttrs"])[1:]
    signer["signatureAlgorithm"]["algorithm"] = univ.ObjectIdentifier("1.2.840.10045.4.3.2")
    signer["signature"] = openssl("dgst", "-sha256", "-sign", agent_key, stdin=signed_attrs)
    signed = rfc5652.SignedData()
    signed["version"] = 1
    signed["digestAlgorithms"].append(signer["digestAlgorithm"])
    signed["encapContentInfo"]["eContentType"] = rfc5652.id_data
    signed["encapContentInfo"]["eContent"] = csr
    choice = rfc5652.CertificateChoices()
    choice["certificate"] = agent
    signed["certificates"].append(choice)
    signed["signerInfos"].append(signer)
    info = rfc5652.ContentInfo()
    info["contentType"] = rfc5652.id_signedData
    info["content"] = encoder.encode(signed)
    return encoder.encode(info)


def test_agent_signed_pkcs7_and_cmc(peer: CertsrvPeer, tmp_path: Path) -> None:
    agent_key, agent_csr = make_csr(tmp_path, "agent")
    (tmp_path / "agent.pem").write_bytes(peer.issue_agent(agent_csr))
    assert EKU_REQUEST_AGENT.encode() in openssl(
        "x509", "-in", tmp_path / "agent.pem", "-noout", "-ext", "extendedKeyUsage"
    )
    agent = (tmp_path / "agent.pem", agent_key)
    user_key, csr = make_csr(tmp_path, "carol")

    # certreq's "PKCS7": a SignedData around the PKCS #10, signed by the agent
    pkcs7 = cms_sign(tmp_path, csr, [agent])
    page, req_id = submit(peer, pem(pkcs7, "CMS"), "SmartcardLogon")
    assert "Certificate Issued" in page, page
    assert "Denied by Policy Module  0x8009480a" in submit(peer, pem(pkcs7), "SmartcardLogonTwoAgents")[0]
    second_key, second_csr = make_csr(tmp_path, "agent2")
    (tmp_path / "agent2.pem").write_bytes(peer.issue_agent(second_csr))
    two = cms_sign(tmp_path, csr, [agent, (tmp_path / "agent2.pem", second_key)])
    assert "Certificate Issued" in submit(peer, pem(two), "SmartcardLogonTwoAgents")[0]

    # enroll on behalf of: RequesterName in the agent's signed attributes
    eobo = pkcs7_on_behalf_of(csr, *agent, "EXAMPLE\\dave")
    openssl(
        "cms",
        "-verify",
        "-inform",
        "DER",
        "-CAfile",
        peer.ca_chain_pem,
        "-purpose",
        "any",
        "-out",
        "/dev/null",
        stdin=eobo,
    )
    assert "Denied by Policy Module  0x80094806" in submit(peer, pem(eobo), "User")[0]
    _, eobo_id = submit(peer, pem(eobo), "SmartcardLogon")

    # a valid signature without the Certificate Request Agent EKU is rejected
    _, other_csr = make_csr(tmp_path, "notagent")
    _, other_id = submit(peer, pem(other_csr), "User")
    _, other_der = fetch(peer, f"/certnew.cer?ReqID={other_id}&Enc=bin")
    (tmp_path / "notagent.pem").write_text(pem(other_der, "CERTIFICATE"))
    not_agent = cms_sign(tmp_path, csr, [(tmp_path / "notagent.pem", tmp_path / "notagent.key")])
    assert "Denied by Policy Module  0x8009480b" in submit(peer, pem(not_agent), "SmartcardLogon")[0]

    # CMC with RequesterName: on behalf of someone needs a template that asks for signatures
    cmc = cms_sign(tmp_path, pki_data(csr, "EXAMPLE\\carol"), [agent], "-econtent_type", OID_PKI_DATA)
    assert "Denied by Policy Module  0x80094806" in submit(peer, pem(cmc), "User")[0]
    page, cmc_id = submit(peer, pem(cmc), "SmartcardLogon")
    assert "Certificate Issued" in page

    # CMC with the request key's own signature (sid = SKI, no certificate) next to the agent's
    openssl(
        "req", "-x509", "-key", user_key, "-subj", "/CN=carol", "-addext", "subjectKeyIdentifier=hash",
        "-out", tmp_path / "self.pem",
    )  # fmt: skip
    self_der = openssl("x509", "-in", tmp_path / "self.pem", "-outform", "DER")
    signed = cms_sign(
        tmp_path, pki_data(csr, None), [(tmp_path / "self.pem", user_key), agent], "-keyid",
        "-econtent_type", OID_PKI_DATA,
    )  # fmt: skip
    assert "Certificate Issued" in submit(peer, pem(drop_certificate(signed, self_der)), "SmartcardLogon")[0]
    wrong = cms_sign(
        tmp_path, pki_data(csr, None), [(tmp_path / "notagent.pem", tmp_path / "notagent.key"), agent], "-keyid",
        "-econtent_type", OID_PKI_DATA,
    )  # fmt: skip
    wrong = drop_certificate(wrong, other_der)  # an SKI signer that is not the request key
    assert "0x80090006 (-2146893818 NTE_BAD_SIGNATURE)" in submit(peer, pem(wrong), "SmartcardLogon")[0]

    records = {r["id"]: r for r in peer.requests()}
    assert records[req_id]["request_type"] == "pkcs7" and records[req_id]["signatures"] == 1
    assert records[cmc_id]["request_type"] == "cmc" and records[cmc_id]["requester"] == "EXAMPLE\\carol"
    assert records[cmc_id]["caller"] == USER
    assert records[eobo_id]["disposition"] == "issued" and records[eobo_id]["requester"] == "EXAMPLE\\dave"


def test_plain_http_ntlm_with_curl(tmp_path: Path) -> None:
    """curl's own NTLM (no channel binding: plain HTTP), and a configured first request ID."""
    with CertsrvPeer.start(tmp_path / "peer", tls=False, auth=("ntlm",), first_request_id=1000) as plain:
        assert plain.tls_ca_pem is None and plain.url.startswith("http://")
        _, csr = make_csr(tmp_path, "dora")
        (tmp_path / "req.pem").write_text(pem(csr))
        curl = ["curl", "-sS", "--ntlm", "-u", f"{USER}:{DEFAULT_PASSWORD}"]
        page = subprocess.run(
            [*curl, "--data-urlencode", "Mode=newreq", "--data-urlencode", f"CertRequest@{tmp_path / 'req.pem'}",
             "--data-urlencode", "CertAttrib=CertificateTemplate:User\n", f"{plain.url}/certfnsh.asp"],
            capture_output=True, check=True, text=True,
        ).stdout  # fmt: skip
        assert 'href="certnew.cer?ReqID=1000&amp;Enc=bin"' in page
        basic = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", f"{USER}:{DEFAULT_PASSWORD}"]
        status = subprocess.run([*basic, plain.url + "/"], capture_output=True, check=True, text=True).stdout
        assert status == "401"  # Basic is not enabled on this one
