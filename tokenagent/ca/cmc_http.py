"""CMC over HTTP (RFC 5273): POST the request, read the PKIResponse.

A Full PKI Request (CMS SignedData around PKIData, RequestType = CMC) is sent as
``application/pkcs7-mime``, a bare PKCS#10 (RFC 5272's Simple PKI Request) as
``application/pkcs10``. The media type goes without the optional ``smime-type`` parameter, because
django-ca-cmc compares the Content-Type header byte for byte.

The answer must be signed by someone the configured CA trust names (ca/trust.py), and must echo
the request's senderNonce as recipientNonce: an answer that fails either is not an answer
(`VerificationError`), whatever it says. Its statusInfoV2 then decides: success -> `Issued`,
pending (pendInfo: pendToken, pendTime) -> `Pending`, failed -> `Rejected` (or `NeedsRekey` for
noKeyReuse, `Unreachable` for tryLater). A Simple PKI Response (certs-only) has no signature; its
certificate must then itself lead to the trust.

Asking again about a pending request (`poll`) sends the same signed request again: RFC 5272's
queryPending would need a new signature, and a connector has no key.

Peer notes (tests run django-ca 2.2.1 + django-ca-cmc 0.0.1): it answers 403 when no signature
on the request is by a registered client certificate, 400 "internal error" for what it cannot
process (among them a PKCS#10 with a CertificateTemplate name-value attribute), and never pending.
"""

from __future__ import annotations

import logging

from tokenagent.ca.answers import Answer, Issued, Misconfigured, NeedsRekey, Pending, Rejected, Unreachable
from tokenagent.ca.connector import CaRequest, certificate_key_sha256
from tokenagent.ca.http import HttpClient, HttpFailure, HttpResponse, HttpSettings, said_text, transport_failure
from tokenagent.ca.trust import check_issued_under
from tokenagent.errors import TokenAgentError, VerificationError
from tokenagent.request.response import CertificateResponse, CmcStatus, read_response

log = logging.getLogger("tokenagent")

CONTENT_TYPES = {"CMC": "application/pkcs7-mime", "PKCS10": "application/pkcs10"}
RESPONSE_TYPES = ("application/pkcs7-mime", "application/pkcs7-signature", "application/x-pkcs7-mime")

#: RFC 5272 6.1.4 CMCFailInfo, in plain words.
FAIL_INFO: dict[str, str] = {
    "badAlg": "the CA does not accept an algorithm of the request",
    "badMessageCheck": "a signature or MAC on the request did not verify at the CA",
    "badRequest": "the CA refuses the request (not permitted or not supported)",
    "badTime": "the request's time is too far from the CA's",
    "badCertId": "no certificate matches the request's identifier",
    "unsupportedExt": "the CA does not support an extension of the request",
    "mustArchiveKeys": "the CA requires key archival",
    "badIdentity": "the identity proof (shared secret) did not verify at the CA",
    "popRequired": "the CA requires a proof of possession the request lacks",
    "popFailed": "the proof of possession failed at the CA",
    "noKeyReuse": "the CA will not certify a key it certified before: make a new key",
    "internalCAError": "the CA failed internally (its log says why)",
    "tryLater": "the CA cannot process the request now",
    "authDataFail": "the authenticated data of the request failed the CA's checks",
}


class CmcHttpConnector:
    protocol = "cmc"

    def __init__(self, url: str, settings: HttpSettings, *, trust: tuple[bytes, ...]) -> None:
        self.http = HttpClient(url, settings)
        self.trust = trust

    def describe(self) -> str:
        return self.http.url_for("")

    def close(self) -> None:
        self.http.close()

    def ca_certificates(self) -> tuple[bytes, ...]:
        return self.trust  # CMC has no standard way to ask; the configured trust is the CA's

    def poll(self, cookie: str, request: CaRequest | None) -> Answer:
        if request is None:
            return Misconfigured(
                "a pending CMC request is asked about by sending it again, and this one is not in the pending "
                "store: run retrieve --pending ID, or submit the request file again"
            )
        return self.submit(request)

    def submit(self, request: CaRequest) -> Answer:
        if request.form not in CONTENT_TYPES:
            return Misconfigured(
                f"a {request.form} request is not a CMC request: make it with RequestType = CMC "
                "(tokenagent new --agent ... signs it as enrollment agent)"
            )
        if request.attributes:
            return Misconfigured(
                "CMC carries request attributes inside the signed request (INF [RequestAttributes], regInfo); "
                "--attrib and profile attributes cannot be added to it"
            )
        try:
            response = self.http.request("POST", "", request.der, {"Content-Type": CONTENT_TYPES[request.form]})
        except HttpFailure as failed:
            return failed.answer
        failure = transport_failure(response, self.describe())
        if failure is not None:
            return failure
        if response.status != 200:
            return self._refusal(response, request)
        return self._answer(response, request)

    def _refusal(self, response: HttpResponse, request: CaRequest) -> Answer:
        said = said_text(response)
        code = response.describe()
        if response.status == 403:
            return Rejected(
                said or "forbidden",
                code,
                "the CA accepts no signature on the request: the enrollment agent's certificate is not registered "
                "with it (django-ca-cmc: manage.py cmc_add_client AGENT.pem)",
            )
        if response.status == 400:
            hint = "the CA could not process the request"
            if request.summary.template:
                hint += (
                    "; the request names a certificate template (INF CertificateTemplate), whose name-value "
                    "attribute django-ca-cmc 0.0.1 cannot parse: leave CertificateTemplate out for this CA"
                )
            return Rejected(said or "bad request", code, hint)
        if response.status == 415:
            return Misconfigured(f"{code}: the server does not take {CONTENT_TYPES[request.form]}; is it a CMC URL?")
        return Rejected(said or response.reason, code, None)

    def _answer(self, response: HttpResponse, request: CaRequest) -> Answer:
        if response.content_type not in RESPONSE_TYPES:
            return Unreachable(f"the answer is {response.content_type or 'untyped'}, not application/pkcs7-mime", True)
        try:
            answer = read_response(response.body, f"the CMC response of {self.describe()}")
        except TokenAgentError as exc:
            return Unreachable(exc.one_line(), True)
        if answer.form == "cmc":
            self._check_signed(answer, request)
            status = _overall(answer.statuses)
            if status is None:
                return Unreachable("the CMC response holds no status control", True)
            if status.status == "pending":
                token = (status.pend_token or b"").hex()
                message = status.status_string or "pending"
                return Pending(token or "resend", token or None, status.pend_time, message)
            if status.status != "success":
                return _failed(status)
        leaf = _leaf(answer, request)
        if leaf is None:
            return Unreachable("the CA's answer holds no certificate for the request's key", True)
        chain = tuple(answer.chain_for(leaf))
        if answer.form != "cmc":
            check_issued_under(leaf, answer.certificates, self.trust, "the certificate in the CA's answer")
        return Issued(leaf, chain, response.body, answer.form)

    def _check_signed(self, answer: CertificateResponse, request: CaRequest) -> None:
        where = f"the CMC response of {self.describe()}"
        if answer.signature != "valid":
            raise VerificationError(
                f"{where}: its signature is {answer.signature} ({', '.join(answer.signers) or 'no signer found'}); "
                "nothing was installed"
            )
        for signer in answer.signer_certificates:
            check_issued_under(signer, answer.certificates, self.trust, f"{where}: the signer")
        if request.sender_nonce is not None:
            if answer.recipient_nonce is None:
                log.info("%s does not echo the request's senderNonce", where)
            elif answer.recipient_nonce != request.sender_nonce:
                raise VerificationError(
                    f"{where}: its recipientNonce is not the request's senderNonce (an answer to another request, "
                    "or a replay); nothing was installed"
                )


def _overall(statuses: tuple[CmcStatus, ...]) -> CmcStatus | None:
    """The status that decides: a failure over a pending over a success."""
    for wanted in ("failed", "noSupport", "confirmRequired", "popRequired", "partial", "pending", "success"):
        for status in statuses:
            if status.status == wanted:
                return status
    return statuses[0] if statuses else None


def _failed(status: CmcStatus) -> Answer:
    message = status.status_string or status.status
    code = status.fail_info or status.status
    if status.fail_info == "noKeyReuse":
        return NeedsRekey(message, code)
    if status.fail_info == "tryLater":
        return Unreachable(f"the CA asks to try later: {message}", retry_after=status.pend_time)
    if status.status == "confirmRequired":
        return Rejected(message, code, "the CA requires a confirmation (confirmCertAcceptance) not sent by tokenagent")
    return Rejected(message, code, FAIL_INFO.get(status.fail_info or ""))


def _leaf(answer: CertificateResponse, request: CaRequest) -> bytes | None:
    """The certificate for the request's public key, among the end-entity certificates."""
    for der in answer.end_entities():
        if certificate_key_sha256(der) == request.public_key_sha256:
            return der
    return None
