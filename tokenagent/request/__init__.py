"""Requests, certificates and CMS/CMC messages (pure: no token, no I/O); see docs/development.md.

Nothing is imported here: `inf/` uses `request.oids`, and importing a submodule runs this file first,
so a re-export here would pull the whole room (and `inf.policy` through `pkcs10`) into every import.
"""
