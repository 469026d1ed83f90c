"""A real cfssl CA (Debian golang-cfssl) for the cfssl connector's tests.

`cfssl gencert -initca` makes the CA; `cfssl serve` signs on 127.0.0.1 (it binds the address it is
given, so no network namespace is needed) with three signing profiles: the default, "server", and
"authd", which needs an HMAC auth key (``/authsign``). Started once per test session, stopped at
the end; its state lives in a private directory.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

AUTH_KEY = "3f1c0ffee0ddba11cafe5eedfacade17"  # hex, as cfssl's auth_keys "standard" type wants


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class CfsslServer:
    directory: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> Path:
        return self.directory / "ca.pem"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(directory: Path) -> CfsslServer:
    directory.mkdir(parents=True, exist_ok=True)
    csr = {"CN": "tokenagent test cfssl CA", "key": {"algo": "rsa", "size": 2048}, "names": [{"O": "tokenagent"}]}
    (directory / "ca-csr.json").write_text(json.dumps(csr))
    made = subprocess.run(
        ["cfssl", "gencert", "-initca", str(directory / "ca-csr.json")], capture_output=True, check=True
    ).stdout
    subprocess.run(["cfssljson", "-bare", str(directory / "ca")], input=made, capture_output=True, check=True)
    usages = ["digital signature", "key encipherment"]
    config = {
        "signing": {
            "default": {"expiry": "24h", "usages": [*usages, "client auth"]},
            "profiles": {
                "server": {"expiry": "24h", "usages": [*usages, "server auth"]},
                "authd": {"expiry": "24h", "usages": [*usages, "client auth"], "auth_key": "station"},
            },
        },
        "auth_keys": {"station": {"type": "standard", "key": AUTH_KEY}},
    }
    (directory / "config.json").write_text(json.dumps(config))
    port = free_port()
    log = (directory / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            "cfssl", "serve", "-address", "127.0.0.1", "-port", str(port),
            "-ca", str(directory / "ca.pem"), "-ca-key", str(directory / "ca-key.pem"),
            "-config", str(directory / "config.json"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=directory,
    )  # fmt: skip
    server = CfsslServer(directory, port, process)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"cfssl serve exited: {(directory / 'serve.log').read_text()[-2000:]}")
        try:
            request = urllib.request.Request(f"{server.url}/api/v1/cfssl/info", b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=2) as answer:
                if answer.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    server.stop()
    raise RuntimeError("cfssl serve did not answer within 20 s")
