"""``file:DIR``: the CA is a person. The request is written to DIR for manual submission (as `new`
writes it today), and the answer is whatever file the person puts beside it.

`submit` writes ``DIR/<name>.req`` (certreq base64) and answers `Pending`; `poll` looks for
``<name>.cer``, ``.crt``, ``.pem``, ``.der``, ``.p7b`` or ``.rsp`` beside it and reads it as `accept`
reads a response. Without ``--config`` tokenagent uses ``file:`` (the current directory).
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenagent.ca.answers import Answer, Issued, Misconfigured, Pending, Rejected
from tokenagent.ca.connector import CaRequest, certificate_key_sha256
from tokenagent.ca.trust import check_issued_under
from tokenagent.errors import CAError, RequestPendingError
from tokenagent.inputs import read_input
from tokenagent.request.armor import armor
from tokenagent.request.response import read_response

ANSWER_SUFFIXES = (".cer", ".crt", ".pem", ".der", ".p7b", ".rsp")


class FileDropConnector:
    protocol = "file"

    def __init__(self, directory: Path, *, trust: tuple[bytes, ...] = ()) -> None:
        self.directory = directory
        self.trust = trust

    def describe(self) -> str:
        return f"file:{self.directory}"

    def close(self) -> None:
        return None

    def ca_certificates(self) -> tuple[bytes, ...]:
        return self.trust

    def submit(self, request: CaRequest) -> Answer:
        if not self.directory.is_dir():
            return Misconfigured(f"{self.directory} is not a directory to put requests into")
        name = f"tokenagent-{request.sha256[:16]}"
        path = self.directory / f"{name}.req"
        text = armor(request.der).encode("ascii")
        if not _same_content(path, text):
            try:
                _write_new(path, text)
            except FileExistsError:
                return Misconfigured(f"{path} exists with other content; move it away")
            except OSError as exc:
                return Misconfigured(f"cannot write {path}: {exc.strerror or exc}")
        return Pending(
            str(path),
            name,
            None,
            f"request written to {path}: take it to the CA and put its answer beside it as {name}.cer, .p7b or .rsp",
        )

    def poll(self, cookie: str, request: CaRequest | None) -> Answer:
        """``cookie``: the request file's path, or its name in the directory (the "request ID")."""
        path = Path(cookie)
        if not path.is_absolute():
            path = self.directory / path
        if path.suffix != ".req":
            path = path.with_name(path.name + ".req")
        for suffix in ANSWER_SUFFIXES:
            answer_path = path.with_suffix(suffix)
            if answer_path.is_file():
                return self._read(answer_path, request)
        names = ", ".join(path.with_suffix(s).name for s in ANSWER_SUFFIXES[:3])
        return Pending(cookie, path.stem, None, f"no answer beside {path} yet (expected {names}, ...)")

    def _read(self, path: Path, request: CaRequest | None) -> Answer:
        data = read_input(path, "CA answer")
        response = read_response(data, str(path))  # InputError for garbage: the person put a wrong file
        try:
            response.raise_for_status()
        except RequestPendingError as exc:
            return Pending(str(path.with_suffix(".req")), path.stem, None, exc.message)
        except CAError as exc:
            return Rejected(exc.message, None, None, path.stem)
        leaves = response.end_entities()
        if request is not None:
            leaves = [der for der in leaves if certificate_key_sha256(der) == request.public_key_sha256]
        if len(leaves) != 1:
            return Rejected(f"{path} holds {len(leaves)} certificates for the request's key, not one", None, None)
        leaf = leaves[0]
        chain = tuple(response.chain_for(leaf))
        if self.trust:
            check_issued_under(leaf, response.certificates, self.trust, str(path))
        return Issued(leaf, chain, data, response.form, path.stem)


def _same_content(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (never replacing a file) and sync it before the answer says it is there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
