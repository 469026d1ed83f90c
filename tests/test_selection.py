"""Token selection by label, serial and pkcs11: URI on real SoftHSM tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SoftHSM, make_softhsm, run_cli
from tokenagent.errors import AmbiguousTokenError, TokenNotFoundError
from tokenagent.token.library import TokenSelector, find_token, iter_tokens, modules_for


def handle_for(label: str):
    return next(h for h in iter_tokens(modules_for([], TokenSelector(None))) if h.label == label)


def test_select_by_label_and_by_serial(softhsm: SoftHSM) -> None:
    main = find_token("ta-main")
    assert main.label == "ta-main"
    assert find_token(main.serial).serial == main.serial


@pytest.mark.parametrize(
    "template",
    [
        "pkcs11:token={label}",
        "pkcs11:serial={serial}",
        "pkcs11:token={label};manufacturer=SoftHSM%20project;model=SoftHSM%20v2",
        "pkcs11:slot-id={slot}",
        "pkcs11:token={label};object=ignored;type=private",
        "pkcs11:serial={serial}?module-path={module}",
    ],
)
def test_select_by_uri(softhsm: SoftHSM, template: str) -> None:
    main = handle_for("ta-main")
    uri = template.format(label=main.label, serial=main.serial, slot=main.slot_id, module=softhsm.module)
    assert find_token(uri).serial == main.serial


def test_the_handles_own_uri_selects_it(softhsm: SoftHSM) -> None:
    main = handle_for("ta-second")
    assert find_token(str(main.uri())).serial == main.serial


def test_missing_token_names_the_selector_and_lists_tokens(softhsm: SoftHSM) -> None:
    with pytest.raises(TokenNotFoundError) as info:
        find_token("no-such-token")
    assert "no-such-token" in str(info.value) and "ta-main" in str(info.value)
    with pytest.raises(TokenNotFoundError):
        find_token("pkcs11:token=ta-main;model=Other")


def test_two_tokens_with_one_label_are_ambiguous(softhsm: SoftHSM) -> None:
    with pytest.raises(AmbiguousTokenError) as info:
        find_token("ta-twin")
    assert "2 tokens match" in str(info.value) and "serial" in str(info.value)


def test_no_selector_with_several_tokens_is_ambiguous(softhsm: SoftHSM) -> None:
    with pytest.raises(AmbiguousTokenError, match="choose one with --token"):
        find_token(None)


def test_cli_exit_codes_for_selection(cli) -> None:
    missing = cli("objects", "--token", "nope", "--no-login")
    assert missing.returncode == 6 and missing.stderr.count("\n") == 1
    twin = cli("objects", "--token", "ta-twin", "--no-login", "--json")
    assert twin.returncode == 6
    assert json.loads(twin.stdout)["error"] == "AmbiguousTokenError"
    bad_uri = cli("objects", "--token", "pkcs11:token=a;token=b")
    assert bad_uri.returncode == 2 and "repeats" in bad_uri.stderr


def test_the_only_token_is_chosen_without_selector(tmp_path: Path) -> None:
    single = make_softhsm(tmp_path / "single", ["only-one"])
    run = run_cli("objects", "--no-login", "--json", env=single.env())
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["token"]["label"] == "only-one"
    empty = make_softhsm(tmp_path / "empty", [])
    none = run_cli("objects", "--no-login", env=empty.env())
    assert none.returncode == 6 and "no initialized token" in none.stderr
