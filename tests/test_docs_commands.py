"""docs/commands.md's worked examples, from the first token set-up to the end of the page (the CA
ones, shown as text, excepted), run as written, in order, on throw-away tokens, and print what the
page shows (issue 20). Variable parts are masked: numbers, hex strings (serials, IDs, thumbprints),
dates and times; a documented line with "..." is an elision and is not compared. When a command or
its output changes, this test says which."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.conftest import ROOT

FIRST, LAST = "The examples below use", "## Man pages"
MARK = "@@docs-command@@"


def documented() -> list[tuple[str, list[str]]]:
    """(command, the output lines the page shows for it) in page order."""
    text = (ROOT / "docs" / "commands.md").read_text()
    section = text[text.index(FIRST) : text.index(LAST)]
    found: list[tuple[str, list[str]]] = []
    for language, block in re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S):
        if language not in ("", "sh", "console"):  # ```text: an illustration, not run
            continue
        lines = block.split("\n")
        i = 0
        while i < len(lines):
            if not lines[i].startswith("$ "):
                i += 1
                continue
            command = lines[i][2:]
            while command.rstrip().endswith("\\"):
                i += 1
                command = command.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            output = []
            while i < len(lines) and not lines[i].startswith("$ "):
                if lines[i].strip():
                    output.append(lines[i])
                i += 1
            found.append((command, output))
    return found


def mask(line: str) -> str:
    line = re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d)?Z?", "<time>", line)
    line = re.sub(r"0x[0-9a-fA-F]+|\b[0-9a-fA-F:%]{8,}\b|%[0-9A-F]{2}(%[0-9A-F]{2})+", "<hex>", line)
    line = re.sub(r"\d+", "<n>", line)
    # a number is a run of hex digits too: SoftHSM's random slot IDs have 7 to 10 digits, so one run
    # masks them as <hex> and the next as <n> (seen: slot 1678564 against the page's slot 382874846)
    line = line.replace("<hex>", "<n>")
    line = re.sub(r"/\S*/(ta-commands|pytest-of-\w+)\S*", "<path>", line)
    return " ".join(line.split())


def test_commands_md_examples_run_as_written(tmp_path: Path) -> None:
    work = tmp_path / "checkout"
    shutil.copytree(ROOT / "docs" / "examples", work / "docs" / "examples")
    shutil.copytree(ROOT / "softhsm", work / "softhsm")
    commands = documented()
    script = "\n".join(
        f"echo '{MARK} {n}'\n{command.replace('/tmp/ta-commands', str(tmp_path / 'ta-commands'))} 2>&1"
        for n, (command, _) in enumerate(commands)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENAGENT_", "SOFTHSM2_"))}
    env["PATH"] = f"{Path(os.sys.executable).parent}:{env['PATH']}"
    env["COLUMNS"] = "200"
    run = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    pieces = run.stdout.split(f"{MARK} ")[1:]
    outputs = {int(piece.split("\n", 1)[0]): piece.split("\n", 1)[1] if "\n" in piece else "" for piece in pieces}
    problems = []
    for n, (command, shown) in enumerate(commands):
        actual = outputs.get(n)
        if actual is None:
            problems.append(f"`{command}` did not run")
            continue
        seen = [mask(line) for line in actual.splitlines()]
        for line in shown:
            if "..." in line:
                continue
            wanted = mask(line)
            if not any(wanted in got for got in seen):
                problems.append(f"`{command[:80]}`: the page shows {line.strip()!r}, the command printed:\n{actual}")
    assert not problems, "\n".join(problems[:5])
