"""CMP (RFC 4210, RFC 9483's lightweight profile) over HTTP (RFC 6712): certificate requests to a CMP CA or RA.

One enrollment is one CMP transaction (one transactionID): the request (``p10cr`` with the token's
PKCS#10, or ``ir``/``cr`` whose proof of possession the token signs), the CA's certificate response
(``ip``/``cp``), and the certificate confirmation (``certConf`` -> ``pkiConf``) unless the CA granted
implicit confirmation (asked for with ``implicit_confirm = true``). A "waiting" answer becomes
`Pending` with the cookie ``TRANSACTIONID:CERTREQID:CANONCE`` (hex; the CA's senderNonce, which the
next message must echo); `poll` sends a ``pollReq`` in the same transaction and reads a ``pollRep``
(checkAfter -> retry_after) or the certificate. `CmpConnector.revoke` sends an ``rr`` (library only).

Every message is protected with PasswordBasedMac (RFC 4210 5.1.3.1; OWF SHA-256, HMAC-SHA256) keyed
by the shared secret of ``secret_source``, its senderKID the ``reference`` the CA gave with the
secret. An answer counts only when its protection verifies (the same MAC, or a signature by the
first extraCerts certificate, which must lead to ``trust``) and it echoes our transactionID and
senderNonce; otherwise it is not an answer (`VerificationError`).

Signature protection (RFC 4210 5.1.3.3, RFC 9483 3.2; ``protection = "signature"``, the default
without ``secret_source``): the ProtectedPart is signed on the token by a lent key, whose
certificate goes first in extraCerts, its subject as sender and its key identifier as senderKID.
The signer is the enrollment agent (`enroll --agent`, `CaRequest.agent`), else the certificate
being renewed (INF ``RenewalCert``, `CaRequest.renewal`). ``body = "kur"`` (key update, RFC 9483
4.1.3; chosen in the profile, never implicitly) is always signed by the certificate being renewed,
names it in the oldCertID control, and carries the NEW key's template and POPO. Only the first
submission has the lent keys: `enroll --resume` protects its pollReq / certConf with the MAC when
``secret_source`` and ``reference`` are configured, and otherwise answers `Misconfigured`.

What the CA said maps to answers: accepted / grantedWithMods (and the revocation / key update
warnings, which come with a certificate) -> `Issued`; waiting or pollRep -> `Pending`; rejection or
an error message -> by failInfo (`FAIL_INFO`): `Rejected`, `Misconfigured` (credentials, wrong
CA), `NeedsRekey` (duplicateCertReq) or `Unreachable` (systemUnavail, transactionIdInUse).

Peer notes (tests run OpenSSL 3.0's ``openssl cmp`` mock server): it cancels its transaction when a
kept-alive HTTP connection closes, so every message goes with ``Connection: close``; it keeps one
transaction at a time, answers a p10cr with certReqId -1 (RFC 9483; RFC 4210 said 0) and an empty
sender DN, protects its answers with its own PBM parameters (HMAC-SHA1, 500 iterations), sends
caPubs only in an ``ip``, and answers a request whose MAC does not verify with an error (failInfo
badRequest, "wrong pbm value") protected with its own secret, which tokenagent cannot verify
either: that is reported as refused credentials, nothing else. With ``-srv_trusted`` it verifies
signature protection; a signer it cannot chain is badRequest "no suitable sender cert". For kur it
compares the oldCertID with its fixed ``-rsp_cert`` (same issuer and serial), not with the signer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from asn1crypto import algos, core, csr, x509

from tokenagent.ca import cmp_asn1 as asn1
from tokenagent.ca.answers import Answer, Issued, Misconfigured, NeedsRekey, Pending, Rejected, Unreachable
from tokenagent.ca.connector import CaRequest, KeyNeeds, LentSigner, certificate_key_sha256
from tokenagent.ca.http import HttpClient, HttpFailure, HttpSettings, transport_failure
from tokenagent.ca.profiles import CaProfile
from tokenagent.ca.trust import check_issued_under
from tokenagent.errors import CAConfigError, VerificationError
from tokenagent.secret_sources import Secret, SecretSource, parse_secret_source

log = logging.getLogger("tokenagent")

CONTENT_TYPE = "application/pkixcmp"  # RFC 6712 3.4
BODIES = ("p10cr", "ir", "cr", "kur")
#: the response body each request body is answered with
REPLIES = {"p10cr": "cp", "cr": "cp", "ir": "ip", "kur": "kup"}
PROTECTIONS = ("mac", "signature")
#: signature protection (RFC 9481 3): the algorithm for each key family, OID and whether it has NULL parameters
SIGNATURE_ALGORITHMS = {"RSA": ("1.2.840.113549.1.1.11", True), "EC": ("1.2.840.10045.4.3.2", False)}
#: the PKIStatus values that come with a certificate (the warnings too: RFC 4210 5.2.3)
GRANTED = ("accepted", "grantedWithMods", "revocationWarning", "revocationNotification", "keyUpdateWarning")
PVNO = 2  # cmp2000: nothing tokenagent sends needs cmp2021
PBM_ITERATIONS = 10_000
MAX_PBM_ITERATIONS = 100_000  # as OpenSSL: more is a denial of service, not security
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
#: PBM one-way functions and MACs accepted in answers (RFC 9481 4.1, 6.1)
OWF_HASHES = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
MAC_HASHES = {
    asn1.OID_HMAC_SHA1: "sha1",
    "1.2.840.113549.2.7": "sha1",
    asn1.OID_HMAC_SHA256: "sha256",
    "1.2.840.113549.2.10": "sha384",
    "1.2.840.113549.2.11": "sha512",
}

#: RFC 4210 5.2.3 PKIFailureInfo: (the answer it leads to, what it means in plain words).
FAIL_INFO: dict[str, tuple[str, str]] = {
    "badAlg": ("rejected", "the CA does not accept an algorithm of the request or its protection"),
    "badMessageCheck": (
        "credentials",
        "the protection of the request did not verify: wrong shared secret or reference",
    ),
    "badRequest": ("rejected", "the CA does not permit or support the request"),
    "badTime": ("config", "the request's time is too far from the CA's: check this machine's clock"),
    "badCertId": ("rejected", "no certificate matches the identifier the request gave"),
    "badDataFormat": ("rejected", "the CA cannot read the request"),
    "wrongAuthority": ("config", "the request is for another CA: check the recipient and the URL"),
    "incorrectData": ("rejected", "the CA finds the request's data incorrect"),
    "missingTimeStamp": ("rejected", "the CA wants a time stamp the request lacks"),
    "badPOP": ("rejected", "the proof of possession of the key did not verify at the CA"),
    "certRevoked": ("rejected", "the certificate is already revoked"),
    "certConfirmed": ("rejected", "the certificate was already confirmed"),
    "wrongIntegrity": ("credentials", "the CA expects another protection (MAC or signature) of the request"),
    "badRecipientNonce": ("unreachable", "the CA saw a recipient nonce it did not send: a replay or a lost message"),
    "timeNotAvailable": ("unreachable", "the CA's time source is not available"),
    "unacceptedPolicy": ("rejected", "the CA does not accept the requested policy"),
    "unacceptedExtension": ("rejected", "the CA does not accept an extension of the request"),
    "addInfoNotAvailable": ("rejected", "the CA lacks information it needs (e.g. the reference is unknown)"),
    "badSenderNonce": ("unreachable", "the CA finds the sender nonce missing or wrong"),
    "badCertTemplate": ("rejected", "the CA does not accept the requested certificate's contents"),
    "signerNotTrusted": ("credentials", "the CA does not trust the signer of the request's protection"),
    "transactionIdInUse": ("unreachable", "the CA has a transaction with this ID: try again"),
    "unsupportedVersion": ("config", "the CA does not support this CMP version"),
    "notAuthorized": ("rejected", "the requester is not authorized for this request"),
    "systemUnavail": ("unreachable", "the CA cannot process requests now"),
    "systemFailure": ("rejected", "the CA failed while processing the request (its log says why)"),
    "duplicateCertReq": ("rekey", "the CA will not certify a key it certified before: make a new key"),
}


def key_needs(profile: CaProfile) -> KeyNeeds | None:
    """ir, cr and kur carry a proof of possession the key signs beyond the PKCS#10; p10cr does not.
    kur and signature protection also sign with another key (the renewed certificate's, the agent's),
    which `enroll` lends with the request's own."""
    body = _body(profile)
    protection = _protection(profile)  # a wrong combination stops enroll before the key is made
    if body == "p10cr" and protection == "mac":
        return None
    why = f"CMP {body} carries a proof of possession signed with the key on the token"
    if body == "p10cr":
        why = "CMP signature protection signs with the enrollment agent's key on its token"
    return KeyNeeds("CMP", signs_messages=True, agent_signs=protection == "signature", why=why)


def connector_for(profile: CaProfile, settings: HttpSettings, trust: tuple[bytes, ...]) -> CmpConnector:
    source = profile.option("secret_source")
    secret = parse_secret_source(source, "CMP shared secret", "secret_source") if source else None
    recipient = _name(profile.option("recipient"), profile) if profile.option("recipient") else None
    return CmpConnector(
        profile.url,
        settings,
        trust=trust,
        body=_body(profile),
        secret=secret,
        reference=profile.option("reference"),
        recipient=recipient,
        implicit_confirm=bool(profile.option("implicit_confirm", False)),
        protection=_protection(profile),
    )


def _body(profile: CaProfile) -> str:
    body = str(profile.option("body", "p10cr"))
    if body not in BODIES:
        raise CAConfigError(f"{profile.describe()}: body = {body!r}: use one of {', '.join(BODIES)}")
    return body


def _protection(profile: CaProfile) -> str:
    """Which protection: "mac" (the shared secret) or "signature"; kur is always signed (RFC 9483 4.1.3)."""
    default = "mac" if profile.option("secret_source") and _body(profile) != "kur" else "signature"
    protection = str(profile.option("protection", default))
    if protection not in PROTECTIONS:
        raise CAConfigError(f"{profile.describe()}: protection = {protection!r}: use mac or signature")
    if protection == "mac" and _body(profile) == "kur":
        raise CAConfigError(
            f"{profile.describe()}: body = kur is protected by the signature of the certificate being renewed "
            "(RFC 9483 4.1.3), not by a MAC: remove protection = mac"
        )
    return protection


def _name(text: str, profile: CaProfile) -> x509.Name:
    from cryptography import x509 as cx509

    try:
        return x509.Name.load(cx509.Name.from_rfc4514_string(text).public_bytes())
    except ValueError as exc:
        raise CAConfigError(f"{profile.describe()}: recipient = {text!r} is not an RFC 4514 name ({exc})") from None


@dataclass(frozen=True)
class Revoked:
    """The CA accepted a revocation request (rp with status accepted)."""

    message: str
    state = "revoked"


@dataclass(frozen=True)
class _Sent:
    """What an answer must echo: the transaction and the nonce of the message it answers."""

    transaction_id: bytes
    sender_nonce: bytes
    reply: tuple[str, ...]  # the body names that answer it (error always does)


class CmpConnector:
    protocol = "cmp"

    def __init__(
        self,
        url: str,
        settings: HttpSettings,
        *,
        trust: tuple[bytes, ...],
        body: str = "p10cr",
        secret: SecretSource | None = None,
        reference: str | None = None,
        recipient: x509.Name | None = None,
        implicit_confirm: bool = False,
        protection: str = "mac",
    ) -> None:
        self.http = HttpClient(url, settings)
        self.trust = trust
        self.body = body
        self.secret_source = secret
        self.reference = reference
        self.recipient = recipient
        self.implicit_confirm = implicit_confirm
        self.protection = protection
        self._secret: Secret | None = None
        self._ca_certificates: tuple[bytes, ...] = ()

    def describe(self) -> str:
        return self.http.url_for("")

    def close(self) -> None:
        self.http.close()

    def ca_certificates(self) -> tuple[bytes, ...]:
        return self._ca_certificates or self.trust

    # -- the use cases ------------------------------------------------------------------------------

    def submit(self, request: CaRequest) -> Answer:
        refused = self._unusable(request)
        if refused is not None:
            return refused
        transaction = secrets.token_bytes(16)
        sender = _subject(request)
        signer = self._signer(request)
        if isinstance(signer, Misconfigured):
            return signer
        if self.body == "p10cr":
            body = asn1.PKIBody(name="p10cr", value=csr.CertificationRequest.load(request.der))
            expected_id: int | None = None  # RFC 4210 says 0, RFC 9483 -1: take what the CA answers
        else:
            if request.key is None:
                return Misconfigured(
                    f"CMP {self.body} needs the request's key to sign its proof of possession, and only "
                    "`tokenagent enroll` (and `enroll --resume`) have it: use tokenagent enroll"
                )
            old = request.renewal.certificate if self.body == "kur" and request.renewal is not None else None
            body = asn1.PKIBody(name=self.body, value=_cert_req_messages(request, old))
            expected_id = 0
        return self._transact(body, transaction, sender, request, expected_id, signer)

    def _signer(self, request: CaRequest | None, polling: bool = False) -> LentSigner | Misconfigured | None:
        """Who signs the protection: None for MAC; the renewed certificate for kur (RFC 9483 4.1.3), else
        the enrollment agent (`enroll --agent`) or the renewed certificate.

        Only the first submission has them (`enroll`); `enroll --resume` polls with the MAC when a
        shared secret is configured, and otherwise cannot protect its pollReq."""
        if self.protection == "mac":
            return None
        if self.body == "kur":
            found = request.renewal if request is not None else None
            wanted = (
                "body = kur is signed with the certificate being renewed and its key: name it with "
                "RenewalCert = <SHA-1 thumbprint> in the INF and run tokenagent enroll"
            )
        else:
            found = (request.agent or request.renewal) if request is not None else None
            wanted = (
                "CMP messages are protected with a shared secret (give secret_source and reference) or a "
                "signature: protection = signature signs with the enrollment agent's key (tokenagent enroll "
                "--agent ...) or the renewed certificate's (INF RenewalCert), and neither was lent"
            )
        if found is not None:
            return found
        if polling and self.secret_source is not None and self.reference:
            return None  # the MAC: the signing key is lent for the first submission only
        if polling:
            wanted = (
                "the CA holds this CMP request; asking again is protected like the request, with a key that "
                "only the first tokenagent enroll run lends (give secret_source and reference so that "
                "enroll --resume can ask with the MAC)"
            )
        return Misconfigured(wanted)

    def poll(self, cookie: str, request: CaRequest | None) -> Answer:
        parsed = _parse_cookie(cookie)
        if parsed is None:
            return Misconfigured(f"{cookie!r} is not a CMP request ID (TRANSACTIONID:CERTREQID:NONCE, as given)")
        refused = self._unusable(request)
        if refused is not None:
            return refused
        transaction, cert_req_id, recip_nonce = parsed
        poll = asn1.PollReqContent([asn1.PollReq({"cert_req_id": cert_req_id})])
        body = asn1.PKIBody(name="poll_req", value=poll)
        sender = _subject(request) if request is not None else _null_dn()
        signer = self._signer(request, polling=True)
        if isinstance(signer, Misconfigured):
            return signer
        return self._transact(body, transaction, sender, request, cert_req_id, signer, recip_nonce)

    def _unusable(self, request: CaRequest | None) -> Answer | None:
        if request is not None and request.form != "PKCS10":
            return Misconfigured(
                f"CMP sends a PKCS#10 (or a CRMF request made from it), not a {request.form} request: "
                "make it with RequestType = PKCS10"
            )
        if request is not None and request.attributes:
            return Misconfigured("CMP has no place for --attrib / profile attributes: put them into the INF")
        if self.protection == "mac" and (self.secret_source is None or not self.reference):
            return Misconfigured(
                "CMP messages are protected with the shared secret the CA gave with a reference: give "
                "secret_source and reference in the cas.toml profile (or protection = signature)"
            )
        return None

    def revoke(self, certificate: bytes, reason: int | None = None) -> Revoked | Answer:
        """rr -> rp: ask the CA to revoke ``certificate`` (RFC 4210 5.3.9), with a CRLReason (RFC 5280 5.3.1).

        A library function for now (`tokenagent revoke-request` writes CMC revocation requests);
        `Revoked` when the CA accepted, else the answer its status (or error) is."""
        refused = self._unusable(None)
        if refused is not None:
            return refused
        if self.protection != "mac":
            return Misconfigured("revocation requests are protected with the shared secret only (protection = mac)")
        parsed = x509.Certificate.load(certificate)
        tbs = parsed["tbs_certificate"]
        template = asn1.CertTemplate({"issuer": tbs["issuer"], "serial_number": tbs["serial_number"]})
        details: dict[str, Any] = {"cert_details": template}
        if reason is not None:
            from asn1crypto import crl

            value = crl.CRLReason(reason).dump()
            details["crl_entry_details"] = [{"extn_id": "2.5.29.21", "critical": False, "extn_value": value}]
        body = asn1.PKIBody(name="rr", value=asn1.RevReqContent([asn1.RevDetails(details)]))
        answer = self._send(body, secrets.token_bytes(16), tbs["subject"], None, ("rp",), None)
        if not isinstance(answer, asn1.PKIMessage):
            return answer
        if answer["body"].name == "error":
            return _error_answer(answer["body"].chosen)
        statuses = list(answer["body"].chosen["status"])
        if len(statuses) != 1:
            return Unreachable(f"the CA answered {len(statuses)} revocation statuses to one request", True)
        status = statuses[0]
        said = _free_text(status["status_string"])
        if status["status"].native in ("accepted", "grantedWithMods", "revocationWarning", "revocationNotification"):
            return Revoked(said or "revoked")
        if status["status"].native == "rejection":
            return failure_answer(status, said)
        return Unreachable(f"the CA answered PKIStatus {status['status'].native} to a revocation request", True)

    # -- one transaction ----------------------------------------------------------------------------

    def _transact(
        self,
        body: asn1.PKIBody,
        transaction: bytes,
        sender: x509.Name,
        request: CaRequest | None,
        expected_id: int | None,
        signer: LentSigner | None,
        recip_nonce: bytes | None = None,
    ) -> Answer:
        replies = ("poll_rep", "ip", "cp", "kup") if body.name == "poll_req" else (REPLIES[body.name],)
        answer = self._send(body, transaction, sender, recip_nonce, replies, signer)
        if not isinstance(answer, asn1.PKIMessage):
            return answer
        found = answer["body"]
        if found.name == "error":
            return _error_answer(found.chosen)
        if found.name == "poll_rep":
            return _poll_answer(found.chosen, transaction, _nonce(answer))
        return self._certificate(answer, transaction, sender, request, expected_id, signer)

    def _certificate(
        self,
        message: asn1.PKIMessage,
        transaction: bytes,
        sender: x509.Name,
        request: CaRequest | None,
        expected_id: int | None,
        signer: LentSigner | None,
    ) -> Answer:
        content = message["body"].chosen
        responses = list(content["response"])
        if len(responses) != 1:
            return Unreachable(f"the CA answered {len(responses)} certificate responses to one request", True)
        response = responses[0]
        cert_req_id = int(response["cert_req_id"].native)
        if expected_id is not None and cert_req_id != expected_id:
            return Unreachable(f"the CA answered certReqId {cert_req_id}, not {expected_id}", True)
        granted = _granted(response, self.describe(), _cookie(transaction, cert_req_id, _nonce(message)))
        if not isinstance(granted, bytes):
            return granted
        certificate = granted
        extra = [c.dump() for c in content["ca_pubs"]] if content["ca_pubs"].native else []
        extra += [c.dump() for c in message["extra_certs"]] if message["extra_certs"].native else []
        problem = self._unacceptable(certificate, extra, request)
        if problem is not None:
            self._confirm(certificate, cert_req_id, transaction, sender, _nonce(message), problem, signer)
            if isinstance(problem, VerificationError):
                raise problem
            return Unreachable(problem, True)
        if not _granted_implicitly(message):
            confirmed = self._confirm(certificate, cert_req_id, transaction, sender, _nonce(message), None, signer)
            if confirmed is not None:
                return confirmed
        chain = _chain(certificate, extra)
        if content["ca_pubs"].native:
            self._ca_certificates = tuple(c.dump() for c in content["ca_pubs"])
        return _issued(certificate, chain, transaction)

    def _unacceptable(
        self, certificate: bytes, extra: list[bytes], request: CaRequest | None
    ) -> str | VerificationError | None:
        """Why the certificate is not ours to take: another key, or not under the configured trust."""
        if request is not None and certificate_key_sha256(certificate) != request.public_key_sha256:
            return "the CA's certificate is for another key than the request's"
        if self.trust:
            try:
                check_issued_under(certificate, extra, self.trust, "the certificate in the CA's answer")
            except VerificationError as exc:
                return exc
        return None

    def _confirm(
        self,
        certificate: bytes,
        cert_req_id: int,
        transaction: bytes,
        sender: x509.Name,
        recip_nonce: bytes,
        refusal: str | VerificationError | None,
        signer: LentSigner | None,
    ) -> Answer | None:
        """certConf -> pkiConf. None when the CA confirmed the acceptance; a refusal is sent best effort."""
        status: dict[str, Any] = {"cert_hash": _certificate_hash(certificate), "cert_req_id": cert_req_id}
        if refusal is not None:
            text = refusal.one_line() if isinstance(refusal, VerificationError) else refusal
            status["status_info"] = asn1.PKIStatusInfo(
                {"status": "rejection", "status_string": [text[:200]], "fail_info": {"badCertTemplate"}}
            )
        body = asn1.PKIBody(name="cert_conf", value=asn1.CertConfirmContent([asn1.CertStatus(status)]))
        try:
            answer = self._send(body, transaction, sender, recip_nonce, ("pkiconf",), signer)
        except VerificationError:
            if refusal is not None:
                return None
            raise
        if refusal is not None or (isinstance(answer, asn1.PKIMessage) and answer["body"].name == "pkiconf"):
            return None
        said = _said(_error_answer(answer["body"].chosen) if isinstance(answer, asn1.PKIMessage) else answer)
        return Unreachable(f"the CA did not confirm the certificate's acceptance: {said}")

    # -- messages -----------------------------------------------------------------------------------

    def _send(
        self,
        body: asn1.PKIBody,
        transaction: bytes,
        sender: x509.Name,
        recip_nonce: bytes | None,
        replies: tuple[str, ...],
        signer: LentSigner | None,
    ) -> asn1.PKIMessage | Answer:
        """Protect and POST one message; the verified answer, or the `Answer` for a failure on the way."""
        nonce = secrets.token_bytes(16)
        der = self._protected(body, transaction, sender, nonce, recip_nonce, signer)
        try:
            # One connection per message, as RFC 6712 allows: OpenSSL's server cancels the transaction
            # when a kept-alive connection ends, which would lose a pending request.
            response = self.http.request("POST", "", der, {"Content-Type": CONTENT_TYPE, "Connection": "close"})
        except HttpFailure as failed:
            return failed.answer
        failure = transport_failure(response, self.describe())
        if failure is not None:
            return failure
        if response.content_type != CONTENT_TYPE:
            if response.status != 200:
                return Rejected(
                    response.reason or "refused", response.describe(), "the server refused the HTTP request"
                )
            return Unreachable(f"the answer is {response.content_type or 'untyped'}, not {CONTENT_TYPE}", True)
        message = _load(response.body)
        if message is None:
            return Unreachable(f"the answer ({response.describe()}) is not a CMP message", True)
        refused = self._check(message, _Sent(transaction, nonce, replies))
        return refused if refused is not None else message

    def _protected(
        self,
        body: asn1.PKIBody,
        transaction: bytes,
        sender: x509.Name,
        nonce: bytes,
        recip_nonce: bytes | None,
        signer: LentSigner | None,
    ) -> bytes:
        if signer is not None:
            return self._signed(body, transaction, nonce, recip_nonce, signer)
        salt = secrets.token_bytes(16)
        parameters = asn1.PBMParameter(
            {
                "salt": salt,
                "owf": {"algorithm": OID_SHA256},
                "iteration_count": PBM_ITERATIONS,
                "mac": {"algorithm": asn1.OID_HMAC_SHA256},
            }
        )
        header: dict[str, Any] = {
            "pvno": PVNO,
            "sender": x509.GeneralName(name="directory_name", value=sender),
            "recipient": x509.GeneralName(name="directory_name", value=self.recipient or _null_dn()),
            "message_time": datetime.now(UTC).replace(microsecond=0),
            "protection_alg": {"algorithm": asn1.OID_PASSWORD_BASED_MAC, "parameters": parameters},
            "sender_kid": (self.reference or "").encode("utf-8"),
            "transaction_id": transaction,
            "sender_nonce": nonce,
        }
        if recip_nonce is not None:
            header["recip_nonce"] = recip_nonce
        if self.implicit_confirm and body.name in BODIES:
            header["general_info"] = [{"info_type": asn1.OID_IMPLICIT_CONFIRM, "info_value": core.Null()}]
        pki_header = asn1.PKIHeader(header)
        protected = asn1.ProtectedPart({"header": pki_header, "body": body}).dump()
        mac = _pbm(self._shared_secret(), salt, "sha256", PBM_ITERATIONS, "sha256", protected)
        return asn1.PKIMessage({"header": pki_header, "body": body, "protection": mac}).dump()

    def _signed(
        self, body: asn1.PKIBody, transaction: bytes, nonce: bytes, recip_nonce: bytes | None, signer: LentSigner
    ) -> bytes:
        """Signature protection (RFC 4210 5.1.3.3, RFC 9483 3.2): signed on the token by ``signer``'s key,
        its certificate first in extraCerts, the sender its subject and senderKID its key identifier."""
        certificate = x509.Certificate.load(signer.certificate)
        algorithm = SIGNATURE_ALGORITHMS.get(signer.key.family)
        if algorithm is None:
            raise CAConfigError(f"a {signer.key.family} key cannot protect CMP messages here")
        oid, null = algorithm
        header: dict[str, Any] = {
            "pvno": PVNO,
            "sender": x509.GeneralName(name="directory_name", value=certificate.subject),
            "recipient": x509.GeneralName(name="directory_name", value=self.recipient or _null_dn()),
            "message_time": datetime.now(UTC).replace(microsecond=0),
            "protection_alg": {"algorithm": oid, **({"parameters": core.Null()} if null else {})},
            "transaction_id": transaction,
            "sender_nonce": nonce,
        }
        if certificate.key_identifier is not None:
            header["sender_kid"] = certificate.key_identifier
        if recip_nonce is not None:
            header["recip_nonce"] = recip_nonce
        if self.implicit_confirm and body.name in BODIES:
            header["general_info"] = [{"info_type": asn1.OID_IMPLICIT_CONFIRM, "info_value": core.Null()}]
        pki_header = asn1.PKIHeader(header)
        protected = asn1.ProtectedPart({"header": pki_header, "body": body}).dump()
        signature = signer.key.sign(protected, "sha256")  # on the token
        return asn1.PKIMessage(
            {"header": pki_header, "body": body, "protection": signature, "extra_certs": [certificate]}
        ).dump()

    def _check(self, message: asn1.PKIMessage, sent: _Sent) -> Answer | None:
        """The answer's protection, transaction and nonce; `VerificationError` when it is not the CA's answer."""
        where = f"the CMP answer of {self.describe()}"
        header = message["header"]
        body = message["body"].name
        if body not in (*sent.reply, "error"):
            return Unreachable(f"the CA answered a {body} message to a request that expects {sent.reply[0]}", True)
        problem = self._protection_problem(message, where)
        if problem is not None:
            if body == "error":
                return _unverified_error(message, problem)
            raise VerificationError(f"{where}: {problem}; nothing was installed")
        if header["transaction_id"].native != sent.transaction_id:
            raise VerificationError(f"{where}: its transactionID is not the request's; nothing was installed")
        if header["recip_nonce"].native != sent.sender_nonce:
            raise VerificationError(
                f"{where}: its recipNonce is not the request's senderNonce (an answer to another message, "
                "or a replay); nothing was installed"
            )
        return None

    def _protection_problem(self, message: asn1.PKIMessage, where: str) -> str | None:
        """Why the answer's protection does not verify; None when it does."""
        header = message["header"]
        if message["protection"].native is None or header["protection_alg"].native is None:
            return "it is not protected"
        algorithm = header["protection_alg"]
        protected = asn1.ProtectedPart({"header": header, "body": message["body"]}).dump()
        signature = bytes(message["protection"].native)
        if algorithm["algorithm"].dotted == asn1.OID_PASSWORD_BASED_MAC:
            try:
                parameters = asn1.PBMParameter.load(algorithm["parameters"].dump())
                owf = OWF_HASHES.get(parameters["owf"]["algorithm"].dotted)
                mac = MAC_HASHES.get(parameters["mac"]["algorithm"].dotted)
                iterations = int(parameters["iteration_count"].native)
                salt = bytes(parameters["salt"].native)
            except (ValueError, TypeError, KeyError) as exc:
                return f"its PBM parameters cannot be read ({exc})"
            if owf is None or mac is None or not 1 <= iterations <= MAX_PBM_ITERATIONS:
                return "its PBM parameters are not acceptable (algorithms or iteration count)"
            expected = _pbm(self._shared_secret(), salt, owf, iterations, mac, protected)
            verifies = hmac.compare_digest(expected, signature)
            return None if verifies else "its MAC does not verify with the shared secret"
        return self._verify_signature(message, algorithm, protected, signature, where)

    def _verify_signature(
        self, message: asn1.PKIMessage, algorithm: Any, protected: bytes, signature: bytes, where: str
    ) -> str | None:
        from cryptography import x509 as cx509

        from tokenagent.request.cms_verify import verify_signature

        if not self.trust:
            return "it is signed, and no trust (CA certificates) is configured to check the signer against"
        certificates = [c.dump() for c in message["extra_certs"]] if message["extra_certs"].native else []
        if not certificates:
            return "it is signed, and carries no certificate of its signer (extraCerts)"
        signer = certificates[0]  # RFC 9483 3.3: the protection certificate comes first
        check_issued_under(signer, certificates[1:], self.trust, f"{where}: the signer")
        try:
            digest = algos.SignedDigestAlgorithm.load(algorithm.untag().dump())
            hash_name = digest.hash_algo if digest.signature_algo != "rsassa_pss" else None
            key = cx509.load_der_x509_certificate(signer).public_key()
        except ValueError as exc:
            return f"its signature algorithm or signer cannot be read ({exc})"
        valid, why = verify_signature(key, digest, hash_name, signature, protected)
        return None if valid else f"its signature: {why}"

    def _shared_secret(self) -> bytes:
        if self._secret is None:
            assert self.secret_source is not None
            self._secret = self.secret_source.read(f"CMP shared secret for {self.describe()}: ", CAConfigError)
        return self._secret.reveal().encode("utf-8")


# -- helpers ---------------------------------------------------------------------------------------------


def _pbm(secret: bytes, salt: bytes, owf: str, iterations: int, mac: str, data: bytes) -> bytes:
    """RFC 4211 4.4: the key is OWF applied ``iterations`` times to secret || salt; then HMAC over ``data``."""
    key = secret + salt
    for _ in range(iterations):
        key = hashlib.new(owf, key).digest()
    return hmac.new(key, data, mac).digest()


def _load(data: bytes) -> asn1.PKIMessage | None:
    try:
        message = asn1.PKIMessage.load(data, strict=True)
        _ = message.native  # parse everything now: a garbled field must fail here, not later
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return message


def _null_dn() -> x509.Name:
    return x509.Name.build({})


def _subject(request: CaRequest | None) -> x509.Name:
    if request is None:
        return _null_dn()
    info = csr.CertificationRequest.load(request.der)["certification_request_info"]
    subject: x509.Name = info["subject"]
    return subject


def _cert_req_messages(request: CaRequest, old: bytes | None = None) -> asn1.CertReqMessages:
    """The PKCS#10's subject, key and requested extensions as a CRMF request; the POPO signed on the token.
    ``old``: the certificate a kur updates, named by the oldCertID control (RFC 4211 6.5, RFC 9483 4.1.3)."""
    assert request.key is not None
    info = csr.CertificationRequest.load(request.der)["certification_request_info"]
    template: dict[str, Any] = {"subject": info["subject"], "public_key": info["subject_pk_info"]}
    for attribute in info["attributes"]:
        if attribute["type"].native == "extension_request":
            template["extensions"] = attribute["values"][0]
    fields: dict[str, Any] = {"cert_req_id": 0, "cert_template": asn1.CertTemplate(template)}
    if old is not None:
        renewed = x509.Certificate.load(old)
        cert_id = asn1.CertId(
            {
                "issuer": x509.GeneralName(name="directory_name", value=renewed.issuer),
                "serial_number": renewed.serial_number,
            }
        )
        fields["controls"] = [{"type": asn1.OID_REG_CTRL_OLD_CERT_ID, "value": cert_id}]
    cert_request = asn1.CertRequest(fields)
    algorithm = {"RSA": "sha256_rsa", "EC": "sha256_ecdsa"}.get(request.key.family)
    if algorithm is None:
        raise CAConfigError(f"a {request.key.family} key cannot sign a CMP proof of possession here")
    signature = request.key.sign(cert_request.dump(), "sha256")
    popo = asn1.POPOSigningKey(
        {
            "algorithm_identifier": {
                "algorithm": algorithm,
                **({"parameters": core.Null()} if algorithm == "sha256_rsa" else {}),
            },
            "signature": signature,
        }
    )
    message = asn1.CertReqMsg({"cert_req": cert_request, "popo": asn1.ProofOfPossession(name="signature", value=popo)})
    return asn1.CertReqMessages([message])


def _certificate_hash(certificate: bytes) -> bytes:
    """RFC 4210 5.3.18: the certificate's hash with the hash of its own signature algorithm (SHA-256 else)."""
    try:
        name = x509.Certificate.load(certificate)["signature_algorithm"].hash_algo
    except ValueError:
        name = "sha256"
    if name in ("md5", "sha1") or name not in hashlib.algorithms_available:
        name = "sha256"
    return hashlib.new(name, certificate).digest()


def _granted_implicitly(message: asn1.PKIMessage) -> bool:
    info = message["header"]["general_info"]
    return info.native is not None and any(item["info_type"].dotted == asn1.OID_IMPLICIT_CONFIRM for item in info)


def _chain(certificate: bytes, candidates: list[bytes]) -> tuple[bytes, ...]:
    """The CA certificates above ``certificate`` among ``candidates``, nearest first."""
    loaded = {der: x509.Certificate.load(der) for der in dict.fromkeys(candidates) if der != certificate}
    chain: list[bytes] = []
    current = x509.Certificate.load(certificate)
    while current.issuer != current.subject and len(chain) < 8:
        issuer = next((der for der, c in loaded.items() if c.subject == current.issuer and der not in chain), None)
        if issuer is None:
            break
        chain.append(issuer)
        current = loaded[issuer]
    return tuple(chain)


def _issued(certificate: bytes, chain: tuple[bytes, ...], transaction: bytes) -> Issued:
    if not chain:
        return Issued(certificate, (), certificate, "certificate", transaction.hex())
    return Issued.certs_only(certificate, chain, transaction.hex())


def _nonce(message: asn1.PKIMessage) -> bytes:
    """The CA's senderNonce, which our next message of the transaction echoes as recipNonce."""
    nonce = message["header"]["sender_nonce"].native
    return bytes(nonce) if nonce is not None else b""


def _cookie(transaction: bytes, cert_req_id: int, nonce: bytes) -> str:
    """TRANSACTIONID:CERTREQID:NONCE (hex): what a pollReq in the same transaction needs."""
    return f"{transaction.hex()}:{cert_req_id}:{nonce.hex()}"


def _parse_cookie(cookie: str) -> tuple[bytes, int, bytes | None] | None:
    parts = cookie.strip().split(":")
    if not 1 <= len(parts) <= 3 or not parts[0]:
        return None
    try:
        transaction = bytes.fromhex(parts[0])
        cert_req_id = int(parts[1]) if len(parts) > 1 and parts[1] else 0
        nonce = bytes.fromhex(parts[2]) if len(parts) > 2 and parts[2] else None
    except ValueError:
        return None
    return transaction, cert_req_id, nonce


def _free_text(text: Any) -> str:
    if text.native is None:
        return ""
    return " ".join(" ".join(str(line).split()) for line in text.native)[:500]


def _fail_bits(status: asn1.PKIStatusInfo) -> list[str]:
    bits = status["fail_info"].native
    return sorted(str(bit) for bit in bits) if bits else []


def failure_answer(status: asn1.PKIStatusInfo, said: str, extra: str = "") -> Answer:
    """A rejection by its failInfo bits: the most telling bit decides the kind of answer."""
    bits = _fail_bits(status)
    code = " ".join(bits) or "rejection"
    message = said or extra or "rejected"
    kinds = {FAIL_INFO[bit][0] for bit in bits if bit in FAIL_INFO}
    meaning = "; ".join(FAIL_INFO[bit][1] for bit in bits if bit in FAIL_INFO) or None
    if "credentials" in kinds:
        return Misconfigured(f"{message} ({code}): {meaning}", True)
    if "config" in kinds:
        return Misconfigured(f"{message} ({code}): {meaning}")
    if "rekey" in kinds:
        return NeedsRekey(message, code)
    if kinds == {"unreachable"}:
        return Unreachable(f"{message} ({code}): {meaning}")
    return Rejected(message, code, meaning)


def _error_answer(content: asn1.ErrorMsgContent) -> Answer:
    status = content["pki_status_info"]
    said = _free_text(status["status_string"])
    details = _free_text(content["error_details"])
    error_code = content["error_code"].native
    extra = " ".join(part for part in (details, f"errorCode {error_code}" if error_code is not None else "") if part)
    message = "; ".join(part for part in (said, extra) if part)
    if status["status"].native == "waiting":
        return Unreachable(f"the CA answered an error with status waiting: {message or 'no details'}")
    return failure_answer(status, message, "the CA answered an error message")


def _granted(response: asn1.CertResponse, where: str, cookie: str) -> bytes | Answer:
    """The certificate a CertResponse grants, or the answer its PKIStatus is."""
    status = response["status"]
    state = status["status"].native
    said = _free_text(status["status_string"])
    if state == "waiting":
        return Pending(cookie, cookie.split(":")[0], None, said or "the CA holds the request (waiting)")
    if state == "rejection":
        return failure_answer(status, said)
    if state not in GRANTED:
        return Unreachable(f"the CA answered PKIStatus {state}", True)
    pair = response["certified_key_pair"]
    if pair.native is None:
        return Unreachable(f"the CA answered {state} without a certificate", True)
    if pair["cert_or_enc_cert"].name != "certificate":
        return Misconfigured("the CA sent the certificate encrypted, which tokenagent cannot decrypt yet")
    if state != "accepted":
        log.warning("%s: the CA issued the certificate with status %s: %s", where, state, said or "-")
    certificate: bytes = pair["cert_or_enc_cert"].chosen.untag().dump()
    return certificate


def _unverified_error(message: asn1.PKIMessage, why: str) -> Answer:
    """An error answer whose protection does not verify: never the CA's final word on the request.

    A CA that cannot verify our MAC protects its refusal with its own secret, which is not ours:
    such an answer means the two secrets differ (OpenSSL's server then says badRequest, not
    badMessageCheck). Anything else unverifiable is treated as a failure on the way."""
    said = _said(_error_answer(message["body"].chosen))
    algorithm = message["header"]["protection_alg"]
    if algorithm.native is not None and algorithm["algorithm"].dotted == asn1.OID_PASSWORD_BASED_MAC:
        return Misconfigured(
            "the CA refused the request, and its answer does not verify with the shared secret either: "
            f"the CA holds another secret (check secret_source and reference); it said: {said}",
            True,
        )
    return Unreachable(f"the CA answered an error that does not verify ({why}): {said}")


def _said(answer: Answer | Revoked) -> str:
    return "" if isinstance(answer, Issued) else answer.message


def _poll_answer(content: asn1.PollRepContent, transaction: bytes, nonce: bytes) -> Answer:
    if len(content) != 1:
        return Unreachable(f"the CA answered {len(content)} poll responses to one request", True)
    poll = content[0]
    check_after = max(0, min(int(poll["check_after"].native), 366 * 86400))
    cert_req_id = int(poll["cert_req_id"].native)
    reason = _free_text(poll["reason"]) or f"the CA is still processing the request; ask again in {check_after} s"
    when = datetime.now(UTC) + timedelta(seconds=check_after)
    return Pending(_cookie(transaction, cert_req_id, nonce), transaction.hex(), when, reason)
