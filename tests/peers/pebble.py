"""A real ACME (RFC 8555) CA for the tests: Debian's `pebble`, with `pebble-challtestsrv` as its DNS.

pebble validates for real (no PEBBLE_VA_ALWAYS_VALID): it asks challtestsrv's DNS server for every
name, which answers 127.0.0.1 for any A query (no AAAA: ``-defaultIPv6 ""``), so an HTTP-01
challenge is fetched from ``http://127.0.0.1:<http_port>/.well-known/acme-challenge/TOKEN``, where
tokenagent's built-in responder (or the test's own web server) answers; a DNS-01 TXT record is
whatever challtestsrv's management API was told (``/set-txt``, ``/clear-txt``), as an operator's
DNS hook would do. Everything listens on 127.0.0.1 and free ports, in a private directory; or, with
``namespace=True``, in a private network namespace (``unshare -n``) on the standard ports, where
HTTP-01 is fetched from port 80 as public CAs do; clients then run through `Pebble.inside`.

pebble makes a new TLS-independent issuing root at each start (management API ``/roots/0``,
``/intermediates/0``); its HTTPS listener uses a certificate from a small TLS CA made here
(``tls-ca.pem``: what clients pass as ``--ca-bundle``).

Environment: ``PEBBLE_VA_NOSLEEP=1`` (validate at once), ``PEBBLE_WFE_NONCEREJECT`` as asked (0: no
spurious badNonce), ``PEBBLE_AUTHZREUSE=0`` (every order gets fresh authorizations, so every test
really validates). ``domainBlocklist`` makes pebble refuse names with rejectedIdentifier.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 15.0
BLOCKED_DOMAIN = "blocked.example"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A TLS CA and a server certificate for 127.0.0.1 and localhost: (ca.pem, server.pem, server.key)."""
    ca_key, ca_pem = directory / "tls-ca.key", directory / "tls-ca.pem"
    key, csr, pem = directory / "tls.key", directory / "tls.csr", directory / "tls.pem"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca_pem, "-subj", "/CN=pebble test TLS CA", "-days", "2")
    _openssl("req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    extensions = directory / "tls.ext"
    extensions.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth\n")
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial",
        "-out", pem, "-days", "2", "-extfile", extensions,
    )  # fmt: skip
    return ca_pem, pem, key


@dataclass
class Pebble:
    directory: Path
    tls_ca: Path
    port: int
    management_port: int
    http_port: int  # where pebble fetches HTTP-01 answers (on 127.0.0.1, from challtestsrv's DNS)
    dns_port: int
    challtestsrv_port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespace: bool = False  # pebble and challtestsrv in a private network namespace (only loopback)

    def inside(self) -> list[str]:
        """The command prefix that runs a client in pebble's network namespace (empty when none)."""
        if not self.namespace:
            return []
        return ["nsenter", f"--net=/proc/{self.processes[0].pid}/ns/net", "--"]

    @property
    def url(self) -> str:
        """The ACME directory URL."""
        return f"https://127.0.0.1:{self.port}/dir"

    @classmethod
    def start(cls, directory: Path, *, namespace: bool = False, nonce_reject: int = 0) -> Pebble:
        """pebble and its DNS; with ``namespace``, in a network namespace of their own, where HTTP-01
        is fetched from port 80 as public CAs do (nothing else can be there)."""
        directory.mkdir(parents=True, exist_ok=True)
        tls_ca, tls_pem, tls_key = make_tls(directory)
        ports = (14000, 15000, 80, 8053, 8055) if namespace else tuple(free_port() for _ in range(5))
        peer = cls(directory, tls_ca, *ports, namespace=namespace)
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{peer.port}",
                "managementListenAddress": f"127.0.0.1:{peer.management_port}",
                "certificate": str(tls_pem),
                "privateKey": str(tls_key),
                "httpPort": peer.http_port,
                "tlsPort": 5001 if namespace else free_port(),
                "ocspResponderURL": "",
                "domainBlocklist": [BLOCKED_DOMAIN],
            }
        }
        (directory / "pebble.json").write_text(json.dumps(config, indent=2))
        log = (directory / "server.log").open("wb")
        env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": str(nonce_reject),
            "PEBBLE_AUTHZREUSE": "0",
        }
        command = ["pebble", "-config", str(directory / "pebble.json"), "-dnsserver", f"127.0.0.1:{peer.dns_port}"]
        if namespace:  # unshare execs sh, sh execs pebble: the process's network namespace is the new one
            command = ["unshare", "-n", "sh", "-c", 'ip link set lo up; exec "$@"', "pebble", *command]
        peer.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=directory, env=env))
        challtestsrv = [
            *peer.inside(),
            "pebble-challtestsrv",
            "-management", f"127.0.0.1:{peer.challtestsrv_port}",
            "-dns01", f"127.0.0.1:{peer.dns_port}",
            "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
        ]  # fmt: skip
        time.sleep(0.05)  # the namespace exists once unshare has run
        peer.processes.append(subprocess.Popen(challtestsrv, stdout=log, stderr=subprocess.STDOUT, cwd=directory))
        try:
            peer._wait_ready()
        except BaseException:
            peer.stop()
            raise
        return peer

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"pebble exited: {(self.directory / 'server.log').read_text()[-2000:]}")
            try:
                self.get(self.url)
                self.manage("GET", "/roots/0")
                self.get(f"http://127.0.0.1:{self.challtestsrv_port}/", ok=(200, 404))
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"pebble did not start: {(self.directory / 'server.log').read_text()[-2000:]}")

    def get(self, url: str, ok: tuple[int, ...] = (200,)) -> bytes:
        """GET ``url`` (trusting pebble's TLS CA); `OSError` unless the status is one of ``ok``."""
        if self.namespace:  # curl, run inside the namespace
            command = [*self.inside(), "curl", "-s", "--cacert", str(self.tls_ca), "-w", "\n%{http_code}", url]
            done = subprocess.run(command, capture_output=True, check=False)
            body, _, status = done.stdout.rpartition(b"\n")
            if done.returncode != 0 or int(status or 0) not in ok:
                raise OSError(f"curl {url}: exit {done.returncode}, HTTP {status.decode()}")
            return body
        context = ssl.create_default_context(cafile=str(self.tls_ca))
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as answer:
                return bytes(answer.read())
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return b""
            raise

    def manage(self, method: str, path: str) -> bytes:
        return self.get(f"https://127.0.0.1:{self.management_port}{path}")

    def issuer_pems(self) -> tuple[bytes, bytes]:
        """(root, intermediate) PEM, from the management API."""
        return self.manage("GET", "/roots/0"), self.manage("GET", "/intermediates/0")

    def challtestsrv(self, path: str, body: dict[str, str]) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.challtestsrv_port}{path}", data=json.dumps(body).encode(), method="POST"
        )
        urllib.request.urlopen(request, timeout=5).close()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
