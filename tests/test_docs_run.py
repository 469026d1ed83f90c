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
