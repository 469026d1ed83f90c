"""The file: connector (also the default without --config): the CA is a person who takes the request
file away and puts the answer beside it. Issued here by tests/ca.py (`openssl ca`)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.ca import OpenSslCA
from tests.conftest import ROOT, USER_PIN, Run, SoftHSM, pkcs11_tool, run_cli

INF = ROOT / "docs" / "examples" / "smartcard-logon.inf"


def in_directory(softhsm: SoftHSM, cwd: Path, *args: str) -> Run:
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "tokenagent", *args],
        cwd=cwd,
        env={**softhsm.env(TA_PIN=USER_PIN), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def test_enroll_without_config_writes_the_request_and_resume_installs_the_answer(
    softhsm: SoftHSM, tmp_path: Path
) -> None:
    inf = tmp_path / "file.inf"
    inf.write_text(INF.read_text().replace("ada-logon", "file-drop"))
    user = ["--token", "ta-causer", "--pin-source", "env:TA_PIN"]
    run = in_directory(softhsm, tmp_path, "enroll", str(inf), *user, "--json")
    assert run.returncode == 14, run.stderr
    details = json.loads(run.stdout)["details"]
    assert details["state"] == "pending" and details["ca"] == f"file:{tmp_path}"
    written = re.search(r"request written to (\S+\.req)", run.stderr)
    assert written, run.stderr
    request = Path(written.group(1))
    assert request.parent == tmp_path
    verified = subprocess.run(["openssl", "req", "-in", str(request), "-verify", "-noout"], capture_output=True)
    assert verified.returncode == 0, verified.stderr

    # asked too early: still pending, nothing installed
    early = run_cli("enroll", "--resume", "--pin-source", "env:TA_PIN", env=softhsm.env(TA_PIN=USER_PIN))
    assert early.returncode == 14 and "no answer beside" in early.stdout

    # the person brings back the CA's answer, named like the request
    ca = OpenSslCA.create(tmp_path / "ca")
    ca.issue(
        request.read_bytes().replace(b"NEW CERTIFICATE REQUEST", b"CERTIFICATE REQUEST"), request.with_suffix(".cer")
    )
    done = run_cli("enroll", "--resume", "--pin-source", "env:TA_PIN", env=softhsm.env(TA_PIN=USER_PIN))
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"pending request {details['pending_id']}" in done.stdout and "installed" in done.stdout
    listing = pkcs11_tool(softhsm, "-O", "--type", "cert", token="ta-causer", login=False)
    assert "Ada Lovelace smart-card logon" in listing


def test_submit_to_a_directory_and_a_garbage_answer(softhsm: SoftHSM, tmp_path: Path) -> None:
    """submit --config file:DIR; an answer file that is not a certificate is an input error, the
    request stays."""
    key = tmp_path / "k.pem"
    request = tmp_path / "r.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-subj", "/CN=dropped", "-out", str(request)],
        check=True, capture_output=True,
    )  # fmt: skip
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    env = softhsm.env()
    run = run_cli("submit", str(request), "--config", f"file:{outbox}", "--json", env=env)
    assert run.returncode == 14, run.stderr
    details = json.loads(run.stdout)["details"]
    dropped = outbox / f"{details['request_id']}.req"
    assert dropped.is_file()
    missing = run_cli("submit", str(request), "--config", f"file:{tmp_path / 'nowhere'}", env=env)
    assert missing.returncode == 18 and "is not a directory" in missing.stderr
    # a second submit of the same request writes the same file again (idempotent)
    again = run_cli("submit", str(request), "--config", f"file:{outbox}", env=env)
    assert again.returncode == 14
    assert sorted(p.name for p in outbox.iterdir()) == [dropped.name]
    # retrieve by the file's name: garbage beside it
    dropped.with_suffix(".cer").write_bytes(b"\x30\x82garbage")
    garbage = run_cli("retrieve", details["request_id"], "--config", f"file:{outbox}", env=env)
    assert garbage.returncode == 4, garbage.stderr
    assert len(garbage.stderr.strip().splitlines()) == 1
