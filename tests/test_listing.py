"""`tokens` and `objects`, human and JSON, checked against pkcs11-tool on the same tokens."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import USER_PIN, SoftHSM, have, pkcs11_tool

pytestmark = pytest.mark.skipif(not have("pkcs11-tool"), reason="pkcs11-tool (opensc) not installed")


def parse_pkcs11_tool_slots(text: str) -> list[dict[str, str]]:
    tokens = []
    for block in re.split(r"^Slot \d+ ", text, flags=re.M)[1:]:
        fields = dict(
            re.findall(r"^\s+(token label|token manufacturer|token model|serial num)\s*: (.*)$", block, flags=re.M)
        )
        if fields:
            tokens.append({k: v.strip() for k, v in fields.items()})
    return tokens


def parse_pkcs11_tool_objects(text: str) -> list[dict[str, str]]:
    objects = []
    for header, body in re.findall(r"^(\w[\w ]* Object;?[^\n]*)\n((?:[ \t]+[^\n]*\n?)*)", text, flags=re.M):
        fields = {k.strip(): v.strip() for k, v in re.findall(r"^\s+([\w ]+):\s+(.*)$", body, flags=re.M)}
        objects.append({"header": header.strip(), **fields})
    return objects


def our_tokens(cli) -> list[dict]:
    run = cli("tokens", "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    return [s["token"] for m in data["modules"] for s in m["slots"] if s["token"] and s["token"]["initialized"]]


def test_tokens_json_matches_pkcs11_tool_list(cli, softhsm: SoftHSM) -> None:
    theirs = parse_pkcs11_tool_slots(pkcs11_tool(softhsm, "-L", login=False))
    ours = our_tokens(cli)
    assert sorted(
        (t["token label"], t["serial num"], t["token manufacturer"], t["token model"]) for t in theirs
    ) == sorted((t["label"], t["serial"], t["manufacturer"], t["model"]) for t in ours)
    for token in ours:
        assert token["pin"]["login_required"] and token["pin"]["initialized"]
        assert token["uri"].startswith("pkcs11:") and f"serial={token['serial']}" in token["uri"]


def test_tokens_human_output_shows_the_same_tokens(cli, softhsm: SoftHSM) -> None:
    run = cli("tokens")
    assert run.returncode == 0, run.stderr
    for token in parse_pkcs11_tool_slots(pkcs11_tool(softhsm, "-L", login=False)):
        assert re.search(rf"token label\s+: {re.escape(token['token label'])}$", run.stdout, flags=re.M)
        assert re.search(rf"serial\s+: {token['serial num']}$", run.stdout, flags=re.M)
    assert "(token not initialized)" in run.stdout  # SoftHSM's spare slot


def test_mechanisms_match_pkcs11_tool(cli, softhsm: SoftHSM) -> None:
    text = pkcs11_tool(softhsm, "-M", login=False)
    theirs = [line for line in text.split("Supported mechanisms:")[1].splitlines() if line.strip()]
    run = cli("tokens", "--mechanisms", "--json")
    main = next(
        t
        for m in json.loads(run.stdout)["modules"]
        for s in m["slots"]
        if (t := s["token"]) and t["label"] == "ta-main"
    )
    mechanisms = {m["name"]: m for m in main["mechanisms"]}
    assert len(mechanisms) == len(theirs)
    rsa_gen = next(line for line in theirs if line.strip().startswith("RSA-PKCS-KEY-PAIR-GEN"))
    low, high = re.search(r"keySize=\{(\d+),(\d+)\}", rsa_gen).groups()
    assert mechanisms["CKM_RSA_PKCS_KEY_PAIR_GEN"]["min_key_size"] == int(low)
    assert mechanisms["CKM_RSA_PKCS_KEY_PAIR_GEN"]["max_key_size"] == int(high)
    assert "GENERATE_KEY_PAIR" in mechanisms["CKM_EC_KEY_PAIR_GEN"]["flags"]
    assert "CKM_ECDSA" in mechanisms and "CKM_ECDSA_SHA256" not in mechanisms  # SoftHSM 2.6 fact


CLASS_OF = {"Private Key": "private-key", "Public Key": "public-key", "Certificate": "certificate"}
ACCESS_FLAGS = {
    "sensitive": "sensitive",
    "always sensitive": "always_sensitive",
    "never extractable": "never_extractable",
    "local": "local",
    "extractable": "extractable",
    "always authenticate": "always_authenticate",
}
USAGES = {"encrypt", "decrypt", "sign", "verify", "wrap", "unwrap", "derive"}


def test_objects_json_matches_pkcs11_tool(cli, softhsm: SoftHSM) -> None:
    theirs = parse_pkcs11_tool_objects(pkcs11_tool(softhsm, "-O"))
    run = cli("objects", "--token", "ta-main", "--pin-source", "env:P", "--json", P=USER_PIN)
    assert run.returncode == 0, run.stderr
    ours = json.loads(run.stdout)["objects"]
    assert len(ours) == len(theirs) == 5

    def key(obj_class: str, label: str, ident: str) -> tuple[str, str, str]:
        return (obj_class, label, ident)

    their_index = {}
    for obj in theirs:
        kind = next(v for k, v in CLASS_OF.items() if obj["header"].startswith(k))
        their_index[key(kind, obj["label"], obj["ID"])] = obj
    our_index = {key(o["class"], o["label"], o["id"]): o for o in ours}
    assert set(our_index) == set(their_index)

    for ident, obj in our_index.items():
        their = their_index[ident]
        if obj["class"] == "certificate":
            assert obj["certificate"]["subject"] == "CN=tokenagent test, O=Test"
            assert obj["uri"].endswith(";id=%03;object=test-cert;type=cert")
            continue
        assert obj["key_type"] in their["header"]
        assert set(their["Usage"].split(", ")) & USAGES == set(obj["usage"]) & USAGES
        access = {ACCESS_FLAGS[a] for a in their.get("Access", "").split(", ") if a in ACCESS_FLAGS}
        assert access == {name for name in ACCESS_FLAGS.values() if obj["flags"].get(name)}
    assert our_index[key("private-key", "rsa-key", "01")]["key_size"] == 2048
    assert our_index[key("public-key", "ec-key", "02")]["curve"] == "secp256r1"


def test_objects_human_output(cli) -> None:
    run = cli("objects", "--token", "ta-main", "--pin-source", "env:P", P=USER_PIN)
    assert run.returncode == 0, run.stderr
    assert "[logged in]" in run.stdout
    assert re.search(r"private-key\s+RSA 2048\s+id=01\s+label='rsa-key'", run.stdout)
    assert re.search(r"public-key\s+EC 256 secp256r1\s+id=02\s+label='ec-key'", run.stdout)
    assert "subject: CN=tokenagent test, O=Test" in run.stdout
    assert "not extractable" in run.stdout
    only_certs = cli("objects", "--token", "ta-main", "--no-login", "--type", "certificate")
    assert "certificate" in only_certs.stdout and "public-key" not in only_certs.stdout


def test_empty_token(cli) -> None:
    run = cli("objects", "--token", "ta-second", "--no-login")
    assert run.returncode == 0 and "(no objects)" in run.stdout
