"""The process inside the private network (and mount) namespace: pcscd with vpcd readers, one virtual
card per reader, and a control socket for the test process. Started by tests/peers/piv.py (see there).

    python pivcard_bridge.py --directory DIR --readers 2 --first-serial 30000000 [--trace]

Prints one JSON line {"pcscd": PID, "readers": N} once pcscd runs and every reader holds a blank card,
then serves DIR/control.sock: one JSON request per connection, one JSON answer:
    {"op": "insert", "reader": 0, "serial": 123, "management_key": "hex" | null}
    {"op": "remove", "reader": 0}
    {"op": "quit"}
It stops pcscd and exits on "quit", SIGTERM, or when its standard input closes (the test process died).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import logging
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")  # jcecard's TripleDES import: a deprecation warning per authentication

from pivcard import ATR, VirtualPiv  # noqa: E402

logging.getLogger().setLevel(logging.WARNING)  # jcecard configures INFO logging for every command

BASE_PORT = 0x8C7B  # vpcd's default; the namespace is private, so any port is free
DRIVERS = Path("/usr/lib/pcsc/drivers")
VPCD = DRIVERS / "serial" / "libifdvpcd.so"
FRIENDLY_NAME = "Yubico YubiKey vpcd"  # ykcs11 2.2.0 ignores readers whose names do not start with "Yubico"
TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the kernel sends SIGTERM when the parent goes, however it goes."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def loopback_up() -> None:
    """A new network namespace has only `lo`, and it is down (SIOCGIFFLAGS / SIOCSIFFLAGS, IFF_UP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, 0x8913, request))[1]
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))


def hide_usb_drivers(directory: Path) -> Path:
    """pcscd loads a driver for every USB reader it finds, from /usr/lib/pcsc/drivers: in this mount
    namespace that folder is empty, so a YubiKey plugged into the machine never meets the tests. The
    vpcd driver stays reachable through a bind mount in the harness's directory."""
    keep = directory / "vpcd-driver"
    keep.mkdir(exist_ok=True)
    try:
        subprocess.run(["mount", "--bind", str(VPCD.parent), str(keep)], check=True, capture_output=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k,mode=755", "none", str(DRIVERS)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"pivcard_bridge: USB drivers stay visible to pcscd: {error}", file=sys.stderr)
        return VPCD
    return keep / VPCD.name


def write_reader_conf(directory: Path, driver: Path) -> Path:
    """One vpcd entry gives two readers, "NAME 00 00" on PORT and "NAME 00 01" on PORT+1. A second
    entry does not give two more: vpcd 0.8 keeps its state per slot number, so the entries' readers
    would share it (and the second entry's first reader would take the first entry's)."""
    conf = directory / "reader.conf.d"
    conf.mkdir(exist_ok=True)
    (conf / "vpcd").write_text(
        f'FRIENDLYNAME "{FRIENDLY_NAME}"\nDEVICENAME /dev/null:0x{BASE_PORT:04X}\n'
        f"LIBPATH {driver}\nCHANNELID 0x{BASE_PORT:04X}\n"
    )
    return conf


class Reader:
    """One vpcd reader: a TCP connection to pcscd's driver while a card is in it."""

    def __init__(self, index: int, trace) -> None:
        self.index = index
        self.port = BASE_PORT + index
        self.trace = trace
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.card: VirtualPiv | None = None

    def insert(self, card: VirtualPiv, timeout: float = 10.0) -> None:
        self.remove()
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        sock.settimeout(None)
        # vpcd writes small messages; without these every APDU waits ~40 ms for a delayed ACK
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
        with self.lock:
            self.sock, self.card = sock, card
        threading.Thread(target=self._serve, args=(sock, card), daemon=True).start()

    def remove(self) -> None:
        with self.lock:
            sock, self.sock, self.card = self.sock, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _serve(self, sock: socket.socket, card: VirtualPiv) -> None:
        try:
            while True:
                header = _receive(sock, 2)
                if header is None:
                    return
                message = _receive(sock, int.from_bytes(header, "big"))
                if message is None:
                    return
                answer = self._handle(card, message)
                if answer is not None:
                    sock.sendall(len(answer).to_bytes(2, "big") + answer)
        except OSError:
            return

    def _handle(self, card: VirtualPiv, message: bytes) -> bytes | None:
        if len(message) == 1:
            if message[0] in (0x00, 0x01, 0x02):  # power off, power on, reset
                card.reset()
                return None
            if message[0] == 0x04:  # get ATR
                return ATR
            return None
        try:
            answer = card.process(message)
        except Exception:
            traceback.print_exc()
            answer = b"\x6f\x00"
        if self.trace:
            self.trace(f"{self.index} > {message.hex()}\n{self.index} < {answer.hex()}\n")
        return answer


def _receive(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
        sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)  # Linux clears it again after a while
    return data


class Bridge:
    def __init__(self, directory: Path, readers: int, trace: bool, first_serial: int) -> None:
        self.directory = directory
        self.first_serial = first_serial
        self.stopping = threading.Event()
        self.pcscd: subprocess.Popen[bytes] | None = None
        trace_file = open(directory / "apdu.log", "a") if trace else None  # noqa: SIM115
        self._trace_lock = threading.Lock()

        def write(text: str) -> None:
            with self._trace_lock:
                trace_file.write(text)  # type: ignore[union-attr]
                trace_file.flush()  # type: ignore[union-attr]

        self.readers = [Reader(i, write if trace_file else None) for i in range(readers)]

    def start(self) -> None:
        loopback_up()
        driver = hide_usb_drivers(self.directory)
        conf = write_reader_conf(self.directory, driver)
        log = open(self.directory / "pcscd.log", "ab")  # noqa: SIM115
        self.pcscd = subprocess.Popen(
            ["pcscd", "--foreground", "--config", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        for number, reader in enumerate(self.readers):
            reader.insert(VirtualPiv(serial=self.first_serial + number))

    def control(self) -> None:
        path = self.directory / "control.sock"
        path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen(4)
        server.settimeout(0.2)
        print(json.dumps({"pcscd": self.pcscd.pid if self.pcscd else None, "readers": len(self.readers)}), flush=True)
        with server:
            while not self.stopping.is_set():
                if self.pcscd is not None and self.pcscd.poll() is not None:
                    print(f"pivcard_bridge: pcscd exited with {self.pcscd.returncode}", file=sys.stderr)
                    break
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(30)
                    self._answer(conn)
        path.unlink(missing_ok=True)

    def _answer(self, conn: socket.socket) -> None:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        try:
            request = json.loads(data)
            reply = self._do(request)
        except Exception as error:
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        conn.sendall(json.dumps(reply).encode() + b"\n")

    def _do(self, request: dict) -> dict:
        op = request.get("op")
        if op == "quit":
            self.stopping.set()
            return {"ok": True}
        if op == "ping":
            return {"ok": True}
        reader = self.readers[int(request["reader"])]
        if op == "remove":
            reader.remove()
            return {"ok": True}
        if op == "insert":
            key = request.get("management_key")
            card = VirtualPiv(serial=int(request["serial"]), management_key=bytes.fromhex(key) if key else None)
            reader.insert(card)
            return {"ok": True, "serial": card.serial}
        raise ValueError(f"unknown op {op!r}")

    def stop(self) -> None:
        self.stopping.set()
        for reader in self.readers:
            reader.remove()
        if self.pcscd is not None and self.pcscd.poll() is None:
            self.pcscd.terminate()
            try:
                self.pcscd.wait(5)
            except subprocess.TimeoutExpired:
                self.pcscd.kill()
                self.pcscd.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--directory", type=Path, required=True)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--first-serial", type=int, default=30000000)
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    bridge = Bridge(args.directory, args.readers, args.trace, args.first_serial)
    signal.signal(signal.SIGTERM, lambda *_: bridge.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: bridge.stopping.set())

    def watch_stdin() -> None:  # the test process holds the other end: EOF means it is gone
        while sys.stdin.buffer.read(1):
            pass
        bridge.stopping.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        bridge.start()
        bridge.control()
    finally:
        bridge.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
