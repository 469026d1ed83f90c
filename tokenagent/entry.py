"""The console entry point, kept tiny so that Ctrl-C is handled from the first moment.

The handler is installed before anything heavy is imported (click, cryptography, python-pkcs11),
so a Ctrl-C while the program is still starting prints one line and exits 130 like any other.
The first SIGINT (or SIGTERM) raises KeyboardInterrupt where the program is, so every rollback
(`except BaseException` / `finally`) runs. Further signals in the next `GRACE_SECONDS` are
ignored, so they cannot cut that rollback short; one after that stops the program anyway (a
KeyboardInterrupt raised inside a `__del__` is swallowed by Python, and a stuck rollback must not
hold the terminal for ever; what it leaves on a token the next `new` recovers). SIGTERM ends the
run the same way, with exit code 143.

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

#: The signal that ended the run, once one has.
received: int | None = None
GRACE_SECONDS = 5.0
_first_at = 0.0


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global received, _first_at
    now = time.monotonic()
    if received is not None and now - _first_at < GRACE_SECONDS:
        return  # the run is already stopping: let its rollback finish
    received, _first_at = signum, now
    raise KeyboardInterrupt


def _ignore_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: the exit code still counts
            stream.flush()
    os._exit(code)


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)
    try:
        from tokenagent.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:  # before the command line was read, or after its own handler
        _ignore_signals()
        terminated = received == signal.SIGTERM
        sys.stderr.write(f"tokenagent: error: {'terminated' if terminated else 'interrupted'}\n")
        _exit_now(143 if terminated else 130)
    except SystemExit as exc:
        _ignore_signals()  # nothing may interrupt the interpreter's own shutdown
        if received is not None:
            _exit_now(exc.code if isinstance(exc.code, int) else 1)
        raise
    _ignore_signals()


if __name__ == "__main__":
    main()
