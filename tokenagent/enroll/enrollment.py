"""`tokenagent enroll`: new (with the agent's co-signature) + submit + accept in one run, and
`enroll --resume`, which finishes what such runs left pending.

One run, one login on the user's token: the session the key is made in is the one the certificate
is installed in. The request is recorded in the pending store together with its CA (state
"unsubmitted") in the transaction that ends the key-generation intent, so whatever happens next
(the CA is down, answers "pending", the process is killed, the card is pulled) leaves a request
that `enroll --resume` finishes, and never an orphan key. The token's lock is held until the
certificate is on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tokenagent.ca.answers import Answer, Issued, error_for
from tokenagent.ca.connector import CaRequest, ca_request, request_public_key_info
from tokenagent.ca.profiles import CaProfile, key_needs, request_attributes
from tokenagent.enroll.accept import AcceptOptions, AcceptResult, accept_response
from tokenagent.enroll.new import (
    NewOptions,
    NewResult,
    enroll,
    facts_needed,
    for_token,
    lock_selection,
    lock_token,
    open_user_session,
    prepare,
    select_for,
)
from tokenagent.enroll.recovery import recover_interrupted
from tokenagent.enroll.submit import (
    CaOptions,
    Exchange,
    check_for_request,
    issued_from_store,
    stored_ca_options,
    stores,
    submission_template,
)
from tokenagent.errors import (
    InputError,
    Interrupted,
    RequestPendingError,
    TokenAgentError,
    UsageError,
)
from tokenagent.store.pending import PendingRequest, PendingStore
from tokenagent.store.submissions import RESUMABLE, CaSubmission, SubmissionStore
from tokenagent.token.library import modules_for, one_listing, recorded_token, select_token
from tokenagent.token.session import TokenSession, open_session
from tokenagent.token.target import ANY_TOKEN, TokenTarget
from tokenagent.token.tokeninfo import gather_facts

if TYPE_CHECKING:
    from tokenagent.enroll.agent import Agent

log = logging.getLogger("tokenagent")
Warn = Callable[[str], None]


@dataclass(frozen=True)
class EnrollOptions:
    new: NewOptions  # the INF, the user's token and PIN, the agent (RequestType = CMC or PKCS7)
    ca: CaOptions = field(default_factory=CaOptions)
    chain: bool = False  # also write the CA certificates onto the token
    run_key_test: bool = True


@dataclass(frozen=True)
class EnrollResult:
    new: NewResult
    profile: CaProfile
    issued: Issued
    accepted: AcceptResult

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "new": self.new.to_json(),  # as `new --json`
            "ca": self.profile.to_json(),
            "answer": self.issued.to_json(),
            "accepted": self.accepted.to_json(),
        }


class EnrollSteps(Protocol):
    """Who hears each step of an enrollment begin and end (the station's journal): "key" (the key
    and its signed request, one token transaction), "submit", "accept". ``started`` may raise to
    stop the enrollment there (a card pulled): before "key" nothing exists yet; later the key and
    request stay as a pending request, which the caller may delete with its key."""

    def started(self, step: str) -> None: ...

    def done(self, step: str, **fields: Any) -> None: ...


def enroll_policy(
    options: EnrollOptions,
    *,
    on_warning: Warn | None = None,
    on_status: Callable[[str], None] | None = None,
    agent: Agent | None = None,
    steps: EnrollSteps | None = None,
) -> EnrollResult:
    """New + submit + accept. Raises the `CAError` of the CA's answer with the request kept pending.

    ``agent``: an agent already logged in (the station logs in to the agent card once per session);
    else `options.new.agent` is opened for this enrollment. ``steps`` hears each step (`EnrollSteps`).
    """
    warn = on_warning or (lambda message: log.warning("%s", message))
    if options.new.dry_run:
        raise UsageError("enroll has no dry run: use tokenagent new --dry-run to see the plan")
    profile = options.ca.resolve()  # a wrong --config fails before any key exists
    pairs = options.ca.pairs()
    needs = key_needs(profile)  # SCEP: an RSA key that decrypts; refused or planned before generation
    attributes = request_attributes(profile)  # SCEP: the challenge password, read before generation
    new_options = replace(
        options.new, submission=submission_template(profile, options.ca), ca_needs=needs, ca_attributes=attributes
    )
    prepared = prepare(new_options, warn)
    with contextlib.ExitStack() as stack:
        stack.enter_context(one_listing())  # the user's token and the agent's from one slot listing
        stack.enter_context(lock_selection(prepared, warn))
        handle = select_for(prepared)
        stack.enter_context(lock_token(prepared, handle, warn))
        if agent is None and new_options.agent is not None:
            from tokenagent.enroll.agent import open_agent

            agent = stack.enter_context(open_agent(new_options.agent, on_warning=warn))
        session = stack.enter_context(open_user_session(prepared, handle, warn))
        recover_interrupted(session, prepared.store_path, on_warning=warn)
        prepared = for_token(prepared, handle)
        facts = gather_facts(session, facts_needed(prepared))
        if steps is not None:
            steps.started("key")
        made = enroll(prepared, session, facts, agent=agent, on_status=on_status)
        assert made.outcome is not None and made.outcome.pending is not None
        pending = made.outcome.pending
        record = (PendingStore(prepared.store_path), pending)
        with _kept_pending(pending):
            if steps is not None:
                steps.done(
                    "key",
                    token_label=handle.label,
                    token_serial=handle.serial,
                    key_id=made.outcome.key_id.hex(),
                    request_sha256=hashlib.sha256(made.outcome.der).hexdigest(),
                    pending_id=pending.id,
                )
                steps.started("submit")
            request = ca_request(made.outcome.der, pairs, "the new request")
            if needs is not None and needs.signs_messages:
                request = lend_key(request, session, made.key_uri() or "")
                request = lend_signers(request, session, prepared.policy.renewal_cert, agent)
            if on_status is not None:  # a CA can take seconds (or its timeout) to answer
                on_status(f"sending the request to {profile.describe()} (pending request {pending.id})...")
            with Exchange(profile, options.ca, record) as exchange:
                answer = exchange.ask(request)
            issued = _issued(answer, profile)
            check_for_request(issued, request, profile)
            if steps is not None:
                steps.done("submit", ca=profile.describe(), ca_request_id=issued.request_id)
                steps.started("accept")
            accepted = accept_response(
                issued.response,
                f"the answer of {profile.describe()}",
                AcceptOptions(
                    target=options.new.target,
                    machine=prepared.plan.machine,
                    chain=options.chain,
                    state_dir=options.new.state_dir,
                    run_key_test=options.run_key_test,
                ),
                on_warning=warn,
                session=session,
            )
            if steps is not None:
                steps.done("accept", certificate_serial=_serial_hex(issued.certificate))
    return EnrollResult(made, profile, issued, accepted)


def _serial_hex(certificate: bytes) -> str:
    from asn1crypto import x509

    return format(x509.Certificate.load(certificate).serial_number, "x")


def _issued(answer: Answer, profile: CaProfile, pending: PendingRequest | None = None) -> Issued:
    """The issued answer, or the error for any other (with ``pending``'s ID in its details)."""
    if isinstance(answer, Issued):
        return answer
    raise error_for(answer, profile.describe(), {"pending_id": pending.id} if pending else None)


@contextlib.contextmanager
def _kept_pending(pending: PendingRequest) -> Iterator[None]:
    """Past this point the key and its request stay: every failure says how to finish later."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted: the key and request stay as pending request {pending.id}; "
            "finish with tokenagent enroll --resume"
        ) from None
    except TokenAgentError as exc:
        if "pending_id" not in exc.details:
            exc.details["pending_id"] = pending.id
            exc.args = (
                f"{exc.message}; the key and request stay as pending request {pending.id} "
                f"(tokenagent enroll --resume {pending.id})",
                *exc.args[1:],
            )
        raise


# -- resume ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumeOptions:
    pending_ids: tuple[int, ...] = ()  # none: every request left with a CA that is due
    ca: CaOptions | None = None  # another CA configuration than the stored one
    target: TokenTarget = ANY_TOKEN  # PIN source and modules for the tokens the keys are on
    state_dir: Path | None = None
    chain: bool = False
    run_key_test: bool = True
    now: bool = False  # ask even before the time the CA gave


@dataclass(frozen=True)
class ResumeItem:
    pending_id: int
    subject: str
    outcome: str  # installed | pending | waiting | failed
    message: str
    error: TokenAgentError | None = None
    accepted: AcceptResult | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pending_id": self.pending_id,
            "subject": self.subject,
            "outcome": self.outcome,
            "message": self.message,
            "error": self.error.to_json() if self.error else None,
            "accepted": self.accepted.to_json() if self.accepted else None,
        }


@dataclass(frozen=True)
class ResumeResult:
    items: tuple[ResumeItem, ...]

    @property
    def exit_code(self) -> int:
        """0 when everything asked about was installed; the first failure's code; else 14 (pending)."""
        for item in self.items:
            if item.error is not None and not isinstance(item.error, RequestPendingError):
                return item.error.exit_code
        if any(item.outcome in ("pending", "waiting") for item in self.items):
            return RequestPendingError.exit_code
        return 0

    def to_json(self) -> dict[str, Any]:
        return {"format_version": 1, "items": [item.to_json() for item in self.items], "exit_code": self.exit_code}


@dataclass
class _Work:
    store: PendingStore
    record: PendingRequest
    submission: CaSubmission | None
    named: bool
    issued: Issued | None = None
    item: ResumeItem | None = None


def resume(options: ResumeOptions, *, on_warning: Warn | None = None) -> ResumeResult:
    """Ask the CA about each request a run left with it; install what was issued, one login per token."""
    warn = on_warning or (lambda message: log.warning("%s", message))
    work = _select(options)
    now = datetime.now(UTC)
    for job in work:
        if job.submission is not None and not (job.named or options.now or job.submission.due(now)):
            assert job.submission.retry_after is not None
            when = f"{job.submission.retry_after:%Y-%m-%d %H:%M:%S} UTC"
            job.item = _item(job, "waiting", f"the CA asked to be asked again after {when} (--now asks anyway)")
            continue
        if _signs_with_key(job, options):
            _ask_with_key(job, options, warn)  # SCEP, CMP: asking again needs the key, so the token first
            continue
        _ask(job, options)
    by_token: dict[tuple[str, str], list[_Work]] = {}
    for job in work:
        if job.issued is not None and job.item is None:
            by_token.setdefault((str(job.store.path), job.record.token_serial), []).append(job)
    for jobs in by_token.values():
        _install(jobs, options, warn)
    return ResumeResult(tuple(job.item for job in work if job.item is not None))


def _select(options: ResumeOptions) -> list[_Work]:
    work: list[_Work] = []
    wanted = set(options.pending_ids)
    # a new CA configuration may fix what the old one could not
    states = RESUMABLE + (("misconfigured", "unverified") if options.ca is not None else ())
    for store in stores(options.state_dir):
        try:
            records = store.list()
            submissions = SubmissionStore(store.path).all()
        except InputError:
            if store is stores(options.state_dir)[0]:
                raise
            continue
        for record in records:
            submission = submissions.get(record.id)
            if options.pending_ids:  # (not `wanted`: once every ID is found it is empty, and the rest must not join)
                if record.id in wanted:
                    work.append(_Work(store, record, submission, named=True))
                    wanted.discard(record.id)
            elif submission is not None and submission.state in states:
                work.append(_Work(store, record, submission, named=False))
    if wanted:
        raise InputError(f"no pending request with ID {', '.join(str(i) for i in sorted(wanted))}")
    return work


def _ca_options(job: _Work, options: ResumeOptions) -> CaOptions | None:
    return options.ca or (stored_ca_options(job.submission) if job.submission is not None else None)


def _signs_with_key(job: _Work, options: ResumeOptions) -> bool:
    """Whether asking the CA again needs the request's key (a protocol that signs its messages)."""
    submission = job.submission
    if submission is not None and submission.state == "issued" and submission.response and options.ca is None:
        return False
    try:
        ca_options = _ca_options(job, options)
        needs = key_needs(ca_options.resolve()) if ca_options is not None else None
    except TokenAgentError:
        return False  # `_ask` reports it
    return needs is not None and needs.signs_messages


def _ask_with_key(job: _Work, options: ResumeOptions, warn: Warn) -> None:
    """Open the key's token, ask the CA with the key lent, and install in the same session."""
    ca_options = _ca_options(job, options)
    assert ca_options is not None
    try:
        profile = ca_options.resolve()
        session = _open(job.record, options.target, warn)
    except TokenAgentError as exc:
        job.item = _item(job, "failed", exc.one_line(), exc)
        return
    with session:
        try:
            request = ca_request(job.record.request_der, ca_options.pairs(), f"pending request {job.record.id}")
            request = lend_key(request, session, "")
            with Exchange(profile, ca_options, (job.store, job.record)) as exchange:
                answer = exchange.ask(request)
            job.issued = _issued(answer, profile, job.record)
            check_for_request(job.issued, request, profile)
        except RequestPendingError as exc:
            job.item = _item(job, "pending", exc.one_line(), exc)
            return
        except TokenAgentError as exc:
            job.item = _item(job, "failed", exc.one_line(), exc)
            return
        _install_in(session, [job], options, warn)


def lend_key(request: CaRequest, session: TokenSession, uri: str) -> CaRequest:
    """``request`` with its key on ``session`` lent for the exchange (`ca.connector.RequesterKey`)."""
    from tokenagent.enroll.requester_key import requester_key

    spki = request_public_key_info(request.der)
    return replace(request, key=requester_key(session, spki, uri))


def lend_signers(request: CaRequest, session: TokenSession, renewal: bytes | None, agent: Agent | None) -> CaRequest:
    """``request`` with the renewed certificate's key (INF RenewalCert, by SHA-1 thumbprint) and the
    agent's key lent too, for protocols that sign with them (SCEP RenewalReq, CMP kur and protection)."""
    from tokenagent.ca.connector import LentSigner
    from tokenagent.enroll.requester_key import TokenRequesterKey
    from tokenagent.token.keypairs import find_key_pair_by_certificate
    from tokenagent.token.objects import private_key_uri

    if renewal is not None:
        old, certificate = find_key_pair_by_certificate(session, renewal)
        uri = private_key_uri(dict(session.handle.uri().path), old.private)
        request = replace(
            request, renewal=LentSigner(certificate, TokenRequesterKey(session, old.private, old.spki, uri))
        )
    if agent is not None:
        from asn1crypto import x509

        spki = x509.Certificate.load(agent.certificate).public_key.dump()
        uri = private_key_uri(dict(agent.session.handle.uri().path), agent.key)
        # the agent's own signer (PKCS#1 v1.5 or ECDSA, as a RequesterKey signs): in the station the card
        # threads share it behind a lock
        algorithm = agent.signer.algorithm
        own = {algorithm.hash: agent.signer} if algorithm.padding != "pss" else {}
        key = TokenRequesterKey(agent.session, agent.key, spki, uri, own)
        request = replace(request, agent=LentSigner(agent.certificate, key))
    return request


def _ask(job: _Work, options: ResumeOptions) -> None:
    submission = job.submission
    try:
        if submission is not None and submission.state == "issued" and submission.response and options.ca is None:
            job.issued = issued_from_store(submission)
            return
        ca_options = options.ca or (stored_ca_options(submission) if submission is not None else None)
        if ca_options is None:
            raise UsageError(f"pending request {job.record.id} was never sent to a CA: give --config")
        profile = ca_options.resolve()
        request = ca_request(job.record.request_der, ca_options.pairs(), f"pending request {job.record.id}")
        with Exchange(profile, ca_options, (job.store, job.record)) as exchange:
            answer = exchange.ask(request)
        job.issued = _issued(answer, profile, job.record)
        check_for_request(job.issued, request, profile)
    except RequestPendingError as exc:
        job.item = _item(job, "pending", exc.one_line(), exc)
    except TokenAgentError as exc:
        job.item = _item(job, "failed", exc.one_line(), exc)


def _install(jobs: list[_Work], options: ResumeOptions, warn: Warn) -> None:
    """All issued certificates of one token, in one session (one login)."""
    first = jobs[0].record
    try:
        session = _open(first, options.target, warn)
    except TokenAgentError as exc:
        for job in jobs:
            job.item = _item(job, "failed", f"the certificate is kept for later: {exc.one_line()}", exc)
        return
    with session:
        _install_in(session, jobs, options, warn)


def _install_in(session: TokenSession, jobs: list[_Work], options: ResumeOptions, warn: Warn) -> None:
    for job in jobs:
        assert job.issued is not None
        try:
            accepted = accept_response(
                job.issued.response,
                f"the CA's answer for pending request {job.record.id}",
                AcceptOptions(
                    target=options.target,
                    machine=job.record.machine,
                    chain=options.chain,
                    state_dir=options.state_dir,
                    run_key_test=options.run_key_test,
                ),
                on_warning=warn,
                session=session,
            )
        except TokenAgentError as exc:
            job.item = _item(job, "failed", exc.one_line(), exc)
            continue
        job.item = _item(job, "installed", accepted.outcome.installed.pair.certificate_uri, accepted=accepted)


def _open(record: PendingRequest, target: TokenTarget, warn: Warn) -> TokenSession:
    selector = recorded_token(record.token_label, record.token_serial)
    modules = modules_for(list(target.modules) or [record.module_path], selector)
    try:
        handle = select_token(selector, modules)
    except TokenAgentError as exc:
        raise type(exc)(
            f"the token of pending request {record.id} ('{record.token_label}', serial {record.token_serial}) "
            f"is not present: insert it ({exc.one_line()})"
        ) from None
    if handle.is_piv:  # the management key writes the certificate into the key's slot
        from tokenagent.enroll.new import open_piv_session

        return open_piv_session(handle, target.so_pin_source, target.pin_source, force=target.force, warn=warn)
    return open_session(handle, login=True, pin_source=target.pin_source, rw=True, force=target.force, on_warning=warn)


def _item(
    job: _Work,
    outcome: str,
    message: str,
    error: TokenAgentError | None = None,
    accepted: AcceptResult | None = None,
) -> ResumeItem:
    return ResumeItem(job.record.id, job.record.subject, outcome, message, error, accepted)
