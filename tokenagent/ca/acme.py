"""ACME (RFC 8555): an order for the request's names, challenges answered, finalize with the CSR,
the certificate chain downloaded. Built on certbot's `acme` library (JWS, nonces, badNonce retry).

The request's key signs only the CSR (the request `new` made there). ACME's own signatures (JWS on
every POST) are made with a separate **account key**, one of:

- by default a software EC P-256 key kept in the state directory, ``<state dir>/acme/<first 16 hex
  of SHA-256 of the directory URL>.key`` (mode 0600 in a 0700 directory, created on first use);
- the PEM file the profile names (``account_key``, EC P-256/384/521 or RSA; made on first use);
- a private key ON the request's token (``account_key_uri = "pkcs11:...;object=...;type=private"``,
  EC P-256/384/521 or RSA), made there once beforehand (pkcs11-tool --keypairgen, or `tokenagent
  new`): this connector never makes it. Every JWS is then signed on the token: josepy signs with
  a cryptography-shaped key (``sign``, ``public_key``, ``curve``), and `_TokenEcKey`/`_TokenRsaKey`
  are such keys whose ``sign`` is the lent `RequesterKey`'s C_Sign. The connector has no token
  session of its own: `key_needs` asks `enroll` (and `enroll --resume`) to lend the request's key,
  and the account key is found beside it (`RequesterKey.key_beside`), on the same token and in the
  same session (one login; a key on another token is refused). `submit` and `retrieve` have no
  session: Misconfigured, "use tokenagent enroll". A URI naming no key, another token, or a key
  that cannot sign JWS is Misconfigured before anything is sent.

The account is registered (``newAccount``, terms of service agreed) or found again with that key
on every run.

Identifiers: the library takes them from the CSR, the subject's CN and every dNSName and
iPAddress of its subjectAltName; a CN that is not a host name is refused by the CA. Challenges:

- ``http-01`` (default): the ``hook`` program, or else a built-in responder on ``http_port``
  (default 80, where CAs fetch; ``http_address``, default all interfaces) that serves
  ``/.well-known/acme-challenge/TOKEN`` while tokenagent runs (as certbot's --standalone);
- ``dns-01``: the ``hook`` program publishes ``_acme-challenge.DOMAIN TXT VALIDATION``.

The hook is one program (no arguments), run with TOKENAGENT_ACME_ACTION (deploy | cleanup),
TOKENAGENT_ACME_TYPE, _DOMAIN, _TOKEN, _VALIDATION (the key authorization for http-01, the TXT
value for dns-01) and _RECORD (dns-01: the TXT record's name) or _PATH (http-01: the URL path) in
its environment; a non-zero exit of deploy is a configuration error, of cleanup a warning.
Cleanup runs once validation is over; it must be idempotent (an `enroll --resume` may repeat it).

Waiting: a run waits up to ``wait`` seconds (default 60) for validation and issuance; then the
answer is `Pending` with the order URL as cookie, and `enroll --resume` (or `retrieve`) carries the
order on from wherever it is: it answers challenges not yet answered, finalizes a ready order,
downloads the certificate of a valid one. ``wait = 0`` answers Pending right after the challenges
are answered (for hooks whose validation takes long, e.g. DNS propagation); the built-in responder
stops with the run, so it needs a wait long enough for the CA to fetch its answers.

The answer installed is a certs-only PKCS#7 (DER) of the leaf and the chain the CA sent (ACME
sends a PEM chain, which `accept` reads only one certificate of).

Problem documents (urn:ietf:params:acme:error:*) map to answers: see `problem_answer` and
docs/ca.md (ACME). The HTTP client is the library's (requests): TLS trust is the profile's
``ca_bundle`` or the system store; redirects are followed as requests does.

Peer notes (tests run Debian pebble 2.4.0 with pebble-challtestsrv as its DNS): a new issuing root
at every start; it answers finalize with "processing" and the order is "valid" moments later (hence
`ISSUE_WAIT`, even with ``wait = 0``); it validates an HTTP-01 challenge from three "perspectives" (three
fetches); ``domainBlocklist`` names are refused with rejectedIdentifier at newOrder; a deactivated
account is answered with unauthorized; it rejects 5 % of good nonces unless
PEBBLE_WFE_NONCEREJECT=0, which the library's single retry mostly absorbs; its account object
carries the account's JWK (``key``), which the tests compare with the token's public key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import josepy
import requests
from acme import client, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.serialization import Encoding

from tokenagent.ca.answers import Answer, Issued, Misconfigured, NeedsRekey, Pending, Rejected, Unreachable
from tokenagent.ca.connector import CaRequest, KeyNeeds, RequesterKey, certificate_key_sha256
from tokenagent.ca.http import HttpResponse, HttpSettings
from tokenagent.ca.profiles import CaProfile
from tokenagent.ca.trust import check_issued_under
from tokenagent.store.paths import state_dir

log = logging.getLogger("tokenagent")

CHALLENGES = ("http-01", "dns-01")
DEFAULT_WAIT = 60
ISSUE_WAIT = 10
HTTP_PORT = 80  # where CAs fetch HTTP-01 answers (RFC 8555 8.3)
MAX_POLL_INTERVAL = 2.0
ISSUING = "the CA to issue the certificate"
ACCOUNT_DIR = "acme"
HOOK_PREFIX = "TOKENAGENT_ACME_"

#: What a problem type means for the operator (RFC 8555 6.7), for the answers' explanations.
PROBLEMS: dict[str, str] = {
    "rejectedIdentifier": "the CA will not issue for this name (its policy, or a blocked domain)",
    "unsupportedIdentifier": "the CA does not issue for this kind of identifier",
    "caa": "a CAA record of the domain forbids this CA to issue",
    "unauthorized": "the account is not authorized for this name",
    "badCSR": "the CA refuses the certificate request (its names, extensions or signature)",
    "badPublicKey": "the CA will not certify this key (type or size): make a new key",
    "malformed": "the CA could not read what tokenagent sent",
    "connection": "the CA could not connect to the server to validate the challenge",
    "dns": "the CA could not resolve the name to validate the challenge",
    "incorrectResponse": "the challenge answer the CA fetched was wrong",
    "tls": "the CA failed TLS with the server while validating",
    "compound": "several problems; see the CA's detail",
}
#: Problems about the account (its key, registration, terms): the configuration must change.
ACCOUNT_PROBLEMS = (
    "accountDoesNotExist",
    "externalAccountRequired",
    "agreementRequired",
    "invalidContact",
    "unsupportedContact",
    "badSignatureAlgorithm",
    "userActionRequired",
)


def connector_for(profile: CaProfile, settings: HttpSettings, trust: tuple[bytes, ...]) -> AcmeConnector:
    return AcmeConnector(profile, settings, trust)


def key_needs(profile: CaProfile) -> KeyNeeds | None:
    """With the account key on the token, every JWS is signed there: `enroll` lends its session."""
    if not profile.option("account_key_uri"):
        return None
    return KeyNeeds("acme", signs_messages=True, why="the ACME account key (account_key_uri) signs on the token")


def default_account_key(directory_url: str) -> Path:
    """Where the account key of an ACME directory is kept unless the profile names one."""
    name = hashlib.sha256(directory_url.encode("utf-8")).hexdigest()[:16]
    return state_dir(False) / ACCOUNT_DIR / f"{name}.key"


class _Stop(Exception):
    """Carries an answer out of the flow (a configuration problem found midway)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(getattr(answer, "message", ""))
        self.answer = answer


@dataclass(frozen=True)
class _Deployed:
    kind: str  # http-01 | dns-01
    domain: str
    token: str
    validation: str


class AcmeConnector:
    protocol = "acme"

    def __init__(self, profile: CaProfile, settings: HttpSettings, trust: tuple[bytes, ...]) -> None:
        self.url = profile.url
        self.settings = settings
        self.trust = trust
        self.challenge = str(profile.option("challenge", "http-01"))
        self.hook: str | None = profile.option("hook")
        self.http_port = int(profile.option("http_port", HTTP_PORT))
        self.http_address = str(profile.option("http_address", ""))
        self.contact: str | None = profile.option("contact")
        self.wait = int(profile.option("wait", DEFAULT_WAIT))
        configured = profile.option("account_key")
        self.account_key = Path(configured) if configured else default_account_key(self.url)
        self.account_key_configured = bool(configured)
        self.account_key_uri: str | None = profile.option("account_key_uri")
        self._token_key: RequesterKey | None = None  # the account key on the token, lent with the request's
        self._client: client.ClientV2 | None = None  # once the account is known
        self._network: _Network | None = None
        self._responder: _Responder | None = None
        self._deployed: dict[str, _Deployed] = {}  # challenge URL -> what the hook published
        self._phase = "order"  # what is being done, for the meaning of a problem document

    def describe(self) -> str:
        return self.url

    def ca_certificates(self) -> tuple[bytes, ...]:
        return self.trust  # ACME has no "CA certificates" resource; the chain comes with each certificate

    def close(self) -> None:
        if self._responder is not None:
            self._responder.stop()
            self._responder = None

    # -- the connector's two questions ----------------------------------------------------------------

    def submit(self, request: CaRequest) -> Answer:
        problem = self._check(request)
        if problem is not None:
            return problem
        return self._guarded(lambda: self._order(request), "order")

    def poll(self, cookie: str, request: CaRequest | None) -> Answer:
        if not cookie.startswith(("https://", "http://")):
            return Misconfigured(f"{cookie!r} is not an ACME order URL; submit the request again")
        if request is None:
            return Misconfigured(
                "an ACME order is finalized with its certificate request, and this one is not in the pending "
                "store: use tokenagent enroll --resume, or retrieve --pending ID"
            )
        problem = self._check(request)
        if problem is not None:
            return problem
        return self._guarded(lambda: self._advance(cookie, request, resumed=True), "order")

    def _check(self, request: CaRequest) -> Answer | None:
        if request.form != "PKCS10":
            return Misconfigured(
                f"ACME finalizes an order with a PKCS#10 request, not {request.form}: make it with RequestType = PKCS10"
            )
        if request.attributes:
            return Misconfigured("ACME has no request attributes: leave out --attrib and the profile's attributes")
        if self.challenge not in CHALLENGES:
            return Misconfigured(f"challenge = {self.challenge!r}: use one of {', '.join(CHALLENGES)}")
        if self.hook is None and self.challenge == "dns-01":
            return Misconfigured("dns-01 needs a hook program that publishes the TXT record (hook = PATH in cas.toml)")
        if "pkcs11:" in str(self.account_key):  # made relative to cas.toml as a file name would be
            return Misconfigured('account_key names a PEM file; a key on the token is account_key_uri = "pkcs11:..."')
        if self.account_key_uri is None:
            return None
        if self.account_key_configured:
            return Misconfigured("give account_key (a PEM file) or account_key_uri (a key on the token), not both")
        if request.key is None:
            return Misconfigured(
                "the ACME account key is on the token (account_key_uri), and this command has no session on it: "
                "use tokenagent enroll, or enroll --resume for a pending request"
            )
        try:
            key = request.key.key_beside(self.account_key_uri)
        except LookupError as exc:
            return Misconfigured(f"the ACME account key: {exc}")
        try:
            self._token_key = key
            _token_account_key(key)  # a key that cannot sign JWS is found before the CA is asked
        except _Stop as stop:
            self._token_key = None
            return stop.answer
        return None

    # -- the flow ------------------------------------------------------------------------------------

    def _order(self, request: CaRequest) -> Answer:
        acme = self._account()
        self._phase = "order"
        order = acme.new_order(_csr_pem(request.der))
        if not order.uri:
            raise _Stop(Unreachable("the CA's newOrder answer has no Location (the order's URL)", garbled=True))
        log.info("ACME order %s for %s", order.uri, ", ".join(str(i.value) for i in order.body.identifiers))
        return self._advance(order.uri, request, resumed=False)

    def _advance(self, order_url: str, request: CaRequest, *, resumed: bool) -> Answer:
        """Carry the order on until it is done or `wait` is over: answer, finalize, download."""
        acme = self._client or self._account()
        started = time.monotonic()
        interval = 0.2
        first = True
        while True:
            self._phase = "order"
            order = messages.Order.from_json(self._fetch(order_url).json())
            status = _status(order)
            if first and resumed and self.hook is not None and status in ("pending", "ready", "invalid"):
                self._remember_answered(order)  # an earlier run published these and did not clean up
            first = False
            waiting_for = ""
            if status == "pending":
                # every authorization valid: the order turns ready at once, or at the next look
                waiting_for = self._authorize(order) or "the order to become ready"
            elif status == "ready":
                self._cleanup()
                self._phase = "finalize"
                finalized = acme.begin_finalization(
                    messages.OrderResource(body=order, uri=order_url, csr_pem=_csr_pem(request.der))
                )
                order = finalized.body
                status = _status(order)
                waiting_for = ISSUING
            elif status == "processing":
                waiting_for = ISSUING
            if status == "valid":
                self._cleanup()
                return self._issued(order, request)
            if status == "invalid":
                self._cleanup()
                return self._invalid(order)
            if status not in ("pending", "ready", "processing"):
                return Unreachable(f"the order's status is {status!r}, which RFC 8555 does not define", garbled=True)
            # issuance after finalize takes moments: worth waiting for even when `wait` is 0
            limit = max(self.wait, ISSUE_WAIT) if waiting_for == ISSUING else self.wait
            remaining = started + limit - time.monotonic()
            if remaining <= 0:
                return Pending(order_url, None, self._retry_after(), f"waiting for {waiting_for} (order {order_url})")
            time.sleep(min(interval, remaining))
            interval = min(interval * 2, MAX_POLL_INTERVAL)

    def _authorize(self, order: Any) -> str:
        """Answer the order's pending authorizations; what is still awaited ("" when all are valid)."""
        awaited: list[str] = []
        for url in order.authorizations:
            self._phase = "order"
            authz = messages.Authorization.from_json(self._fetch(url).json())
            domain = str(authz.identifier.value)
            if authz.status == messages.STATUS_VALID:
                continue
            if authz.status != messages.STATUS_PENDING:
                continue  # invalid, expired, deactivated: the order itself turns invalid
            challenge = next((c for c in authz.challenges if c.chall.typ == self.challenge), None)
            if challenge is None:
                offered = ", ".join(sorted(c.chall.typ for c in authz.challenges if isinstance(c.chall.typ, str)))
                raise _Stop(
                    Rejected(
                        f"the CA offers no {self.challenge} challenge for {domain} (it offers {offered or 'none'})",
                        "challenge",
                        "set challenge in the profile to one it offers",
                    )
                )
            if challenge.status == messages.STATUS_PENDING:
                self._deploy(domain, challenge)
                response, _ = challenge.response_and_validation(self._account_jwk)
                self._phase = "challenge"
                self._acme.answer_challenge(challenge, response)
            elif self.hook is None and self.challenge == "http-01":
                self._deploy(domain, challenge)  # answered by an earlier run: serve it again while the CA retries
            awaited.append(domain)
        if not awaited:
            return ""
        return f"the CA to validate {', '.join(awaited)} ({self.challenge})"

    def _issued(self, order: Any, request: CaRequest) -> Answer:
        if not order.certificate:
            return Unreachable("the order is valid but names no certificate URL", garbled=True)
        self._phase = "download"
        body = self._fetch(str(order.certificate)).content
        try:
            certificates = x509.load_pem_x509_certificates(body)
        except ValueError:
            return Unreachable("the certificate URL answered no PEM certificate chain", garbled=True)
        leaf = certificates[0].public_bytes(Encoding.DER)
        chain = tuple(c.public_bytes(Encoding.DER) for c in certificates[1:])
        if certificate_key_sha256(leaf) != request.public_key_sha256:
            return Unreachable("the CA's certificate is for another key than the request's", garbled=True)
        if self.trust:
            check_issued_under(leaf, chain, self.trust, "the certificate the ACME server issued")
        return Issued.certs_only(leaf, chain, str(order.certificate).rstrip("/").rsplit("/", 1)[-1])

    def _invalid(self, order: Any) -> Answer:
        """Why the order failed: the first failed challenge (it names the domain), else the order's error."""
        for url in order.authorizations:
            authz = messages.Authorization.from_json(self._fetch(url).json())
            if _status(authz) != "invalid":
                continue
            for challenge in authz.challenges:
                if challenge.error is None:
                    continue
                answer = problem_answer(challenge.error, "validation")
                if not isinstance(answer, Rejected):
                    return answer
                domain = authz.identifier.value
                return Rejected(
                    f"{domain} ({challenge.chall.typ}): {answer.message}",
                    answer.code,
                    f"the CA could not validate control of {domain}: {answer.explanation or 'see its detail'}",
                )
        if order.error is not None:
            return problem_answer(order.error, "order")
        return Rejected("the order is invalid and the CA says no more", "invalid")

    # -- account ---------------------------------------------------------------------------------------

    def _account(self) -> Any:
        self._phase = "account"
        if self._token_key is not None:
            key, alg = _token_account_key(self._token_key)
            log.info("ACME account key on the token: %s", self._token_key.uri)
        else:
            key, alg = _load_account_key(self.account_key)
        # requests takes a CA bundle's path where the library's annotation says bool
        verify = cast(bool, str(self.settings.ca_bundle) if self.settings.ca_bundle is not None else True)
        network = _Network(
            key,
            alg=alg,
            verify_ssl=verify,
            user_agent=self.settings.user_agent,
            timeout=max(1, round(self.settings.timeout)),
        )
        self._network = network
        self._phase = "directory"
        directory = client.ClientV2.get_directory(self.url, network)
        acme = client.ClientV2(directory, network)
        self._phase = "account"
        if acme.external_account_required():
            raise _Stop(
                Misconfigured(
                    "the ACME server requires external account binding (EAB), which tokenagent does not do yet",
                    authentication=True,
                )
            )
        contact = () if not self.contact else (self.contact if ":" in self.contact else f"mailto:{self.contact}",)
        registration = messages.NewRegistration(contact=contact, terms_of_service_agreed=True)
        try:
            account = acme.new_account(registration)
            log.info("ACME account %s registered", account.uri)
        except errors.ConflictError as existing:  # the key has an account: use it
            network.account = messages.RegistrationResource(uri=existing.location, body=messages.Registration())
        self._client = acme
        return acme

    # -- challenges ---------------------------------------------------------------------------------

    def _deploy(self, domain: str, challenge: Any) -> None:
        _, validation = challenge.response_and_validation(self._account_jwk)
        token = challenge.chall.encode("token")
        item = _Deployed(self.challenge, domain, token, str(validation))
        if self.hook is None:
            if self._responder is None:
                self._responder = _Responder.start(self.http_address, self.http_port)
            self._responder.answers[token] = str(validation)
            return
        self._run_hook("deploy", item, challenge.chall)
        self._deployed[str(challenge.uri)] = item

    def _remember_answered(self, order: Any) -> None:
        for url in order.authorizations:
            authz = messages.Authorization.from_json(self._fetch(url).json())
            for challenge in authz.challenges:
                if challenge.chall.typ == self.challenge and challenge.status != messages.STATUS_PENDING:
                    _, validation = challenge.response_and_validation(self._account_jwk)
                    token = challenge.chall.encode("token")
                    item = _Deployed(self.challenge, str(authz.identifier.value), token, str(validation))
                    self._deployed[str(challenge.uri)] = item

    def _cleanup(self) -> None:
        if self._responder is not None:
            self._responder.answers.clear()
        while self._deployed:
            _, item = self._deployed.popitem()
            try:
                self._run_hook("cleanup", item, None)
            except _Stop as failed:
                log.warning("%s", getattr(failed.answer, "message", failed))

    def _run_hook(self, action: str, item: _Deployed, chall: Any) -> None:
        assert self.hook is not None
        env = {
            **os.environ,
            f"{HOOK_PREFIX}ACTION": action,
            f"{HOOK_PREFIX}TYPE": item.kind,
            f"{HOOK_PREFIX}DOMAIN": item.domain,
            f"{HOOK_PREFIX}TOKEN": item.token,
            f"{HOOK_PREFIX}VALIDATION": item.validation,
        }
        if item.kind == "dns-01":
            env[f"{HOOK_PREFIX}RECORD"] = f"_acme-challenge.{item.domain.removeprefix('*.')}"
        else:
            env[f"{HOOK_PREFIX}PATH"] = f"/.well-known/acme-challenge/{item.token}"
        what = f"the ACME hook {self.hook} ({action} {item.kind} for {item.domain})"
        try:
            done = subprocess.run(
                [self.hook],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.settings.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise _Stop(Misconfigured(f"{what} did not finish within {self.settings.timeout:g} s")) from None
        except OSError as exc:
            raise _Stop(Misconfigured(f"{what} cannot run: {exc.strerror or exc}")) from None
        if done.returncode != 0:
            said = [line for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
            tail = f": {said[-1].strip()}" if said else ""
            raise _Stop(Misconfigured(f"{what} exited with status {done.returncode}{tail}"))

    # -- transport ------------------------------------------------------------------------------------

    def _fetch(self, url: str) -> Any:
        """POST-as-GET (RFC 8555 6.3): every ACME resource but the directory is read this way."""
        return self._acme.net.post(url, None, new_nonce_url=self._acme.directory["newNonce"])

    @property
    def _acme(self) -> client.ClientV2:
        assert self._client is not None, "the account comes first"
        return self._client

    @property
    def _account_jwk(self) -> josepy.JWK:
        """The account's public JWK (key authorizations hash its thumbprint; a key on the token has
        no private numbers to serialize)."""
        assert self._network is not None and self._network.key is not None, "the account comes first"
        return self._network.key.public_key()

    def _retry_after(self) -> Any:
        last = self._network.last if self._network is not None else None
        if last is None:
            return None
        return HttpResponse(
            last.status_code, last.reason or "", tuple(last.headers.items()), b"", last.url
        ).retry_after()

    def _guarded(self, flow: Callable[[], Answer], phase: str) -> Answer:
        """Run the flow; whatever the CA or the way to it answered becomes an answer."""
        self._phase = phase
        try:
            return flow()
        except _Stop as stop:
            return stop.answer
        except messages.Error as problem:
            return problem_answer(problem, self._phase, self._retry_after())
        except requests.exceptions.SSLError as exc:
            return self._tls_failure(exc)
        except requests.exceptions.Timeout:
            return Unreachable(f"no answer from {self._where()} within {self.settings.timeout:g} s")
        except requests.exceptions.ConnectionError as exc:
            refused = "refused" if "refused" in str(exc).lower() else "failed"
            return Unreachable(f"connection to {self._where()} {refused}")
        except requests.exceptions.RequestException as exc:
            return Unreachable(f"request to {self._where()} failed ({type(exc).__name__})")
        except errors.ClientError as exc:
            return self._client_error(exc)
        except (errors.Error, josepy.errors.Error, ValueError, KeyError, TypeError, AttributeError) as exc:
            name = "directory" if self._phase == "directory" else "answer"
            return Unreachable(f"the ACME {name} of {self._where()} cannot be read ({_reason(exc)})", garbled=True)

    def _client_error(self, exc: Exception) -> Answer:
        """The library's ClientError: an HTTP error without a problem document, or a non-JSON answer."""
        response = next((a for a in exc.args if isinstance(a, requests.Response)), None)
        if response is None and exc.args and isinstance(exc.args[0], tuple):
            response = next((a for a in exc.args[0] if isinstance(a, requests.Response)), None)
        if response is None:
            return Unreachable(f"{self._where()} answered something that is not ACME ({_reason(exc)})", garbled=True)
        answer = HttpResponse(response.status_code, response.reason or "", tuple(response.headers.items()), b"", "")
        if response.status_code >= 500 or response.status_code == 429:
            return Unreachable(f"{self._where()} answered {answer.describe()}", retry_after=answer.retry_after())
        if response.status_code == 404:
            return Misconfigured(f"{answer.describe()} for {response.url}: check the ACME directory URL in --config")
        return Unreachable(f"{self._where()} answered {answer.describe()} without a problem document", garbled=True)

    def _tls_failure(self, exc: Exception) -> Answer:
        trust = f"the certificates in {self.settings.ca_bundle}" if self.settings.ca_bundle else "the system store"
        if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc):
            return Misconfigured(
                f"the TLS certificate of {self._where()} does not verify against {trust}; give --ca-bundle "
                "(or ca_bundle in cas.toml) with the CA that issued it"
            )
        return Misconfigured(f"TLS with {self._where()} failed; is it an https server?")

    def _where(self) -> str:
        from urllib.parse import urlsplit

        return urlsplit(self.url).netloc or self.url


def problem_answer(problem: Any, phase: str, retry_after: Any = None) -> Answer:
    """An ACME problem document as an answer; ``phase`` is what was being done (account, order, ...)."""
    code = problem.code or str(problem.typ).rsplit(":", 1)[-1]
    said = problem.detail or problem.title or problem.description or code
    if code == "rateLimited":
        return Unreachable(f"the ACME server limits the rate: {said}", retry_after=retry_after)
    if code in ("serverInternal", "badNonce"):
        return Unreachable(f"the ACME server failed ({code}): {said}", retry_after=retry_after)
    if code in ACCOUNT_PROBLEMS or (phase == "account" and code in ("unauthorized", "badPublicKey", "malformed")):
        return Misconfigured(f"the ACME account was refused ({code}): {said}", authentication=True)
    if code == "badPublicKey":
        return NeedsRekey(said, code)
    return Rejected(said, code, PROBLEMS.get(code))


class _Network(client.ClientNetwork):
    """The library's network, remembering the last HTTP answer (for its Retry-After)."""

    last: requests.Response | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        self.last = None
        response = super()._send_request(method, url, *args, **kwargs)
        self.last = response
        return response


def _load_account_key(path: Path) -> tuple[Any, Any]:
    """The account key (made on first use: EC P-256, PKCS#8 PEM, 0600 in a 0700 directory) as a JWK."""
    if not path.exists():
        _create_account_key(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise _Stop(Misconfigured(f"cannot read the ACME account key {path}: {exc.strerror or exc}")) from None
    except (ValueError, TypeError) as exc:
        raise _Stop(Misconfigured(f"{path} is not an unencrypted PEM private key ({exc})")) from None
    if path.stat().st_mode & 0o077:
        log.warning("the ACME account key %s can be read by others: chmod 600 it", path)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in CURVE_ALGORITHMS:
            raise _Stop(Misconfigured(f"{path}: an EC key on {key.curve.name} cannot sign ACME requests"))
        return josepy.JWKEC(key=key), CURVE_ALGORITHMS[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return josepy.JWKRSA(key=key), josepy.RS256
    raise _Stop(Misconfigured(f"{path}: an ACME account key must be EC (P-256, P-384, P-521) or RSA"))


CURVE_ALGORITHMS = {"secp256r1": josepy.ES256, "secp384r1": josepy.ES384, "secp521r1": josepy.ES512}


def _token_account_key(key: RequesterKey) -> tuple[Any, Any]:
    """The account key on the token as a JWK josepy signs with (through `_TokenEcKey`/`_TokenRsaKey`)."""
    public = serialization.load_der_public_key(key.public_key_info)
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name not in CURVE_ALGORITHMS:
            raise _Stop(Misconfigured(f"{key.uri}: an EC key on {public.curve.name} cannot sign ACME requests"))
        return josepy.JWKEC(key=_TokenEcKey(key, public)), CURVE_ALGORITHMS[public.curve.name]
    if isinstance(public, rsa.RSAPublicKey):
        return josepy.JWKRSA(key=_TokenRsaKey(key, public)), josepy.RS256
    raise _Stop(Misconfigured(f"{key.uri}: an ACME account key must be EC (P-256, P-384, P-521) or RSA"))


class _TokenEcKey:
    """An EC private key on the token, shaped as josepy uses a cryptography key: ``public_key()``,
    ``curve`` and ``sign(data, ECDSA(hash))``, which gives DER (r, s) as cryptography's does (josepy
    turns it into JWS's r || s). josepy's wrapper only forwards attributes, so no subclass is needed."""

    def __init__(self, key: RequesterKey, public: ec.EllipticCurvePublicKey) -> None:
        self._key = key
        self._public = public
        self.curve = public.curve
        self.key_size = public.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, data: bytes, signature_algorithm: ec.ECDSA) -> bytes:
        algorithm = signature_algorithm.algorithm
        if not isinstance(algorithm, hashes.HashAlgorithm):  # josepy hashes the message itself
            raise ValueError("the token signs ACME requests over the message, not a digest")
        return self._key.sign(data, algorithm.name)


class _TokenRsaKey:
    """An RSA private key on the token, shaped as josepy's RS256 uses one: ``sign(data, PKCS1v15(), hash)``."""

    def __init__(self, key: RequesterKey, public: rsa.RSAPublicKey) -> None:
        self._key = key
        self._public = public
        self.key_size = public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def sign(self, data: bytes, padding: Any, algorithm: Any) -> bytes:
        if not isinstance(padding, asym_padding.PKCS1v15):  # PS256 would need CKM_RSA_PKCS_PSS
            raise ValueError(f"the token signs ACME requests with RSA PKCS#1 v1.5, not {padding.name}")
        return self._key.sign(data, str(algorithm.name))


def _create_account_key(path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another run made it a moment ago
    except OSError as exc:
        raise _Stop(Misconfigured(f"cannot create the ACME account key {path}: {exc.strerror or exc}")) from None
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
    log.info("ACME account key made: %s", path)


def _csr_pem(der: bytes) -> bytes:
    return x509.load_der_x509_csr(der).public_bytes(Encoding.PEM)


class _Responder:
    """The built-in HTTP-01 responder: /.well-known/acme-challenge/TOKEN -> the key authorization."""

    def __init__(self, server: ThreadingHTTPServer, answers: dict[str, str]) -> None:
        self.server = server
        self.answers = answers
        self.thread = threading.Thread(target=server.serve_forever, name="acme-http-01", daemon=True)
        self.thread.start()

    @classmethod
    def start(cls, address: str, port: int) -> _Responder:
        answers: dict[str, str] = {}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                log.debug("HTTP-01 responder: %s", format % args)

            def do_GET(self) -> None:
                prefix = "/.well-known/acme-challenge/"
                token = self.path[len(prefix) :] if self.path.startswith(prefix) else ""
                body = answers.get(token, "").encode("ascii")
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        try:
            server = ThreadingHTTPServer((address, port), Handler)
        except OSError as exc:
            where = f"{address or '*'}:{port}"
            raise _Stop(Misconfigured(f"cannot listen on {where} for HTTP-01: {exc.strerror or exc}")) from None
        server.daemon_threads = True
        return cls(server, answers)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _status(resource: Any) -> str:
    """An ACME status by its name ("pending", "valid", ...); "" when absent."""
    status = getattr(resource, "status", None)
    return str(status.name) if status is not None else ""
