"""`tokenagent readers` (issue 17, item 1): PC/SC readers, ATR, known-card names, PIN pad, the
reader -> PKCS#11 token association and `--watch`, against a real pcscd with vsmartcard's virtual
readers and virtual PIV cards (the session fixture `piv_station`, tests/peers/piv.py).

Results are checked against tools we did not write: opensc-tool (reader list, ATR, reader
features) and pkcs11-tool (slot descriptions and token labels of ykcs11 and SoftHSM).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SoftHSM, make_softhsm, run_cli
from tokenagent.station.atr import KNOWN_CARDS, atr_text, identify
from tokenagent.station.pcsc import FEATURE_VERIFY_PIN_DIRECT, no_service_message, parse_features
from tokenagent.station.readers import names_reader

#: tests/peers/pivcard.py's ATR (a YubiKey 5 over USB), written out: importing pivcard loads jcecard
VIRTUAL_CARD_ATR = "3bfd1300008131fe158073c021c057597562694b657940"
SMARTCARD_LIST = Path("/usr/share/pcsc/smartcard_list.txt")


# -- the ATR table, PC/SC part 10 parsing, slot descriptions (pure) -------------------------------------


def test_every_known_card_pattern_is_well_formed_and_matches_its_own_atr() -> None:
    for card in KNOWN_CARDS:
        assert re.fullmatch(r"([0-9A-F.]{2} )*[0-9A-F.]{2}", card.pattern), card.pattern
        assert len(card.atr) == len(card.mask) == len(card.pattern.split())
        assert card.atr[0] == 0x3B, card.name  # direct convention, as every entry in the table
        assert identify(card.atr) is not None
    families = {card.family for card in KNOWN_CARDS}
    assert families == {"YubiKey", "PIV", "IDPrime", "CardOS", "SmartCard-HSM", "OpenPGP", "Nitrokey"}


def test_atr_matching_uses_the_mask_and_the_whole_length() -> None:
    # smartcard_list.txt line 5493: "Gemalto IDPrime MD 840 (PKI)", a concrete card of a wildcard entry
    idprime_840 = bytes.fromhex("3B7F96000080318065B0850300EF120FFE829000")
    card = identify(idprime_840)
    assert card is not None and card.family == "IDPrime" and ".." in card.pattern
    assert identify(idprime_840 + b"\x00") is None  # one byte more: another card
    assert identify(bytes.fromhex(VIRTUAL_CARD_ATR)).family == "YubiKey"  # type: ignore[union-attr]
    assert identify(bytes.fromhex("3B00")) is None
    assert atr_text(bytes.fromhex("3bfd13")) == "3B FD 13"


@pytest.mark.skipif(not SMARTCARD_LIST.exists(), reason="pcsc-tools is not installed (smartcard_list.txt)")
def test_each_entry_is_copied_from_smartcard_list_at_its_line() -> None:
    lines = SMARTCARD_LIST.read_text(errors="replace").splitlines()
    for card in KNOWN_CARDS:
        # the file may be newer than 1.6.2: find the pattern, then check the name under it
        where = lines.index(card.pattern) if card.pattern in lines else -1
        assert where >= 0, card.pattern
        assert lines[where + 1].strip() == card.name


def test_feature_list_parsing() -> None:
    # a pinpad reader's answer (tag, length 4, IOCTL big-endian): VERIFY_PIN_DIRECT, MODIFY_PIN_DIRECT
    answer = bytes.fromhex("0604423300060704423300071204423300 12".replace(" ", ""))
    features = parse_features(answer)
    assert features == {6: 0x42330006, 7: 0x42330007, 0x12: 0x42330012}
    assert FEATURE_VERIFY_PIN_DIRECT in features
    assert parse_features(b"") == {}
    assert parse_features(bytes.fromhex("060442330006 07")) == {6: 0x42330006}  # truncated tail ignored
    assert parse_features(bytes.fromhex("0602ffff")) == {}  # a length other than 4 ends the list


def test_slot_description_names_the_reader() -> None:
    assert names_reader("Yubico YubiKey vpcd 00 00", "Yubico YubiKey vpcd 00 00")
    assert not names_reader("Yubico YubiKey vpcd 00 01", "Yubico YubiKey vpcd 00 00")
    assert not names_reader("Yubico YubiKey vpcd 00 0", "Yubico YubiKey vpcd 00 00")
    assert not names_reader("SoftHSM slot ID 0x16d234de", "Yubico YubiKey vpcd 00 00")
    assert not names_reader("", "Yubico YubiKey vpcd 00 00")
    long = "Identiv uTrust 3700 F CL Reader [uTrust 3700 F CL Reader] (55041520603000) 01 00"
    assert len(long) > 64 and names_reader(long[:64].rstrip(), long)  # CK_SLOT_INFO holds 64 bytes
    assert names_reader("Yubico YubiKey vpcd 00 00 (PIV)", "Yubico YubiKey vpcd 00 00")


# -- the station config, which needs no reader: it is read first ---------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[readers]\n"R" = "x"\n"S" = \n', r":3: not valid TOML: Invalid value"),
        ('readers = "token"\n', r": readers must be a table"),
        ('[readers]\n"R" = 5\n', r": \[readers\] 'R': expected a token"),
        ('[readers]\n"R" = { token = "a", slot = 1 }\n', r"unknown keys slot"),
        ('[readers]\n"R" = { module = "softhsm2" }\n', r"needs a token"),
        ('[readers]\n"R" = "pkcs11:token=a;token=b"\n', r"repeats the attribute"),
        ('[readers]\n"R" = "pkcs11:token=a?pin-value=1234"\n', r"a PIN does not belong in the station config"),
    ],
)
def test_a_bad_station_config_is_one_line_naming_the_file(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "station.toml"
    config.write_text(text)
    done = run_cli("readers", "--station-config", str(config), env=_env_without_pcscd(tmp_path))
    assert done.returncode == 4, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tokenagent: error: {config}")
    assert re.search(expected, lines[0]), lines[0]
    assert "1234" not in done.stderr


def test_a_missing_or_binary_station_config_file_is_an_input_error(tmp_path: Path) -> None:
    env = _env_without_pcscd(tmp_path)
    done = run_cli("readers", "--station-config", str(tmp_path / "none.toml"), env=env)
    assert done.returncode == 4 and "none.toml" in done.stderr and len(done.stderr.splitlines()) == 1
    (tmp_path / "garbage.toml").write_bytes(b"\xff\xfe[readers]\x00\x1b")
    done = run_cli("readers", "--station-config", str(tmp_path / "garbage.toml"), env=env)
    assert (
        done.returncode == 4
        and done.stderr == f"tokenagent: error: {tmp_path / 'garbage.toml'}: not UTF-8 text (byte 0)\n"
    )


def test_no_reader_and_no_pcscd_messages() -> None:
    """pcscd with no reader cannot be made here (the harness's pcscd always has its two): the
    message for SCARD_E_NO_READERS_AVAILABLE is checked as a function."""
    from smartcard import scard

    assert no_service_message(scard.SCARD_E_NO_READERS_AVAILABLE) == (
        "no smart card reader is connected: Cannot find a smart card reader. (0x8010002E)"
    )
    assert (no_service_message(scard.SCARD_E_NO_SERVICE) or "").startswith("pcscd is not running")
    assert no_service_message(scard.SCARD_E_SHARING_VIOLATION) is None


# -- no pcscd -------------------------------------------------------------------------------------------


def _env_without_pcscd(tmp_path: Path) -> dict[str, str]:
    """libpcsclite looks for pcscd's socket at PCSCLITE_CSOCK_NAME: a path where nothing listens."""
    return {
        **os.environ,
        "PCSCLITE_CSOCK_NAME": str(tmp_path / "no-pcscd.comm"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "TOKENAGENT_STATE_DIR": str(tmp_path / "state"),
    }


def test_no_pcscd_is_one_line_exit_6_and_an_empty_json_list(tmp_path: Path) -> None:
    env = _env_without_pcscd(tmp_path)
    done = run_cli("readers", env=env)
    assert done.returncode == 6 and done.stdout == ""
    assert re.fullmatch(r"tokenagent: error: pcscd is not running \(.*\): .*0x8010001D\)\n", done.stderr), done.stderr
    as_json = run_cli("readers", "--json", env=env)
    assert as_json.returncode == 6
    document = json.loads(as_json.stdout)  # one document: the list, the reason, the error's fields
    assert document["readers"] == [] and document["format_version"] == 1
    assert document["reason"].startswith("pcscd is not running")
    assert document["error"] == "TokenNotFoundError" and document["exit_code"] == 6
    watch = run_cli("readers", "--watch", "--timeout", "1", env=env)
    assert watch.returncode == 6 and "pcscd is not running" in watch.stderr


def test_count_and_timeout_need_watch(tmp_path: Path) -> None:
    done = run_cli("readers", "--count", "1", env=_env_without_pcscd(tmp_path))
    assert done.returncode == 2 and "--count and --timeout go with --watch" in done.stderr


# -- real readers ---------------------------------------------------------------------------------------


@pytest.fixture()
def station(piv_station: Any) -> Any:
    """Both virtual readers with a card (a test before may have taken one out)."""
    for reader, serial in enumerate(piv_station.serials):
        if serial is None:
            piv_station.insert_blank(reader)
    return piv_station


def _readers(station: Any, tmp_path: Path, *args: str, **extra: str) -> dict[str, Any]:
    env = station.env(XDG_CONFIG_HOME=str(tmp_path / "config"), TOKENAGENT_STATE_DIR=str(tmp_path / "state"), **extra)
    done = run_cli("readers", "--json", *args, env=env)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_readers_atr_and_card_name_agree_with_opensc_tool(station: Any, tmp_path: Path) -> None:
    document = _readers(station, tmp_path, "--no-tokens")
    readers = document["readers"]
    assert [r["name"] for r in readers] == station.reader_names
    listed = subprocess.run(["opensc-tool", "--list-readers"], capture_output=True, text=True, check=True).stdout
    for index, reader in enumerate(readers):
        assert reader["card_present"] is True and "present" in reader["state"]
        assert reader["atr"] == VIRTUAL_CARD_ATR
        assert reader["card"]["family"] == "YubiKey"
        assert reader["card"]["name"] == "Yubico YubiKey 5 NFC (PKI)"
        assert reader["tokens"] == [] and reader["station_config"] is None
        # opensc-tool: "0    Yes             Yubico YubiKey vpcd 00 00" (no PIN pad among the features)
        row = re.search(rf"^{index}\s+Yes\s+(\S.*)$", listed, flags=re.M)
        assert row is not None and row.group(1).strip() == reader["name"], listed
        assert "PIN pad" not in row.group(0)
        assert reader["pin_pad"] is False and reader["features"] == []
        atr = subprocess.run(["opensc-tool", "-r", str(index), "-a"], capture_output=True, text=True, check=True)
        assert atr.stdout.strip().replace(":", "") == reader["atr"]


def test_plain_listing_names_the_card_and_an_empty_reader(station: Any, tmp_path: Path) -> None:
    station.remove(1)
    env = station.env(XDG_CONFIG_HOME=str(tmp_path / "config"))
    done = run_cli("readers", "--no-tokens", env=env)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.split("Reader ")[1:]
    assert first.startswith(station.reader_names[0])
    assert "card               : Yubico YubiKey 5 NFC (PKI)" in first
    assert f"ATR                : {atr_text(bytes.fromhex(VIRTUAL_CARD_ATR))}" in first
    assert "PIN pad            : no" in first
    assert second.startswith(station.reader_names[1]) and "card               : none" in second
    assert "state              : empty" in second
    document = _readers(station, tmp_path, "--no-tokens")
    assert document["readers"][1]["card_present"] is False and document["readers"][1]["atr"] is None


def _pkcs11_tool_slots(module: str, env: dict[str, str]) -> list[tuple[str, str | None]]:
    """(slot description, token label) of each slot, as pkcs11-tool -L prints them."""
    listing = subprocess.run(
        ["pkcs11-tool", "--module", module, "-L"], capture_output=True, text=True, env=env, check=True
    ).stdout
    slots = []
    for block in re.split(r"^Slot \d+ \(0x[0-9a-f]+\): ", listing, flags=re.M)[1:]:
        description = block.splitlines()[0].strip()
        label = re.search(r"^\s+token label\s+: (.*)$", block, flags=re.M)
        slots.append((description, label.group(1).strip() if label else None))
    return slots


def test_ykcs11_tokens_belong_to_the_reader_their_slot_names(station: Any, tmp_path: Path) -> None:
    document = _readers(station, tmp_path, "--module", station.ykcs11)
    slots = _pkcs11_tool_slots(station.ykcs11, station.env())
    for index, reader in enumerate(document["readers"]):
        [token] = reader["tokens"]
        assert token["label"] == station.token_label(index)
        assert token["serial"] == str(station.serials[index])
        assert token["matched_by"] == "slot-description"
        assert token["slot_description"] == reader["name"]
        assert (reader["name"], token["label"]) in slots  # pkcs11-tool: the same slot names the reader


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHSM:
    return make_softhsm(tmp_path_factory.mktemp("readers-hsm"), ["station-a", "station-b"])


def test_softhsm_tokens_come_from_the_station_config(station: Any, hsm: SoftHSM, tmp_path: Path) -> None:
    first, second = station.reader_names
    slots = _pkcs11_tool_slots(hsm.module, hsm.env())
    assert all(not names_reader(description, first) for description, _ in slots)  # SoftHSM names no reader
    # the user's file maps reader 0 by label; --station-config maps reader 1 by URI, with its module
    (tmp_path / "config" / "tokenagent").mkdir(parents=True)
    (tmp_path / "config" / "tokenagent" / "station.toml").write_text(
        f'[readers]\n"{first}" = "station-a"\n"{second}" = "nothing-here"\n'
    )
    explicit = tmp_path / "station.toml"
    explicit.write_text(f'[readers]\n"{second}" = {{ token = "pkcs11:token=station-b", module = "{hsm.module}" }}\n')
    document = _readers(
        station,
        tmp_path,
        "--module",
        hsm.module,
        "--station-config",
        str(explicit),
        SOFTHSM2_CONF=str(hsm.conf),
    )
    assert document["station_config_files"] == [str(tmp_path / "config" / "tokenagent" / "station.toml"), str(explicit)]
    a, b = (reader["tokens"] for reader in document["readers"])
    assert [t["label"] for t in a] == ["station-a"] and [t["label"] for t in b] == ["station-b"]
    assert {t["matched_by"] for t in a + b} == {"station-config"}
    assert document["readers"][1]["station_config"]["source"] == str(explicit)  # the later file wins
    # pkcs11-tool names the same tokens, with the same serials
    serials = subprocess.run(
        ["pkcs11-tool", "--module", hsm.module, "-L"], capture_output=True, text=True, env=hsm.env(), check=True
    ).stdout
    for token in a + b:
        assert re.search(rf"token label\s+: {token['label']}\n(.*\n)*?\s+serial num\s+: {token['serial']}\n", serials)


def test_a_mapped_token_that_is_absent_is_a_problem_not_a_failure(station: Any, hsm: SoftHSM, tmp_path: Path) -> None:
    config = tmp_path / "station.toml"
    config.write_text(f'[readers]\n"{station.reader_names[0]}" = "no-such-token"\n')
    document = _readers(
        station, tmp_path, "--module", hsm.module, "--station-config", str(config), SOFTHSM2_CONF=str(hsm.conf)
    )
    reader = document["readers"][0]
    assert reader["tokens"] == []
    assert reader["problem"] == f"station config ({config}): no token matches 'no-such-token'"
    env = station.env(SOFTHSM2_CONF=str(hsm.conf), XDG_CONFIG_HOME=str(tmp_path / "config"))
    plain = run_cli("readers", "--module", hsm.module, "--station-config", str(config), env=env)
    assert plain.returncode == 0 and "problem            : station config" in plain.stdout


def test_a_reader_name_with_control_characters_in_the_config_is_shown_escaped(
    station: Any, hsm: SoftHSM, tmp_path: Path
) -> None:
    """A mapping for a reader that is not connected is not shown; a token label from a mapping is."""
    config = tmp_path / "station.toml"
    config.write_text(f'[readers]\n"{station.reader_names[0]}" = "evil\\u001b[31m"\n"gone\\u001b" = "x"\n')
    env = station.env(SOFTHSM2_CONF=str(hsm.conf), XDG_CONFIG_HOME=str(tmp_path / "config"))
    plain = run_cli("readers", "--module", hsm.module, "--station-config", str(config), env=env)
    assert plain.returncode == 0, plain.stderr
    assert "\x1b" not in plain.stdout and "gone" not in plain.stdout
    assert "evil\\x1b[31m" in plain.stdout


# -- --watch --------------------------------------------------------------------------------------------


def _start_watch(station: Any, *args: str) -> subprocess.Popen[str]:
    """The CLI watching, returned once it has read the readers' state (its -v info line)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenagent", "-v", "readers", "--watch", *args],
        env=station.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "watching 2 reader(s) for card events" in line, line
    return process


def test_watch_reports_removal_and_insertion_as_json_lines(station: Any) -> None:
    watcher = _start_watch(station, "--json", "--count", "2", "--timeout", "30")
    station.remove(1)
    station.insert_blank(1)
    out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    removed, inserted = (json.loads(line) for line in out.splitlines())
    assert (removed["event"], removed["reader"], removed["atr"]) == ("card-removed", station.reader_names[1], None)
    assert (inserted["event"], inserted["reader"]) == ("card-inserted", station.reader_names[1])
    assert inserted["atr"] == VIRTUAL_CARD_ATR and inserted["card"]["family"] == "YubiKey"
    assert inserted["format_version"] == 1 and inserted["time"].endswith("Z") and inserted["mute"] is False


def test_watch_plain_lines_and_a_timeout_ends_it_with_exit_0(station: Any) -> None:
    started = time.monotonic()
    watcher = _start_watch(station, "--timeout", "4")
    station.remove(0)
    station.insert_blank(0)
    out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    assert 3.5 < time.monotonic() - started < 10
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert re.fullmatch(rf"\S+Z  card-removed   {re.escape(station.reader_names[0])}", lines[0])
    atr = atr_text(bytes.fromhex(VIRTUAL_CARD_ATR))
    assert lines[1].endswith(f"  card-inserted  {station.reader_names[0]}  {atr}  Yubico YubiKey 5 NFC (PKI)")


@pytest.mark.parametrize("as_json", [False, True], ids=["plain", "json"])
def test_ctrl_c_ends_a_watch_at_once_with_the_interrupt_exit_code(station: Any, as_json: bool) -> None:
    watcher = _start_watch(station, *(["--json"] if as_json else []))
    time.sleep(0.3)
    sent = time.monotonic()
    watcher.send_signal(signal.SIGINT)
    out, err = watcher.communicate(timeout=10)
    assert time.monotonic() - sent < 2  # waiting is done in 250 ms slices
    assert watcher.returncode == 130
    assert err.strip().splitlines()[-1] == "tokenagent: error: interrupted"
    if as_json:  # JSON lines: the last one is the interruption
        assert json.loads(out.splitlines()[-1])["error"] == "Interrupted"
    else:
        assert out == ""
