"""One tokenagent at a time changes a token's keys: a lock file per token in the state directory.

`new` holds the lock from the KeyContainer check (is the label taken?) to the pending record, so
however many runs race with one KeyContainer, exactly one key is generated and the others see it
and stop with "already exists". Holding the lock also proves that no other `new` is between its
intent and its pending record on that token, which is what lets recovery (enroll/recovery.py)
remove what an open intent names.

The lock is an flock(2) on `<state dir>/locks/<token>.lock`: the kernel drops it when the process
dies, however it dies, so a crash never leaves a stale lock. It covers runs that share a state
directory (the same user and context); runs with different state directories on one token do not
see each other's lock (docs/commands.md says so).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tokenagent.display import escape
from tokenagent.errors import OutputError, TokenBusyError
from tokenagent.store.database import ensure_private_directory

#: How long a run waits for another one that holds the token's lock.
LOCK_TIMEOUT_SECONDS = 60.0
_POLL_SECONDS = 0.05


def selection_lock_path(state_dir: Path, selector: str) -> Path:
    """``locks/select-<hash of the --token value>.lock``."""
    return state_dir / "locks" / f"select-{hashlib.sha256(selector.encode('utf-8')).hexdigest()[:16]}.lock"


@contextmanager
def selection_lock(
    state_dir: Path,
    selector: str,
    *,
    timeout: float = LOCK_TIMEOUT_SECONDS,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Runs for the same ``--token`` take turns from before the PKCS#11 module is loaded.

    The token lock can only be taken once the token is found, but finding it already reads the
    token: SoftHSM's file store rewrites a token's token.object in place on every login and object
    change, and a process that loads the module at that moment does not see the token at all
    ("no token matches"). Runs that name the token the same way therefore queue here first.
    """
    with _locked(selection_lock_path(state_dir, selector), f"token {selector!r}", timeout, on_wait) as path:
        yield path


def lock_path(state_dir: Path, token_serial: str, token_label: str) -> Path:
    """``locks/token-<serial>-<hash of the label>.lock``: readable, and unique per token."""
    serial = re.sub(r"[^A-Za-z0-9_-]", "_", token_serial.strip()) or "noserial"
    digest = hashlib.sha256(token_label.encode("utf-8")).hexdigest()[:12]
    return state_dir / "locks" / f"token-{serial}-{digest}.lock"


@contextmanager
def token_lock(
    state_dir: Path,
    token_serial: str,
    token_label: str,
    *,
    timeout: float = LOCK_TIMEOUT_SECONDS,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold the token's lock for the ``with`` block; wait up to ``timeout`` seconds for it."""
    path = lock_path(state_dir, token_serial, token_label)
    with _locked(path, f"token '{escape(token_label)}'", timeout, on_wait):
        yield path


@contextmanager
def _locked(path: Path, what: str, timeout: float, on_wait: Callable[[str], None] | None) -> Iterator[Path]:
    ensure_private_directory(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise OutputError(f"cannot open lock file {path}: {exc.strerror or exc}") from None
    try:
        _acquire(fd, path, what, timeout, on_wait)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for the next one's message
        except OSError:
            pass  # the lock is what matters; the pid is only for messages
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _acquire(fd: int, path: Path, what: str, timeout: float, on_wait: Callable[[str], None] | None) -> None:
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            raise OutputError(f"cannot lock {path}: {exc.strerror or exc}") from None
        holder = _holder(fd)
        if not told and on_wait is not None:
            on_wait(f"waiting for another tokenagent{holder} that is using {what}")
            told = True
        if time.monotonic() >= deadline:
            raise TokenBusyError(
                f"{what} is in use by another tokenagent{holder}: gave up after {timeout:g} s (lock file {path})"
            )
        time.sleep(_POLL_SECONDS)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (process {text})" if text.isdigit() else ""
