"""What `tokenagent tokens` reports: modules, their slots, tokens, PIN state and mechanisms.

The dictionaries built here are the documented JSON shape (docs/json.md); the human output is
rendered from the same data so the two never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pkcs11 import Mechanism, MechanismFlag, SlotFlag, TokenFlag

from tokenagent.errors import ModuleError
from tokenagent.token import raw
from tokenagent.token.library import LoadedModule, SlotEntry, TokenHandle, list_slots, load_module
from tokenagent.token.modules import ModuleRef
from tokenagent.token.session import PinState


def flag_names(flags: int, enum: type[TokenFlag] | type[SlotFlag] | type[MechanismFlag]) -> list[str]:
    return [member.name for member in enum if member.value and flags & member.value == member.value]


def mechanism_name(mechanism: int) -> str:
    try:
        return "CKM_" + Mechanism(mechanism).name.lstrip("_")
    except ValueError:
        return f"0x{mechanism:08x}"


@dataclass
class MechanismReport:
    name: str
    value: int
    min_key_size: int | None
    max_key_size: int | None
    flags: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": f"0x{self.value:08x}",
            "min_key_size": self.min_key_size,
            "max_key_size": self.max_key_size,
            "flags": self.flags,
        }


def mechanisms_of(handle: TokenHandle) -> list[MechanismReport]:
    rv, mechanisms = raw.mechanism_list(handle.module.path, handle.slot_id)
    if rv != raw.CKR_OK:
        return []
    reports = []
    for value in sorted(mechanisms):
        low: int | None
        high: int | None
        rv, info = raw.mechanism_info(handle.module.path, handle.slot_id, value)
        if rv == raw.CKR_OK:
            low, high, flags = int(info.ulMinKeySize), int(info.ulMaxKeySize), int(info.flags)
        else:
            low = high = None
            flags = 0
        reports.append(MechanismReport(mechanism_name(value), value, low, high, flag_names(flags, MechanismFlag)))
    return reports


@dataclass
class TokenReport:
    label: str
    serial: str
    manufacturer: str
    model: str
    flags: list[str]
    pin: PinState
    uri: str
    mechanisms: list[MechanismReport] | None = None
    piv: bool = False  # a PIV card through ykcs11 (fixed slots, management key)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "label": self.label,
            "serial": self.serial,
            "manufacturer": self.manufacturer,
            "model": self.model,
            "uri": self.uri,
            "initialized": "TOKEN_INITIALIZED" in self.flags,
            "flags": self.flags,
            "pin": self.pin.as_dict(),
            "piv": self.piv,
        }
        if self.mechanisms is not None:
            data["mechanisms"] = [m.to_json() for m in self.mechanisms]
        return data


@dataclass
class SlotReport:
    slot_id: int
    description: str
    manufacturer: str
    flags: list[str]
    token: TokenReport | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.slot_id,
            "description": self.description,
            "manufacturer": self.manufacturer,
            "flags": self.flags,
            "token": None if self.token is None else self.token.to_json(),
        }


@dataclass
class ModuleReport:
    name: str
    path: str
    source: str
    description: str | None = None
    manufacturer: str | None = None
    library_version: str | None = None
    cryptoki_version: str | None = None
    error: str | None = None
    slots: list[SlotReport] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "source": self.source,
            "description": self.description,
            "manufacturer": self.manufacturer,
            "library_version": self.library_version,
            "cryptoki_version": self.cryptoki_version,
            "error": self.error,
            "slots": [s.to_json() for s in self.slots],
        }


def token_report(handle: TokenHandle, *, mechanisms: bool = False) -> TokenReport:
    return TokenReport(
        label=handle.label,
        serial=handle.serial,
        manufacturer=handle.manufacturer,
        model=handle.model,
        flags=flag_names(int(handle.flags), TokenFlag),
        pin=PinState.from_flags(int(handle.flags)),
        uri=str(handle.uri()),
        mechanisms=mechanisms_of(handle) if mechanisms else None,
        piv=handle.is_piv,
    )


def _slot_report(entry: SlotEntry, mechanisms: bool) -> SlotReport:
    return SlotReport(
        slot_id=entry.slot_id,
        description=entry.description,
        manufacturer=entry.manufacturer,
        flags=flag_names(int(entry.flags), SlotFlag),
        token=None if entry.token is None else token_report(entry.token, mechanisms=mechanisms),
    )


def module_report(module: LoadedModule, *, mechanisms: bool = False) -> ModuleReport:
    report = ModuleReport(
        name=module.ref.name,
        path=module.path,
        source=module.ref.source,
        description=module.description,
        manufacturer=module.manufacturer,
        library_version=module.library_version,
        cryptoki_version=module.cryptoki_version,
    )
    report.slots = [_slot_report(entry, mechanisms) for entry in list_slots(module)]
    return report


def inventory(refs: list[ModuleRef], *, mechanisms: bool = False, strict: bool = False) -> list[ModuleReport]:
    """Every module, each with its slots.

    A discovered module that fails to load is reported, not fatal (one broken vendor module must
    not hide the others); with ``strict`` (modules the user named) it is an error.
    """
    reports = []
    for ref in refs:
        try:
            reports.append(module_report(load_module(ref), mechanisms=mechanisms))
        except ModuleError as exc:
            if strict:
                raise
            reports.append(ModuleReport(name=ref.name, path=ref.path, source=ref.source, error=exc.one_line()))
    return reports
