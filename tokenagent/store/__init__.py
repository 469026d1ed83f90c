"""tokenagent's state on disk: the pending-request store and where it lives."""

from tokenagent.store.paths import PENDING_DB_NAME, STATE_DIR_ENV, pending_db_path, state_dir
from tokenagent.store.pending import (
    REQUEST_TYPES,
    SCHEMA_VERSION,
    NewPending,
    PendingRequest,
    PendingStore,
)

__all__ = [
    "PENDING_DB_NAME",
    "REQUEST_TYPES",
    "SCHEMA_VERSION",
    "STATE_DIR_ENV",
    "NewPending",
    "PendingRequest",
    "PendingStore",
    "pending_db_path",
    "state_dir",
]
