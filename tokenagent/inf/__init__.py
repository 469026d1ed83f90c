"""certreq INF policies -> typed `RequestPolicy` (pure: no token, no I/O beyond reading the file).

Layers: `lexer` (encodings, sections, quoting, continuation, [Strings]), `values` (booleans,
numbers, flag sets, dates), `names` (Subject DNs, CertStrToName syntax), `extensions`
([Extensions] and SAN tags), `policy` (every [NewRequest] key, defaults, validation).
"""

from tokenagent.inf.policy import RequestPolicy, load_policy, parse_policy

__all__ = ["RequestPolicy", "load_policy", "parse_policy"]
