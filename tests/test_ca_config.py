"""--config, cas.toml, --attrib, the certsrv page reader and the CA state in the pending store:
the parts of the CA room that need no server."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tokenagent.ca.answers import NeedsRekey, Pending, Rejected, Unreachable, error_for
from tokenagent.ca.certsrv import CertsrvConnector, cert_attrib
from tokenagent.ca.certsrv_codes import CODES
from tokenagent.ca.http import HttpResponse, HttpSettings
from tokenagent.ca.profiles import CaOverrides, parse_attributes, profile_for_url, resolve_config
from tokenagent.errors import CAConfigError, InputError, UsageError
from tokenagent.store.database import SCHEMA_VERSION
from tokenagent.store.submissions import CaSubmission, SubmissionStore

# -- --config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "protocol", "url"),
    [
        ("cmc+https://ca.example.com/cmc/4E1A/", "cmc", "https://ca.example.com/cmc/4E1A/"),
        ("cmc+http://127.0.0.1:8000/cmc/1/", "cmc", "http://127.0.0.1:8000/cmc/1/"),
        ("certsrv+https://adcs.example.com/certsrv", "certsrv", "https://adcs.example.com/certsrv"),
        ("https://adcs.example.com/certsrv/", "certsrv", "https://adcs.example.com/certsrv"),
        ("adcs.example.com\\Example Issuing CA", "certsrv", "https://adcs.example.com/certsrv"),
        ("file:/var/spool/requests", "file", "/var/spool/requests"),
        ("file:///var/spool/requests", "file", "/var/spool/requests"),
    ],
)
def test_config_urls_pick_the_connector(config: str, protocol: str, url: str) -> None:
    profile = profile_for_url(config)
    assert (profile.protocol, profile.url, profile.config) == (protocol, url, config)


def test_file_without_a_directory_is_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert profile_for_url("file:").url == str(tmp_path)


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ("https://ca.example.com/cmc/1/", "which protocol?"),
        ("ftp://ca.example.com/", "neither a CA URL"),
        ("cmc+https://:443/x", "names no host"),
        ("cmc+https://ca.example.com:99999/x", "not a usable URL"),
        ("certsrv+https://adcs.example.com/certsrv?x=1", "query"),
        ("nosuchprofile", "known: none"),
        ("certsrv+https://adcs.example.com/cert srv", "space or control character"),
        ("cmc+https://ca.example.com/\r\nX-Injected: 1", "space or control character"),
    ],
)
def test_bad_configs_are_config_errors(config: str, says: str) -> None:
    with pytest.raises(CAConfigError, match=re.escape(says)):
        profile_for_url(config)


def test_a_password_in_the_url_is_refused_without_showing_it() -> None:
    with pytest.raises(CAConfigError) as info:
        profile_for_url("certsrv+https://EXAMPLE%5Cstation:Sup3rSecret@adcs.example.com/certsrv")
    assert "Sup3rSecret" not in info.value.one_line() and "--ca-password-source" in info.value.one_line()


def test_cmc_needs_a_trust_anchor(tmp_path: Path) -> None:
    with pytest.raises(CAConfigError, match="--ca-trust"):
        resolve_config("cmc+http://127.0.0.1/cmc/1/", env={"HOME": str(tmp_path)})
    trust = tmp_path / "ca.pem"
    profile = resolve_config("cmc+http://127.0.0.1/cmc/1/", overrides=CaOverrides(trust=trust), env={})
    assert profile.trust == trust


# -- cas.toml ---------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cas_toml_search_path_default_and_overrides(tmp_path: Path) -> None:
    config_home = tmp_path / "config"
    write(
        config_home / "tokenagent" / "cas.toml",
        'default = "corp"\n[ca.corp]\nurl = "certsrv+https://adcs.example.com/certsrv"\n'
        'ca_bundle = "corp-root.pem"\nuser = \'CORP\\station\'\npassword_source = "file:/etc/pw"\n'
        'template = "SmartcardLogon"\nattributes = ["SAN:upn=a@example.com"]\ntimeout = 12\n'
        '[ca.lab]\nurl = "cmc+http://127.0.0.1:8000/cmc/1/"\ntrust = "/etc/lab.pem"\n',
    )
    extra = write(tmp_path / "extra.toml", '[ca.lab]\nurl = "cmc+http://127.0.0.1:9000/cmc/2/"\ntrust = "lab.pem"\n')
    env = {"XDG_CONFIG_HOME": str(config_home)}

    corp = resolve_config(None, env=env)  # the default profile
    assert (corp.name, corp.protocol, corp.template, corp.timeout) == ("corp", "certsrv", "SmartcardLogon", 12.0)
    assert corp.ca_bundle == config_home / "tokenagent" / "corp-root.pem"  # relative to the file
    assert corp.attributes == (("SAN", "upn=a@example.com"),)
    assert corp.password_source == "file:/etc/pw" and corp.user == "CORP\\station"

    lab = resolve_config("lab", cas_files=[str(extra)], env=env)  # --cas overrides by name
    assert lab.url == "http://127.0.0.1:9000/cmc/2/" and lab.trust == tmp_path / "lab.pem"
    changed = resolve_config("lab", cas_files=[str(extra)], overrides=CaOverrides(timeout=3.0, user="u"), env=env)
    assert changed.timeout == 3.0 and changed.user == "u"
    assert "password" not in str(corp.to_json()).lower().replace("password_source", "")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[ca.x]\nurl = 5\n", "needs url"),
        ('[ca.x]\nurl = "file:"\nsurprise = 1\n', "unknown keys surprise"),
        ('[ca.x]\nurl = "file:"\ntimeout = "soon"\n', "timeout must be a number"),
        ('[ca.x]\nurl = "file:"\nattributes = ["nocolon"]\n', "is not Name:Value"),
        ('default = "y"\n[ca.x]\nurl = "file:"\n', "names no [ca.y]"),
        ("[ca.x\n", "not valid TOML"),
        ('[other]\nurl = "file:"\n', "unknown keys other"),
        ('[ca.x]\nurl = "https://h/other"\n', "which protocol?"),
    ],
)
def test_bad_cas_toml_is_an_input_error_naming_the_file(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path / "cas.toml", text)
    with pytest.raises(InputError, match=re.escape(says)) as info:
        resolve_config("x", cas_files=[str(path)], env={})
    assert str(path) in info.value.one_line()


def test_a_bad_password_source_is_refused_without_echo() -> None:
    with pytest.raises(UsageError) as info:
        resolve_config("file:", overrides=CaOverrides(password_source="hunter2"), env={})
    assert "hunter2" not in info.value.one_line()


# -- --attrib -----------------------------------------------------------------------------------------


def test_attributes_as_certreq_writes_them() -> None:
    assert parse_attributes(["CertificateTemplate:User\\nSAN:upn=a@example.com", "X:1\nY: 2 "]) == (
        ("CertificateTemplate", "User"),
        ("SAN", "upn=a@example.com"),
        ("X", "1"),
        ("Y", "2"),
    )
    assert cert_attrib("T", (("SAN", "dns=a"),)) == "CertificateTemplate:T\r\nSAN:dns=a\r\n"
    for bad in ("novalue", ":x", "A:b\x07", "A\x1b[2J:b"):
        with pytest.raises(UsageError):
            parse_attributes([bad])


# -- the certsrv pages --------------------------------------------------------------------------------


def page(text: str) -> HttpResponse:
    return HttpResponse(200, "OK", (("Content-Type", "text/html"),), text.encode(), "https://h/certsrv/certfnsh.asp")


def connector() -> CertsrvConnector:
    return CertsrvConnector("https://127.0.0.1/certsrv", HttpSettings())


def test_pending_and_denied_pages() -> None:
    pending = connector()._after_submit(
        "Certificate Pending ... you must wait for an administrator ... Your Request Id is 42.</P>"
    )
    assert isinstance(pending, Pending) and (pending.cookie, pending.request_id) == ("42", "42")
    denied = connector()._after_submit(
        'Your Request Id is 7. The disposition message is "Denied by Policy Module  0x80094806, The request was '
        'made on behalf of a subject other than the caller."'
    )
    assert isinstance(denied, Rejected) and denied.request_id == "7"
    assert denied.code == "0x80094806 CERTSRV_E_BAD_RENEWAL_SUBJECT"
    assert "does not require an enrollment agent signature" in (denied.explanation or "")
    rekey = connector()._after_submit('The disposition message is "Denied by Policy Module 0x80094811, key too short"')
    assert isinstance(rekey, NeedsRekey)
    unknown = connector()._after_submit('The disposition message is "Denied by Policy Module 0x8009ffff, what?"')
    assert isinstance(unknown, Rejected) and unknown.code == "0x8009ffff" and unknown.explanation is None
    localized = connector()._after_submit("<html>Zertifikat ausgestellt</html>")
    assert isinstance(localized, Unreachable) and localized.garbled


def test_error_messages_for_each_answer() -> None:
    when = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    assert "ask again after 2026-12-01 08:00:00 UTC" in error_for(Pending("9", "9", when, "queued"), "CA").message
    error = error_for(Rejected("no", "0x80094800 CERTSRV_E_UNSUPPORTED_CERT_TYPE", "not published"), "CA")
    assert error.exit_code == 12 and error.details["code"] == "0x80094800 CERTSRV_E_UNSUPPORTED_CERT_TYPE"
    assert error_for(Unreachable("down"), "CA").exit_code == 16
    assert error_for(Unreachable("junk", garbled=True), "CA").exit_code == 17
    assert error_for(NeedsRekey("short"), "CA").exit_code == 20


def test_retry_after_both_forms() -> None:
    now = datetime.now(UTC)
    seconds = HttpResponse(503, "", (("Retry-After", "120"),), b"", "u").retry_after()
    assert seconds is not None and timedelta(seconds=110) < seconds - now < timedelta(seconds=130)
    dated = HttpResponse(503, "", (("Retry-After", "Wed, 21 Oct 2026 07:28:00 GMT"),), b"", "u").retry_after()
    assert dated == datetime(2026, 10, 21, 7, 28, tzinfo=UTC)
    assert HttpResponse(503, "", (("Retry-After", "soon"),), b"", "u").retry_after() is None


def test_the_code_table_in_the_docs_is_the_code_table() -> None:
    text = (ROOT / "docs" / "ca.md").read_text()
    documented = dict(re.findall(r"^\| `0x([0-9a-f]{8})` \| `(\w+)` \|", text, flags=re.M))
    assert {int(k, 16): v for k, v in documented.items()} == {code: entry.name for code, entry in CODES.items()}


# -- the pending store ----------------------------------------------------------------------------------


def test_a_version_2_store_is_migrated_and_ca_rows_go_with_their_request(tmp_path: Path) -> None:
    from tests.test_store import new_pending  # the store tests' record maker
    from tokenagent.store.pending import PendingStore

    path = tmp_path / "pending.sqlite3"
    store = PendingStore(path)
    first = store.add(new_pending(1))
    with sqlite3.connect(path) as connection:  # back to what tokenagent wrote before issue 14
        connection.execute("DROP TABLE ca_submissions")
        connection.execute("DROP TABLE piv_discarded_keys")  # version 4 (issue 19)
        connection.execute("PRAGMA user_version = 2")
    assert SubmissionStore(path).all() == {}  # a version 2 store reads as having no CA rows
    second = store.add(new_pending(2), submission=CaSubmission(0, "corp", "{}", "unsubmitted"))
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    rows = SubmissionStore(path).all()
    assert list(rows) == [second.id] and rows[second.id].state == "unsubmitted"
    saved = SubmissionStore(path).save(
        CaSubmission(first.id, "corp", "{}", "pending", cookie="12", ca_request_id="12", response=None)
    )
    assert SubmissionStore(path).find_by_ca_request_id("12") == [saved]
    store.delete(first.id)
    assert list(SubmissionStore(path).all()) == [second.id]
    with pytest.raises(InputError, match="is gone"):
        SubmissionStore(path).save(CaSubmission(first.id, "corp", "{}", "pending"))
