"""The station config: which PKCS#11 token belongs to which PC/SC reader, where the module does not
say so itself.

OpenSC and ykcs11 name the reader in each slot's description, so their tokens are found by
reader name. SoftHSM, an HSM partition or a vendor module whose slot descriptions name no reader
are mapped here. Files are read in this order, later ones overriding earlier entries reader by
reader (as cas.toml and providers.toml): ``/etc/tokenagent/station.toml``,
``$XDG_CONFIG_HOME/tokenagent/station.toml`` (default ``~/.config/tokenagent/station.toml``), and
``--station-config FILE``::

  [readers]
  # reader name (as `tokenagent readers` prints it) = a --token value: label, serial or pkcs11: URI
  "Yubico YubiKey vpcd 00 01" = "pkcs11:token=station-a"
  # or a table, when the token is behind a module that is not searched by default
  "OMNIKEY 3x21 00 00" = { token = "hsm-a", module = "/usr/lib/softhsm/libsofthsm2.so" }

Other top-level tables belong to other parts of the station (`tokenagent station`) and are left
alone here.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenagent.errors import InputError, TokenAgentError
from tokenagent.inputs import read_input
from tokenagent.token.uri import is_pkcs11_uri, parse_uri

SYSTEM_STATION_CONFIG = Path("/etc/tokenagent/station.toml")


@dataclass(frozen=True)
class ReaderMapping:
    reader: str
    token: str  # a --token value: label, serial or pkcs11: URI
    module: str | None  # a --module value, or None for the modules searched anyway
    source: str  # file it came from

    def to_json(self) -> dict[str, object]:
        return {"token": self.token, "module": self.module, "source": self.source}


@dataclass(frozen=True)
class StationConfig:
    files: tuple[str, ...]
    readers: dict[str, ReaderMapping]
    #: the ``[station]`` table of each file that has one, in reading order (`tokenagent station` checks it)
    station_tables: tuple[tuple[Path, dict[str, Any]], ...] = ()


def station_files(explicit: Sequence[str | Path] = (), env: Mapping[str, str] | None = None) -> list[Path]:
    """The station.toml files to read, in order. Default locations are skipped when absent; a file
    named with --station-config must exist (read_input says so otherwise)."""
    env = os.environ if env is None else env
    config_home = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME", "~")).expanduser() / ".config")
    files = [path for path in (SYSTEM_STATION_CONFIG, config_home / "tokenagent" / "station.toml") if path.is_file()]
    files.extend(Path(p) for p in explicit)
    return files


def load_station_config(explicit: Sequence[str | Path] = (), env: Mapping[str, str] | None = None) -> StationConfig:
    files = station_files(explicit, env)
    readers: dict[str, ReaderMapping] = {}
    tables: list[tuple[Path, dict[str, Any]]] = []
    for path in files:
        document = _read(path)
        for mapping in _readers(document, path):
            readers[mapping.reader] = mapping
        if "station" in document:
            if not isinstance(document["station"], dict):
                raise InputError(f"{path}: [station] must be a table")
            tables.append((path, document["station"]))
    return StationConfig(files=tuple(str(p) for p in files), readers=readers, station_tables=tuple(tables))


_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)$")


def _read(path: Path) -> dict[str, Any]:
    data = read_input(path, "station config")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "Expected '=' after a key ... (at line 3, column 5)": as file:line, like INF errors
        text = str(exc)
        found = _TOML_LINE.search(text)
        where = f"{path}:{found.group(1)}" if found else str(path)
        raise InputError(f"{where}: not valid TOML: {_TOML_LINE.sub('', text).strip()}") from None
    return document


def _readers(document: dict[str, Any], path: Path) -> list[ReaderMapping]:
    table = document.get("readers", {})
    if not isinstance(table, dict):
        raise InputError(f'{path}: readers must be a table: [readers] "Reader Name" = "token label"')
    return [_mapping(str(reader), value, path) for reader, value in table.items()]


def _mapping(reader: str, value: object, path: Path) -> ReaderMapping:
    where = f"{path}: [readers] {reader!r}"
    token: object
    module: object = None
    if isinstance(value, str):
        token = value
    elif isinstance(value, dict):
        unknown = set(value) - {"token", "module"}
        if unknown:
            raise InputError(f"{where}: unknown keys {', '.join(sorted(unknown))} (expected token, module)")
        token, module = value.get("token"), value.get("module")
        if module is not None and (not isinstance(module, str) or not module):
            raise InputError(f"{where}: module must be a path or p11-kit module name")
    else:
        raise InputError(
            f'{where}: expected a token (label, serial or pkcs11: URI) or {{ token = "...", module = "..." }}'
        )
    if not isinstance(token, str) or not token:
        raise InputError(f"{where}: needs a token: a label, serial or pkcs11: URI")
    if is_pkcs11_uri(token):
        try:
            uri = parse_uri(token)
        except TokenAgentError as exc:  # a malformed URI: said here, with the file, not at use
            raise InputError(f"{where}: {exc.message}") from None
        if uri.has_pin_value:
            raise InputError(f"{where}: a PIN does not belong in the station config (pin-value)")
    return ReaderMapping(
        reader=reader, token=token, module=module if isinstance(module, str) else None, source=str(path)
    )
