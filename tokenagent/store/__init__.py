"""tokenagent's state on disk: the pending-request store, key-generation intents, token locks."""

from tokenagent.store.database import SCHEMA_VERSION
from tokenagent.store.intents import IntentStore, KeyIntent
from tokenagent.store.locks import token_lock
from tokenagent.store.paths import PENDING_DB_NAME, STATE_DIR_ENV, pending_db_path, state_dir
from tokenagent.store.pending import REQUEST_TYPES, NewPending, PendingRequest, PendingStore

__all__ = [
    "PENDING_DB_NAME",
    "REQUEST_TYPES",
    "SCHEMA_VERSION",
    "STATE_DIR_ENV",
    "IntentStore",
    "KeyIntent",
    "NewPending",
    "PendingRequest",
    "PendingStore",
    "pending_db_path",
    "state_dir",
    "token_lock",
]
