"""`tokenagent station`: one process that stays up at an enrollment station.

The operator logs in to the agent card once. Then, for every card put into a reader: the next
user (a row of ``--users FILE.csv``, or a name typed at the terminal), that user's PIN on the card
(station.toml says how: from the CSV, from the holder, or generated and set with the SO PIN),
the key made on the card, the request co-signed by the agent for that user, sent to the CA,
the certificate installed on the card, the card journaled; then "remove the card". Several
readers work at once, one enrollment per card, each in its own thread.

What can go wrong with a card in the middle:

- the card is pulled: the reader's event stops the enrollment at its next step. Before the key
  exists nothing is left; after it, the key and its request are deleted from the token (or, when
  the token went with the card, as soon as a card with that serial comes back). A card pulled
  during key generation leaves an open key intent, which the next enrollment on that card rolls
  back first (enroll/recovery.py). The journal says which step the card was lost in.
- the CA refuses or cannot be reached: the request stays pending (`enroll --resume` finishes it
  later), the card is reported as not done.
- Ctrl-C: no new card is started; the cards in progress are stopped at their next step and
  rolled back as for a pulled card; exit 130.

Threads: a one-shot command initializes modules with C_Initialize(NULL), a promise of single-threaded
use (SoftHSM then drops its mutexes), so the station initializes them with CKF_OS_LOCKING_OK
(`library.use_os_locking`). The agent's one session is shared: its signatures take turns.

With ``--users`` and ``--yes`` nothing ever waits for an answer at the terminal.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tokenagent.display import escape
from tokenagent.enroll.agent import Agent, AgentOptions, open_agent
from tokenagent.enroll.enrollment import EnrollOptions, EnrollResult, enroll_policy
from tokenagent.enroll.new import NewOptions
from tokenagent.enroll.submit import CaOptions
from tokenagent.errors import (
    InputError,
    Interrupted,
    PinError,
    TokenAgentError,
    TokenNotFoundError,
    UsageError,
)
from tokenagent.inputs import read_input
from tokenagent.request.algorithms import SignatureAlgorithm
from tokenagent.request.signer import Signer
from tokenagent.station.config import StationConfig, load_station_config
from tokenagent.station.journal import Attempt, Journal, error_fields, journal_path
from tokenagent.station.readers import ReaderEvent, ReadersOptions, TokenLink, tokens_of_reader, watch_readers
from tokenagent.token.library import use_os_locking
from tokenagent.token.pins import Pin, PinSource, literal_pin_source, parse_pin_source
from tokenagent.token.target import TokenTarget

log = logging.getLogger("tokenagent")

USER_PIN_MODES = ("csv", "holder", "generate")
RESERVED_COLUMNS = ("pin",)  # CSV columns that are not INF [Strings]


class CardRemovedError(TokenNotFoundError):
    """The card left its reader (or the station was interrupted) while its enrollment ran."""


class _Stop:
    """Why a card's enrollment must stop: its card was pulled, or the station was interrupted."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


# -- configuration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StationSettings:
    """The ``[station]`` table of station.toml (the ``[readers]`` table maps readers to tokens)."""

    user_pin: str = "holder"  # csv | holder | generate
    so_pin_source: str | None = None  # generate: the cards' SO PIN (a source, never the PIN)
    pin_file: Path | None = None  # generate: append "SERIAL<TAB>PIN" here (mode 0600) instead of showing it
    pin_length: int = 8
    source: str = "defaults"


def station_settings(config: StationConfig) -> StationSettings:
    """``[station]`` of the station.toml files (later files override earlier keys)."""
    settings = StationSettings()
    for path, table in config.station_tables:
        settings = _settings(settings, table, path)
    return settings


def _settings(base: StationSettings, table: dict[str, Any], path: Path) -> StationSettings:
    where = f"{path}: [station]"
    unknown = set(table) - {"user_pin", "so_pin_source", "pin_file", "pin_length"}
    if unknown:
        raise InputError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {"source": str(path)}
    if "user_pin" in table:
        if table["user_pin"] not in USER_PIN_MODES:
            raise InputError(f"{where}: user_pin must be one of {', '.join(USER_PIN_MODES)}")
        changes["user_pin"] = table["user_pin"]
    if "so_pin_source" in table:
        if not isinstance(table["so_pin_source"], str):
            raise InputError(f"{where}: so_pin_source must be a PIN source (env:VAR, file:PATH, fd:N, prompt)")
        try:
            parse_pin_source(table["so_pin_source"])
        except UsageError as exc:
            raise InputError(f"{where}: {exc.message}") from None
        changes["so_pin_source"] = table["so_pin_source"]
    if "pin_file" in table:
        if not isinstance(table["pin_file"], str):
            raise InputError(f"{where}: pin_file must be a path")
        pin_file = Path(table["pin_file"]).expanduser()
        changes["pin_file"] = pin_file if pin_file.is_absolute() else path.parent / pin_file
    if "pin_length" in table:
        length = table["pin_length"]
        if isinstance(length, bool) or not isinstance(length, int) or not 4 <= length <= 64:
            raise InputError(f"{where}: pin_length must be a whole number from 4 to 64")
        changes["pin_length"] = length
    return replace(base, **changes)


# -- users ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StationUser:
    name: str  # the `user` column: the journal's user, usually also %user% (RequesterName)
    strings: dict[str, str]  # the INF [Strings] values of this user (every column but pin)
    source: str  # "users.csv:4" or "prompt"
    pin: Pin | None = field(default=None, repr=False)


def read_users(path: Path) -> list[StationUser]:
    """The users CSV: a header line naming the columns, then one user per line. ``user`` is
    required; ``pin`` (the user PIN, for user_pin = "csv") is never an INF string."""
    try:
        decoded = read_input(path, "users file").decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(decoded))
    try:
        header = _header(path, reader)
        users: list[StationUser] = []
        seen: dict[str, int] = {}
        for row in reader:
            if any(cell.strip() for cell in row):
                users.append(_user(path, reader.line_num, header, row, seen))
    except csv.Error as exc:
        raise InputError(f"{path}:{reader.line_num}: {exc}") from None
    return users


def _header(path: Path, reader: Any) -> list[str]:
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        raise InputError(f"{path}:1: empty: the first line names the columns (user, ...)") from None
    if "user" not in header:
        raise InputError(f"{path}:1: no 'user' column (the header names the columns: user, ...)")
    if len(set(header)) != len(header) or "" in header:
        raise InputError(f"{path}:1: column names must be unique and not empty")
    return header


def _user(path: Path, line: int, header: list[str], row: list[str], seen: dict[str, int]) -> StationUser:
    if len(row) != len(header):
        raise InputError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
    values = dict(zip(header, (cell.strip() for cell in row), strict=True))
    name = values["user"]
    if not name:
        raise InputError(f"{path}:{line}: the user is empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in "".join(values.values())):
        raise InputError(f"{path}:{line}: a control character in the row")
    if name.lower() in seen:
        raise InputError(f"{path}:{line}: user {escape(name)} is already on line {seen[name.lower()]}")
    seen[name.lower()] = line
    pin = Pin(values["pin"]) if values.get("pin") else None
    strings = {key: value for key, value in values.items() if key not in RESERVED_COLUMNS}
    return StationUser(name, strings, f"{path.name}:{line}", pin)


# -- the station ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StationOptions:
    policy: Path
    agent: AgentOptions
    ca: CaOptions
    users: Path | None = None
    yes: bool = False  # never ask anything (with --users)
    station_configs: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    pin_source: PinSource | None = None  # user_pin = "holder": how the holder gives it (prompt, pinpad)
    state_dir: Path | None = None
    chain: bool = False
    count: int | None = None  # stop after this many cards
    idle_timeout: float | None = None  # stop after this many seconds without a card event
    journal: Path | None = None


@dataclass
class CardOutcome:
    reader: str
    user: str | None
    outcome: str  # enrolled | failed | aborted | skipped
    message: str
    token_serial: str | None = None
    certificate_uri: str | None = None
    exit_code: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "reader": self.reader,
            "user": self.user,
            "outcome": self.outcome,
            "message": self.message,
            "token_serial": self.token_serial,
            "certificate_uri": self.certificate_uri,
            "exit_code": self.exit_code,
        }


@dataclass
class StationResult:
    session: str
    operator: str
    cards: list[CardOutcome]
    stopped_by: str  # count | idle | users | interrupt

    @property
    def exit_code(self) -> int:
        for card in self.cards:
            if card.exit_code:
                return card.exit_code
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "session": self.session,
            "operator": self.operator,
            "stopped_by": self.stopped_by,
            "cards": [card.to_json() for card in self.cards],
            "exit_code": self.exit_code,
        }


Say = Callable[[str], None]
Ask = Callable[[str], str]


class _LockedSigner:
    """The agent's signer, one signature at a time: the cards' threads share its one session."""

    def __init__(self, signer: Signer, lock: threading.Lock) -> None:
        self._signer = signer
        self._lock = lock

    @property
    def algorithm(self) -> SignatureAlgorithm:
        return self._signer.algorithm

    def sign(self, data: bytes) -> bytes:
        with self._lock:
            return self._signer.sign(data)


class Station:
    def __init__(self, options: StationOptions, *, say: Say, ask: Ask | None = None, warn: Say | None = None) -> None:
        self.options = options
        self.say = say
        self.ask = ask
        self.warn = warn or (lambda message: log.warning("%s", message))
        self.config = load_station_config(options.station_configs)  # read once: each card uses it
        self.settings = station_settings(self.config)
        self.session_id = uuid.uuid4().hex[:12]
        self.journal = Journal(options.journal or journal_path(False, options.state_dir))
        self.cards: list[CardOutcome] = []
        self._users: Iterator[StationUser] | None = None
        self._users_lock = threading.Lock()
        self._exhausted = False  # the users file has no more rows
        self._workers: dict[str, tuple[threading.Thread, _Stop]] = {}
        self._roll_back: dict[str, list[int]] = {}  # token serial -> pending IDs to delete when it is back
        self._agent: Agent | None = None
        self._operator = ""

    # -- checks before anything starts ------------------------------------------------------------

    def check(self) -> None:
        mode = self.settings.user_pin
        if self.options.users is not None:
            users = read_users(self.options.users)
            if mode == "csv" and any(user.pin is None for user in users):
                missing = next(user for user in users if user.pin is None)
                raise InputError(f'{missing.source}: user_pin = "csv" and this user has no pin column value')
            self._check_columns(users)
            self._users = iter(users)
        elif self.options.yes or self.ask is None:
            raise UsageError("without --users the station asks for each card's user: give --users FILE.csv")
        if mode == "csv" and self.options.users is None:
            raise UsageError('user_pin = "csv" needs --users FILE.csv with a pin column')
        if mode == "generate" and self.settings.so_pin_source is None:
            raise UsageError(f'user_pin = "generate" needs so_pin_source in [station] ({self.settings.source})')
        if mode == "holder":
            source = self.options.pin_source
            if source is None or (source.kind == "prompt" and (self.options.yes or self.ask is None)):
                raise UsageError(
                    'user_pin = "holder" needs the holder at a terminal or a PIN pad (--pin-source pinpad); '
                    'an unattended station sets user_pin = "csv" or "generate" in station.toml'
                )
        if self.options.count is not None and self.options.count < 1:
            raise UsageError("--count must be at least 1")

    def _check_columns(self, users: list[StationUser]) -> None:
        """Every column but user and pin fills an INF [Strings] entry (a typo is found before any card)."""
        from tokenagent.inf.lexer import string_names

        policy = self.options.policy
        names = string_names(read_input(policy, "INF file"), str(policy))
        for user in users[:1]:
            for column in user.strings:
                if column != "user" and column not in names:
                    known = ", ".join(name for name, _ in names.values()) or "none"
                    raise InputError(
                        f"{self.options.users}:1: column {escape(column)} names no [Strings] entry of {policy} "
                        f"(its strings: {known})"
                    )

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> StationResult:
        self.check()
        use_os_locking()
        stopped_by = "count"
        with open_agent(self.options.agent, on_warning=self.warn) as agent:
            lock = threading.Lock()
            self._agent = replace(agent, signer=_LockedSigner(agent.signer, lock))  # type: ignore[arg-type]
            self._operator = f"{agent.subject}"
            self.say(f"station {self.session_id}: agent {escape(agent.subject)} logged in; insert a card")
            try:
                stopped_by = self._watch()
            except KeyboardInterrupt:
                self._stop_all("station interrupted")
                self._join_all()
                raise Interrupted(
                    "interrupted: the cards in progress were stopped and rolled back; see tokenagent journal"
                ) from None
            self._join_all()
        return StationResult(self.session_id, self._operator, self.cards, stopped_by)

    def _watch(self) -> str:
        """Card events until --count cards are done, the users run out, or --idle-timeout passes."""
        started = 0
        last_event = time.monotonic()
        for event in watch_readers(ticks=True):
            if event is not None:
                last_event = time.monotonic()
                if event.kind == "card-removed":
                    self._removed(event.reader)
                elif event.kind == "card-inserted" and (self.options.count is None or started < self.options.count):
                    started += self._inserted(event)
            self._reap()
            if self._busy():
                continue
            if self.options.count is not None and started >= self.options.count:
                return "count"
            if self._exhausted:
                return "users"
            idle = self.options.idle_timeout
            if idle is not None and time.monotonic() - last_event >= idle:
                return "idle"
        return "idle"

    def _busy(self) -> bool:
        return any(thread.is_alive() for thread, _ in self._workers.values())

    def _reap(self) -> None:
        for reader in [r for r, (thread, _) in self._workers.items() if not thread.is_alive()]:
            del self._workers[reader]

    def _next_user(self, reader: str) -> StationUser | None:
        with self._users_lock:
            if self._users is not None:
                user = next(self._users, None)
                if user is None:
                    self._exhausted = True
                return user
        assert self.ask is not None
        name = self.ask(f"User for the card in {escape(reader)} (e.g. DOMAIN\\user): ").strip()
        return StationUser(name, {"user": name}, "prompt") if name else None

    def _inserted(self, event: ReaderEvent) -> bool:
        reader = event.reader
        if reader in self._workers and self._workers[reader][0].is_alive():
            return False
        user = self._next_user(reader)
        if user is None:
            self.say(f"{escape(reader)}: no more users; remove the card")
            return False
        cancel = _Stop()
        thread = threading.Thread(
            target=self._enroll_card, args=(event, user, cancel), name=f"card {reader}", daemon=True
        )
        self._workers[reader] = (thread, cancel)
        thread.start()
        return True

    def _removed(self, reader: str) -> None:
        worker = self._workers.get(reader)
        if worker is not None and worker[0].is_alive():
            worker[1].set("card removed")

    def _stop_all(self, why: str) -> None:
        for _, cancel in self._workers.values():
            cancel.set(why)

    def _join_all(self) -> None:
        for thread, _ in list(self._workers.values()):
            thread.join()
        self._workers.clear()

    # -- one card ----------------------------------------------------------------------------------

    def _enroll_card(self, event: ReaderEvent, user: StationUser, cancel: _Stop) -> None:
        reader = event.reader
        shown = escape(reader)
        context = {
            "batch": self.session_id,
            "source": user.source,
            "user": user.name,
            "operator": self._operator,
            "reader": reader,
            "atr": event.atr.hex() if event.atr else None,
        }
        outcome = CardOutcome(reader, user.name, "failed", "")
        try:
            with self.journal.attempt(**context) as attempt:
                card = _CardRun(reader, attempt, cancel)
                try:
                    card.link = self._token(reader)
                    outcome.token_serial = card.link.serial
                    attempt.note(token_label=card.link.label, token_serial=card.link.serial)
                    self._roll_back_left(card.link)
                    card.pin_source = self._user_pin(card.link, user, attempt)
                    self.say(f"{shown}: card {escape(card.link.serial)} for {escape(user.name)}: enrolling...")
                    result = self._enroll(card.link, user, card.pin_source, card)
                except TokenAgentError as exc:
                    if isinstance(exc, CardRemovedError) or cancel.is_set():
                        # pulled while a step ran (a CA that took its time): that step's own failure is moot
                        removed = (
                            exc
                            if isinstance(exc, CardRemovedError)
                            else CardRemovedError(f"{cancel.reason} during {card.current or 'the enrollment'}")
                        )
                        outcome.outcome, outcome.exit_code = "aborted", removed.exit_code
                        outcome.message = self._aborted(removed, card)
                        self.say(f"{shown}: {outcome.message}")
                        return
                    outcome.message, outcome.exit_code = exc.one_line(), exc.exit_code
                    attempt.event(card.current or "attempt", "failed", **error_fields(exc))
                    self.say(f"{shown}: not enrolled: {escape(exc.one_line())}; remove the card")
                    return
                pair = result.accepted.outcome.installed.pair
                outcome.outcome, outcome.certificate_uri = "enrolled", pair.certificate_uri
                outcome.message = f"certificate installed for {user.name}"
                attempt.event("attempt", "done", message="enrolled")
                self.say(f"{shown}: enrolled {escape(user.name)}: {pair.certificate_uri}; remove the card")
        except Exception as exc:  # a journal that cannot be written, or a defect: reported, the station goes on
            outcome.message, outcome.exit_code = f"{type(exc).__name__}: {exc}", getattr(exc, "exit_code", 1)
            self.say(f"{shown}: failed: {escape(outcome.message)}")
        finally:
            self.cards.append(outcome)

    def _token(self, reader: str) -> TokenLink:
        options = ReadersOptions(modules=self.options.modules, station_configs=self.options.station_configs)
        links, problem = tokens_of_reader(reader, options, self.config)
        if problem:
            raise TokenNotFoundError(f"reader {reader}: {problem}")
        if not links:
            raise TokenNotFoundError(
                f"reader {reader}: no PKCS#11 token belongs to it (map it in station.toml [readers])"
            )
        mapped = [link for link in links if link.matched_by == "station-config"]
        if len(mapped) == 1:
            return mapped[0]
        if len(links) > 1:
            listed = "; ".join(f"{link.label} ({link.module})" for link in links)
            raise TokenNotFoundError(
                f"reader {reader}: several tokens ({listed}): choose one in station.toml [readers]"
            )
        return links[0]

    def _user_pin(self, link: TokenLink, user: StationUser, attempt: Attempt) -> PinSource | None:
        mode = self.settings.user_pin
        if mode == "csv":
            assert user.pin is not None
            return literal_pin_source(user.pin.reveal())
        if mode == "holder":
            return self.options.pin_source
        from tokenagent.token.library import TokenSelector, modules_for, select_token
        from tokenagent.token.user_pin import deliver_pin, generate_pin, init_user_pin

        assert self.settings.so_pin_source is not None
        selector = TokenSelector.parse(link.uri)
        handle = select_token(selector, modules_for([link.module_path], selector))
        pin = generate_pin(handle, self.settings.pin_length)
        init_user_pin(handle, parse_pin_source(self.settings.so_pin_source), pin)
        where = deliver_pin(pin, link.serial, pin_file=self.settings.pin_file, show=self.say)
        attempt.event("pin", "done", message=f"user PIN generated and set with the SO PIN; {where}")
        return literal_pin_source(pin.reveal())

    def _enroll(
        self, link: TokenLink, user: StationUser, pin_source: PinSource | None, steps: _CardRun
    ) -> EnrollResult:
        target = TokenTarget(link.uri, (link.module_path,), pin_source)
        new = NewOptions(
            policy=self.options.policy,
            target=target,
            state_dir=self.options.state_dir,
            agent=self.options.agent,
            strings=tuple(user.strings.items()),
        )
        options = EnrollOptions(new, self.options.ca, chain=self.options.chain)
        if pin_source is None:
            raise PinError(f"no PIN source for the card of {user.name}")
        return enroll_policy(options, on_warning=self.warn, agent=self._agent, steps=steps)

    def _aborted(self, exc: CardRemovedError, card: _CardRun) -> str:
        """Roll back what the card's enrollment made; the journal says which step the card left in."""
        step = card.current or "key"
        why = card.cancel.reason or "card removed"
        if card.pending_id is None:
            card.attempt.event(step, "failed", **error_fields(exc), message=f"{why}; nothing was made")
            return f"{why} before {step}: nothing was made"
        if self._delete(card.pending_id, card.link, card.pin_source):
            message = f"{why} during {step}: its key and request (pending {card.pending_id}) were deleted"
        else:
            assert card.link is not None
            self._roll_back.setdefault(card.link.serial, []).append(card.pending_id)
            message = (
                f"{why} during {step}: its key and request (pending {card.pending_id}) are deleted when "
                "the card is back"
            )
        card.attempt.event(step, "failed", **error_fields(exc), message=message)
        return message

    def _delete(self, pending_id: int, link: TokenLink | None, pin_source: PinSource | None) -> bool:
        from tokenagent.enroll.pending import delete_pending, pending_store

        store = pending_store(False, self.options.state_dir)
        target = TokenTarget(link.uri if link else None, (link.module_path,) if link else (), pin_source)
        try:
            delete_pending(store, pending_id, with_key=True, target=target, on_warning=self.warn)
        except TokenAgentError as exc:
            log.info("pending request %s not rolled back yet: %s", pending_id, exc.one_line())
            return False
        return True

    def _roll_back_left(self, link: TokenLink) -> None:
        """Keys of enrollments this station stopped while the card was away, deleted now it is back."""
        left = self._roll_back.pop(link.serial, [])
        still = [pending_id for pending_id in left if not self._delete(pending_id, link, None)]
        if still:
            self._roll_back[link.serial] = still


class _CardRun:
    """One card's enrollment: what it has made so far, and `enroll_policy`'s steps to the journal.
    A pulled card (``cancel``) stops the enrollment when its next step starts."""

    def __init__(self, reader: str, attempt: Attempt, cancel: _Stop) -> None:
        self.reader = reader
        self.attempt = attempt
        self.cancel = cancel
        self.link: TokenLink | None = None
        self.pin_source: PinSource | None = None
        self.current: str | None = None
        self.pending_id: int | None = None

    def started(self, step: str) -> None:
        self.current = step
        if self.cancel.is_set():
            raise CardRemovedError(f"{self.cancel.reason} in {self.reader} before {step}")
        self.attempt.event(step, "started")

    def done(self, step: str, **fields: Any) -> None:
        pending_id = fields.pop("pending_id", None)
        if pending_id is not None:
            self.pending_id = int(pending_id)
        self.attempt.note(**{k: v for k, v in fields.items() if v is not None})
        note = {"message": f"pending request {pending_id}"} if pending_id is not None else {}
        self.attempt.event(step, "done", **note)
        if step == "key":
            self.attempt.event("request", "done")
