"""`tokenagent accept` and `tokenagent repair` on real SoftHSM tokens.

Every certificate comes from an OpenSSL CA (tests/ca.py); every check of the token is made with
pkcs11-tool or p11tool, and the installed pair is used by OpenSSL's pkcs11 engine through the
printed pkcs11: URI. Failures compare the token's object list before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from tests.ca import OpenSslCA
from tests.conftest import SO_PIN, USER_PIN, SoftHSM, der_order, pkcs11_tool, run_cli

TOKEN = "ta-acc"
PIN_ENV = {"PIN": USER_PIN}

INF = """[NewRequest]
Subject = "CN={cn},O=Example Corp"
{key}
KeyContainer = {cn}
FriendlyName = "{cn} card"
KeyUsage = "CERT_DIGITAL_SIGNATURE_KEY_USAGE"
[EnhancedKeyUsageExtension]
OID = 1.3.6.1.5.5.7.3.2
"""
KEYS = {"p256": "KeyAlgorithm = ECDSA_P256", "rsa2048": "KeyLength = 2048"}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> OpenSslCA:
    return OpenSslCA.create(tmp_path_factory.mktemp("ca"))


def cli(softhsm: SoftHSM, *args: str, **env: str):
    return run_cli(*args, env=softhsm.env(**PIN_ENV, **env))


def objects(softhsm: SoftHSM) -> str:
    """pkcs11-tool -O of the accept token, blocks sorted so that listing order does not matter."""
    listing = pkcs11_tool(softhsm, "-O", token=TOKEN)
    return "\n".join(sorted(re.split(r"\n(?=\S)", listing)))


def blocks(softhsm: SoftHSM, kind: str) -> list[str]:
    """pkcs11-tool -O blocks of one kind ("Certificate Object", "Private Key Object")."""
    listing = pkcs11_tool(softhsm, "-O", token=TOKEN)
    return [b for b in re.split(r"\n(?=\S)", listing) if b.startswith(kind)]


def block_id(block: str) -> str:
    found = re.search(r"ID:\s+([0-9a-f]+)", block)
    return found.group(1) if found else ""


@dataclass
class Enrolled:
    name: str
    request: Path
    cert_pem: Path
    cert_der: bytes
    key_id: str
    pending_id: int


def enroll(softhsm: SoftHSM, ca: OpenSslCA, work: Path, name: str, kind: str = "p256", **issue: object) -> Enrolled:
    """`tokenagent new` on the accept token, then the OpenSSL CA issues the certificate."""
    work.mkdir(parents=True, exist_ok=True)
    policy = work / f"{name}.inf"
    policy.write_text(INF.format(cn=name, key=KEYS[kind]))
    request = work / f"{name}.req"
    run = cli(softhsm, "new", str(policy), str(request), "--token", TOKEN, "--pin-source", "env:PIN", "--json")
    assert run.returncode == 0, run.stderr
    made = json.loads(run.stdout)
    cert_pem = work / f"{name}.cer"
    der = ca.issue(request, cert_pem, **issue)  # type: ignore[arg-type]
    return Enrolled(name, request, cert_pem, der, made["key_id"], made["pending_id"])


def accept(softhsm: SoftHSM, path: Path, *extra: str, **env: str):
    return cli(softhsm, "accept", str(path), "--token", TOKEN, "--pin-source", "env:PIN", *extra, **env)


def pending_ids(softhsm: SoftHSM) -> list[int]:
    run = cli(softhsm, "pending", "--json")
    assert run.returncode == 0, run.stderr
    return [r["id"] for r in json.loads(run.stdout)["pending"]]


def engine_sign_and_verify(softhsm: SoftHSM, key_uri: str, cert_pem: Path, work: Path) -> subprocess.CompletedProcess:
    """OpenSSL signs through libp11's pkcs11 engine with the key URI, then verifies with the certificate."""
    message = work / "message.txt"
    message.write_text("signed through the pkcs11: URI tokenagent printed\n")
    signature = work / "message.sig"
    env = softhsm.env(PKCS11_MODULE_PATH=softhsm.module)
    sign = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-engine",
            "pkcs11",
            "-keyform",
            "engine",
            "-sign",
            f"{key_uri}?pin-value={USER_PIN}",
            "-out",
            str(signature),
            str(message),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert sign.returncode == 0, sign.stderr
    public = work / "cert-public.pem"
    subprocess.run(["openssl", "x509", "-in", str(cert_pem), "-pubkey", "-noout", "-out", str(public)], check=True)
    return subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", str(public), "-signature", str(signature), str(message)],
        capture_output=True,
        text=True,
        check=False,
    )


# -- the main path -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["p256", "rsa2048"])
def test_new_issue_accept_then_openssl_signs_through_the_uri(
    kind: str, softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path
) -> None:
    e = enroll(softhsm, ca, tmp_path, f"e2e-{kind}", kind)
    assert e.pending_id in pending_ids(softhsm)
    run = accept(softhsm, e.cert_pem)
    assert run.returncode == 0, run.stderr
    assert "installed" in run.stdout and "key test: passed" in run.stdout
    key_uri = re.search(r"^private key: (pkcs11:\S+)$", run.stdout, re.M)
    cert_uri = re.search(r"^certificate: (pkcs11:\S+)$", run.stdout, re.M)
    assert key_uri and cert_uri
    assert "type=private" in key_uri.group(1) and "type=cert" in cert_uri.group(1)

    # pkcs11-tool: the certificate object carries the private key's CKA_ID and the FriendlyName
    certs = [b for b in blocks(softhsm, "Certificate Object") if block_id(b) == e.key_id]
    assert len(certs) == 1 and f"label:      {e.name} card" in certs[0]
    assert any(block_id(b) == e.key_id for b in blocks(softhsm, "Private Key Object"))
    # p11tool: the same pairing by a second independent reader
    listing = subprocess.run(
        [
            "p11tool",
            "--provider",
            softhsm.module,
            "--list-all",
            "--login",
            "--set-pin",
            USER_PIN,
            f"pkcs11:token={TOKEN}",
        ],
        capture_output=True,
        text=True,
        env=softhsm.env(),
        check=True,
    ).stdout
    colon_id = ":".join(e.key_id[i : i + 2] for i in range(0, len(e.key_id), 2))
    types = {
        re.search(r"type=(\w+)", block).group(1)  # type: ignore[union-attr]
        for block in listing.split("Object ")
        if f"ID: {colon_id}\n" in block
    }
    assert types == {"cert", "private", "public"}, listing
    # the value on the token is the issued certificate, byte for byte
    read = tmp_path / "read.der"
    pkcs11_tool(softhsm, "--read-object", "--type", "cert", "--id", e.key_id, "-o", str(read), token=TOKEN)
    assert read.read_bytes() == e.cert_der
    # the pending request is gone; OpenSSL uses the pair through the printed URI
    assert e.pending_id not in pending_ids(softhsm)
    verified = engine_sign_and_verify(softhsm, key_uri.group(1), e.cert_pem, tmp_path)
    assert verified.returncode == 0 and "Verified OK" in verified.stdout


def _pct(hex_id: str) -> str:
    return "".join(f"%{hex_id[i : i + 2]}" for i in range(0, len(hex_id), 2))


def test_accept_twice_changes_nothing(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    e = enroll(softhsm, ca, tmp_path, "twice")
    first = accept(softhsm, e.cert_pem, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["certificate_object"]["written"] is True
    before = objects(softhsm)
    second = accept(softhsm, e.cert_pem, "--json")
    assert second.returncode == 0, second.stderr
    data = json.loads(second.stdout)
    assert data["certificate_object"]["written"] is False and data["changed"] is False
    assert data["pending_removed"] is None
    assert objects(softhsm) == before
    human = accept(softhsm, e.cert_pem)
    assert "already on the token" in human.stdout and "nothing changed" in human.stdout


def test_json_shape(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    e = enroll(softhsm, ca, tmp_path, "json-shape")
    run = accept(softhsm, e.cert_pem, "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    cert = x509.load_pem_x509_certificate(e.cert_pem.read_bytes())
    assert data["format_version"] == 1
    assert data["response"]["form"] == "certificate" and data["response"]["signature"] == "unsigned"
    assert data["certificate"]["sha1"] == hashlib.sha1(e.cert_der).hexdigest()
    assert data["certificate"]["serial"] == f"{cert.serial_number:x}"
    assert data["key"]["id"] == e.key_id and data["key"]["label"] == "json-shape"
    assert data["key"]["found_by"].startswith("pending request")
    assert data["certificate_object"]["label"] == "json-shape card"
    assert f"id={_pct(e.key_id)}".upper() in data["key"]["uri"].upper() and "type=private" in data["key"]["uri"]
    assert data["pending_removed"] == e.pending_id
    assert data["key_test"]["status"] == "passed"
    assert data["token"]["label"] == TOKEN and data["chain"] == [] and data["warnings"] == []
    assert USER_PIN not in run.stdout + run.stderr


# -- response forms ------------------------------------------------------------------------------


def test_p7b_with_chain(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    e = enroll(softhsm, ca, tmp_path, "p7b-chain")
    p7b = tmp_path / "chain.p7b"
    ca.p7b([e.cert_pem, ca.sub_cert, ca.root_cert], p7b)
    run = accept(softhsm, p7b, "--chain", "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["response"]["form"] == "pkcs7"
    subjects = [entry["subject"] for entry in data["chain"]]
    root = x509.load_pem_x509_certificate(ca.root_cert.read_bytes())
    sub = x509.load_pem_x509_certificate(ca.sub_cert.read_bytes())
    assert subjects == [der_order(sub.subject), der_order(root.subject)]
    # p11tool reports CKA_CERTIFICATE_CATEGORY of the CA certificates
    listing = subprocess.run(
        ["p11tool", "--provider", softhsm.module, "--list-all-certs", f"pkcs11:token={TOKEN}"],
        capture_output=True,
        text=True,
        env=softhsm.env(),
        check=True,
    ).stdout
    for entry in data["chain"]:
        assert entry["status"] in ("written", "present")
        block = next(b for b in listing.split("\n\n") if f"Label: {entry['label']}\n" in b + "\n")
        assert "CKA_CERTIFICATE_CATEGORY=CA" in block
    # again: nothing new, the chain is "present"
    before = objects(softhsm)
    again = accept(softhsm, p7b, "--chain", "--json")
    assert again.returncode == 0, again.stderr
    assert [entry["status"] for entry in json.loads(again.stdout)["chain"]] == ["present", "present"]
    assert objects(softhsm) == before


def test_p7b_pem_without_chain_writes_only_the_certificate(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    e = enroll(softhsm, ca, tmp_path, "p7b-pem")
    p7b = tmp_path / "chain.p7b"
    ca.p7b([ca.root_cert, e.cert_pem, ca.sub_cert], p7b, der=False)  # order must not matter
    before = len(blocks(softhsm, "Certificate Object"))
    run = accept(softhsm, p7b, "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["chain"] == []
    assert len(blocks(softhsm, "Certificate Object")) == before + 1


def test_certreq_base64_without_headers(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    import base64

    e = enroll(softhsm, ca, tmp_path, "b64")
    bare = tmp_path / "bare.cer"
    text = base64.b64encode(e.cert_der).decode()
    bare.write_text("\r\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + "\r\n")
    run = accept(softhsm, bare)
    assert run.returncode == 0, run.stderr
    assert any(block_id(b) == e.key_id for b in blocks(softhsm, "Certificate Object"))


def test_cmc_full_pki_response(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    e = enroll(softhsm, ca, tmp_path, "cmc-ok")
    rsp = tmp_path / "ok.rsp"
    ca.cmc_response([e.cert_der, ca.sub_der, ca.root_der], rsp)
    run = accept(softhsm, rsp, "--chain", "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["response"]["form"] == "cmc" and data["response"]["signature"] == "valid"
    assert data["response"]["statuses"][0]["status"] == "success"
    assert data["pending_removed"] == e.pending_id
    assert any(block_id(b) == e.key_id for b in blocks(softhsm, "Certificate Object"))


@pytest.mark.parametrize(
    ("status", "extra", "code", "words"),
    [
        (2, {"status_string": "template denied", "fail_info": 2}, 12, ["failed", "badRequest", "template denied"]),
        (3, {"pend_token": b"\x01\x02", "pend_time": datetime(2030, 1, 1, tzinfo=UTC)}, 14, ["pending", "0102"]),
    ],
)
def test_cmc_failed_or_pending_installs_nothing(
    status: int, extra: dict, code: int, words: list[str], softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path
) -> None:
    e = enroll(softhsm, ca, tmp_path, f"cmc-{status}")
    rsp = tmp_path / "refused.rsp"
    certs = [] if status == 3 else [ca.sub_der]
    ca.cmc_response(certs, rsp, status=status, **extra)
    before = objects(softhsm)
    run = accept(softhsm, rsp)
    assert run.returncode == code, run.stderr
    assert all(word in run.stderr for word in words), run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert objects(softhsm) == before
    assert e.pending_id in pending_ids(softhsm)


def test_tampered_cmc_response_is_refused(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    e = enroll(softhsm, ca, tmp_path, "cmc-bad-sig")
    rsp = tmp_path / "tampered.rsp"
    der = bytearray(ca.cmc_response([e.cert_der], rsp))
    signature = _signature_value(bytes(der))
    at = bytes(der).rindex(signature)
    der[at + len(signature) // 2] ^= 0x01
    rsp.write_bytes(bytes(der))
    before = objects(softhsm)
    run = accept(softhsm, rsp)
    assert run.returncode == 11 and "does not verify" in run.stderr
    assert objects(softhsm) == before


def _signature_value(der: bytes) -> bytes:
    from asn1crypto import cms

    info = cms.ContentInfo.load(der)
    return info["content"]["signer_infos"][0]["signature"].native


# -- finding the key without a pending request ---------------------------------------------------


def engine_csr(softhsm: SoftHSM, work: Path, label: str, key_id: str) -> Path:
    """A CSR made by OpenSSL through the pkcs11 engine for a key pkcs11-tool generated."""
    csr = work / f"{label}.csr"
    uri = f"pkcs11:token={TOKEN};object={label};type=private?pin-value={USER_PIN}"
    run = subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-engine",
            "pkcs11",
            "-keyform",
            "engine",
            "-key",
            uri,
            "-subj",
            f"/CN={label}",
            "-out",
            str(csr),
        ],
        capture_output=True,
        text=True,
        env=softhsm.env(PKCS11_MODULE_PATH=softhsm.module),
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return csr


def test_key_made_by_other_tools_found_by_public_key(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    """No pending request: the key (pkcs11-tool, CKA_ID a1) is found through its public key object,
    on any token, without --token; the certificate takes the key's own CKA_ID."""
    pkcs11_tool(softhsm, "--keypairgen", "--key-type", "EC:prime256v1", "--id", "a1", "--label", "foreign", token=TOKEN)
    cert = tmp_path / "foreign.cer"
    ca.issue(engine_csr(softhsm, tmp_path, "foreign", "a1"), cert)
    run = cli(softhsm, "accept", str(cert), "--pin-source", "env:PIN", "--json")  # every token is searched
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["key"]["found_by"] == "its public key object"
    assert data["key"]["id"] == "a1" and data["certificate_object"]["label"] == "foreign"
    assert data["pending_removed"] is None
    assert any(block_id(b) == "a1" for b in blocks(softhsm, "Certificate Object"))


def test_key_without_public_object_found_among_private_keys(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    pkcs11_tool(softhsm, "--keypairgen", "--key-type", "rsa:2048", "--id", "a2", "--label", "lonely", token=TOKEN)
    csr = engine_csr(softhsm, tmp_path, "lonely", "a2")
    pkcs11_tool(softhsm, "--delete-object", "--type", "pubkey", "--id", "a2", token=TOKEN)
    cert = tmp_path / "lonely.cer"
    ca.issue(csr, cert)
    run = accept(softhsm, cert, "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["key"]["found_by"] == "a search of the private keys" and data["key"]["id"] == "a2"
    assert data["key_test"]["status"] == "passed"


# -- refusals: nothing written --------------------------------------------------------------------


def foreign_certificate(ca: OpenSslCA, work: Path) -> Path:
    """A certificate for a key that is on no token (made by openssl in a file)."""
    key, csr, cert = work / "other.key", work / "other.csr", work / "other.cer"
    subprocess.run(
        [
            *("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-keyout", str(key), "-subj", "/CN=someone else", "-out", str(csr)),
        ],
        check=True,
        capture_output=True,
    )
    ca.issue(csr, cert)
    return cert


def test_wrong_key_is_refused_with_certreq_code(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    cert = foreign_certificate(ca, tmp_path)
    before = objects(softhsm)
    run = accept(softhsm, cert)
    assert run.returncode == 9
    assert "no private key on any selected token matches this certificate" in run.stderr
    assert "0x80090011" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert objects(softhsm) == before
    everywhere = cli(softhsm, "accept", str(cert), "--pin-source", "env:PIN", "--json")
    assert everywhere.returncode == 9
    error = json.loads(everywhere.stdout)
    assert error["error"] == "ObjectNotFoundError" and error["hresult"] == "0x80090011"
    assert "give --token" in error["message"]
    assert objects(softhsm) == before


def _truncations(data: bytes) -> Iterator[bytes]:
    yield b""
    yield data[:1]
    yield data[: len(data) // 2]
    yield data[:-1]


def test_garbage_and_truncated_inputs(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    e = enroll(softhsm, ca, tmp_path, "garbage")
    p7b = tmp_path / "g.p7b"
    ca.p7b([e.cert_pem, ca.sub_cert], p7b)
    rsp = tmp_path / "g.rsp"
    ca.cmc_response([e.cert_der], rsp)
    inputs = {"random": os.urandom(300), "text": b"this is not a certificate\n"}
    for name, whole in {"cer": e.cert_der, "p7b": p7b.read_bytes(), "rsp": rsp.read_bytes()}.items():
        for n, cut in enumerate(_truncations(whole)):
            inputs[f"{name}-{n}"] = cut
    inputs["request"] = e.request.read_bytes()
    before = objects(softhsm)
    for name, data in inputs.items():
        path = tmp_path / f"bad-{name}"
        path.write_bytes(data)
        run = accept(softhsm, path)
        assert run.returncode == 4, (name, run.returncode, run.stderr)
        assert run.stderr.startswith("tokenagent: error: ") and len(run.stderr.strip().splitlines()) == 1, name
        assert "Traceback" not in run.stderr
    missing = accept(softhsm, tmp_path / "does-not-exist.cer")
    assert missing.returncode == 4 and "does-not-exist.cer" in missing.stderr
    assert objects(softhsm) == before
    assert e.pending_id in pending_ids(softhsm)


def test_wrong_pin_one_try_nothing_written(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    e = enroll(softhsm, ca, tmp_path, "wrong-pin")
    before = objects(softhsm)
    run = cli(softhsm, "accept", str(e.cert_pem), "--pin-source", "env:BAD", BAD="0000")
    assert run.returncode == 7 and "will not retry" in run.stderr
    assert objects(softhsm) == before


# -- warnings --------------------------------------------------------------------------------------


def test_expired_and_not_yet_valid_certificates_warn(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    stamp = "%Y%m%d%H%M%SZ"
    expired = enroll(softhsm, ca, tmp_path / "x", "expired", not_before=f"{now - timedelta(days=40):{stamp}}", days=30)
    run = accept(softhsm, expired.cert_pem)
    assert run.returncode == 0, run.stderr
    assert "warning: the certificate" in run.stderr and "expired on" in run.stderr
    future = enroll(softhsm, ca, tmp_path / "f", "future", not_before=f"{now + timedelta(days=10):{stamp}}", days=30)
    run = accept(softhsm, future.cert_pem, "--json")
    assert run.returncode == 0, run.stderr
    assert any("is not valid before" in w for w in json.loads(run.stdout)["warnings"])


def test_key_usage_contradicting_the_key_warns(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    e = enroll(softhsm, ca, tmp_path, "usage", extensions="keyUsage = critical,keyEncipherment", copy_extensions=False)
    run = accept(softhsm, e.cert_pem, "--json")
    assert run.returncode == 0, run.stderr
    warnings = json.loads(run.stdout)["warnings"]
    assert any("key_encipherment" in w and "CKA_UNWRAP" in w for w in warnings), warnings


# -- rollback --------------------------------------------------------------------------------------


def test_interrupt_while_writing_the_chain_removes_what_was_written(
    softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after the certificate and before the chain is complete: both are removed again.

    The interruption is injected into tokenagent's own write step (the real C_CreateObject has
    already run); PKCS#11 itself is not replaced."""
    from tokenagent.enroll import accept as accept_module
    from tokenagent.errors import Interrupted
    from tokenagent.token.pins import literal_pin_source
    from tokenagent.token.target import TokenTarget

    fresh = OpenSslCA.create(tmp_path / "ca")  # CA certificates no other test has put on the token
    e = enroll(softhsm, fresh, tmp_path, "interrupted")
    p7b = tmp_path / "i.p7b"
    fresh.p7b([e.cert_pem, fresh.sub_cert, fresh.root_cert], p7b)
    before = objects(softhsm)
    real = accept_module.write_certificate
    calls: list[int] = []

    def write_then_interrupt(*args: object, **kwargs: object):
        obj = real(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return obj

    monkeypatch.setattr(accept_module, "write_certificate", write_then_interrupt)
    options = accept_module.AcceptOptions(
        response=p7b, target=TokenTarget(TOKEN, (), literal_pin_source(USER_PIN)), chain=True, run_key_test=False
    )
    with pytest.raises(Interrupted):
        accept_module.accept_certificate(options)
    assert len(calls) == 2
    assert objects(softhsm) == before
    assert e.pending_id in pending_ids(softhsm)


# -- trust -------------------------------------------------------------------------------------------


def test_trust_needs_the_so_pin(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    e = enroll(softhsm, ca, tmp_path, "trust")
    p7b = tmp_path / "t.p7b"
    ca.p7b([e.cert_pem, ca.sub_cert, ca.root_cert], p7b)
    no_chain = accept(softhsm, p7b, "--trust")
    assert no_chain.returncode == 2 and "--chain" in no_chain.stderr
    wrong = accept(softhsm, p7b, "--chain", "--trust", "--so-pin-source", "env:SO", SO="11111111")
    assert wrong.returncode == 7 and "wrong SO PIN" in wrong.stderr
    assert "rerun accept --chain --trust" in wrong.stderr
    assert any(block_id(b) == e.key_id for b in blocks(softhsm, "Certificate Object"))  # installed
    right = accept(softhsm, p7b, "--chain", "--trust", "--so-pin-source", "env:SO", "--json", SO=SO_PIN)
    assert right.returncode == 0, right.stderr
    assert all(entry["trusted"] for entry in json.loads(right.stdout)["chain"])
    listing = subprocess.run(
        ["p11tool", "--provider", softhsm.module, "--list-all-trusted", f"pkcs11:token={TOKEN}"],
        capture_output=True,
        text=True,
        env=softhsm.env(),
        check=True,
    ).stdout
    root = x509.load_pem_x509_certificate(ca.root_cert.read_bytes())
    assert root.subject.rfc4514_string().split(",")[0].split("=")[1] in listing


# -- repair --------------------------------------------------------------------------------------------


@pytest.fixture()
def misfiled(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> Enrolled:
    """A certificate written by pkcs11-tool with the wrong CKA_ID (ff) and no label."""
    e = enroll(softhsm, ca, tmp_path, f"misfiled-{tmp_path.name[-6:]}")
    der = tmp_path / "cert.der"
    der.write_bytes(e.cert_der)
    pkcs11_tool(softhsm, "--write-object", str(der), "--type", "cert", "--id", "ff", token=TOKEN)
    return e


def _cert_blocks_for(softhsm: SoftHSM, e: Enrolled) -> list[str]:
    from cryptography.x509.oid import NameOID

    subject = x509.load_der_x509_certificate(e.cert_der).subject
    cn = str(subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    return [b for b in blocks(softhsm, "Certificate Object") if re.search(rf"CN={re.escape(cn)}(,|\n)", b + "\n")]


def test_repair_fixes_a_wrong_cka_id(softhsm: SoftHSM, misfiled: Enrolled) -> None:
    assert [block_id(b) for b in _cert_blocks_for(softhsm, misfiled)] == ["ff"]
    thumbprint = hashlib.sha1(misfiled.cert_der).hexdigest()
    dry = cli(softhsm, "repair", thumbprint, "--token", TOKEN, "--pin-source", "env:PIN", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["applied"] is False
    assert {"object": "certificate", "attribute": "CKA_ID", "old": "ff", "new": misfiled.key_id} in planned["changes"]
    assert [block_id(b) for b in _cert_blocks_for(softhsm, misfiled)] == ["ff"]  # dry run changed nothing

    run = cli(softhsm, "repair", thumbprint, "--token", TOKEN, "--pin-source", "env:PIN")
    assert run.returncode == 0, run.stderr
    assert f"changed: certificate CKA_ID: ff -> {misfiled.key_id}" in run.stdout
    assert "key test: passed" in run.stdout
    fixed = _cert_blocks_for(softhsm, misfiled)
    assert [block_id(b) for b in fixed] == [misfiled.key_id]
    assert f"label:      {misfiled.name}" in fixed[0]  # the key's label, as it had none

    again = cli(softhsm, "repair", thumbprint, "--token", TOKEN, "--pin-source", "env:PIN")
    assert again.returncode == 0 and "nothing to repair" in again.stdout


def test_repair_by_file_and_by_uri(softhsm: SoftHSM, misfiled: Enrolled) -> None:
    by_file = cli(softhsm, "repair", str(misfiled.cert_pem), "--pin-source", "env:PIN", "--json")
    assert by_file.returncode == 0, by_file.stderr
    assert json.loads(by_file.stdout)["applied"] is True
    assert [block_id(b) for b in _cert_blocks_for(softhsm, misfiled)] == [misfiled.key_id]
    # break it again with pkcs11-tool, then name the certificate by its pkcs11: URI
    pkcs11_tool(softhsm, "--set-id", "ee", "--id", misfiled.key_id, "--type", "cert", token=TOKEN)
    uri = f"pkcs11:token={TOKEN};id=%ee;type=cert"
    by_uri = cli(softhsm, "repair", uri, "--pin-source", "env:PIN", "--json")
    assert by_uri.returncode == 0, by_uri.stderr
    changes = json.loads(by_uri.stdout)["changes"]
    assert changes == [{"object": "certificate", "attribute": "CKA_ID", "old": "ee", "new": misfiled.key_id}]


def test_repair_refusals(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    before = objects(softhsm)
    cert = foreign_certificate(ca, tmp_path)
    not_there = cli(softhsm, "repair", str(cert), "--token", TOKEN, "--pin-source", "env:PIN")
    assert not_there.returncode == 9 and "tokenagent accept" in not_there.stderr
    # on the token but without a key: certutil's "Object was not found"
    der = tmp_path / "other.der"
    subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER", "-out", str(der)], check=True)
    pkcs11_tool(softhsm, "--write-object", str(der), "--type", "cert", "--id", "dd", "--label", "keyless", token=TOKEN)
    with_cert = objects(softhsm)
    thumbprint = hashlib.sha1(der.read_bytes()).hexdigest()
    keyless = cli(softhsm, "repair", thumbprint, "--token", TOKEN, "--pin-source", "env:PIN")
    assert keyless.returncode == 9 and "0x80090011" in keyless.stderr and "no private key" in keyless.stderr
    assert objects(softhsm) == with_cert
    nonsense = cli(softhsm, "repair", "no-such-thing", "--token", TOKEN, "--pin-source", "env:PIN")
    assert nonsense.returncode == 4 and "neither a file" in nonsense.stderr
    pkcs11_tool(softhsm, "--delete-object", "--type", "cert", "--id", "dd", token=TOKEN)
    assert objects(softhsm) == before


def test_missing_token_and_missing_pending_token(softhsm: SoftHSM, ca: OpenSslCA, tmp_path: Path) -> None:
    e = enroll(softhsm, ca, tmp_path, "no-token")
    before = objects(softhsm)
    named = cli(softhsm, "accept", str(e.cert_pem), "--token", "no-such-card", "--pin-source", "env:PIN")
    assert named.returncode == 6 and "no-such-card" in named.stderr
    # the pending request names ta-acc; with only another SoftHSM instance present, that token is missing
    other = make_other_softhsm(tmp_path / "other")
    run = run_cli("accept", str(e.cert_pem), "--pin-source", "env:PIN", env={**softhsm.env(**PIN_ENV), **other})
    assert run.returncode == 6, run.stderr
    assert f"pending request {e.pending_id}" in run.stderr and "is not present" in run.stderr
    assert objects(softhsm) == before


def make_other_softhsm(directory: Path) -> dict[str, str]:
    from tests.conftest import make_softhsm

    instance = make_softhsm(directory, ["elsewhere"])
    return {"SOFTHSM2_CONF": str(instance.conf)}
