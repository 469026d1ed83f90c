"""CA connectors: request bytes in, one of a closed set of answers out (ca/answers.py).

One module per protocol (`filedrop`, `cmc_http`, `certsrv`) behind one small interface
(ca/connector.py), modelled on certmonger's CA helpers. A connector knows nothing about tokens;
enroll/ composes it with `new` and `accept`.
"""
