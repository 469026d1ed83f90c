"""PKCS#10 requests and self-signed certificates from a `RequestPolicy` (pure: no token, no I/O).

Layers: `algorithms` (signature identifiers, host-side hashing), `signer` (the `Signer` protocol
and a software key), `names` (DNs), `extensions` and `attributes` (what certreq puts in a
request), `pkcs10` and `certificate` (the signed structures), `armor` (PEM/base64 in and out).
"""

from tokenagent.request.algorithms import SignatureAlgorithm, signature_algorithm
from tokenagent.request.armor import REQUEST_LABEL, armor, read_der
from tokenagent.request.certificate import self_signed_certificate, validity
from tokenagent.request.pkcs10 import (
    ContentItem,
    build_request,
    planned_contents,
    request_info,
    sign_request,
    subject_text,
)
from tokenagent.request.signer import Signer, SoftwareSigner

__all__ = [
    "REQUEST_LABEL",
    "ContentItem",
    "SignatureAlgorithm",
    "Signer",
    "SoftwareSigner",
    "armor",
    "build_request",
    "planned_contents",
    "read_der",
    "request_info",
    "self_signed_certificate",
    "sign_request",
    "signature_algorithm",
    "subject_text",
    "validity",
]
