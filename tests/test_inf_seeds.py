"""Every example INF of the certreq documents (copied verbatim to tests/data/inf/seeds; see its
README.md for where each comes from), field by field."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tokenagent.inf import load_policy
from tokenagent.inf.policy import KeySpec, RequestType

SEEDS = Path(__file__).parent / "data" / "inf" / "seeds"


def test_every_seed_parses() -> None:
    files = sorted(SEEDS.glob("*.inf"))
    assert len(files) == 8
    for path in files:
        load_policy(path)


def test_reference_minimal() -> None:
    p = load_policy(SEEDS / "reference-minimal.inf")
    assert str(p.subject) == "CN=W2K8-BO-DC.contoso2.com"
    assert p.origins["subject"].line == 4
    assert p.request_type is RequestType.PKCS10 and p.origins["request_type"].source == "default"
    assert (p.key_algorithm, p.key_length, p.hash_algorithm) == ("RSA", 2048, "sha256")
    assert p.key_spec is KeySpec.AT_SIGNATURE and p.key_usage == 0xC0 and p.key_usage_critical
    assert p.exportable is False and p.extensions == () and p.warnings == ()


def test_reference_requestconfig() -> None:
    p = load_policy(SEEDS / "reference-requestconfig.inf")
    assert p.subject.rdns[0][0].value == "<FQDN of computer you are creating the certificate>"
    assert str(p.subject) == 'CN="<FQDN of computer you are creating the certificate>"'  # quoted as CertNameToStr does
    assert p.exportable is True and p.origins["exportable"].line == 4
    assert p.key_length == 2048 and p.key_spec is KeySpec.AT_KEYEXCHANGE
    assert p.key_usage == 0xF0 and p.origins["key_usage"].source == "file"
    assert p.machine_key_set is True
    assert p.certificate_template == "WebServer"
    assert p.request_attributes == (("CertificateTemplate", "WebServer"),)
    (eku,) = p.extensions
    assert eku.kind == "extended_key_usage" and eku.usages == ("1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2")
    assert [w.line for w in p.warnings] == [12]  # OID= in [Extensions] is read as EKU


def test_reference_strings_and_text_eku() -> None:
    p = load_policy(SEEDS / "reference-strings.inf")
    assert str(p.subject) == "CN=TestSelfSignedCert"
    assert p.request_type is RequestType.CERT
    (eku,) = p.extensions
    assert eku.oid == "2.5.29.37" and not eku.critical and eku.line == 15
    assert eku.usages == ("1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2")
    assert p.warnings == ()


def test_reference_extensions_table() -> None:
    p = load_policy(SEEDS / "reference-extensions-table.inf")
    assert [[a.short_name for a in rdn] for rdn in p.subject.rdns] == [["CN"], ["CN"], ["DC"], ["DC"]]
    san, eku, bc = p.extensions
    assert [n.describe() for n in san.alt_names] == [
        "UPN=User@Domain.com",
        "EMail=User@Domain.com",
        "DNS=host.domain.com",
        "DirectoryName=CN=Name, DC=Domain, DC=com",
        "URL=http://host.domain.com/default.html",
        "IPAddress=10.0.0.1",
        "RegisteredId=1.2.3.4.5",
        "1.2.3.4.6.1={asn}DAZTdHJpbmc=",
        "1.2.3.4.6.2={asn}BAgAAQIDBAUGBw==",
        "1.2.3.4.6.2={asn}BAgAAQIDBAUGBw==",
        "1.2.3.4.6.3={asn}BAgAAQIDBAUGBw==",
        "1.2.3.4.6.3={asn}BAgAAQIDBAUGBw==",
    ]
    assert eku.usages == ("1.3.6.1.5.5.7", "1.3.6.1.5.5.7.3.1")
    assert (bc.kind, bc.ca, bc.path_length, bc.critical) == ("basic_constraints", False, None, True)
    assert not san.critical and not eku.critical


def test_appendix_minimal_quoted_subject() -> None:
    p = load_policy(SEEDS / "appendix-minimal.inf")
    assert str(p.subject) == "CN=W2K3-BO-DC.contoso2.com" and p.origins["subject"].line == 4


def test_appendix_base64_extension_across_continue_lines() -> None:
    p = load_policy(SEEDS / "appendix-san-base64.inf")
    (ext,) = p.extensions
    expected = base64.b64decode("MDmCFlcySy1CTy1EQy5jb250b3NvMi5jb22gHwYJKwYBBAGCNxkBoBIEENKgYHzcF4dJmg+HRCPkkQ0=")
    assert (ext.oid, ext.kind, ext.der, ext.critical, ext.line) == ("2.5.29.17", "raw", expected, True, 5)
    # independent decoder: pyasn1-modules reads it as GeneralNames (dNSName + otherName DS GUID)
    from pyasn1.codec.der import decoder
    from pyasn1_modules import rfc5280

    names, rest = decoder.decode(ext.der, asn1Spec=rfc5280.GeneralNames())
    assert rest == b"" and str(names[0]["dNSName"]) == "W2K-BO-DC.contoso2.com"
    assert str(names[1]["otherName"]["type-id"]) == "1.3.6.1.4.1.311.25.1"


def test_appendix_san_attribute() -> None:
    p = load_policy(SEEDS / "appendix-san-attribute.inf")
    assert p.certificate_template == "DomainController"
    assert [n.describe() for n in p.san_attribute] == [
        "UPN=John.Smith@contoso.com",
        "GUID=f7c3ac41-b8ce-4fb4-aa58-3d1dc0e36b39",
    ]
    assert p.request_attributes[1] == ("SAN", "upn=John.Smith@contoso.com&guid=f7c3ac41-b8ce-4fb4-aa58-3d1dc0e36b39")


def test_collection_key_archival() -> None:
    p = load_policy(SEEDS / "collection-key-archival.inf")
    assert str(p.subject) == "CN=Test Subject"
    assert p.key_spec is KeySpec.AT_KEYEXCHANGE and p.key_usage == 0xF0
    assert p.exportable is False and p.origins["exportable"].source == "file"
    assert p.private_key_archive is True and p.certificate_template == "EFS"
    assert [(w.line, "CMC" in w.message) for w in p.warnings] == [(9, True)]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_seeds_saved_by_notepad_parse_the_same(tmp_path: Path, encoding: str) -> None:
    for path in SEEDS.glob("*.inf"):
        copy = tmp_path / path.name
        copy.write_bytes(path.read_text().replace("\n", "\r\n").encode(encoding))
        original, saved = load_policy(path), load_policy(copy)
        assert original.to_json()["policy"] == saved.to_json()["policy"]
