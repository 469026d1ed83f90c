"""Helpers for INF tests: parse text, and catch the PolicyError of a bad INF."""

from __future__ import annotations

import pytest

from tokenagent.errors import PolicyError
from tokenagent.inf import RequestPolicy, parse_policy


def inf(text: str, filename: str = "t.inf") -> RequestPolicy:
    return parse_policy(text, filename)


def new_request(body: str, extra: str = "") -> RequestPolicy:
    return inf("[NewRequest]\n" + body + "\n" + extra)


def inf_error(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "t.inf")
    return info.value


def warnings_of(policy: RequestPolicy) -> list[tuple[int, str]]:
    return [(w.line, w.message) for w in policy.warnings]
