"""One exception hierarchy for everything a user can cause.

Each class carries a stable process exit code (documented in docs/exit-codes.md; never renumber
one) and, where certreq has one for the same situation, certreq's HRESULT, so people who know
certreq recognise the failure. Messages are one line and name the input at fault; they never
contain a PIN or other secret.
"""

from __future__ import annotations

import re

from tokenagent.display import escape

_LAYOUT = re.compile(r"[ \t\n]+")


def one_line(message: str) -> str:
    """A message as one printed line: layout whitespace (ours, or a library's multi-line text)
    becomes one space; any other control, bidi or invisible character is shown escaped."""
    return escape(_LAYOUT.sub(" ", message).strip())


class TokenAgentError(Exception):
    """Base class: a failure the user can act on. Exit code 1 is reserved for unexpected errors."""

    exit_code: int = 1
    #: certreq's code for the same failure, e.g. 0x80090011, when there is one.
    hresult: int | None = None

    def __init__(self, message: str, *, hresult: int | None = None, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        if hresult is not None:
            self.hresult = hresult
        #: True once a command printed this error inside its own --json document (one document per run)
        self.reported_as_json = False
        #: facts a script needs besides the message (e.g. the CA's request ID of a pending request);
        #: printed under "details" by --json, never holding a secret
        self.details: dict[str, object] = dict(details or {})

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__

    def one_line(self) -> str:
        """The message as printed: one line, with certreq's code when there is one."""
        text = one_line(self.message)
        if self.hresult is not None:
            code = f"0x{self.hresult & 0xFFFFFFFF:08x}"
            if code not in text and f"0x{self.hresult & 0xFFFFFFFF:x}" not in text:
                text += f" ({code})"
        return text

    def to_json(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "exit_code": self.exit_code,
            "message": self.message,
            "hresult": None if self.hresult is None else f"0x{self.hresult & 0xFFFFFFFF:08x}",
            **({"details": self.details} if self.details else {}),
        }


class UsageError(TokenAgentError):
    """Options that do not fit together, or a missing one (also click's own exit code)."""

    exit_code = 2


class PolicyError(TokenAgentError):
    """An INF policy that cannot be used: syntax, unknown values, contradictions (file:line)."""

    exit_code = 3


class InputError(TokenAgentError):
    """Garbage, truncated or unexpected DER/PEM/base64 input, or a file that cannot be read."""

    exit_code = 4


class ModuleError(TokenAgentError):
    """A PKCS#11 module that cannot be found or loaded."""

    exit_code = 5


class TokenNotFoundError(TokenAgentError):
    """No token matches the selector, or the reader is empty."""

    exit_code = 6


class AmbiguousTokenError(TokenNotFoundError):
    """More than one token matches the selector."""

    exit_code = 6


class PinError(TokenAgentError):
    """No usable PIN source, or a PIN source that cannot be read."""

    exit_code = 7


class PinIncorrectError(PinError):
    """The token rejected the PIN. tokenagent never retries: tries may be limited."""

    exit_code = 7


class PinLockedError(PinError):
    """The user PIN is locked, or is on its final try and --force was not given."""

    exit_code = 7


class CapacityError(TokenAgentError):
    """The token cannot do what is asked: mechanism, key size, key slots, memory, read-only."""

    exit_code = 8


class KeyExistsError(CapacityError):
    """A key container (CKA_LABEL) that already exists (certreq: 0x8009000f, Object already exists)."""

    exit_code = 8
    hresult = 0x8009000F


class ObjectNotFoundError(TokenAgentError):
    """No key or certificate matches (certreq: 0x80090011, Object was not found)."""

    exit_code = 9
    hresult = 0x80090011


class AmbiguousObjectError(TokenAgentError):
    """Several keys or certificates on one token match where one was meant."""

    exit_code = 15


class KeyMismatchError(ObjectNotFoundError):
    """A certificate or request whose public key is not the key it is used with."""

    exit_code = 9


class TokenOperationError(TokenAgentError):
    """The token failed an operation it should be able to do (device error, removed, ...)."""

    exit_code = 10


class TokenBusyError(TokenOperationError):
    """Another tokenagent process holds the token's lock (it is changing the token's keys)."""

    exit_code = 10


class VerificationError(TokenAgentError):
    """A signature that does not verify, e.g. a request's proof of possession."""

    exit_code = 11


class CAError(TokenAgentError):
    """The CA refused (rejected the request), failed, or answered something that is not a certificate."""

    exit_code = 12


class RequestPendingError(CAError):
    """The CA holds the request pending (CMC cMCStatus pending): retrieve the certificate later."""

    exit_code = 14


class CAUnreachableError(CAError):
    """The CA cannot be reached now: connection refused or reset, a timeout, HTTP 5xx. Try again
    later; the request stays in the pending store."""

    exit_code = 16


class CAProtocolError(CAError):
    """The CA answered something its protocol does not allow (garbage, a page where a certificate
    belongs). Try again later; the request stays in the pending store."""

    exit_code = 17


class CAConfigError(CAError):
    """The CA connection is misconfigured: unknown profile or scheme, wrong URL (HTTP 404), a TLS
    certificate that does not verify, missing credentials."""

    exit_code = 18


class CAAuthenticationError(CAConfigError):
    """The CA refused the credentials (HTTP 401). Never retried: a password may lock an account."""

    exit_code = 19


class CANeedsRekeyError(CAError):
    """The CA will not certify this key (e.g. too short for the template): make a new request."""

    exit_code = 20


class OutputError(TokenAgentError):
    """An output file or state directory that cannot be written."""

    exit_code = 13


class Interrupted(TokenAgentError):
    """Ctrl-C: everything started was rolled back."""

    exit_code = 130


class Terminated(Interrupted):
    """SIGTERM (e.g. systemd stopping a service): rolled back as for Ctrl-C."""

    exit_code = 143


#: Every class with its exit code, for docs and for the test that keeps them stable.
EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        TokenAgentError,
        UsageError,
        PolicyError,
        InputError,
        ModuleError,
        TokenNotFoundError,
        AmbiguousTokenError,
        PinError,
        PinIncorrectError,
        PinLockedError,
        CapacityError,
        KeyExistsError,
        ObjectNotFoundError,
        AmbiguousObjectError,
        KeyMismatchError,
        TokenOperationError,
        TokenBusyError,
        VerificationError,
        CAError,
        RequestPendingError,
        CAUnreachableError,
        CAProtocolError,
        CAConfigError,
        CAAuthenticationError,
        CANeedsRekeyError,
        OutputError,
        Interrupted,
        Terminated,
    )
}
