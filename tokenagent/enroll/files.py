"""Output files written all or nothing: a temporary file next to the target, renamed at the end."""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from tokenagent.display import escape
from tokenagent.errors import OutputError


def is_device(output: Path) -> bool:
    """An existing output that is not a regular file: a character device (/dev/null, /dev/stdout,
    a terminal) or a FIFO. It is written in place, never replaced by a rename: as root, renaming a
    temporary file onto /dev/null would put a regular file where the device was."""
    try:
        mode = os.stat(output).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse an output that exists, unless ``overwrite``: an existing name is any directory entry,
    a dangling symbolic link included (the link, not its target, is what -f replaces). A device or
    a FIFO is written into, not replaced, so it needs no -f."""
    if output.is_dir():
        raise OutputError(f"cannot write {escape(str(output))}: it is a directory")
    if is_device(output):
        if not os.access(output, os.W_OK):
            raise OutputError(f"cannot write {escape(str(output))}: not writable")
        return
    if os.path.lexists(output) and not overwrite:
        raise OutputError(f"{escape(str(output))} exists; give --overwrite (certreq -f) to replace it")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {output}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {output}: directory {parent} is not writable")


def _temp_file(parent: Path, name: str) -> tuple[int, str]:
    """A new file .NAME.RANDOM.tmp beside the output, created exclusively, mode 0600: what
    tempfile.mkstemp does, without importing tempfile (shutil, bz2, lzma: ~2 ms of every `new`)."""
    for _ in range(100):
        path = os.path.join(parent, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {name} in {parent}")


def write_temp(output: Path, data: bytes) -> Path:
    parent = output.parent if str(output.parent) else Path(".")
    try:
        fd, name = _temp_file(parent, output.name)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(name, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from None
    return Path(name)


@dataclass
class Staged:
    """An output written but not yet in place: a temporary file beside a regular file (renamed by
    `commit`), or the bytes for a device (written into it by `commit`)."""

    output: Path
    data: bytes = field(repr=False)
    temp: Path | None = None
    committed: bool = False

    def commit(self) -> None:
        try:
            if self.temp is None:
                with open(self.output, "wb") as handle:  # a device or FIFO: written in place
                    handle.write(self.data)
            else:
                os.replace(self.temp, self.output)
                self.temp, self.committed = None, True
        except OSError as exc:
            raise OutputError(f"cannot write {self.output}: {exc.strerror or exc}") from None

    def withdraw(self) -> None:
        """Undo a commit into a regular file (a run interrupted right after it): the file goes too."""
        self.discard()
        if self.committed:
            self.output.unlink(missing_ok=True)
            self.committed = False

    def discard(self) -> None:
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)
            self.temp = None


def stage(output: Path, data: bytes) -> Staged:
    """The first half of an all-or-nothing write (`Staged.commit` is the second)."""
    return Staged(output, data) if is_device(output) else Staged(output, data, write_temp(output, data))


def write_atomically(output: Path, data: bytes) -> None:
    """Write ``data`` to ``output`` so that readers see the old file or the whole new one."""
    staged = stage(output, data)
    try:
        staged.commit()
    finally:
        staged.discard()


def encode_request(der: bytes, binary: bool) -> bytes:
    """certreq base64 (NEW CERTIFICATE REQUEST armor, CRLF) or, with ``binary``, the DER itself."""
    from tokenagent.request.armor import REQUEST_LABEL, armor

    return der if binary else armor(der, REQUEST_LABEL).encode("ascii")
