"""`tokenagent enroll` over EST (RFC 7030) against tests/peers/estpeer.py, which follows the RFC and
issues with `openssl ca` (no EST server is packaged for Debian).

The peer runs once for this module on 127.0.0.1 (TLS with its own server certificate, Basic and
client-certificate authentication); keys go on this module's own SoftHSM token ta-est; each test
has its own pending store. What was issued is checked with pkcs11-tool (the token) and openssl
(the certificate's path to the CA, the certs-only PKCS#7), not with tokenagent.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import USER_PIN, Run, SoftHSM, make_softhsm, run_cli
from tests.peers.estpeer import EstPeer, Label, csr_attrs, extensions
from tests.peers.faulty import closed_port

TOKEN = "ta-est"
EST_USER = "est-station"
EST_PASSWORD = "Est-Secret-41b7"  # distinctive, so a leak check cannot match anything else
OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
CLIENT_AUTH_EKU = bytes.fromhex("300a06082b06010505070302")  # ExtKeyUsageSyntax { id-kp-clientAuth }
KEY_ENCIPHERMENT = bytes.fromhex("03020520")  # KeyUsage { keyEncipherment }

SUBJECT = "CN={cn},OU=Devices,DC=example,DC=com"
INF = """[NewRequest]
Subject = "{subject}"
KeyAlgorithm = ECDSA_P256
KeyContainer = {container}
KeyUsage = CERT_DIGITAL_SIGNATURE_KEY_USAGE
{more}
[Extensions]
2.5.29.17 = "{{text}}"
_continue_ = "DNS={cn}.example.com"
"""


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHSM:
    return make_softhsm(tmp_path_factory.mktemp("est-softhsm"), [TOKEN])


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EstPeer]:
    server = EstPeer(tmp_path_factory.mktemp("est-peer"), EST_USER, EST_PASSWORD)
    server.labels.update(
        {
            "pend": Label(pend=1, retry_after=1),
            "broken": Label(fail=500),
            "garbage": Label(garbage=True),
            "certonly": Label(basic=False),
            # RFC 7030 4.5.2's example, less the SHA-384 signature: a P-384 key, challengePassword, macAddress
            "attrs": Label(
                csrattrs=csr_attrs(
                    "1.2.840.113549.1.9.7",
                    ("1.2.840.10045.2.1", ["1.3.132.0.34"]),
                    ("1.2.840.113549.1.9.14", ["1.3.6.1.1.1.1.22"]),
                )
            ),
            # RFC 9908's form: extensions with values (extKeyUsage to merge; a keyUsage the INF sets
            # otherwise, a conflict), with challengePassword (cannot be filled) and a P-384 key
            "merge": Label(
                csrattrs=csr_attrs(
                    "1.2.840.113549.1.9.7",
                    ("1.2.840.10045.2.1", ["1.3.132.0.34"]),
                    (
                        OID_EXTENSION_REQUEST,
                        [extensions(("2.5.29.37", False, CLIENT_AUTH_EKU), ("2.5.29.15", True, KEY_ENCIPHERMENT))],
                    ),
                )
            ),
            "attrs-500": Label(csrattrs_fail=500),
            "attrs-404": Label(csrattrs_fail=404),
            "attrs-garbage": Label(csrattrs=b"\x30\x03garbage"),
        }
    )
    yield server
    server.stop()


def inf(directory: Path, container: str, more: str = "") -> Path:
    path = directory / f"{container}.inf"
    path.write_text(INF.format(subject=SUBJECT.format(cn=container), container=container, cn=container, more=more))
    return path


def tokenagent(hsm: SoftHSM, tmp_path: Path, *args: str, path: str | None = None) -> Run:
    env = hsm.env(TA_PIN=USER_PIN, EST_PASSWORD=EST_PASSWORD, TOKENAGENT_STATE_DIR=str(tmp_path / "state"))
    if path is not None:
        env["PATH"] = path
    return run_cli(*args, env=env)


def enroll(hsm: SoftHSM, tmp_path: Path, request: Path, *ca: str, path: str | None = None) -> Run:
    command = ["enroll", str(request), "--token", TOKEN, "--pin-source", "env:TA_PIN", *ca]
    return tokenagent(hsm, tmp_path, *command, path=path)


def basic(peer: EstPeer, label: str = "", password: str = "env:EST_PASSWORD") -> list[str]:
    return [
        "--config", f"est+{peer.url(label)}", "--ca-bundle", str(peer.tls_bundle),
        "--ca-user", EST_USER, "--ca-password-source", password,
    ]  # fmt: skip


def pkcs11(hsm: SoftHSM, *args: str) -> str:
    command = ["pkcs11-tool", "--module", hsm.module, "--token-label", TOKEN, "--login", "--pin", USER_PIN, *args]
    done = subprocess.run(command, capture_output=True, text=True, env=hsm.env(), check=True)
    return done.stdout


def key_id(hsm: SoftHSM, container: str) -> str:
    for block in pkcs11(hsm, "-O", "--type", "privkey").split("Private Key Object")[1:]:
        if re.search(rf"label:\s+{re.escape(container)}\s*$", block, re.M):
            found = re.search(r"ID:\s+([0-9a-f]+)", block)
            assert found, block
            return found.group(1)
    raise AssertionError(f"no private key {container} on {TOKEN}")


def serials_with_id(hsm: SoftHSM, ident: str) -> list[str]:
    """The serial numbers of the certificates with CKA_ID ``ident`` that pkcs11-tool lists on the token."""
    listing = pkcs11(hsm, "-O", "--type", "cert")
    return [
        found.group(1)
        for block in listing.split("Certificate Object")[1:]
        if re.search(rf"ID:\s+{ident}\b", block) and (found := re.search(r"serial:\s+([0-9A-F]+)", block))
    ]


def certificate_with_id(hsm: SoftHSM, ident: str) -> str:
    """The one certificate with CKA_ID ``ident`` on the token, read by pkcs11-tool, as PEM."""
    assert len(serials_with_id(hsm, ident)) == 1
    der = subprocess.run(
        ["pkcs11-tool", "--module", hsm.module, "--token-label", TOKEN, "--read-object", "--type", "cert",
         "--id", ident],
        capture_output=True, env=hsm.env(), check=True,
    ).stdout  # fmt: skip
    return openssl("x509", "-inform", "DER", stdin=der).stdout.decode()


def openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)


def verified_text(peer: EstPeer, pem: str, tmp_path: Path) -> str:
    """openssl verifies the certificate up to the EST CA's root; returns its text."""
    chain = tmp_path / "est-chain.pem"
    chain.write_bytes(peer.ca.root_cert.read_bytes())
    verified = openssl("verify", "-CAfile", str(chain), "-untrusted", str(peer.ca.sub_cert), stdin=pem.encode())
    assert verified.returncode == 0, verified.stderr
    return openssl("x509", "-noout", "-text", "-serial", stdin=pem.encode()).stdout.decode()


def pending(hsm: SoftHSM, tmp_path: Path) -> list[dict[str, Any]]:
    listing = tokenagent(hsm, tmp_path, "pending", "--json")
    assert listing.returncode == 0, listing.stderr
    return list(json.loads(listing.stdout)["pending"])


def one_error_line(run: Run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith("tokenagent: error:")]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    return lines[0]


def cas_toml(tmp_path: Path, peer: EstPeer, label: str, **keys: str) -> Path:
    lines = [
        "[ca.est]",
        f'url = "est+{peer.url(label)}"',
        f'ca_bundle = "{peer.tls_bundle}"',
        *(f'{key} = "{value}"' for key, value in keys.items()),
    ]
    path = tmp_path / "cas.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- issued ------------------------------------------------------------------------------------------


def test_simpleenroll_with_basic_puts_the_certificate_on_the_token(hsm: SoftHSM, peer: EstPeer, tmp_path: Path) -> None:
    started = time.monotonic()
    run = enroll(hsm, tmp_path, inf(tmp_path, "est-basic"), *basic(peer))
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    assert "certificate: installed on the token next to its key" in run.stdout
    print(f"EST enroll (EC P-256, Basic): {elapsed:.2f} s")

    pem = certificate_with_id(hsm, key_id(hsm, "est-basic"))
    text = verified_text(peer, pem, tmp_path)
    assert "CN = est-basic" in text or "CN=est-basic" in text
    assert "DNS:est-basic.example.com" in text
    assert not pending(hsm, tmp_path)

    sent = [s for s in peer.seen if s.csr is not None and b"est-basic" in s.csr]
    assert [s.operation for s in sent] == ["simpleenroll"]
    assert sent[0].headers["Content-Type"] == "application/pkcs10"
    assert sent[0].headers["Content-Transfer-Encoding"] == "base64"
    assert sent[0].headers["Authorization"].startswith("Basic ")


def test_cacerts_are_the_issuing_ca_first(peer: EstPeer) -> None:
    from tokenagent.ca.profiles import CaOverrides, http_settings, open_connector, resolve_config

    profile = resolve_config(f"est+{peer.url()}", overrides=CaOverrides(ca_bundle=peer.tls_bundle), env={})
    connector = open_connector(profile)
    try:
        assert connector.ca_certificates() == (peer.ca.sub_der, peer.ca.root_der)
    finally:
        connector.close()
    assert http_settings(profile).ca_bundle == peer.tls_bundle
    # what the peer serves is a certs-only PKCS#7 in base64 that openssl reads as such
    served = subprocess.run(
        ["curl", "-sS", "--cacert", str(peer.tls_bundle), f"{peer.url()}/.well-known/est/cacerts"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    der = openssl("base64", "-d", stdin=served).stdout
    listed = openssl("pkcs7", "-inform", "DER", "-print_certs", "-noout", stdin=der)
    assert listed.returncode == 0 and listed.stdout.count(b"subject=") == 2


def test_202_is_pending_and_enroll_resume_resends_and_installs(hsm: SoftHSM, peer: EstPeer, tmp_path: Path) -> None:
    run = enroll(hsm, tmp_path, inf(tmp_path, "est-pend"), *basic(peer, "pend"), "--json")
    assert run.returncode == 14, run.stderr
    assert "holds the request pending" in one_error_line(run)
    assert "approval" in run.stderr  # the CA's own words
    [record] = pending(hsm, tmp_path)
    ident = key_id(hsm, "est-pend")
    assert not serials_with_id(hsm, ident)
    time.sleep(1.1)  # Retry-After: 1
    resumed = tokenagent(hsm, tmp_path, "enroll", "--resume", str(record["id"]), "--pin-source", "env:TA_PIN")
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "installed" in resumed.stdout
    pem = certificate_with_id(hsm, ident)
    verified_text(peer, pem, tmp_path)
    sent = [s for s in peer.seen if s.csr is not None and b"est-pend" in s.csr]
    assert [s.status for s in sent] == [202, 200]
    assert sent[0].csr == sent[1].csr  # re-polling is sending the same request again


# -- refused and broken -------------------------------------------------------------------------------


def test_wrong_password_is_sent_once_and_the_request_stays(hsm: SoftHSM, peer: EstPeer, tmp_path: Path) -> None:
    before = len(peer.seen)
    env_run = run_cli(
        "enroll", str(inf(tmp_path, "est-wrongpw2")), "--token", TOKEN, "--pin-source", "env:TA_PIN",
        *basic(peer, password="env:WRONG"),
        env=hsm.env(TA_PIN=USER_PIN, WRONG="not-the-password", TOKENAGENT_STATE_DIR=str(tmp_path / "state")),
    )  # fmt: skip
    assert env_run.returncode == 19, env_run.stderr
    line = one_error_line(env_run)
    assert "refused the credentials" in line and "not-the-password" not in env_run.stderr
    tries = [s for s in peer.seen[before:] if s.headers.get("Authorization")]
    assert len(tries) == 1  # never retried: accounts lock
    assert any(r["key_label"] == "est-wrongpw2" for r in pending(hsm, tmp_path))


@pytest.mark.parametrize(
    ("where", "code", "said"),
    [
        ("refused", 16, "refused"),
        ("broken", 16, "HTTP 500"),
        ("garbage", 17, "neither base64 nor DER"),
        ("nolabel", 18, "HTTP 404"),
    ],
)
def test_failures_are_one_line_and_leave_the_request_pending(
    hsm: SoftHSM, peer: EstPeer, tmp_path: Path, where: str, code: int, said: str
) -> None:
    ca = basic(peer, where)
    if where == "refused":
        ca[1] = f"est+https://127.0.0.1:{closed_port()}"
    container = f"est-fail-{where}"
    run = enroll(hsm, tmp_path, inf(tmp_path, container), *ca)
    assert run.returncode == code, run.stderr
    line = one_error_line(run)
    assert said in line and "enroll --resume" in line
    assert EST_PASSWORD not in run.stderr + run.stdout
    assert [r["key_label"] for r in pending(hsm, tmp_path)] == [container]


def test_submit_cannot_reenroll_without_the_token(hsm: SoftHSM, peer: EstPeer, tmp_path: Path) -> None:
    request = tmp_path / "plain.req"
    made = tokenagent(
        hsm, tmp_path, "new", str(inf(tmp_path, "est-submit")), str(request), "--token", TOKEN, "--pin-source",
        "env:TA_PIN",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    cas = cas_toml(tmp_path, peer, "certonly", client_auth="token")
    run = tokenagent(hsm, tmp_path, "submit", str(request), "--cas", str(cas), "--config", "est")
    assert run.returncode == 18, run.stderr
    assert "use tokenagent enroll" in one_error_line(run)


# -- csrattrs -----------------------------------------------------------------------------------------


def test_csrattrs_the_request_lacks_are_warned_or_refused(hsm: SoftHSM, peer: EstPeer, tmp_path: Path) -> None:
    warned = enroll(hsm, tmp_path, inf(tmp_path, "est-attrs"), *basic(peer, "attrs"))
    assert warned.returncode == 0, warned.stderr
    assert "P-384" in warned.stderr and "challengePassword" in warned.stderr and "macAddress" in warned.stderr

    cas = cas_toml(tmp_path, peer, "attrs", user=EST_USER, password_source="env:EST_PASSWORD", csrattrs="require")
    before = len([s for s in peer.seen if s.label == "attrs"])
    refused = enroll(hsm, tmp_path, inf(tmp_path, "est-attrs-req"), "--cas", str(cas), "--config", "est")
    assert refused.returncode == 18, refused.stderr
    line = one_error_line(refused)
    assert "csrattrs" in line and "P-384" in line
    assert len([s for s in peer.seen if s.label == "attrs"]) == before  # not sent
    assert any(r["key_label"] == "est-attrs-req" for r in pending(hsm, tmp_path))


# -- TLS client authentication ------------------------------------------------------------------------


def test_client_certificate_files_authenticate_simpleenroll(hsm: SoftHSM, peer: EstPeer, tmp_path: Path) -> None:
    key, csr, cert = tmp_path / "client.key", tmp_path / "client.csr", tmp_path / "client.pem"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
         str(key), "-out", str(csr), "-subj", "/CN=est bootstrap device"],
        capture_output=True, check=True,
    )  # fmt: skip
    peer.issue_client_certificate(csr.read_bytes(), cert)
    # trust: the issued certificate must also lead to the EST root (through cacerts' intermediate)
    cas = cas_toml(
        tmp_path, peer, "certonly", client_auth="file", client_certificate=str(cert), client_key=str(key),
        trust=str(peer.ca.root_cert),
    )  # fmt: skip
    run = enroll(hsm, tmp_path, inf(tmp_path, "est-file"), "--cas", str(cas), "--config", "est")
    assert run.returncode == 0, run.stderr
    [seen] = [s for s in peer.seen if s.csr is not None and b"est-file" in s.csr]
    assert seen.client_subject == "commonName=est bootstrap device"
    assert "Authorization" not in seen.headers


def test_simplereenroll_signs_tls_with_the_key_on_the_token(hsm: SoftHSM, peer: EstPeer, tmp_path: Path) -> None:
    first = enroll(hsm, tmp_path, inf(tmp_path, "est-renew"), *basic(peer))
    assert first.returncode == 0, first.stderr
    ident = key_id(hsm, "est-renew")
    [old] = serials_with_id(hsm, ident)

    # the same key, the same subject and subjectAltName (RFC 7030 4.2.2), certificate only: no Basic
    renewal = inf(tmp_path, "est-renew", "UseExistingKeySet = TRUE")
    cas = cas_toml(tmp_path, peer, "certonly", client_auth="token")
    started = time.monotonic()
    run = enroll(hsm, tmp_path, renewal, "--cas", str(cas), "--config", "est")
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    print(f"EST re-enroll (TLS key on the token through curl + libp11): {elapsed:.2f} s")
    [seen] = [
        s for s in peer.seen if s.operation == "simplereenroll" and s.status == 200 and s.csr and b"est-renew" in s.csr
    ]
    assert seen.client_subject is not None and "est-renew" in seen.client_subject
    assert "Authorization" not in seen.headers
    assert USER_PIN not in run.stderr

    serials = serials_with_id(hsm, ident)
    assert len(serials) == 2 and old in serials  # the renewed certificate next to the old, same key
    [renewed] = [serial for serial in serials if serial != old]
    issued = (peer.ca.directory / "issued" / f"{renewed}.pem").read_text()  # the CA's copy, by serial
    text = verified_text(peer, issued, tmp_path)
    assert "DNS:est-renew.example.com" in text


def test_reenrollment_held_pending_is_finished_by_resume_with_the_key(
    hsm: SoftHSM, peer: EstPeer, tmp_path: Path
) -> None:
    first = enroll(hsm, tmp_path, inf(tmp_path, "est-renew-pend"), *basic(peer))
    assert first.returncode == 0, first.stderr
    # Basic too (preemptive through curl); curl is wrapped to record its command lines
    cas = cas_toml(tmp_path, peer, "pend", client_auth="token", user=EST_USER, password_source="env:EST_PASSWORD")
    wrapper, log = tmp_path / "bin", tmp_path / "curl-argv.log"
    wrapper.mkdir()
    (wrapper / "curl").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec /usr/bin/curl "$@"\n')
    (wrapper / "curl").chmod(0o755)
    path = f"{wrapper}:{os.environ['PATH']}"
    renewal = inf(tmp_path, "est-renew-pend", "UseExistingKeySet = TRUE")
    held = enroll(hsm, tmp_path, renewal, "--cas", str(cas), "--config", "est", path=path)
    assert held.returncode == 14, held.stderr
    [record] = pending(hsm, tmp_path)
    time.sleep(1.1)
    # enroll --resume (the stored CA options) opens the token again and lends the key: its URI is made
    # from the token and the key's CKA_ID (resume has no `new` result to take it from)
    resumed = tokenagent(
        hsm, tmp_path, "enroll", "--resume", str(record["id"]), "--pin-source", "env:TA_PIN", path=path
    )
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    sent = [s for s in peer.seen if s.operation == "simplereenroll" and s.csr and b"est-renew-pend" in s.csr]
    assert [s.status for s in sent] == [202, 200]
    assert all(s.client_subject and "est-renew-pend" in s.client_subject for s in sent)
    assert all(s.headers["Authorization"].startswith("Basic ") for s in sent)
    assert len(serials_with_id(hsm, key_id(hsm, "est-renew-pend"))) == 2
    # through curl: csrattrs and simplereenroll, then simplereenroll again (re-polling); neither the
    # password nor the PIN in its argv
    argv = log.read_text()
    assert argv.count("pin-source=/dev/fd/") == 3 and "/.well-known/est" not in argv  # the URL goes on stdin
    assert EST_PASSWORD not in argv and "pin-value" not in argv and "--pass" not in argv


def test_reenrollment_for_another_subject_is_refused_with_the_cas_words(
    hsm: SoftHSM, peer: EstPeer, tmp_path: Path
) -> None:
    first = enroll(hsm, tmp_path, inf(tmp_path, "est-other"), *basic(peer))
    assert first.returncode == 0, first.stderr
    renewal = tmp_path / "other.inf"
    renewal.write_text(
        inf(tmp_path, "est-other", "UseExistingKeySet = TRUE").read_text().replace("CN=est-other", "CN=x")
    )
    cas = cas_toml(tmp_path, peer, "certonly", client_auth="token")
    run = enroll(hsm, tmp_path, renewal, "--cas", str(cas), "--config", "est", "--json")
    assert run.returncode == 12, run.stderr
    line = one_error_line(run)
    assert "HTTP 400" in line and "must be the subject of the certificate renewed" in line
    assert json.loads(run.stdout)["details"]["code"] == "HTTP 400 Bad Request"
    assert len(serials_with_id(hsm, key_id(hsm, "est-other"))) == 1


def test_token_client_auth_without_a_certificate_for_the_key_is_misconfigured(
    hsm: SoftHSM, peer: EstPeer, tmp_path: Path
) -> None:
    # a fresh key has no certificate to authenticate with: curl's engine cannot load one (exit 58)
    cas = cas_toml(tmp_path, peer, "certonly", client_auth="token")
    run = enroll(hsm, tmp_path, inf(tmp_path, "est-nocert"), "--cas", str(cas), "--config", "est")
    assert run.returncode == 18, run.stderr
    line = one_error_line(run)
    assert "pkcs11 engine" in line and "same CKA_ID" in line and "enroll --resume" in line, line
    assert [r["key_label"] for r in pending(hsm, tmp_path)] == ["est-nocert"]


# -- csrattrs = merge ----------------------------------------------------------------------------------


def test_csrattrs_merge_adds_the_cas_extension_and_reports_conflicts(
    hsm: SoftHSM, peer: EstPeer, tmp_path: Path
) -> None:
    cas = cas_toml(tmp_path, peer, "merge", user=EST_USER, password_source="env:EST_PASSWORD", csrattrs="merge")
    run = enroll(hsm, tmp_path, inf(tmp_path, "est-merge"), "--cas", str(cas), "--config", "est")
    assert run.returncode == 0, run.stderr
    assert "installed on the token" in run.stdout
    assert ("merge", "csrattrs") in peer.gets
    warned = run.stderr
    assert "the extension extKeyUsage (2.5.29.37)" in warned and "added to the request" in warned
    assert "keyUsage (2.5.29.15) with another value than the request's" in warned  # the INF's kept
    assert "challengePassword" in warned and "cannot fill it in" in warned
    assert "P-384" in warned  # the key stays the INF's P-256, reported
    assert EST_PASSWORD not in run.stderr + run.stdout

    [sent] = [s for s in peer.seen if s.label == "merge" and s.csr is not None and b"est-merge" in s.csr]
    assert sent.status == 200
    text = openssl("req", "-inform", "DER", "-noout", "-text", stdin=sent.csr).stdout.decode()
    assert "TLS Web Client Authentication" in text  # merged from csrattrs
    assert "Digital Signature" in text and "Key Encipherment" not in text  # the INF's KeyUsage, not the CA's
    assert "DNS:est-merge.example.com" in text
    assert "prime256v1" in text or "P-256" in text
    # one extensionRequest attribute, holding the INF's extensions and the merged one
    parsed = openssl("asn1parse", "-inform", "DER", stdin=sent.csr).stdout.decode()
    assert parsed.count("Extension Request") == 1, parsed
    assert openssl("req", "-inform", "DER", "-noout", "-verify", stdin=sent.csr).returncode == 0


@pytest.mark.parametrize(
    ("label", "said"),
    [("attrs-500", "HTTP 500"), ("attrs-404", "HTTP 404"), ("attrs-garbage", "cannot be read")],
)
def test_csrattrs_merge_goes_on_without_a_broken_csrattrs(
    hsm: SoftHSM, peer: EstPeer, tmp_path: Path, label: str, said: str
) -> None:
    cas = cas_toml(tmp_path, peer, label, user=EST_USER, password_source="env:EST_PASSWORD", csrattrs="merge")
    container = f"est-merge-{label}"
    run = enroll(hsm, tmp_path, inf(tmp_path, container), "--cas", str(cas), "--config", "est")
    assert run.returncode == 0, run.stderr
    assert said in run.stderr and "made without them" in run.stderr
    assert "Traceback" not in run.stderr
    certificate_with_id(hsm, key_id(hsm, container))


def test_csrattrs_merge_with_the_ca_unreachable_fails_before_any_key(
    hsm: SoftHSM, peer: EstPeer, tmp_path: Path
) -> None:
    cas = tmp_path / "cas.toml"
    cas.write_text(
        f'[ca.est]\nurl = "est+https://127.0.0.1:{closed_port()}"\nca_bundle = "{peer.tls_bundle}"\n'
        'csrattrs = "merge"\n'
    )
    run = enroll(hsm, tmp_path, inf(tmp_path, "est-merge-refused"), "--cas", str(cas), "--config", "est")
    assert run.returncode == 16, run.stderr
    line = one_error_line(run)
    assert "refused" in line and "enroll --resume" not in line
    assert not pending(hsm, tmp_path)
    listing = pkcs11(hsm, "-O")
    assert "est-merge-refused" not in listing  # no key was made


@pytest.mark.parametrize("suppress", [False, True])
def test_csrattrs_extensions_join_the_one_extension_request(suppress: bool) -> None:
    """With or without extensions of the INF's own (SuppressDefaults, no KeyUsage), the merged
    ones end in one extensionRequest; an OID the INF sets keeps the INF's value."""
    from asn1crypto import csr, x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from tokenagent.ca.est import csr_attribute_extensions
    from tokenagent.inf import parse_policy
    from tokenagent.request.algorithms import signature_algorithm
    from tokenagent.request.pkcs10 import build_request
    from tokenagent.request.signer import SoftwareSigner

    more = "SuppressDefaults = TRUE\nKeyUsage = 0" if suppress else "KeyUsage = CERT_DIGITAL_SIGNATURE_KEY_USAGE"
    text = f'[NewRequest]\nSubject = "CN=merged"\nKeyAlgorithm = ECDSA_P256\n{more}\n'
    policy = parse_policy(text, "merged.inf")
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    wanted = csr_attribute_extensions(
        csr_attrs(
            (
                OID_EXTENSION_REQUEST,
                [extensions(("2.5.29.37", False, CLIENT_AUTH_EKU), ("2.5.29.15", True, KEY_ENCIPHERMENT))],
            )
        )
    )
    extra = [csr.CRIAttribute({"type": OID_EXTENSION_REQUEST, "values": [x509.Extensions(wanted)]})]
    der = build_request(policy, spki, SoftwareSigner(key, signature_algorithm(policy)), extra_attributes=extra)
    shown = openssl("req", "-inform", "DER", "-noout", "-text", "-verify", stdin=der)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout.decode()
    assert "TLS Web Client Authentication" in out
    assert ("Key Encipherment" in out) == suppress  # only when the INF sets no KeyUsage
    assert ("Digital Signature" in out) != suppress
    parsed = openssl("asn1parse", "-inform", "DER", stdin=der).stdout.decode()
    assert parsed.count("Extension Request") == 1
