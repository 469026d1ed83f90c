"""What a request, response or certificate file holds, like certutil -dump: for `tokenagent show`.

`describe` reads anything `read_der` reads and returns a JSON-ready dict (str, int, bool, None,
lists and dicts; bytes as hex, times as ISO 8601 UTC); `render` turns it into lines for people.
Kinds:
  pkcs10         a certification request, with its own signature status (proof of possession)
  certificate    an X.509 certificate
  cms-pkcs7      SignedData around id-data: a PKCS7 (EOBO) request, its PKCS #10 in "request"
  cmc-request    PKIData, signed (SignedData) or bare: controls, body parts, the PKCS #10s
  cmc-response   SignedData around a PKIResponse: controls (statusInfoV2 ...), certificates
  pkcs7-certs    certs-only SignedData (a .p7b chain)
Every CMS kind lists its signers with sid, signed attributes (RequesterName decoded) and the
outcome of `cms.verify_signers`. Absent information is None, never a missing key.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from asn1crypto import algos, cms, core, keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509

from tokenagent.display import HIDDEN_NOTE, escape_tree, has_hidden_anywhere
from tokenagent.errors import InputError
from tokenagent.request.armor import read_der
from tokenagent.request.asn1.attributes import Attribute
from tokenagent.request.asn1.cmc import CONTROL_NAMES, ControlSequence, PKIData, PKIResponse, PopLinkWitnessV2
from tokenagent.request.asn1.cms import SignedData
from tokenagent.request.attributes import (
    ATTRIBUTE_NAMES,
    OID_ENROLLMENT_CSP_PROVIDER,
    OID_ENROLLMENT_NAME_VALUE_PAIR,
    OID_EXTENSION_REQUEST,
    CspProvider,
    EnrollmentNameValuePair,
)
from tokenagent.request.cmc import CRL_REASONS, control_values
from tokenagent.request.cms_verify import SignerCheck, check_signed_data, verify_certification_request
from tokenagent.request.der import LOAD_ERRORS, PARSE_ERRORS, kind_of, parse_all, reason_of
from tokenagent.request.extensions import (
    KEY_PURPOSE_NAMES,
    OID_AUTHORITY_KEY_IDENTIFIER,
    OID_BASIC_CONSTRAINTS,
    OID_EXTENDED_KEY_USAGE,
    OID_KEY_USAGE,
    OID_SMIME_CAPABILITIES,
    OID_SUBJECT_ALT_NAME,
    OID_SUBJECT_KEY_IDENTIFIER,
    OID_TEMPLATE_INFO,
    OID_TEMPLATE_NAME,
    CertificateTemplate,
    GeneralNames,
    SMIMECapabilities,
    extension_name,
    key_identifier,
)
from tokenagent.request.names import name_text
from tokenagent.request.oids import (
    OID_BATCH_REQUESTS,
    OID_CHALLENGE_PASSWORD,
    OID_CLIENT_INFO,
    OID_CONTENT_TYPE,
    OID_DATA,
    OID_DS_GUID,
    OID_IDENTIFICATION,
    OID_IDENTITY_PROOF,
    OID_IDENTITY_PROOF_V2,
    OID_ISSUER_ALT_NAME,
    OID_MESSAGE_DIGEST,
    OID_OS_VERSION,
    OID_PKI_DATA,
    OID_PKI_RESPONSE,
    OID_POP_LINK_RANDOM,
    OID_POP_LINK_WITNESS_V2,
    OID_RECIPIENT_NONCE,
    OID_REG_INFO,
    OID_RENEWAL_CERTIFICATE,
    OID_REVOKE_REQUEST,
    OID_SENDER_NONCE,
    OID_SIGNING_TIME,
    OID_STATUS_INFO,
    OID_STATUS_INFO_V2,
    OID_TRANSACTION_ID,
    OID_UPN,
    REQUESTER_NAME,
)
from tokenagent.request.signed_data import (
    CONTENT_TYPE_NAMES,
    SIGNED_ATTRIBUTE_NAMES,
    certificates_of,
    load_certification_request,
    load_pki_data,
    load_pki_response,
    load_signed_data,
)

Description = dict[str, Any]


_ATTRIBUTE_NAMES = {
    **ATTRIBUTE_NAMES,
    OID_CHALLENGE_PASSWORD: "Challenge Password",
    OID_OS_VERSION: "OS Version",
    OID_CLIENT_INFO: "Client Information",
    OID_POP_LINK_WITNESS_V2: "popLinkWitnessV2",
    OID_RENEWAL_CERTIFICATE: "Renewal Certificate",
}
_SIGNATURE_NAMES = {
    "1.2.840.113549.1.1.1": "rsaEncryption",
    "1.2.840.113549.1.1.5": "sha1WithRSAEncryption",
    "1.2.840.113549.1.1.11": "sha256WithRSAEncryption",
    "1.2.840.113549.1.1.12": "sha384WithRSAEncryption",
    "1.2.840.113549.1.1.13": "sha512WithRSAEncryption",
    "1.2.840.10045.4.1": "ecdsa-with-SHA1",
    "1.2.840.10045.4.3.2": "ecdsa-with-SHA256",
    "1.2.840.10045.4.3.3": "ecdsa-with-SHA384",
    "1.2.840.10045.4.3.4": "ecdsa-with-SHA512",
    "1.3.101.112": "Ed25519",
}
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_REASON_NAMES = {value: name for name, value in CRL_REASONS.items()}


# -- entry points ------------------------------------------------------------------------------------


def describe(data: bytes | str, what: str, *, extra_public_keys: Sequence[bytes] = ()) -> Description:
    """The description of the one DER value in ``data``; `InputError` for anything unreadable."""
    der = read_der(data, what)
    try:
        return _describe(der, what, extra_public_keys)
    except PARSE_ERRORS as exc:
        raise InputError(f"cannot read {what}: damaged DER ({reason_of(exc)})") from None


def _describe(der: bytes, what: str, extra_public_keys: Sequence[bytes]) -> Description:
    kind = kind_of(der)
    if kind == "content-info":
        return _describe_cms(der, what, extra_public_keys)
    if kind == "certificate":
        return describe_certificate(der, what)
    if kind == "certification-request":
        return describe_request(der, what)
    try:
        pki_data = load_pki_data(der, what)
    except InputError:
        raise InputError(
            f"{what} is neither a certificate, a PKCS #10 request, a CMS message nor a CMC PKIData"
        ) from None
    description: Description = {"kind": "cmc-request", "signed": False, "content_type": None, "version": None}
    description.update(_pki_data(pki_data, what))
    description.update({"digest_algorithms": [], "certificates": [], "signers": []})
    return description


# -- names, keys, algorithms ----------------------------------------------------------------------------


def _hex(data: bytes) -> str:
    return data.hex()


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _public_key(info: keys.PublicKeyInfo) -> Description:
    algorithm = info.algorithm
    if algorithm == "rsa":
        text = f"RSA {info.bit_size}"
    elif algorithm == "ec":
        curve = info.curve[1] if info.curve[0] == "named" else "explicit curve"
        text = f"EC {_CURVES.get(str(curve), curve)}"
    else:
        text = str(algorithm).upper()
    return {"algorithm": text, "key_identifier": _hex(key_identifier(info.dump()))}


def signature_algorithm_text(algorithm: algos.SignedDigestAlgorithm) -> str:
    oid = algorithm["algorithm"].dotted
    if oid == "1.2.840.113549.1.1.10":
        parameters = algorithm["parameters"]
        if isinstance(parameters, core.Void):
            return "RSASSA-PSS (no parameters)"
        hash_name = parameters["hash_algorithm"]["algorithm"].native
        mask = parameters["mask_gen_algorithm"]
        mgf = mask["parameters"]["algorithm"].native if mask["algorithm"].native == "mgf1" else mask["algorithm"].dotted
        return f"RSASSA-PSS ({hash_name}, MGF1-{mgf}, salt {parameters['salt_length'].native})"
    return _SIGNATURE_NAMES.get(oid, oid)


def _general_name(name: core.Asn1Value) -> str:
    kind = name.name
    value = name.chosen
    if kind == "other_name":
        type_id = value["type_id"].dotted
        try:
            inner: core.Asn1Value | None = value["value"].parse()  # the [0] EXPLICIT value
        except PARSE_ERRORS:
            inner = None
        if type_id == OID_UPN and isinstance(inner, core.UTF8String):
            return f"UPN:{inner.native}"
        if type_id == OID_DS_GUID and isinstance(inner, core.OctetString):
            return f"GUID:{inner.native.hex()}"
        return f"otherName:{type_id}={_hex(inner.dump() if inner is not None else value['value'].dump())}"
    prefixes = {
        "rfc822_name": "email",
        "dns_name": "DNS",
        "uniform_resource_identifier": "URI",
        "registered_id": "RID",
    }
    if kind in prefixes:
        return f"{prefixes[kind]}:{value.native}"
    if kind == "ip_address":
        raw = value.native
        return f"IP:{ipaddress.ip_address(raw)}" if len(raw) in (4, 16) else f"IP:{raw.hex()}"
    if kind == "directory_name":
        return f"DirName:{name_text(value)}"
    return f"{kind}:{_hex(value.dump())}"


def _general_names(raw: bytes) -> list[str]:
    names = GeneralNames.load(raw, strict=True)
    return [_general_name(name) for name in names]


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def _extension_value(oid: str, raw: bytes) -> str:
    if oid == OID_KEY_USAGE:
        usages = asn1_x509.KeyUsage.load(raw).native
        order = [name for _, name in sorted(asn1_x509.KeyUsage._map.items())]
        return ", ".join(_camel(name) for name in order if name in usages) or "(none)"
    if oid == OID_EXTENDED_KEY_USAGE:
        purposes = [p.dotted for p in asn1_x509.ExtKeyUsageSyntax.load(raw)]
        return ", ".join(f"{KEY_PURPOSE_NAMES[p]} ({p})" if p in KEY_PURPOSE_NAMES else p for p in purposes)
    if oid in (OID_SUBJECT_ALT_NAME, OID_ISSUER_ALT_NAME):
        return ", ".join(_general_names(raw))
    if oid == OID_BASIC_CONSTRAINTS:
        constraints = asn1_x509.BasicConstraints.load(raw).native
        text = f"CA={'TRUE' if constraints['ca'] else 'FALSE'}"
        if constraints["path_len_constraint"] is not None:
            text += f", pathLength={constraints['path_len_constraint']}"
        return text
    if oid == OID_SUBJECT_KEY_IDENTIFIER:
        return _hex(core.OctetString.load(raw).native)
    if oid == OID_AUTHORITY_KEY_IDENTIFIER:
        key_id = asn1_x509.AuthorityKeyIdentifier.load(raw)["key_identifier"].native
        return f"keyid {_hex(key_id)}" if key_id else "(no key identifier)"
    if oid == OID_TEMPLATE_NAME:
        return str(core.BMPString.load(raw).native)
    if oid == OID_TEMPLATE_INFO:
        template = CertificateTemplate.load(raw)
        text = template["template_id"].dotted
        major, minor = template["major_version"].native, template["minor_version"].native
        return text + (f" (version {major}.{minor if minor is not None else 0})" if major is not None else "")
    if oid == OID_SMIME_CAPABILITIES:
        return ", ".join(c["capability_id"].dotted for c in SMIMECapabilities.load(raw))
    return _raw(raw)


def _raw(raw: bytes) -> str:
    shown = raw[:32].hex(" ")
    return f"DER, {len(raw)} bytes: {shown}{' ...' if len(raw) > 32 else ''}"


def _extensions(extensions: Sequence[asn1_x509.Extension]) -> tuple[list[Description], list[str]]:
    """(each extension, the subject alternative names)."""
    described: list[Description] = []
    sans: list[str] = []
    for extension in extensions:
        oid = extension["extn_id"].dotted
        raw = extension["extn_value"].contents
        try:
            value = _extension_value(oid, raw)
            if oid == OID_SUBJECT_ALT_NAME:
                sans = _general_names(raw)
        except PARSE_ERRORS:
            value = f"unreadable: {_raw(raw)}"
        described.append(
            {"oid": oid, "name": extension_name(oid), "critical": bool(extension["critical"].native), "value": value}
        )
    return described, sans


# -- certificates ----------------------------------------------------------------------------------------


def _certificate_summary(der: bytes) -> Description:
    certificate = asn1_x509.Certificate.load(der)
    return {
        "subject": name_text(certificate.subject),
        "issuer": name_text(certificate.issuer),
        "serial": f"0x{certificate.serial_number:x}",
        "not_after": _time(certificate["tbs_certificate"]["validity"]["not_after"].native),
    }


def describe_certificate(der: bytes, what: str = "certificate") -> Description:
    certificate = asn1_x509.Certificate.load(der, strict=True)
    parse_all(certificate)
    tbs = certificate["tbs_certificate"]
    extensions, sans = _extensions(list(tbs["extensions"]) if not isinstance(tbs["extensions"], core.Void) else [])

    return {
        "kind": "certificate",
        "subject": name_text(certificate.subject),
        "issuer": name_text(certificate.issuer),
        "serial": f"0x{certificate.serial_number:x}",
        "not_before": _time(tbs["validity"]["not_before"].native),
        "not_after": _time(tbs["validity"]["not_after"].native),
        "public_key": _public_key(tbs["subject_public_key_info"]),
        "signature_algorithm": signature_algorithm_text(certificate["signature_algorithm"]),
        "subject_alt_names": sans,
        "extensions": extensions,
        "sha1": hashlib.sha1(der).hexdigest(),  # certutil's "Cert Hash(sha1)", the Windows thumbprint
        "sha256": hashlib.sha256(der).hexdigest(),
    }


# -- PKCS #10 --------------------------------------------------------------------------------------------


def _attribute_values(oid: str, values: list[bytes]) -> list[str]:
    texts: list[str] = []
    for raw in values:
        try:
            texts.append(_attribute_value(oid, raw))
        except PARSE_ERRORS:
            texts.append(f"unreadable: {_raw(raw)}")
    return texts


def _attribute_value(oid: str, raw: bytes) -> str:
    if oid == OID_ENROLLMENT_NAME_VALUE_PAIR:
        pair = EnrollmentNameValuePair.load(raw, strict=True)
        return f"{pair['name'].native}={pair['value'].native}"
    if oid == OID_ENROLLMENT_CSP_PROVIDER:
        info = CspProvider.load(raw, strict=True)
        return f"KeySpec {info['key_spec'].native}, provider {info['csp_name'].native}"
    if oid == OID_CHALLENGE_PASSWORD:
        return "(present, not shown)"
    if oid == OID_OS_VERSION:
        return str(core.load(raw).native)
    if oid == OID_POP_LINK_WITNESS_V2:
        return _witness_text(PopLinkWitnessV2.load(raw, strict=True))
    if oid == OID_RENEWAL_CERTIFICATE:
        summary = _certificate_summary(raw)
        return f"{summary['subject']} (issuer {summary['issuer']}, serial {summary['serial']})"
    if oid == OID_EXTENSION_REQUEST:
        return f"{len(asn1_x509.Extensions.load(raw))} extension(s), listed under extensions"
    return _raw(raw)


def _witness_text(value: core.Sequence) -> str:
    names = [name for name, *_ in value._fields]
    hash_name = value[names[0]]["algorithm"].native
    mac = value[names[1]]["algorithm"]
    return f"{hash_name}, HMAC {mac.native} ({mac.dotted}), witness {_hex(value[names[2]].native)}"


def describe_request(der: bytes, what: str = "certification request") -> Description:
    """A PKCS #10: subject, key, SANs, extensions, attributes, template and its signature status."""
    request = load_certification_request(der, what)
    info = request["certification_request_info"]
    extensions: list[asn1_x509.Extension] = []
    attributes: list[Description] = []
    pairs: list[list[str]] = []
    for attribute in info["attributes"]:
        oid = attribute["type"].dotted
        # asn1crypto keeps the values of a type it does not know as one Any: re-read as SET OF ANY
        raw_values = [value.dump() for value in Attribute.load(attribute.dump())["values"]]
        if oid == OID_EXTENSION_REQUEST:
            for raw in raw_values:
                extensions.extend(asn1_x509.Extensions.load(raw))
        if oid == OID_ENROLLMENT_NAME_VALUE_PAIR:
            for raw in raw_values:
                pair = EnrollmentNameValuePair.load(raw)
                pairs.append([pair["name"].native, pair["value"].native])
        name = _ATTRIBUTE_NAMES.get(oid, oid)
        attributes.append({"oid": oid, "name": name, "values": _attribute_values(oid, raw_values)})
    described, sans = _extensions(extensions)
    template = next((e["value"] for e in described if e["oid"] in (OID_TEMPLATE_NAME, OID_TEMPLATE_INFO)), None)
    if template is None:
        template = next((value for name, value in pairs if name.lower() == "certificatetemplate"), None)
    ok, reason = verify_certification_request(der, what)
    return {
        "kind": "pkcs10",
        "subject": name_text(info["subject"]),
        "public_key": _public_key(info["subject_pk_info"]),
        "signature_algorithm": signature_algorithm_text(request["signature_algorithm"]),
        "signature": {"ok": ok, "reason": reason},
        "subject_alt_names": sans,
        "extensions": described,
        "attributes": attributes,
        "name_value_pairs": pairs,
        "template": template,
    }


# -- CMS and CMC ------------------------------------------------------------------------------------------


def _signed_attribute(attribute: cms.CMSAttribute) -> Description:
    oid = attribute["type"].dotted
    values: list[str] = []
    for value in attribute["values"]:
        raw = value.dump()
        try:
            if oid == OID_CONTENT_TYPE:
                dotted = core.ObjectIdentifier.load(raw).dotted
                values.append(f"{CONTENT_TYPE_NAMES.get(dotted, dotted)} ({dotted})")
            elif oid == OID_MESSAGE_DIGEST:
                values.append(_hex(core.OctetString.load(raw).native))
            elif oid == OID_SIGNING_TIME:
                values.append(_time(cms.Time.load(raw).native))
            else:
                values.append(_attribute_value(oid, raw))
        except PARSE_ERRORS:
            values.append(f"unreadable: {_raw(raw)}")
    name = SIGNED_ATTRIBUTE_NAMES.get(oid, _ATTRIBUTE_NAMES.get(oid, oid))
    return {"oid": oid, "name": name, "values": values}


def _requester_name(attributes: list[Description]) -> str | None:
    for attribute in attributes:
        if attribute["oid"] != OID_ENROLLMENT_NAME_VALUE_PAIR:
            continue
        for value in attribute["values"]:
            name, _, text = value.partition("=")
            if name.lower() == REQUESTER_NAME.lower():
                return text
    return None


def _signers(signed: SignedData, checks: list[SignerCheck]) -> list[Description]:
    described: list[Description] = []
    for info, check in zip(signed["signer_infos"], checks, strict=True):
        attributes = info["signed_attrs"]
        signed_attributes = [] if isinstance(attributes, core.Void) else [_signed_attribute(a) for a in attributes]
        described.append(
            {
                "index": check.index,
                "version": int(info["version"]),  # not .native: "v1", or a number asn1crypto has no name for
                "sid": check.sid,
                "subject": check.signer_subject,
                "digest_algorithm": info["digest_algorithm"]["algorithm"].native,
                "signature_algorithm": signature_algorithm_text(info["signature_algorithm"]),
                "signed_attributes": signed_attributes,
                "requester_name": _requester_name(signed_attributes),
                "status": check.status,
                "digest_ok": check.digest_ok,
                "signature_ok": check.signature_ok,
                "reason": check.reason,
            }
        )
    return described


def _reg_info(raw: bytes) -> Description:
    text = raw.decode("utf-8", errors="replace")
    pairs = []
    for item in text.split("&"):
        if item:
            name, _, value = item.partition("=")
            pairs.append([unquote(name), unquote(value)])
    return {"text": text, "pairs": pairs}


def _status_value(value: core.Sequence) -> Description:
    # statusInfo: BodyPartIDs; statusInfoV2: a BodyPartID or a bodyPartPath (a list) each
    body_list = [reference.native for reference in value["body_list"]]
    other = value["other_info"]
    other_text: str | None = None
    if not isinstance(other, core.Void):
        if other.name == "fail_info":
            other_text = f"failInfo {other.chosen.native}"
        elif other.name == "pend_info":
            pend = other.chosen
            other_text = f"pendToken {_hex(pend['pend_token'].native)}, pendTime {_time(pend['pend_time'].native)}"
        else:
            other_text = f"extendedFailInfo {other.chosen['fail_info_oid'].dotted}"
    return {
        "status": value["cmc_status"].native,
        "body_list": body_list,
        "status_string": value["status_string"].native,
        "other_info": other_text,
    }


def _control_value(oid: str, value: core.Asn1Value) -> object:
    if oid in (OID_TRANSACTION_ID, OID_IDENTIFICATION):
        return value.native
    if oid in (OID_SENDER_NONCE, OID_RECIPIENT_NONCE, OID_POP_LINK_RANDOM, OID_IDENTITY_PROOF):
        return _hex(value.native)
    if oid == OID_REG_INFO:
        return _reg_info(value.native)
    if oid in (OID_STATUS_INFO, OID_STATUS_INFO_V2):
        return _status_value(value)
    if oid == OID_REVOKE_REQUEST:
        reason = int.from_bytes(value["reason"].contents, "big", signed=True)
        invalidity = value["invalidity_date"].native
        return {
            "issuer": name_text(value["issuer_name"]),
            "serial": f"0x{value['serial_number'].native:x}",
            "reason": _REASON_NAMES.get(reason, str(reason)),
            "invalidity_date": _time(invalidity) if invalidity is not None else None,
            "passphrase": None if isinstance(value["passphrase"], core.Void) else "(present, not shown)",
            "comment": value["comment"].native,
        }
    if oid in (OID_IDENTITY_PROOF_V2, OID_POP_LINK_WITNESS_V2):
        return _witness_text(value)
    if oid == OID_BATCH_REQUESTS:
        return value.native
    return _raw(value.dump())


def _controls(sequence: ControlSequence) -> list[Description]:
    controls: list[Description] = []
    for attribute in sequence:
        oid = attribute["attr_type"].dotted
        try:
            values = [_control_value(oid, value) for value in control_values(attribute)]
        except PARSE_ERRORS:
            values = [f"unreadable: {_raw(value.dump())}" for value in attribute["attr_values"]]
        controls.append(
            {
                "body_part_id": attribute["body_part_id"].native,
                "oid": oid,
                "name": CONTROL_NAMES.get(oid, oid),
                "values": values,
            }
        )
    return controls


def _pki_data(pki_data: PKIData | PKIResponse, what: str) -> Description:
    ids: list[int] = [attribute["body_part_id"].native for attribute in pki_data["control_sequence"]]
    requests: list[Description] = []
    if isinstance(pki_data, PKIData):
        for tagged in pki_data["req_sequence"]:
            body_part_id = tagged.chosen["body_part_id"].native if tagged.name != "crm" else None
            request = None
            if tagged.name == "tcr":
                request = describe_request(tagged.chosen["certification_request"].dump(), what)
            if body_part_id is not None:
                ids.append(body_part_id)
            requests.append({"body_part_id": body_part_id, "kind": tagged.name, "request": request})
    ids += [item["body_part_id"].native for item in pki_data["cms_sequence"]]
    ids += [item["body_part_id"].native for item in pki_data["other_msg_sequence"]]
    duplicates = sorted({n for n in ids if ids.count(n) > 1})
    return {
        "controls": _controls(pki_data["control_sequence"]),
        "requests": requests,
        "body_part_ids": ids,
        "duplicate_body_part_ids": duplicates,  # RFC 5272 3.2.1: unique within a PKIData
    }


def _describe_cms(der: bytes, what: str, extra_public_keys: Sequence[bytes]) -> Description:
    signed = load_signed_data(der, what)
    encapsulated = signed["encap_content_info"]
    content_type = encapsulated["content_type"].dotted
    content = None if isinstance(encapsulated["content"], core.Void) else encapsulated["content"].native
    certificates = [_certificate_summary(c) for c in certificates_of(signed)]
    has_content = bool(content) or (content is not None and content_type != OID_DATA)
    checks = check_signed_data(signed, extra_public_keys, what=what) if has_content else []
    description: Description = {
        "kind": "",
        "signed": True,
        "content_type": content_type,
        "content_type_name": CONTENT_TYPE_NAMES.get(content_type),
        "version": int(signed["version"]),
        "digest_algorithms": [a["algorithm"].native for a in signed["digest_algorithms"]],
        "certificates": certificates,
        "signers": _signers(signed, checks) if has_content else [],
    }
    if not has_content:
        description["kind"] = "pkcs7-certs"
        return description
    assert content is not None
    if content_type == OID_PKI_DATA:
        description["kind"] = "cmc-request"
        description.update(_pki_data(load_pki_data(content, what), what))
    elif content_type == OID_PKI_RESPONSE:
        description["kind"] = "cmc-response"
        description.update(_pki_data(load_pki_response(content, what), what))
    else:
        description["kind"] = "cms-pkcs7"
        request = None
        if content_type == OID_DATA:
            try:
                x509.load_der_x509_csr(content)
            except LOAD_ERRORS:
                request = None
            else:
                request = describe_request(content, what)
        description["request"] = request
        description["content_size"] = len(content)
    return description


# -- rendering --------------------------------------------------------------------------------------------

_TITLES = {
    "pkcs10": "PKCS #10 certificate request",
    "certificate": "X.509 certificate",
    "cms-pkcs7": "PKCS #7 (CMS) signed request",
    "cmc-request": "CMC request",
    "cmc-response": "CMC response",
    "pkcs7-certs": "PKCS #7 certificates (certs-only SignedData)",
}


def _text(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}={_text(item)}" for key, item in value.items() if item not in (None, [], ""))
    if isinstance(value, list):
        return "[" + ", ".join(_text(item) for item in value) + "]"
    return str(value)


def _render_request(d: Description, indent: str) -> list[str]:
    signature = d["signature"]
    status = {True: "valid", False: "INVALID", None: "not checked"}[signature["ok"]]
    lines = [
        f"{indent}Subject: {d['subject'] or '(empty)'}",
        f"{indent}Public key: {d['public_key']['algorithm']} (key identifier {d['public_key']['key_identifier']})",
        f"{indent}Signature: {d['signature_algorithm']}, {status} ({signature['reason']})",
    ]
    if d["template"]:
        lines.append(f"{indent}Template: {d['template']}")
    if d["subject_alt_names"]:
        lines.append(f"{indent}Subject alternative names: {', '.join(d['subject_alt_names'])}")
    lines += _render_extensions(d["extensions"], indent)
    if d["attributes"]:
        lines.append(f"{indent}Attributes:")
        for attribute in d["attributes"]:
            for value in attribute["values"]:
                lines.append(f"{indent}  {attribute['name']}: {value}")
    return lines


def _render_extensions(extensions: list[Description], indent: str) -> list[str]:
    if not extensions:
        return []
    lines = [f"{indent}Extensions:"]
    for extension in extensions:
        critical = " (critical)" if extension["critical"] else ""
        lines.append(f"{indent}  {extension['name']}{critical}: {extension['value']}")
    return lines


def _render_certificate(d: Description, indent: str) -> list[str]:
    lines = [
        f"{indent}Subject: {d['subject'] or '(empty)'}",
        f"{indent}Issuer: {d['issuer']}",
        f"{indent}Serial: {d['serial']}",
        f"{indent}Valid: {d['not_before']} to {d['not_after']}",
        f"{indent}Public key: {d['public_key']['algorithm']} (key identifier {d['public_key']['key_identifier']})",
        f"{indent}Signature algorithm: {d['signature_algorithm']}",
    ]
    if d["subject_alt_names"]:
        lines.append(f"{indent}Subject alternative names: {', '.join(d['subject_alt_names'])}")
    lines += _render_extensions(d["extensions"], indent)
    lines.append(f"{indent}SHA-1 thumbprint: {d['sha1']}")
    return lines


def _render_cms(d: Description, indent: str) -> list[str]:
    lines: list[str] = []
    if d["signed"]:
        name = d["content_type_name"] or d["content_type"]
        lines.append(f"{indent}SignedData version {d['version']}, content {name} ({d['content_type']})")
    else:
        lines.append(f"{indent}Unsigned PKIData (no CMS SignedData around it)")
    for control in d.get("controls", []):
        for value in control["values"]:
            shown = value["text"] if isinstance(value, dict) and "text" in value else _text(value)
            lines.append(f"{indent}Control [{control['body_part_id']}] {control['name']}: {shown}")
    if d.get("duplicate_body_part_ids"):
        lines.append(f"{indent}DUPLICATE bodyPartIDs: {', '.join(map(str, d['duplicate_body_part_ids']))}")
    for request in d.get("requests", []):
        lines.append(f"{indent}Request [{request['body_part_id']}] ({request['kind']}):")
        if request["request"] is not None:
            lines += _render_request(request["request"], indent + "  ")
    if d.get("request") is not None:
        lines.append(f"{indent}Request (PKCS #10):")
        lines += _render_request(d["request"], indent + "  ")
    for certificate in d["certificates"]:
        lines.append(
            f"{indent}Certificate: {certificate['subject'] or '(empty)'} (issuer {certificate['issuer']}, "
            f"serial {certificate['serial']}, until {certificate['not_after']})"
        )
    for signer in d["signers"]:
        who = signer["subject"] or signer["sid"]
        lines.append(f"{indent}Signer {signer['index'] + 1}: {who}: {signer['status']} ({signer['reason']})")
        lines.append(
            f"{indent}  sid {signer['sid']}, version {signer['version']}, digest {signer['digest_algorithm']}, "
            f"signature {signer['signature_algorithm']}"
        )
        for attribute in signer["signed_attributes"]:
            for value in attribute["values"]:
                lines.append(f"{indent}  {attribute['name']}: {value}")
    return lines


def render(description: Description) -> list[str]:
    """Human-readable lines for a `describe` result, every value from the file shown escaped."""
    hidden = has_hidden_anywhere(description)
    description = escape_tree(description)
    kind: str = description["kind"]
    lines = [_TITLES.get(kind, kind)]
    if hidden:
        lines.append(f"  NOTE: {HIDDEN_NOTE}")
    if kind == "pkcs10":
        lines += _render_request(description, "  ")
    elif kind == "certificate":
        lines += _render_certificate(description, "  ")
    else:
        lines += _render_cms(description, "  ")
    return lines
