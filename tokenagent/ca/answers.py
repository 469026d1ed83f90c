"""What a CA can answer: a closed set, as certmonger's CA helpers answer (ISSUED, WAIT, REJECTED,
UNREACHABLE, UNCONFIGURED, NEED_NEW_KEY).

A connector returns one of these for everything the CA or the way to it said. It raises only for
what is not an answer: a local problem (a credential source that cannot be read) or a response
that claims to come from the CA and does not verify against the configured trust
(`VerificationError`: it may be forged, so it is not an answer at all).

`error_for` turns every answer but `Issued` into the exception whose exit code scripts rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tokenagent.errors import (
    CAAuthenticationError,
    CAConfigError,
    CAError,
    CANeedsRekeyError,
    CAProtocolError,
    CAUnreachableError,
    RequestPendingError,
)


@dataclass(frozen=True)
class Issued:
    certificate: bytes  # DER of the issued certificate
    chain: tuple[bytes, ...]  # the CA certificates above it, nearest first (may be empty)
    response: bytes  # the CA's answer as received: CMC Full PKI Response, certs-only PKCS#7, or a certificate
    response_form: str  # "cmc" | "pkcs7" | "certificate"
    request_id: str | None = None  # the CA's request ID, when the protocol has one

    state = "issued"

    @classmethod
    def certs_only(cls, certificate: bytes, chain: tuple[bytes, ...], request_id: str | None = None) -> Issued:
        """For protocols whose own answer `accept` does not read (cfssl's JSON, ACME's PEM chain, an
        answer decrypted from SCEP or taken out of CMP): kept as a certs-only PKCS #7 of the
        certificate and its chain, which `accept` and the pending store read like any CA's."""
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

        loaded = [x509.load_der_x509_certificate(der) for der in (certificate, *chain)]
        return cls(certificate, chain, pkcs7.serialize_certificates(loaded, Encoding.DER), "pkcs7", request_id)

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "request_id": self.request_id, "response_form": self.response_form}


@dataclass(frozen=True)
class Pending:
    cookie: str  # what `poll` needs: certsrv's request ID, CMC's pendToken (hex), file:'s request path
    request_id: str | None  # the ID people quote (certsrv's "Your Request Id is N")
    retry_after: datetime | None  # when to ask again (UTC), if the CA said
    message: str

    state = "pending"

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "request_id": self.request_id,
            "retry_after": self.retry_after.isoformat() if self.retry_after else None,
            "message": self.message,
        }


@dataclass(frozen=True)
class Rejected:
    message: str  # the CA's own words
    code: str | None = None  # e.g. "0x80094800 CERTSRV_E_UNSUPPORTED_CERT_TYPE", CMC "badRequest", "HTTP 403"
    explanation: str | None = None  # what it means in plain words (docs/ca.md has the table)
    request_id: str | None = None

    state = "rejected"

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "request_id": self.request_id,
            "message": self.message,
            "code": self.code,
            "explanation": self.explanation,
        }


@dataclass(frozen=True)
class Unreachable:
    """Try again later: the CA could not be reached, or answered what its protocol does not allow."""

    message: str
    garbled: bool = False  # True: it answered, but nothing a CA of this protocol sends (CAProtocolError)
    retry_after: datetime | None = None

    state = "unreachable"

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "message": self.message,
            "garbled": self.garbled,
            "retry_after": self.retry_after.isoformat() if self.retry_after else None,
        }


@dataclass(frozen=True)
class Misconfigured:
    """Nothing will change until someone fixes the configuration (URL, trust, credentials)."""

    message: str
    authentication: bool = False  # True: the CA refused the credentials

    state = "misconfigured"

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "message": self.message, "authentication": self.authentication}


@dataclass(frozen=True)
class NeedsRekey:
    message: str
    code: str | None = None

    state = "needs-rekey"

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "message": self.message, "code": self.code}


Answer = Issued | Pending | Rejected | Unreachable | Misconfigured | NeedsRekey


def error_for(answer: Answer, where: str, details: dict[str, object] | None = None) -> CAError:
    """The exception for an answer that is not `Issued`; ``where`` names the CA (its URL or profile)."""
    extra = {**(details or {}), "ca": where, **answer.to_json()}
    if isinstance(answer, Pending):
        ident = f" as request {answer.request_id}" if answer.request_id else ""
        when = f"; ask again after {answer.retry_after:%Y-%m-%d %H:%M:%S} UTC" if answer.retry_after else ""
        text = f": {answer.message}" if answer.message else ""
        return RequestPendingError(f"{where} holds the request pending{ident}{when}{text}", details=extra)
    if isinstance(answer, Rejected):
        said = answer.message.lower()
        repeated = answer.code is not None and all(word.lower() in said for word in answer.code.split())
        code = f" ({answer.code})" if answer.code and not repeated else ""
        meaning = f"; {answer.explanation}" if answer.explanation else ""
        ident = f" request {answer.request_id}" if answer.request_id else " the request"
        return CAError(f"{where} rejected{ident}: {answer.message}{code}{meaning}", details=extra)
    if isinstance(answer, Unreachable):
        if answer.garbled:
            message = f"{where} answered something that is not a CA answer: {answer.message}"
            return CAProtocolError(message, details=extra)
        return CAUnreachableError(f"cannot reach {where}: {answer.message}", details=extra)
    if isinstance(answer, Misconfigured):
        if answer.authentication:
            return CAAuthenticationError(f"{where}: {answer.message}", details=extra)
        return CAConfigError(f"{where}: {answer.message}", details=extra)
    if isinstance(answer, NeedsRekey):
        code = f" ({answer.code})" if answer.code else ""
        return CANeedsRekeyError(f"{where} will not certify this key: {answer.message}{code}", details=extra)
    raise TypeError(f"not an error answer: {answer!r}")
