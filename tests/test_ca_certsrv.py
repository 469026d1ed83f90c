"""`tokenagent enroll`, `submit`, `retrieve` against AD CS web enrollment (certsrv).

AD CS cannot run here: its stand-in is tests/peers/certsrv.py, which follows the real pages and
status codes, enforces Basic or NTLM (with Extended Protection) over HTTPS, and issues with
`openssl ca` (one server per session, tests/conftest.py `certsrv_peer`). Results are checked with
pkcs11-tool, openssl and the peer's own database, not with tokenagent.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CA_PASSWORD, CA_USER, ROOT, USER_PIN, CaAgent, Run, SoftHSM, pkcs11_tool, run_cli
from tests.peers.faulty import FaultyServer, closed_port

EOBO_INF = ROOT / "docs" / "examples" / "smartcard-logon-eobo.inf"
CMC_INF = ROOT / "docs" / "examples" / "smartcard-logon-cmc.inf"


def user_inf(directory: Path, container: str, template: str = "SmartcardLogon", form: str = "pkcs7") -> Path:
    """The on-behalf-of INF as a PKCS7 (EOBO) or CMC request, for ``template``."""
    inf = directory / f"{container}.inf"
    if form == "cmc":  # AD CS reads the template of a CMC request from the PKCS#10's attributes
        text = CMC_INF.read_text() + "\n[RequestAttributes]\nCertificateTemplate = SmartcardLogon\n"
    else:
        text = EOBO_INF.read_text()
    text = text.replace("grace-logon", container)
    inf.write_text(text.replace("CertificateTemplate = SmartcardLogon", f"CertificateTemplate = {template}"))
    return inf


def tokenagent(softhsm: SoftHSM, *args: str, **env: str) -> Run:
    return run_cli(*args, env=softhsm.env(**{"TA_PIN": USER_PIN, "CA_PW": CA_PASSWORD, **env}))


def ca_args(peer: Any, *, auth: str = "ntlm", url: str | None = None) -> list[str]:
    return [
        "--config",
        f"certsrv+{url or peer.url}",
        "--ca-bundle",
        str(peer.tls_ca_pem),
        "--ca-user",
        CA_USER,
        "--ca-password-source",
        "env:CA_PW",
        "--ca-auth",
        auth,
    ]


def enroll(softhsm: SoftHSM, peer: Any, inf: Path, agent: CaAgent, *extra: str, **kw: Any) -> Run:
    user = ["--token", "ta-causer", "--pin-source", "env:TA_PIN"]
    agent_args = ["--agent", agent.uri, "--agent-pin-source", "env:TA_PIN"]
    env = kw.pop("env", {})
    return tokenagent(softhsm, "enroll", str(inf), *ca_args(peer, **kw), *user, *agent_args, *extra, **env)


def key_id_of(softhsm: SoftHSM, container: str) -> str:
    listing = pkcs11_tool(softhsm, "-O", "--type", "privkey", token="ta-causer")
    for block in listing.split("Private Key Object")[1:]:
        if re.search(rf"label:\s+{re.escape(container)}\s*$", block, re.M):
            found = re.search(r"ID:\s+([0-9a-f]+)", block)
            assert found, block
            return found.group(1)
    raise AssertionError(f"no private key {container} on ta-causer")


def certificate_with_id(softhsm: SoftHSM, key_id: str) -> bytes | None:
    listing = pkcs11_tool(softhsm, "-O", "--type", "cert", token="ta-causer", login=False)
    if not re.search(rf"ID:\s+{key_id}\b", listing):
        return None
    command = ["pkcs11-tool", "--module", softhsm.module, "--token-label", "ta-causer", "--read-object"]
    done = subprocess.run(
        [*command, "--type", "cert", "--id", key_id], capture_output=True, env=softhsm.env(), check=True
    )
    return done.stdout


def verified_by_peer(peer: Any, der: bytes) -> str:
    pem = subprocess.run(["openssl", "x509", "-inform", "DER"], input=der, capture_output=True, check=True).stdout
    done = subprocess.run(["openssl", "verify", "-CAfile", str(peer.ca_chain_pem)], input=pem, capture_output=True)
    assert done.returncode == 0, done.stderr
    return subprocess.run(["openssl", "x509", "-noout", "-text"], input=pem, capture_output=True).stdout.decode()


def one_error_line(run: Run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith("tokenagent: error:")]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


def pending_record(softhsm: SoftHSM, pending_id: int) -> dict[str, Any] | None:
    listing = tokenagent(softhsm, "pending", "--json")
    return next((r for r in json.loads(listing.stdout)["pending"] if r["id"] == pending_id), None)


def auth_failures(peer: Any) -> int:
    log = (peer.directory / "server.log").read_text()
    return len(re.findall(r" 401 \S+: (Basic: wrong|NTLM: )", log))


# -- issued ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("auth", "form"), [("basic", "pkcs7"), ("ntlm", "pkcs7"), ("ntlm", "cmc")])
def test_enroll_on_behalf_of_is_issued_and_installed(
    softhsm: SoftHSM, certsrv_peer: Any, certsrv_agent: CaAgent, tmp_path: Path, auth: str, form: str
) -> None:
    container = f"adcs-{auth}-{form}"
    inf = user_inf(tmp_path, container, form=form)
    run = enroll(softhsm, certsrv_peer, inf, certsrv_agent, "--chain", auth=auth)
    assert run.returncode == 0, run.stderr
    issued = re.search(r"issued .* as request (\d+)", run.stdout)
    assert issued, run.stdout
    record = next(r for r in certsrv_peer.requests() if r["id"] == int(issued.group(1)))
    assert record["caller"].lower() == CA_USER.lower()  # authenticated as the station's account
    assert record["requester"] == "EXAMPLE\\grace" and record["signatures"] == 1
    assert record["template"] == "SmartcardLogon" and record["request_type"] == form
    certificate = certificate_with_id(softhsm, key_id_of(softhsm, container))
    assert certificate is not None
    text = verified_by_peer(certsrv_peer, certificate)
    assert "grace@example.com" in text


def test_submit_with_attributes_writes_cert_and_chain(softhsm: SoftHSM, certsrv_peer: Any, tmp_path: Path) -> None:
    """certreq -submit -attrib: a plain PKCS#10 made by openssl, the template given as an attribute."""
    key, request = tmp_path / "web.key", tmp_path / "web.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-subj", "/CN=web.example.com", "-out", str(request)],
        check=True, capture_output=True,
    )  # fmt: skip
    cert, chain = tmp_path / "web.pem", tmp_path / "web.p7b"
    run = tokenagent(
        softhsm,
        "submit",
        str(request),
        str(cert),
        str(chain),
        *ca_args(certsrv_peer, auth="basic"),
        "--attrib",
        "CertificateTemplate:User\\nSAN:dns=web.example.com",
    )
    assert run.returncode == 0, run.stderr
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(certsrv_peer.ca_chain_pem), str(cert)], capture_output=True
    )
    assert done.returncode == 0, done.stderr
    printed = subprocess.run(["openssl", "pkcs7", "-in", str(chain), "-print_certs", "-noout"], capture_output=True)
    assert printed.returncode == 0 and printed.stdout.count(b"subject=") >= 2
    last = certsrv_peer.requests()[-1]
    assert last["template"] == "User" and last["attributes"]["san"] == "dns=web.example.com"


def test_ca_certificates_come_from_certcarc_and_certnew_p7b(certsrv_peer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connector interface's ca_certificates(): the CA chain as the web pages give it."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from tokenagent.ca.certsrv import CertsrvConnector
    from tokenagent.ca.http import HttpSettings
    from tokenagent.secret_sources import SecretSource

    monkeypatch.setenv("CA_PW", CA_PASSWORD)
    settings = HttpSettings(
        ca_bundle=certsrv_peer.tls_ca_pem, auth="basic", user=CA_USER, password=SecretSource("env", "CA_PW")
    )
    connector = CertsrvConnector(certsrv_peer.url, settings)
    try:
        found = connector.ca_certificates()
    finally:
        connector.close()
    expected = [
        c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(certsrv_peer.ca_chain_pem.read_bytes())
    ]
    assert sorted(found) == sorted(expected)
    issuing = x509.load_der_x509_certificate(found[0])
    assert issuing.subject != issuing.issuer  # the issuing CA first, then its root


# -- pending, denied ---------------------------------------------------------------------------------------


def test_pending_then_retrieve_then_accept(
    softhsm: SoftHSM, certsrv_peer: Any, certsrv_agent: CaAgent, tmp_path: Path
) -> None:
    peer = certsrv_peer
    inf = user_inf(tmp_path, "adcs-pending", template="ManualApproval")
    # ManualApproval takes no agent signature: enroll the user directly (no RequesterName)
    inf.write_text(inf.read_text().replace('RequesterName = "EXAMPLE\\grace"\n', "").replace("PKCS7", "PKCS10"))
    user = ["--token", "ta-causer", "--pin-source", "env:TA_PIN"]
    run = tokenagent(softhsm, "enroll", str(inf), *ca_args(peer), *user, "--json")
    assert run.returncode == 14, run.stderr
    line = one_error_line(run)
    found = re.search(r"holds the request pending as request (\d+)", line)
    assert found, line
    request_id = found.group(1)
    details = json.loads(run.stdout)["details"]
    assert details["request_id"] == request_id and details["state"] == "pending"
    pending_id = details["pending_id"]
    key_id = key_id_of(softhsm, "adcs-pending")
    assert certificate_with_id(softhsm, key_id) is None

    # certreq -retrieve before the officer issued it: still pending
    cert, chain = tmp_path / "pending.pem", tmp_path / "pending.p7b"
    again = tokenagent(softhsm, "retrieve", request_id, str(cert), *ca_args(peer))
    assert again.returncode == 14 and "taken under submission" in one_error_line(again)
    assert not cert.exists()

    peer.resubmit(int(request_id))  # the CA officer issues it (certutil -resubmit)
    got = tokenagent(softhsm, "retrieve", request_id, str(cert), str(chain))  # the stored CA, by its request ID
    assert got.returncode == 0, got.stderr
    done = subprocess.run(["openssl", "verify", "-CAfile", str(peer.ca_chain_pem), str(cert)], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert pending_record(softhsm, pending_id)["ca"]["state"] == "issued"  # type: ignore[index]

    accepted = tokenagent(softhsm, "accept", str(cert), *user)
    assert accepted.returncode == 0, accepted.stderr
    assert certificate_with_id(softhsm, key_id) is not None
    assert pending_record(softhsm, pending_id) is None


@pytest.mark.parametrize(
    ("template", "code", "words"),
    [
        ("NotPublished", "0x80094800 CERTSRV_E_UNSUPPORTED_CERT_TYPE", "the template is not published on this CA"),
        ("User", "0x80094806 CERTSRV_E_BAD_RENEWAL_SUBJECT", "does not require an enrollment agent signature"),
        ("SmartcardLogonTwoAgents", "0x8009480a CERTSRV_E_SIGNATURE_COUNT", "more enrollment agent signatures"),
    ],
)
def test_denied_with_the_code_and_plain_words(
    softhsm: SoftHSM,
    certsrv_peer: Any,
    certsrv_agent: CaAgent,
    tmp_path: Path,
    template: str,
    code: str,
    words: str,
) -> None:
    container = f"adcs-denied-{template.lower()}"
    run = enroll(softhsm, certsrv_peer, user_inf(tmp_path, container, template), certsrv_agent, "--json")
    assert run.returncode == 12, run.stderr
    line = one_error_line(run)
    assert code in line and words in line, line
    details = json.loads(run.stdout)["details"]
    assert details["state"] == "rejected" and details["code"] == code
    assert certificate_with_id(softhsm, key_id_of(softhsm, container)) is None
    record = pending_record(softhsm, details["pending_id"])
    assert record is not None and record["ca"]["state"] == "rejected"


# -- credentials and TLS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["basic", "ntlm"])
def test_wrong_password_is_tried_once_with_a_clear_error(
    softhsm: SoftHSM, certsrv_peer: Any, tmp_path: Path, auth: str
) -> None:
    request = tmp_path / "r.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(tmp_path / "r.key"), "-subj", "/CN=wrong password", "-out", str(request)],
        check=True, capture_output=True,
    )  # fmt: skip
    before = auth_failures(certsrv_peer)
    run = tokenagent(
        softhsm,
        "submit",
        str(request),
        *ca_args(certsrv_peer, auth=auth),
        "--attrib",
        "CertificateTemplate:User",
        CA_PW="not-the-password",
    )
    assert run.returncode == 19, run.stderr
    line = one_error_line(run)
    assert "refused the credentials of EXAMPLE\\station" in line and "not tried again" in line
    assert auth_failures(certsrv_peer) - before == 1


def test_tls_certificate_not_trusted_refuses_to_connect(softhsm: SoftHSM, certsrv_peer: Any, tmp_path: Path) -> None:
    request = tmp_path / "r.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(tmp_path / "r.key"), "-subj", "/CN=tls", "-out", str(request)],
        check=True, capture_output=True,
    )  # fmt: skip
    args = [a for a in ca_args(certsrv_peer) if a not in ("--ca-bundle", str(certsrv_peer.tls_ca_pem))]
    run = tokenagent(softhsm, "submit", str(request), *args, "--attrib", "CertificateTemplate:User")
    assert run.returncode == 18, run.stderr
    assert "TLS certificate of 127.0.0.1" in one_error_line(run) and "does not verify" in one_error_line(run)


def test_no_credential_in_argv_logs_exceptions_json_or_the_store(
    softhsm: SoftHSM, certsrv_peer: Any, certsrv_agent: CaAgent, tmp_path: Path
) -> None:
    """The password comes from a file descriptor; -vv logs every HTTP exchange; nothing shows it."""
    read, write = os.pipe()
    os.write(write, CA_PASSWORD.encode() + b"\n")
    os.close(write)
    args = [a if a != "env:CA_PW" else f"fd:{read}" for a in ca_args(certsrv_peer, auth="basic")]
    inf = user_inf(tmp_path, "adcs-secret")
    user = ["--token", "ta-causer", "--pin-source", "env:TA_PIN"]
    agent = ["--agent", certsrv_agent.uri, "--agent-pin-source", "env:TA_PIN"]
    argv = ["-vv", "enroll", str(inf), *args, *user, *agent, "--json"]
    env = softhsm.env(TA_PIN=USER_PIN)
    assert "CA_PW" not in env
    try:
        run = run_cli(*argv, env=env, pass_fds=(read,))
    finally:
        os.close(read)
    assert run.returncode == 0, run.stderr
    assert "POST https://127.0.0.1" in run.stderr  # -vv did log the exchange
    # a refused password: the error path, with --json
    wrong = tokenagent(
        softhsm, "-vv", "enroll", str(user_inf(tmp_path, "adcs-secret-2")), *ca_args(certsrv_peer, auth="basic"),
        *user, *agent, "--json", CA_PW=CA_PASSWORD + "-wrong",
    )  # fmt: skip
    assert wrong.returncode == 19
    listing = tokenagent(softhsm, "pending", "--json")
    store = (softhsm.state_dir / "pending.sqlite3").read_bytes()
    basic = base64.b64encode(f"{CA_USER}:{CA_PASSWORD}".encode()).decode()
    for text in (run.stdout, run.stderr, wrong.stdout, wrong.stderr, listing.stdout):
        assert CA_PASSWORD not in text and basic not in text and "Authorization" not in text
    assert CA_PASSWORD.encode() not in store and CA_PASSWORD.encode("utf-16-le") not in store
    assert all(CA_PASSWORD not in item for item in argv)


# -- the way to the CA fails ---------------------------------------------------------------------------------

FAILURES = [
    ("refused", 16, "refused"),
    ("500", 16, "HTTP 500"),
    ("hang", 16, "no answer from 127.0.0.1"),
    ("garbage", 17, "neither issued, pending nor denied"),
    ("nothttp", 17, "not an HTTP answer"),
]


@pytest.mark.parametrize(("mode", "code", "says"), FAILURES, ids=[f[0] for f in FAILURES])
def test_failures_keep_the_request_pending_and_it_completes_later(
    softhsm: SoftHSM,
    certsrv_peer: Any,
    certsrv_agent: CaAgent,
    faulty_ca: FaultyServer,
    tmp_path: Path,
    mode: str,
    code: int,
    says: str,
) -> None:
    container = f"adcs-fail-{mode}"
    url = f"http://127.0.0.1:{closed_port()}/certsrv" if mode == "refused" else faulty_ca.url(mode, "certsrv/certsrv")
    user = ["--token", "ta-causer", "--pin-source", "env:TA_PIN"]
    agent = ["--agent", certsrv_agent.uri, "--agent-pin-source", "env:TA_PIN"]
    config = ["--config", f"certsrv+{url}", "--timeout", "1", "--json"]
    run = tokenagent(softhsm, "enroll", str(user_inf(tmp_path, container)), *config, *user, *agent)
    assert run.returncode == code, run.stderr
    assert says in one_error_line(run)
    pending_id = json.loads(run.stdout)["details"]["pending_id"]
    key_id = key_id_of(softhsm, container)
    assert certificate_with_id(softhsm, key_id) is None
    assert pending_record(softhsm, pending_id)["ca"]["state"] in ("unreachable", "garbled")  # type: ignore[index]

    done = tokenagent(
        softhsm, "enroll", "--resume", str(pending_id), *ca_args(certsrv_peer), "--pin-source", "env:TA_PIN"
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert certificate_with_id(softhsm, key_id) is not None
    assert pending_record(softhsm, pending_id) is None


# -- Negotiate (Kerberos) ------------------------------------------------------------------------------------


def test_negotiate_uses_the_kerberos_ticket_cache(
    softhsm: SoftHSM, kdc: Any, kerberos_certsrv: Any, tmp_path: Path
) -> None:
    """No user and no password on tokenagent's side: `kinit` made a ticket, a real MIT KDC issues the
    service ticket for HTTP/localhost, the server checks it (and the TLS channel binding)."""
    request = tmp_path / "k.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(tmp_path / "k.key"), "-subj", "/CN=kerberos", "-out", str(request)],
        check=True, capture_output=True,
    )  # fmt: skip
    url = kerberos_certsrv.url.replace("127.0.0.1", "localhost")  # the service principal is HTTP/localhost
    config = ["--config", f"certsrv+{url}", "--ca-bundle", str(kerberos_certsrv.tls_ca_pem)]
    attrib = ["--attrib", "CertificateTemplate:User"]

    no_ticket = tokenagent(
        softhsm, "submit", str(request), *config, *attrib, **kdc.env(), KRB5CCNAME=f"FILE:{tmp_path / 'none'}"
    )
    assert no_ticket.returncode == 19, no_ticket.stderr
    assert "kinit" in one_error_line(no_ticket)

    ccache = tmp_path / "ccache"
    kdc.kinit("station", CA_PASSWORD, ccache)
    cert = tmp_path / "k.pem"
    run = tokenagent(
        softhsm, "submit", str(request), str(cert), *config, *attrib, **kdc.env(), KRB5CCNAME=f"FILE:{ccache}"
    )
    assert run.returncode == 0, run.stderr
    log = (kerberos_certsrv.directory / "server.log").read_text()
    assert "Negotiate: station@EXAMPLE.TEST authenticated as EXAMPLE\\station" in log
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(kerberos_certsrv.ca_chain_pem), str(cert)], capture_output=True
    )
    assert done.returncode == 0, done.stderr
