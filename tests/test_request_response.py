"""CMC ASN.1 (request.cmc) against pyasn1-modules' RFC 6402, and reading CA responses (request.response).

Every CA response here is made by openssl (certificates, certs-only PKCS #7, CMS signatures) and
pyasn1 (the PKIResponse inside), never by tokenagent: see tests/ca.py.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asn1crypto import algos, cms, core, x509
from asn1crypto import csr as asn1_csr
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import char, namedtype, univ, useful
from pyasn1_modules import rfc4211, rfc5280, rfc5652, rfc6402

from tests.ca import OpenSslCA, openssl, pem_to_der, pki_response
from tokenagent.errors import CAError, InputError, RequestPendingError
from tokenagent.request.asn1.cmc import (
    BODY_PART_ID_MAX,
    CONTROL_NAMES,
    CONTROL_VALUES,
    AddExtensions,
    BodyPartID,
    BodyPartList,
    BodyPartPath,
    BodyPartReference,
    CertReqMsg,
    CMCFailInfo,
    CMCStatus,
    CMCStatusInfo,
    CMCStatusInfoV2,
    GetCert,
    IdentifyProofV2,
    OtherMsg,
    PKIData,
    PKIResponse,
    PopLinkWitnessV2,
    RevokeRequest,
    TaggedAttribute,
    TaggedContentInfo,
    TaggedRequest,
    register_content_types,
)
from tokenagent.request.cmc import control, control_values
from tokenagent.request.oids import (
    OID_IDENTIFICATION,
    OID_PKI_DATA,
    OID_PKI_RESPONSE,
    OID_SENDER_NONCE,
    OID_STATUS_INFO_V2,
    OID_TRANSACTION_ID,
)
from tokenagent.request.response import CertificateResponse, CmcStatus, read_response

PEND_TIME = datetime(2030, 5, 17, 8, 30, 15, tzinfo=UTC)


# -- fixtures: one CA per module, openssl only -----------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("responses")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> OpenSslCA:
    return OpenSslCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def rsa_ca(tmp_path_factory: pytest.TempPathFactory) -> OpenSslCA:
    return OpenSslCA.create(tmp_path_factory.mktemp("rsa-ca"), key="rsa")


def new_csr(directory: Path, name: str, subject: str = "/CN=leaf.example/O=tokenagent tests") -> Path:
    csr = directory / f"{name}.csr"
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", directory / f"{name}.key", "-out", csr, "-subj", subject,
        "-addext", "subjectAltName=DNS:leaf.example",
    )  # fmt: skip
    return csr


@pytest.fixture(scope="module")
def csr(work: Path) -> Path:
    return new_csr(work, "leaf")


@pytest.fixture(scope="module")
def leaf(ca: OpenSslCA, csr: Path, work: Path) -> bytes:
    return ca.issue(csr, work / "leaf.pem")


@pytest.fixture(scope="module")
def chain(ca: OpenSslCA, leaf: bytes) -> list[bytes]:
    return [leaf, ca.sub_der, ca.root_der]


@pytest.fixture(scope="module")
def p7b(ca: OpenSslCA, work: Path) -> bytes:
    # chain order on purpose: root first, the leaf last
    return ca.p7b([ca.root_cert, ca.sub_cert, work / "leaf.pem"], work / "chain.p7b")


@pytest.fixture(scope="module")
def success(ca: OpenSslCA, chain: list[bytes], work: Path) -> bytes:
    return ca.cmc_response(chain, work / "success.rsp", status_string="issued")


def subject_of(pem: Path) -> str:
    """openssl's RFC 2253 rendering (the same as RFC 4514 for these names)."""
    # the RDNs in their encoded order (certreq's, which tokenagent prints), RFC 2253 escaping
    nameopt = "esc_2253,esc_ctrl,esc_msb,utf8,dump_nostr,dump_unknown,dump_der,sep_comma_plus_space,sname"
    text = openssl("x509", "-in", pem, "-noout", "-subject", "-nameopt", nameopt).decode().strip()
    return text.removeprefix("subject=")


def signed_data(der: bytes) -> rfc5652.SignedData:
    """pyasn1's reading of a ContentInfo signedData, independent of asn1crypto."""
    info, _ = decoder.decode(der, asn1Spec=rfc5652.ContentInfo())
    return decoder.decode(info["content"], asn1Spec=rfc5652.SignedData())[0]


def input_error(data: bytes, what: str = "response") -> str:
    with pytest.raises(InputError) as info:
        read_response(data, what)
    message = str(info.value)
    assert what in message and "\n" not in message
    assert info.value.exit_code == 4
    return message


# -- request.cmc against pyasn1-modules rfc6402 ----------------------------------------------------------


def both_ways(ours: core.Asn1Value, theirs: object, spec: object) -> core.Asn1Value:
    """Same DER from both; each reads the other's and writes it back unchanged. Returns ours re-read."""
    der = ours.dump()
    assert der == encoder.encode(theirs)
    decoded, rest = decoder.decode(der, asn1Spec=spec)
    assert rest == b""
    assert encoder.encode(decoded) == der
    again = type(ours).load(encoder.encode(theirs), strict=True)
    assert again.dump(force=True) == der
    return again


def test_body_part_ids_round_trip() -> None:
    theirs = rfc6402.BodyPartID(BODY_PART_ID_MAX)
    assert both_ways(BodyPartID(BODY_PART_ID_MAX), theirs, rfc6402.BodyPartID()).native == 4294967295
    path = rfc6402.BodyPartPath()
    path.extend([rfc6402.BodyPartID(1), rfc6402.BodyPartID(300)])
    assert both_ways(BodyPartPath([1, 300]), path, rfc6402.BodyPartPath()).native == [1, 300]
    for name, value, theirs_name, theirs_value in [
        ("body_part_id", 7, "bodyPartID", rfc6402.BodyPartID(7)),
        ("body_part_path", [1, 300], "bodyPartPath", path),
    ]:
        reference = rfc6402.BodyPartReference()
        reference[theirs_name] = theirs_value
        again = both_ways(BodyPartReference(name=name, value=value), reference, rfc6402.BodyPartReference())
        assert again.name == name
    batch = rfc6402.BodyPartList()
    batch.extend([rfc6402.BodyPartID(2), rfc6402.BodyPartID(3)])
    assert both_ways(BodyPartList([2, 3]), batch, rfc6402.BodyPartList()).native == [2, 3]


@pytest.mark.parametrize("value", [-1, BODY_PART_ID_MAX + 1])
def test_body_part_id_range_is_checked_when_building(value: int) -> None:
    with pytest.raises(ValueError, match="BodyPartID"):
        BodyPartID(value)


def test_tagged_attribute_round_trip_and_open_type() -> None:
    ours = control(9, OID_TRANSACTION_ID, core.Integer(4242))
    theirs = rfc6402.TaggedAttribute()
    theirs["bodyPartID"] = 9
    theirs["attrType"] = rfc6402.id_cmc_transactionId
    theirs["attrValues"].append(rfc6402.AttributeValue(encoder.encode(univ.Integer(4242))))
    both_ways(ours, theirs, rfc6402.TaggedAttribute())
    # pyasn1 resolves the open type through its own control map
    decoded, _ = decoder.decode(ours.dump(), asn1Spec=rfc6402.TaggedAttribute(), decodeOpenTypes=True)
    assert int(decoded["attrValues"][0]) == 4242
    assert [v.native for v in control_values(TaggedAttribute.load(ours.dump()))] == [4242]


def test_control_oids_names_and_value_classes_match_rfc6402() -> None:
    assert CONTROL_NAMES.keys() == CONTROL_VALUES.keys()
    for oid, name in CONTROL_NAMES.items():
        assert str(getattr(rfc6402, f"id_cmc_{name}")) == oid, name
        theirs = rfc6402.cmcControlAttributesMap[univ.ObjectIdentifier(oid)]
        ours = CONTROL_VALUES[oid]
        (tag,) = theirs.tagSet  # pyasn1's baseTag of a string type is OCTET STRING's: use the tag itself
        assert (ours.class_, ours.tag) == (tag.tagClass >> 6, tag.tagId), name
    assert str(rfc6402.id_cct_PKIData) == OID_PKI_DATA
    assert str(rfc6402.id_cct_PKIResponse) == OID_PKI_RESPONSE


def test_tagged_requests_round_trip(csr: Path) -> None:
    csr_der = openssl("req", "-in", csr, "-outform", "DER")
    theirs_csr, _ = decoder.decode(csr_der, asn1Spec=rfc6402.CertificationRequest())

    tcr = rfc6402.TaggedRequest()
    tcr["tcr"]["bodyPartID"] = 1
    tcr["tcr"]["certificationRequest"] = theirs_csr
    ours_tcr = TaggedRequest(
        name="tcr", value={"body_part_id": 1, "certification_request": asn1_csr.CertificationRequest.load(csr_der)}
    )
    again = both_ways(ours_tcr, tcr, rfc6402.TaggedRequest())
    assert again.chosen["certification_request"].dump() == csr_der

    def certificate_request_message(message: rfc4211.CertReqMsg) -> None:
        message["certReq"]["certReqId"] = 7
        message["certReq"]["certTemplate"]["version"] = 2
        message["popo"]["raVerified"] = ""

    message = rfc4211.CertReqMsg()
    certificate_request_message(message)
    crm = rfc6402.TaggedRequest()
    certificate_request_message(crm["crm"])
    ours_crm = TaggedRequest(name="crm", value=CertReqMsg.load(encoder.encode(message)))
    again = both_ways(ours_crm, crm, rfc6402.TaggedRequest())
    assert again.name == "crm"
    assert CertReqMsg(contents=again.chosen.native).dump() == encoder.encode(message)  # [1] back to SEQUENCE

    orm = rfc6402.TaggedRequest()
    orm["orm"]["bodyPartID"] = 3
    orm["orm"]["requestMessageType"] = univ.ObjectIdentifier("1.2.3.4.5")
    orm["orm"]["requestMessageValue"] = encoder.encode(univ.OctetString(b"other"))
    ours_orm = TaggedRequest(
        name="orm",
        value={
            "body_part_id": 3,
            "request_message_type": "1.2.3.4.5",
            "request_message_value": core.OctetString(b"other"),
        },
    )
    assert both_ways(ours_orm, orm, rfc6402.TaggedRequest()).chosen["body_part_id"].native == 3


def test_pki_data_round_trip(csr: Path) -> None:
    csr_der = openssl("req", "-in", csr, "-outform", "DER")
    ours = PKIData(
        {
            "control_sequence": [
                control(1, OID_TRANSACTION_ID, core.Integer(77)),
                control(2, OID_SENDER_NONCE, core.OctetString(b"nonce")),
                control(3, OID_IDENTIFICATION, core.UTF8String("alice")),
            ],
            "req_sequence": [
                TaggedRequest(
                    name="tcr",
                    value={"body_part_id": 4, "certification_request": asn1_csr.CertificationRequest.load(csr_der)},
                )
            ],
            "cms_sequence": [
                TaggedContentInfo(
                    {"body_part_id": 5, "content_info": {"content_type": "data", "content": core.OctetString(b"hi")}}
                )
            ],
            "other_msg_sequence": [
                OtherMsg({"body_part_id": 6, "other_msg_type": "1.2.3.4", "other_msg_value": core.Null()})
            ],
        }
    )
    theirs = rfc6402.PKIData()
    for body, oid, value in [
        (1, rfc6402.id_cmc_transactionId, univ.Integer(77)),
        (2, rfc6402.id_cmc_senderNonce, univ.OctetString(b"nonce")),
        (3, rfc6402.id_cmc_identification, char.UTF8String("alice")),
    ]:
        attribute = rfc6402.TaggedAttribute()
        attribute["bodyPartID"] = body
        attribute["attrType"] = oid
        attribute["attrValues"].append(rfc6402.AttributeValue(encoder.encode(value)))
        theirs["controlSequence"].append(attribute)
    request = rfc6402.TaggedRequest()
    request["tcr"]["bodyPartID"] = 4
    request["tcr"]["certificationRequest"] = decoder.decode(csr_der, asn1Spec=rfc6402.CertificationRequest())[0]
    theirs["reqSequence"].append(request)
    content = rfc6402.TaggedContentInfo()
    content["bodyPartID"] = 5
    content["contentInfo"]["contentType"] = rfc5652.id_data
    content["contentInfo"]["content"] = encoder.encode(univ.OctetString(b"hi"))
    theirs["cmsSequence"].append(content)
    other = rfc6402.OtherMsg()
    other["bodyPartID"] = 6
    other["otherMsgType"] = univ.ObjectIdentifier("1.2.3.4")
    other["otherMsgValue"] = encoder.encode(univ.Null(""))
    theirs["otherMsgSequence"].append(other)
    again = both_ways(ours, theirs, rfc6402.PKIData())
    decoded, _ = decoder.decode(ours.dump(), asn1Spec=rfc6402.PKIData(), decodeOpenTypes=True)
    assert [str(a["attrType"]) for a in decoded["controlSequence"]] == [
        OID_TRANSACTION_ID,
        OID_SENDER_NONCE,
        OID_IDENTIFICATION,
    ]
    assert str(decoded["controlSequence"][2]["attrValues"][0]) == "alice"
    assert again["cms_sequence"][0]["content_info"]["content"].native == b"hi"
    assert [control_values(a)[0].native for a in again["control_sequence"]] == [77, b"nonce", "alice"]


def test_empty_pki_data_and_response_are_four_and_three_empty_sequences() -> None:
    data = PKIData({"control_sequence": [], "req_sequence": [], "cms_sequence": [], "other_msg_sequence": []})
    theirs = rfc6402.PKIData()
    for name in ("controlSequence", "reqSequence", "cmsSequence", "otherMsgSequence"):
        theirs[name].clear()
    both_ways(data, theirs, rfc6402.PKIData())
    response = PKIResponse({"control_sequence": [], "cms_sequence": [], "other_msg_sequence": []})
    theirs = rfc6402.PKIResponse()
    for name in ("controlSequence", "cmsSequence", "otherMsgSequence"):
        theirs[name].clear()
    both_ways(response, theirs, rfc6402.PKIResponse())


# pyasn1-modules cannot decode CMCStatusInfoV2 with an otherInfo: pendInfo and extendedFailInfo are
# both untagged SEQUENCEs, so its CHOICE has a duplicate tag. The test reads otherInfo as ANY.
class LenientStatusInfoV2(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("cMCStatus", rfc6402.CMCStatus()),
        namedtype.NamedType("bodyList", univ.SequenceOf(componentType=rfc6402.BodyPartReference())),
        namedtype.OptionalNamedType("statusString", char.UTF8String()),
        namedtype.OptionalNamedType("otherInfo", univ.Any()),
    )


class ExtendedFailInfo(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("failInfoOID", univ.ObjectIdentifier()),
        namedtype.NamedType("failInfoValue", univ.Any()),
    )


def status_v2_pair(other: str | None) -> tuple[CMCStatusInfoV2, LenientStatusInfoV2]:
    """The same CMCStatusInfoV2 built by tokenagent and by pyasn1 (read back with the lenient spec)."""
    references = [
        BodyPartReference(name="body_part_id", value=1),
        BodyPartReference(name="body_part_path", value=[1, 2]),
    ]
    value: dict[str, object] = {"cmc_status": "failed", "body_list": references, "status_string": "why"}
    fail_info: int | None = None
    pend_token: bytes | None = None
    extended_oid: str | None = None
    if other == "fail_info":
        value["other_info"] = ("fail_info", "badCertId")
        fail_info = 4
    elif other == "pend_info":
        value["other_info"] = ("pend_info", {"pend_token": b"\x00token", "pend_time": PEND_TIME})
        pend_token = b"\x00token"
    elif other == "extended_fail_info":
        extended_oid = "1.3.6.1.4.1.99999.1"
        extended = {"fail_info_oid": extended_oid, "fail_info_value": core.UTF8String("extended reason")}
        value["other_info"] = ("extended_fail_info", extended)
    theirs = pki_response(
        2,
        status_string="why",
        body_list=(1, (1, 2)),
        fail_info=fail_info,
        pend_token=pend_token,
        pend_time=PEND_TIME,
        extended_fail_info=extended_oid,
    )
    value_der = theirs["controlSequence"][0]["attrValues"][0].asOctets()
    return CMCStatusInfoV2(value), decoder.decode(value_der, asn1Spec=LenientStatusInfoV2())[0]


@pytest.mark.parametrize("other", [None, "fail_info", "pend_info", "extended_fail_info"])
def test_status_info_v2_round_trip(other: str | None) -> None:
    ours, theirs = status_v2_pair(other)
    again = both_ways(ours, theirs, LenientStatusInfoV2())
    assert again["cmc_status"].native == "failed" and again["status_string"].native == "why"
    assert again["body_list"].native == [1, [1, 2]]
    if other is None:
        assert not theirs["otherInfo"].isValue
        return
    assert again["other_info"].name == other
    inner = theirs["otherInfo"].asOctets()
    if other == "fail_info":
        assert int(decoder.decode(inner, asn1Spec=rfc6402.CMCFailInfo())[0]) == 4
        assert again["other_info"].native == "badCertId"
    elif other == "pend_info":
        pend, _ = decoder.decode(inner, asn1Spec=rfc6402.PendInfo())
        assert bytes(pend["pendToken"]) == b"\x00token"
        assert pend["pendTime"].asDateTime == PEND_TIME
        assert again["other_info"].chosen["pend_time"].native == PEND_TIME
    else:
        extended, _ = decoder.decode(inner, asn1Spec=ExtendedFailInfo())
        assert str(extended["failInfoOID"]) == "1.3.6.1.4.1.99999.1"
        assert again["other_info"].chosen["fail_info_value"].parse(core.UTF8String).native == "extended reason"


@pytest.mark.parametrize("other", [None, "fail_info", "pend_info"])
def test_status_info_v1_round_trip(other: str | None) -> None:
    theirs = rfc6402.CMCStatusInfo()
    theirs["cMCStatus"] = 3
    theirs["bodyList"].extend([rfc6402.BodyPartID(1), rfc6402.BodyPartID(2)])
    value: dict[str, object] = {"cmc_status": "pending", "body_list": [1, 2]}
    if other == "fail_info":
        theirs["otherInfo"]["failInfo"] = 13
        value["other_info"] = ("fail_info", "authDataFail")
    elif other == "pend_info":
        theirs["otherInfo"]["pendInfo"]["pendToken"] = b"t"
        theirs["otherInfo"]["pendInfo"]["pendTime"] = useful.GeneralizedTime(PEND_TIME.strftime("%Y%m%d%H%M%SZ"))
        value["other_info"] = ("pend_info", {"pend_token": b"t", "pend_time": PEND_TIME})
    again = both_ways(CMCStatusInfo(value), theirs, rfc6402.CMCStatusInfo())
    assert again["body_list"].native == [1, 2]
    if other is not None:
        assert again["other_info"].name == other


def test_status_and_fail_info_names_match_rfc6402() -> None:
    assert CMCStatus._map == {v: k for k, v in rfc6402.CMCStatus.namedValues.items()}
    assert CMCFailInfo._map == {v: k for k, v in rfc6402.CMCFailInfo.namedValues.items()}


def algorithm(oid: str, null: bool) -> rfc5280.AlgorithmIdentifier:
    identifier = rfc5280.AlgorithmIdentifier()
    identifier["algorithm"] = univ.ObjectIdentifier(oid)
    if null:
        identifier["parameters"] = encoder.encode(univ.Null(""))
    return identifier


@pytest.mark.parametrize(("ours_class", "theirs_class"), [
    (IdentifyProofV2, rfc6402.IdentifyProofV2),
    (PopLinkWitnessV2, rfc6402.PopLinkWitnessV2),
])  # fmt: skip
def test_witness_values_round_trip(ours_class: type[core.Sequence], theirs_class: type) -> None:
    names = [name for name, *_ in ours_class._fields]
    ours = ours_class(
        {
            names[0]: algos.DigestAlgorithm({"algorithm": "sha256"}),
            names[1]: algos.HmacAlgorithm({"algorithm": "sha256", "parameters": core.Null()}),
            names[2]: b"\x01" * 32,
        }
    )
    theirs = theirs_class()
    theirs_names = [named.name for named in theirs.componentType.namedTypes]
    # asn1crypto's DigestAlgorithm always writes NULL parameters for SHA-2 (as Windows does)
    theirs[theirs_names[0]] = algorithm("2.16.840.1.101.3.4.2.1", null=True)
    theirs[theirs_names[1]] = algorithm("1.2.840.113549.2.9", null=True)  # hmacWithSHA256
    theirs[theirs_names[2]] = b"\x01" * 32
    again = both_ways(ours, theirs, theirs_class())
    assert again[names[1]]["algorithm"].dotted == "1.2.840.113549.2.9"


def test_revoke_request_round_trip(ca: OpenSslCA) -> None:
    name_der = x509.Certificate.load(ca.sub_der).subject.dump()
    ours = RevokeRequest(
        {
            "issuer_name": x509.Name.load(name_der),
            "serial_number": 0x1234567890,
            "reason": "key_compromise",
            "invalidity_date": PEND_TIME,
            "passphrase": b"secret",
            "comment": "lost the token",
        }
    )
    theirs = rfc6402.RevokeRequest()
    theirs["issuerName"] = decoder.decode(name_der, asn1Spec=rfc5280.Name())[0]
    theirs["serialNumber"] = 0x1234567890
    theirs["reason"] = 1
    theirs["invalidityDate"] = useful.GeneralizedTime(PEND_TIME.strftime("%Y%m%d%H%M%SZ"))
    theirs["passphrase"] = b"secret"
    theirs["comment"] = "lost the token"
    again = both_ways(ours, theirs, rfc6402.RevokeRequest())
    assert again["reason"].native == "key_compromise" and again["comment"].native == "lost the token"
    minimal = RevokeRequest({"issuer_name": x509.Name.load(name_der), "serial_number": 2, "reason": "superseded"})
    theirs = rfc6402.RevokeRequest()
    theirs["issuerName"] = decoder.decode(name_der, asn1Spec=rfc5280.Name())[0]
    theirs["serialNumber"] = 2
    theirs["reason"] = 4
    both_ways(minimal, theirs, rfc6402.RevokeRequest())


def test_get_cert_and_add_extensions_round_trip(ca: OpenSslCA) -> None:
    name_der = x509.Certificate.load(ca.sub_der).subject.dump()
    theirs = rfc6402.GetCert()
    theirs["issuerName"]["directoryName"]["rdnSequence"] = decoder.decode(name_der, asn1Spec=rfc5280.Name())[0][
        "rdnSequence"
    ]
    theirs["serialNumber"] = 99
    ours = GetCert(
        {"issuer_name": x509.GeneralName(name="directory_name", value=x509.Name.load(name_der)), "serial_number": 99}
    )
    both_ways(ours, theirs, rfc6402.GetCert())

    key_usage = encoder.encode(rfc5280.KeyUsage("digitalSignature"))
    extension = rfc5280.Extension()
    extension["extnID"] = rfc5280.id_ce_keyUsage
    extension["critical"] = True
    extension["extnValue"] = key_usage
    theirs = rfc6402.AddExtensions()
    theirs["pkiDataReference"] = 0
    theirs["certReferences"].extend([rfc6402.BodyPartID(4)])
    theirs["extensions"].append(extension)
    ours = AddExtensions(
        {
            "pki_data_reference": 0,
            "cert_references": [4],
            "extensions": [{"extn_id": "key_usage", "critical": True, "extn_value": x509.KeyUsage.load(key_usage)}],
        }
    )
    again = both_ways(ours, theirs, rfc6402.AddExtensions())
    assert again["extensions"][0]["extn_value"].native == {"digital_signature"}


def test_pki_response_round_trip_with_nested_content_info() -> None:
    status = CMCStatusInfoV2({"cmc_status": "success", "body_list": [BodyPartReference(name="body_part_id", value=1)]})
    nested = PKIData({"control_sequence": [], "req_sequence": [], "cms_sequence": [], "other_msg_sequence": []})
    ours = PKIResponse(
        {
            "control_sequence": [control(100, OID_STATUS_INFO_V2, status)],
            "cms_sequence": [
                TaggedContentInfo({"body_part_id": 7, "content_info": {"content_type": "pki_data", "content": nested}})
            ],
            "other_msg_sequence": [],
        }
    )
    theirs = pki_response(0)
    content = rfc6402.TaggedContentInfo()
    content["bodyPartID"] = 7
    content["contentInfo"]["contentType"] = rfc6402.id_cct_PKIData
    content["contentInfo"]["content"] = encoder.encode(nested_pyasn1_pki_data())
    theirs["cmsSequence"].append(content)
    again = both_ways(ours, theirs, rfc6402.PKIResponse())
    inner = again["cms_sequence"][0]["content_info"]
    assert inner["content_type"].native == "pki_data" and isinstance(inner["content"], PKIData)
    decoded, _ = decoder.decode(ours.dump(), asn1Spec=rfc6402.PKIResponse(), decodeOpenTypes=True)
    assert str(decoded["cmsSequence"][0]["contentInfo"]["contentType"]) == OID_PKI_DATA


def nested_pyasn1_pki_data() -> rfc6402.PKIData:
    data = rfc6402.PKIData()
    for name in ("controlSequence", "reqSequence", "cmsSequence", "otherMsgSequence"):
        data[name].clear()
    return data


def test_registration_is_idempotent_and_reaches_encapsulated_content_info() -> None:
    register_content_types()
    register_content_types()
    assert cms.ContentType._map[OID_PKI_RESPONSE] == "pki_response"
    assert cms.ContentType("pki_data").dotted == OID_PKI_DATA  # the lazily built reverse map knows it
    response = PKIResponse({"control_sequence": [], "cms_sequence": [], "other_msg_sequence": []})
    encapsulated = cms.EncapsulatedContentInfo({"content_type": "pki_response", "content": response})
    loaded = cms.EncapsulatedContentInfo.load(encapsulated.dump())
    assert isinstance(loaded["content"].parsed, PKIResponse)
    theirs = rfc5652.EncapsulatedContentInfo()
    theirs["eContentType"] = rfc6402.id_cct_PKIResponse
    theirs["eContent"] = encoder.encode(
        decoder.decode(response.dump(), asn1Spec=rfc6402.PKIResponse())[0]  # pyasn1's own bytes
    )
    assert encoder.encode(theirs) == encapsulated.dump()


# -- read_response: single certificates ---------------------------------------------------------------


def test_certificate_in_every_form(work: Path, leaf: bytes) -> None:
    pem = (work / "leaf.pem").read_bytes()
    text = base64.b64encode(leaf).decode()
    forms = {
        "der": leaf,
        "pem": pem,
        "certreq base64": "\r\n".join(text[i : i + 64] for i in range(0, len(text), 64)).encode(),
        "utf-16 base64": text.encode("utf-16"),
        "str": pem.decode(),
    }
    for name, data in forms.items():
        response = read_response(data, "leaf.cer")
        assert response == CertificateResponse("certificate", (leaf,), (), "unsigned", ()), name
        assert response.end_entities() == [leaf]
        assert response.chain_for(leaf) == []  # its issuer is not in the response
        response.raise_for_status()


def test_a_single_ca_certificate_is_a_leaf(ca: OpenSslCA) -> None:
    for der in (ca.root_der, ca.sub_der):
        response = read_response(der)
        assert response.end_entities() == [der]
        assert response.chain_for(der) == []


# -- read_response: certs-only PKCS #7 ----------------------------------------------------------------


def test_p7b_der_and_pem(ca: OpenSslCA, work: Path, p7b: bytes, chain: list[bytes], leaf: bytes) -> None:
    pem = ca.p7b([ca.root_cert, ca.sub_cert, work / "leaf.pem"], work / "chain.pem.p7b", der=False)
    assert pem.startswith(b"-----BEGIN PKCS7-----")
    found_by_pyasn1 = tuple(encoder.encode(c["certificate"]) for c in signed_data(p7b)["certificates"])
    for data in (p7b, pem):
        response = read_response(data, "chain.p7b")
        assert response.form == "pkcs7" and response.signature == "unsigned"
        assert response.statuses == () and response.signers == ()
        assert response.certificates == found_by_pyasn1
        assert sorted(response.certificates) == sorted(chain)
        assert response.end_entities() == [leaf]
        assert response.chain_for(leaf) == [ca.sub_der, ca.root_der]
        assert response.chain_for(ca.sub_der) == [ca.root_der]
        assert response.chain_for(ca.root_der) == []
        response.raise_for_status()


def test_issuer_needs_the_signature_not_only_the_name(tmp_path: Path, ca: OpenSslCA, work: Path, leaf: bytes) -> None:
    impostor = OpenSslCA.create(tmp_path / "impostor")  # same names, other keys
    assert subject_of(impostor.sub_cert) == subject_of(ca.sub_cert)
    response = read_response(ca.p7b([work / "leaf.pem", impostor.sub_cert, impostor.root_cert], tmp_path / "x.p7b"))
    assert response.chain_for(leaf) == []
    assert sorted(response.end_entities()) == sorted([leaf, impostor.sub_der])  # the root issued its sub


def test_cross_certificates_never_loop(tmp_path: Path, ca: OpenSslCA) -> None:
    """X1: Test Root CA's key, issued by Other Root CA; X2: Other Root CA's key, issued by Test Root CA."""
    other_key, other_root = tmp_path / "other.key", tmp_path / "other.pem"
    other_subject = "/O=tokenagent tests/CN=Other Root CA"
    openssl(
        "req", "-x509", "-config", ca.config, "-extensions", "v3_ca", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", other_key, "-out", other_root,
        "-subj", other_subject, "-days", "5",
    )  # fmt: skip

    def cross(key: Path, subject: str, issuer_cert: Path, issuer_key: Path, out: Path) -> bytes:
        request = out.with_suffix(".csr")
        openssl("req", "-new", "-config", ca.config, "-key", key, "-subj", subject, "-out", request)
        openssl(
            "x509", "-req", "-in", request, "-CA", issuer_cert, "-CAkey", issuer_key, "-set_serial", "77",
            "-days", "5", "-extfile", ca.config, "-extensions", "v3_ca", "-out", out,
        )  # fmt: skip
        return pem_to_der(out)

    first = cross(ca.root_key, "/O=tokenagent tests/CN=Test Root CA", other_root, other_key, tmp_path / "x1.pem")
    second = cross(other_key, other_subject, ca.root_cert, ca.root_key, tmp_path / "x2.pem")
    response = read_response(ca.p7b([tmp_path / "x1.pem", tmp_path / "x2.pem"], tmp_path / "cross.p7b"))
    assert response.chain_for(first) == [second]
    assert response.chain_for(second) == [first]
    assert response.end_entities() == []  # each issued the other


# -- read_response: CMC full PKI responses -----------------------------------------------------------


def test_cmc_success(ca: OpenSslCA, work: Path, success: bytes, chain: list[bytes], leaf: bytes) -> None:
    openssl(
        "cms", "-verify", "-inform", "DER", "-in", work / "success.rsp", "-CAfile", ca.root_cert,
        "-purpose", "any", "-out", work / "success.content",
    )  # fmt: skip
    response = read_response(success, "success.rsp")
    assert response.form == "cmc"
    assert response.statuses == (cmc_status("success", status_string="issued"),)
    assert response.signature == "valid"
    assert response.signers == (subject_of(ca.sub_cert),)
    assert sorted(response.certificates) == sorted(chain)
    assert response.end_entities() == [leaf]
    assert response.chain_for(leaf) == [ca.sub_der, ca.root_der]
    response.raise_for_status()


def cmc_status(status: str, **changes: object) -> CmcStatus:
    """What read_response should report: statusInfoV2 about body part 1 unless ``changes`` say otherwise."""
    plain = CmcStatus(
        status, body_list=(1,), status_string=None, fail_info=None, pend_token=None, pend_time=None, version=2
    )
    return dataclasses.replace(plain, **changes)


def test_cmc_response_in_cms_pem(work: Path, success: bytes) -> None:
    pem = openssl("cms", "-cmsout", "-inform", "DER", "-in", work / "success.rsp", "-outform", "PEM")
    assert pem.startswith(b"-----BEGIN CMS-----")
    assert read_response(pem) == read_response(success)


def test_cmc_failed_with_fail_info_and_status_string(ca: OpenSslCA, work: Path) -> None:
    data = ca.cmc_response(
        [], work / "failed.rsp", status=2, status_string="the subject is\nnot allowed", fail_info=2, body_list=(4, 5)
    )
    response = read_response(data)
    assert response.statuses == (
        cmc_status("failed", body_list=(4, 5), status_string="the subject is\nnot allowed", fail_info="badRequest"),
    )
    assert response.signature == "valid" and response.certificates == (ca.sub_der,)
    with pytest.raises(CAError) as info:
        response.raise_for_status()
    assert type(info.value) is CAError and info.value.exit_code == 12
    assert str(info.value) == "the CA refused the request: failed (badRequest): the subject is not allowed"


def test_cmc_pending(ca: OpenSslCA, work: Path) -> None:
    data = ca.cmc_response([], work / "pending.rsp", status=3, pend_token=b"\x01\xabq", pend_time=PEND_TIME)
    response = read_response(data)
    assert response.statuses == (cmc_status("pending", pend_token=b"\x01\xabq", pend_time=PEND_TIME),)
    assert response.statuses[0].pend_time is not None and response.statuses[0].pend_time.tzinfo is not None
    with pytest.raises(RequestPendingError) as info:
        response.raise_for_status()
    assert info.value.exit_code == 14 and isinstance(info.value, CAError)
    assert (
        str(info.value)
        == "the CA holds the request pending (pendToken 01ab71, check again after 2030-05-17 08:30:15 UTC)"
    )


def test_cmc_status_info_v1(ca: OpenSslCA, work: Path) -> None:
    data = ca.cmc_response([], work / "v1.rsp", status=2, fail_info=11, v1=True, body_list=(2, 3))
    response = read_response(data)
    assert response.statuses == (cmc_status("failed", body_list=(2, 3), fail_info="internalCAError", version=1),)
    with pytest.raises(CAError, match=r"^the CA refused the request: failed \(internalCAError\)$"):
        response.raise_for_status()


def test_cmc_extended_fail_info_and_body_part_path(ca: OpenSslCA, work: Path) -> None:
    data = ca.cmc_response(
        [], work / "ext.rsp", status=2, extended_fail_info="1.3.6.1.4.1.99999.7", body_list=((1, 9), 3)
    )
    response = read_response(data)
    assert response.statuses == (cmc_status("failed", body_list=(9, 3), fail_info="1.3.6.1.4.1.99999.7"),)
    with pytest.raises(CAError, match=r"failed \(1\.3\.6\.1\.4\.1\.99999\.7\)"):
        response.raise_for_status()


@pytest.mark.parametrize(("status", "name"), [(4, "noSupport"), (6, "popRequired"), (7, "partial")])
def test_cmc_other_refusals(ca: OpenSslCA, work: Path, chain: list[bytes], status: int, name: str) -> None:
    response = read_response(ca.cmc_response(chain, work / f"{name}.rsp", status=status))
    assert response.statuses[0].status == name
    with pytest.raises(CAError) as info:
        response.raise_for_status()
    assert type(info.value) is CAError and str(info.value) == f"the CA refused the request: {name}"


def test_cmc_confirm_required_is_an_error_tokenagent_names(ca: OpenSslCA, work: Path, chain: list[bytes]) -> None:
    response = read_response(ca.cmc_response(chain, work / "confirm.rsp", status=5))
    with pytest.raises(CAError, match="confirmRequired"):
        response.raise_for_status()


def test_cmc_success_without_certificate_is_a_ca_error(ca: OpenSslCA, work: Path) -> None:
    response = read_response(ca.cmc_response([], work / "empty.rsp", include_signer=False))
    assert response.certificates == () and response.statuses[0].status == "success"
    assert response.signature == "unverifiable" and response.signers == ()
    with pytest.raises(CAError, match="no certificate") as info:
        response.raise_for_status()
    assert type(info.value) is CAError


def test_a_refusal_wins_over_pending(ca: OpenSslCA, work: Path) -> None:
    # two statuses in one response: re-sign pyasn1's controlSequence with both
    first = pki_response(3, pend_token=b"p", pend_time=PEND_TIME)
    second = pki_response(2, fail_info=9, v1=True)
    first["controlSequence"].append(second["controlSequence"][0])
    content = work / "two.content"
    content.write_bytes(encoder.encode(first))
    openssl(
        "cms", "-sign", "-binary", "-nodetach", "-nosmimecap", "-econtent_type", OID_PKI_RESPONSE,
        "-in", content, "-signer", ca.sub_cert, "-inkey", ca.sub_key, "-outform", "DER", "-out", work / "two.rsp",
    )  # fmt: skip
    response = read_response((work / "two.rsp").read_bytes())
    assert [(s.status, s.version) for s in response.statuses] == [("pending", 2), ("failed", 1)]
    with pytest.raises(CAError, match=r"failed \(popFailed\)") as info:
        response.raise_for_status()
    assert type(info.value) is CAError


def test_unsigned_cmc_response(ca: OpenSslCA, work: Path, chain: list[bytes]) -> None:
    data = ca.cmc_response(chain, work / "unsigned.rsp", sign=False)
    assert len(signed_data(data)["signerInfos"]) == 0
    response = read_response(data)
    assert response.signature == "unsigned" and response.signers == ()
    assert response.certificates == tuple(encoder.encode(c["certificate"]) for c in signed_data(data)["certificates"])
    assert sorted(response.certificates) == sorted(chain)
    response.raise_for_status()


@pytest.mark.parametrize(("digest", "pss"), [("sha256", False), ("sha384", False), ("sha256", True), ("sha512", True)])
def test_rsa_signatures(rsa_ca: OpenSslCA, work: Path, digest: str, pss: bool) -> None:
    csr = new_csr(work, f"rsa-{digest}-{pss}")
    issued = rsa_ca.issue(csr, work / f"rsa-{digest}-{pss}.pem")
    data = rsa_ca.cmc_response([issued], work / f"rsa-{digest}-{pss}.rsp", digest=digest, pss=pss)
    algorithm = signed_data(data)["signerInfos"][0]["signatureAlgorithm"]["algorithm"]
    assert (str(algorithm) == "1.2.840.113549.1.1.10") is pss  # RSASSA-PSS
    response = read_response(data)
    assert response.signature == "valid"
    assert response.end_entities() == [issued] and response.chain_for(issued) == [rsa_ca.sub_der]
    assert read_response(flip_in_signature(data)).signature == "invalid"


def flip_in_signature(data: bytes) -> bytes:
    """The response with one bit of the first SignerInfo's signature value changed (found by pyasn1)."""
    signature = bytes(signed_data(data)["signerInfos"][0]["signature"])
    assert data.count(signature) == 1
    position = data.index(signature) + len(signature) // 2
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


def test_a_changed_signature_is_invalid(success: bytes) -> None:
    response = read_response(flip_in_signature(success))
    assert response.signature == "invalid"
    assert response.signers == read_response(success).signers  # the signer was found, its signature is wrong


def test_a_changed_content_is_invalid(ca: OpenSslCA, work: Path, chain: list[bytes]) -> None:
    data = ca.cmc_response(chain, work / "tamper.rsp", status_string="issued by CA-1")
    tampered = data.replace(b"issued by CA-1", b"issued by CA-2")
    response = read_response(tampered)
    assert response.statuses[0].status_string == "issued by CA-2"
    assert response.signature == "invalid"  # messageDigest no longer matches


def test_without_the_signer_certificate_it_is_unverifiable(ca: OpenSslCA, work: Path, leaf: bytes) -> None:
    data = ca.cmc_response([leaf, ca.root_der], work / "nocerts.rsp", include_signer=False)
    response = read_response(data)
    assert response.signature == "unverifiable" and response.signers == ()
    assert sorted(response.certificates) == sorted([leaf, ca.root_der])
    # the sub CA is missing: the root issued nothing here, so it counts as a leaf too
    assert sorted(response.end_entities()) == sorted([leaf, ca.root_der])
    assert response.chain_for(leaf) == []


def test_signer_found_by_subject_key_identifier(ca: OpenSslCA, work: Path, chain: list[bytes]) -> None:
    content = work / "ski.content"
    content.write_bytes(encoder.encode(pki_response(0)))
    bundle = work / "ski-certs.pem"
    bundle.write_bytes((work / "leaf.pem").read_bytes() + ca.root_cert.read_bytes())
    openssl(
        "cms", "-sign", "-binary", "-nodetach", "-nosmimecap", "-keyid", "-econtent_type", OID_PKI_RESPONSE,
        "-in", content, "-signer", ca.sub_cert, "-inkey", ca.sub_key, "-certfile", bundle,
        "-outform", "DER", "-out", work / "ski.rsp",
    )  # fmt: skip
    data = (work / "ski.rsp").read_bytes()
    assert signed_data(data)["signerInfos"][0]["sid"].getName() == "subjectKeyIdentifier"
    response = read_response(data)
    assert response.signature == "valid" and response.signers == (subject_of(ca.sub_cert),)


def test_without_signed_attributes(ca: OpenSslCA, work: Path, chain: list[bytes]) -> None:
    content = work / "noattr.content"
    content.write_bytes(encoder.encode(pki_response(0)))
    openssl(
        "cms", "-sign", "-binary", "-nodetach", "-noattr", "-econtent_type", OID_PKI_RESPONSE,
        "-in", content, "-signer", ca.sub_cert, "-inkey", ca.sub_key, "-outform", "DER", "-out", work / "noattr.rsp",
    )  # fmt: skip
    data = (work / "noattr.rsp").read_bytes()
    assert not signed_data(data)["signerInfos"][0]["signedAttrs"].isValue
    assert read_response(data).signature == "valid"
    assert read_response(flip_in_signature(data)).signature == "invalid"


# -- what is not a CA response -----------------------------------------------------------------------


def test_a_request_is_named(csr: Path) -> None:
    for data in (csr.read_bytes(), openssl("req", "-in", csr, "-outform", "DER")):
        assert input_error(data, "response.p7b") == "response.p7b: a certificate request, not a CA response"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "cannot read response: the input is empty"),
        (b"\x00\x01\x02\xff\xfe\x80", "cannot read response: neither DER"),
        (b"hello, world", "cannot read response: the base64 text is not valid base64"),
        (b"-----BEGIN PKCS7-----\nnot base64!\n-----END PKCS7-----\n", "not valid base64"),
        (b"\x30\x03\x02\x01\x05", "not a certificate, PKCS #7 or CMC response"),
        (b"\x30\x00", "not a certificate, PKCS #7 or CMC response"),
        (b"\x30\x0b\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02", "a signedData ContentInfo without its content"),
        (b"\x30\x0e\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02\xa0\x01\x05", "cannot read response: damaged DER"),
        (b"\x30\x06\x30\x00\x30\x00\x30\x00", "a bare CMC PKIResponse without its CMS SignedData"),
        (b"\x30\x08\x30\x00\x30\x00\x30\x00\x30\x00", "a CMC request (PKIData), not a CA response"),
    ],
)
def test_garbage_is_an_input_error(data: bytes, reason: str) -> None:
    assert reason in input_error(data)


def test_other_cms_content_is_named(ca: OpenSslCA, work: Path) -> None:
    plain = work / "plain.txt"
    plain.write_bytes(b"hello")
    enveloped = openssl("cms", "-encrypt", "-binary", "-in", plain, "-outform", "DER", "-aes128", ca.root_cert)
    assert "a CMS enveloped_data ContentInfo, not signed data" in input_error(enveloped)
    signed = openssl(
        "cms", "-sign", "-binary", "-nodetach", "-in", plain, "-signer", ca.sub_cert, "-inkey", ca.sub_key,
        "-outform", "DER",
    )  # fmt: skip
    assert input_error(signed) == "response: signed data with content (id-data), not a CA response"
    request = work / "pkidata.content"
    request.write_bytes(encoder.encode(nested_pyasn1_pki_data()))
    pki_data = openssl(
        "cms", "-sign", "-binary", "-nodetach", "-econtent_type", OID_PKI_DATA, "-in", request,
        "-signer", ca.sub_cert, "-inkey", ca.sub_key, "-outform", "DER",
    )  # fmt: skip
    assert input_error(pki_data) == "response: a CMC request (PKIData), not a CA response"
    other = openssl(
        "cms", "-sign", "-binary", "-nodetach", "-econtent_type", "1.2.3.4", "-in", plain,
        "-signer", ca.sub_cert, "-inkey", ca.sub_key, "-outform", "DER",
    )  # fmt: skip
    assert input_error(other) == "response: signed data with content type 1.2.3.4, not a CA response"


def every_prefix_is_an_input_error(data: bytes) -> None:
    for length in range(len(data)):
        input_error(data[:length])


def test_every_truncation_of_a_p7b_is_an_input_error(p7b: bytes) -> None:
    every_prefix_is_an_input_error(p7b)


def test_every_truncation_of_a_cmc_response_is_an_input_error(success: bytes) -> None:
    every_prefix_is_an_input_error(success)


def test_every_truncation_of_a_pem_p7b_is_an_input_error(ca: OpenSslCA, work: Path) -> None:
    pem = ca.p7b([work / "leaf.pem", ca.sub_cert], work / "truncated.p7b", der=False)
    every_prefix_is_an_input_error(pem[: pem.index(b"-----END")])  # cut before the END line: never whole


def econtent_range(data: bytes) -> range:
    content = bytes(signed_data(data)["encapContentInfo"]["eContent"])
    start = data.index(content)
    return range(start, start + len(content))


def flipped(data: bytes) -> Iterator[tuple[int, bytes]]:
    for position in range(len(data)):
        yield position, data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]


def read_or_input_error(data: bytes) -> CertificateResponse | None:
    try:
        response = read_response(data)
    except InputError as exc:
        assert "\n" not in str(exc)
        return None
    response.end_entities()
    return response


# a flipped byte in a serial number makes it negative: cryptography warns before it will refuse
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_every_changed_byte_of_a_cmc_response(success: bytes) -> None:
    """InputError or a response, never another exception; a change inside eContent is never "valid"."""
    inside = econtent_range(success)
    results = [(position, read_or_input_error(changed)) for position, changed in flipped(success)]
    assert any(r is None for _, r in results) and any(r is not None for _, r in results)
    for position, response in results:
        if response is not None and position in inside:
            assert response.signature != "valid", position


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_every_changed_byte_of_a_p7b(p7b: bytes) -> None:
    results = [read_or_input_error(changed) for _, changed in flipped(p7b)]
    assert any(r is None for r in results) and any(r is not None for r in results)
