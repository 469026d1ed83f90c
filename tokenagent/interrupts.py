"""Ctrl-C and SIGTERM: how a run stops, for the console entry point (entry.py) and the CLI.

The first SIGINT (or SIGTERM) raises KeyboardInterrupt where the program is, so every rollback
(`except BaseException` / `finally`) runs. Further signals in the next `GRACE_SECONDS` are
ignored, so they cannot cut that rollback short; one after that stops the program anyway (a
KeyboardInterrupt raised inside a `__del__` is swallowed by Python, and a stuck rollback must not
hold the terminal for ever; what it leaves on a token the next `new` recovers).

An interrupted run ends with os._exit once its output is flushed: CPython 3.11 kills a process
with SIGINT at exit whenever a KeyboardInterrupt passed through a builtin exec() (dataclasses use
one), even when tokenagent handled it, which would turn exit 130 into "killed by SIGINT".
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from types import FrameType

GRACE_SECONDS = 5.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The signal that ended the run, once one has.
received: int | None = None
_first_at = 0.0


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global received, _first_at
    now = time.monotonic()
    if received is not None and now - _first_at < GRACE_SECONDS:
        return  # the run is already stopping: let its rollback finish
    received, _first_at = signum, now
    raise KeyboardInterrupt


def install() -> None:
    for signum in _SIGNALS:
        signal.signal(signum, _on_signal)


def ignore() -> None:
    """From here on nothing may interrupt: the interpreter's own shutdown."""
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def terminated() -> bool:
    """True when the run was ended by SIGTERM, not by Ctrl-C."""
    return received == signal.SIGTERM


def exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: the exit code still counts
            stream.flush()
    os._exit(code)
