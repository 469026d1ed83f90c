"""Every PIN source against a real SoftHSM login, and the rules that keep PINs secret."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import LOGIN_PIN, SoftHSM, run_cli, run_in_terminal
from tokenagent.errors import PinError, UsageError
from tokenagent.token.pins import Pin, PinSource, parse_pin_source


def logged_in_listing(run) -> dict:
    assert run.returncode == 0, run.stderr
    listing = json.loads(run.stdout)
    assert listing["logged_in"] is True
    return listing


def assert_no_pin(*texts: str) -> None:
    for text in texts:
        assert LOGIN_PIN not in text


def test_env_source(cli) -> None:
    run = cli("objects", "--token", "ta-login", "--pin-source", "env:TA_PIN", "--json", TA_PIN=LOGIN_PIN)
    logged_in_listing(run)
    assert_no_pin(run.stdout, run.stderr)


def test_file_source_reads_the_first_line(cli, tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(LOGIN_PIN + "\nsecond line ignored\n")
    logged_in_listing(cli("objects", "--token", "ta-login", "--pin-source", f"file:{pin_file}", "--json"))
    logged_in_listing(cli("objects", "--token", "ta-login", "--pin-source", f"file://{pin_file}", "--json"))


def test_fd_source(softhsm: SoftHSM) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, (LOGIN_PIN + "\n").encode())
    os.close(write_end)
    try:
        run = run_cli(
            "objects",
            "--token",
            "ta-login",
            "--pin-source",
            f"fd:{read_end}",
            "--json",
            env=softhsm.env(),
            pass_fds=(read_end,),
        )
    finally:
        os.close(read_end)
    logged_in_listing(run)


def test_uri_pin_source_and_env_default(cli, tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(LOGIN_PIN)
    logged_in_listing(cli("objects", "--token", f"pkcs11:token=ta-login?pin-source={pin_file}", "--json"))
    run = cli("objects", "--token", "ta-login", "--json", TOKENAGENT_PIN_SOURCE="env:X_PIN", X_PIN=LOGIN_PIN)
    logged_in_listing(run)


def test_literal_pin_works_but_warns(cli) -> None:
    run = cli("objects", "--token", "ta-login", "--pin", LOGIN_PIN, "--json")
    logged_in_listing(run)
    assert "process list" in run.stderr
    assert_no_pin(run.stderr)


def test_prompt_on_a_real_terminal_does_not_echo(softhsm: SoftHSM) -> None:
    args = ["objects", "--token", "ta-login", "--json"]
    status, text, sent = run_in_terminal(args, softhsm.env(), b"PIN for token 'ta-login'", LOGIN_PIN)
    assert sent, text
    assert status == 0, text
    assert '"logged_in": true' in text
    assert_no_pin(text)  # getpass turned echo off


def test_no_terminal_and_no_source_fails_clearly(cli) -> None:
    run = cli("objects", "--token", "ta-login", "--login")
    assert run.returncode == 7
    assert "stdin is not a terminal" in run.stderr and "--pin-source" in run.stderr
    assert run.stderr.count("\n") == 1


def test_no_terminal_lists_public_objects_only_with_a_warning(cli) -> None:
    run = cli("objects", "--token", "ta-main", "--json")
    assert run.returncode == 0, run.stderr
    listing = json.loads(run.stdout)
    assert listing["logged_in"] is False
    assert {o["class"] for o in listing["objects"]} == {"public-key", "certificate"}
    assert "not logged in" in run.stderr


def test_pinpad_on_a_token_without_one_is_refused(cli) -> None:
    run = cli("objects", "--token", "ta-login", "--pin-source", "pinpad")
    assert run.returncode == 7 and "no PIN pad" in run.stderr


@pytest.mark.parametrize(
    ("source", "env", "message"),
    [
        ("env:UNSET_PIN_VAR", {}, "not set"),
        ("env:EMPTY_PIN", {"EMPTY_PIN": ""}, "empty PIN"),
        ("file:/nonexistent/pin", {}, "no such file"),
        ("fd:97", {}, "bad file descriptor"),
    ],
)
def test_unreadable_sources_are_pin_errors(cli, source: str, env: dict[str, str], message: str) -> None:
    run = cli("objects", "--token", "ta-login", "--pin-source", source, **env)
    assert run.returncode == 7, run.stderr
    assert message in run.stderr and run.stderr.count("\n") == 1


@pytest.mark.parametrize("text", ["env:", "file", "fd:x", "keyboard", ""])
def test_malformed_sources_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_pin_source(text)


def test_pin_and_pin_source_together_is_a_usage_error(cli) -> None:
    run = cli("objects", "--token", "ta-login", "--pin", "x", "--pin-source", "prompt")
    assert run.returncode == 2


def test_pin_objects_never_show_their_value() -> None:
    pin = Pin("hunter2")
    assert "hunter2" not in repr(pin) and "hunter2" not in str(pin) and "hunter2" not in f"{pin}"
    source = PinSource("literal", None, pin)
    assert "hunter2" not in repr(source) and "hunter2" not in source.describe()
    with pytest.raises(PinError) as info:
        PinSource("env", "TA_DEFINITELY_UNSET").read()
    assert "TA_DEFINITELY_UNSET" in str(info.value)
