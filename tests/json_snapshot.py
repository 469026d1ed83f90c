"""The `--json` output of every command on fixed inputs, to compare two versions of the code.

    python tests/json_snapshot.py setup WORK            # tokens, keys, requests, certificates (once)
    python tests/json_snapshot.py run WORK OUT [--code DIR]

`run` copies WORK to a fixed place, runs each command of `COMMANDS` there with the tokenagent
found in DIR (a checkout; default: this one) and writes one file per command to OUT. Run it on
two checkouts and `diff -r` the two OUT directories: a refactoring that keeps behaviour gives no
difference. What changes from run to run whatever the code (new keys, ECDSA signatures, random CMC
nonces, times, process IDs) is replaced by placeholders; everything else is compared byte for byte.
Used for issue 13 (structure): see its closing note.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ca import OpenSslCA  # noqa: E402

COPY = Path("/tmp/tokenagent-json-snapshot")
PIN = "1234"
TOKENS = ["snap-user", "snap-agent"]
USER_INF = """[NewRequest]
Subject = "CN={name},OU=Users,DC=example,DC=com"
KeyAlgorithm = ECDSA_P256
KeyContainer = {name}
FriendlyName = "{name} logon"
RequestType = {kind}
{extra}
[Extensions]
2.5.29.17 = "{{text}}"
_continue_ = "UPN={name}@example.com&"
_continue_ = "email={name}@example.com"
2.5.29.37 = "{{text}}1.3.6.1.4.1.311.20.2.2,1.3.6.1.5.5.7.3.2"
[RequestAttributes]
CertificateTemplate = SmartcardLogon
"""
AGENT_INF = """[NewRequest]
Subject = "CN=Snapshot Agent,O=Example"
KeyLength = 2048
KeyContainer = snap-agent-key
"""
#: Field names whose values depend on fresh randomness (keys, ECDSA signatures, nonces) or time.
VOLATILE = {
    "key_id", "sha256", "base64", "der_hex", "request_base64", "request_sha256", "public_key_sha256",
    "private_key_uri", "certificate_uri", "created", "temporary_id", "pid", "key_identifier",
    "signature", "value_hex", "sender_nonce", "transaction_id", "uri",
}  # fmt: skip


def tokenagent(work: Path, code: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        SOFTHSM2_CONF=str(work / "softhsm" / "softhsm2.conf"),
        TOKENAGENT_MODULE=_module(),
        TOKENAGENT_STATE_DIR=str(work / "state"),
        XDG_CONFIG_HOME=str(work / "config"),
        PYTHONPATH=str(code),
        PIN=PIN,
    )
    env.pop("TOKENAGENT_PIN_SOURCE", None)
    return subprocess.run(
        [sys.executable, "-m", "tokenagent", *args], env=env, capture_output=True, text=True, check=False,
        stdin=subprocess.DEVNULL, cwd=work,
    )  # fmt: skip


def _module() -> str:
    for candidate in ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"):
        if Path(candidate).exists():
            return candidate
    raise SystemExit("SoftHSM is not installed: run make setup")


def setup(work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    subprocess.run(["bash", str(ROOT / "softhsm" / "softhsm-env.sh"), str(work / "softhsm"), *TOKENS], check=True,
                   capture_output=True)  # fmt: skip
    code = ROOT

    def ok(*args: str) -> subprocess.CompletedProcess[str]:
        run = tokenagent(work, code, *args)
        if run.returncode != 0:
            raise SystemExit(f"setup: tokenagent {' '.join(args)} failed: {run.stderr}")
        return run

    ca = OpenSslCA.create(work / "ca")
    (work / "agent.inf").write_text(AGENT_INF)
    ok("new", "agent.inf", "agent.req", "--token", "snap-agent", "--pin-source", "env:PIN")
    ca.issue(work / "agent.req", work / "agent.cer", extensions="extendedKeyUsage = 1.3.6.1.4.1.311.20.2.1",
             copy_extensions=False)  # fmt: skip
    ok("accept", "agent.cer", "--token", "snap-agent", "--pin-source", "env:PIN")
    for name, kind, extra in (("ada", "PKCS10", ""), ("bob", "PKCS10", ""), ("cyd", "PKCS10", "")):
        (work / f"{name}.inf").write_text(USER_INF.format(name=name, kind=kind, extra=extra))
        ok("new", f"{name}.inf", f"{name}.req", "--token", "snap-user", "--pin-source", "env:PIN")
    (work / "ada-cmc.inf").write_text(USER_INF.format(name="ada-cmc", kind="CMC", extra='RequesterName = "EX\\ada"'))
    ok("sign", "ada.req", "ada.p7", "--binary", "--agent", "pkcs11:token=snap-agent;object=snap-agent-key",
       "--pin-source", "env:PIN", "--requester", "EX\\ada", "--yes")  # fmt: skip
    ok("sign", "bob.req", "bob.cmc", "--binary", "--agent", "pkcs11:token=snap-agent;object=snap-agent-key",
       "--pin-source", "env:PIN", "--requester", "EX\\bob", "--format", "cmc", "--yes")  # fmt: skip
    ada = ca.issue(work / "ada.req", work / "ada.cer")
    ca.issue(work / "bob.req", work / "bob.cer")
    ca.p7b([work / "bob.cer", ca.sub_cert, ca.root_cert], work / "bob.p7b")
    ca.cmc_response([ada, ca.sub_der], work / "ada.rsp")
    for name in ("dan", "eve"):
        (work / f"{name}.inf").write_text(USER_INF.format(name=name, kind="PKCS10", extra=""))
    shutil.copy(ca.root_cert, work / "root.pem")
    (work / "garbage.bin").write_bytes(b"\x30\x82\x01\x00garbage")


#: (name, arguments): run in order in a fresh copy of WORK.
COMMANDS: list[tuple[str, list[str]]] = [
    ("tokens", ["tokens"]),
    # not `tokens --mechanisms`: SoftHSM 2.6.1 reports different flag bits for its EC mechanisms from
    # one process to the next (EC_F_2M, EC_UNCOMPRESS, ENCAPSULATE come and go), so it never compares
    ("objects-user", ["objects", "--token", "snap-user", "--pin-source", "env:PIN"]),
    ("objects-agent-public", ["objects", "--token", "snap-agent", "--no-login"]),
    ("inf-show", ["inf", "show", "ada.inf"]),
    ("inf-show-cmc", ["inf", "show", "ada-cmc.inf"]),
    ("new-dry-run", ["new", "dan.inf", "--dry-run", "--token", "snap-user", "--pin-source", "env:PIN"]),
    ("new-dry-run-refused", ["new", "ada.inf", "--dry-run", "--token", "snap-user", "--pin-source", "env:PIN"]),
    ("pending", ["pending"]),
    ("show-pkcs10", ["show", "ada.req"]),
    ("show-pkcs7", ["show", "ada.p7"]),
    ("show-cmc", ["show", "bob.cmc"]),
    ("show-certificate", ["show", "ada.cer"]),
    ("show-p7b", ["show", "bob.p7b"]),
    ("show-cmc-response", ["show", "ada.rsp"]),
    ("accept-cer", ["accept", "ada.cer", "--token", "snap-user", "--pin-source", "env:PIN"]),
    ("accept-again", ["accept", "ada.cer", "--token", "snap-user", "--pin-source", "env:PIN"]),
    ("accept-p7b-chain", ["accept", "bob.p7b", "--chain", "--token", "snap-user", "--pin-source", "env:PIN"]),
    ("repair-dry-run", ["repair", "ada.cer", "--dry-run", "--token", "snap-user", "--pin-source", "env:PIN"]),
    ("repair", ["repair", "bob.cer", "--token", "snap-user", "--pin-source", "env:PIN"]),
    ("pending-after-accept", ["pending"]),
    ("sign-pkcs7", ["sign", "cyd.req", "--agent", "pkcs11:token=snap-agent;object=snap-agent-key",
                    "--pin-source", "env:PIN", "--requester", "EX\\cyd", "--yes"]),
    ("sign-cmc-append", ["sign", "bob.cmc", "--agent", "pkcs11:token=snap-agent;object=snap-agent-key",
                         "--pin-source", "env:PIN", "--yes"]),
    ("new", ["new", "eve.inf", "eve.req", "--token", "snap-user", "--pin-source", "env:PIN", "-f"]),
    ("new-cmc-agent", ["new", "ada-cmc.inf", "ada-cmc.req", "--token", "snap-user", "--pin-source", "env:PIN",
                       "--agent", "pkcs11:token=snap-agent;object=snap-agent-key", "--agent-pin-source", "env:PIN"]),
    ("revoke-request", ["revoke-request", "--cert", "ada.cer", "--agent",
                        "pkcs11:token=snap-agent;object=snap-agent-key", "--pin-source", "env:PIN"]),
    ("pending-delete", ["pending", "--delete", "4"]),
    ("show-accept-response", ["accept", "ada.rsp", "--token", "snap-user", "--pin-source", "env:PIN"]),
    ("error-no-token", ["objects", "--token", "no-such-token"]),
    ("error-garbage", ["show", "garbage.bin"]),
    ("error-bad-pin", ["objects", "--token", "snap-user", "--pin-source", "env:NOPE"]),
    ("error-accept-unknown-key", ["accept", "root.pem", "--token", "snap-user", "--pin-source", "env:PIN"]),
]  # fmt: skip


def run(work: Path, out: Path, code: Path) -> None:
    if COPY.exists():
        shutil.rmtree(COPY)
    shutil.copytree(work, COPY, symlinks=True)
    conf = COPY / "softhsm" / "softhsm2.conf"
    conf.write_text(conf.read_text().replace(str(work / "softhsm"), str(COPY / "softhsm")))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for number, (name, args) in enumerate(COMMANDS, start=1):
        done = tokenagent(COPY, code, *args, "--json")
        text = f"exit {done.returncode}\n" + _masked(done.stdout)
        (out / f"{number:02d}-{name}.json").write_text(text)


def _masked(stdout: str) -> str:
    """Volatile values, wherever they appear in the output, replaced by <name> placeholders."""
    try:
        data = json.loads(stdout)
    except json.JSONDecodeError:
        return stdout
    found: dict[str, str] = {}
    _collect(data, found)
    text = json.dumps(data, indent=1, sort_keys=False)
    for value, name in sorted(found.items(), key=lambda item: -len(item[0])):
        text = text.replace(value, f"<{name}>")
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", "<time>", text) + "\n"


def _collect(value: object, found: dict[str, str], key: str = "") -> None:
    if isinstance(value, dict):
        for name, item in value.items():
            _collect(item, found, name)
    elif isinstance(value, list):
        for item in value:
            _collect(item, found, key)
    elif key in VOLATILE and isinstance(value, (str, int)) and len(str(value)) >= 4:
        found.setdefault(str(value), key)


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "setup":
        setup(Path(sys.argv[2]).resolve())
    elif len(sys.argv) >= 4 and sys.argv[1] == "run":
        code = Path(sys.argv[sys.argv.index("--code") + 1]).resolve() if "--code" in sys.argv else ROOT
        run(Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve(), code)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
