"""`tokenagent inf show`: human and JSON output, exit codes, garbage input."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli

SEEDS = Path(__file__).parent / "data" / "inf" / "seeds"


def test_show_json_has_every_field_with_its_origin() -> None:
    run = run_cli("inf", "show", "--json", str(SEEDS / "reference-requestconfig.inf"))
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["format_version"] == 1 and data["file"].endswith("reference-requestconfig.inf")
    policy = data["policy"]
    assert policy["exportable"] == {"value": True, "source": "file", "line": 4, "note": None}
    assert policy["hash_algorithm"]["source"] == "default" and "sha1" in policy["hash_algorithm"]["note"]
    assert policy["key_usage"]["value"] == 0xF0
    assert policy["key_usage"]["names"] == [
        "digital_signature",
        "non_repudiation",
        "key_encipherment",
        "data_encipherment",
    ]
    assert policy["key_spec"]["value"] == "AT_KEYEXCHANGE"
    assert policy["subject"]["value"]["rdns"][0][0]["oid"] == "2.5.4.3"
    assert policy["extensions"]["value"][0]["usages"] == ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]
    assert data["warnings"][0]["line"] == 12
    assert "warning" in run.stderr and ":12:" in run.stderr


def test_show_human_output() -> None:
    run = run_cli("inf", "show", str(SEEDS / "reference-extensions-table.inf"))
    assert run.returncode == 0, run.stderr
    assert "CN=John Smith, CN=Users, DC=Contoso, DC=com" in run.stdout
    assert "[default: tokenagent default (certreq: sha1)]" in run.stdout
    assert "2.5.29.19 basic_constraints, critical  [line 21]" in run.stdout
    assert "UPN=User@Domain.com" in run.stdout


def test_errors_are_one_line_exit_3(tmp_path: Path) -> None:
    bad = tmp_path / "bad.inf"
    bad.write_text("[NewRequest]\nSubject=CN=x\nKeyLength=huge\n")
    run = run_cli("inf", "show", str(bad))
    assert run.returncode == 3
    assert (
        run.stderr
        == f"tokenagent: error: {bad}:3: KeyLength: 'huge' is not a number (decimal, or hexadecimal like 0xa0)\n"
    )
    missing = tmp_path / "nonewrequest.inf"
    missing.write_text('[Version]\nSignature="$Windows NT$"\n')
    run = run_cli("inf", "show", "--json", str(missing))
    assert run.returncode == 3 and json.loads(run.stdout)["hresult"] == "0xe0000102"


def test_garbage_truncated_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.inf"
    garbage.write_bytes(bytes(range(256)) * 4)
    run = run_cli("inf", "show", str(garbage))
    assert run.returncode == 3 and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    truncated = tmp_path / "truncated.inf"
    truncated.write_bytes((SEEDS / "reference-strings.inf").read_text().encode("utf-16")[:-3])
    run = run_cli("inf", "show", str(truncated))
    assert run.returncode == 3 and "UTF-16" in run.stderr
    run = run_cli("inf", "show", str(tmp_path / "absent.inf"))
    assert run.returncode == 4 and "cannot read INF file" in run.stderr
