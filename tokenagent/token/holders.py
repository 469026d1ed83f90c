"""Which of the selected tokens holds something (a certificate, a public key): looked for in public
sessions, so no PIN is asked before the right token is known (accept, repair)."""

from __future__ import annotations

from collections.abc import Callable

from tokenagent.errors import TokenNotFoundError
from tokenagent.token.library import TokenHandle, TokenSelector, iter_tokens, modules_for, select_token
from tokenagent.token.session import TokenSession, open_session
from tokenagent.token.target import TokenTarget


def find_holders(
    target: TokenTarget, holds: Callable[[TokenSession], bool]
) -> tuple[list[TokenHandle], list[TokenHandle]]:
    """(holders, candidates): the tokens ``target`` selects, and those of them where ``holds`` is true.

    Raises the usual "no token matches" error when the selector names no token at all."""
    selector = TokenSelector.parse(target.selector)
    candidates = [h for h in iter_tokens(modules_for(target.modules, selector)) if selector.matches(h)]
    if not candidates:
        select_token(selector, [])  # raises the usual "no token" error
        raise TokenNotFoundError(f"no token matches {selector.describe()}")
    holders = []
    for handle in candidates:
        with open_session(handle, login=False, pin_source=None) as session:
            if holds(session):
                holders.append(handle)
    return holders, candidates
