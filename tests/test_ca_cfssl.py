"""`tokenagent enroll`, `submit` and `enroll --resume` against a real cfssl CA (Debian golang-cfssl).

The server runs once for this module (tests/peers/cfssl.py) on 127.0.0.1; the keys go on a
SoftHSM instance of this module's own. What cfssl issued is checked with openssl (the chain, the
extensions its profile set) and pkcs11-tool (the certificate on the token beside its key).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import USER_PIN, Run, SoftHSM, make_softhsm, run_cli
from tests.peers import cfssl
from tests.peers.faulty import FaultyServer, closed_port

TOKEN = "ta-cfssl"
WRONG_KEY = "00112233445566778899aabbccddeeff"

INF = """\
[NewRequest]
Subject = "CN={name}.example.com,O=Example"
KeyAlgorithm = {algorithm}
{length}
KeyContainer = {name}
ProviderName = "Microsoft Software Key Storage Provider"
RequestType = PKCS10

[Extensions]
2.5.29.17 = "{{text}}"
_continue_ = "dns={name}.example.com"
"""


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> SoftHSM:
    return make_softhsm(tmp_path_factory.mktemp("cfssl-hsm"), [TOKEN])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cfssl.CfsslServer]:
    running = cfssl.start(tmp_path_factory.mktemp("cfssl-ca"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyServer]:
    running = FaultyServer()
    yield running
    running.stop()


def inf(directory: Path, name: str, algorithm: str = "ECDSA_P256") -> Path:
    path = directory / f"{name}.inf"
    length = "KeyLength = 2048" if algorithm == "RSA" else ""
    path.write_text(INF.format(name=name, algorithm=algorithm, length=length))
    return path


def tokenagent(token: SoftHSM, state: Path, *args: str, **env: str) -> Run:
    return run_cli(*args, env=token.env(TA_PIN=USER_PIN, TOKENAGENT_STATE_DIR=str(state), **env))


def enroll(token: SoftHSM, state: Path, policy: Path, *ca: str, **env: str) -> Run:
    return tokenagent(token, state, "enroll", str(policy), *ca, "--token", TOKEN, "--pin-source", "env:TA_PIN", **env)


def cas_toml(directory: Path, server: cfssl.CfsslServer, **keys: str) -> Path:
    lines = ["[ca.cf]", f'url = "cfssl+{server.url}"'] + [f'{key} = "{value}"' for key, value in keys.items()]
    path = directory / "cas.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)


def certificate_on_token(token: SoftHSM, label: str) -> bytes:
    """The certificate object whose CKA_ID is the private key ``label``'s, read by pkcs11-tool."""
    tool = ["pkcs11-tool", "--module", token.module, "--token-label", TOKEN]
    keys = subprocess.run(
        [*tool, "--login", "--pin", USER_PIN, "-O", "--type", "privkey"],
        capture_output=True, text=True, env=token.env(), check=True,
    ).stdout  # fmt: skip
    block = next(b for b in keys.split("Private Key Object")[1:] if re.search(rf"label:\s+{label}\s*$", b, re.M))
    key_id = re.search(r"ID:\s+([0-9a-f]+)", block)
    assert key_id, block
    return subprocess.run(
        [*tool, "--read-object", "--type", "cert", "--id", key_id.group(1)],
        capture_output=True, env=token.env(), check=True,
    ).stdout  # fmt: skip


def verified_text(server: cfssl.CfsslServer, der: bytes) -> str:
    pem = openssl("x509", "-inform", "DER", stdin=der).stdout
    assert b"BEGIN CERTIFICATE" in pem
    checked = openssl("verify", "-CAfile", str(server.ca_pem), stdin=pem)
    assert checked.returncode == 0, checked.stderr
    return openssl("x509", "-noout", "-text", stdin=pem).stdout.decode()


def pending(token: SoftHSM, state: Path) -> list[dict[str, object]]:
    listing = tokenagent(token, state, "pending", "--json")
    assert listing.returncode == 0, listing.stderr
    return list(json.loads(listing.stdout)["pending"])


# -- issued and installed -------------------------------------------------------------------------------


def test_enroll_p256_installs_a_certificate_cfssl_issued(
    token: SoftHSM, server: cfssl.CfsslServer, tmp_path: Path
) -> None:
    run = enroll(token, tmp_path / "state", inf(tmp_path, "cf-p256"), "--config", f"cfssl+{server.url}", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["ca"]["protocol"] == "cfssl"
    assert result["answer"]["response_form"] == "pkcs7"
    text = verified_text(server, certificate_on_token(token, "cf-p256"))
    assert "DNS:cf-p256.example.com" in text
    assert "TLS Web Client Authentication" in text  # cfssl's default profile
    assert "ASN1 OID: prime256v1" in text
    assert pending(token, tmp_path / "state") == []  # installed: nothing left pending


def test_cas_profile_picks_the_signing_profile(token: SoftHSM, server: cfssl.CfsslServer, tmp_path: Path) -> None:
    cas = cas_toml(tmp_path, server, profile="server")
    run = enroll(token, tmp_path / "state", inf(tmp_path, "cf-rsa", "RSA"), "--cas", str(cas), "--config", "cf")
    assert run.returncode == 0, run.stderr
    assert "certificate: installed on the token" in run.stdout
    text = verified_text(server, certificate_on_token(token, "cf-rsa"))
    assert "TLS Web Server Authentication" in text
    assert "Public-Key: (2048 bit)" in text


def test_authsign_with_the_hmac_key_from_its_source(token: SoftHSM, server: cfssl.CfsslServer, tmp_path: Path) -> None:
    cas = cas_toml(tmp_path, server, profile="authd", auth_key_source="env:CF_KEY")
    state = tmp_path / "state"
    run = enroll(token, state, inf(tmp_path, "cf-authd"), "--cas", str(cas), "--config", "cf", CF_KEY=cfssl.AUTH_KEY)
    assert run.returncode == 0, run.stderr
    verified_text(server, certificate_on_token(token, "cf-authd"))
    assert cfssl.AUTH_KEY not in run.stdout + run.stderr


def test_submit_writes_the_certificate_and_the_chain(token: SoftHSM, server: cfssl.CfsslServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    request = tmp_path / "cf-submit.req"
    made = tokenagent(token, state, "new", str(inf(tmp_path, "cf-submit")), str(request), "--token", TOKEN,
                      "--pin-source", "env:TA_PIN")  # fmt: skip
    assert made.returncode == 0, made.stderr
    cert, chain = tmp_path / "cf.cer", tmp_path / "cf.p7b"
    run = tokenagent(token, state, "submit", "--config", f"cfssl+{server.url}", str(request), str(cert), str(chain))
    assert run.returncode == 0, run.stderr
    listed = openssl("pkcs7", "-in", str(chain), "-print_certs", "-noout").stdout.decode()
    assert "tokenagent test cfssl CA" in listed and "cf-submit.example.com" in listed
    checked = openssl("verify", "-CAfile", str(server.ca_pem), str(cert))
    assert checked.returncode == 0, checked.stderr


# -- refusals and failures leave the request pending ------------------------------------------------------


def test_wrong_hmac_key_is_refused_credentials_and_the_request_stays(
    token: SoftHSM, server: cfssl.CfsslServer, tmp_path: Path
) -> None:
    cas = cas_toml(tmp_path, server, profile="authd", auth_key_source="env:CF_KEY")
    state = tmp_path / "state"
    run = enroll(token, state, inf(tmp_path, "cf-wrongkey"), "--cas", str(cas), "--config", "cf", CF_KEY=WRONG_KEY)
    assert run.returncode == 19, run.stderr
    assert "invalid token" in run.stderr and WRONG_KEY not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    [record] = pending(token, state)
    # the same request, with the right key, is finished by --resume
    again = tokenagent(token, state, "enroll", "--resume", str(record["id"]), "--cas", str(cas), "--config", "cf",
                       "--pin-source", "env:TA_PIN", CF_KEY=cfssl.AUTH_KEY)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "installed" in again.stdout
    verified_text(server, certificate_on_token(token, "cf-wrongkey"))


def test_a_profile_that_needs_authentication_without_a_key(
    token: SoftHSM, server: cfssl.CfsslServer, tmp_path: Path
) -> None:
    cas = cas_toml(tmp_path, server, profile="authd")
    run = enroll(token, tmp_path / "state", inf(tmp_path, "cf-nokey"), "--cas", str(cas), "--config", "cf")
    assert run.returncode == 19, run.stderr
    assert "authentication required" in run.stderr and "auth_key_source" in run.stderr


def test_connection_refused_then_resume_installs(token: SoftHSM, server: cfssl.CfsslServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    run = enroll(token, state, inf(tmp_path, "cf-later"), "--config", f"cfssl+http://127.0.0.1:{closed_port()}")
    assert run.returncode == 16, run.stderr
    assert "cannot reach" in run.stderr and "enroll --resume" in run.stderr
    [record] = pending(token, state)
    again = tokenagent(token, state, "enroll", "--resume", str(record["id"]), "--config", f"cfssl+{server.url}",
                       "--pin-source", "env:TA_PIN")  # fmt: skip
    assert again.returncode == 0, again.stderr
    verified_text(server, certificate_on_token(token, "cf-later"))


@pytest.mark.parametrize(("mode", "code", "said"), [("500", 16, "HTTP 500"), ("garbage/cmc", 17, "not cfssl's JSON")])
def test_server_errors_and_garbage(
    token: SoftHSM, faulty: FaultyServer, tmp_path: Path, mode: str, code: int, said: str
) -> None:
    state = tmp_path / "state"
    run = enroll(token, state, inf(tmp_path, f"cf-{mode[:3]}"), "--config", f"cfssl+{faulty.url(mode)}")
    assert run.returncode == code, run.stderr
    assert said in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert len(pending(token, state)) == 1


def test_a_certificate_outside_the_configured_trust_is_not_installed(
    token: SoftHSM, server: cfssl.CfsslServer, tmp_path: Path
) -> None:
    other = tmp_path / "other.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(tmp_path / "other.key"), "-subj", "/CN=another CA", "-out", str(other)],
        capture_output=True, check=True,
    )  # fmt: skip
    state = tmp_path / "state"
    run = enroll(token, state, inf(tmp_path, "cf-trust"), "--config", f"cfssl+{server.url}", "--ca-trust", str(other))
    assert run.returncode != 0
    assert "does not lead to a certificate of the CA trust" in run.stderr
    assert len(pending(token, state)) == 1


def test_attributes_and_cmc_requests_are_refused_before_sending(
    token: SoftHSM, server: cfssl.CfsslServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    request = tmp_path / "cf-attr.req"
    made = tokenagent(token, state, "new", str(inf(tmp_path, "cf-attr")), str(request), "--token", TOKEN,
                      "--pin-source", "env:TA_PIN")  # fmt: skip
    assert made.returncode == 0, made.stderr
    run = tokenagent(token, state, "submit", "--config", f"cfssl+{server.url}", "--attrib", "CertificateTemplate:X",
                     str(request))  # fmt: skip
    assert run.returncode == 18, run.stderr
    assert "cfssl takes no request attributes" in run.stderr
