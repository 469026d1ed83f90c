"""Microsoft AD CS web enrollment ("certsrv"): the pages certreq's users know from a browser.

Submit: ``POST certfnsh.asp`` with ``Mode=newreq``, ``CertRequest`` (base64 PKCS#10, PKCS7 or
CMC), ``CertAttrib`` (``Name:Value`` lines: the profile's template and attributes, then
``--attrib``), ``TargetStoreFlags=0``, ``SaveCert=yes``. The answer is a page:

- issued: it links ``certnew.cer?ReqID=N&Enc=bin``; the certificate is then fetched as
  ``certnew.cer?ReqID=N&Enc=b64`` (``application/pkix-cert``) and its chain as ``certnew.p7b``;
- pending: "Certificate Pending ... Your Request Id is N." (`poll` asks ``certnew.cer`` again);
- denied: 'The disposition message is "Denied by Policy Module 0x80094800, ..."', whose HRESULT
  ca/certsrv_codes.py says in plain words.

The pages are matched by the English phrases every public certsrv client matches; a localized
IIS answers in other words and is reported as an unreadable page, not misread.
"""

from __future__ import annotations

import base64
import html
import re
import urllib.parse

from tokenagent.ca.answers import Answer, Issued, Misconfigured, NeedsRekey, Pending, Rejected, Unreachable
from tokenagent.ca.certsrv_codes import lookup
from tokenagent.ca.connector import CaRequest
from tokenagent.ca.http import HttpClient, HttpFailure, HttpResponse, HttpSettings, transport_failure
from tokenagent.ca.trust import check_issued_under
from tokenagent.errors import TokenAgentError
from tokenagent.request.response import CertificateResponse, read_response

_ISSUED = re.compile(r"certnew\.cer\?ReqID=(\d+)&")
_PENDING_ID = re.compile(r"Your Request Id is (\d+)")
_DISPOSITION = re.compile(r'The disposition message is "([^"]*)"?')
_RETRIEVE_DISPOSITION = re.compile(r"Disposition message:[^\t]*\t\t([^\r\n<]+)")
_HRESULT = re.compile(r"0x([0-9a-fA-F]{8})")
_ERROR = re.compile(r"Error:\s+(.*?0x[0-9a-fA-F]{8}(?:\s*\([^)]*\))?)")
_RENEWALS = re.compile(r"var nRenewals=(\d+);")
_TAKEN_UNDER_SUBMISSION = "Taken Under Submission"
_WAITING = "taken under submission (a CA officer must issue it)"


class CertsrvConnector:
    protocol = "certsrv"

    def __init__(
        self,
        base_url: str,
        settings: HttpSettings,
        *,
        template: str | None = None,
        attributes: tuple[tuple[str, str], ...] = (),
        trust: tuple[bytes, ...] = (),
    ) -> None:
        self.http = HttpClient(base_url, settings)
        self.template = template
        self.attributes = attributes
        self.trust = trust

    def describe(self) -> str:
        return self.http.url_for("")

    def close(self) -> None:
        self.http.close()

    # -- submit -------------------------------------------------------------------------------------

    def submit(self, request: CaRequest) -> Answer:
        form = {
            "Mode": "newreq",
            "CertRequest": _base64_lines(request.der),
            "CertAttrib": cert_attrib(self.template, (*self.attributes, *request.attributes)),
            "TargetStoreFlags": "0",
            "SaveCert": "yes",
        }
        body = urllib.parse.urlencode(form).encode("ascii")
        try:
            page = self._page(
                self.http.request("POST", "certfnsh.asp", body, {"Content-Type": "application/x-www-form-urlencoded"})
            )
            if isinstance(page, str):
                return self._after_submit(page)
            return page
        except HttpFailure as failure:
            return failure.answer

    def _after_submit(self, text: str) -> Answer:
        issued = _ISSUED.search(text)
        if issued:
            return self._fetch(issued.group(1))
        if "Certificate Pending" in text:
            found = _PENDING_ID.search(text)
            if found:
                return Pending(found.group(1), found.group(1), None, _WAITING)
        disposition = _DISPOSITION.search(text)
        if disposition:
            found = _PENDING_ID.search(text)
            return _denial(html.unescape(disposition.group(1)), found.group(1) if found else None)
        return Unreachable(f"the certfnsh.asp page says neither issued, pending nor denied: {_gist(text)}", True)

    # -- poll (certreq -retrieve) -------------------------------------------------------------------

    def poll(self, cookie: str, request: CaRequest | None) -> Answer:
        if not cookie.isdigit():
            return Misconfigured(f"certsrv request IDs are numbers, not {cookie!r}")
        try:
            return self._fetch(cookie)
        except HttpFailure as failure:
            return failure.answer

    def _fetch(self, request_id: str) -> Answer:
        """certnew.cer for the certificate, certnew.p7b for its chain."""
        response = self.http.request("GET", f"certnew.cer?ReqID={request_id}&Enc=b64")
        failure = self._failure(response)
        if failure is not None:
            return failure
        if response.content_type != "application/pkix-cert":
            return self._retrieve_page(response, request_id)
        try:
            certificate = read_response(response.body, f"certificate {request_id} from {self.describe()}")
        except TokenAgentError as exc:
            return Unreachable(f"certnew.cer for request {request_id}: {exc.one_line()}", True)
        if certificate.form != "certificate":
            found = f"certnew.cer for request {request_id} holds a {certificate.form}, not a certificate"
            return Unreachable(found, True)
        der = certificate.certificates[0]
        chain, raw, form = self._chain(request_id, der)
        if self.trust:
            check_issued_under(der, chain, self.trust, f"the certificate of request {request_id}")
        return Issued(der, chain, raw or der, form, request_id)

    def _chain(self, request_id: str, certificate: bytes) -> tuple[tuple[bytes, ...], bytes | None, str]:
        """The CA certificates above ``certificate`` from certnew.p7b; none if that page fails."""
        try:
            response = self.http.request("GET", f"certnew.p7b?ReqID={request_id}&Enc=b64")
        except HttpFailure:
            return (), None, "certificate"
        if response.status != 200 or response.content_type != "application/x-pkcs7-certificates":
            return (), None, "certificate"
        try:
            bundle: CertificateResponse = read_response(response.body, f"certnew.p7b of request {request_id}")
            chain = tuple(bundle.chain_for(certificate))
        except TokenAgentError:
            return (), None, "certificate"
        return chain, _der_of(response.body), "pkcs7"

    def _retrieve_page(self, response: HttpResponse, request_id: str) -> Answer:
        text = html.unescape(_text(response))
        found = _RETRIEVE_DISPOSITION.search(text)
        if found:
            message = found.group(1).strip()
            if _TAKEN_UNDER_SUBMISSION.lower() in message.lower():
                return Pending(request_id, request_id, None, _WAITING)
            return _denial(message, request_id)
        error = _ERROR.search(_gist(text, limit=2000))
        if error:
            return _denial(error.group(1), request_id)
        page = f"certnew.cer for request {request_id} answered a page without a certificate: {_gist(text)}"
        return Unreachable(page, True)

    # -- CA certificates ----------------------------------------------------------------------------

    def ca_certificates(self) -> tuple[bytes, ...]:
        try:
            page = self.http.request("GET", "certcarc.asp")
            renewals = _RENEWALS.search(_text(page)) if page.status == 200 else None
            renewal = renewals.group(1) if renewals else "0"
            response = self.http.request("GET", f"certnew.p7b?ReqID=CACert&Renewal={renewal}&Enc=b64")
        except HttpFailure:
            return ()
        if response.status != 200:
            return ()
        try:
            bundle = read_response(response.body, "the CA certificates (certnew.p7b)")
        except TokenAgentError:
            return ()
        leaves = bundle.end_entities()
        return tuple(leaves[:1] + [c for c in bundle.certificates if c not in leaves[:1]])

    # -- pages --------------------------------------------------------------------------------------

    def _failure(self, response: HttpResponse) -> Answer | None:
        failure = transport_failure(response, self.describe())
        if failure is not None:
            return failure
        if response.status == 403:
            return Misconfigured(
                f"{response.describe()} from {response.url}: IIS refuses this client (https or a client certificate "
                "required, or the account may not use web enrollment)"
            )
        if response.status != 200:
            return Unreachable(f"{response.url} answered {response.describe()}", True)
        return None

    def _page(self, response: HttpResponse) -> str | Answer:
        failure = self._failure(response)
        if failure is not None:
            return failure
        if response.content_type not in ("text/html", ""):
            return Unreachable(f"{response.url} answered {response.content_type}, not a certsrv page", True)
        return html.unescape(_text(response))


def cert_attrib(template: str | None, attributes: tuple[tuple[str, str], ...]) -> str:
    """The CertAttrib field: CRLF-separated Name:Value lines, the template first."""
    lines = [f"CertificateTemplate:{template}"] if template else []
    lines += [f"{name}:{value}" for name, value in attributes]
    return "".join(line + "\r\n" for line in lines)


#: The longest CA message kept: a disposition message is a sentence, not a page.
MAX_MESSAGE = 500


def _denial(message: str, request_id: str | None) -> Answer:
    message = message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "…"
    found = _HRESULT.search(message)
    if not found:
        return Rejected(message.strip() or "denied", None, None, request_id)
    value = int(found.group(1), 16)
    known = lookup(value)
    code = f"0x{value:08x}" + (f" {known.name}" if known else "")
    if known is not None and known.rekey:
        return NeedsRekey(message.strip(), code)
    return Rejected(message.strip(), code, known.meaning if known else None, request_id)


def _base64_lines(der: bytes) -> str:
    text = base64.b64encode(der).decode("ascii")
    return "\r\n".join(text[i : i + 64] for i in range(0, len(text), 64))


def _text(response: HttpResponse) -> str:
    return response.body.decode("utf-8", "replace")


def _gist(text: str, limit: int = 200) -> str:
    """A page reduced to its first words, for an error line."""
    words = " ".join(re.sub(r"<[^>]*>", " ", text).split())
    return words[:limit] + ("…" if len(words) > limit else "") if words else "(an empty page)"


def _der_of(body: bytes) -> bytes | None:
    from tokenagent.request.armor import read_der

    try:
        return read_der(body, "certnew.p7b")
    except TokenAgentError:
        return None
