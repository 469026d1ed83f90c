"""udev/70-tokenagent-station.rules: udev's own syntax rules, and every USB ID checked against the
CCID driver's reader list and hwdata's usb.ids (lists we did not write)."""

from __future__ import annotations

import plistlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

RULES = ROOT / "udev" / "70-tokenagent-station.rules"
CCID_PLIST = Path("/usr/lib/pcsc/drivers/ifd-ccid.bundle/Contents/Info.plist")
USB_IDS = Path("/usr/share/hwdata/usb.ids")

#: What each vendor:product of the rules is, as a word the independent lists must contain
EXPECTED = {
    ("1050", "0404"): "yubikey", ("1050", "0405"): "yubikey", ("1050", "0406"): "yubikey",
    ("1050", "0407"): "yubikey", ("1050", "0111"): "yubikey neo", ("1050", "0116"): "yubikey neo",
    ("20a0", "4108"): "nitrokey pro", ("20a0", "4109"): "nitrokey storage", ("20a0", "4211"): "nitrokey start",
    ("20a0", "4230"): "nitrokey hsm", ("20a0", "42b2"): "nitrokey 3",
    ("0529", "0600"): "etoken pro", ("0529", "0620"): "etoken 5100", ("0529", "0602"): "etoken 7300",
    ("08e6", "34cc"): "etoken 5300", ("08e6", "34cf"): "etoken 5110+ fips",
    ("096e", "0807"): "epass2003", ("096e", "080a"): "epass2003auto", ("096e", "080f"): "ejava token",
    ("096e", "0624"): "br301", ("096e", "061a"): "br301",
    ("04e6", "5816"): "utrust 3512",
}  # fmt: skip

# udev(7): the keys a rule may use, which of them take {attribute}, and which only match or only assign
MATCH_ONLY = {"ACTION", "DEVPATH", "KERNEL", "KERNELS", "SUBSYSTEM", "SUBSYSTEMS", "DRIVER", "DRIVERS", "TAGS",
              "ATTRS", "SYSCTL", "TEST", "PROGRAM", "RESULT", "CONST", "SYMLINK"}  # fmt: skip
ASSIGN_ONLY = {"MODE", "OWNER", "GROUP", "TAG", "RUN", "LABEL", "GOTO", "IMPORT", "OPTIONS", "NAME",
               "SECLABEL", "SYSCTL"}  # fmt: skip
EITHER = {"ENV", "ATTR", "TAG", "SYMLINK", "NAME", "SYSCTL"}
WITH_ATTRIBUTE = {"ATTR", "ATTRS", "ENV", "SYSCTL", "TEST", "IMPORT", "RUN", "SECLABEL", "CONST"}
NEEDS_ATTRIBUTE = {"ATTR", "ATTRS", "ENV", "SYSCTL", "SECLABEL", "CONST"}
TOKEN = re.compile(r'\s*(?P<key>[A-Z_]+)(?:\{(?P<attr>[^}]*)\})?\s*(?P<op>==|!=|\+=|-=|:=|=)\s*"(?P<value>[^"]*)"\s*')


def rules(text: str | None = None) -> list[tuple[int, list[tuple[str, str | None, str, str]]]]:
    """Each rule line as (line number, [(key, attribute, operator, value)])."""
    parsed = []
    for number, line in enumerate((RULES.read_text() if text is None else text).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert not line.rstrip().endswith("\\"), f"line {number}: keep each rule on one line"
        tokens, position = [], 0
        while position < len(line):
            found = TOKEN.match(line, position)
            assert found, f'line {number}: not KEY[{{attr}}]OP"value" at column {position + 1}: {line[position:]!r}'
            tokens.append((found["key"], found["attr"], found["op"], found["value"]))
            position = found.end()
            if position < len(line):
                assert line[position] == ",", f"line {number}: ',' expected at column {position + 1}"
                position += 1
                assert position < len(line), f"line {number}: a trailing comma"
        parsed.append((number, tokens))
    return parsed


def check_syntax(text: str | None = None) -> None:
    labels, gotos = set(), []
    for number, tokens in rules(text):
        assert any(op in ("==", "!=") for _, _, op, _ in tokens) or tokens[0][0] == "LABEL", f"line {number}: no match"
        for key, attribute, op, value in tokens:
            where = f"line {number}: {key}"
            assert key in MATCH_ONLY | ASSIGN_ONLY | EITHER, f"{where}: not a udev key"
            if attribute is not None:
                assert key in WITH_ATTRIBUTE, f"{where} takes no {{attribute}}"
            else:
                assert key not in NEEDS_ATTRIBUTE, f"{where} needs an {{attribute}}"
            if op in ("==", "!="):
                assert key not in ASSIGN_ONLY - EITHER, f"{where}: an assignment key used as a match"
            else:
                assert key not in MATCH_ONLY - EITHER, f"{where}: a match key cannot be assigned"
            if key == "MODE":
                assert re.fullmatch(r"0[0-7]{3}", value), f"{where}: MODE must be octal"
            if key == "GROUP":
                assert value == "tokenagent", f"{where}: the station group is tokenagent"
            if key == "LABEL":
                labels.add(value)
            if key == "GOTO":
                gotos.append((number, value))
            if key == "ATTR" and attribute in ("idVendor", "idProduct"):
                for item in value.split("|"):
                    assert re.fullmatch(r"[0-9a-f]{4}", item), f"{where}: {item!r} is not 4 lower-case hex digits"
    for number, target in gotos:
        assert target in labels, f"line {number}: GOTO {target} has no LABEL"


def test_every_rule_follows_udevs_syntax() -> None:
    check_syntax()


@pytest.mark.parametrize(
    ("broken", "said"),
    [
        ('SUBSYSTEM=="usb", MODE=0660', "not KEY"),
        ('SUBSYSTEM=="usb", MODE="0660",', "trailing comma"),
        ('SUBSYSTEM=="usb" MODE="0660"', "',' expected"),
        ('SUBSYSTEM=="usb", DRIVERS="usb"', "a match key cannot be assigned"),
        ('ATTR=="1050", MODE="0660"', "needs an {attribute}"),
        ('ATTR{idVendor}=="1O50", MODE="0660"', "not 4 lower-case hex digits"),
        ('SUBSYSTEM!="usb", GOTO="nowhere"', "has no LABEL"),
        ('SUBSYSTEM=="usb", MODE="660"', "MODE must be octal"),
        ('SUBSYSTEM=="usb", COLOUR="red"', "not a udev key"),
    ],
)
def test_the_syntax_check_catches_mistakes(broken: str, said: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(said)):
        check_syntax(broken)


def rule_ids() -> set[tuple[str, str]]:
    pairs = set()
    for _, tokens in rules():
        values = {attribute: value for key, attribute, _, value in tokens if key == "ATTR"}
        if "idVendor" in values:
            pairs.update((values["idVendor"], product) for product in values["idProduct"].split("|"))
    return pairs


def test_the_rules_name_exactly_the_devices_checked() -> None:
    assert rule_ids() == set(EXPECTED)


def independent_names() -> dict[tuple[str, str], list[str]]:
    """vendor:product -> the names the CCID driver's list and usb.ids give it (lower case)."""
    names: dict[tuple[str, str], list[str]] = {}
    if CCID_PLIST.exists():
        plist = plistlib.loads(CCID_PLIST.read_bytes())
        for vendor, product, name in zip(
            plist["ifdVendorID"], plist["ifdProductID"], plist["ifdFriendlyName"], strict=True
        ):
            key = (vendor.lower().removeprefix("0x"), product.lower().removeprefix("0x"))
            names.setdefault(key, []).append(name.lower())
    if USB_IDS.exists():
        vendor = ""
        for line in USB_IDS.read_text(errors="replace").splitlines():
            if re.match(r"^[0-9a-f]{4}\s", line):
                vendor = line[:4]
            elif re.match(r"^\t[0-9a-f]{4}\s", line) and vendor:
                names.setdefault((vendor, line[1:5]), []).append(line[5:].strip().lower())
            elif line.startswith("C "):  # the device classes follow the vendors
                break
    return names


@pytest.mark.skipif(not (CCID_PLIST.exists() and USB_IDS.exists()), reason="libccid and hwdata: run make setup")
def test_every_usb_id_is_the_device_its_comment_names() -> None:
    names = independent_names()
    for pair, word in EXPECTED.items():
        found = names.get(pair, [])
        assert any(word in name for name in found), f"{pair[0]}:{pair[1]} is {found or 'unknown'}, not {word}"


def test_udevadm_verify_where_udevadm_has_it() -> None:
    udevadm = shutil.which("udevadm")
    if udevadm is None:
        pytest.skip("no udevadm")
    if "verify" not in subprocess.run([udevadm, "--help"], capture_output=True, text=True).stdout:
        pytest.skip("udevadm verify needs systemd 254 (Debian 12 has 252): the syntax test applies its rules")
    done = subprocess.run([udevadm, "verify", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
