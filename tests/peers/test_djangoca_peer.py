"""The django-ca CMC peer works: a real CA answering RFC 5273 CMC over HTTP, checked with independent tools only.

Requests are built with pyasn1-modules (RFC 6402) and signed with `openssl cms`; answers are verified with
`openssl cms -verify` and read with pyasn1. Nothing here imports tokenagent.
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import char, namedtype, univ
from pyasn1_modules import rfc5280, rfc5652, rfc6402

from tests.peers.djangoca import DjangoCa

pytestmark = pytest.mark.slow

CMC_CONTENT_TYPE = "application/pkcs7-mime"
ID_CCT_PKIDATA = "1.3.6.1.5.5.7.12.2"
CERTIFICATE_REQUEST_AGENT = "1.3.6.1.4.1.311.20.2.1"
MS_ENROLL_CERTTYPE = "1.3.6.1.4.1.311.20.2"  # certificate template name (BMPString), unknown to cryptography
MS_CERTIFICATE_TEMPLATE = "1.3.6.1.4.1.311.21.7"  # template OID + version, known to cryptography
MS_NAME_VALUE_PAIR = "1.3.6.1.4.1.311.13.2.1"


class StatusInfoV2(univ.Sequence):
    """RFC 6402 CMCStatusInfoV2; its otherInfo CHOICE has two SEQUENCE alternatives, which pyasn1 cannot decode."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("cMCStatus", rfc6402.CMCStatus()),
        namedtype.NamedType("bodyList", univ.SequenceOf(componentType=rfc6402.BodyPartReference())),
        namedtype.OptionalNamedType("statusString", char.UTF8String()),
        namedtype.OptionalNamedType("otherInfo", univ.Any()),  # failInfo INTEGER | pendInfo | extendedFailInfo
    )


def openssl(*args: str | Path, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(["openssl", *map(str, args)], input=stdin, capture_output=True)
    assert done.returncode == 0, f"openssl {args[0]}: {done.stderr.decode()}"
    return done.stdout


def new_csr(directory: Path, name: str, subject: str, *addext: str) -> tuple[Path, bytes]:
    """An RSA key (PEM file) and a DER PKCS #10 for it, made by `openssl req`."""
    key = directory / f"{name}.key"
    extra = [arg for ext in addext for arg in ("-addext", ext)]
    csr = openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-subj", subject, *extra, "-outform", "DER"
    )
    return key, csr


def tagged_attribute(body_part_id: int, oid: univ.ObjectIdentifier, value) -> rfc6402.TaggedAttribute:
    attribute = rfc6402.TaggedAttribute()
    attribute["bodyPartID"] = body_part_id
    attribute["attrType"] = oid
    attribute["attrValues"].append(value)
    return attribute


def pki_data(csr_der: bytes, *, body_part_id: int = 3, nonce: bytes = b"nonce-0123456789") -> bytes:
    """A Full PKI Request body: transactionId and senderNonce controls and one TaggedCertificationRequest."""
    csr, rest = decoder.decode(csr_der, asn1Spec=rfc6402.CertificationRequest())
    assert not rest
    data = rfc6402.PKIData()
    data["controlSequence"].append(tagged_attribute(1, rfc6402.id_cmc_transactionId, univ.Integer(4242)))
    data["controlSequence"].append(tagged_attribute(2, rfc6402.id_cmc_senderNonce, univ.OctetString(nonce)))
    request = rfc6402.TaggedRequest()
    request["tcr"]["bodyPartID"] = body_part_id
    request["tcr"]["certificationRequest"] = csr
    data["reqSequence"].append(request)
    return encoder.encode(data)


def cmc_request(csr_der: bytes, signer: Path, key: Path, **kwargs) -> bytes:
    """The PKIData in a CMS SignedData signed by signer (its certificate is included)."""
    signed = ["cms", "-sign", "-nodetach", "-binary", "-outform", "DER", "-md", "sha256"]
    signed += ["-econtent_type", ID_CCT_PKIDATA, "-signer", signer, "-inkey", key]
    return openssl(*signed, stdin=pki_data(csr_der, **kwargs))


def post(url: str, body: bytes, content_type: str = CMC_CONTENT_TYPE) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class Response:
    """A CMC Full PKI Response, its signature checked by `openssl cms -verify` against the CA certificate."""

    def __init__(self, der: bytes, ca_pem: Path) -> None:
        content = openssl(
            "cms", "-verify", "-inform", "DER", "-CAfile", ca_pem, "-purpose", "any", "-binary", stdin=der
        )
        info, _ = decoder.decode(der, asn1Spec=rfc5652.ContentInfo())
        assert info["contentType"] == rfc5652.id_signedData
        self.signed_data, _ = decoder.decode(info["content"], asn1Spec=rfc5652.SignedData())
        assert str(self.signed_data["encapContentInfo"]["eContentType"]) == "1.3.6.1.5.5.7.12.3"  # id-cct-PKIResponse
        self.pki_response, _ = decoder.decode(content, asn1Spec=rfc6402.PKIResponse())
        self.certificates = [c["certificate"] for c in self.signed_data["certificates"]]

    def controls(self, oid: univ.ObjectIdentifier, spec) -> list:
        return [
            decoder.decode(value, asn1Spec=spec)[0]
            for attribute in self.pki_response["controlSequence"]
            if attribute["attrType"] == oid
            for value in attribute["attrValues"]
        ]

    def status(self) -> StatusInfoV2:
        (status,) = self.controls(rfc6402.id_cmc_statusInfoV2, StatusInfoV2())
        return status

    def certificate_for(self, csr_der: bytes) -> bytes | None:
        """DER of the certificate in the SignedData whose public key is the CSR's."""
        csr, _ = decoder.decode(csr_der, asn1Spec=rfc6402.CertificationRequest())
        spki = encoder.encode(csr["certificationRequestInfo"]["subjectPublicKeyInfo"])
        for certificate in self.certificates:
            if encoder.encode(certificate["tbsCertificate"]["subjectPublicKeyInfo"]) == spki:
                return encoder.encode(certificate)
        return None


def extensions(certificate_der: bytes) -> dict[str, bytes]:
    certificate, _ = decoder.decode(certificate_der, asn1Spec=rfc5280.Certificate())
    return {str(e["extnID"]): bytes(e["extnValue"]) for e in certificate["tbsCertificate"]["extensions"]}


@pytest.fixture(scope="module")
def ca(django_ca: DjangoCa) -> DjangoCa:
    """The session's server (tests/conftest.py): started once for every test that needs it."""
    return django_ca


@pytest.fixture(scope="module")
def agent(ca, tmp_path_factory) -> tuple[Path, Path]:
    """An enrollment agent certificate issued by the CA and registered as a CMC client: (certificate, key)."""
    directory = tmp_path_factory.mktemp("agent")
    key, csr = new_csr(directory, "agent", "/CN=tokenagent test enrollment agent")
    certificate = directory / "agent.pem"
    certificate.write_bytes(ca.issue(csr, agent=True))
    ca.add_client(certificate.read_bytes())
    return certificate, key


def test_get_answers(ca):
    with urllib.request.urlopen(ca.url, timeout=10) as answer:
        assert answer.read() == b"CMC endpoint here!"
    assert ca.url.startswith("http://127.0.0.1:")
    assert ca.url.endswith(f"/cmc/{ca.serial}/")


def test_ca_certificate(ca):
    text = openssl("x509", "-in", ca.ca_pem, "-noout", "-text").decode()
    assert "Signature Algorithm: sha256WithRSAEncryption" in text
    assert "Public-Key: (2048 bit)" in text
    assert "CA:TRUE" in text


def test_agent_certificate(ca, agent):
    certificate, _ = agent
    eku = openssl("x509", "-in", certificate, "-noout", "-ext", "extendedKeyUsage").decode()
    assert CERTIFICATE_REQUEST_AGENT in eku or "Certificate Request Agent" in eku
    assert "Digital Signature" in openssl("x509", "-in", certificate, "-noout", "-ext", "keyUsage").decode()
    assert b": OK" in openssl("verify", "-CAfile", ca.ca_pem, certificate)


def test_agent_registered(ca, agent):
    certificate, _ = agent
    body = "".join(certificate.read_text().split("\n")[1:-2])

    def registered() -> list[dict]:
        return [client for client in ca.clients() if "".join(client["pem"].split("\n")[1:-2]) == body]

    assert len(registered()) == 1
    count = len(ca.clients())  # the session's server: other tests register their agents too
    ca.add_client(certificate.read_bytes())  # again: still one
    assert len(registered()) == 1 and len(ca.clients()) == count


def test_cmc_enrollment(ca, agent, tmp_path):
    _, csr = new_csr(tmp_path, "user", "/CN=cmc user/O=tokenagent")
    status, body = post(ca.url, cmc_request(csr, *agent, body_part_id=7, nonce=b"nonce-enroll"))
    assert status == 200, body

    response = Response(body, ca.ca_pem)
    result = response.status()
    assert int(result["cMCStatus"]) == 0  # success
    assert [int(reference["bodyPartID"]) for reference in result["bodyList"]] == [7]
    assert [bytes(n) for n in response.controls(rfc6402.id_cmc_recipientNonce, univ.OctetString())] == [b"nonce-enroll"]
    assert response.controls(rfc6402.id_cmc_transactionId, univ.Integer()) == []  # django-ca-cmc does not echo it

    issued = response.certificate_for(csr)
    assert issued is not None
    issued_pem = tmp_path / "issued.pem"
    issued_pem.write_bytes(openssl("x509", "-inform", "DER", stdin=issued))
    assert b": OK" in openssl("verify", "-CAfile", ca.ca_pem, issued_pem)
    assert "CN=cmc user" in openssl("x509", "-in", issued_pem, "-noout", "-subject", "-nameopt", "RFC2253").decode()
    assert len(response.certificates) == 2  # the CA certificate and the issued one


def test_microsoft_extensions_are_copied(ca, agent, tmp_path):
    template_v2 = "DER:30:11:06:09:2b:06:01:04:01:82:37:15:08:02:01:64:02:01:04"  # OID 1.3.6.1.4.1.311.21.8, 100, 4
    _, csr = new_csr(
        tmp_path,
        "ms",
        "/CN=ms user",
        f"{MS_ENROLL_CERTTYPE}=ASN1:BMPSTRING:User",
        f"{MS_CERTIFICATE_TEMPLATE}={template_v2}",
        "extendedKeyUsage=clientAuth,1.3.6.1.4.1.311.20.2.2",
    )
    status, body = post(ca.url, cmc_request(csr, *agent))
    assert status == 200, body
    response = Response(body, ca.ca_pem)
    assert int(response.status()["cMCStatus"]) == 0
    issued = extensions(response.certificate_for(csr))
    assert issued[MS_ENROLL_CERTTYPE] == encoder.encode(char.BMPString("User"))
    assert MS_CERTIFICATE_TEMPLATE in issued
    assert b"\x2b\x06\x01\x04\x01\x82\x37\x14\x02\x02" in issued["2.5.29.37"]  # smartcardLogon from the CSR


def test_failed_request(ca, agent, tmp_path):
    """A CSR the CA will not sign (no CN, no subjectAlternativeName): HTTP 200, CMC status failed."""
    _, csr = new_csr(tmp_path, "nameless", "/O=tokenagent")
    status, body = post(ca.url, cmc_request(csr, *agent))
    assert status == 200, body
    response = Response(body, ca.ca_pem)
    result = response.status()
    assert int(result["cMCStatus"]) == 2  # failed
    assert result["statusString"] == "Failed processing CMC request"
    assert int(decoder.decode(result["otherInfo"], asn1Spec=rfc6402.CMCFailInfo())[0]) == 11  # internalCAError
    assert len(result["bodyList"]) == 0
    assert response.certificate_for(csr) is None


def test_name_value_pair_attribute_is_refused(ca, agent, tmp_path):
    """django-ca-cmc cannot parse a PKCS #10 attribute asn1crypto does not know: HTTP 400, no CMC response."""
    key, csr_der = new_csr(tmp_path, "nvp", "/CN=nvp user")
    csr, _ = decoder.decode(csr_der, asn1Spec=rfc6402.CertificationRequest())
    pair = univ.Sequence()
    pair.setComponentByPosition(0, char.BMPString("CertificateTemplate"))
    pair.setComponentByPosition(1, char.BMPString("User"))
    attribute = csr["certificationRequestInfo"]["attributes"].componentType.clone()
    attribute["attrType"] = univ.ObjectIdentifier(MS_NAME_VALUE_PAIR)
    attribute["attrValues"].append(encoder.encode(pair))  # SET { SEQUENCE { name, value } } as certreq writes it
    csr["certificationRequestInfo"]["attributes"].append(attribute)
    to_sign = encoder.encode(csr["certificationRequestInfo"])
    csr["signature"] = univ.BitString.fromOctetString(openssl("dgst", "-sha256", "-sign", key, stdin=to_sign))
    csr_der = encoder.encode(csr)
    openssl("req", "-inform", "DER", "-noout", "-verify", stdin=csr_der)
    status, body = post(ca.url, cmc_request(csr_der, *agent))
    assert (status, body) == (400, b"internal error")


def test_unregistered_signer_is_forbidden(ca, tmp_path):
    key, csr = new_csr(tmp_path, "stranger", "/CN=unregistered agent")
    certificate = tmp_path / "stranger.pem"
    certificate.write_bytes(ca.issue(csr, agent=True))
    status, body = post(ca.url, cmc_request(csr, certificate, key))
    assert (status, body) == (403, b"invalid signature")


def test_content_type_must_be_exact(ca, agent, tmp_path):
    _, csr = new_csr(tmp_path, "ct", "/CN=content type")
    request = cmc_request(csr, *agent)
    assert post(ca.url, request, "application/pkcs7-mime; smime-type=CMC-request") == (400, b"invalid content type")
