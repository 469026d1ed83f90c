"""certreq's validation rules: one test per diagnostic, each with its line number."""

from __future__ import annotations

import pytest

from tests.inf_helpers import inf, inf_error, warnings_of
from tokenagent.errors import PolicyError


def test_missing_newrequest_is_certreq_0xe0000102() -> None:
    error = inf_error('[Version]\nSignature="$Windows NT$"\n')
    assert str(error).startswith("t.inf:1: the [NewRequest] section is missing")
    assert "INF file line not found 0xe0000102" in error.one_line() and error.hresult == 0xE0000102
    assert error.one_line().count("0xe0000102") == 1


def test_empty_file_is_missing_newrequest() -> None:
    assert inf_error("").hresult == 0xE0000102


def test_empty_newrequest_is_certreq_incorrect_function() -> None:
    error = inf_error('[Version]\nSignature="$Windows NT$"\n\n[NewRequest]\n; nothing\n[RequestAttributes]\nA=b\n')
    assert str(error).startswith("t.inf:4: [NewRequest] has no keys")
    assert "Incorrect function. 0x1" in str(error) and error.hresult == 0x1


ERRORS = [
    (
        "Subject=CN=x\nRequestType=Cert\nNotAfter=1/1/2030\nValidityPeriodUnits=1\nValidityPeriod=Years",
        6,
        "NotAfter cannot be used with ValidityPeriod",
    ),
    ("Subject=CN=x\nRequestType=Cert\nValidityPeriod=Years", 4, "ValidityPeriodUnits is missing"),
    ("Subject=CN=x\nRequestType=Cert\nValidityPeriodUnits=2", 4, "ValidityPeriod is missing"),
    ("Subject=CN=x\nRequestType=Cert\nNotBefore=1/2/2030\nNotAfter=1/1/2030", 5, "NotAfter is not after NotBefore"),
    (
        "Subject=CN=x\nUseExistingKeySet=TRUE\nKeyContainer=k\nExportable=TRUE",
        5,
        "Exportable cannot be set with UseExistingKeySet",
    ),
    ("Subject=CN=x\nUseExistingKeySet=TRUE", 3, "needs KeyContainer or RenewalCert"),
    ("Subject=CN=x\nKeySpec=2\nEncipherOnly=TRUE", 4, "EncipherOnly = TRUE needs KeySpec = AT_KEYEXCHANGE"),
    ("Subject=CN=x\nEncipherOnly=TRUE", 3, "EncipherOnly = TRUE needs KeySpec"),  # the default KeySpec is 2
    ("Subject=CN=x\nHashAlgorithm=md5", 3, "md5 is broken"),
    ("Subject=CN=x\nHashAlgorithm=md2", 3, "md2 is broken"),
    ("Subject=CN=x\nKeyAlgorithm=ECDSA_P256\nKeyLength=384", 4, "contradicts KeyAlgorithm = ECDSA_P256"),
]


@pytest.mark.parametrize(("body", "line", "message"), ERRORS, ids=[e[2] for e in ERRORS])
def test_contradictions_are_errors_with_lines(body: str, line: int, message: str) -> None:
    error = inf_error("[NewRequest]\n" + body + "\n")
    assert isinstance(error, PolicyError) and error.exit_code == 3
    assert str(error).startswith(f"t.inf:{line}: ") and message in str(error), str(error)


WARNINGS = [
    ("Subject=CN=x\nRequesterName=CONTOSO\\bob", 3, "RequesterName is ignored with RequestType = PKCS10"),
    ("Subject=CN=x\nHashAlgorithm=sha1", 3, "sha1 is deprecated"),
    ("Subject=CN=x\nPrivateKeyArchive=TRUE", 3, "PrivateKeyArchive works only with RequestType = CMC"),
    ("Subject=CN=x\nNotBefore=1/1/2030", 3, "used only with RequestType = Cert"),
    ("Subject=CN=x\nFrobnicate=yes", 3, "unknown [NewRequest] key 'Frobnicate' is ignored"),
    ("Subject=CN=x\nSubjectNameFlags=CT_FLAG_SUBJECT_REQUIRE_EMAIL", 3, "does not fill names from Active Directory"),
    ('Subject=CN=x\nSecurityDescriptor="D:P(A;;GA;;;SY)"', 3, "does not apply to PKCS#11 tokens"),
    ("FriendlyName=x", 1, "no Subject and no SAN"),
]


@pytest.mark.parametrize(("body", "line", "message"), WARNINGS, ids=[w[2] for w in WARNINGS])
def test_warnings_carry_lines(body: str, line: int, message: str) -> None:
    found = warnings_of(inf("[NewRequest]\n" + body + "\n"))
    assert any(w_line == line and message in text for w_line, text in found), found


def test_unknown_section_and_bad_signature_warn() -> None:
    found = warnings_of(inf('[Version]\nSignature="$Linux$"\n[NewRequest]\nSubject=CN=x\n[Frob]\na=b\n'))
    assert any(line == 2 and "Signature should be" in m for line, m in found)
    assert any(line == 5 and "unknown section [Frob]" in m for line, m in found)
    assert any(
        line == 1 and "has no Signature" in m for line, m in warnings_of(inf("[Version]\n[NewRequest]\nSubject=CN=x\n"))
    )


def test_requester_name_with_cmc_does_not_warn() -> None:
    assert warnings_of(inf("[NewRequest]\nSubject=CN=x\nRequestType=CMC\nRequesterName=CONTOSO\\bob\n")) == []


def test_diagnostics_name_the_file() -> None:
    from tokenagent.inf import parse_policy

    policy = parse_policy("[NewRequest]\nSubject=CN=x\nFoo=1\n", "/etc/tokenagent/user.inf")
    assert str(policy.warnings[0]) == "/etc/tokenagent/user.inf:3: warning: unknown [NewRequest] key 'Foo' is ignored"
