"""Test harness: one private SoftHSM instance per test session, real tokens, no PKCS#11 mocks.

The instance is made by softhsm/softhsm-env.sh (the same script people use by hand) before any
test loads a PKCS#11 module, because SoftHSM reads SOFTHSM2_CONF once, at C_Initialize.

Tokens (user PIN 1234, SO PIN 87654321 unless said otherwise):
  ta-main     keys and a certificate made by pkcs11-tool (an independent tool), read-only for tests
  ta-second   empty
  ta-twin x2  two tokens with the same label, for ambiguity
  ta-login    for PIN tests, user PIN LOGIN_PIN (its PIN state flags change)
  ta-new      `tokenagent new` writes keys here (tests compare object lists, never absolute counts)
  ta-cap      capacity tests: starts empty; only test_new's container-limit test writes to it
  ta-acc      accept/repair tests (test_accept.py): keys from `new` and from pkcs11-tool, certificates
  ta-agent    the enrollment agent's card (test_sign.py): agent keys and their certificates
  ta-user     the users' card (test_sign.py): keys and requests made by `new`
  ta-crash    `new` killed with SIGKILL, then recovered (test_hardening.py)
  ta-race     concurrent `new` runs with one KeyContainer (test_hardening.py)
  ta-intr     `new` interrupted with SIGINT while it waits (test_hardening.py)
  ta-cagent   enrollment agents for the CA tests (test_ca_*.py): keys with certificates from the CAs
  ta-causer   the users' card of the CA tests: `enroll` writes keys and certificates here
  ta-impl     SoftHSM's instance in the core-chain suite over every implementation (test_implementations.py)

TOKENAGENT_STATE_DIR (the pending store) and XDG_CONFIG_HOME (providers.toml) point into the
session's temporary directory, so tests never read or write the developer's own state.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USER_PIN = "1234"
SO_PIN = "87654321"
LOGIN_PIN = "login-Pin-4711"  # distinctive, so a leak check cannot match a serial number by chance
TOKENS = [
    "ta-main",
    "ta-second",
    "ta-twin",
    "ta-twin",
    f"ta-login:{SO_PIN}:{LOGIN_PIN}",
    "ta-new",
    "ta-cap",
    "ta-acc",
    "ta-agent",
    "ta-user",
    "ta-crash",
    "ta-race",
    "ta-intr",
    "ta-cagent",
    "ta-causer",
    "ta-impl",
    "ta-blank",
    "ta-station-a",
    "ta-station-b",
    "ta-station-c",
]


@dataclass(frozen=True)
class SoftHSM:
    directory: Path
    conf: Path
    module: str

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    @property
    def config_home(self) -> Path:
        return self.directory / "config"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SOFTHSM2_CONF=str(self.conf),
            TOKENAGENT_MODULE=self.module,
            TOKENAGENT_STATE_DIR=str(self.state_dir),
            XDG_CONFIG_HOME=str(self.config_home),
        )
        env.pop("TOKENAGENT_PROVIDERS", None)
        env.pop("TOKENAGENT_PIN_SOURCE", None)
        env.update(extra)
        return env


def make_softhsm(directory: Path, labels: list[str]) -> SoftHSM:
    """Run the shell harness; twins (repeated labels) are created by softhsm2-util directly."""
    script = ROOT / "softhsm" / "softhsm-env.sh"
    unique = list(dict.fromkeys(labels))
    out = subprocess.run(
        ["bash", str(script), str(directory), *unique], check=True, capture_output=True, text=True
    ).stdout
    exports = dict(re.findall(r"^export (\w+)=(.*)$", out, flags=re.M))
    conf, module = exports["SOFTHSM2_CONF"], exports["TOKENAGENT_MODULE"]
    for label in {lab for lab in labels if labels.count(lab) > 1}:
        for _ in range(labels.count(label) - 1):
            subprocess.run(
                [
                    "softhsm2-util",
                    "--init-token",
                    "--free",
                    "--label",
                    label.split(":")[0],
                    "--so-pin",
                    SO_PIN,
                    "--pin",
                    USER_PIN,
                ],
                check=True,
                capture_output=True,
                env={**os.environ, "SOFTHSM2_CONF": conf},
            )
    return SoftHSM(directory=directory, conf=Path(conf), module=module)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    instance = make_softhsm(tmp_path_factory.mktemp("softhsm"), TOKENS)
    names = ("SOFTHSM2_CONF", "TOKENAGENT_MODULE", "TOKENAGENT_PIN_SOURCE", "TOKENAGENT_STATE_DIR", "XDG_CONFIG_HOME")
    saved = {k: os.environ.get(k) for k in (*names, "TOKENAGENT_PROVIDERS")}
    os.environ["SOFTHSM2_CONF"] = str(instance.conf)
    os.environ["TOKENAGENT_MODULE"] = instance.module
    os.environ["TOKENAGENT_STATE_DIR"] = str(instance.state_dir)
    os.environ["XDG_CONFIG_HOME"] = str(instance.config_home)
    os.environ.pop("TOKENAGENT_PIN_SOURCE", None)
    os.environ.pop("TOKENAGENT_PROVIDERS", None)
    populate_main_token(instance)
    yield instance
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def pkcs11_tool(instance: SoftHSM, *args: str, token: str = "ta-main", login: bool = True) -> str:
    command = ["pkcs11-tool", "--module", instance.module, "--token-label", token]
    if login:
        command += ["--login", "--pin", USER_PIN]
    result = subprocess.run([*command, *args], capture_output=True, text=True, env=instance.env(), check=False)
    if result.returncode != 0:
        raise AssertionError(f"pkcs11-tool {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def populate_main_token(instance: SoftHSM) -> None:
    """Keys and a certificate on ta-main, made by pkcs11-tool and openssl (tools we did not write)."""
    pkcs11_tool(
        instance,
        "--keypairgen",
        "--key-type",
        "rsa:2048",
        "--id",
        "01",
        "--label",
        "rsa-key",
        "--usage-sign",
        "--usage-decrypt",
    )
    pkcs11_tool(
        instance,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "02",
        "--label",
        "ec-key",
        "--usage-sign",
    )
    work = instance.directory / "cert"
    work.mkdir(exist_ok=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(work / "k.pem"),
            "-out",
            str(work / "c.pem"),
            "-subj",
            "/CN=tokenagent test/O=Test",
            "-days",
            "30",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "x509", "-in", str(work / "c.pem"), "-outform", "DER", "-out", str(work / "c.der")],
        check=True,
        capture_output=True,
    )
    pkcs11_tool(
        instance,
        "--write-object",
        str(work / "c.der"),
        "--type",
        "cert",
        "--id",
        "03",
        "--label",
        "test-cert",
    )


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, pass_fds: tuple[int, ...] = ()
) -> Run:
    """Run the real console entry point in a child process (stdin is never a TTY here)."""
    result = subprocess.run(
        [sys.executable, "-m", "tokenagent", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        pass_fds=pass_fds,
        timeout=120,
        check=False,
    )
    return Run(result.returncode, result.stdout, result.stderr)


@pytest.fixture()
def cli(softhsm: SoftHSM):
    def invoke(*args: str, **extra_env: str) -> Run:
        return run_cli(*args, env=softhsm.env(**extra_env))

    return invoke


def run_in_terminal(args: list[str], env: dict[str, str], prompt: bytes, reply: str) -> tuple[int, str, bool]:
    """Run the CLI on a real pseudo-terminal; type ``reply`` once ``prompt`` appears.

    Returns (exit code, everything the terminal showed, whether the reply was sent)."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # child: a real TTY on stdin/stdout/stderr
        os.execve(sys.executable, [sys.executable, "-m", "tokenagent", *args], env)
    output, sent = b"", False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
        if not sent and prompt in output:
            os.write(fd, (reply + "\n").encode())
            sent = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace"), sent


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


# -- CA servers, each started once per test session on 127.0.0.1 (docs/development.md) ------------------

#: The enrollment station's account at the AD CS stand-in: distinctive, so a leak check cannot
#: match anything else by chance.
CA_USER = "EXAMPLE\\station"
CA_PASSWORD = "St4tion-Secret-9c1f"


@pytest.fixture(scope="session")
def django_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """django-ca 2.2.1 + django-ca-cmc 0.0.1 (tests/peers/djangoca.py), in its own venv."""
    from tests.peers.djangoca import DjangoCa, ensure_venv

    ensure_venv()
    peer = DjangoCa.create(tmp_path_factory.mktemp("django-ca"))
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def certsrv_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The AD CS web enrollment stand-in (tests/peers/certsrv.py): HTTPS, Basic and NTLM."""
    from tests.peers.certsrv import DEFAULT_USERS, CertsrvPeer

    peer = CertsrvPeer.start(tmp_path_factory.mktemp("certsrv"), users={**DEFAULT_USERS, CA_USER: CA_PASSWORD})
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def faulty_ca(django_ca: object) -> Iterator[object]:
    """A broken endpoint (500, 503, hang, garbage, not HTTP) and a tampering proxy to django_ca."""
    from tests.peers.faulty import FaultyServer

    server = FaultyServer(upstream=django_ca.url)  # type: ignore[attr-defined]
    yield server
    server.stop()


@dataclass(frozen=True)
class CaAgent:
    """An enrollment agent key on ta-cagent with a Certificate Request Agent certificate from a test CA."""

    label: str
    certificate: Path  # PEM

    @property
    def uri(self) -> str:
        return f"pkcs11:token=ta-cagent;object={self.label};type=private"


def make_ca_agent(softhsm: SoftHSM, directory: Path, label: str, issue: object) -> CaAgent:
    """`tokenagent new` makes the agent's key on ta-cagent, ``issue(csr_der) -> PEM`` certifies it,
    `tokenagent accept` puts the certificate next to the key."""
    inf = directory / f"{label}.inf"
    inf.write_text((ROOT / "docs" / "examples" / "agent.inf").read_text().replace("enrollment-agent", label))
    request = directory / f"{label}.req"
    env = softhsm.env(TA_PIN=USER_PIN)
    token = ("--token", "ta-cagent", "--pin-source", "env:TA_PIN")
    made = run_cli("new", str(inf), str(request), "--binary", *token, env=env)
    assert made.returncode == 0, made.stderr
    certificate = directory / f"{label}.pem"
    certificate.write_bytes(issue(request.read_bytes()))  # type: ignore[operator]
    accepted = run_cli("accept", str(certificate), *token, env=env)
    assert accepted.returncode == 0, accepted.stderr
    return CaAgent(label, certificate)


@pytest.fixture(scope="session")
def django_agents(softhsm: SoftHSM, django_ca: object, tmp_path_factory: pytest.TempPathFactory) -> dict[str, CaAgent]:
    """Three agents certified by django_ca: cmc-agent-1 and cmc-agent-2 registered as CMC clients,
    cmc-agent-3 not (yet)."""
    directory = tmp_path_factory.mktemp("django-agents")
    agents = {}
    for number in (1, 2, 3):
        label = f"cmc-agent-{number}"
        agents[label] = make_ca_agent(
            softhsm,
            directory,
            label,
            lambda csr: django_ca.issue(csr, agent=True),  # type: ignore[attr-defined]
        )
        if number != 3:
            django_ca.add_client(agents[label].certificate.read_bytes())  # type: ignore[attr-defined]
    return agents


@pytest.fixture(scope="session")
def certsrv_agent(softhsm: SoftHSM, certsrv_peer: object, tmp_path_factory: pytest.TempPathFactory) -> CaAgent:
    """An agent certified by the AD CS stand-in's CA (it checks agent signatures against that CA)."""
    directory = tmp_path_factory.mktemp("certsrv-agent")
    return make_ca_agent(softhsm, directory, "adcs-agent", certsrv_peer.issue_agent)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def kdc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real MIT KDC (realm EXAMPLE.TEST) on 127.0.0.1 with the station's principal and HTTP/localhost."""
    from tests.peers.kdc import KDC, available

    if not available():
        pytest.fail("the Kerberos tests need krb5-kdc, krb5-admin-server and krb5-user (make setup installs them)")
    server = KDC.start(tmp_path_factory.mktemp("kdc"), principals={"station": CA_PASSWORD}, services=["HTTP/localhost"])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kerberos_certsrv(tmp_path_factory: pytest.TempPathFactory, kdc: object) -> Iterator[object]:
    """The AD CS stand-in offering only Negotiate (Kerberos, with the TLS channel binding)."""
    from tests.peers.certsrv import CertsrvPeer

    env = {**kdc.env(), "KRB5_KTNAME": str(kdc.keytab)}  # type: ignore[attr-defined]
    peer = CertsrvPeer.start(
        tmp_path_factory.mktemp("certsrv-kerberos"), auth=("negotiate",), users={CA_USER: CA_PASSWORD}, env=env
    )
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def piv_station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """pcscd with two virtual PIV cards (YubiKey look-alikes) for ykcs11 and OpenSC, started once per
    session (tests/peers/piv.py). Tests that need blank cards call insert_blank() themselves."""
    from tests.peers.piv import PivStation, PivStationError, missing, namespace_unavailable

    reason = namespace_unavailable()
    if reason:
        pytest.skip(f"virtual PIV cards need a private network namespace: {reason}")
    reason = missing()
    if reason:
        pytest.fail(f"the virtual PIV card tests need Debian packages and jcecard ({reason}): run `make setup`")
    try:
        station = PivStation.start(tmp_path_factory.mktemp("piv"))
    except PivStationError as error:
        pytest.fail(str(error))
    yield station
    station.stop()


def der_order(name: object) -> str:
    """A cryptography `x509.Name` as tokenagent prints names (certreq's order: as encoded, RFC 4514
    escaping per RDN), computed here without tokenagent."""
    return ", ".join(rdn.rfc4514_string() for rdn in name.rdns)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def implementations(softhsm: SoftHSM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """SoftHSM, NSS softokn and tpm2-pkcs11 on swtpm, each with one token (tests/peers/tokens.py);
    NSS and the TPM are started on first use and stopped at the end of the session."""
    from tests.peers.tokens import Implementation, start_nss, start_tpm

    directory = tmp_path_factory.mktemp("softhsm-impl")
    started: dict[str, object] = {
        "softhsm": Implementation(
            "softhsm",
            softhsm.module,
            "ta-impl",
            directory,
            variables={"SOFTHSM2_CONF": str(softhsm.conf), "XDG_CONFIG_HOME": str(softhsm.config_home)},
            library=softhsm.module,
        )
    }
    starters = {"nss": start_nss, "tpm": start_tpm}

    class Lazy(dict):  # type: ignore[type-arg]
        def __missing__(self, name: str) -> object:
            self[name] = starters[name](tmp_path_factory.mktemp(name))
            return self[name]

    lazy = Lazy(started)
    yield lazy
    for implementation in lazy.values():
        implementation.stop()  # type: ignore[attr-defined]
