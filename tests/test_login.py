"""One login attempt per run: wrong PINs, PIN state flags, and a count of C_Login calls made by
OpenSC's pkcs11-spy (an independent recorder of every PKCS#11 call)."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest

from tests.conftest import LOGIN_PIN, SoftHSM
from tokenagent.errors import PinError, PinLockedError
from tokenagent.token.session import PinState, check_pin_state

WRONG_PIN = "wrong-Pin-0000"


def spy_module() -> str:
    found = glob.glob("/usr/lib/*-linux-gnu/pkcs11/pkcs11-spy.so") + glob.glob("/usr/lib*/pkcs11/pkcs11-spy.so")
    if not found:
        pytest.skip("OpenSC's pkcs11-spy.so is not installed")
    return found[0]


def spied(cli, softhsm: SoftHSM, log: Path, *args: str, **env: str):
    return cli(*args, "--module", spy_module(), PKCS11SPY=softhsm.module, PKCS11SPY_OUTPUT=str(log), **env)


def test_wrong_pin_is_one_login_one_line_and_does_not_lock(cli, softhsm: SoftHSM, tmp_path: Path) -> None:
    log = tmp_path / "spy.log"
    run = spied(cli, softhsm, log, "objects", "--token", "ta-login", "--pin-source", "env:P", "--json", P=WRONG_PIN)
    assert run.returncode == 7
    assert run.stderr.startswith("tokenagent: error: wrong PIN for token 'ta-login'")
    assert "will not retry" in run.stderr and "tries may be limited" in run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert WRONG_PIN not in run.stderr + run.stdout
    assert json.loads(run.stdout)["error"] == "PinIncorrectError"
    calls = log.read_text()
    assert calls.count("C_Login") == 1, calls
    assert "CKR_PIN_INCORRECT" in calls

    # SoftHSM now reports CKF_USER_PIN_COUNT_LOW; the next run warns before trying, then succeeds.
    tokens = json.loads(cli("tokens", "--json").stdout)
    states = [
        s["token"]["pin"]
        for m in tokens["modules"]
        for s in m["slots"]
        if s["token"] and s["token"]["label"] == "ta-login"
    ]
    assert states == [{**states[0], "count_low": True, "locked": False, "final_try": False}]
    again = cli("objects", "--token", "ta-login", "--pin-source", "env:P", "--json", P=LOGIN_PIN)
    assert again.returncode == 0, again.stderr
    assert "tries may be running low" in again.stderr


def test_successful_run_logs_in_exactly_once(cli, softhsm: SoftHSM, tmp_path: Path) -> None:
    log = tmp_path / "spy.log"
    run = spied(cli, softhsm, log, "objects", "--token", "ta-login", "--pin-source", "env:P", P=LOGIN_PIN)
    assert run.returncode == 0, run.stderr
    assert log.read_text().count("C_Login") == 1


def state(**flags: bool) -> PinState:
    base = dict(
        initialized=True,
        login_required=True,
        protected_authentication_path=False,
        count_low=False,
        final_try=False,
        locked=False,
        to_be_changed=False,
    )
    return PinState(**{**base, **flags})


def test_final_try_is_refused_unless_forced() -> None:
    with pytest.raises(PinLockedError, match="FINAL try"):
        check_pin_state(state(count_low=True, final_try=True), "'t'", force=False)
    assert "final PIN try" in check_pin_state(state(final_try=True), "'t'", force=True)[0]


def test_locked_and_uninitialized_pins_are_refused_even_with_force() -> None:
    with pytest.raises(PinLockedError, match="locked"):
        check_pin_state(state(locked=True), "'t'", force=True)
    with pytest.raises(PinError, match="not initialized"):
        check_pin_state(state(initialized=False), "'t'", force=True)


def test_pin_state_decodes_real_token_flags() -> None:
    # 0x1042d: what SoftHSM 2.6.1 reported after one wrong PIN (measured); 0x42d after a good one.
    assert PinState.from_flags(0x1042D).count_low and not PinState.from_flags(0x42D).count_low
    assert PinState.from_flags(0x42D | 0x20000).final_try
    assert PinState.from_flags(0x42D | 0x40000).locked
