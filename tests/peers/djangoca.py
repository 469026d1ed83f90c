"""A real CMC-over-HTTP (RFC 5273) certificate authority for the tests and `make demo`: django-ca + django-ca-cmc.

django-ca 2.2.1 and django-ca-cmc 0.0.1 need ``cryptography<45`` and ``pyopenssl<25``, so they live in a virtualenv of
their own (``build/peers/djangoca-venv``); this module only uses the standard library and runs the peer venv's python
for everything Django does. The Django project is a directory holding its settings, an SQLite database, the CA keys
(``ca-files/``), the CA certificate (``ca.pem``), ``ca.json`` (name, serial, venv) and, while the server runs,
``server.json`` and ``server.log``.

Clients POST a CMC Full PKI Request (DER CMS SignedData, Content-Type exactly ``application/pkcs7-mime``) to
``http://127.0.0.1:PORT/cmc/<serial>/``; the SignedData must be signed by a certificate registered with
:meth:`DjangoCa.add_client` (else HTTP 403).

Command line (for ``make demo``)::

    python tests/peers/djangoca.py ensure-venv
    python tests/peers/djangoca.py create DIR [--ca-name NAME]
    python tests/peers/djangoca.py start DIR [--port PORT]      # background server, writes DIR/server.json
    python tests/peers/djangoca.py stop DIR
    python tests/peers/djangoca.py issue DIR CSR OUT [--agent] [--subject RFC4514] [--days N]
    python tests/peers/djangoca.py add-client DIR CERT [--no-copy-extensions]
    python tests/peers/djangoca.py clients DIR
    python tests/peers/djangoca.py info DIR
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO / "build" / "peers" / "djangoca-venv"
REQUIREMENTS = (
    "django-ca==2.2.1",
    "django-ca-cmc==0.0.1",
    "cryptography<45",
    "pyopenssl<25",
    "django-object-actions",
)
MARKER = "tokenagent-peer-requirements.txt"
GET_ANSWER = "CMC endpoint here!"
START_TIMEOUT = 30.0

SETTINGS = '''\
"""Django settings of the tokenagent test peer (written by tests/peers/djangoca.py; not for production)."""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "tokenagent test peer, not a secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

# django_ca.CertificateOrder has a foreign key to auth.User, hence auth and contenttypes; no django.contrib.admin.
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_object_actions",
    "django_ca",
    "django_ca_cmc",
]
MIDDLEWARE = []
ROOT_URLCONF = "peer_urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": BASE_DIR / "files"},
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    # the CA and OCSP private keys, unencrypted (init_ca is run without --password)
    "django-ca": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {
            "location": BASE_DIR / "ca-files",
            "file_permissions_mode": 0o600,
            "directory_permissions_mode": 0o700,
        },
    },
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}

CA_USE_CELERY = False  # no Celery, no Redis: tasks run synchronously
CA_ENABLE_ACME = False
CA_ENABLE_REST_API = False
CA_DEFAULT_HOSTNAME = None  # no CRL/OCSP/issuer URLs in issued certificates (the port is not known at init_ca)
CA_DEFAULT_SIGNATURE_HASH_ALGORITHM = "SHA-256"
CA_DEFAULT_KEY_SIZE = 2048
# the default profile ("webserver") would give serverAuth; extensions copied from the CSR override the profile's
CA_DEFAULT_PROFILE = "client"
# copy extensions cryptography does not know (e.g. Microsoft's 1.3.6.1.4.1.311.20.2 template name) from the CSR;
# without it such a CSR gets a CMC "failed" response (failInfo internalCAError)
CA_CMC_COPY_UNRECOGNIZED_CSR_EXTENSIONS = True
'''

URLS = """\
from django.urls import include, path

urlpatterns = [
    path("", include("django_ca.urls")),
    path("cmc/", include("django_ca_cmc.urls")),
]
"""

MANAGE = """\
import os
import sys

if __name__ == "__main__":
    os.environ["DJANGO_SETTINGS_MODULE"] = "peer_settings"
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""

# Runs inside the peer venv: what manage.py offers only awkwardly (sign_cert ignores the CSR subject).
TOOL = '''\
"""Helper of tests/peers/djangoca.py, run by the peer venv's python: ca NAME | issue JSON (CSR on stdin)."""

import json
import os
import sys
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ["DJANGO_SETTINGS_MODULE"] = "peer_settings"

import django

django.setup()

from cryptography import x509
from cryptography.x509.oid import ExtensionOID
from django_ca.models import Certificate, CertificateAuthority
from django_ca.profiles import profiles

CERTIFICATE_REQUEST_AGENT = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.1")


def ca_info(name):
    ca = CertificateAuthority.objects.filter(name=name).first()
    return None if ca is None else {"serial": ca.serial, "pem": ca.pub.pem}


def issue(args, data):
    csr = x509.load_pem_x509_csr(data) if b"-----BEGIN" in data else x509.load_der_x509_csr(data)
    ca = CertificateAuthority.objects.get(serial=args["serial"])
    subject = x509.Name.from_rfc4514_string(args["subject"]) if args.get("subject") else csr.subject
    extensions = []
    if args.get("agent"):
        digital_signature = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
        extensions.append(x509.Extension(ExtensionOID.KEY_USAGE, True, digital_signature))
        eku = x509.ExtendedKeyUsage([CERTIFICATE_REQUEST_AGENT])
        extensions.append(x509.Extension(ExtensionOID.EXTENDED_KEY_USAGE, False, eku))
    options = ca.key_backend.get_use_private_key_options(ca, {})
    cert = Certificate.objects.create_cert(
        ca,
        options,
        csr,
        profile=profiles[None],
        subject=subject,
        extensions=extensions,
        not_after=timedelta(days=int(args.get("days", 30))),
    )
    return cert.pub.pem


if __name__ == "__main__":
    if sys.argv[1] == "ca":
        print(json.dumps(ca_info(sys.argv[2])))
    elif sys.argv[1] == "issue":
        sys.stdout.write(issue(json.loads(sys.argv[2]), sys.stdin.buffer.read()))
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
'''

PROJECT_FILES = {
    "peer_settings.py": SETTINGS,
    "peer_urls.py": URLS,
    "manage.py": MANAGE,
    "peer_tool.py": TOOL,
}


def _base_python() -> str:
    """The interpreter the peer venv is made from: $PEER_PYTHON or the system python3."""
    return os.environ.get("PEER_PYTHON") or shutil.which("python3") or "/usr/bin/python3"


def _peer_env() -> dict[str, str]:
    """The caller's environment without anything that could put the main venv's packages on the peer's path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def ensure_venv(venv: Path = DEFAULT_VENV) -> Path:
    """Create the peer venv with the pinned requirements unless its marker says they are installed; returns venv."""
    venv = Path(venv)
    wanted = "\n".join(REQUIREMENTS) + "\n"
    marker = venv / MARKER
    python = venv / "bin" / "python"

    def ready() -> bool:
        return python.exists() and marker.exists() and marker.read_text() == wanted

    if ready():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be installing the same venv
        if ready():
            return venv
        print(f"installing the django-ca CMC peer in {venv}: {' '.join(REQUIREMENTS)}", file=sys.stderr, flush=True)
        marker.unlink(missing_ok=True)
        steps = (
            [_base_python(), "-m", "venv", "--clear", str(venv)],
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS],
        )
        for step in steps:
            done = subprocess.run(step, env=_peer_env(), capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(step)} failed ({done.returncode}):\n{_tail(done.stdout + done.stderr)}")
        marker.write_text(wanted)
    return venv


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_get(url: str, timeout: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError):
        return None


def _pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that has exited
            return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie waiting for its parent (init) is dead enough


class DjangoCa:
    """One django-ca project directory with one RSA CA, and its runserver process while started."""

    def __init__(self, directory: Path, *, venv: Path, name: str, serial: str) -> None:
        self.directory = Path(directory).resolve()
        self.venv = Path(venv)
        self.name = name
        self.serial = serial  # hex without colons, as in the URL (django-ca also accepts the colon form)
        self.ca_pem = self.directory / "ca.pem"
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- creation -------------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, *, venv: Path = DEFAULT_VENV, ca_name: str = "tokenagent CMC test CA") -> DjangoCa:
        """Write the project, migrate and make the RSA CA (2048 bits, SHA-256); idempotent for a directory."""
        directory = Path(directory).resolve()
        venv = ensure_venv(venv)
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in PROJECT_FILES.items():
            path = directory / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
        state = directory / "ca.json"
        if state.exists() and (directory / "ca.pem").exists():
            known = json.loads(state.read_text())
            if known.get("name") == ca_name:
                return cls(directory, venv=venv, name=ca_name, serial=known["serial"])
        peer = cls(directory, venv=venv, name=ca_name, serial="")
        peer.manage("migrate", "-v0")
        info = json.loads(peer._tool("ca", ca_name))
        if info is None:
            subject = "CN=" + ca_name.replace("\\", "\\\\").replace(",", "\\,").replace("+", "\\+")
            peer.manage(
                "init_ca",
                "--key-type=RSA",
                "--key-size=2048",
                "--algorithm=SHA-256",
                "--expires=3650",
                "--path-length=0",
                ca_name,
                subject,
            )
            info = json.loads(peer._tool("ca", ca_name))
        peer.serial = info["serial"]
        peer.ca_pem.write_text(info["pem"])
        state.write_text(json.dumps({"name": ca_name, "serial": peer.serial, "venv": str(venv)}, indent=2) + "\n")
        return peer

    @classmethod
    def open(cls, directory: Path) -> DjangoCa:
        """The project create() made in directory, with the venv it was made with."""
        directory = Path(directory).resolve()
        state = directory / "ca.json"
        if not state.exists():
            raise FileNotFoundError(f"{directory}: no django-ca peer here (run create first)")
        known = json.loads(state.read_text())
        return cls(directory, venv=Path(known["venv"]), name=known["name"], serial=known["serial"])

    # -- running manage.py ----------------------------------------------------------------------------------------

    def _run(self, script: str, *args: str, stdin: bytes | None = None) -> str:
        command = [str(self.venv / "bin" / "python"), str(self.directory / script), *args]
        done = subprocess.run(command, cwd=self.directory, env=_peer_env(), input=stdin, capture_output=True)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode("utf-8", "replace")
            raise RuntimeError(f"{' '.join(command[1:])} failed ({done.returncode}):\n{_tail(output)}")
        return done.stdout.decode()

    def manage(self, *args: str, stdin: bytes | None = None) -> str:
        """Run a manage.py command in the peer venv; returns its stdout."""
        return self._run("manage.py", *args, stdin=stdin)

    def _tool(self, *args: str, stdin: bytes | None = None) -> str:
        return self._run("peer_tool.py", *args, stdin=stdin)

    # -- the server -----------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the django-ca peer is not started")
        return f"http://127.0.0.1:{self.port}/cmc/{self.serial}/"

    @property
    def log(self) -> Path:
        return self.directory / "server.log"

    @property
    def server_json(self) -> Path:
        return self.directory / "server.json"

    def start(self, port: int | None = None) -> None:
        """runserver on 127.0.0.1 (a free port if None), logging to DIR/server.log; returns once it answers."""
        if self._process is not None:
            raise RuntimeError(f"already started at {self.url}")
        port = port or _free_port()
        command = [str(self.venv / "bin" / "python"), str(self.directory / "manage.py")]
        command += ["runserver", "--noreload", f"127.0.0.1:{port}"]
        with open(self.log, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                cwd=self.directory,
                env=_peer_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the `start` command line and a Ctrl-C in its terminal
            )
        self.port = port
        deadline = time.monotonic() + START_TIMEOUT
        while _http_get(self.url, timeout=1.0) != GET_ANSWER:
            if self._process.poll() is not None or time.monotonic() > deadline:
                why = "exited" if self._process.poll() is not None else f"did not answer in {START_TIMEOUT:.0f} s"
                self.stop()
                raise RuntimeError(f"django-ca runserver {why}; {self.log}:\n{_tail(self.log.read_text())}")
            time.sleep(0.1)
        self.server_json.write_text(json.dumps(self.info(), indent=2) + "\n")

    def stop(self) -> None:
        """Stop the server started by start()."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            with contextlib.suppress(FileNotFoundError, ValueError):
                if json.loads(self.server_json.read_text()).get("pid") == process.pid:
                    self.server_json.unlink()
        self.port = None

    def info(self) -> dict:
        return {
            "pid": self._process.pid if self._process else None,
            "port": self.port,
            "url": self.url if self.port else None,
            "serial": self.serial,
            "ca_pem": str(self.ca_pem),
            "name": self.name,
            "log": str(self.log),
        }

    # -- the CA ---------------------------------------------------------------------------------------------------

    def issue(self, csr: bytes, *, agent: bool = False, subject: str | None = None, days: int = 30) -> bytes:
        """Issue a certificate for a CSR (PEM or DER) with the default profile; returns PEM.

        subject: RFC 4514 ("CN=x,O=y"), else the CSR's. agent=True: an enrollment agent certificate, EKU Certificate
        Request Agent (1.3.6.1.4.1.311.20.2.1) and key usage digitalSignature.
        """
        args = {"serial": self.serial, "agent": agent, "subject": subject, "days": days}
        return self._tool("issue", json.dumps(args), stdin=csr).encode()

    def add_client(self, certificate_pem: bytes, *, copy_extensions: bool = True) -> None:
        """Register a CMC client (a certificate whose key may sign requests); registering it again does nothing."""
        body = _pem_body(certificate_pem)
        if any(_pem_body(c["pem"].encode()) == body for c in self.clients()):
            return
        flags = ["--copy-extensions"] if copy_extensions else []
        self.manage("cmc_add_client", *flags, "-", stdin=certificate_pem)

    def clients(self) -> list[dict]:
        """The registered CMC clients (serial, not_before, not_after, comment, pem) that have not expired."""
        return json.loads(self.manage("cmc_list_clients", "-f", "json"))


def _pem_body(pem: bytes) -> bytes:
    lines = pem.strip().splitlines()
    return b"".join(line.strip() for line in lines if line.strip() and not line.startswith(b"-----"))


# -- command line (make demo) -----------------------------------------------------------------------------------------


def _running(peer: DjangoCa) -> dict | None:
    """server.json if the pid in it is a live runserver of this directory."""
    try:
        server = json.loads(peer.server_json.read_text())
        cmdline = Path(f"/proc/{server['pid']}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    if str(peer.directory / "manage.py").encode() not in cmdline or not _pid_alive(server["pid"]):
        return None
    return server


def _cli_stop(peer: DjangoCa) -> None:
    server = _running(peer)
    if server is not None:
        pid = server["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.1)
    peer.server_json.unlink(missing_ok=True)


def _cli_info(peer: DjangoCa) -> dict:
    return _running(peer) or peer.info()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="djangoca.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("ensure-venv", help="install the peer venv if needed")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p = commands.add_parser("create", help="write the project, migrate, make the CA")
    p.add_argument("dir", type=Path)
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--ca-name", default="tokenagent CMC test CA")
    p = commands.add_parser("start", help="start the server in the background, write DIR/server.json")
    p.add_argument("dir", type=Path)
    p.add_argument("--port", type=int)
    for name in ("stop", "info", "clients"):
        commands.add_parser(name).add_argument("dir", type=Path)
    p = commands.add_parser("issue", help="issue a certificate for a CSR (PEM or DER), written as PEM")
    p.add_argument("dir", type=Path)
    p.add_argument("csr", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--agent", action="store_true", help="an enrollment agent certificate (Certificate Request Agent)")
    p.add_argument("--subject", help="RFC 4514 subject, default: the CSR's")
    p.add_argument("--days", type=int, default=30)
    p = commands.add_parser("add-client", help="register a certificate as a CMC client")
    p.add_argument("dir", type=Path)
    p.add_argument("cert", type=Path)
    p.add_argument("--no-copy-extensions", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "ensure-venv":
        print(ensure_venv(args.venv))
        return 0
    if args.command == "create":
        print(json.dumps(DjangoCa.create(args.dir, venv=args.venv, ca_name=args.ca_name).info(), indent=2))
        return 0
    peer = DjangoCa.open(args.dir)
    if args.command == "start":
        if _running(peer) is None:
            peer.start(args.port)
        print(peer.server_json.read_text(), end="")
    elif args.command == "stop":
        _cli_stop(peer)
    elif args.command == "info":
        print(json.dumps(_cli_info(peer), indent=2))
    elif args.command == "clients":
        print(json.dumps(peer.clients(), indent=2))
    elif args.command == "issue":
        args.out.write_bytes(peer.issue(args.csr.read_bytes(), agent=args.agent, subject=args.subject, days=args.days))
    elif args.command == "add-client":
        peer.add_client(args.cert.read_bytes(), copy_extensions=not args.no_copy_extensions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
