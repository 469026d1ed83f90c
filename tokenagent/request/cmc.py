"""Building CMC requests (RFC 5272 / RFC 6402) with the controls Dogtag's CMCRequest sends, and
reading control values. The ASN.1 is declared in request/asn1/cmc.py.

`pki_data` (one PKCS #10 and/or a `revoke_request`, `CmcControls`), `pop_link_witness_attribute`
(goes inside the PKCS #10 before it is signed) and `reg_info_value` (AD CS's
RequesterName=DOMAIN%5Cuser&). `cms_sign.sign_content` signs the PKIData.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from asn1crypto import algos, core, csr, x509

from tokenagent.errors import InputError
from tokenagent.request.algorithms import digest_algorithm
from tokenagent.request.asn1.attributes import Attribute
from tokenagent.request.asn1.cmc import (
    CONTROL_VALUES,
    IdentifyProofV2,
    PKIData,
    PopLinkWitnessV2,
    ReqSequence,
    RevokeRequest,
    TaggedAttribute,
    TaggedCertificationRequest,
    TaggedRequest,
)
from tokenagent.request.der import parse_all
from tokenagent.request.oids import (
    OID_IDENTIFICATION,
    OID_IDENTITY_PROOF_V2,
    OID_POP_LINK_RANDOM,
    OID_POP_LINK_WITNESS_V2,
    OID_REG_INFO,
    OID_REVOKE_REQUEST,
    OID_SENDER_NONCE,
    OID_TRANSACTION_ID,
    REQUESTER_NAME,
)


def control(body_part_id: int, attr_type: str, *values: core.Asn1Value) -> TaggedAttribute:
    """A TaggedAttribute holding ``values`` (already of the control's class, e.g. `CMCStatusInfoV2`)."""
    return TaggedAttribute(
        {
            "body_part_id": body_part_id,
            "attr_type": attr_type,
            "attr_values": [core.Any(v) for v in values],
        }
    )


def control_values(attribute: TaggedAttribute) -> list[core.Asn1Value]:
    """The attribute's values parsed as `CONTROL_VALUES` says; an unknown control's stay `core.Any`.

    Raises ValueError (or another asn1crypto parse error) when a value does not match its class.
    """
    spec = CONTROL_VALUES.get(attribute["attr_type"].dotted)
    values: list[core.Asn1Value] = list(attribute["attr_values"])
    if spec is None:
        return values
    # from the encoding: a value set in Python is not always a core.Any that could .parse()
    return [spec.load(value.dump(), strict=True) for value in values]


# -- building a PKIData (RFC 5272 / RFC 6402, the controls Dogtag's CMCRequest sends) ---------------

REQUEST_BODY_PART_ID = 1  # the request's tcr; the controls follow from 2 on (`pki_data`)

#: HMAC identifiers (RFC 4231, PKCS #5 appendix B.1.2) for the hashes Dogtag's CMCRequest offers.
HMAC_OIDS: dict[str, str] = {
    "sha256": "1.2.840.113549.2.9",  # hmacWithSHA256
    "sha384": "1.2.840.113549.2.10",  # hmacWithSHA384
    "sha512": "1.2.840.113549.2.11",  # hmacWithSHA512
}

#: RFC 5280 5.3.1 CRLReason names and values (7 is not used).
CRL_REASONS: dict[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "removeFromCRL": 8,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}


@dataclass(frozen=True)
class CmcControls:
    """The controls of a CMC request; None or empty leaves a control out.

    ``shared_secret`` adds identityProofV2 (RFC 6402 2.4) and, with ``pop_link_random``, is the key
    of the popLinkWitnessV2 attribute the PKCS #10 must already carry (`pop_link_witness_attribute`).
    ``identification`` is also mixed into both witnesses' keys (Dogtag finds the secret by it).
    ``requester_name`` (DOMAIN\\user) and ``reg_info`` go into one regInfo control, AD CS's way of
    enrolling on behalf of someone in CMC (docs/wire-formats.md 1b).
    """

    transaction_id: int | None = None
    sender_nonce: bytes | None = None
    identification: str | None = None
    shared_secret: bytes | None = None
    reg_info: tuple[tuple[str, str], ...] = ()
    requester_name: str | None = None
    pop_link_random: bytes | None = None
    identity_proof_hash: str = "sha256"


def _witness_hash(hash_name: str) -> str:
    if hash_name not in HMAC_OIDS:
        raise InputError(f"unsupported witness hash '{hash_name}' (one of: {', '.join(HMAC_OIDS)})")
    return hash_name


def hmac_algorithm(hash_name: str) -> algos.HmacAlgorithm:
    """hmacWithSHA*, parameters NULL as PKCS #5 (RFC 8018 B.1.2) writes them.

    Dogtag's CMCRequest leaves both witness identifiers without parameters; a receiver compares
    the OIDs (RFC 5754 section 2 has it accept NULL for the hash too).
    """
    return algos.HmacAlgorithm({"algorithm": HMAC_OIDS[_witness_hash(hash_name)], "parameters": core.Null()})


def witness_key(shared_secret: bytes, identification: str | None, hash_name: str = "sha256") -> bytes:
    """HASH(sharedSecret || identification): RFC 6402 2.4 and 2.5; the identification's UTF-8
    bytes only when an identification control is sent (Dogtag: secret + ident)."""
    if not shared_secret:
        raise InputError("the CMC shared secret is empty")
    data = shared_secret + (identification.encode("utf-8") if identification is not None else b"")
    return hashlib.new(_witness_hash(hash_name), data).digest()


def identity_proof_v2(
    shared_secret: bytes, identification: str | None, req_sequence_der: bytes, hash_name: str = "sha256"
) -> IdentifyProofV2:
    """identityProofV2: witness = HMAC(key, DER of reqSequence, SEQUENCE header included)."""
    key = witness_key(shared_secret, identification, hash_name)
    return IdentifyProofV2(
        {
            "proof_alg_id": digest_algorithm(hash_name),
            "mac_alg_id": hmac_algorithm(hash_name),
            "witness": hmac.new(key, req_sequence_der, hash_name).digest(),
        }
    )


def pop_link_witness_attribute(
    shared_secret: bytes, identification: str | None, random: bytes, hash: str = "sha256"
) -> csr.CRIAttribute:
    """id-cmc-popLinkWitnessV2 = SET { PopLinkWitnessV2 }: a PKCS #10 attribute (RFC 6402 2.5).

    witness = HMAC(HASH(secret || identification), random), where ``random`` is what the
    popLinkRandom control sends. It goes INSIDE the request before the request key signs it
    (`pkcs10.build_request(extra_attributes=...)`), which links the proof of possession to the
    proof of identity.
    """
    if len(random) < 1:
        raise InputError("popLinkRandom is empty (Dogtag sends 64 random bytes)")
    key = witness_key(shared_secret, identification, hash)
    value = PopLinkWitnessV2(
        {
            "key_gen_algorithm": digest_algorithm(hash),
            "mac_algorithm": hmac_algorithm(hash),
            "witness": hmac.new(key, random, hash).digest(),
        }
    )
    return csr.CRIAttribute.load(Attribute({"type": OID_POP_LINK_WITNESS_V2, "values": [core.Any(value)]}).dump())


def _percent(text: str, what: str) -> str:
    # Every byte but RFC 3986's unreserved characters: "\\" -> %5C as certreq writes RequesterName
    if not text:
        raise InputError(f"regInfo: the {what} is empty")
    return quote(text, safe="")


def reg_info_value(pairs: Sequence[tuple[str, str]]) -> bytes:
    """The regInfo OCTET STRING AD CS reads: "name=value&" per pair, both percent-encoded, UTF-8.

    CertEnroll's IX509NameValuePair: each string escaped ("%5C" for a backslash), name and value
    joined by "=", every pair followed by "&": RequesterName=DOMAIN%5Cuser& (docs/wire-formats.md 1b).
    """
    return "".join(f"{_percent(n, 'name')}={_percent(v, f'value of {n}')}&" for n, v in pairs).encode("ascii")


def revoke_request(
    issuer: bytes,
    serial: int,
    reason: str,
    invalidity: datetime | None = None,
    comment: str | None = None,
    *,
    passphrase: bytes | None = None,
) -> RevokeRequest:
    """RevokeRequest (RFC 5272 6.11) for the certificate ``serial`` of ``issuer`` (DER Name).

    ``reason`` is an RFC 5280 CRLReason name, case-insensitive (Dogtag's "caCompromise" too).
    ``passphrase`` is the shared secret of a revocation not signed by the certificate's owner
    (Dogtag's revRequest.sharedSecret).
    """
    try:
        issuer_name = x509.Name.load(issuer, strict=True)
        issuer_name.native  # noqa: B018 -- parse now: garbage fails here, not in a later dump
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise InputError(f"cannot read the issuer name of the certificate to revoke: {exc}") from None
    by_lower = {name.lower(): value for name, value in CRL_REASONS.items()}
    if reason.lower() not in by_lower:
        raise InputError(f"unknown revocation reason '{reason}' (one of: {', '.join(CRL_REASONS)})")
    if serial < 0:
        raise InputError(f"a certificate serial number is not negative: {serial}")
    fields: dict[str, object] = {
        "issuer_name": issuer_name,
        "serial_number": serial,
        "reason": by_lower[reason.lower()],
    }
    if invalidity is not None:
        if invalidity.tzinfo is None:
            raise InputError("the invalidity date needs a time zone (GeneralizedTime is UTC)")
        # DER GeneralizedTime: UTC, "Z", no fraction of a second needed
        fields["invalidity_date"] = invalidity.astimezone(UTC).replace(microsecond=0)
    if passphrase is not None:
        fields["passphrase"] = passphrase
    if comment is not None:
        fields["comment"] = comment
    return RevokeRequest(fields)


def _check_pop_link(request: csr.CertificationRequest, controls: CmcControls) -> None:
    """popLinkRandom without the matching witness inside the request would only fail at the CA."""
    if controls.shared_secret is None:
        raise InputError("popLinkRandom needs the shared secret (its witness is keyed with it)")
    # asn1crypto keeps an unknown attribute's values as one Any: re-read them as SET OF ANY
    witnesses = [
        value
        for attribute in request["certification_request_info"]["attributes"]
        if attribute["type"].dotted == OID_POP_LINK_WITNESS_V2
        for value in Attribute.load(attribute.dump())["values"]
    ]
    if len(witnesses) != 1:
        raise InputError(
            f"the request has {len(witnesses)} popLinkWitnessV2 attributes; popLinkRandom needs exactly one "
            "(add pop_link_witness_attribute() before the request is signed)"
        )
    witness = PopLinkWitnessV2.load(witnesses[0].dump())
    hash_name = witness["key_gen_algorithm"]["algorithm"].native
    expected = pop_link_witness_attribute(
        controls.shared_secret, controls.identification, controls.pop_link_random or b"", _witness_hash(hash_name)
    )
    expected_value = Attribute.load(expected.dump())["values"][0]
    if PopLinkWitnessV2.load(expected_value.dump())["witness"].native != witness["witness"].native:
        raise InputError(
            "the request's popLinkWitnessV2 was not made from this shared secret, identification and popLinkRandom"
        )


def pki_data(request_der: bytes | None, controls: CmcControls, *, revoke: RevokeRequest | None = None) -> PKIData:
    """PKIData for one PKCS #10 request and/or a revocation.

    bodyPartIDs: the request's tcr is 1 (`REQUEST_BODY_PART_ID`); the controls present are numbered
    2, 3, ... in this fixed order: transactionId, senderNonce, identification, regInfo,
    popLinkRandom, revokeRequest, identityProofV2. identityProofV2 comes last because its witness
    is the HMAC of the final reqSequence. cmsSequence and otherMsgSequence stay empty.
    """
    if request_der is None and revoke is None:
        raise InputError("a CMC request needs a certification request or a revocation")
    req_sequence = _req_sequence(request_der, controls)
    values = _control_values(controls, revoke, req_sequence)
    first = REQUEST_BODY_PART_ID + 1
    return PKIData(
        {
            "control_sequence": [control(first + n, oid, value) for n, (oid, value) in enumerate(values)],
            "req_sequence": req_sequence,
            "cms_sequence": [],
            "other_msg_sequence": [],
        }
    )


def _req_sequence(request_der: bytes | None, controls: CmcControls) -> ReqSequence:
    """The reqSequence: the one PKCS #10 as tcr 1, or nothing (a revocation alone)."""
    if request_der is None:
        if controls.pop_link_random is not None:
            raise InputError("popLinkRandom needs a certification request carrying the witness")
        return ReqSequence([])
    try:
        request = csr.CertificationRequest.load(request_der, strict=True)
        # parse now, so garbage fails here and not in a later dump; `.native` would also try to
        # parse open-type attribute values (MS name-value pairs) that asn1crypto cannot read
        parse_all(request)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise InputError(f"cannot read the certification request for CMC: {exc}") from None
    if controls.pop_link_random is not None:
        _check_pop_link(request, controls)
    tcr = TaggedCertificationRequest({"body_part_id": REQUEST_BODY_PART_ID, "certification_request": request})
    return ReqSequence([TaggedRequest(name="tcr", value=tcr)])


def _control_values(
    controls: CmcControls, revoke: RevokeRequest | None, req_sequence: ReqSequence
) -> list[tuple[str, core.Asn1Value]]:
    """(control OID, value) in `pki_data`'s order; identityProofV2 last, over the final reqSequence."""
    values: list[tuple[str, core.Asn1Value]] = []
    if controls.transaction_id is not None:
        values.append((OID_TRANSACTION_ID, core.Integer(controls.transaction_id)))
    if controls.sender_nonce is not None:
        if not controls.sender_nonce:
            raise InputError("the CMC senderNonce is empty")
        values.append((OID_SENDER_NONCE, core.OctetString(controls.sender_nonce)))
    if controls.identification is not None:
        values.append((OID_IDENTIFICATION, core.UTF8String(controls.identification)))
    pairs: tuple[tuple[str, str], ...] = (
        ((REQUESTER_NAME, controls.requester_name),) if controls.requester_name is not None else ()
    )
    pairs += controls.reg_info
    if pairs:
        values.append((OID_REG_INFO, core.OctetString(reg_info_value(pairs))))
    if controls.pop_link_random is not None:
        values.append((OID_POP_LINK_RANDOM, core.OctetString(controls.pop_link_random)))
    if revoke is not None:
        values.append((OID_REVOKE_REQUEST, revoke))
    if controls.shared_secret is not None:
        proof = identity_proof_v2(
            controls.shared_secret, controls.identification, req_sequence.dump(), controls.identity_proof_hash
        )
        values.append((OID_IDENTITY_PROOF_V2, proof))
    return values
