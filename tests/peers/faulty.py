"""A deliberately broken CA endpoint for the failure tests: one HTTP server on 127.0.0.1 whose first
path segment says how it fails.

  /500/...       HTTP 500 Internal Server Error (an IIS or Django crash)
  /503/...       HTTP 503 with Retry-After: 120 (a CA in maintenance)
  /hang/...      reads the request, then answers nothing for HANG_SECONDS (a timeout)
  /garbage/...   HTTP 200 with random bytes, typed as the path's second segment asks:
                 /garbage/cmc/... application/pkcs7-mime, /garbage/certsrv/... text/html
  /nothttp/...   bytes that are not HTTP at all
  /tamper/...    forwards the request to the upstream server (set with `upstream=`) and flips one
                 byte inside the signed content of the answer: a response whose signature fails

It follows no CA protocol on purpose; "connection refused" needs no server at all (`closed_port`).
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HANG_SECONDS = 20


class FaultyServer:
    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="faulty-ca", daemon=True)
        self.thread.start()
        self.stopping = threading.Event()

    def url(self, mode: str, rest: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/{rest.lstrip('/')}"

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound and closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _handler(owner: FaultyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            self._answer(b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._answer(self.rfile.read(length))

        def _answer(self, body: bytes) -> None:
            parts = self.path.lstrip("/").split("/", 2)
            mode = parts[0]
            if mode == "500":
                self._send(500, b"<html>internal server error</html>", "text/html")
            elif mode == "503":
                self._send(503, b"maintenance", "text/plain", {"Retry-After": "120"})
            elif mode == "hang":
                owner.stopping.wait(HANG_SECONDS)
            elif mode == "garbage":
                kind = parts[1] if len(parts) > 1 else ""
                content_type = {"cmc": "application/pkcs7-mime", "certsrv": "text/html"}.get(kind, "text/plain")
                self._send(200, os.urandom(700), content_type)
            elif mode == "nothttp":
                self.wfile.write(b"\x16\x03\x01 this is not an HTTP answer\r\n\r\n")
                self.close_connection = True
            elif mode == "tamper" and owner.upstream:
                self._tamper(body, "/" + "/".join(parts[1:]))
            else:
                self._send(404, b"no such mode", "text/plain")

        def _tamper(self, body: bytes, path: str) -> None:
            upstream = urllib.parse.urlsplit(owner.upstream or "")
            connection = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type",)}
                connection.request(self.command, path, body=body or None, headers=headers)
                answer = connection.getresponse()
                data = bytearray(answer.read())
                content_type = answer.getheader("Content-Type") or "application/octet-stream"
                status = answer.status
            finally:
                connection.close()
            if status == 200 and len(data) > 400:
                # a byte of the encapsulated PKIResponse (near the start, after the SignedData
                # headers): the messageDigest no longer matches, the signature fails
                data[120] ^= 0x01
            self._send(status, bytes(data), content_type)

        def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


if __name__ == "__main__":  # manual use: python tests/peers/faulty.py [UPSTREAM]
    import sys

    server = FaultyServer(sys.argv[1] if len(sys.argv) > 1 else None)
    print(f"listening on 127.0.0.1:{server.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
