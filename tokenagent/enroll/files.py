"""Output files written all or nothing: a temporary file next to the target, renamed at the end."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tokenagent.display import escape
from tokenagent.errors import OutputError


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse an output that exists, unless ``overwrite``: an existing name is any directory entry,
    a dangling symbolic link included (the link, not its target, is what -f replaces)."""
    if output.is_dir():
        raise OutputError(f"cannot write {escape(str(output))}: it is a directory")
    if os.path.lexists(output) and not overwrite:
        raise OutputError(f"{escape(str(output))} exists; give --overwrite (certreq -f) to replace it")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {output}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {output}: directory {parent} is not writable")


def write_temp(output: Path, data: bytes) -> Path:
    parent = output.parent if str(output.parent) else Path(".")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(name, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from None
    return Path(name)


def write_atomically(output: Path, data: bytes) -> None:
    """Write ``data`` to ``output`` so that readers see the old file or the whole new one."""
    temp = write_temp(output, data)
    try:
        os.replace(temp, output)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from None


def encode_request(der: bytes, binary: bool) -> bytes:
    """certreq base64 (NEW CERTIFICATE REQUEST armor, CRLF) or, with ``binary``, the DER itself."""
    from tokenagent.request.armor import REQUEST_LABEL, armor

    return der if binary else armor(der, REQUEST_LABEL).encode("ascii")
