"""The virtual PIV cards (tests/peers/piv.py), checked only with tools we did not write: pkcs11-tool
over Yubico's ykcs11 and over OpenSC's opensc-pkcs11, and openssl for every signature."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.peers.piv import (
    DEFAULT_MANAGEMENT_KEY,
    DEFAULT_PIN,
    PivStation,
    PivStationError,
    _pcscd_processes,
)

OTHER_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978"
USER = ("--login", "--pin", DEFAULT_PIN)


def so(key: str = DEFAULT_MANAGEMENT_KEY) -> tuple[str, ...]:
    return ("--login", "--login-type", "so", "--so-pin", key)


def tool(
    station: PivStation, module: str, reader: int, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = ["pkcs11-tool", "--module", module, "--slot-description", station.reader_names[reader], *args]
    result = subprocess.run(command, capture_output=True, text=True, env=station.env(), timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"pkcs11-tool {' '.join(args)} failed: {result.stdout}{result.stderr}")
    return result


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60, check=False)


def read_certificate(station: PivStation, reader: int, key_id: str, out: Path) -> Path:
    """The slot's certificate through ykcs11, as DER (after generation: ykcs11's own stand-in)."""
    tool(station, station.ykcs11, reader, "--read-object", "--type", "cert", "--id", key_id, "-o", str(out))
    return out


def public_key_pem(certificate_der: Path) -> Path:
    pem = certificate_der.with_suffix(".pub.pem")
    result = openssl("x509", "-inform", "DER", "-in", str(certificate_der), "-noout", "-pubkey", "-out", str(pem))
    assert result.returncode == 0, result.stderr
    return pem


def sign_and_verify(station: PivStation, module: str, reader: int, key_id: str, mechanism: str, pem: Path, tmp: Path):
    message = tmp / "message.txt"
    message.write_text("signed on a virtual PIV card\n")
    signature = tmp / f"{key_id}-{mechanism}.sig"
    extra = ("--signature-format", "openssl") if mechanism.startswith("ECDSA") else ()
    tool(station, module, reader, *USER, "--sign", "--id", key_id, "-m", mechanism, *extra,
         "-i", str(message), "-o", str(signature))  # fmt: skip
    digest = "-sha384" if "384" in mechanism else "-sha256"
    pss = ("-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:-1") if mechanism.endswith("PSS") else ()
    result = openssl("dgst", digest, *pss, "-verify", str(pem), "-signature", str(signature), str(message))
    assert result.returncode == 0 and "Verified OK" in result.stdout, result.stdout + result.stderr


def issue_certificate(public_pem: Path, subject: str, out: Path) -> Path:
    """A certificate for the card's public key from a throw-away CA (what an enrollment would bring)."""
    public_key = serialization.load_pem_public_key(public_pem.read_bytes())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "virtual PIV test CA")]))
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    out.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return out


def test_ykcs11_lists_one_token_per_reader(piv_station: PivStation) -> None:
    for reader in (0, 1):
        piv_station.insert_blank(reader)
    listing = subprocess.run(
        ["pkcs11-tool", "--module", piv_station.ykcs11, "-L"], capture_output=True, text=True, env=piv_station.env()
    ).stdout
    for reader, name in enumerate(piv_station.reader_names):
        assert name in listing
        assert f"token label        : {piv_station.token_label(reader)}" in listing
    assert listing.count("token model        : YubiKey YK5") == 2
    assert listing.count("Yubico (www.yubico.com)") == 2


@pytest.mark.parametrize(
    ("key_type", "key_id", "mechanism"),
    [
        ("EC:prime256v1", "01", "ECDSA-SHA256"),  # slot 9a
        ("EC:secp384r1", "02", "ECDSA-SHA384"),  # slot 9c: PIN before every signature
        ("rsa:2048", "03", "SHA256-RSA-PKCS"),  # slot 9d
    ],
)
def test_ykcs11_generates_and_signs(piv_station: PivStation, tmp_path: Path, key_type, key_id, mechanism) -> None:
    piv_station.insert_blank(0)
    generated = tool(piv_station, piv_station.ykcs11, 0, *so(), "--keypairgen", "--key-type", key_type, "--id", key_id)
    assert "Private Key Object" in generated.stdout and f"ID:         {key_id}" in generated.stdout
    pem = public_key_pem(read_certificate(piv_station, 0, key_id, tmp_path / "card.der"))
    sign_and_verify(piv_station, piv_station.ykcs11, 0, key_id, mechanism, pem, tmp_path)
    if key_type.startswith("rsa"):  # the raw RSA operation with another padding
        sign_and_verify(piv_station, piv_station.ykcs11, 0, key_id, "SHA256-RSA-PKCS-PSS", pem, tmp_path)


@pytest.mark.parametrize("key_type", ["EC:prime256v1", "rsa:2048"])
def test_certificate_written_by_ykcs11_is_used_by_opensc(piv_station: PivStation, tmp_path: Path, key_type) -> None:
    piv_station.insert_blank(0)
    tool(piv_station, piv_station.ykcs11, 0, *so(), "--keypairgen", "--key-type", key_type, "--id", "01")
    card = public_key_pem(read_certificate(piv_station, 0, "01", tmp_path / "card.der"))
    issued = issue_certificate(card, "alice", tmp_path / "alice.der")
    tool(piv_station, piv_station.ykcs11, 0, *so(), "--write-object", str(issued), "--type", "cert", "--id", "01")

    listing = tool(piv_station, piv_station.opensc, 0, "--list-objects", "--type", "cert").stdout
    assert "Certificate for PIV Authentication" in listing and "CN=alice" in listing, listing
    mechanism = "ECDSA-SHA256" if key_type.startswith("EC") else "SHA256-RSA-PKCS"
    sign_and_verify(piv_station, piv_station.opensc, 0, "01", mechanism, public_key_pem(issued), tmp_path)


def test_wrong_management_key_fails_so_login(piv_station: PivStation) -> None:
    piv_station.insert_blank(1, management_key=OTHER_KEY)
    wrong = tool(piv_station, piv_station.ykcs11, 1, *so(), "--keypairgen", "--key-type", "EC:prime256v1",
                 "--id", "01", check=False)  # fmt: skip
    assert wrong.returncode != 0 and "CKR_PIN_INCORRECT" in wrong.stderr, wrong.stderr
    right = tool(piv_station, piv_station.ykcs11, 1, *so(OTHER_KEY), "--keypairgen", "--key-type", "EC:prime256v1",
                 "--id", "01")  # fmt: skip
    assert "Private Key Object" in right.stdout


def test_pin_blocks_after_three_wrong_tries(piv_station: PivStation) -> None:
    piv_station.insert_blank(1)
    answers = [tool(piv_station, piv_station.ykcs11, 1, "--login", "--pin", "000000", "--list-objects",
                    check=False).stderr for _ in range(3)]  # fmt: skip
    assert "CKR_PIN_INCORRECT" in answers[0] and "CKR_PIN_INCORRECT" in answers[1]
    assert "CKR_PIN_LOCKED" in answers[2]
    assert "CKR_PIN_LOCKED" in tool(piv_station, piv_station.ykcs11, 1, *USER, "--list-objects", check=False).stderr


def test_deleting_objects_through_ykcs11(piv_station: PivStation) -> None:
    """As with a real YubiKey 5: C_DestroyObject empties the slot's certificate object, whatever the
    handle; the key pair stays on the card and ykcs11 finds it again (GET METADATA, ATTEST)."""
    piv_station.insert_blank(0)
    tool(piv_station, piv_station.ykcs11, 0, *so(), "--keypairgen", "--key-type", "EC:prime256v1", "--id", "01")
    tool(piv_station, piv_station.ykcs11, 0, *so(), "--delete-object", "--type", "cert", "--id", "01")
    listing = tool(piv_station, piv_station.ykcs11, 0, *USER, "--list-objects").stdout
    assert "X.509 Certificate for PIV Authentication\n" not in listing
    assert "Private key for PIV Authentication" in listing and "Public key for PIV Authentication" in listing
    assert "X.509 Certificate for PIV Attestation 9a" in listing
    tool(piv_station, piv_station.ykcs11, 0, *so(), "--delete-object", "--type", "privkey", "--id", "01")
    assert "Private key for PIV Authentication" in tool(piv_station, piv_station.ykcs11, 0, *USER, "-O").stdout


def test_remove_and_insert_blank(piv_station: PivStation) -> None:
    piv_station.insert_blank(1)
    tool(piv_station, piv_station.ykcs11, 1, *so(), "--keypairgen", "--key-type", "EC:prime256v1", "--id", "01")
    piv_station.remove(1)
    listing = subprocess.run(
        ["pkcs11-tool", "--module", piv_station.ykcs11, "-L"], capture_output=True, text=True, env=piv_station.env()
    ).stdout
    assert listing.count("token label") == 1 and "(empty)" in listing
    serial = piv_station.insert_blank(1)
    assert piv_station.token_label(1) == f"YubiKey PIV #{serial}"
    blank = tool(piv_station, piv_station.ykcs11, 1, *USER, "--list-objects").stdout
    assert "Private key" not in blank.replace("Private key for PIV Attestation", "")
    listing = subprocess.run(
        ["pkcs11-tool", "--module", piv_station.ykcs11, "-L"], capture_output=True, text=True, env=piv_station.env()
    ).stdout
    assert listing.count("token label") == 2 and piv_station.token_label(1) in listing


def test_two_cards_at_once(piv_station: PivStation, tmp_path: Path) -> None:
    pems = []
    for reader in (0, 1):
        piv_station.insert_blank(reader)
        tool(
            piv_station, piv_station.ykcs11, reader, *so(), "--keypairgen", "--key-type", "EC:prime256v1", "--id", "01"
        )
        pems.append(public_key_pem(read_certificate(piv_station, reader, "01", tmp_path / f"card{reader}.der")))
    assert pems[0].read_text() != pems[1].read_text()
    for reader in (1, 0):
        sign_and_verify(piv_station, piv_station.ykcs11, reader, "01", "ECDSA-SHA256", pems[reader], tmp_path)


def test_one_pcscd_per_machine(piv_station: PivStation, tmp_path: Path) -> None:
    with pytest.raises(PivStationError, match="not started by the test harness"):
        PivStation.start(tmp_path / "second")


def test_stop_leaves_nothing_behind(piv_station: PivStation) -> None:
    """Stops the session's station and starts it again (new serials, blank cards)."""
    before = piv_station.pids
    piv_station.stop()
    assert _pcscd_processes() == []
    assert not Path("/run/pcscd/pcscd.comm").exists()
    for pid in before:
        assert not Path(f"/proc/{pid}").exists()
    bridges = subprocess.run(["pgrep", "-f", "pivcard_bridge.py"], capture_output=True, text=True).stdout.split()
    assert bridges == []
    piv_station.restart()
    assert len(_pcscd_processes()) == 1
