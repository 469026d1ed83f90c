"""Virtual PIV smart cards on a real PC/SC stack, for driving Yubico's ykcs11 and OpenSC's
opensc-pkcs11 in tests: the cards are software, everything between them and the PKCS#11 module is
the real thing (libpcsclite, pcscd, a reader driver).

    station = PivStation.start(directory, readers=2)   # pcscd + a blank card in every reader
    station.reader_names      ["Yubico YubiKey vpcd 00 00", "Yubico YubiKey vpcd 00 01"]
    station.ykcs11            /usr/lib/x86_64-linux-gnu/libykcs11.so.2
    station.opensc            /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
    station.insert_blank(0, management_key="00" * 24)   # a new blank card; returns its serial
    station.remove(1)         # reader 1 empty
    station.env()             variables for processes that load the modules
    station.stop()            pcscd, the bridge and the namespaces are gone afterwards

A blank card is a YubiKey 5.4.3 look-alike: PIN 123456 (3 tries), PUK 12345678, 3DES management key
010203040506070801020304050607080102030405060708 unless another is given. ykcs11 names its token
"YubiKey PIV #<serial>"; serials count up from 30000000 per session, so every card is a new token.

Design
------
pcscd: there can be one per machine, because its socket /run/pcscd/pcscd.comm is compiled in, so the
harness refuses to start when another pcscd runs (or systemd holds that socket), and runs its own in
the foreground with a private reader configuration (`pcscd -f -c DIR`). Test processes outside find
it through that socket as usual. Each reader is a vsmartcard-vpcd slot: the driver listens on a TCP
port, on every interface, and a card is whatever connects to it; vpcd 0.8 gives one pcscd two readers
(readers=1 leaves the second empty). So pcscd runs in a new network
namespace with only loopback, together with the bridge (tests/peers/pivcard_bridge.py) that connects
one virtual card per reader; nothing on the machine's network can reach the readers. The same process
gets a private mount namespace where /usr/lib/pcsc/drivers is empty: pcscd then finds no driver for a
real USB reader, so a YubiKey plugged into the developer's machine never meets the tests (and start()
checks that pcscd shows only the virtual readers). pcscd is the bridge's child, with a parent-death
signal, and the bridge is ours with one too and also watches its standard input: whichever way the
test process ends, nothing stays behind. Card state is in memory only; logs are in the directory
(pcscd.log, bridge.log, apdu.log with trace=True).

Removing and inserting go through pcscd's normal card detection, which polls vpcd every 0.4 s: each
takes ~0.4 s (insert_blank() over a card first waits until pcscd has seen that card go, or applications
would keep talking to "the same" card). insert_blank() and remove() return once pcscd reports the new
state, so the next PKCS#11 call sees it.

The reader names start with "Yubico" because ykcs11 2.2.0 ignores every other reader; the ATR is a
YubiKey 5's, which makes ykpiv and OpenSC treat the card as one (GET VERSION, GET SERIAL).

jcecard work-arounds (tests/peers/pivcard.py)
--------------------------------------------
jcecard 0.1.0 holds the PIV state (PIN, PUK, management key, key pairs as PKCS#8, data objects) and
does VERIFY, CHANGE REFERENCE DATA, RESET RETRY COUNTER, key generation and the 3DES management key
witness/challenge. Around it, because otherwise real middleware fails:
- SELECT: jcecard accepts only the bare RID and answers without the 61 application property template
  (OpenSC: "token not recognized"), and it forgets the verified PIN on every SELECT. The card answers
  SELECT of the PIV AID (or a prefix of it) itself, with the template, and keeps the security state.
- Discovery object (7E): jcecard has none, so OpenSC re-selects the applet before each operation. The
  card returns one with PIN usage policy "PIV PIN only" (40 00).
- Response chaining: jcecard returns objects over 256 bytes in one short-APDU response, which ykcs11
  cannot take (it then lists nothing): the card cuts responses to Le and hands out the rest with 61xx
  and GET RESPONSE. Command chaining (CLA 10, PUT DATA of a certificate) is put together before use.
- GENERAL AUTHENTICATE with a key: jcecard assumes a SHA-256-sized ECDSA input, pads RSA itself instead
  of the raw operation the host asks for, and reads only short BER lengths, so P-384, RSA and ECDH
  fail. The card does these itself with jcecard's private key: ECDSA on an input of any length (cut or
  padded to the order's size, as FIPS 186-4 does), raw RSA on the whole block, ECDH (tag 85).
- PIN policies as a YubiKey's defaults: 9c needs the PIN right before each signature (ykcs11 and
  OpenSC log in "context specific"), 9e never, the others once per session.
- Yubico extensions ykcs11 uses: GET VERSION (5.4.3), GET SERIAL, GET METADATA and ATTEST. With
  ATTEST and GET METADATA, ykcs11 shows a key pair even when its slot has no certificate, and adds an
  "X.509 Certificate for PIV Attestation 9a" object with the key's CKA_ID, as with a real YubiKey 5;
  the attestation key in f9 is EC P-256 and self-signed here (Yubico's is RSA, from their CA).
  SET MANAGEMENT KEY (3DES) works too; importing keys (INS FE) does not exist.
- An object written empty (how ykcs11 deletes a certificate) reads as absent (6A82), not as empty.
The bridge sets TCP_NODELAY and re-arms TCP_QUICKACK after every read: vpcd's small writes would
otherwise wait for delayed ACKs, ~40 ms per APDU instead of well under 1 ms.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BRIDGE = Path(__file__).resolve().parent / "pivcard_bridge.py"
PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")
PCSCD_PIDFILE = Path("/run/pcscd/pcscd.pid")
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
READER_PREFIX = "Yubico YubiKey vpcd"

DEFAULT_PIN = "123456"
DEFAULT_PUK = "12345678"
DEFAULT_MANAGEMENT_KEY = "010203040506070801020304050607080102030405060708"
FIRST_SERIAL = 30000000

#: Debian package that provides each piece
PACKAGES = {"pcscd": "pcscd", "vpcd": "vsmartcard-vpcd", "ykcs11": "ykcs11", "opensc": "opensc-pkcs11"}


class PivStationError(RuntimeError):
    pass


def _find_library(*patterns: str) -> str | None:
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def ykcs11_path() -> str | None:
    return _find_library("/usr/lib/*/libykcs11.so.2", "/usr/lib/*/libykcs11.so", "/usr/lib/libykcs11.so*")


def opensc_path() -> str | None:
    return _find_library(
        "/usr/lib/*/opensc-pkcs11.so", "/usr/lib/*/pkcs11/opensc-pkcs11.so", "/usr/lib/opensc-pkcs11.so"
    )


def namespace_unavailable() -> str | None:
    """Why this machine cannot give pcscd a private network and mount namespace, or None."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing"
    try:
        result = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot create a network namespace: {error}"
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip() or result.returncode}"
    return None


def missing() -> str | None:
    """What is not installed, or None."""
    absent = []
    if shutil.which("pcscd") is None:
        absent.append(PACKAGES["pcscd"])
    if not VPCD_DRIVER.exists():
        absent.append(PACKAGES["vpcd"])
    if ykcs11_path() is None:
        absent.append(PACKAGES["ykcs11"])
    if opensc_path() is None:
        absent.append(PACKAGES["opensc"])
    absent += [f"python package {name}" for name in ("jcecard", "smartcard") if importlib.util.find_spec(name) is None]
    return f"missing: {', '.join(absent)}" if absent else None


def available() -> str | None:
    """None if virtual cards can run here, else the reason."""
    return namespace_unavailable() or missing()


def _pcscd_processes() -> list[int]:
    """Live processes named pcscd (zombies do not count: they hold no socket)."""
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        name, state = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :][:1]
        if name == "pcscd" and state not in ("Z", "X"):
            pids.append(int(stat.split("/")[2]))
    return pids


def foreign_pcscd() -> str | None:
    """A pcscd that the harness did not start (or systemd's socket for one), described; else None.

    A socket file left by a pcscd that was killed is removed, as pcscd itself would refuse to start."""
    pids = _pcscd_processes()
    if pids:
        return f"a pcscd not started by the test harness is running (pid {', '.join(map(str, pids))})"
    if PCSCD_SOCKET.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(PCSCD_SOCKET))
            except OSError:
                PCSCD_SOCKET.unlink(missing_ok=True)
                PCSCD_PIDFILE.unlink(missing_ok=True)
                return None
        return f"something (systemd's pcscd.socket?) accepts connections on {PCSCD_SOCKET}"
    return None


def _set_parent_death_signal() -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


class PivStation:
    """pcscd with virtual readers and cards; see the module docstring."""

    def __init__(self, directory: Path, process: subprocess.Popen[bytes], pcscd_pid: int, reader_names: list[str]):
        self.directory = directory
        self.process = process
        self.pcscd_pid = pcscd_pid
        self.reader_names = reader_names
        self.ykcs11 = ykcs11_path() or ""
        self.opensc = opensc_path() or ""
        self.serials: list[int | None] = []
        self.trace = False
        self._next_serial = FIRST_SERIAL + len(reader_names)

    # -- life cycle ----------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        directory: Path,
        readers: int = 2,
        *,
        trace: bool = False,
        timeout: float = 20.0,
        first_serial: int = FIRST_SERIAL,
    ) -> PivStation:
        reason = available()
        if reason:
            raise PivStationError(f"virtual PIV cards cannot run here: {reason}")
        foreign = foreign_pcscd()
        if foreign:
            raise PivStationError(
                f"{foreign}; the virtual cards need their own pcscd (one per machine): stop it first, "
                "e.g. `systemctl stop pcscd.socket pcscd`"
            )
        if readers not in (1, 2):
            raise ValueError("one or two readers: vsmartcard-vpcd 0.8 gives one pcscd two readers")
        directory.mkdir(parents=True, exist_ok=True)
        command = ["unshare", "--net", "--mount", sys.executable, str(BRIDGE), "--directory", str(directory)]
        command += ["--readers", str(readers), "--first-serial", str(first_serial)] + (["--trace"] if trace else [])
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONDONTWRITEBYTECODE": "1"}
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(directory / "bridge.log", "ab"),  # noqa: SIM115
            env=env,
            preexec_fn=_set_parent_death_signal,
        )
        try:
            station = cls._handshake(directory, process, readers, timeout, first_serial)
        except BaseException:
            _end(process)
            raise
        station.trace = trace
        return station

    @classmethod
    def _handshake(
        cls, directory: Path, process: subprocess.Popen[bytes], readers: int, timeout: float, first_serial: int
    ) -> PivStation:
        deadline = time.monotonic() + timeout
        line = b""
        if process.stdout and select.select([process.stdout], [], [], timeout)[0]:
            line = process.stdout.readline()  # the bridge prints one line once pcscd started
        if not line:
            raise PivStationError(f"the PIV bridge did not start: {_tail(directory / 'bridge.log')}")
        pcscd_pid = json.loads(line)["pcscd"]
        names = _wait_for_readers(readers, deadline, directory)
        station = cls(directory, process, pcscd_pid, names[:readers])
        station.serials = [first_serial + i for i in range(readers)]
        station._next_serial = first_serial + readers
        for name in station.reader_names:
            _wait_for_card(name, present=True, deadline=deadline)
        return station

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the bridge and pcscd; raise if a process outlives the timeout (it is then killed)."""
        with contextlib.suppress(OSError, PivStationError):
            self._request({"op": "quit"}, timeout=5)
        leftovers = _end(self.process, timeout)
        deadline = time.monotonic() + timeout
        while _alive(self.pcscd_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(self.pcscd_pid):
            os.kill(self.pcscd_pid, signal.SIGKILL)
            leftovers.append(f"pcscd {self.pcscd_pid}")
        if leftovers:
            raise PivStationError(f"had to kill {', '.join(leftovers)}")

    def restart(self) -> None:
        """stop(), then start() again in place: same directory and readers, blank cards, new serials."""
        self.stop()
        fresh = PivStation.start(
            self.directory, len(self.reader_names), trace=self.trace, first_serial=self._next_serial
        )
        self.__dict__.update(fresh.__dict__)

    def __enter__(self) -> PivStation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- cards ---------------------------------------------------------------------------------------

    def insert_blank(self, reader: int, management_key: str | bytes | None = None, serial: int | None = None) -> int:
        """Put a new blank card into the reader (taking out the card in it first); returns its serial.

        management_key: 48 hex digits or 24 bytes, the card's 3DES management key (default: factory)."""
        name = self.reader_names[reader]
        if self.serials[reader] is not None:
            self.remove(reader)
        if isinstance(management_key, bytes):
            management_key = management_key.hex()
        if management_key is not None and len(bytes.fromhex(management_key)) != 24:
            raise ValueError("a 3DES management key has 24 bytes (48 hex digits)")
        if serial is None:
            serial, self._next_serial = self._next_serial, self._next_serial + 1
        self._request({"op": "insert", "reader": reader, "serial": serial, "management_key": management_key})
        _wait_for_card(name, present=True, deadline=time.monotonic() + 10)
        self.serials[reader] = serial
        return serial

    def remove(self, reader: int) -> None:
        """Take the card out of the reader; returns once pcscd reports the reader empty."""
        self._request({"op": "remove", "reader": reader})
        _wait_for_card(self.reader_names[reader], present=False, deadline=time.monotonic() + 10)
        self.serials[reader] = None

    def token_label(self, reader: int) -> str:
        """The token label ykcs11 gives the card in the reader."""
        return f"YubiKey PIV #{self.serials[reader]}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for a process that uses the modules: ykcs11's debug output off."""
        env = {key: value for key, value in os.environ.items() if key not in ("YKCS11_DBG", "PCSCLITE_CSOCK_NAME")}
        env.update(YKCS11_DBG="0")
        env.update(extra)
        return env

    @property
    def pids(self) -> list[int]:
        """The bridge's and pcscd's process ids (for leak checks)."""
        return [self.process.pid, self.pcscd_pid]

    def _request(self, request: dict[str, object], timeout: float = 30) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(self.directory / "control.sock"))
            conn.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data) if data else {"ok": False, "error": "no answer"}
        if not reply.get("ok"):
            raise PivStationError(f"the PIV bridge refused {request.get('op')}: {reply.get('error')}")
        return reply


# -- PC/SC, seen from outside the namespace, as every application sees it -------------------------------


def _context(deadline: float) -> int:
    from smartcard import scard

    while True:
        result, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if result == scard.SCARD_S_SUCCESS:
            return context
        if time.monotonic() > deadline:
            raise PivStationError(f"pcscd does not answer: {scard.SCardGetErrorMessage(result)}")
        time.sleep(0.02)


def _wait_for_readers(count: int, deadline: float, directory: Path) -> list[str]:
    from smartcard import scard

    context = _context(deadline)
    try:
        while True:
            result, names = scard.SCardListReaders(context, [])
            ours = sorted(n for n in names if n.startswith(READER_PREFIX)) if result == scard.SCARD_S_SUCCESS else []
            others = [n for n in names if not n.startswith(READER_PREFIX)] if result == scard.SCARD_S_SUCCESS else []
            if others:
                raise PivStationError(f"pcscd shows readers that are not virtual: {others}")
            if len(ours) >= count:
                return ours
            if time.monotonic() > deadline:
                raise PivStationError(f"pcscd shows readers {ours}, expected {count}: {_tail(directory / 'pcscd.log')}")
            time.sleep(0.02)
    finally:
        scard.SCardReleaseContext(context)


def _wait_for_card(reader: str, *, present: bool, deadline: float) -> None:
    from smartcard import scard

    context = _context(deadline)
    try:
        state = scard.SCARD_STATE_UNAWARE
        while True:
            wait = max(0, int((deadline - time.monotonic()) * 1000))
            result, states = scard.SCardGetStatusChange(context, wait, [(reader, state)])
            if result != scard.SCARD_S_SUCCESS:
                raise PivStationError(
                    f"{reader}: no card {'inserted' if present else 'removed'} in time "
                    f"({scard.SCardGetErrorMessage(result)})"
                )
            event = states[0][1]
            if present and event & scard.SCARD_STATE_PRESENT and not event & scard.SCARD_STATE_MUTE:
                return
            if not present and event & scard.SCARD_STATE_EMPTY:
                return
            state = event & ~scard.SCARD_STATE_CHANGED
    finally:
        scard.SCardReleaseContext(context)


# -- processes ----------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2 :][:1] not in ("Z", "X")


def _end(process: subprocess.Popen[bytes], timeout: float = 15.0) -> list[str]:
    """Close the bridge's standard input (it stops), wait; SIGTERM, then SIGKILL if it will not."""
    leftovers = []
    with contextlib.suppress(OSError):
        if process.stdin:
            process.stdin.close()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            leftovers.append(f"bridge {process.pid}")
    if process.stdout:
        process.stdout.close()
    return leftovers


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"
