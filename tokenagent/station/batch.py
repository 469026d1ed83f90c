"""`tokenagent batch`: many requests on one token or HSM partition, one CSV row each.

The INF's [Strings] section names the values that change from row to row (``%host%``); the CSV
has one column per string and one row per request. Everything that can be wrong with the inputs
is found before the first key exists: the CSV's shape (file:line), a column that names no string
or a string that no column fills, a row whose INF does not parse once filled in, two rows with
the same values or the same output name, an output directory that cannot be written.

Then `enroll.batch.NewBatch` makes the requests: one login and one reading of the token's facts
for the whole run, each request all or nothing (`enroll.new._Transaction`), each written to
``--out DIR`` as NAME.req (NAME from ``--name-column``, else ``row-N``). Every row is journaled
(station/journal.py): "key started" before the key is made, "key done" + "request done" with the
CKA_ID and the request's SHA-256 after, or "key failed" with the error.

Resuming: a row is done when the journal holds a "request done" event with the same row key:
SHA-256 over the INF's bytes, the row's values, the ``--token`` value and the output directory.
A re-run skips those rows. A run killed at any moment leaves one of: an open key intent (the
next run's recovery on the token deletes the key: enroll/recovery.py), a request recorded in the
pending store whose file is still the temporary ``.NAME.req.*.tmp`` or already renamed while the
journal has no "done" for it (this module finishes the rename and journals the row as done,
recognising the request by its SHA-256 in the pending store), or a temporary file with no
record (deleted). So a killed run and a re-run end with exactly one key and one request per row.

``jobs``: a module loaded without `library.use_os_locking` gets C_Initialize(NULL_PTR), which
tells it the application will not call it from several threads at once, and SoftHSM then runs without its mutexes
(SoftHSM::C_Initialize disables its MutexFactory). So the token work of the workers is
serialized by one lock; what runs in parallel is the rest of each row (journal transactions,
recovery checks). docs/station.md (batch) has the measured effect.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenagent.enroll.batch import NewBatch
from tokenagent.enroll.new import NewOptions, NewResult
from tokenagent.enroll.submit import CaOptions
from tokenagent.errors import (
    InputError,
    Interrupted,
    ModuleError,
    OutputError,
    PinError,
    PolicyError,
    TokenAgentError,
    TokenNotFoundError,
    UsageError,
)
from tokenagent.inf.lexer import string_names
from tokenagent.inf.policy import RequestPolicy, parse_policy
from tokenagent.inputs import read_input
from tokenagent.station.journal import Attempt, Journal, JournalEvent, error_fields, journal_path
from tokenagent.store.paths import pending_db_path
from tokenagent.token.target import ANY_TOKEN, TokenTarget

if TYPE_CHECKING:  # the CA rooms are imported only by a batch with --config
    from tokenagent.ca.answers import Issued
    from tokenagent.ca.connector import KeyNeeds
    from tokenagent.ca.profiles import CaProfile
    from tokenagent.store.submissions import CaSubmission

log = logging.getLogger("tokenagent")
Warn = Callable[[str], None]

#: A row's name becomes a file name: nothing that could leave the output directory or hide.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,200}")
#: Errors after which no later row can do better: the batch stops (the rows not run are reported).
FATAL = (PinError, TokenNotFoundError, ModuleError, Interrupted)
MAX_JOBS = 16


@dataclass(frozen=True)
class BatchRow:
    number: int  # 1-based, data rows only
    line: int  # line of the CSV file the row starts on
    values: tuple[tuple[str, str], ...]  # (column as written, value), in column order
    name: str  # the output file's stem
    key: str = ""  # the journal's row key (see the module docstring)

    @property
    def strings(self) -> tuple[tuple[str, str], ...]:
        return self.values

    def to_json(self) -> dict[str, Any]:
        return {"row": self.number, "line": self.line, "name": self.name, "values": dict(self.values)}


@dataclass(frozen=True)
class BatchItems:
    """The checked inputs: the INF's bytes and every row, ready to run."""

    policy: Path
    policy_sha256: str
    items: Path
    rows: tuple[BatchRow, ...]
    name_column: str | None
    machine: bool  # MachineKeySet of the INF (first row): which state directory


@dataclass(frozen=True)
class BatchOptions:
    policy: Path
    items: Path
    out: Path
    target: TokenTarget = ANY_TOKEN
    name_column: str | None = None
    jobs: int = 1
    providers: Sequence[str | Path] = ()
    machine: bool | None = None
    state_dir: Path | None = None
    binary: bool = False
    #: --config: each request is also sent to this CA and the certificate installed next to its key
    ca: CaOptions | None = None


@dataclass(frozen=True)
class RowResult:
    row: BatchRow
    outcome: str  # made | recovered | installed | skipped | failed | not-run
    output: Path | None = None
    key_id: str | None = None
    request_sha256: str | None = None
    private_key_uri: str | None = None
    seconds: float = 0.0
    error: TokenAgentError | None = None
    ca_request_id: str | None = None  # --config
    certificate_serial: str | None = None  # --config: hex

    def to_json(self) -> dict[str, Any]:
        return {
            **self.row.to_json(),
            "outcome": self.outcome,
            "ca_request_id": self.ca_request_id,
            "certificate_serial": self.certificate_serial,
            "output": str(self.output) if self.output else None,
            "key_id": self.key_id,
            "request_sha256": self.request_sha256,
            "private_key_uri": self.private_key_uri,
            "seconds": round(self.seconds, 4),
            "error": self.error.to_json() if self.error else None,
        }


@dataclass(frozen=True)
class BatchResult:
    batch_id: str
    items: BatchItems
    out: Path
    jobs: int
    journal: Path
    rows: tuple[RowResult, ...]
    seconds: float
    token_label: str | None = None
    token_serial: str | None = None
    stopped_by: TokenAgentError | None = None  # a fatal error: the rows after it were not run
    ca: str | None = None  # --config: the CA, as `CaProfile.describe` names it

    def count(self, outcome: str) -> int:
        return sum(1 for row in self.rows if row.outcome == outcome)

    @property
    def made(self) -> int:
        return self.count("made") + self.count("recovered") + self.count("installed")

    @property
    def rate(self) -> float | None:
        """Requests made per second of this run (skipped rows not counted)."""
        return self.made / self.seconds if self.made and self.seconds > 0 else None

    @property
    def exit_code(self) -> int:
        if self.stopped_by is not None:
            return self.stopped_by.exit_code
        for row in self.rows:
            if row.error is not None:
                return row.error.exit_code
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "batch": self.batch_id,
            "policy_file": str(self.items.policy),
            "policy_sha256": self.items.policy_sha256,
            "items": str(self.items.items),
            "out": str(self.out),
            "jobs": self.jobs,
            "ca": self.ca,
            "journal": str(self.journal),
            "token": {"label": self.token_label, "serial": self.token_serial} if self.token_serial else None,
            "counts": {
                outcome: self.count(outcome)
                for outcome in ("made", "recovered", "installed", "skipped", "failed", "not-run")
            },
            "seconds": round(self.seconds, 3),
            "requests_per_second": round(self.rate, 2) if self.rate else None,
            "rows": [row.to_json() for row in self.rows],
            "error": self.stopped_by.to_json() if self.stopped_by else None,
            "exit_code": self.exit_code,
        }


# -- the inputs ------------------------------------------------------------------------------------


def read_items(policy: Path, items: Path, *, name_column: str | None = None) -> BatchItems:
    """Read and check the INF and the CSV together; every problem is a file:line error."""
    policy_data = read_input(policy, "INF file")
    strings = string_names(policy_data, str(policy))
    header, header_line, records = _read_csv(items)
    naming = _check_columns(policy, items, header, header_line, strings, name_column)
    rows: list[BatchRow] = []
    seen_values: dict[tuple[tuple[str, str], ...], int] = {}
    seen_names: dict[str, int] = {}
    first_policy: RequestPolicy | None = None
    for number, (line, record) in enumerate(records, start=1):
        values = tuple(zip(header, record, strict=True))
        for column, value in values:
            if any(ord(char) < 32 or 127 <= ord(char) < 160 for char in value):
                raise InputError(f"{items}:{line}: column {column!r}: a control character (a line break?) in the value")
        canonical = tuple(sorted((column.lower(), value) for column, value in values))
        if canonical in seen_values:
            raise InputError(f"{items}:{line}: the same values as line {seen_values[canonical]}")
        seen_values[canonical] = line
        name = _row_name(items, line, number, values, naming)
        if name.lower() in seen_names:
            raise InputError(f"{items}:{line}: output name {name!r} is also line {seen_names[name.lower()]}'s")
        seen_names[name.lower()] = line
        substituted = tuple((column, value) for column, value in values if column.lower() in strings)
        try:
            parsed = parse_policy(policy_data, str(policy), strings=dict(substituted))
        except TokenAgentError as exc:
            exc.args = (f"{items}:{line}: {exc.message}", *exc.args[1:])  # same class and exit code
            raise exc from None
        first_policy = first_policy or parsed
        rows.append(BatchRow(number=number, line=line, values=substituted, name=name))
    if not rows:
        raise InputError(f"{items}: no rows after the header line")
    assert first_policy is not None
    return BatchItems(
        policy=policy,
        policy_sha256=hashlib.sha256(policy_data).hexdigest(),
        items=items,
        rows=tuple(rows),
        name_column=name_column,
        machine=first_policy.machine_key_set,
    )


def _check_columns(
    policy: Path,
    items: Path,
    header: list[str],
    header_line: int,
    strings: dict[str, tuple[str, int]],
    name_column: str | None,
) -> str | None:
    """Every column fills a string (or names the files), every string has its column."""
    columns = {column.lower(): column for column in header}
    if name_column is not None and name_column.lower() not in columns:
        raise UsageError(f"--name-column {name_column!r}: {items} has no such column ({', '.join(header)})")
    naming = name_column.lower() if name_column is not None else None
    for column in header:
        if column.lower() not in strings and column.lower() != naming:
            raise InputError(
                f"{items}:{header_line}: column {column!r} names no string in the [Strings] section of {policy}"
                + (f" (its strings: {', '.join(name for name, _ in strings.values())})" if strings else "")
            )
    for lower, (name, line) in strings.items():
        if lower not in columns:
            raise PolicyError(f"{policy}:{line}: [Strings] {name} has no column in {items}")
    return naming


def _read_csv(items: Path) -> tuple[list[str], int, list[tuple[int, list[str]]]]:
    data = read_input(items, "CSV file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{items}:{line}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    header_line = 0
    records: list[tuple[int, list[str]]] = []
    previous = 0
    try:
        for record in reader:
            line, previous = previous + 1, reader.line_num
            if not record or all(not field.strip() for field in record):
                continue  # blank lines between rows
            if header is None:
                header, header_line = [column.strip() for column in record], line
                _check_header(items, line, header)
                continue
            if len(record) != len(header):
                raise InputError(f"{items}:{line}: {len(record)} fields, the header has {len(header)}")
            records.append((line, record))
    except csv.Error as exc:
        raise InputError(f"{items}:{reader.line_num}: not CSV: {exc}") from None
    if header is None:
        raise InputError(f"{items}: empty: a header line naming the [Strings] is needed")
    return header, header_line, records


def _check_header(items: Path, line: int, header: list[str]) -> None:
    seen: set[str] = set()
    for column in header:
        if not column:
            raise InputError(f"{items}:{line}: an empty column name in the header")
        if column.lower() in seen:
            raise InputError(f"{items}:{line}: column {column!r} twice in the header")
        seen.add(column.lower())


def _row_name(items: Path, line: int, number: int, values: tuple[tuple[str, str], ...], naming: str | None) -> str:
    if naming is None:
        return f"row-{number}"
    value = next(value for column, value in values if column.lower() == naming)
    if not _FILE_NAME.fullmatch(value):
        raise InputError(
            f"{items}:{line}: {value!r} cannot name a file (letters, digits and . _ @ + - only, not first '.')"
        )
    return value


def row_key(items: BatchItems, row: BatchRow, selector: str | None, out: Path) -> str:
    """What makes a row the same row on a re-run: the INF's bytes, the values, the token asked for
    and the output directory (another directory or token is another batch)."""
    document = {
        "v": 1,
        "policy_sha256": items.policy_sha256,
        "values": sorted([column.lower(), value] for column, value in row.values),
        "name": row.name,
        "token": selector or "",
        "out": str(out.resolve()),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


# -- the run ---------------------------------------------------------------------------------------

Progress = Callable[[RowResult, int, int], None]  # a row's result, rows finished, rows in all


@dataclass
class _Run:
    options: BatchOptions
    items: BatchItems
    journal: Journal
    store_path: Path
    batch: NewBatch
    batch_id: str
    on_progress: Progress | None
    total: int
    token_lock: threading.Lock = field(default_factory=threading.Lock)
    result_lock: threading.Lock = field(default_factory=threading.Lock)
    results: list[RowResult] = field(default_factory=list)
    positions: dict[int, int] = field(default_factory=dict)  # row number -> index in results
    token_label: str | None = None
    token_serial: str | None = None
    stopped_by: TokenAgentError | None = None
    #: rows an earlier run started and never finished: only their files may be adopted
    interrupted: set[str] = field(default_factory=set)
    ca: _CaPlan | None = None
    warn: Warn = field(default=lambda message: log.warning("%s", message))
    #: --config: rows whose request exists (recovered now) but whose certificate is not installed yet
    to_resume: list[tuple[BatchRow, str | None, str | None]] = field(default_factory=list)
    #: rows whose key and request exist, until reported: a Ctrl-C that lands after the request was
    #: made (in the journal's commit, say) still counts the row (`_one`)
    in_hand: dict[int, RowResult] = field(default_factory=dict)
    #: the row the queue ends with: its request makes no spare key pair (enroll/spares.py)
    last_row: int | None = None

    def report(self, result: RowResult) -> None:
        """A row's result; a later one for the same row (the resume pass after `recovered`) replaces it."""
        with self.result_lock:
            place = self.positions.get(result.row.number)
            self.in_hand.pop(result.row.number, None)
            if place is not None:
                self.results[place] = result
            else:
                self.positions[result.row.number] = len(self.results)
                self.results.append(result)
            if self.on_progress is not None:
                self.on_progress(result, len(self.results), self.total)

    def output(self, row: BatchRow) -> Path:
        return self.options.out / f"{row.name}.req"

    def context(self, row: BatchRow) -> dict[str, Any]:
        """What every journal event of ``row`` carries."""
        return {
            "batch": self.batch_id,
            "source": f"{self.items.items}:{row.line}",
            "row_key": row.key,
            "user": row.name,
            "output": str(self.output(row)),
            "token_label": self.token_label,
            "token_serial": self.token_serial,
        }

    def make(self, row: BatchRow) -> RowResult:
        """One row: recovered from an interrupted run, or made; journaled either way."""
        started = time.monotonic()
        output = self.output(row)
        with self.journal.attempt(**self.context(row)) as attempt:
            found = self._finish_interrupted(output) if row.key in self.interrupted else None
            if found is not None:
                key_id, digest = found
                attempt.note(key_id=key_id, request_sha256=digest, message="finished after an interrupted run")
                attempt.events(("request", "done"))
                if self.ca is not None:  # its CA part is done by the resume pass at the end
                    self.to_resume.append((row, key_id, digest))
                return RowResult(row, "recovered", output, key_id, digest, seconds=time.monotonic() - started)
            attempt.event("key", "started")
            options = NewOptions(
                policy=self.options.policy,
                output=output,
                binary=self.options.binary,
                target=self.options.target,
                providers=self.options.providers,
                machine=self.options.machine,
                state_dir=self.options.state_dir,
                strings=row.strings,
                submission=self.ca.submission if self.ca else None,
                ca_needs=self.ca.needs if self.ca else None,
                ca_attributes=self.ca.attributes if self.ca else (),
            )
            try:
                with self.token_lock:  # the URI reads CK_TOKEN_INFO: a token call, so under the lock too
                    made = self.batch.new(options, more=row.number != self.last_row)
                    assert made.outcome is not None
                    digest = hashlib.sha256(made.outcome.der).hexdigest()
                    key_id = made.outcome.key_id.hex()
                    self.in_hand[row.number] = RowResult(row, "made", output, key_id, digest, seconds=0.0)
                    key_uri = _key_uri(made)
                result = RowResult(row, "made", output, key_id, digest, key_uri, seconds=0.0)
                self.in_hand[row.number] = result
            except BaseException as exc:
                attempt.event("key", "failed", **error_fields(exc))
                raise
            try:
                self.token_label, self.token_serial = made.token.label, made.token.serial
                attempt.note(
                    token_label=made.token.label, token_serial=made.token.serial, key_id=key_id, request_sha256=digest
                )
                attempt.events(("key", "done"), ("request", "done"))
            except KeyboardInterrupt:
                # the key and its request exist: the summary counts the row; the next run journals it as done
                self.report(result)
                raise
            if self.ca is None:
                return RowResult(row, "made", output, key_id, digest, key_uri, seconds=time.monotonic() - started)
            try:
                issued, serial = self._submit_and_accept(attempt, made, self.ca)
            except FATAL:
                raise
            except TokenAgentError as exc:  # the key and its request stay pending: say which they are
                seconds = time.monotonic() - started
                return RowResult(row, "failed", output, key_id, digest, key_uri, seconds, error=exc)
        return RowResult(
            row,
            "installed",
            output,
            key_id,
            digest,
            key_uri,
            seconds=time.monotonic() - started,
            ca_request_id=issued.request_id,
            certificate_serial=serial,
        )

    def _submit_and_accept(self, attempt: Attempt, made: NewResult, ca: _CaPlan) -> tuple[Issued, str]:
        """`enroll`'s second half for one row: the CA, then the certificate into the session the key
        was made in. A failure leaves the key and its request pending (`enroll --resume` finishes)."""
        from tokenagent.ca.answers import Issued
        from tokenagent.ca.answers import error_for as ca_error_for
        from tokenagent.ca.connector import ca_request
        from tokenagent.enroll.accept import AcceptOptions, accept_response
        from tokenagent.enroll.enrollment import lend_key
        from tokenagent.enroll.submit import Exchange, check_for_request
        from tokenagent.store.pending import PendingStore

        assert made.outcome is not None and made.outcome.pending is not None
        pending = made.outcome.pending
        try:
            with attempt.step("submit", ca=ca.profile.describe()):
                request = ca_request(made.outcome.der, ca.pairs, "the new request")
                # a protocol that signs its messages with the request's key (SCEP, CMP) needs the token
                signs = ca.needs is not None and ca.needs.signs_messages
                with self.token_lock if signs else contextlib.nullcontext():
                    if signs:
                        request = lend_key(request, self.batch.session_for(made.token), made.key_uri() or "")
                    with Exchange(ca.profile, ca.options, (PendingStore(self.store_path), pending)) as exchange:
                        answer = exchange.ask(request)
                if not isinstance(answer, Issued):
                    raise ca_error_for(answer, ca.profile.describe(), {"pending_id": pending.id})
                check_for_request(answer, request, ca.profile)
                attempt.note(ca_request_id=answer.request_id)
            with attempt.step("accept"), self.token_lock:
                accept_response(
                    answer.response,
                    f"the answer of {ca.profile.describe()}",
                    AcceptOptions(
                        target=self.options.target, machine=made.plan.machine, state_dir=self.options.state_dir
                    ),
                    on_warning=self.warn,
                    session=self.batch.session_for(made.token),
                )
                serial = f"{_certificate_serial(answer.certificate):x}"
                attempt.note(certificate_serial=serial)
        except TokenAgentError as exc:
            if "pending_id" not in exc.details:
                exc.details["pending_id"] = pending.id
                exc.args = (
                    f"{exc.message}; the key and request stay as pending request {pending.id} "
                    f"(tokenagent enroll --resume {pending.id})",
                    *exc.args[1:],
                )
            raise
        return answer, serial

    def _finish_interrupted(self, output: Path) -> tuple[str, str] | None:
        """A request an interrupted run recorded in the pending store but did not journal as done:
        its file is the temporary one (renamed now) or already in place. (key id, request SHA-256)."""
        from tokenagent.request.armor import read_der
        from tokenagent.store.pending import PendingStore

        candidates = [output] if os.path.lexists(output) else []
        candidates += sorted(output.parent.glob(f".{glob_escape(output.name)}.*.tmp"))
        if not candidates:
            return None
        found: tuple[str, str] | None = None
        store = PendingStore(self.store_path)
        for path in candidates:
            temporary = path != output
            try:
                der = read_der(path.read_bytes())
            except (OSError, TokenAgentError):
                der = None
            digest = hashlib.sha256(der).hexdigest() if der is not None else None
            records = store.find_by_request(digest) if digest is not None and found is None else []
            if records:
                if temporary and not os.path.lexists(output):
                    os.replace(path, output)
                elif temporary:
                    path.unlink(missing_ok=True)
                assert digest is not None
                found = (records[-1].key_id, digest)
            elif temporary:
                path.unlink(missing_ok=True)  # a file the interrupted run never recorded
        return found


def _certificate_serial(der: bytes) -> int:
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


@dataclass(frozen=True)
class _CaPlan:
    """--config, resolved before any key is made (a wrong CA fails first), as `enroll` does."""

    options: CaOptions
    profile: CaProfile
    pairs: tuple[tuple[str, str], ...]
    needs: KeyNeeds | None
    attributes: tuple[Any, ...]
    submission: CaSubmission

    @classmethod
    def resolve(cls, options: CaOptions) -> _CaPlan:
        from tokenagent.ca.profiles import key_needs, request_attributes
        from tokenagent.enroll.submit import submission_template

        profile = options.resolve()
        pairs = options.pairs()
        needs = key_needs(profile)
        attributes = tuple(request_attributes(profile))
        return cls(options, profile, tuple(pairs), needs, attributes, submission_template(profile, options))


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _key_uri(made: NewResult) -> str | None:
    try:
        return made.key_uri("private")
    except Exception:  # the URI is a convenience for the summary; the request is made
        return None


def run_batch(
    options: BatchOptions,
    *,
    items: BatchItems | None = None,
    on_progress: Progress | None = None,
    on_warning: Warn | None = None,
) -> BatchResult:
    """Run the rows not yet done. Row errors are reported per row; a fatal error (PIN, token,
    module, interrupt) stops the batch and is returned as `BatchResult.stopped_by`."""
    if not 1 <= options.jobs <= MAX_JOBS:
        raise UsageError(f"--jobs {options.jobs}: give 1 to {MAX_JOBS}")
    items = items or read_items(options.policy, options.items, name_column=options.name_column)
    _prepare_out(options.out)
    ca = _CaPlan.resolve(options.ca) if options.ca is not None else None  # a wrong --config fails first
    machine = items.machine if options.machine is None else options.machine
    store_path = pending_db_path(machine, options.state_dir)
    journal = Journal.open(journal_path(machine, options.state_dir))
    rows = [_with_key(row, row_key(items, row, options.target.selector, options.out)) for row in items.rows]
    done, seen = journal.progress([row.key for row in rows])
    final = "accept" if ca is not None else "request"
    warned: set[str] = set()
    warn = on_warning or (lambda message: log.warning("%s", message))

    def warn_once(message: str) -> None:  # the same INF warning would come once per row
        if message not in warned:
            warned.add(message)
            warn(message)

    started = time.monotonic()
    batch_id = uuid.uuid4().hex[:16]
    with NewBatch(on_warning=warn_once) as batch:
        run = _Run(options, items, journal, store_path, batch, batch_id, on_progress, len(rows), ca=ca, warn=warn_once)
        run.interrupted = {key for key in seen if "request" not in done.get(key, {})}
        todo: list[BatchRow] = []
        for row in rows:
            steps = done.get(row.key, {})
            if final in steps:
                run.report(_skipped(row, steps[final]))
            elif "request" in steps:  # --config: the request exists; the resume pass asks the CA
                event = steps["request"]
                run.to_resume.append((row, event.get("key_id"), event.get("request_sha256")))
            else:
                todo.append(row)
        if todo:
            _work(run, todo, options.jobs)
    if run.to_resume and run.stopped_by is None:
        _resume_rows(run)  # after the batch's session is closed: `resume` opens its own
    by_number = {result.row.number: result for result in run.results}
    ordered = tuple(by_number.get(row.number) or RowResult(row, "not-run") for row in rows)
    return BatchResult(
        batch_id=run.batch_id,
        items=items,
        out=options.out,
        jobs=options.jobs,
        journal=journal.path,
        rows=ordered,
        seconds=time.monotonic() - started,
        token_label=run.token_label,
        token_serial=run.token_serial,
        stopped_by=run.stopped_by,
        ca=ca.profile.describe() if ca is not None else None,
    )


def _skipped(row: BatchRow, event: JournalEvent) -> RowResult:
    output = event.get("output")
    return RowResult(
        row,
        "skipped",
        Path(output) if output else None,
        event.get("key_id"),
        event.get("request_sha256"),
        ca_request_id=event.get("ca_request_id"),
        certificate_serial=event.get("certificate_serial"),
    )


def _resume_rows(run: _Run) -> None:
    """--config: rows whose request an earlier run made but whose certificate is not installed
    (the CA was down, said pending, the run died): `enroll --resume`'s machinery, one login."""
    from tokenagent.enroll.enrollment import ResumeOptions, resume
    from tokenagent.errors import RequestPendingError
    from tokenagent.store.pending import PendingStore

    assert run.ca is not None
    store = PendingStore(run.store_path)
    waiting: dict[int, tuple[BatchRow, str | None, str | None]] = {}
    for row, key_id, digest in run.to_resume:
        records = store.find_by_request(digest) if digest else []
        if records:
            waiting[records[-1].id] = (row, key_id, digest)
            continue
        with run.journal.attempt(**run.context(row), key_id=key_id, request_sha256=digest) as attempt:
            # accept deletes the pending record: without one, the certificate went onto the token
            attempt.note(message="no pending record left: installed by an earlier run")
            attempt.events(("accept", "done"))
        run.report(RowResult(row, "installed", run.output(row), key_id, digest))
    if not waiting:
        return
    options = ResumeOptions(
        pending_ids=tuple(waiting),
        ca=run.ca.options,
        target=run.options.target,
        state_dir=run.options.state_dir,
        now=True,
    )
    try:
        result = resume(options, on_warning=run.warn)
    except FATAL as exc:
        run.stopped_by = exc
        return
    for item in result.items:
        if item.pending_id not in waiting:  # only the IDs asked for are ours to report
            continue
        row, key_id, digest = waiting[item.pending_id]
        context = {**run.context(row), "key_id": key_id, "request_sha256": digest, "ca": run.ca.profile.describe()}
        with run.journal.attempt(**context) as attempt:
            if item.outcome == "installed":
                attempt.note(message=f"pending request {item.pending_id} finished by this run")
                attempt.events(("submit", "done"), ("accept", "done"))
                run.report(RowResult(row, "installed", run.output(row), key_id, digest))
                continue
            error = item.error or RequestPendingError(item.message)
            attempt.event("submit", "failed", **error_fields(error))
            run.report(RowResult(row, "failed", run.output(row), key_id, digest, error=error))


def _with_key(row: BatchRow, key: str) -> BatchRow:
    return BatchRow(row.number, row.line, row.values, row.name, key)


def _prepare_out(out: Path) -> None:
    if os.path.lexists(out) and not out.is_dir():
        raise OutputError(f"--out {out}: not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot make output directory {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in output directory {out}")


def _one(run: _Run, row: BatchRow) -> bool:
    """Run one row; False when the batch must stop."""
    try:
        run.report(run.make(row))
        return True
    except KeyboardInterrupt:
        made = run.in_hand.get(row.number)
        if made is not None:  # interrupted after its request was made: the row is made, not rolled back
            run.report(made)
        run.stopped_by = run.stopped_by or Interrupted("interrupted: the row in progress was rolled back")
        return False
    except FATAL as exc:
        run.stopped_by = run.stopped_by or exc
        return False
    except TokenAgentError as exc:
        run.report(RowResult(row, "failed", error=exc))
        return True


def _work(run: _Run, todo: list[BatchRow], jobs: int) -> None:
    run.last_row = todo[-1].number if todo else None
    if jobs == 1 or len(todo) == 1:
        for row in todo:  # in this thread, so Ctrl-C interrupts the row itself (and its rollback runs)
            if not _one(run, row):
                return
        return
    _work_threaded(run, todo, jobs)


def _work_threaded(run: _Run, todo: list[BatchRow], jobs: int) -> None:
    queue = list(reversed(todo))
    queue_lock = threading.Lock()
    stop = threading.Event()

    # Each worker says it is done through its own Event, not Thread.join: a Ctrl-C that lands inside
    # Thread.join can leave the thread marked as stopped while it still runs (CPython before 3.13,
    # gh-90882), and the batch would then close its session under a row still in progress.
    finished = [threading.Event() for _ in range(jobs)]

    def worker(done: threading.Event) -> None:
        try:
            while not stop.is_set():
                with queue_lock:
                    if not queue:
                        return
                    row = queue.pop()
                if not _one(run, row):
                    stop.set()
        finally:
            done.set()

    threads = [
        threading.Thread(target=worker, args=(done,), name=f"batch-{n}", daemon=True) for n, done in enumerate(finished)
    ]
    for thread in threads:
        thread.start()

    def wait_all() -> None:
        for done in finished:
            while not done.wait(0.2):
                pass

    try:
        wait_all()
    except KeyboardInterrupt:
        # the workers finish the row each has in hand (each all or nothing), then stop
        stop.set()
        run.stopped_by = run.stopped_by or Interrupted("interrupted: the rows in progress were finished")
        wait_all()
