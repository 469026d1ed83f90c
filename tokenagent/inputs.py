"""Reading an input file whole, with a bound: every file tokenagent reads goes through `read_input`.

A request, certificate, response or INF policy is at most a few kilobytes (a long certificate chain
some tens). So anything that is not a regular file is refused before a byte is read (`/dev/zero`
would fill memory, a FIFO with no writer would block for ever, a directory is a mistake), and so is
a regular file over `MAX_INPUT_BYTES`. ``-`` reads standard input, with the same bound.

The file is opened with O_NONBLOCK so that opening a FIFO cannot block; its type is then taken
from the open descriptor (fstat), so it cannot change between the check and the read.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from tokenagent.errors import InputError

#: The largest input read, in bytes (documented in docs/commands.md).
MAX_INPUT_BYTES = 4 * 1024 * 1024
STDIN = "-"

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_input(path: str | Path, what: str = "", *, limit: int = MAX_INPUT_BYTES) -> bytes:
    """The whole content of ``path`` (a regular file, or ``-`` for standard input).

    Raises `InputError` "cannot read {what} {path}: reason" for a missing or unreadable file, one
    that is not a regular file, or one larger than ``limit`` bytes.
    """
    name = f"{what} {path}" if what else str(path)
    if str(path) == STDIN:
        return _bounded(sys.stdin.buffer.fileno(), name, limit)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"cannot read {name}: {_reason(exc)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((text for test, text in _KINDS if test(info.st_mode)), "not a regular file")
            raise InputError(f"cannot read {name}: it is {kind}, not a regular file")
        if info.st_size > limit:
            raise InputError(f"cannot read {name}: it is {info.st_size:,} bytes; the limit is {limit:,}")
        return _bounded(fd, name, limit)
    finally:
        os.close(fd)


def _bounded(fd: int, name: str, limit: int) -> bytes:
    """Read to the end, refusing as soon as more than ``limit`` bytes arrive (a growing file, a pipe)."""
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise InputError(f"cannot read {name}: it is longer than the limit of {limit:,} bytes")
    except BlockingIOError:
        raise InputError(f"cannot read {name}: no data is available (non-blocking input)") from None
    except OSError as exc:
        raise InputError(f"cannot read {name}: {_reason(exc)}") from None
    return b"".join(chunks)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
