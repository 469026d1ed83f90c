"""Module discovery from real p11-kit registry files pointing at the real SoftHSM module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import SoftHSM
from tokenagent.errors import ModuleError
from tokenagent.token.modules import discover_modules, parse_module_config, registered_modules, resolve_module


def write_module(directory: Path, name: str, body: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.module").write_text(body)


def test_parse_module_config_reads_pkcs11_conf_format() -> None:
    config = parse_module_config("# comment\nmodule: foo.so\nTrust-Policy: yes\n\ndisable-in: a, b\n")
    assert config == {"module": "foo.so", "trust-policy": "yes", "disable-in": "a, b"}


def test_registry_order_overrides_and_filters(tmp_path: Path, softhsm: SoftHSM) -> None:
    system, admin = tmp_path / "share", tmp_path / "etc"
    write_module(system, "hsm", "module: /nonexistent/libold.so\n")
    write_module(admin, "hsm", f"module: {softhsm.module}\n")  # /etc overrides /usr/share by name
    write_module(system, "trust", f"module: {softhsm.module}\ntrust-policy: yes\n")
    write_module(system, "hidden", f"module: {softhsm.module}\ndisable-in: tokenagent, p11-kit-proxy\n")
    write_module(system, "only-firefox", f"module: {softhsm.module}\nenable-in: firefox\n")
    write_module(system, "broken", "no module line here\n")

    by_name = {m.name: m for m in registered_modules([str(system), str(admin)])}
    assert by_name["hsm"].path == softhsm.module
    assert by_name["trust"].trust_policy
    assert not by_name["hidden"].enabled and not by_name["only-firefox"].enabled
    assert "broken" not in by_name

    refs = discover_modules(env={}, registry_dirs=[str(system), str(admin)])
    assert [r.name for r in refs] == ["hsm"]
    assert refs[0].path == os.path.realpath(softhsm.module)


def test_relative_module_path_resolves_in_the_p11kit_module_dir(tmp_path: Path) -> None:
    if not any(Path("/usr/lib").glob("*-linux-gnu/pkcs11/opensc-pkcs11.so")):
        pytest.skip("opensc-pkcs11 not installed")
    write_module(tmp_path, "opensc", "module: opensc-pkcs11.so\n")
    (module,) = registered_modules([str(tmp_path)])
    assert os.path.isabs(module.path) and module.path.endswith("pkcs11/opensc-pkcs11.so")


def test_precedence_explicit_then_env_then_registry(tmp_path: Path, softhsm: SoftHSM) -> None:
    write_module(tmp_path, "registered-hsm", f"module: {softhsm.module}\n")
    dirs = [str(tmp_path)]
    explicit = discover_modules(["registered-hsm"], env={"TOKENAGENT_MODULE": "/nonexistent.so"}, registry_dirs=dirs)
    assert explicit[0].source.endswith("registered-hsm.module")
    from_env = discover_modules(env={"TOKENAGENT_MODULE": softhsm.module}, registry_dirs=dirs)
    assert from_env[0].source == "TOKENAGENT_MODULE"
    assert discover_modules(env={}, registry_dirs=dirs)[0].name == "registered-hsm"


def test_same_library_under_two_paths_loads_once(tmp_path: Path, softhsm: SoftHSM) -> None:
    link = tmp_path / "libsofthsm2-link.so"
    link.symlink_to(softhsm.module)
    refs = discover_modules([str(link), softhsm.module], env={})
    assert len(refs) == 1


def test_softhsm_default_is_added_when_the_registry_has_none(tmp_path: Path) -> None:
    refs = discover_modules(env={}, registry_dirs=[str(tmp_path)])
    assert any("softhsm" in r.path for r in refs)


@pytest.mark.parametrize("spec", ["/nonexistent/libnothing.so", "no-such-registered-module"])
def test_missing_module_is_a_module_error(spec: str, tmp_path: Path) -> None:
    with pytest.raises(ModuleError, match="not found"):
        resolve_module(spec, "--module", [str(tmp_path)])


def test_cli_bad_modules_give_exit_5_and_one_line(cli, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.so"
    garbage.write_bytes(b"this is not a shared object")
    for module in ("/nonexistent/lib.so", str(garbage)):
        run = cli("tokens", "--module", module, "--json")
        assert run.returncode == 5, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1
        assert "Traceback" not in run.stderr
    assert '"exit_code": 5' in run.stdout


def test_a_bare_name_is_never_loaded_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file called like a module in the working directory is not a module (the TPM provider's
    `libtpm2_pkcs11.so` used to resolve there); the message says where it looked."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "libplanted_pkcs11.so").write_bytes(b"would run inside a process holding PINs")
    with pytest.raises(ModuleError) as caught:
        resolve_module("libplanted_pkcs11.so", "ProviderName 'X'", [str(tmp_path / "registry")])
    message = caught.value.one_line()
    assert "from ProviderName 'X'" in message and "working directory is never searched" in message
    assert "/usr/lib" in message and str(tmp_path / "registry") in message
    assert resolve_module("./libplanted_pkcs11.so", "--module").path == str(tmp_path / "libplanted_pkcs11.so")


def test_a_registered_module_is_found_by_its_library_file_name(tmp_path: Path, softhsm: SoftHSM) -> None:
    write_module(tmp_path, "hsm", f"module: {softhsm.module}\n")
    ref = resolve_module(os.path.basename(softhsm.module), "built-in", [str(tmp_path)])
    assert ref.name == "hsm" and ref.source.endswith("hsm.module")


def test_module_file_init_string_and_critical(tmp_path: Path, softhsm: SoftHSM) -> None:
    """x-init-reserved goes to C_Initialize; `critical: no` makes a failure to load quiet; a module
    file can also be named directly, and is what the pending store records (ModuleRef.spec)."""
    write_module(tmp_path, "nss", f"module: {softhsm.module}\nx-init-reserved: configdir='sql:/x'\ncritical: no\n")
    (registered,) = registered_modules([str(tmp_path)])
    assert registered.init_args == "configdir='sql:/x'" and not registered.critical
    direct = resolve_module(str(tmp_path / "nss.module"), "--module")
    assert direct.init_args == "configdir='sql:/x'" and direct.spec == str(tmp_path / "nss.module")
    plain = resolve_module(softhsm.module, "--module")
    assert plain.init_args is None and plain.spec == plain.path
    write_module(tmp_path / "bad", "empty", "critical: no\n")
    with pytest.raises(ModuleError, match="no 'module:' line"):
        resolve_module(str(tmp_path / "bad" / "empty.module"), "--module")
