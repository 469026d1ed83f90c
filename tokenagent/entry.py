"""The console entry point, kept tiny so that Ctrl-C is handled from the first moment.

The signal handlers (interrupts.py) are installed before anything heavy is imported (click,
cryptography, python-pkcs11), so a Ctrl-C while the program is still starting prints one line and
exits 130 like any other. SIGTERM ends the run the same way, with exit code 143.
"""

from __future__ import annotations

import sys

from tokenagent import interrupts


def main() -> None:
    interrupts.install()
    try:
        from tokenagent.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:  # before the command line was read, or after its own handler
        interrupts.ignore()
        terminated = interrupts.terminated()
        sys.stderr.write(f"tokenagent: error: {'terminated' if terminated else 'interrupted'}\n")
        interrupts.exit_now(143 if terminated else 130)
    except SystemExit as exc:
        interrupts.ignore()
        if interrupts.received is not None:
            interrupts.exit_now(exc.code if isinstance(exc.code, int) else 1)
        raise
    interrupts.ignore()


if __name__ == "__main__":
    main()
