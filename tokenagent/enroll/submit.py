"""`submit` and `retrieve` (certreq -submit, -retrieve): a request to a CA, its answer to files.

Neither touches a token: `accept` (or `enroll`, which does new + submit + accept in one run)
installs the certificate. What the CA answered is kept with the request's pending record when
there is one (store/submissions.py): the CA, its cookie, when to ask again, and an issued answer
until it is installed, so that `retrieve` and `enroll --resume` can finish later.

Every answer but "issued" ends in the `CAError` subclass `ca.answers.error_for` gives (pending 14,
unreachable 16, garbled 17, misconfigured 18, refused credentials 19, needs a new key 20, rejected
12), carrying the pending ID and the CA's request ID in its details.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tokenagent.ca.answers import Answer, Issued, Misconfigured, NeedsRekey, Pending, Rejected, Unreachable, error_for
from tokenagent.ca.connector import CaRequest, ca_request, certificate_key_sha256
from tokenagent.ca.profiles import CaOverrides, CaProfile, open_connector, parse_attributes, resolve_config
from tokenagent.enroll.files import Staged, check_output, stage
from tokenagent.errors import CAProtocolError, InputError, TokenAgentError, UsageError, VerificationError
from tokenagent.inputs import read_input
from tokenagent.request.armor import read_der
from tokenagent.store.paths import pending_db_path
from tokenagent.store.pending import PendingRequest, PendingStore
from tokenagent.store.submissions import CaSubmission, SubmissionStore

log = logging.getLogger("tokenagent")
Warn = Callable[[str], None]

#: When to ask again after "unreachable" with no Retry-After: a few minutes, growing per attempt.
RETRY_BASE = timedelta(minutes=5)
RETRY_MAX = timedelta(hours=8)


@dataclass(frozen=True)
class CaOptions:
    """Which CA and how (the --config, --cas, --ca-* and --attrib options)."""

    config: str | None = None
    cas_files: tuple[str, ...] = ()
    overrides: CaOverrides = field(default_factory=CaOverrides)
    attributes: tuple[str, ...] = ()  # --attrib texts (certreq: "Name:Value\\nName:Value")

    def resolve(self) -> CaProfile:
        return resolve_config(self.config, cas_files=self.cas_files, overrides=self.overrides)

    def pairs(self) -> tuple[tuple[str, str], ...]:
        return parse_attributes(self.attributes)

    def to_json(self) -> dict[str, Any]:
        """As stored with a pending request: paths absolute, no secret (only the password's source)."""
        overrides = {
            key: (str(Path(value).absolute()) if isinstance(value, Path) else value)
            for key, value in self.overrides.__dict__.items()
            if value is not None
        }
        return {
            "config": self.config,
            "cas_files": [str(Path(f).absolute()) for f in self.cas_files],
            "overrides": overrides,
            "attributes": list(self.attributes),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaOptions:
        overrides = dict(data.get("overrides", {}))
        for key in ("trust", "ca_bundle"):
            if overrides.get(key) is not None:
                overrides[key] = Path(overrides[key])
        return cls(
            config=data.get("config"),
            cas_files=tuple(data.get("cas_files", ())),
            overrides=CaOverrides(**overrides),
            attributes=tuple(data.get("attributes", ())),
        )


@dataclass(frozen=True)
class AnswerFiles:
    """Where an issued answer goes (certreq's CertOut, CertChainOut, FullResponseOut)."""

    certificate: Path | None = None  # PEM certificate
    chain: Path | None = None  # PKCS #7 (PEM) with the certificate and the CA certificates above it
    response: Path | None = None  # the CA's answer as it came (a CMC response, a .p7b, a certificate)
    overwrite: bool = False

    def paths(self) -> list[Path]:
        return [p for p in (self.certificate, self.chain, self.response) if p is not None]


@dataclass(frozen=True)
class SubmitOptions:
    request: Path
    ca: CaOptions = field(default_factory=CaOptions)
    files: AnswerFiles = field(default_factory=AnswerFiles)
    state_dir: Path | None = None


@dataclass(frozen=True)
class RetrieveOptions:
    request_id: str | None = None  # the CA's request ID (certreq -retrieve RequestId)
    pending_id: int | None = None  # or tokenagent's pending ID
    ca: CaOptions = field(default_factory=CaOptions)  # config None: the one the pending request was sent to
    files: AnswerFiles = field(default_factory=AnswerFiles)
    state_dir: Path | None = None


@dataclass(frozen=True)
class Retrieved:
    """An issued answer, where it was written, and the pending request it is for (kept until accepted)."""

    profile: CaProfile
    issued: Issued
    pending: PendingRequest | None
    store: Path | None
    written: tuple[Path, ...]
    from_store: bool = False  # the answer was already in the pending store (the CA was not asked)

    def certificate_pem(self) -> str:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        return x509.load_der_x509_certificate(self.issued.certificate).public_bytes(Encoding.PEM).decode("ascii")

    def to_json(self) -> dict[str, Any]:
        from tokenagent.enroll.linkage import certificate_summary

        return {
            "format_version": 1,
            "ca": self.profile.to_json(),
            "answer": self.issued.to_json(),
            "certificate": certificate_summary(self.issued.certificate, "certificate"),
            "certificate_pem": self.certificate_pem(),
            "chain": len(self.issued.chain),
            "pending_id": self.pending.id if self.pending else None,
            "pending_store": str(self.store) if self.store else None,
            "written": [str(p) for p in self.written],
            "from_store": self.from_store,
        }


# -- the use cases -----------------------------------------------------------------------------------


def submit_request(options: SubmitOptions) -> Retrieved:
    """certreq -submit: send REQUEST to the CA; write the issued answer; raise for any other answer."""
    _check_files(options.files)
    der = read_der(read_input(options.request, "request"), str(options.request))
    profile = options.ca.resolve()
    request = ca_request(der, options.ca.pairs(), str(options.request))
    found = find_pending(request, options.state_dir)
    with Exchange(profile, options.ca, found) as exchange:
        answer = exchange.ask(request, resubmit=True)
    return _finish(profile, answer, request, found, options.files)


def retrieve(options: RetrieveOptions) -> Retrieved:
    """certreq -retrieve: ask the CA about a request it holds, by its request ID or our pending ID."""
    _check_files(options.files)
    found = _find_for_retrieve(options)
    record = (found[0], found[1]) if found else None
    submission = found[2] if found else None
    ca_options = options.ca
    if ca_options.config is None and submission is not None:
        ca_options = stored_ca_options(submission)
    if ca_options.config is None and found is None:
        raise UsageError(f"request {options.request_id} is not in the pending store: give --config for its CA")
    profile = ca_options.resolve()
    if record is not None and submission is not None and submission.state == "issued" and submission.response:
        issued = issued_from_store(submission)
        written = write_answer(issued, options.files)
        return Retrieved(profile, issued, record[1], record[0].path, written, from_store=True)
    request = None
    if record is not None:
        request = ca_request(record[1].request_der, ca_options.pairs(), f"pending request {record[1].id}")
    with Exchange(profile, ca_options, record) as exchange:
        if request is None:
            assert options.request_id is not None
            answer = exchange.connector.poll(options.request_id, None)
        else:
            # a CA request ID given on the command line is the cookie when the record has none
            answer = exchange.ask(request, cookie=None if submission and submission.cookie else options.request_id)
    return _finish(profile, answer, request, record, options.files)


# -- asking ------------------------------------------------------------------------------------------


class Exchange:
    """One CA connection for one or more requests, recording each answer with its pending record."""

    def __init__(
        self, profile: CaProfile, options: CaOptions, record: tuple[PendingStore, PendingRequest] | None
    ) -> None:
        self.profile = profile
        self.options = options
        self.record = record
        self.connector = open_connector(profile)

    def __enter__(self) -> Exchange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.connector.close()

    def ask(self, request: CaRequest, *, resubmit: bool = False, cookie: str | None = None) -> Answer:
        """Submit, or poll with the CA's cookie of a pending answer (``resubmit``: always submit).

        A forged answer (`VerificationError`) is recorded as "unverified" and raised."""
        submission = self._submission()
        cookie = cookie or (submission.cookie if submission is not None and submission.state == "pending" else None)
        try:
            polling = bool(cookie) and not resubmit
            answer = self.connector.poll(cookie or "", request) if polling else self.connector.submit(request)
        except VerificationError as exc:
            self._save(submission, {"state": "unverified", "message": exc.one_line(), "response": None})
            raise
        self._save(submission, _state_of(answer, submission))
        return answer

    def _submission(self) -> CaSubmission | None:
        if self.record is None:
            return None
        store, pending = self.record
        try:
            return SubmissionStore(store.path).get(pending.id)
        except TokenAgentError as exc:
            log.warning("pending request %s: its CA record cannot be read: %s", pending.id, exc.one_line())
            return None

    def _save(self, submission: CaSubmission | None, changes: dict[str, Any]) -> None:
        """Remember what the CA said; a store that cannot be written is a warning, not a lost answer."""
        if self.record is None:
            return
        store, pending = self.record
        base = submission or replace(submission_template(self.profile, self.options), pending_id=pending.id)
        if base.config != self.profile.config:  # sent to another CA this time (--config given)
            base = replace(submission_template(self.profile, self.options), pending_id=pending.id)
        row = replace(base, attempts=base.attempts + 1, **changes)
        try:
            SubmissionStore(store.path).save(row)
        except TokenAgentError as exc:
            log.warning("the CA's answer about pending request %s was not recorded: %s", pending.id, exc.one_line())


# -- the pending store -------------------------------------------------------------------------------


def stores(state_dir: Path | None) -> list[PendingStore]:
    """The user's pending store, then the machine's (as certreq looks in both)."""
    paths = dict.fromkeys(pending_db_path(machine, state_dir) for machine in (False, True))
    return [PendingStore(path) for path in paths]


def find_pending(request: CaRequest, state_dir: Path | None) -> tuple[PendingStore, PendingRequest] | None:
    """The pending request this request is (same bytes), or is for (same key: co-signed later)."""
    candidates = stores(state_dir)
    for finder in ("request", "key"):
        for store in candidates:
            try:
                if finder == "request":
                    found = store.find_by_request(request.sha256)
                else:
                    found = store.find_by_public_key(request.public_key_sha256)
            except InputError as exc:
                if store is candidates[0]:
                    raise
                log.info("machine pending store not read: %s", exc.one_line())
                continue
            if found:
                return store, found[-1]
    return None


def _find_for_retrieve(
    options: RetrieveOptions,
) -> tuple[PendingStore, PendingRequest, CaSubmission | None] | None:
    if (options.request_id is None) == (options.pending_id is None):
        raise UsageError("give the CA's request ID, or --pending with tokenagent's pending ID")
    if options.pending_id is not None:
        for store in stores(options.state_dir):
            for record in store.list():
                if record.id == options.pending_id:
                    return store, record, SubmissionStore(store.path).get(record.id)
        raise InputError(f"no pending request with ID {options.pending_id}")
    assert options.request_id is not None
    matches: list[tuple[PendingStore, PendingRequest, CaSubmission | None]] = []
    for store in stores(options.state_dir):
        for submission in SubmissionStore(store.path).find_by_ca_request_id(options.request_id):
            matches.append((store, store.get(submission.pending_id), submission))
    if options.ca.config is not None:
        matches = [m for m in matches if m[2] is not None and m[2].config == options.ca.config] or matches
    if len(matches) > 1:
        listed = ", ".join(f"{m[1].id} ({m[2].config if m[2] else '?'})" for m in matches)
        raise UsageError(f"CA request {options.request_id} matches pending requests {listed}: use --pending ID")
    return matches[0] if matches else None


def stored_ca_options(submission: CaSubmission) -> CaOptions:
    try:
        data = json.loads(submission.profile_json)
        return CaOptions.from_json(data["options"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"pending request {submission.pending_id}: its CA record cannot be read ({exc})") from None


def submission_template(profile: CaProfile, options: CaOptions) -> CaSubmission:
    """A row for a request about to be sent (`enroll` records it with the request)."""
    stored = replace(options, config=profile.config)
    data = {"options": stored.to_json(), "profile": profile.to_json()}
    return CaSubmission(0, profile.config, json.dumps(data), "unsubmitted")


def _state_of(answer: Answer, base: CaSubmission | None) -> dict[str, Any]:
    now = datetime.now(UTC)
    attempts = base.attempts if base else 0
    if isinstance(answer, Issued):
        return {
            "state": "issued",
            "message": None,
            "retry_after": None,
            "response": answer.response,
            "ca_request_id": answer.request_id or (base.ca_request_id if base else None),
        }
    if isinstance(answer, Pending):
        return {
            "state": "pending",
            "cookie": answer.cookie,
            "ca_request_id": answer.request_id,
            "retry_after": answer.retry_after,
            "message": answer.message,
            "response": None,
        }
    if isinstance(answer, Unreachable):
        backoff = min(RETRY_BASE * (2 ** min(attempts, 8)), RETRY_MAX)
        return {
            "state": "garbled" if answer.garbled else "unreachable",
            "retry_after": answer.retry_after or now + backoff,
            "message": answer.message,
        }
    states = {Rejected: "rejected", Misconfigured: "misconfigured", NeedsRekey: "needs-rekey"}
    return {"state": states[type(answer)], "retry_after": None, "message": answer.message, "response": None}


def issued_from_store(submission: CaSubmission) -> Issued:
    """The issued answer kept in the store, read again as `accept` would read it."""
    from tokenagent.request.response import read_response

    assert submission.response is not None
    response = read_response(submission.response, f"the CA answer kept for pending request {submission.pending_id}")
    leaves = response.end_entities()
    if not leaves:
        raise InputError(f"the CA answer kept for pending request {submission.pending_id} holds no certificate")
    leaf = leaves[0]
    return Issued(leaf, tuple(response.chain_for(leaf)), submission.response, response.form, submission.ca_request_id)


# -- answers to files ----------------------------------------------------------------------------------


def _finish(
    profile: CaProfile,
    answer: Answer,
    request: CaRequest | None,
    found: tuple[PendingStore, PendingRequest] | None,
    files: AnswerFiles,
) -> Retrieved:
    details: dict[str, object] = {"pending_id": found[1].id} if found else {}
    if not isinstance(answer, Issued):
        raise error_for(answer, profile.describe(), details)
    check_for_request(answer, request, profile)
    written = write_answer(answer, files)
    return Retrieved(profile, answer, found[1] if found else None, found[0].path if found else None, written)


def check_for_request(issued: Issued, request: CaRequest | None, profile: CaProfile) -> None:
    """The CA's certificate must be for the request's key: anything else is not our answer."""
    if request is None:
        return
    if certificate_key_sha256(issued.certificate) != request.public_key_sha256:
        raise CAProtocolError(
            f"{profile.describe()} answered with a certificate for another key than the request's; nothing written"
        )


def _check_files(files: AnswerFiles) -> None:
    paths = files.paths()
    if len({p.absolute() for p in paths}) != len(paths):
        raise UsageError("CERT, CHAIN and RESPONSE must be different files")
    for path in paths:
        check_output(path, files.overwrite)


def write_answer(issued: Issued, files: AnswerFiles) -> tuple[Path, ...]:
    """All of CERT, CHAIN, RESPONSE or none: temporary files first, renamed at the end."""
    contents: list[tuple[Path, bytes]] = []
    if files.certificate is not None:
        contents.append((files.certificate, _pem_certificate(issued.certificate)))
    if files.chain is not None:
        contents.append((files.chain, _pem_chain(issued.certificate, issued.chain)))
    if files.response is not None:
        contents.append((files.response, issued.response))
    staged: list[Staged] = []
    try:
        for path, data in contents:
            staged.append(stage(path, data))
        for item in staged:
            item.commit()
    finally:
        for item in staged:
            item.discard()
    return tuple(path for path, _ in contents)


def _pem_certificate(der: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)


def _pem_chain(certificate: bytes, chain: Sequence[bytes]) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

    loaded = [x509.load_der_x509_certificate(der) for der in (certificate, *chain)]
    return pkcs7.serialize_certificates(loaded, Encoding.PEM)
