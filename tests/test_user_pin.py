"""A blank card's user PIN: generated, set with C_InitPIN by the SO, delivered once (token/user_pin.py).

The token is ta-blank of the session's SoftHSM (these tests alone change its user PIN);
pkcs11-tool checks that the new PIN logs in."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SO_PIN, SoftHSM
from tokenagent.errors import OutputError, PinIncorrectError
from tokenagent.token.library import TokenHandle, TokenSelector, modules_for, select_token
from tokenagent.token.pins import Pin, literal_pin_source
from tokenagent.token.user_pin import deliver_pin, generate_pin, init_user_pin, pin_length_range

TOKEN = "ta-blank"


@pytest.fixture()
def token(softhsm: SoftHSM) -> SoftHSM:
    return softhsm


def handle_for(token: SoftHSM) -> TokenHandle:
    selector = TokenSelector.parse(TOKEN)
    return select_token(selector, modules_for([token.module], selector))


def logs_in(token: SoftHSM, pin: str) -> bool:
    done = subprocess.run(
        ["pkcs11-tool", "--module", token.module, "--token-label", TOKEN, "--login", "--pin", pin, "--list-objects"],
        capture_output=True, text=True, env=token.env(), check=False,
    )  # fmt: skip
    return done.returncode == 0


def test_a_generated_pin_set_by_the_so_logs_in(token: SoftHSM) -> None:
    handle = handle_for(token)
    low, high = pin_length_range(handle)
    assert (low, high) == (4, 255)  # SoftHSM's CK_TOKEN_INFO
    pin = generate_pin(handle)
    assert len(pin.reveal()) == 8 and pin.reveal().isdigit()
    assert len({generate_pin(handle).reveal() for _ in range(20)}) > 15  # 10^8 PINs: repeats are rare
    init_user_pin(handle, literal_pin_source(SO_PIN), pin)
    assert logs_in(token, pin.reveal())
    assert not logs_in(token, "1234")  # the old user PIN no longer works


def test_a_short_request_is_raised_to_the_tokens_minimum(token: SoftHSM) -> None:
    assert len(generate_pin(handle_for(token), length=2).reveal()) == 4


def test_a_wrong_so_pin_is_tried_once_and_changes_nothing(token: SoftHSM) -> None:
    handle = handle_for(token)
    before = generate_pin(handle)
    init_user_pin(handle, literal_pin_source(SO_PIN), before)
    with pytest.raises(PinIncorrectError, match="wrong SO PIN") as raised:
        init_user_pin(handle, literal_pin_source("00000000"), Pin("99999999"))
    assert "00000000" not in str(raised.value) and "99999999" not in str(raised.value)
    assert logs_in(token, before.reveal())


def test_the_pin_file_is_0600_and_appended(tmp_path: Path) -> None:
    pins = tmp_path / "pins.txt"
    assert deliver_pin(Pin("11112222"), "card-1", pin_file=pins, show=print) == f"written to {pins}"
    deliver_pin(Pin("33334444"), "card-2", pin_file=pins, show=print)
    assert stat.S_IMODE(pins.stat().st_mode) == 0o600
    assert pins.read_text() == "card-1\t11112222\ncard-2\t33334444\n"


def test_a_pin_file_others_can_read_is_refused(tmp_path: Path) -> None:
    pins = tmp_path / "pins.txt"
    pins.write_text("")
    pins.chmod(0o644)
    with pytest.raises(OutputError, match="readable by others"):
        deliver_pin(Pin("55556666"), "card-3", pin_file=pins, show=print)
    assert pins.read_text() == ""


def test_without_a_file_the_pin_is_shown_once(tmp_path: Path) -> None:
    shown: list[str] = []
    where = deliver_pin(Pin("77778888"), "card-4", pin_file=None, show=shown.append)
    assert where == "shown to the operator"
    assert len(shown) == 1 and "77778888" in shown[0] and "card-4" in shown[0]
