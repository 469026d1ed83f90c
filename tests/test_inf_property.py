"""Property: whatever bytes come in, the parser returns a policy or raises TokenAgentError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenagent.errors import TokenAgentError
from tokenagent.inf import RequestPolicy, parse_policy
from tokenagent.inf.policy import NEWREQUEST_KEYS

KEYS = [*sorted(NEWREQUEST_KEYS), "_continue_", "OID", "Critical", "2.5.29.17", "2.5.29.37", "2.5.29.19", "SAN"]
SECTIONS = ["NewRequest", "Extensions", "Strings", "Version", "RequestAttributes", "EnhancedKeyUsageExtension", "X"]
VALUES = st.one_of(
    st.sampled_from(
        [
            "TRUE",
            "0",
            "0xa0",
            "fd00",
            "AT_KEYEXCHANGE",
            "CN=a,O=b",
            '"CN=a; b"',
            "{text}UPN=a@b&DNS=c",
            "{text}1.2.3,1.2.4",
            "{text}ca=1&pathlength=2",
            "{hex}04 00",
            "{asn}BAA=",
            "MDmCFlcy",
            "%s%",
            "%%",
            "7/24/2012 10:31 AM",
            "sha256",
            "ECDSA_P256",
            "Cert",
            "CMC",
            "PKCS10-",
            "ECDSA",
            "0x",
            '"',
            "=",
            ";",
        ]
    ),
    st.text(max_size=30),
)


@st.composite
def inf_text(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 4))
        if kind == 0:
            lines.append(f"[{draw(st.sampled_from(SECTIONS))}]")
        elif kind == 1:
            lines.append(f"; {draw(st.text(max_size=10))}")
        else:
            lines.append(f"{draw(st.sampled_from(KEYS))} = {draw(VALUES)}")
    return "\n".join(lines)


def check(data: bytes | str) -> None:
    try:
        result = parse_policy(data, "fuzz.inf")
    except TokenAgentError as exc:
        assert exc.one_line().startswith("fuzz.inf:")
        assert "\n" not in exc.one_line()
        return
    assert isinstance(result, RequestPolicy)
    result.to_json()  # serializable, too


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inf_text())
def test_grammar_generated_text(text: str) -> None:
    check(text)


@settings(max_examples=200, deadline=None)
@given(inf_text(), st.sampled_from(["utf-8", "utf-16", "utf-8-sig", "cp1252"]), st.integers(0, 400))
def test_encoded_and_truncated(text: str, encoding: str, cut: int) -> None:
    data = text.encode(encoding, errors="replace")
    check(data)
    check(data[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check(data)
    check(b"[NewRequest]\nSubject=" + data)
