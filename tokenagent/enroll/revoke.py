"""`revoke-request`: a CMC revocation request (RFC 5272 section 6.11), signed on a token, or a
revocation request sent to the CA itself (`revoke_at_ca`: CMP ``rr``, RFC 4210 5.3.9).

The CMC request's signer is an enrollment agent, or the certificate holder with the certificate's
own key; the CA decides which it honours. The certificate is named by issuer and serial number, as
the control requires, either given directly or read from the certificate itself. A CMP ``rr`` is
protected with the profile's shared secret (PasswordBasedMac) and needs no token.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tokenagent.ca.answers import error_for
from tokenagent.enroll.agent import Agent, AgentOptions, open_agent
from tokenagent.enroll.files import check_output, encode_request, write_atomically
from tokenagent.errors import InputError, UsageError
from tokenagent.inputs import read_input
from tokenagent.request.cmc import CRL_REASONS, CmcControls, pki_data, revoke_request
from tokenagent.request.cms_sign import sign_content
from tokenagent.request.der import PARSE_ERRORS, reason_of
from tokenagent.request.oids import OID_PKI_DATA
from tokenagent.request.response import read_response

if TYPE_CHECKING:
    from tokenagent.ca.answers import Answer
    from tokenagent.ca.cmp import Revoked
    from tokenagent.enroll.submit import CaOptions

#: the protocols whose connector asks the CA itself to revoke (`revoke(certificate, reason)`)
REVOKING_PROTOCOLS = ("cmp",)


@dataclass(frozen=True)
class RevokeTarget:
    issuer: bytes  # DER Name
    serial: int
    issuer_text: str
    certificate: bytes | None = None  # DER, when read from the certificate itself (CMP rr needs it)


def target_from_certificate(path: Path) -> RevokeTarget:
    from asn1crypto import x509

    from tokenagent.request.names import name_text

    leaves = read_response(read_input(path), str(path)).end_entities()
    if len(leaves) != 1:
        raise InputError(f"{path} holds {len(leaves)} end-entity certificates; give the one to revoke")
    cert = x509.Certificate.load(leaves[0])
    try:
        cert.issuer.native  # noqa: B018 (parses every value: a CA must be able to read the name too)
        return RevokeTarget(cert.issuer.dump(), cert.serial_number, name_text(cert.issuer), leaves[0])
    except PARSE_ERRORS as exc:
        # cryptography read the certificate (read_response), but asn1crypto types name values by
        # their attribute type and refuses e.g. a CN that is not a DirectoryString
        raise InputError(f"cannot read the issuer or serial number in {path}: {reason_of(exc)}") from None


def target_from_text(issuer: str, serial: str) -> RevokeTarget:
    """``issuer`` as certreq writes a DN (CN=...,O=...); ``serial`` decimal, or hex with 0x."""
    from tokenagent.errors import PolicyError
    from tokenagent.inf.names import parse_name
    from tokenagent.request.names import name_text, x509_name

    try:
        number = int(serial.replace(":", ""), 0)
    except ValueError:
        raise UsageError(f"--serial {serial!r}: give a decimal number or 0x followed by hex digits") from None
    try:
        name = x509_name(parse_name(issuer))
    except (PolicyError, ValueError) as exc:
        raise UsageError(f"--issuer {issuer!r}: {exc}") from None
    return RevokeTarget(name.dump(), number, name_text(name))  # as every command prints names


def build_revoke_request(
    agent: Agent,
    target: RevokeTarget,
    *,
    reason: str,
    controls: CmcControls,
    invalidity: datetime | None = None,
    comment: str | None = None,
) -> bytes:
    """PKIData { controlSequence { ..., revokeRequest }, reqSequence {} } signed by `agent`'s key."""
    control = revoke_request(target.issuer, target.serial, reason, invalidity, comment)
    content = pki_data(None, controls, revoke=control).dump()
    return sign_content(OID_PKI_DATA, content, [agent.spec()], [agent.certificate])


@dataclass(frozen=True)
class RevokeOptions:
    """What `tokenagent revoke-request` was asked; the library API takes the same."""

    agent: AgentOptions
    target: RevokeTarget
    controls: CmcControls
    reason: str = "unspecified"
    comment: str | None = None
    output: Path | None = None  # None: the caller prints `RevokeResult.encoded`
    binary: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class RevokeResult:
    der: bytes
    target: RevokeTarget
    reason: str
    output: Path | None
    encoded: bytes

    def to_json(self) -> dict[str, Any]:
        to_stdout = self.output is None
        return {
            "format_version": 1,
            "output": None if to_stdout else str(self.output),
            "issuer": self.target.issuer_text,
            "serial": f"{self.target.serial:x}",
            "reason": self.reason,
            "base64": base64.b64encode(self.der).decode("ascii") if to_stdout else None,
        }


def revoke(options: RevokeOptions, *, on_warning: Callable[[str], None] | None = None) -> RevokeResult:
    """`tokenagent revoke-request`: the signed CMC revocation request, written all or nothing."""
    if options.output is not None:
        check_output(options.output, options.overwrite)
    with open_agent(options.agent, on_warning=on_warning) as agent:
        der = build_revoke_request(
            agent, options.target, reason=options.reason, controls=options.controls, comment=options.comment
        )
    encoded = encode_request(der, options.binary)
    if options.output is not None:
        write_atomically(options.output, encoded)
    return RevokeResult(der, options.target, options.reason, options.output, encoded)


# -- revocation by the CA itself (CMP rr) ------------------------------------------------------------


@runtime_checkable
class Revoker(Protocol):
    """A connector that sends a revocation request: `Revoked`, or the `Answer` the CA's refusal is."""

    def revoke(self, certificate: bytes, reason: int | None = None) -> Revoked | Answer: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CaRevokeOptions:
    """`tokenagent revoke-request --cert FILE --config CA`; the library API takes the same."""

    ca: CaOptions
    target: RevokeTarget  # read from the certificate (`target_from_certificate`)
    reason: str = "unspecified"


@dataclass(frozen=True)
class CaRevokeResult:
    target: RevokeTarget
    reason: str
    ca: str  # the profile as described in messages
    message: str  # what the CA said

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "state": "revoked",
            "ca": self.ca,
            "issuer": self.target.issuer_text,
            "serial": f"{self.target.serial:x}",
            "reason": self.reason,
            "message": self.message,
        }


def revoke_at_ca(options: CaRevokeOptions) -> CaRevokeResult:
    """Ask the CA of ``options.ca`` to revoke the certificate; raises `error_for` its answer unless revoked."""
    if options.target.certificate is None:
        raise UsageError("a CA revokes the certificate it is sent: give it with --cert FILE")
    reasons = {name.lower(): value for name, value in CRL_REASONS.items()}
    if options.reason.lower() not in reasons:
        raise UsageError(f"unknown revocation reason {options.reason!r} (one of: {', '.join(CRL_REASONS)})")
    profile = options.ca.resolve()
    if profile.protocol not in REVOKING_PROTOCOLS:
        raise UsageError(
            f"{profile.describe()} is a {profile.protocol} CA, and tokenagent sends revocation requests only "
            f"to {', '.join(REVOKING_PROTOCOLS)} CAs (e.g. --config cmp+http://HOST/pkix/); without --config, "
            "revoke-request writes a CMC revocation request for the CA operator"
        )
    from tokenagent.ca.cmp import Revoked
    from tokenagent.ca.profiles import open_connector

    connector = open_connector(profile)
    if not isinstance(connector, Revoker):  # REVOKING_PROTOCOLS names only connectors that revoke
        raise TypeError(f"the {profile.protocol} connector cannot revoke")
    # RFC 5280 5.3.1: the reason code SHOULD be absent rather than unspecified (0)
    code = reasons[options.reason.lower()] or None
    try:
        answer = connector.revoke(options.target.certificate, code)
    finally:
        connector.close()
    if isinstance(answer, Revoked):
        return CaRevokeResult(options.target, options.reason, profile.describe(), answer.message)
    where = profile.describe()
    details: dict[str, object] = {
        "issuer": options.target.issuer_text,
        "serial": f"{options.target.serial:x}",
        "reason": options.reason,
    }
    raise error_for(answer, where, details)
