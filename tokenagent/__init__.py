"""tokenagent: certreq for PKCS#11 smart cards and HSMs.

The library API lives in the subpackages (``tokenagent.token``, later ``tokenagent.inf``,
``tokenagent.request``, ...); ``tokenagent.cli`` is a thin click layer on top. Nothing heavy is
imported here so that ``tokenagent --help`` stays fast.
"""

__version__ = "0.1.0"
