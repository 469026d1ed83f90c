"""`tokenagent enroll`, `submit`, `retrieve` against a real CMC CA: django-ca 2.2.1 + django-ca-cmc 0.0.1.

The server runs once per session (tests/conftest.py `django_ca`), the agents' keys live on
ta-cagent with certificates the CA issued (`django_agents`), users' keys go on ta-causer. What the
CA issued is checked with pkcs11-tool (the token), openssl (certificates, the CMS signature of the
response) and pyasn1-modules (the PKIResponse status), not with tokenagent.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pyasn1.codec.der import decoder
from pyasn1.type import char, namedtype, univ
from pyasn1_modules import rfc5652, rfc6402

from tests.conftest import ROOT, USER_PIN, CaAgent, Run, SoftHSM, pkcs11_tool, run_cli
from tests.peers.faulty import FaultyServer, closed_port

CMC_INF = ROOT / "docs" / "examples" / "smartcard-logon-cmc.inf"
OID_STATUS_INFO_V2 = "1.3.6.1.5.5.7.7.25"


class StatusInfoV2(univ.Sequence):
    """RFC 6402 CMCStatusInfoV2, otherInfo left as ANY (pyasn1-modules cannot decode that CHOICE)."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("cMCStatus", rfc6402.CMCStatus()),
        namedtype.NamedType("bodyList", univ.SequenceOf(componentType=rfc6402.BodyPartReference())),
        namedtype.OptionalNamedType("statusString", char.UTF8String()),
        namedtype.OptionalNamedType("otherInfo", univ.Any()),
    )


# -- helpers -------------------------------------------------------------------------------------------


def user_inf(directory: Path, container: str) -> Path:
    inf = directory / f"{container}.inf"
    inf.write_text(CMC_INF.read_text().replace("grace-logon", container))
    return inf


def tokenagent(softhsm: SoftHSM, *args: str) -> Run:
    return run_cli(*args, env=softhsm.env(TA_PIN=USER_PIN))


def ca_args(django_ca: Any, url: str | None = None, trust: Path | None = None) -> list[str]:
    return ["--config", f"cmc+{url or django_ca.url}", "--ca-trust", str(trust or django_ca.ca_pem)]


def enroll(softhsm: SoftHSM, django_ca: Any, inf: Path, agent: CaAgent, *extra: str, url: str | None = None) -> Run:
    user = ["--token", "ta-causer", "--pin-source", "env:TA_PIN"]
    agent_args = ["--agent", agent.uri, "--agent-pin-source", "env:TA_PIN"]
    return tokenagent(softhsm, "enroll", str(inf), *ca_args(django_ca, url), *user, *agent_args, *extra)


def key_id_of(softhsm: SoftHSM, container: str) -> str:
    """The CKA_ID of the private key labelled ``container`` on ta-causer, as pkcs11-tool lists it."""
    listing = pkcs11_tool(softhsm, "-O", "--type", "privkey", token="ta-causer")
    for block in listing.split("Private Key Object")[1:]:
        if re.search(rf"label:\s+{re.escape(container)}\s*$", block, re.M):
            found = re.search(r"ID:\s+([0-9a-f]+)", block)
            assert found, block
            return found.group(1)
    raise AssertionError(f"no private key {container} on ta-causer:\n{listing}")


def certificate_with_id(softhsm: SoftHSM, key_id: str) -> bytes | None:
    """The DER certificate object with CKA_ID ``key_id`` on ta-causer (pkcs11-tool --read-object)."""
    listing = pkcs11_tool(softhsm, "-O", "--type", "cert", token="ta-causer", login=False)
    if not re.search(rf"ID:\s+{key_id}\b", listing):
        return None
    done = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            softhsm.module,
            "--token-label",
            "ta-causer",
            "--read-object",
            "--type",
            "cert",
            "--id",
            key_id,
        ],
        capture_output=True,
        env=softhsm.env(),
        check=True,
    )
    return done.stdout


def openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)


def assert_issued_by(django_ca: Any, certificate_der: bytes, tmp_path: Path) -> str:
    """openssl verifies the certificate against the CA's certificate; returns its text."""
    path = tmp_path / "issued.der"
    path.write_bytes(certificate_der)
    pem = openssl("x509", "-inform", "DER", "-in", str(path)).stdout
    verified = openssl("verify", "-CAfile", str(django_ca.ca_pem), stdin=pem)
    assert verified.returncode == 0, verified.stderr
    return openssl("x509", "-noout", "-text", stdin=pem).stdout.decode()


def pending_records(softhsm: SoftHSM) -> list[dict[str, Any]]:
    listing = tokenagent(softhsm, "pending", "--json")
    assert listing.returncode == 0, listing.stderr
    return list(json.loads(listing.stdout)["pending"])


def record_for(softhsm: SoftHSM, pending_id: int) -> dict[str, Any] | None:
    return next((r for r in pending_records(softhsm) if r["id"] == pending_id), None)


def error_json(run: Run) -> dict[str, Any]:
    data = json.loads(run.stdout)
    assert data["exit_code"] == run.returncode
    return dict(data)


def one_error_line(run: Run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith("tokenagent: error:")]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    return lines[0]


# -- issued ----------------------------------------------------------------------------------------------


def test_enroll_with_an_agent_installs_the_certificate_next_to_its_key(
    softhsm: SoftHSM, django_ca: Any, django_agents: dict[str, CaAgent], tmp_path: Path
) -> None:
    inf = user_inf(tmp_path, "cmc-ada")
    run = enroll(softhsm, django_ca, inf, django_agents["cmc-agent-1"], "--chain")
    assert run.returncode == 0, run.stderr
    assert "request: CMC (co-signed by the agent)" in run.stdout
    assert "certificate: installed on the token next to its key" in run.stdout

    key_id = key_id_of(softhsm, "cmc-ada")
    certificate = certificate_with_id(softhsm, key_id)
    assert certificate is not None, "pkcs11-tool lists no certificate with the key's CKA_ID"
    text = assert_issued_by(django_ca, certificate, tmp_path)
    assert "CN=Grace Hopper" in text.replace(" = ", "=")
    assert "grace@example.com" in text  # the UPN the INF asked for, copied by the CA
    assert "Microsoft Smartcard Login" in text
    # the CA certificate went onto the card too (--chain)
    listing = pkcs11_tool(softhsm, "-O", "--type", "cert", token="ta-causer", login=False)
    assert "tokenagent CMC test CA" in listing
    # nothing is left pending for this key
    assert not [r for r in pending_records(softhsm) if r["key_id"] == key_id]


def test_two_agent_signatures_are_issued_and_the_response_verifies_independently(
    softhsm: SoftHSM, django_ca: Any, django_agents: dict[str, CaAgent], tmp_path: Path
) -> None:
    inf = user_inf(tmp_path, "cmc-two")
    first, second = django_agents["cmc-agent-1"], django_agents["cmc-agent-2"]
    request = tmp_path / "two.req"
    made = tokenagent(
        softhsm,
        "new",
        str(inf),
        str(request),
        "--binary",
        "--token",
        "ta-causer",
        "--pin-source",
        "env:TA_PIN",
        "--agent",
        first.uri,
        "--agent-pin-source",
        "env:TA_PIN",
    )
    assert made.returncode == 0, made.stderr
    signed = tmp_path / "two-signed.req"
    cosigned = tokenagent(
        softhsm,
        "sign",
        str(request),
        str(signed),
        "--binary",
        "--agent",
        second.uri,
        "--pin-source",
        "env:TA_PIN",
        "--yes",
    )
    assert cosigned.returncode == 0, cosigned.stderr
    info = decoder.decode(signed.read_bytes(), asn1Spec=rfc5652.ContentInfo())[0]
    signed_data = decoder.decode(info["content"], asn1Spec=rfc5652.SignedData())[0]
    assert len(signed_data["signerInfos"]) == 3  # the request key's own, then two agents

    cert, chain, response = tmp_path / "two.pem", tmp_path / "two.p7b", tmp_path / "two.rsp"
    submitted = tokenagent(softhsm, "submit", str(signed), str(cert), str(chain), str(response), *ca_args(django_ca))
    assert submitted.returncode == 0, submitted.stderr
    assert "is kept until the certificate is on its token" in submitted.stdout

    # the response: a CMS signature openssl verifies against the CA, status success (pyasn1)
    verified = openssl(
        "cms", "-verify", "-inform", "DER", "-in", str(response), "-CAfile", str(django_ca.ca_pem),
        "-purpose", "any", "-binary", "-out", str(tmp_path / "content.der"),
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    pki_response = decoder.decode((tmp_path / "content.der").read_bytes(), asn1Spec=rfc6402.PKIResponse())[0]
    statuses = [
        decoder.decode(value, asn1Spec=StatusInfoV2())[0]
        for attribute in pki_response["controlSequence"]
        if str(attribute["attrType"]) == OID_STATUS_INFO_V2
        for value in attribute["attrValues"]
    ]
    assert [int(s["cMCStatus"]) for s in statuses] == [0]  # success
    # CERT and CHAIN are what OpenSSL reads
    assert openssl("verify", "-CAfile", str(django_ca.ca_pem), str(cert)).returncode == 0
    p7 = openssl("pkcs7", "-in", str(chain), "-print_certs", "-noout")
    assert p7.returncode == 0 and p7.stdout.count(b"subject=") == 2

    accepted = tokenagent(softhsm, "accept", str(cert), "--token", "ta-causer", "--pin-source", "env:TA_PIN")
    assert accepted.returncode == 0, accepted.stderr
    assert (
        certificate_with_id(softhsm, key_id_of(softhsm, "cmc-two"))
        == openssl("x509", "-in", str(cert), "-outform", "DER").stdout
    )


# -- refused ----------------------------------------------------------------------------------------------


def test_unregistered_agent_is_a_clear_rejection_and_the_request_stays(
    softhsm: SoftHSM, django_ca: Any, django_agents: dict[str, CaAgent], tmp_path: Path
) -> None:
    inf = user_inf(tmp_path, "cmc-unregistered")
    agent = django_agents["cmc-agent-3"]
    run = enroll(softhsm, django_ca, inf, agent, "--json")
    assert run.returncode == 12, run.stderr
    line = one_error_line(run)
    assert "403" in line and "not registered" in line and "invalid signature" in line
    details = error_json(run)["details"]
    pending_id = details["pending_id"]
    key_id = key_id_of(softhsm, "cmc-unregistered")
    assert certificate_with_id(softhsm, key_id) is None  # nothing installed
    record = record_for(softhsm, pending_id)
    assert record is not None and record["ca"]["state"] == "rejected"

    # the CA's administrator registers the agent; the same request is then issued
    django_ca.add_client(agent.certificate.read_bytes())
    resumed = tokenagent(softhsm, "enroll", "--resume", str(pending_id), "--pin-source", "env:TA_PIN")
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert f"pending request {pending_id}" in resumed.stdout and "installed" in resumed.stdout
    assert certificate_with_id(softhsm, key_id) is not None
    assert record_for(softhsm, pending_id) is None


def test_a_response_whose_signature_does_not_verify_is_refused(
    softhsm: SoftHSM, django_ca: Any, django_agents: dict[str, CaAgent], faulty_ca: FaultyServer, tmp_path: Path
) -> None:
    inf = user_inf(tmp_path, "cmc-tampered")
    serial_path = django_ca.url.split("/cmc/", 1)[1]
    run = enroll(
        softhsm,
        django_ca,
        inf,
        django_agents["cmc-agent-1"],
        "--json",
        url=faulty_ca.url("tamper", f"cmc/{serial_path}"),
    )
    assert run.returncode == 11, run.stderr
    assert "does not verify" in one_error_line(run) or "signature is invalid" in one_error_line(run)
    key_id = key_id_of(softhsm, "cmc-tampered")
    assert certificate_with_id(softhsm, key_id) is None
    pending_id = error_json(run)["details"]["pending_id"]
    assert record_for(softhsm, pending_id)["ca"]["state"] == "unverified"  # type: ignore[index]

    # the real CA, asked again, completes it
    resumed = tokenagent(
        softhsm, "enroll", "--resume", str(pending_id), *ca_args(django_ca), "--pin-source", "env:TA_PIN"
    )
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert certificate_with_id(softhsm, key_id) is not None


def test_a_response_signed_by_another_ca_is_refused(
    softhsm: SoftHSM, django_ca: Any, django_agents: dict[str, CaAgent], tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    made = openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
        str(tmp_path / "other.key"), "-subj", "/CN=Some other CA", "-days", "2", "-out", str(other),
        "-addext", "basicConstraints=critical,CA:TRUE",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    inf = user_inf(tmp_path, "cmc-other-trust")
    user = ["--token", "ta-causer", "--pin-source", "env:TA_PIN"]
    agent = ["--agent", django_agents["cmc-agent-1"].uri, "--agent-pin-source", "env:TA_PIN"]
    config = ["--config", f"cmc+{django_ca.url}", "--ca-trust", str(other)]
    run = tokenagent(softhsm, "enroll", str(inf), *config, *user, *agent)
    assert run.returncode == 11, run.stderr
    assert "does not lead to a certificate of the CA trust" in one_error_line(run)
    assert certificate_with_id(softhsm, key_id_of(softhsm, "cmc-other-trust")) is None


# -- the way to the CA fails: the request stays, and is finished later ----------------------------------

FAILURES = [
    # (name, exit code, what the one line says)
    ("refused", 16, "refused"),
    ("500", 16, "HTTP 500"),
    ("503", 16, "HTTP 503"),
    ("hang", 16, "no answer from 127.0.0.1"),
    ("garbage", 17, "not a CA answer"),
    ("nothttp", 17, "not an HTTP answer"),
]


@pytest.mark.parametrize(("mode", "code", "says"), FAILURES, ids=[f[0] for f in FAILURES])
def test_failures_keep_the_request_pending_and_it_completes_later(
    softhsm: SoftHSM,
    django_ca: Any,
    django_agents: dict[str, CaAgent],
    faulty_ca: FaultyServer,
    tmp_path: Path,
    mode: str,
    code: int,
    says: str,
) -> None:
    container = f"cmc-fail-{mode}"
    inf = user_inf(tmp_path, container)
    serial_path = django_ca.url.split("/cmc/", 1)[1]
    if mode == "refused":
        url = f"http://127.0.0.1:{closed_port()}/cmc/{serial_path}"
    else:
        url = faulty_ca.url(mode, f"cmc/{serial_path}")
    run = enroll(softhsm, django_ca, inf, django_agents["cmc-agent-1"], "--json", "--timeout", "1", url=url)
    assert run.returncode == code, run.stderr
    assert says in one_error_line(run)
    pending_id = error_json(run)["details"]["pending_id"]
    key_id = key_id_of(softhsm, container)
    assert certificate_with_id(softhsm, key_id) is None  # nothing half-installed
    record = record_for(softhsm, pending_id)
    assert record is not None and record["key_id"] == key_id
    assert record["ca"]["state"] == ("garbled" if code == 17 else "unreachable")
    assert record["ca"]["retry_after"] is not None

    if mode in ("refused", "hang", "nothttp"):
        # retrieve (certreq -retrieve) from the real CA by pending ID, then accept
        cert = tmp_path / "cert.pem"
        got = tokenagent(softhsm, "retrieve", "--pending", str(pending_id), str(cert), *ca_args(django_ca))
        assert got.returncode == 0, got.stderr
        assert openssl("verify", "-CAfile", str(django_ca.ca_pem), str(cert)).returncode == 0
        done = tokenagent(softhsm, "accept", str(cert), "--token", "ta-causer", "--pin-source", "env:TA_PIN")
    else:
        # enroll --resume, pointed at the real CA (its URL changed: --config overrides the stored one)
        done = tokenagent(
            softhsm, "enroll", "--resume", str(pending_id), *ca_args(django_ca), "--pin-source", "env:TA_PIN"
        )
    assert done.returncode == 0, done.stderr + done.stdout
    assert certificate_with_id(softhsm, key_id) is not None
    assert record_for(softhsm, pending_id) is None


def test_the_pending_store_holds_no_secret_and_shows_the_ca_state(
    softhsm: SoftHSM, django_ca: Any, django_agents: dict[str, CaAgent], tmp_path: Path
) -> None:
    """`pending` shows the CA's state; the database holds the configuration, never a password."""
    inf = user_inf(tmp_path, "cmc-listing")
    run = enroll(
        softhsm, django_ca, inf, django_agents["cmc-agent-1"], "--json", url=f"http://127.0.0.1:{closed_port()}/cmc/x/"
    )
    assert run.returncode == 16
    pending_id = error_json(run)["details"]["pending_id"]
    listing = tokenagent(softhsm, "pending")
    assert listing.returncode == 0
    block = listing.stdout.split(f"{pending_id:>4}  ", 1)[1]
    assert "CA: unreachable" in block.split("\n\n")[0]
    database = softhsm.state_dir / "pending.sqlite3"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            "SELECT config, profile_json, state FROM ca_submissions WHERE pending_id = ?", (pending_id,)
        ).fetchall()
    assert rows and rows[0][2] == "unreachable" and "cmc+http://127.0.0.1" in rows[0][0]
    assert json.loads(rows[0][1])["profile"]["protocol"] == "cmc"
    deleted = tokenagent(
        softhsm, "pending", "--delete", str(pending_id), "--with-key", "--yes", "--pin-source", "env:TA_PIN"
    )
    assert deleted.returncode == 0, deleted.stderr
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        assert connection.execute(
            "SELECT count(*) FROM ca_submissions WHERE pending_id = ?", (pending_id,)
        ).fetchone() == (0,)
