"""What a new user tripped over (issue 20): help that names only real options, one JSON document per
run, a quiet end when the reader of the output goes away, the same agent option names everywhere."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.conftest import ROOT, USER_PIN, SoftHSM, run_cli
from tokenagent.cli import cli


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
        else:
            found.append((f"{prefix}{name}", command))
    return found


@pytest.mark.parametrize(("name", "command"), _commands(cli), ids=[n for n, _ in _commands(cli)])
def test_help_mentions_only_options_the_command_has(name: str, command: click.Command) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tokenagent", *name.split(), "--help"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    own = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    own |= {opt for opt in ("--help", "-v", "--verbose", "--version")}
    commands = "|".join(re.escape(n) for n, _ in _commands(cli))
    text = re.sub(rf"`?(?:tokenagent\s+)?(?:{commands})\s+--[a-z][a-z0-9-]*", "", run.stdout)  # another command's
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    assert mentioned <= own, f"`{name} --help` mentions {sorted(mentioned - own)}, which it does not have"


def test_agent_token_and_pin_options_have_one_name_everywhere() -> None:
    for name, command in _commands(cli):
        opts = {opt for param in command.params for opt in param.opts}
        if "--agent" in opts:
            assert {"--agent-token", "--agent-pin-source"} <= opts, name


def test_a_refused_dry_run_prints_one_json_document(softhsm: SoftHSM, tmp_path: Path) -> None:
    inf = tmp_path / "small.inf"
    inf.write_text('[NewRequest]\nSubject = "CN=x"\nKeyAlgorithm = RSA\nKeyLength = 256\n')  # below SoftHSM's range
    env = softhsm.env(PIN=USER_PIN)
    run = run_cli("new", str(inf), "--dry-run", "--json", "--token", "ta-main", "--pin-source", "env:PIN", env=env)
    assert run.returncode != 0
    document = json.loads(run.stdout)  # exactly one document: json.loads refuses trailing data
    assert isinstance(document["error"], dict), run.stdout + run.stderr
    assert document["error"]["exit_code"] == run.returncode
    assert len(run.stderr.strip().splitlines()) == 1


def test_a_closed_pipe_ends_quietly(softhsm: SoftHSM) -> None:
    env = softhsm.env(PIN=USER_PIN)
    script = f"{sys.executable} -m tokenagent tokens | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.stdout.strip() in ("0", "141"), done.stdout  # 0: everything fitted in the pipe's buffer
    assert "error" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_status_line_before_key_generation_on_a_terminal_only(softhsm: SoftHSM, tmp_path: Path) -> None:
    from tests.conftest import run_in_terminal

    inf = tmp_path / "status.inf"
    inf.write_text('[NewRequest]\nSubject = "CN=status"\nKeyAlgorithm = ECDSA_P256\n')
    env = softhsm.env(PIN=USER_PIN)
    args = ["new", str(inf), str(tmp_path / "t.req"), "--token", "ta-main", "--pin-source", "env:PIN"]
    code, shown, _ = run_in_terminal(args, env, b"\x00never", "")
    assert code == 0, shown
    assert "tokenagent: generating the ECDSA_P256 key on 'ta-main'" in shown
    quiet = run_cli("new", str(inf), str(tmp_path / "p.req"), *args[3:], env=env)  # not a terminal
    assert quiet.returncode == 0 and "generating" not in quiet.stderr + quiet.stdout


def test_inf_show_labels_fields_with_the_inf_keys() -> None:
    run = run_cli("inf", "show", str(ROOT / "docs" / "examples" / "smartcard-logon.inf"))
    assert run.returncode == 0, run.stderr
    labels = [line.split()[0] for line in run.stdout.splitlines()[1:] if line.startswith("  ") and line.split()]
    assert {"Subject", "KeySpec", "KeyContainer", "ProviderName", "HashAlgorithm"} <= set(labels)
    assert not any(re.fullmatch(r"[a-z]+(_[a-z0-9]+)+", label) for label in labels), labels  # no Python names


def test_every_command_prints_a_subject_in_the_same_order(softhsm: SoftHSM, tmp_path: Path) -> None:
    """certreq's order (the INF's) in `inf show`, `pending`, `show` of the request and of the certificate,
    and `objects`: CN first for an INF that writes CN first, as openssl x509 -subject prints it too."""
    from tests.ca import OpenSslCA

    inf = tmp_path / "order.inf"
    inf.write_text('[NewRequest]\nSubject = "CN=Order Test,OU=Users,DC=example,DC=com"\nKeyAlgorithm = ECDSA_P256\n'
                   "KeyContainer = order-test\n")  # fmt: skip
    env = softhsm.env(PIN=USER_PIN)
    pins = ["--token", "ta-new", "--pin-source", "env:PIN"]  # ta-new: tests never count its objects
    req = tmp_path / "order.req"
    assert run_cli("new", str(inf), str(req), *pins, env=env).returncode == 0
    cert = tmp_path / "order.pem"
    OpenSslCA.create(tmp_path / "ca").issue(req.read_bytes().replace(b"NEW CERTIFICATE", b"CERTIFICATE"), cert)
    assert run_cli("accept", str(cert), *pins, env=env).returncode == 0
    wanted = "CN=Order Test, OU=Users, DC=example, DC=com"
    shown_inf = run_cli("inf", "show", str(inf), env=env).stdout
    assert wanted in shown_inf
    assert json.loads(run_cli("show", str(req), "--json", env=env).stdout)["subject"] == wanted
    assert json.loads(run_cli("show", str(cert), "--json", env=env).stdout)["subject"] == wanted
    listed = json.loads(run_cli("objects", *pins, "--json", env=env).stdout)["objects"]
    assert wanted in [o["certificate"]["subject"] for o in listed if o["class"] == "certificate" and o["certificate"]]
    printed = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-subject"], capture_output=True, text=True
    )
    assert printed.stdout.strip().replace(" = ", "=") == f"subject={wanted}"


def test_a_token_not_found_says_which_modules_were_searched(softhsm: SoftHSM) -> None:
    """The smart-card provider searches OpenSC (and ykcs11 when it can list slots): a SoftHSM token is
    not there, and the message says where it looked and how to look elsewhere (never a crash when no
    pcscd runs for ykcs11)."""
    env = {k: v for k, v in softhsm.env(PIN=USER_PIN).items() if k != "TOKENAGENT_MODULE"}
    inf = ROOT / "docs" / "examples" / "smartcard-logon.inf"
    run = run_cli("new", str(inf), "--dry-run", "--token", "ta-main", "--pin-source", "env:PIN", env=env)
    assert run.returncode == 6, run.stderr  # TokenNotFoundError
    assert "modules searched: opensc-pkcs11" in run.stderr and "--module" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_a_dry_run_says_the_label_will_be_made_up(softhsm: SoftHSM, tmp_path: Path) -> None:
    inf = tmp_path / "nolabel.inf"
    inf.write_text('[NewRequest]\nSubject = "CN=nolabel"\nKeyAlgorithm = ECDSA_P256\n')
    env = softhsm.env(PIN=USER_PIN)
    run = run_cli("new", str(inf), "--dry-run", "--token", "ta-main", "--pin-source", "env:PIN", env=env)
    assert run.returncode == 0, run.stderr
    assert "label made up at generation" in run.stdout + run.stderr
    assert "tokenagent-" not in re.sub(r"tokenagent-<uuid>", "", run.stdout + run.stderr).replace("tokenagent: ", "")


def test_every_command_that_can_ask_takes_yes() -> None:
    import inspect

    for name, command in _commands(cli):
        source = inspect.getsource(inspect.getmodule(command.callback))  # type: ignore[arg-type]
        if "confirm(" in source:
            assert "--yes" in {opt for param in command.params for opt in param.opts}, name


def test_enroll_says_when_it_waits_for_the_ca_on_a_terminal(softhsm: SoftHSM, tmp_path: Path) -> None:
    from tests.conftest import run_in_terminal

    inf = tmp_path / "ca.inf"
    inf.write_text('[NewRequest]\nSubject = "CN=status-ca"\nKeyAlgorithm = ECDSA_P256\n')
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    # its own pending store: a request left with a CA here must not meet other tests' `enroll --resume`
    env = softhsm.env(PIN=USER_PIN, TOKENAGENT_STATE_DIR=str(tmp_path / "state"))
    args = ["enroll", str(inf), "--config", f"file:{outbox}", "--token", "ta-new", "--pin-source", "env:PIN"]
    code, shown, _ = run_in_terminal(args, env, b"\x00never", "")
    assert code == 14, shown  # pending: the file drop waits for a person
    assert "tokenagent: generating the ECDSA_P256 key" in shown
    assert f"tokenagent: sending the request to file:{outbox}" in shown
