"""PIV slots holding a key that a rolled-back `new` discarded.

A PIV card cannot delete a key (YubiKey firmware before 5.7; ykcs11 2.2 never tries): rolling back
a generation only deletes the slot's certificate, and ykcs11 keeps listing the key from the
card's metadata. Without a record the slot would then look taken, and the next enrollment would be
refused or need PivOverwrite = TRUE. So the rollback records the key it gave up (its card, slot and
public key hash), and the capacity check treats a slot that holds exactly that key and no
certificate as empty. A key anyone else put there has another public key and stays protected.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tokenagent.store.database import DISCARDED_TABLE, StateDatabase


class DiscardedKeys:
    """The discarded-key records of one state database (the file the pending requests are in)."""

    def __init__(self, path: Path) -> None:
        self.database = StateDatabase(Path(path))

    def add(self, token_serial: str, key_id: bytes, public_key_sha256: str) -> None:
        with self.database.writing() as connection:
            connection.execute(
                f"INSERT OR REPLACE INTO {DISCARDED_TABLE} (token_serial, key_id, public_key_sha256, discarded) "
                "VALUES (?, ?, ?, ?)",
                (token_serial, key_id.hex(), public_key_sha256, datetime.now(UTC).isoformat()),
            )

    def for_token(self, token_serial: str) -> dict[bytes, str]:
        """CKA_ID of the slot -> SHA-256 of the public key discarded there."""
        if not self.database.exists():
            return {}
        with self.database.reading() as (connection, version):
            if version < 4:
                return {}
            rows = connection.execute(
                f"SELECT key_id, public_key_sha256 FROM {DISCARDED_TABLE} WHERE token_serial = ?", (token_serial,)
            ).fetchall()
        return {bytes.fromhex(key_id): digest for key_id, digest in rows}
