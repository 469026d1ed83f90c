"""The README's "Using it" block runs as written, in order, and prints what it promises (issue 20):
the docs cannot drift from the tool again. Variable parts (serials, IDs, times) are not compared."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

TOKENAGENT = str(Path(sys.executable).parent / "tokenagent")  # the venv's console script


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using it") :]
    section = section[: section.index("\n## ", 3)]
    match = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert match, "README's Using it section has no sh block"
    return match.group(1)


def test_readme_using_it_runs_as_written(tmp_path: Path) -> None:
    script = readme_block().replace("/tmp/ta-readme", str(tmp_path / "ta-readme"))
    env = {name: value for name, value in os.environ.items() if not name.startswith(("TOKENAGENT_", "SOFTHSM2_"))}
    env["VIRTUAL_ENV_DISABLE_PROMPT"] = "1"
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    out = run.stdout + run.stderr
    # the shape of what each step prints
    assert re.search(r"token label\s+: user-card", out), out
    assert '"format_version": 1' in out  # objects --json
    assert "dry run" in out.lower() or "would" in out.lower() or "plan" in out.lower()
    assert re.search(r"pending request ID \d+", out), out
    assert "Certificate request self-signature verify OK" in out
    assert "Ada Lovelace smart-card logon" in out  # the certificate object, after accept
    assert "Traceback" not in out and "internal error" not in out
    assert (tmp_path / "ta-readme" / "work" / "ada.cer").exists()
    assert not (ROOT / "ada.req").exists()  # nothing lands in the checkout


def test_shell_completion_as_documented() -> None:
    text = (ROOT / "docs" / "commands.md").read_text()
    assert "_TOKENAGENT_COMPLETE=bash_source tokenagent" in text
    env = {**os.environ, "_TOKENAGENT_COMPLETE": "bash_source"}
    for shell in ("bash", "zsh", "fish"):
        env["_TOKENAGENT_COMPLETE"] = f"{shell}_source"
        run = subprocess.run([TOKENAGENT], env=env, capture_output=True, text=True)
        assert run.returncode == 0 and "_TOKENAGENT_COMPLETE" in run.stdout, (shell, run.stderr)
    words = subprocess.run(
        [TOKENAGENT],
        env={**os.environ, "_TOKENAGENT_COMPLETE": "bash_complete", "COMP_WORDS": "tokenagent acc", "COMP_CWORD": "1"},
        capture_output=True,
        text=True,
    )
    assert "accept" in words.stdout


def test_man_pages_for_every_command_render_without_warnings(tmp_path: Path) -> None:
    import shutil

    from tests.test_newcomer import _commands
    from tokenagent.cli import cli
    from tokenagent.cli.manpages import write_pages

    pages = {page.name: page for page in write_pages(tmp_path)}
    for name, command in _commands(cli):
        page = pages[f"tokenagent-{name.replace(' ', '-')}.1"]
        text = page.read_text()
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and not getattr(param, "hidden", False):
                    assert opt in text, (name, opt)
        if shutil.which("groff"):
            rendered = subprocess.run(
                [
                    "groff",
                    "-man",
                    "-Tutf8",
                    "-ww",
                    "-Wbreak",
                    "-z",
                    str(page),
                ]  # line filling is not an error, capture_output=True, text=True
            )
            assert rendered.returncode == 0 and not rendered.stderr, (page, rendered.stderr)
    assert "tokenagent.1" in pages


def test_the_demo_output_is_plain_pasteable_and_keeps_pins_out_of_argv(tmp_path: Path) -> None:
    """`make demo`'s story (softhsm/demo.sh) as a newcomer sees it piped: no colour codes, every shown
    command pasteable (URIs with ';' quoted), no PIN in a command line, pending IDs without gaps."""
    from tests.peers.djangoca import ensure_venv

    ensure_venv()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENAGENT_", "SOFTHSM2_"))}
    env["TOKENAGENT_DEMO_DIR"] = str(tmp_path / "demo")
    run = subprocess.run(["bash", "softhsm/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout + run.stderr
    assert "\x1b" not in out  # not a terminal: no ANSI codes
    shown = [line[2:] for line in out.splitlines() if line.startswith("$ ")]
    assert len(shown) >= 10
    for command in shown:
        unquoted = re.sub(r"'[^']*'", "", command)
        assert ";" not in unquoted, command  # a URI's ';' would end the command when pasted
        assert "pin-value" not in command, command  # the engine reads the PIN from a file
        if command.split()[0].endswith("tokenagent"):
            assert "--pin " not in command, command  # tokenagent takes PINs from env:, file: or fd:
    ids = [int(n) for n in re.findall(r"pending (?:request )?ID (\d+)", out)]
    assert ids == list(range(1, len(ids) + 1)), ids


def test_docs_link_only_to_what_a_clone_has() -> None:
    """Links to ../shared/... (the workplace's notes) or to files that do not exist break in a clone."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            if "shared/" in target or not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
    assert "not implemented yet" not in (ROOT / "docs" / "commands.md").read_text()


def test_install_is_quiet_and_says_what_it_needs() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)  # SPDX: no setuptools deprecation warning
    assert any(req.startswith("setuptools>=77") for req in project["build-system"]["requires"])
    makefile = (ROOT / "Makefile").read_text()
    assert "run 'make setup' once as root, or install sudo" in makefile
    assert "compileall" in makefile and "tokenagent.cli.manpages" in makefile
    assert "$(BIN)/python -m pytest\n" in makefile  # per-file progress, not -q's bare dots
