"""Many `new` requests in one process: one login and one reading of the token's facts per token.

`new_request` is one certreq -new: it selects the token, opens a session and logs in, and reads
the token's facts for the capacity check (mechanisms and their ranges, every private key's label,
the object count). For an enrollment station that makes hundreds of requests that is a login per
request and a scan of the whole token per request, and the scan grows with every key made.

`NewBatch` runs exactly the same steps (`enroll.new.prepare`, then `enroll.new.enroll`, whose
`_Transaction` makes each request all or nothing) but keeps one logged-in `TokenSession` per
token for its whole life, reads each token's facts once and keeps them current itself: every key
pair it makes is added to them, so the capacity checks (KeyContainer label taken, key containers,
object count) see the batch's own keys. What another process writes to the token during the batch
cannot change what those checks rely on: the batch holds each token's lock (store/locks.py) from
its first real request until it closes, so no other tokenagent `new` runs on the token meanwhile
(a per-request search for the label would visit every object on SoftHSM: about 2 ms on a fresh
token, 27 ms on one holding 1,000 key pairs). An enrollment
agent (`NewOptions.agent`, RequestType = CMC or PKCS7) is opened once as well, before the first
request that needs it.

    with NewBatch() as batch:
        for policy, output in work:
            result = batch.new(NewOptions(policy=policy, output=output, token="card", pin_source=pins))

The first request for a token logs in with its `pin_source`; later requests for the same token
reuse that login (their `pin_source` and `force` are not read again); the same holds for an
agent. Closing the batch logs out of every token.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

from tokenagent.enroll.agent import Agent, AgentOptions, open_agent
from tokenagent.enroll.new import (
    NewOptions,
    NewResult,
    Prepared,
    Warn,
    _select_token,
    enroll,
    facts_needed,
    for_token,
    lock_selection,
    lock_token,
    open_user_session,
    prepare,
)
from tokenagent.enroll.recovery import recover_interrupted
from tokenagent.enroll.spares import SpareKeys, spares_fit
from tokenagent.providers.registry import ProviderRegistry, load_registry
from tokenagent.store.database import kept_open
from tokenagent.token.facts import TokenFacts
from tokenagent.token.library import TokenHandle
from tokenagent.token.modules import ENV_MODULE
from tokenagent.token.session import TokenSession
from tokenagent.token.tokeninfo import FactNeeds, gather_facts, learn_mechanisms

log = logging.getLogger("tokenagent")


@dataclass
class _OpenToken:
    session: TokenSession
    facts: TokenFacts
    #: the mechanisms whose CK_MECHANISM_INFO was asked for (found or not): each is read once, when
    #: a request first needs it, not every mechanism of the token up front (70 calls on SoftHSM)
    asked: set[str] = field(default_factory=set)


class NewBatch:
    """Runs `new` requests against tokens kept open (and logged in) between requests."""

    def __init__(self, *, on_warning: Warn | None = None) -> None:
        self._warn: Warn = on_warning or (lambda message: log.warning("%s", message))
        self._registries: dict[tuple[str, ...], ProviderRegistry] = {}
        self._handles: dict[tuple[object, ...], TokenHandle] = {}
        self._open: dict[tuple[str, int], _OpenToken] = {}
        self._agents: dict[object, Agent] = {}
        self._locked: set[tuple[str, int]] = set()  # tokens whose lock the batch holds
        self._selections: set[tuple[object, ...]] = set()  # --token values whose selection lock it holds
        self._stores: set[Path] = set()  # state databases it keeps open (store.database.kept_open)
        self._spares = SpareKeys()  # the next request's key pair, made while this one is written
        self._stack = contextlib.ExitStack()
        self.requests = 0  # requests that completed (dry runs included)

    def new(self, options: NewOptions, *, more: bool = True) -> NewResult:
        """One certreq -new, as `new_request(options)` would do it. Raises a `TokenAgentError`.
        ``more``: another request may follow; False for the last one spares the token a spare key
        pair that nothing would take (enroll/spares.py)."""
        prepared = prepare(options, self._warn, registry=self._registry(options.providers))
        if not options.dry_run and prepared.store_path not in self._stores:
            # one connection for the intents and pending records of every request (three commits
            # each); each commit is as durable as before (store/database.py kept_open)
            self._stack.enter_context(kept_open(prepared.store_path))
            self._stores.add(prepared.store_path)
        agent = self._agent(options.agent) if options.agent is not None and not options.dry_run else None
        opened = self._session(prepared)
        prepared = for_token(prepared, opened.session.handle)
        self._learn_mechanisms(opened, facts_needed(prepared))
        spares = self._spares if spares_fit(opened.session.handle, opened.facts) else None
        result = enroll(prepared, opened.session, opened.facts, agent=agent, spares=spares, make_spare=more)
        if not result.dry_run:
            made = (2 if result.key_generated else 0) + (1 if result.request_type == "CERT" else 0)
            labels = opened.facts.private_key_labels
            if result.key_generated and result.key_label is not None:
                labels = (*labels, result.key_label)
            opened.facts = replace(
                opened.facts, private_key_labels=labels, object_count=opened.facts.object_count + made
            )
        self.requests += 1
        return result

    def session_for(self, token: TokenHandle) -> TokenSession:
        """The logged-in session a request on ``token`` was made in (`tokenagent batch --config`
        installs each certificate in it: one login for the whole batch)."""
        opened = self._open.get((token.module.path, token.slot_id))
        if opened is None:
            raise KeyError(f"no open session on {token.describe()}")
        return opened.session

    @staticmethod
    def _learn_mechanisms(opened: _OpenToken, needs: FactNeeds) -> None:
        known = dict(opened.facts.mechanisms)
        learn_mechanisms(opened.session.handle, needs, known, opened.asked)
        if known != opened.facts.mechanisms:
            opened.facts = replace(opened.facts, mechanisms=known)

    def close(self) -> None:
        """Close every session (closing a token's last one ends its login), agents' last."""
        opened, self._open = list(self._open.values()), {}
        try:
            self._spares.close()  # first: its objects go while the sessions are logged in
            for entry in opened:
                entry.session.close()
        finally:
            self._agents = {}
            self._stack.close()

    def __enter__(self) -> NewBatch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- what is kept between requests ----------------------------------------------------------

    def _registry(self, providers: Sequence[str | Path]) -> ProviderRegistry:
        key = tuple(str(p) for p in providers)
        registry = self._registries.get(key)
        if registry is None:
            registry = self._registries[key] = load_registry(providers)
        return registry

    def _session(self, prepared: Prepared) -> _OpenToken:
        options, provider = prepared.options, prepared.provider
        # everything `_select_token` reads, so that the same inputs select the same token once
        selection = (
            tuple(options.target.modules),
            provider.module,
            provider.source,
            options.target.selector or provider.token_for(prepared.machine),
            os.environ.get(ENV_MODULE),
        )
        if not options.dry_run and selection not in self._selections:
            self._stack.enter_context(lock_selection(prepared, self._warn))  # see enroll.new.lock_selection
            self._selections.add(selection)
        handle = self._handles.get(selection)
        if handle is None:
            handle = self._handles[selection] = _select_token(provider, options, prepared.machine)
        key = (handle.module.path, handle.slot_id)
        opened = self._open.get(key)
        if opened is not None and (opened.session.rw or options.dry_run):
            return opened
        if opened is not None:  # a dry run opened it read-only; a real request needs read-write
            del self._open[key]
            opened.session.close()
        if not options.dry_run and key not in self._locked:
            # held until the batch closes: the facts it keeps current stay true for other processes too
            self._stack.enter_context(lock_token(prepared, handle, self._warn))
            self._locked.add(key)
        session = open_user_session(prepared, handle, self._warn)
        try:
            if not options.dry_run:
                recover_interrupted(session, prepared.store_path, on_warning=self._warn)
            # everything but the mechanisms, which each request asks for as it needs them; the
            # labels of every private key, because later requests may name any KeyContainer
            facts = gather_facts(session, FactNeeds(mechanisms=frozenset()))
        except BaseException:
            session.close()
            raise
        opened = self._open[key] = _OpenToken(session, facts)
        return opened

    def _agent(self, options: AgentOptions) -> Agent:
        key: object = options
        try:
            hash(options)
        except TypeError:  # e.g. modules given as a list: the same object is the same agent
            key = id(options)
        agent = self._agents.get(key)
        if agent is None:
            agent = self._agents[key] = self._stack.enter_context(open_agent(options, on_warning=self._warn))
        return agent
