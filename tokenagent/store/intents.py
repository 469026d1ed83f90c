"""Key-generation intents: what makes `new` crash-safe.

A process can die at any moment (SIGKILL, the OOM killer, power loss, a card pulled out), and
PKCS#11 has no transaction that spans C_GenerateKeyPair and the pending record. So before a key
pair is generated, `new` records an *intent* durably: the token, the KeyContainer label and the
temporary CKA_ID that the generation template gives both halves. As soon as the public key is read,
the final CKA_ID (SHA-1 of the public key) is recorded in the intent too, before it is set on the
objects. The intent ends in the same transaction that records the pending request (or, for
RequestType = Cert, when the certificate is on the token), or after a rollback that removed the
objects.

So every object a `new` can leave behind carries a CKA_ID that an open intent names. An intent
still open when no `new` is running on its token is the trace of a run that died: recovery
(enroll/recovery.py), run by the next `new` on that token under the token lock
(store/locks.py), or by `tokenagent pending --recover`, finds its objects by those CKA_IDs and
removes them.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokenagent.errors import InputError
from tokenagent.store.database import INTENT_TABLE, StateDatabase

#: A generated key pair is born with CKA_ID = this prefix + random bytes (20 bytes in all, the size
#: of the final SHA-1 CKA_ID), so that its intent can find it whenever the run dies.
TEMPORARY_ID_PREFIX = b"ta-new:"
TEMPORARY_ID_RANDOM_BYTES = 13


def temporary_key_id() -> bytes:
    return TEMPORARY_ID_PREFIX + secrets.token_bytes(TEMPORARY_ID_RANDOM_BYTES)


_COLUMNS = (
    "id",
    "created",
    "token_label",
    "token_serial",
    "token_model",
    "module_path",
    "key_label",
    "temporary_id",
    "key_id",
    "pid",
    "output",
)


@dataclass(frozen=True)
class KeyIntent:
    """A key generation that started and has not ended (yet, or ever)."""

    id: int
    created: datetime  # UTC
    token_label: str
    token_serial: str
    token_model: str
    module_path: str
    key_label: str  # CKA_LABEL given at generation (the KeyContainer)
    temporary_id: str  # hex CKA_ID in the generation template
    key_id: str | None  # hex final CKA_ID, once the public key was read
    pid: int  # the process that started it
    output: str | None  # the request file it was writing, if any

    def object_ids(self) -> list[bytes]:
        """Every CKA_ID an object of this generation can carry."""
        ids = [bytes.fromhex(self.temporary_id)]
        if self.key_id:
            ids.append(bytes.fromhex(self.key_id))
        return ids

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in _COLUMNS} | {"created": self.created.isoformat()}


class IntentStore:
    """The open intents in one state database (the same file as the pending requests)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.database = StateDatabase(self.path)

    def begin(
        self,
        *,
        token_label: str,
        token_serial: str,
        token_model: str,
        module_path: str,
        key_label: str,
        temporary_id: bytes,
        output: str | None,
    ) -> KeyIntent:
        """Record an intent, durably (synchronous=FULL), before C_GenerateKeyPair."""
        values: dict[str, Any] = {
            "created": datetime.now(UTC).isoformat(),
            "token_label": token_label,
            "token_serial": token_serial,
            "token_model": token_model,
            "module_path": module_path,
            "key_label": key_label,
            "temporary_id": temporary_id.hex(),
            "key_id": None,
            "pid": os.getpid(),
            "output": output,
        }
        with self.database.writing() as connection:
            names = list(values)
            cursor = connection.execute(
                f"INSERT INTO {INTENT_TABLE} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})", values
            )
            intent_id = cursor.lastrowid
        assert intent_id is not None
        return self._from_row((intent_id, *values.values()))

    def note_key_id(self, intent_id: int, key_id: bytes) -> None:
        """The final CKA_ID, recorded before it is set on the objects."""
        with self.database.writing() as connection:
            connection.execute(f"UPDATE {INTENT_TABLE} SET key_id = ? WHERE id = ?", (key_id.hex(), intent_id))

    def end(self, intent_id: int) -> None:
        with self.database.writing() as connection:
            connection.execute(f"DELETE FROM {INTENT_TABLE} WHERE id = ?", (intent_id,))

    def open_intents(self, *, token_serial: str | None = None, token_label: str | None = None) -> list[KeyIntent]:
        """Open intents, all or those for one token (by serial and label)."""
        if not self.database.exists():
            return []
        where: str = ""
        parameters: tuple[str, ...] = ()
        if token_serial is not None and token_label is not None:
            where, parameters = "WHERE token_serial = ? AND token_label = ?", (token_serial, token_label)
        with self.database.reading() as (connection, version):
            if version < 2:
                return []  # a store from before intents existed has none
            rows = connection.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM {INTENT_TABLE} {where} ORDER BY id", parameters
            ).fetchall()
        return [self._from_row(tuple(row)) for row in rows]

    def _from_row(self, row: tuple[Any, ...]) -> KeyIntent:
        values = dict(zip(_COLUMNS, row, strict=True))
        try:
            values["created"] = datetime.fromisoformat(values["created"]).astimezone(UTC)
            for name in ("temporary_id", "key_id"):
                if values[name] is not None:
                    bytes.fromhex(values[name])
        except (TypeError, ValueError) as exc:
            raise InputError(f"pending store {self.path} has a damaged intent with ID {values['id']} ({exc})") from exc
        return KeyIntent(**values)
