"""The one interface every CA protocol implements, and the request it is given.

Modelled on certmonger's CA helper contract (SUBMIT, POLL; the answers in ca/answers.py), which
years of CA integrations have shaped: `submit` sends a request once, `poll` asks again about a
pending one with the cookie the CA gave, `ca_certificates` fetches the CA's own certificates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tokenagent.ca.answers import Answer
from tokenagent.request.cmc import control_values
from tokenagent.request.der import content_type_of
from tokenagent.request.inspect import RequestSummary, inspect_request
from tokenagent.request.oids import OID_PKI_DATA, OID_SENDER_NONCE, OID_SIGNED_DATA, OID_TRANSACTION_ID
from tokenagent.request.signed_data import encapsulated, inner_certification_request, load_pki_data


@dataclass(frozen=True)
class CaRequest:
    """A request as sent to a CA, with what the connectors need to know about it."""

    der: bytes
    form: str  # "PKCS10" | "PKCS7" | "CMC"
    summary: RequestSummary  # subject, SANs, template, key, signers, requester (for people and checks)
    public_key_sha256: str  # SHA-256 of the inner PKCS#10's SubjectPublicKeyInfo (pending store key)
    attributes: tuple[tuple[str, str], ...] = ()  # certreq -attrib pairs, in order
    sender_nonce: bytes | None = None  # CMC senderNonce, which the response must echo as recipientNonce
    transaction_id: int | None = None  # CMC transactionId
    #: the request's key on its token, when the command has a session on it (`enroll`); not compared
    key: RequesterKey | None = field(default=None, compare=False, repr=False)
    #: `enroll` with INF RenewalCert: the certificate being renewed and its key (first submission only)
    renewal: LentSigner | None = field(default=None, compare=False, repr=False)
    #: `enroll --agent`: the enrollment agent's certificate and key (first submission only)
    agent: LentSigner | None = field(default=None, compare=False, repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


class RequesterKey(Protocol):
    """The request's own private key, on its token, for protocols that use it beyond the request's
    signature: SCEP signs its pkiMessage with it and decrypts the CertRep with it, CMP signs the
    proof of possession and may protect messages with it, EST re-enrollment authenticates TLS with it.

    Made by `enroll` (enroll/requester_key.py) from the session the key was generated in; a command
    without a token session (`submit`, `retrieve`) has none, and such a connector says so.
    """

    #: "RSA" or "EC"
    family: str
    #: DER SubjectPublicKeyInfo
    public_key_info: bytes
    #: pkcs11: URI of the private key (for an external TLS client such as curl with libp11)
    uri: str
    #: the PKCS#11 module the key's token is reached through (for that external client)
    module_path: str

    def sign(self, data: bytes, hash_name: str = "sha256") -> bytes:
        """An X.509-shaped signature over ``data``: RSA PKCS#1 v1.5, or ECDSA as DER (r, s)."""
        ...

    def external_pin(self) -> bytes | None:
        """The token's user PIN for that external client (passed through a pipe, never argv);
        None when the token authenticates on a PIN pad."""
        ...

    def decrypt(self, ciphertext: bytes) -> bytes:
        """RSA PKCS#1 v1.5 key transport undone on the token (C_Decrypt with CKM_RSA_PKCS)."""
        ...

    def key_beside(self, uri: str) -> RequesterKey:
        """Another private key on the same token, in the same session, named by a ``pkcs11:`` URI
        (``object=`` and/or ``id=``): ACME's account key. Raises `LookupError` with a one-line
        reason when the URI names another token, or no private key, or more than one."""
        ...


@dataclass(frozen=True)
class LentSigner:
    """Another key on a token with its certificate, lent for one exchange: the certificate being
    renewed (INF RenewalCert; SCEP's RenewalReq and CMP's kur are signed with it) or the enrollment
    agent's (CMP messages protected by the agent's signature)."""

    certificate: bytes  # DER
    key: RequesterKey


@dataclass(frozen=True)
class KeyNeeds:
    """What a CA protocol needs from the key it certifies, checked before the key is generated."""

    protocol: str
    families: tuple[str, ...] | None = None  # None: any family tokenagent makes
    decrypt: bool = False  # the private key must have CKA_DECRYPT (RSA key transport to the requester)
    signs_messages: bool = False  # the protocol signs with the key beyond the request (needs a session)
    agent_signs: bool = False  # the protocol's messages may be signed by the enrollment agent (CMP protection)
    why: str = ""  # for the plan's notes and the refusal


class Connector(Protocol):
    """One CA endpoint. Knows nothing about tokens; never raises for what the CA answers."""

    #: the protocol ("file", "cmc", "certsrv", "scep", "acme", "cmp", "est", "cfssl")
    protocol: str

    def describe(self) -> str:
        """The CA for people: its URL (never credentials) or profile name."""
        ...

    def submit(self, request: CaRequest) -> Answer: ...

    def poll(self, cookie: str, request: CaRequest | None) -> Answer:
        """Ask again about a pending request. ``request`` is the original, for protocols whose way
        to ask again is to send it again (CMC without a signed queryPending)."""
        ...

    def ca_certificates(self) -> tuple[bytes, ...]:
        """The CA's certificates (DER), issuing CA first; empty when the protocol cannot tell."""
        ...

    def close(self) -> None: ...


def ca_request(der: bytes, attributes: Sequence[tuple[str, str]] = (), what: str = "request") -> CaRequest:
    """Read ``der`` (PKCS#10, PKCS7 or CMC) as `inspect_request` does: the inner request's own
    signature and every signature already on it must verify, so nothing broken is sent."""
    summary, cms_form = inspect_request(der, what)
    form = {"pkcs7": "PKCS7", "cmc": "CMC"}.get(cms_form or "", "PKCS10")
    inner = inner_certification_request(der, what) if cms_form else der
    nonce, transaction = (None, None)
    if form == "CMC" and content_type_of(der) == OID_SIGNED_DATA:
        nonce, transaction = _cmc_identifiers(der, what)
    return CaRequest(
        der=der,
        form=form,
        summary=summary,
        public_key_sha256=hashlib.sha256(_spki(inner)).hexdigest(),
        attributes=tuple(attributes),
        sender_nonce=nonce,
        transaction_id=transaction,
    )


def request_public_key_info(der: bytes, what: str = "request") -> bytes:
    """The DER SubjectPublicKeyInfo of a request (PKCS#10, or the one inside PKCS7 / CMC)."""
    inner = inner_certification_request(der, what) if content_type_of(der) is not None else der
    return _spki(inner)


def certificate_key_sha256(certificate_der: bytes) -> str:
    """SHA-256 of a certificate's SubjectPublicKeyInfo as encoded (compare with `CaRequest.public_key_sha256`)."""
    from asn1crypto import x509

    spki = x509.Certificate.load(certificate_der)["tbs_certificate"]["subject_public_key_info"].dump()
    return hashlib.sha256(spki).hexdigest()


def _spki(request_der: bytes) -> bytes:
    from asn1crypto import csr

    return bytes(csr.CertificationRequest.load(request_der)["certification_request_info"]["subject_pk_info"].dump())


def _cmc_identifiers(der: bytes, what: str) -> tuple[bytes | None, int | None]:
    content_type, content = encapsulated(der, what)
    if content_type != OID_PKI_DATA:
        return None, None
    nonce: bytes | None = None
    transaction: int | None = None
    for attribute in load_pki_data(content, what)["control_sequence"]:
        values = control_values(attribute)
        if not values:
            continue
        if attribute["attr_type"].dotted == OID_SENDER_NONCE:
            nonce = bytes(values[0].native)
        elif attribute["attr_type"].dotted == OID_TRANSACTION_ID:
            transaction = int(values[0].native)
    return nonce, transaction
