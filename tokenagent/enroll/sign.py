"""The `sign` use case: an enrollment agent co-signs a request on behalf of a user (EOBO).

Before signing, the inner PKCS#10's own signature (the user's proof of possession) must verify,
and so must every signature already on a CMS/CMC request (request/inspect.py): the agent vouches
for what it signs. The agent's key and certificate come from enroll/agent.py; wire formats are
described in request/signed_data.py.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenagent.display import escape
from tokenagent.enroll.agent import Agent, AgentOptions, open_agent
from tokenagent.enroll.files import check_output, encode_request, write_atomically
from tokenagent.errors import UsageError
from tokenagent.inputs import read_input
from tokenagent.request.armor import read_der
from tokenagent.request.attributes import requester_name_problem
from tokenagent.request.cmc import CmcControls, pki_data
from tokenagent.request.cms_sign import append_signer, name_value_attribute, sign_content
from tokenagent.request.inspect import RequestSummary, inspect_request
from tokenagent.request.oids import OID_DATA, OID_PKI_DATA

log = logging.getLogger("tokenagent")

FORMATS = ("pkcs7", "cmc")


@dataclass(frozen=True)
class CoSignResult:
    der: bytes
    form: str  # pkcs7 | cmc
    appended: bool  # True: one more SignerInfo on an existing CMS/CMC request
    signers: int  # SignerInfos in the result
    summary: RequestSummary
    requester: str | None
    warnings: tuple[str, ...] = ()


def co_sign(
    agent: Agent,
    request: bytes | str,
    *,
    requester: str | None,
    format: str = "pkcs7",
    template: str | None = None,
    controls: CmcControls | None = None,
    what: str = "request",
    confirm: Callable[[RequestSummary], bool] | None = None,
    yes: bool = False,
) -> CoSignResult:
    """Wrap a PKCS#10 in a PKCS7 or CMC request signed by the agent, or add the agent's
    signature to a CMS/CMC request. Raises before signing if any signature fails to verify."""
    if format not in FORMATS:
        raise UsageError(f"--format is pkcs7 or cmc, not {format}")
    if requester is not None:
        problem = requester_name_problem(requester)
        if problem is not None:
            raise UsageError(f"--requester {escape(requester)}: {problem}; nothing was signed")
    der = read_der(request, what)
    summary, existing = inspect_request(der, what, template)
    if not yes:
        if confirm is None:
            raise UsageError("signing on behalf of a user needs a confirmation: give --yes (no terminal to ask)")
        if not confirm(summary):
            raise UsageError("not confirmed: nothing was signed")
    if existing is not None:
        return _append(agent, der, summary, existing, requester, what)
    if requester is None:
        raise UsageError("--requester DOMAIN\\user is needed to sign a PKCS#10 on behalf of its user")
    if format == "pkcs7":
        pairs = [("RequesterName", requester)] + ([("CertificateTemplate", template)] if template else [])
        signed = sign_content(OID_DATA, der, [agent.spec([name_value_attribute(pairs)])], [agent.certificate])
    else:
        base = controls or CmcControls()
        reg_info = base.reg_info + ((("CertificateTemplate", template),) if template else ())
        merged = CmcControls(**{**base.__dict__, "requester_name": requester, "reg_info": reg_info})
        content = pki_data(der, merged).dump()
        signed = sign_content(OID_PKI_DATA, content, [agent.spec()], [agent.certificate])
    return CoSignResult(signed, format, False, 1, summary, requester, tuple(agent.warnings))


def _append(
    agent: Agent, der: bytes, summary: RequestSummary, form: str, requester: str | None, what: str
) -> CoSignResult:
    if requester is not None and summary.requester is not None and requester != summary.requester:
        raise UsageError(
            f"{what} already names requester {summary.requester}; the first signature fixes it "
            f"(--requester {requester} differs)"
        )
    warnings = list(agent.warnings)
    earlier = _signed_before(der, agent.certificate)
    if earlier is not None:
        warnings.append(
            f"this agent already signed {what} (signature {earlier}); the CA sees a second signature by the same "
            "agent, which counts once towards a template's required number of agent signatures"
        )
    signed = append_signer(der, agent.spec(), [agent.certificate])
    return CoSignResult(signed, form, True, summary.signers + 1, summary, summary.requester, tuple(warnings))


def _signed_before(der: bytes, certificate: bytes) -> int | None:
    """The 1-based number of a signature in ``der``'s SignedData made with ``certificate``'s key
    (by issuer and serial number, or by subject key identifier), None when there is none."""
    from asn1crypto import cms as asn1_cms
    from asn1crypto import x509 as asn1_x509

    cert = asn1_x509.Certificate.load(certificate)
    try:
        signer_infos = asn1_cms.ContentInfo.load(der)["content"]["signer_infos"]
        for number, info in enumerate(signer_infos, start=1):
            sid = info["sid"]
            if sid.name == "issuer_and_serial_number":
                if sid.chosen["issuer"] == cert.issuer and sid.chosen["serial_number"].native == cert.serial_number:
                    return number
            elif cert.key_identifier is not None and sid.chosen.native == cert.key_identifier:
                return number
    except (ValueError, TypeError, KeyError):  # inspect_request already refused what does not parse
        return None
    return None


@dataclass(frozen=True)
class SignOptions:
    """What `tokenagent sign` was asked; the library API takes the same."""

    request: Path
    agent: AgentOptions
    output: Path | None = None  # None: the caller prints `SignResult.encoded`
    binary: bool = False
    overwrite: bool = False
    requester: str | None = None
    format: str = "pkcs7"
    template: str | None = None
    controls: CmcControls | None = None
    yes: bool = False


@dataclass(frozen=True)
class SignResult:
    signed: CoSignResult
    agent_subject: str
    output: Path | None
    encoded: bytes  # what was written to ``output`` (or is for standard output)

    def to_json(self) -> dict[str, Any]:
        signed, to_stdout = self.signed, self.output is None
        return {
            "format_version": 1,
            "output": None if to_stdout else str(self.output),
            "form": signed.form,
            "appended": signed.appended,
            "signers": signed.signers,
            "requester": signed.requester,
            "agent": self.agent_subject,
            "request": {
                "subject": signed.summary.subject,
                "sans": list(signed.summary.sans),
                "template": signed.summary.template,
                "key": signed.summary.key,
            },
            "sha256": hashlib.sha256(signed.der).hexdigest(),
            "base64": base64.b64encode(signed.der).decode("ascii") if to_stdout else None,
            "warnings": list(signed.warnings),
        }


def sign_request(
    options: SignOptions,
    *,
    confirm: Callable[[RequestSummary], bool] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> SignResult:
    """`tokenagent sign`: read the request, co-sign it with the agent, write the result all or nothing."""
    if options.output is not None:
        check_output(options.output, options.overwrite)
    data = read_input(options.request)
    with open_agent(options.agent, on_warning=on_warning) as agent:
        signed = co_sign(
            agent,
            data,
            requester=options.requester,
            format=options.format,
            template=options.template,
            controls=options.controls,
            what=str(options.request),
            confirm=confirm,
            yes=options.yes,
        )
        agent_subject = agent.subject
        for message in signed.warnings[len(agent.warnings) :]:  # open_agent reported the agent's own
            (on_warning or (lambda text: log.warning("%s", text)))(message)
    encoded = encode_request(signed.der, options.binary)
    if options.output is not None:
        write_atomically(options.output, encoded)
    return SignResult(signed, agent_subject, options.output, encoded)
