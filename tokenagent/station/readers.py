"""`tokenagent readers`: the PC/SC readers, the card in each (ATR, known name), PIN-pad capability,
the PKCS#11 token(s) each card is, and `--watch`'s insert/remove events.

Reader -> token: a slot whose CK_SLOT_INFO.slotDescription names the reader belongs to it (OpenSC
and ykcs11 copy the PC/SC reader name there); otherwise the station config maps the reader to a
--token selector (station/config.py). Both can apply: a card served by ykcs11 and OpenSC is two
tokens of one reader, and the config may add one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tokenagent.display import escape
from tokenagent.errors import ModuleError, TokenNotFoundError
from tokenagent.station.atr import SOURCE, KnownCard, atr_text, identify
from tokenagent.station.config import ReaderMapping, StationConfig, load_station_config
from tokenagent.station.pcsc import (
    FEATURE_NAMES,
    FEATURE_VERIFY_PIN_DIRECT,
    PNP_READER,
    SLICE_MS,
    Pcsc,
    ReaderState,
    pcsc_context,
)
from tokenagent.token.library import LoadedModule, SlotEntry, TokenSelector, list_slots, load_module
from tokenagent.token.modules import discover_modules

log = logging.getLogger("tokenagent")

#: CK_SLOT_INFO.slotDescription is 64 bytes: a longer reader name arrives cut to this length
SLOT_DESCRIPTION_SIZE = 64


@dataclass(frozen=True)
class ReadersOptions:
    modules: tuple[str, ...] = ()  # --module values; default: TOKENAGENT_MODULE, then p11-kit's registry
    station_configs: tuple[str, ...] = ()  # --station-config files, after the default locations
    tokens: bool = True  # look for the PKCS#11 token of each reader (loads the modules)


@dataclass(frozen=True)
class TokenLink:
    """A PKCS#11 token that belongs to a reader, and why."""

    module: str
    module_path: str
    slot_id: int
    slot_description: str
    label: str
    serial: str
    uri: str
    matched_by: str  # "slot-description" or "station-config"

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "module_path": self.module_path,
            "slot_id": self.slot_id,
            "slot_description": self.slot_description,
            "label": self.label,
            "serial": self.serial,
            "uri": self.uri,
            "matched_by": self.matched_by,
        }


def _card_json(card: KnownCard | None) -> dict[str, Any] | None:
    if card is None:
        return None
    return {"name": card.name, "family": card.family, "pattern": card.pattern, "source": f"{SOURCE} line {card.line}"}


@dataclass(frozen=True)
class ReaderReport:
    name: str
    state: list[str]  # pcscd's SCARD_STATE_* names: present, empty, mute, in_use, exclusive, ...
    card_present: bool
    atr: bytes | None
    card: KnownCard | None  # the known card the ATR matches
    pin_pad: bool  # FEATURE_VERIFY_PIN_DIRECT offered (PC/SC part 10)
    features: list[str]  # every part 10 feature the reader driver offers
    tokens: list[TokenLink] = field(default_factory=list)
    mapping: ReaderMapping | None = None  # the station config's entry for this reader
    problem: str | None = None  # why the mapped token was not found

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "card_present": self.card_present,
            "atr": None if self.atr is None else self.atr.hex(),
            "card": _card_json(self.card),
            "pin_pad": self.pin_pad,
            "features": self.features,
            "tokens": [t.to_json() for t in self.tokens],
            "station_config": None if self.mapping is None else self.mapping.to_json(),
            "problem": self.problem,
        }


@dataclass(frozen=True)
class ReadersResult:
    readers: list[ReaderReport]
    config_files: tuple[str, ...]
    module_errors: list[str]  # modules that could not be loaded (one line each); the rest were searched

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "readers": [r.to_json() for r in self.readers],
            "station_config_files": list(self.config_files),
            "module_errors": self.module_errors,
        }


def list_readers(options: ReadersOptions) -> ReadersResult:
    """Every reader with its card and tokens. No pcscd or no reader: `TokenNotFoundError` (exit 6)."""
    config = load_station_config(options.station_configs)
    with pcsc_context() as pcsc:
        names = pcsc.reader_names()
        if not names:
            raise TokenNotFoundError("no smart card reader is connected (pcscd lists none)")
        states = pcsc.states(names)
        features = {name: pcsc.features(name) for name in names}
    links, problems, module_errors = _tokens(names, config, options) if options.tokens else ({}, {}, [])
    readers = []
    for state in states:
        offered = features[state.name] or {}
        present = state.card_present
        atr = state.atr if present and state.atr else None
        readers.append(
            ReaderReport(
                name=state.name,
                state=state.state_names,
                card_present=present,
                atr=atr,
                card=identify(atr) if atr else None,
                pin_pad=FEATURE_VERIFY_PIN_DIRECT in offered,
                features=[FEATURE_NAMES.get(tag, f"0x{tag:02X}") for tag in sorted(offered)],
                tokens=links.get(state.name, []),
                mapping=config.readers.get(state.name),
                problem=problems.get(state.name),
            )
        )
    return ReadersResult(readers=readers, config_files=config.files, module_errors=module_errors)


def tokens_of_reader(reader: str, options: ReadersOptions, config: StationConfig) -> tuple[list[TokenLink], str | None]:
    """The tokens of one reader (the station, when a card goes in, with the config it read once),
    and the station config's problem with it, if any. Modules that fail to load are logged, as the
    listing notes them."""
    links, problems, errors = _tokens([reader], config, options)
    for error in errors:
        log.info("%s", error)
    return links.get(reader, []), problems.get(reader)


def names_reader(slot_description: str, reader: str) -> bool:
    """Whether a slot description names this reader: the name itself (ykcs11, OpenSC), the name
    cut to the 64 bytes CK_SLOT_INFO holds, or the name followed by more words (a module that
    adds the application after it)."""
    if not slot_description:
        return False
    cut = reader.encode()[:SLOT_DESCRIPTION_SIZE].decode(errors="ignore").rstrip()
    return slot_description in (reader, cut) or slot_description.startswith(reader + " ")


def _link(entry: SlotEntry, matched_by: str) -> TokenLink:
    assert entry.token is not None
    return TokenLink(
        module=entry.module.ref.name or entry.module.path,
        module_path=entry.module.path,
        slot_id=entry.slot_id,
        slot_description=entry.description,
        label=entry.token.label,
        serial=entry.token.serial,
        uri=str(entry.token.uri()),
        matched_by=matched_by,
    )


def _load(specs: list[str], source: str, errors: list[str]) -> list[LoadedModule]:
    """The modules ``specs`` name (or the default ones), each that loads; failures noted, not fatal:
    a listing of readers must not fail for one broken vendor module."""
    try:
        refs = discover_modules(specs, source=source)
    except ModuleError as exc:
        errors.append(exc.one_line())
        return []
    loaded = []
    for ref in refs:
        try:
            loaded.append(load_module(ref))
        except ModuleError as exc:
            errors.append(exc.one_line())
    return loaded


def _slots(modules: list[LoadedModule], errors: list[str]) -> list[SlotEntry]:
    entries: list[SlotEntry] = []
    for module in modules:
        try:
            entries.extend(entry for entry in list_slots(module) if entry.token is not None)
        except ModuleError as exc:
            errors.append(exc.one_line())
    return entries


def _tokens(
    names: list[str], config: StationConfig, options: ReadersOptions
) -> tuple[dict[str, list[TokenLink]], dict[str, str], list[str]]:
    errors: list[str] = []
    default_slots = _slots(_load(list(options.modules), "--module", errors), errors)
    links: dict[str, list[TokenLink]] = {name: [] for name in names}
    problems: dict[str, str] = {}
    for name in names:
        mapping = config.readers.get(name)
        if mapping is not None:
            slots = default_slots
            if mapping.module is not None:
                slots = _slots(_load([mapping.module], mapping.source, errors), errors)
            selector = TokenSelector.parse(mapping.token)
            found = [entry for entry in slots if entry.token is not None and selector.matches(entry.token)]
            if len(found) == 1:
                links[name].append(_link(found[0], "station-config"))
            elif not found:
                problems[name] = f"station config ({mapping.source}): no token matches {selector.describe()}"
            else:
                candidates = "; ".join(entry.token.describe() for entry in found if entry.token is not None)
                problems[name] = (
                    f"station config ({mapping.source}): {len(found)} tokens match {selector.describe()}: {candidates}"
                )
        taken = {(link.module_path, link.slot_id) for link in links[name]}
        for entry in default_slots:
            if names_reader(entry.description, name) and (entry.module.path, entry.slot_id) not in taken:
                links[name].append(_link(entry, "slot-description"))
    return links, problems, errors


# -- --watch --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReaderEvent:
    kind: str  # card-inserted, card-removed, reader-added, reader-removed
    reader: str
    time: datetime
    atr: bytes | None = None
    card: KnownCard | None = None
    mute: bool = False  # a card that does not answer (no ATR)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "event": self.kind,
            "time": self.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "reader": self.reader,
            "atr": None if self.atr is None else self.atr.hex(),
            "card": _card_json(self.card),
            "mute": self.mute,
        }

    def text(self) -> str:
        """The plain line; the reader name comes from a device driver, so it is shown escaped."""
        stamp = self.time.isoformat(timespec="seconds").replace("+00:00", "Z")
        line = f"{stamp}  {self.kind:<14} {escape(self.reader)}"
        if self.kind == "card-inserted":
            if self.mute:
                line += "  (card does not answer)"
            elif self.atr is not None:
                line += f"  {atr_text(self.atr)}  {self.card.name if self.card else 'unknown card'}"
        return line


def _now() -> datetime:
    return datetime.now(UTC)


def _inserted(reader: str, state: ReaderState) -> ReaderEvent:
    atr = state.atr or None
    return ReaderEvent("card-inserted", reader, _now(), atr=atr, card=identify(atr) if atr else None, mute=state.mute)


def watch_readers(
    *, count: int | None = None, timeout: float | None = None, ticks: bool = False
) -> Iterator[ReaderEvent | None]:
    """Card and reader events as they happen, until ``count`` events or ``timeout`` seconds
    (None: until the caller stops, e.g. Ctrl-C). Cards already in at the start are no event.
    ``ticks``: also None after every quiet quarter second, so that a caller (the station) can look
    at its own work between events without losing one.

    No reader at the start is fine (one may be plugged in); no pcscd is `TokenNotFoundError`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = 0
    with pcsc_context() as pcsc:
        names = pcsc.reader_names()
        present = {state.name: (state.card_present, state.events) for state in pcsc.states(names)}
        # with -v: the moment from which events are seen (a test inserts cards only after it)
        log.info("watching %d reader(s) for card events", len(names))
        while count is None or seen < count:
            slice_ms = SLICE_MS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                slice_ms = max(1, min(SLICE_MS, int(left * 1000)))
            states = pcsc.wait(names, slice_ms, plug_and_play=True)
            if states is None:
                if ticks:
                    yield None
                continue
            events: list[ReaderEvent] = []
            if any((state.name == PNP_READER and state.changed) or state.unknown for state in states):
                names, added = _reader_list_changed(pcsc, names, present, events)
                states += pcsc.states(added)
            for state in states:
                if state.name != PNP_READER and state.name in present:
                    events += _card_events(state, present[state.name])
                    present[state.name] = (state.card_present, state.events)
            for event in events:
                yield event
                seen += 1
                if count is not None and seen >= count:
                    return


def _card_events(state: ReaderState, was: tuple[bool, int]) -> list[ReaderEvent]:
    """What happened in one reader since it was seen (``was``: card present, event counter)."""
    was_present, was_events = was
    if state.card_present and was_present and state.events != was_events:  # taken out and put back
        return [ReaderEvent("card-removed", state.name, _now()), _inserted(state.name, state)]
    if state.card_present and not was_present:
        return [_inserted(state.name, state)]
    if was_present and not state.card_present:
        return [ReaderEvent("card-removed", state.name, _now())]
    return []


def _reader_list_changed(
    pcsc: Pcsc, names: list[str], present: dict[str, tuple[bool, int]], events: list[ReaderEvent]
) -> tuple[list[str], list[str]]:
    """The reader list after a plug-and-play event; readers gone and new ones as events."""
    now = pcsc.reader_names()
    for name in names:
        if name not in now:
            if present.pop(name, (False, 0))[0]:
                events.append(ReaderEvent("card-removed", name, _now()))
            events.append(ReaderEvent("reader-removed", name, _now()))
            pcsc.forget(name)
    added = [name for name in now if name not in names]
    for name in added:
        events.append(ReaderEvent("reader-added", name, _now()))
        present[name] = (False, -1)  # a card already in the new reader shows as inserted
    return now, added
