"""The `openssl cmp` mock server (OpenSSL 3.0) as a CMP peer for the tests, each in a private network namespace.

The server takes a bare port and listens on every interface, so it runs alone in a network namespace
with only loopback (``unshare -n``, we are root); clients join that namespace with
``nsenter --net=/proc/PID/ns/net``. It always answers with its one fixed ``-rsp_cert``, which must be
a certificate for the requester's key: the tests make that key once, then the certificate, then the
servers. One server per behaviour (normal, polling, rejection, error): each is started when a test
first asks for it and stopped at the end of the module.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PORT = 8080  # the namespace is private: any port is free
START_TIMEOUT = 10.0


@dataclass
class CmpServer:
    """One `openssl cmp -port` process in its own network namespace."""

    name: str
    directory: Path
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    args: tuple[str, ...] = field(default=())

    @property
    def pid(self) -> int:
        return self.process.pid

    def netns(self) -> list[str]:
        """The command prefix that runs a client inside the server's network namespace."""
        return ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--"]

    def requests(self) -> int:
        """How many HTTP requests the server has received (from its log)."""
        return self.log.read_text(errors="replace").count("Received request")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    name: str,
    directory: Path,
    *,
    rsp_cert: Path,
    ca_cert: Path,
    secret: str | None,
    reference: str,
    extra: tuple[str, ...] = (),
) -> CmpServer:
    """Start a mock server answering with ``rsp_cert``, MAC protection with ``secret`` under ``reference``
    (without a secret it signs its answers with ``-srv_cert``/``-srv_key`` given in ``extra``)."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / f"{name}.log"
    command = [
        "openssl", "cmp", "-port", str(PORT), "-srv_ref", reference,
        *(["-srv_secret", f"pass:{secret}"] if secret is not None else []),
        "-rsp_cert", str(rsp_cert), "-rsp_capubs", str(ca_cert), *extra,
    ]  # fmt: skip
    script = "ip link set lo up && exec " + " ".join(_quote(part) for part in command)
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", script], stdout=out, stderr=subprocess.STDOUT, cwd=directory
        )
    server = CmpServer(name, directory, process, f"http://127.0.0.1:{PORT}/pkix/", log, tuple(extra))
    deadline = time.monotonic() + START_TIMEOUT
    while b"ACCEPT" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"openssl cmp server {name} did not start: {log.read_text(errors='replace')}")
        time.sleep(0.02)
    return server


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


class Servers:
    """Servers by behaviour, started on first use and stopped together."""

    def __init__(self, directory: Path, rsp_cert: Path, ca_cert: Path, secret: str, reference: str) -> None:
        self.directory = directory
        self.rsp_cert = rsp_cert
        self.ca_cert = ca_cert
        self.secret = secret
        self.reference = reference
        self._running: dict[str, CmpServer] = {}

    def get(self, name: str, *extra: str, mac: bool = True) -> CmpServer:
        if name not in self._running:
            self._running[name] = start(
                name,
                self.directory / name,
                rsp_cert=self.rsp_cert,
                ca_cert=self.ca_cert,
                secret=self.secret if mac else None,
                reference=self.reference,
                extra=extra,
            )
        return self._running[name]

    def stop(self) -> None:
        for server in self._running.values():
            with contextlib.suppress(OSError):
                server.stop()
        self._running.clear()
