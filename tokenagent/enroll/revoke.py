"""`revoke-request`: a CMC revocation request (RFC 5272 section 6.11), signed on a token.

The signer is an enrollment agent, or the certificate holder with the certificate's own key; the
CA decides which it honours. The certificate is named by issuer and serial number, as the control
requires, either given directly or read from the certificate itself.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenagent.enroll.agent import Agent, AgentOptions, open_agent
from tokenagent.enroll.files import check_output, encode_request, write_atomically
from tokenagent.errors import InputError, UsageError
from tokenagent.inputs import read_input
from tokenagent.request.cmc import CmcControls, pki_data, revoke_request
from tokenagent.request.cms_sign import sign_content
from tokenagent.request.der import PARSE_ERRORS, reason_of
from tokenagent.request.oids import OID_PKI_DATA
from tokenagent.request.response import read_response


@dataclass(frozen=True)
class RevokeTarget:
    issuer: bytes  # DER Name
    serial: int
    issuer_text: str


def target_from_certificate(path: Path) -> RevokeTarget:
    from asn1crypto import x509

    from tokenagent.request.names import name_text

    leaves = read_response(read_input(path), str(path)).end_entities()
    if len(leaves) != 1:
        raise InputError(f"{path} holds {len(leaves)} end-entity certificates; give the one to revoke")
    cert = x509.Certificate.load(leaves[0])
    try:
        cert.issuer.native  # noqa: B018 (parses every value: a CA must be able to read the name too)
        return RevokeTarget(cert.issuer.dump(), cert.serial_number, name_text(cert.issuer))
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
