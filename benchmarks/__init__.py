"""tokenagent's benchmarks (issue 7): `python -m benchmarks` or `make bench`.

Every figure is taken against private SoftHSM instances made by softhsm/softhsm-env.sh in a
temporary directory, and compared with a baseline measured in the same run: the raw token driven
by python-pkcs11 without tokenagent, or the pkcs11-tool + OpenSSL pipeline people use today.
The runner writes docs/performance.md (the table) and benchmarks/results.json (every sample).
"""
