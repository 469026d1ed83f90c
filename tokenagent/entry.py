"""The console entry point, kept tiny so that Ctrl-C is handled from the first moment.

The handler is installed before anything heavy is imported (click, cryptography, python-pkcs11),
so a Ctrl-C while the program is still starting prints one line and exits 130 like any other.
The first SIGINT (or SIGTERM) raises KeyboardInterrupt where the program is, so every rollback
(`except BaseException` / `finally`) runs; later signals are ignored so they cannot interrupt that
rollback. SIGTERM ends the run the same way, with exit code 143.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

#: The signal that ended the run, once one has.
received: int | None = None


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global received
    received = signum
    _ignore_signals()
    raise KeyboardInterrupt


def _ignore_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


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
        sys.exit(143 if terminated else 130)
    finally:
        _ignore_signals()  # nothing may interrupt the interpreter's own shutdown


if __name__ == "__main__":
    main()
