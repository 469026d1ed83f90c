"""Where tokenagent keeps its state (the pending-request store), per user or for the machine."""

from __future__ import annotations

import os
from pathlib import Path

#: Overrides the state directory in both contexts (tests, containers, a copied store).
STATE_DIR_ENV = "TOKENAGENT_STATE_DIR"
MACHINE_STATE_DIR = Path("/var/lib/tokenagent")
PENDING_DB_NAME = "pending.sqlite3"


def state_dir(machine: bool) -> Path:
    """The state directory: $TOKENAGENT_STATE_DIR, else the machine or the per-user XDG location."""
    override = os.environ.get(STATE_DIR_ENV)
    if override:
        return Path(override)
    if machine:
        return MACHINE_STATE_DIR
    xdg = os.environ.get("XDG_STATE_HOME")
    # The XDG spec says a relative value is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "tokenagent"
    return Path.home() / ".local" / "state" / "tokenagent"


# pending_db_path's parameter is called state_dir (it reads best at call sites), which hides the function.
_default_state_dir = state_dir


def pending_db_path(machine: bool, state_dir: Path | None = None) -> Path:
    directory = state_dir if state_dir is not None else _default_state_dir(machine)
    return directory / PENDING_DB_NAME
