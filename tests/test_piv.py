"""PIV enrollment through Yubico's ykcs11 on virtual PIV cards over a real pcscd (tests/peers/piv.py):
the key born in its slot, the request signed there, the certificate written into the slot, and
OpenSC's module (a second, independent PKCS#11 implementation) reading and signing with the result.
Every request, certificate and signature is checked with openssl and pkcs11-tool. docs/piv.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms, csr, x509

from tests.ca import OpenSslCA

MGMT = "010203040506070801020304050607080102030405060708"  # the factory default
OTHER_MGMT = "2b7e151628aed2a6abf7158809cf4f3c2b7e151628aed2a6"
PIN = "123456"

LOGON_INF = """[NewRequest]
Subject = "CN={name},OU=Users,DC=example,DC=com"
KeyAlgorithm = {algorithm}
ProviderName = "Microsoft Smart Card Key Storage Provider"
KeyUsage = CERT_DIGITAL_SIGNATURE_KEY_USAGE
{extra}
[Extensions]
2.5.29.17 = "{{text}}UPN={name}@example.com"

[EnhancedKeyUsageExtension]
OID = 1.3.6.1.5.5.7.3.2
OID = 1.3.6.1.4.1.311.20.2.2
"""

AGENT_INF = """[NewRequest]
Subject = "CN=Enrollment Station 1,O=Example"
KeyAlgorithm = ECDSA_P256
KeyContainer = "PIV 9c"
ProviderName = "Microsoft Smart Card Key Storage Provider"

[EnhancedKeyUsageExtension]
OID = 1.3.6.1.4.1.311.20.2.1
"""


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> OpenSslCA:
    return OpenSslCA.create(tmp_path_factory.mktemp("piv-ca"))


@pytest.fixture()
def station(piv_station: Any, tmp_path: Path) -> Any:
    """Blank cards in both readers for every test; the state store is the test's own."""
    piv_station.insert_blank(0)
    piv_station.insert_blank(1)
    piv_station.state = tmp_path / "state"
    return piv_station


def env(station: Any, **extra: str) -> dict[str, str]:
    # without the session's TOKENAGENT_MODULE (SoftHSM): the card is found as a user would find it
    inherited = {name: value for name, value in station.env().items() if not name.startswith("TOKENAGENT_")}
    return {
        **inherited,
        "MGMT": MGMT,
        "PIN": PIN,
        "TOKENAGENT_STATE_DIR": str(station.state),
        **extra,
    }


def ta(station: Any, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenagent", *args],
        env=env(station, **extra),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def tool(station: Any, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pkcs11-tool", "--module", module, *args], env=env(station), capture_output=True, text=True, check=False
    )


def listing(station: Any, reader: int, module: str | None = None) -> str:
    """pkcs11-tool -O with the user PIN, through ykcs11 unless another module is named."""
    slot = tool(station, module or station.ykcs11, "-L")
    index = re.findall(r"^Slot (\d+) .*?\n(?:  .*\n)*?  token label +: (.*)$", slot.stdout, flags=re.M)
    label = station.token_label(reader)
    wanted = [number for number, name in index if name.strip() == label] if module is None else [index[reader][0]]
    run = tool(station, module or station.ykcs11, "--slot-index", str(reader), "-O", "--login", "--pin", PIN)
    assert run.returncode == 0, run.stderr
    assert wanted, slot.stdout
    return run.stdout


def new(station: Any, tmp_path: Path, reader: int, inf_text: str, name: str, *extra: str, **more_env: str):
    inf = tmp_path / f"{name}.inf"
    inf.write_text(inf_text)
    request = tmp_path / f"{name}.req"
    token = station.token_label(reader)
    run = ta(station, "new", str(inf), str(request), "--token", token, "--so-pin-source", "env:MGMT",
             "--pin-source", "env:PIN", *extra, **more_env)  # fmt: skip
    return run, request


def openssl(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *map(str, args)], input=stdin, capture_output=True, check=False)


def slot_objects(text: str, cka_id: str) -> list[str]:
    """The object kinds pkcs11-tool lists with this CKA_ID ("Private Key", "Certificate", ...), without
    the attestation certificate ykcs11 adds for every generated key."""
    blocks = [b for b in re.split(r"\n(?=\S)", text) if "PIV Attestation" not in b]
    return [block.split(" Object")[0] for block in blocks if re.search(rf"^\s+ID:\s+{cka_id}$", block, flags=re.M)]


def without_serials(text: str) -> str:
    """A listing without certificate serial numbers: ykcs11 attests a slot's key afresh in each session."""
    return re.sub(r"serial: .*", "", text)


@pytest.mark.parametrize(("algorithm", "mechanism"), [("ECDSA_P256", "ECDSA-SHA256"), ("RSA", "SHA256-RSA-PKCS")])
def test_logon_key_in_9a_accepted_then_opensc_signs_with_it(
    station: Any, ca: OpenSslCA, tmp_path: Path, algorithm: str, mechanism: str
) -> None:
    extra = "KeyLength = 2048\n" if algorithm == "RSA" else ""
    made, request = new(station, tmp_path, 0, LOGON_INF.format(name="ada", algorithm=algorithm, extra=extra), "ada")
    assert made.returncode == 0, made.stderr
    assert "factory default management key" in made.stderr  # the warning, once
    assert made.stderr.count("factory default management key") == 1
    assert "CKA_ID 01" in made.stdout
    # the request: its own signature (OpenSSL), and the key it names is the one in slot 9a
    verified = openssl("req", "-in", request, "-verify", "-noout")
    assert verified.returncode == 0 and b"verify OK" in verified.stdout + verified.stderr
    ykcs11 = listing(station, 0)
    assert {"Private Key", "Public Key"} <= set(slot_objects(ykcs11, "01"))
    assert "Private key for PIV Authentication" in ykcs11

    cert = tmp_path / "ada.pem"
    ca.issue(request, cert)
    accepted = ta(station, "accept", str(cert), "--so-pin-source", "env:MGMT", "--pin-source", "env:PIN", "--json")
    assert accepted.returncode == 0, accepted.stderr
    # the management key and the PIN went through env: never into output, JSON or the state store
    said = made.stdout + made.stderr + accepted.stdout + accepted.stderr
    stored = b"".join(path.read_bytes() for path in station.state.rglob("*") if path.is_file())
    for secret in (MGMT, MGMT.upper(), PIN):
        assert secret not in said and secret.encode() not in stored

    # OpenSC, the second implementation: it lists the certificate in 9a and signs with the key
    opensc = listing(station, 0, station.opensc)
    assert "Certificate for PIV Authentication" in opensc and "ID:         01" in opensc
    der = openssl("x509", "-in", cert, "-outform", "DER").stdout
    cert_der = tmp_path / "from-card.der"
    assert tool(station, station.opensc, "--slot-index", "0", "--read-object", "--type", "cert", "--id", "01",
                "-o", str(cert_der)).returncode == 0  # fmt: skip
    assert cert_der.read_bytes() == der
    data = tmp_path / "data.txt"
    data.write_bytes(b"signed through OpenSC with the key tokenagent generated in slot 9a\n")
    signature = tmp_path / "data.sig"
    signed = tool(station, station.opensc, "--slot-index", "0", "--login", "--pin", PIN, "--sign", "--id", "01",
                  "-m", mechanism, "-i", str(data), "-o", str(signature), "--signature-format", "openssl")  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    public = tmp_path / "public.pem"
    public.write_bytes(openssl("x509", "-in", cert, "-pubkey", "-noout").stdout)
    checked = openssl("dgst", "-sha256", "-verify", public, "-signature", signature, data)
    assert checked.returncode == 0 and b"Verified OK" in checked.stdout


def test_p384_in_a_named_retired_slot(station: Any, tmp_path: Path) -> None:
    inf = LOGON_INF.format(name="bob", algorithm="ECDSA_P384", extra='KeyContainer = "PIV 82"\n')
    made, request = new(station, tmp_path, 0, inf, "bob")
    assert made.returncode == 0, made.stderr
    assert openssl("req", "-in", request, "-verify", "-noout").returncode == 0
    info = csr.CertificationRequest.load(openssl("req", "-in", request, "-outform", "DER").stdout)
    assert info["certification_request_info"]["subject_pk_info"].curve == ("named", "secp384r1")
    assert {"Private Key", "Public Key"} <= set(slot_objects(listing(station, 0), "05"))  # 82 -> 05
    assert not slot_objects(listing(station, 0), "01")  # nothing went to 9a


def test_wrong_management_key_is_tried_once_and_the_card_is_unchanged(station: Any, tmp_path: Path) -> None:
    station.insert_blank(0, management_key=OTHER_MGMT)
    before = without_serials(listing(station, 0))
    made, request = new(station, tmp_path, 0, LOGON_INF.format(name="eve", algorithm="ECDSA_P256", extra=""), "eve")
    assert made.returncode == 7, made.stderr  # PinIncorrectError
    lines = made.stderr.strip().splitlines()
    assert len(lines) == 1 and "wrong SO PIN" in lines[0] and "tried once and will not retry" in lines[0]
    assert MGMT not in made.stderr + made.stdout
    assert without_serials(listing(station, 0)) == before and not request.exists()
    # the right key for this card: no factory-key warning
    right = ta(station, "new", str(tmp_path / "eve.inf"), str(request), "--token", station.token_label(0),
               "--so-pin-source", "env:OTHER", "--pin-source", "env:PIN", OTHER=OTHER_MGMT)  # fmt: skip
    assert right.returncode == 0, right.stderr
    assert "factory default" not in right.stderr


def test_an_occupied_slot_is_refused_before_anything_is_generated(station: Any, tmp_path: Path) -> None:
    inf = LOGON_INF.format(name="ada", algorithm="ECDSA_P256", extra="")
    first, _ = new(station, tmp_path, 0, inf, "first")
    assert first.returncode == 0, first.stderr
    before = without_serials(listing(station, 0))
    again, request = new(station, tmp_path, 0, inf, "again")
    assert again.returncode == 8, again.stderr  # KeyExistsError
    assert "PIV slot 9a" in again.stderr and "already holds a key" in again.stderr and "PivOverwrite" in again.stderr
    assert not request.exists()
    assert without_serials(listing(station, 0)) == before  # the same key (pkcs11-tool prints its EC point) and objects
    pending = json.loads(ta(station, "pending", "--json").stdout)
    assert len(pending["pending"]) == 1  # the first request only


def test_a_wrong_user_pin_leaves_the_slot_empty_and_free(station: Any, tmp_path: Path) -> None:
    """The key is generated (SO login), then the signature's PIN is wrong: the slot is put back, and
    the next enrollment can use it (the key bits a PIV card cannot delete are recorded as discarded)."""
    inf = LOGON_INF.format(name="ada", algorithm="ECDSA_P256", extra="")
    failed, request = new(station, tmp_path, 0, inf, "wrong-pin", "--pin-source", "env:BAD", BAD="654321")
    assert failed.returncode == 7, failed.stderr
    assert not request.exists()
    assert not [kind for kind in slot_objects(listing(station, 0), "01") if kind.startswith("Certificate")]
    retry, request = new(station, tmp_path, 0, inf, "retry")
    assert retry.returncode == 0, retry.stderr
    assert openssl("req", "-in", request, "-verify", "-noout").returncode == 0


def test_agent_in_9c_of_a_second_card_co_signs_for_a_user_in_9a(station: Any, ca: OpenSslCA, tmp_path: Path) -> None:
    # the agent's card (reader 1): key in 9c, the CA's Certificate Request Agent certificate into 9c
    made, agent_req = new(station, tmp_path, 1, AGENT_INF, "agent")
    assert made.returncode == 0, made.stderr
    agent_cert = tmp_path / "agent.pem"
    ca.issue_agent(agent_req, agent_cert)
    installed = ta(station, "accept", str(agent_cert), "--token", station.token_label(1), "--so-pin-source",
                   "env:MGMT", "--pin-source", "env:PIN")  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    assert {"Private Key", "Certificate"} <= set(slot_objects(listing(station, 1), "02"))

    # the user's card (reader 0): key in 9a, request co-signed on behalf of EXAMPLE\ada
    # ykcs11 registers no p11-kit module: the URI names it (RFC 7512 module-name)
    label = station.token_label(1).replace("#", "%23").replace(" ", "%20")
    agent = f"pkcs11:token={label};id=%02;type=private?module-name=ykcs11"
    extra = "RequestType = PKCS7\nRequesterName = EXAMPLE\\ada\n"
    made, request = new(station, tmp_path, 0, LOGON_INF.format(name="ada", algorithm="ECDSA_P256", extra=extra),
                        "ada", "--agent", agent, "--agent-pin-source", "env:PIN")  # fmt: skip
    assert made.returncode == 0, made.stderr
    der = request.with_suffix(".der")
    der.write_bytes(openssl("base64", "-d", "-in", request).stdout)
    bundle = tmp_path / "cas.pem"
    bundle.write_bytes(ca.root_cert.read_bytes() + ca.sub_cert.read_bytes())
    inner = tmp_path / "inner.der"
    verified = openssl("cms", "-verify", "-inform", "DER", "-in", der, "-binary", "-purpose", "any", "-CAfile",
                       bundle, "-out", inner)  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert openssl("req", "-inform", "DER", "-in", inner, "-verify", "-noout").returncode == 0
    signed = cms.ContentInfo.load(der.read_bytes())["content"]
    signer = signed["signer_infos"][0]
    agent_der = openssl("x509", "-in", agent_cert, "-outform", "DER").stdout
    assert signer["sid"].chosen["serial_number"].native == x509.Certificate.load(agent_der).serial_number
    names = [attr["type"].dotted for attr in signer["signed_attrs"]]
    assert "1.3.6.1.4.1.311.13.2.1" in names  # the RequesterName name-value pair


def test_enroll_through_a_file_drop_then_resume_installs_into_the_slot(
    station: Any, ca: OpenSslCA, tmp_path: Path
) -> None:
    """`enroll` (key on the card, request to the CA) and `enroll --resume` (the answer into the key's slot)
    with the management key: the PIV path of the station's commands."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    inf = tmp_path / "ada.inf"
    inf.write_text(LOGON_INF.format(name="ada", algorithm="ECDSA_P256", extra=""))
    secrets = ["--so-pin-source", "env:MGMT", "--pin-source", "env:PIN"]
    run = ta(station, "enroll", str(inf), "--config", f"file:{outbox}", "--token", station.token_label(0), *secrets)
    assert run.returncode == 14, run.stderr  # pending: a person takes the request to the CA
    (request,) = outbox.glob("*.req")
    ca.issue(
        request.read_bytes().replace(b"NEW CERTIFICATE REQUEST", b"CERTIFICATE REQUEST"), request.with_suffix(".cer")
    )
    done = ta(station, "enroll", "--resume", *secrets)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "installed" in done.stdout
    opensc = listing(station, 0, station.opensc)
    assert "Certificate for PIV Authentication" in opensc and "ID:         01" in opensc
    pending = json.loads(ta(station, "pending", "--json").stdout)
    assert pending["pending"] == []  # installed: the request is done


def test_dry_run_objects_repair_and_overwrite(station: Any, ca: OpenSslCA, tmp_path: Path) -> None:
    """The plan names the slot; `objects` shows slots; `repair` has nothing to relink (the slot is the
    link); PivOverwrite = TRUE replaces a slot's key, and only then."""
    inf_text = LOGON_INF.format(name="ada", algorithm="ECDSA_P256", extra="")
    planned, _ = new(station, tmp_path, 0, inf_text, "plan", "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)["plan"]
    assert plan["piv_slot"] == "9a" and plan["private_template"]["CKA_ID"] == "01"
    assert plan["provider"]["profile"]["name"] == "piv"  # the INF named the smart-card KSP: a PIV card
    made, request = new(station, tmp_path, 0, inf_text, "ada")
    assert made.returncode == 0, made.stderr
    cert = tmp_path / "ada.pem"
    ca.issue(request, cert)
    secrets = ["--so-pin-source", "env:MGMT", "--pin-source", "env:PIN"]
    assert ta(station, "accept", str(cert), *secrets).returncode == 0

    shown = ta(station, "objects", "--token", station.token_label(0), "--module", "ykcs11", "--pin-source", "env:PIN",
               "--json")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    objects = json.loads(shown.stdout)
    assert objects["piv"] is True
    in_9a = {(o["class"], o["label"]) for o in objects["objects"] if o.get("piv_slot") == "9a"}
    assert ("private-key", "Private key for PIV Authentication") in in_9a
    assert ("certificate", "X.509 Certificate for PIV Authentication") in in_9a

    repaired = ta(station, "repair", str(cert), "--token", station.token_label(0), "--module", "ykcs11", *secrets,
                  "--json")  # fmt: skip
    assert repaired.returncode == 0, repaired.stderr
    assert json.loads(repaired.stdout)["changes"] == []

    before = without_serials(listing(station, 0))
    replaced, request = new(station, tmp_path, 0, inf_text.replace("[Extensions]", "PivOverwrite = TRUE\n[Extensions]"),
                            "again")  # fmt: skip
    assert replaced.returncode == 0, replaced.stderr
    after = without_serials(listing(station, 0))
    assert after != before and openssl("req", "-in", request, "-verify", "-noout").returncode == 0
    assert "X.509 Certificate for PIV Authentication" in after  # ykcs11's placeholder for the new key
