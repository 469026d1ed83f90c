"""HTTP(S) for the CA connectors: the standard library's http.client, TLS verified, a timeout on
every request, and Basic, NTLM or Negotiate authentication (pyspnego).

- TLS: the system trust store, or only the certificates of ``ca_bundle``; host name checked; TLS
  1.2 or newer. A certificate that does not verify is a configuration problem (`Misconfigured`):
  there is no way to turn verification off, so no silent downgrade.
- Every request has a timeout (the connection and each read); redirects are not followed (the
  CA's URL belongs in the configuration); an answer larger than `MAX_BODY` is refused.
- Credentials are read when the server first asks for them (HTTP 401), once per run: a refused
  password is never tried again, because AD accounts lock after a few failures. Basic is refused
  over plain http. NTLM over https sends the TLS channel binding (RFC 5929 tls-server-end-point),
  which IIS's Extended Protection requires. Negotiate uses a Kerberos ticket cache when one exists
  and python-gssapi is installed, else NTLM inside SPNEGO with the configured password.
- Nothing secret is logged: -vv shows the method, URL, status, content type and size only.

A transport failure is raised as `HttpFailure` carrying the answer (`Unreachable` or
`Misconfigured`) the connector returns; everything else (status codes included) is the connector's
to interpret.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import os
import socket
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from tokenagent import __version__
from tokenagent.ca.answers import Misconfigured, Unreachable
from tokenagent.errors import CAConfigError
from tokenagent.secret_sources import Secret, SecretSource

log = logging.getLogger("tokenagent")

#: The largest answer read from a CA: a certificate chain or CMC response is a few KiB.
MAX_BODY = 8 * 1024 * 1024
DEFAULT_TIMEOUT = 30.0
AUTH_METHODS = ("auto", "none", "basic", "ntlm", "negotiate")


class HttpFailure(Exception):
    """The request did not produce an HTTP answer the connector can read."""

    def __init__(self, answer: Unreachable | Misconfigured) -> None:
        super().__init__(answer.message)
        self.answer = answer


@dataclass(frozen=True)
class HttpSettings:
    timeout: float = DEFAULT_TIMEOUT
    ca_bundle: Path | None = None  # None: the system trust store
    auth: str = "auto"  # one of AUTH_METHODS
    user: str | None = None  # DOMAIN\\user, user@domain or user
    password: SecretSource | None = None
    user_agent: str = f"tokenagent/{__version__}"


@dataclass(frozen=True)
class HttpResponse:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes = field(repr=False)
    url: str

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def content_type(self) -> str:
        """The media type, lower case, without parameters ("" when absent)."""
        return (self.header("Content-Type") or "").split(";")[0].strip().lower()

    def retry_after(self) -> datetime | None:
        """Retry-After as a UTC time (RFC 9110: seconds or an HTTP date)."""
        value = (self.header("Retry-After") or "").strip()
        if value.isdigit():
            return datetime.now(UTC) + timedelta(seconds=min(int(value), 366 * 86400))
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)

    def describe(self) -> str:
        return f"HTTP {self.status} {self.reason}".strip()


def said_text(response: HttpResponse) -> str:
    """What an error body says, when it is short text ("" for DER or other binary bodies)."""
    text = response.body[:300].decode("utf-8", "replace")
    if response.body[:1] == b"\x30" or "\x00" in text:
        return ""
    return " ".join(text.split())


def transport_failure(response: HttpResponse, where: str) -> Unreachable | Misconfigured | None:
    """What every HTTP CA protocol means by a redirect, a server error or rate limiting."""
    if 300 <= response.status < 400:
        target = response.header("Location") or "(no Location)"
        return Misconfigured(
            f"{response.describe()} to {target}: tokenagent does not follow redirects; "
            "put the CA's own URL into --config"
        )
    if response.status >= 500 or response.status == 429:
        return Unreachable(f"{where} answered {response.describe()}", retry_after=response.retry_after())
    if response.status == 404:
        return Misconfigured(f"{response.describe()} for {response.url}: check the URL in --config")
    return None


def parse_base_url(url: str, schemes: tuple[str, ...] = ("http", "https")) -> urllib.parse.SplitResult:
    """An http(s) URL without credentials, query or fragment; `CAConfigError` otherwise."""
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise CAConfigError("the CA URL holds a space or control character (percent-encode it)")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as exc:
        raise CAConfigError(f"not a usable URL: {exc}") from None
    if parts.scheme not in schemes:
        raise CAConfigError(f"URL scheme {parts.scheme or '(none)'}: is not one of {', '.join(schemes)}")
    if not parts.hostname:
        raise CAConfigError("the URL names no host")
    if parts.username is not None or parts.password is not None:
        # never shown: the part before @ may be a password
        raise CAConfigError(
            "the URL holds credentials (user:password@); give the user with --ca-user and the password "
            "with --ca-password-source, so it stays out of the process list"
        )
    if parts.query or parts.fragment:
        raise CAConfigError("the CA URL must not have a query or fragment")
    return parts


class HttpClient:
    """One keep-alive connection to one CA server (NTLM authenticates a connection, not a request)."""

    def __init__(self, base_url: str, settings: HttpSettings) -> None:
        if settings.auth not in AUTH_METHODS:
            raise CAConfigError(f"auth = {settings.auth!r}: use one of {', '.join(AUTH_METHODS)}")
        self.parts = parse_base_url(base_url)
        self.settings = settings
        self.secure = self.parts.scheme == "https"
        self.host = self.parts.hostname or ""
        self.port = self.parts.port or (443 if self.secure else 80)
        self.base_path = self.parts.path.rstrip("/")
        self._connection: http.client.HTTPConnection | None = None
        self._fresh = False  # the connection has not carried a request yet
        self._password: Secret | None = None
        self._basic: str | None = None  # the Authorization header once Basic is chosen
        self._refused = False  # the server refused our credentials once: never again this run

    @property
    def origin(self) -> str:
        return f"{self.parts.scheme}://{self.parts.netloc}"

    def url_for(self, path: str) -> str:
        return self.origin + self._target(path)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # -- requests -----------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> HttpResponse:
        """Send one request (authenticating if the server asks); `HttpFailure` if no answer came."""
        target = self._target(path)
        base_headers = {"User-Agent": self.settings.user_agent, "Accept": "*/*", **(headers or {})}
        if self._basic is not None:
            base_headers["Authorization"] = self._basic
        response = self._exchange(method, target, body, base_headers)
        if response.status != 401:
            return response
        return self._authenticate(method, target, body, base_headers, response)

    def _target(self, path: str) -> str:
        """``path`` below the base URL's path; "" is the base URL itself, exactly as configured."""
        if path.startswith("/"):
            return path
        return f"{self.base_path}/{path}" if path else (self.parts.path or "/")

    def _exchange(self, method: str, target: str, body: bytes | None, headers: Mapping[str, str]) -> HttpResponse:
        url = self.origin + target
        for attempt in (1, 2):
            connection = self._open()
            reused = not self._fresh
            self._fresh = False
            try:
                connection.request(method, target, body=body, headers=dict(headers))
                raw = connection.getresponse()
                data = raw.read(MAX_BODY + 1)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # the server closed an idle keep-alive connection: one new connection
                closed = f"{self.host}:{self.port} closed the connection ({_reason(exc)})"
                raise HttpFailure(Unreachable(closed)) from None
            except http.client.HTTPException as exc:
                self.close()
                garbage = f"not an HTTP answer from {url} ({_reason(exc)})"
                raise HttpFailure(Unreachable(garbage, garbled=True)) from None
            except OSError as exc:
                self.close()
                raise HttpFailure(self._connection_failure(exc)) from None
            if len(data) > MAX_BODY:
                self.close()
                raise HttpFailure(Unreachable(f"{url} answered more than {MAX_BODY} bytes", garbled=True))
            if raw.will_close:
                self.close()
            response = HttpResponse(raw.status, raw.reason, tuple(raw.getheaders()), data, url)
            log.debug(
                "%s %s -> %s (%d bytes, %s)", method, url, response.describe(), len(data), response.content_type or "-"
            )
            return response
        raise AssertionError("unreachable")

    def _open(self) -> http.client.HTTPConnection:
        if self._connection is None:
            timeout = self.settings.timeout
            if self.secure:
                self._connection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=timeout, context=self._tls_context()
                )
            else:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            self._fresh = True
        return self._connection

    def _tls_context(self) -> ssl.SSLContext:
        bundle = self.settings.ca_bundle
        try:
            context = ssl.create_default_context(cafile=str(bundle) if bundle is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise CAConfigError(f"cannot read the TLS trust file {bundle}: {_reason(exc)}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _connection_failure(self, exc: OSError) -> Unreachable | Misconfigured:
        where = f"{self.host}:{self.port}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            trust = f"the certificates in {self.settings.ca_bundle}" if self.settings.ca_bundle else "the system store"
            return Misconfigured(
                f"the TLS certificate of {where} does not verify against {trust} ({exc.verify_message}); "
                "give --ca-bundle (or ca_bundle in cas.toml) with the CA that issued it"
            )
        if isinstance(exc, ssl.SSLError):
            return Misconfigured(f"TLS with {where} failed ({exc.reason or _reason(exc)}); is it an https server?")
        if isinstance(exc, TimeoutError | socket.timeout):
            return Unreachable(f"no answer from {where} within {self.settings.timeout:g} s")
        if isinstance(exc, ConnectionRefusedError):
            return Unreachable(f"connection to {where} refused")
        if isinstance(exc, socket.gaierror):
            return Unreachable(f"cannot resolve {self.host} ({exc.strerror or exc})")
        return Unreachable(f"connection to {where} failed ({_reason(exc)})")

    # -- authentication -----------------------------------------------------------------------------

    def _authenticate(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str], challenge: HttpResponse
    ) -> HttpResponse:
        offered = _offered(challenge)
        if self._refused or self._basic is not None:
            self._refused = True
            raise HttpFailure(self._refusal())
        scheme = self._choose(offered)
        if scheme == "basic":
            self._basic = "Basic " + base64.b64encode(f"{self.settings.user}:{self._secret()}".encode()).decode()
            response = self._exchange(method, target, body, {**headers, "Authorization": self._basic})
        else:
            response = self._handshake(scheme, method, target, body, headers)
        if response.status == 401:
            self._refused = True
            raise HttpFailure(self._refusal())
        return response

    def _choose(self, offered: dict[str, str]) -> str:
        """The scheme to answer with: the configured one, else the strongest usable offer."""
        wanted = self.settings.auth
        names = ", ".join(sorted(offered)) or "none"
        if wanted == "none":
            raise HttpFailure(Misconfigured(f"the CA asks for authentication ({names}) and auth = none", True))
        if wanted != "auto":
            if wanted not in offered:
                raise HttpFailure(Misconfigured(f"the CA offers {names}, not {wanted} authentication", True))
            return self._usable(wanted)
        if "negotiate" in offered and self.settings.user is None and _kerberos_available():
            return "negotiate"
        for scheme in ("negotiate", "ntlm", "basic"):
            if scheme in offered and self.settings.user is not None:
                if scheme == "basic" and not self.secure:
                    continue
                return self._usable(scheme)
        if self.settings.user is None:
            kerberos = " or get a Kerberos ticket (kinit; needs pyspnego[kerberos])" if "negotiate" in offered else ""
            raise HttpFailure(
                Misconfigured(
                    f"the CA asks for authentication ({names}): give --ca-user and --ca-password-source "
                    f"(or user and password_source in cas.toml){kerberos}",
                    True,
                )
            )
        return self._usable(next(iter(offered), "basic"))

    def _usable(self, scheme: str) -> str:
        if scheme == "basic" and not self.secure:
            raise HttpFailure(
                Misconfigured(
                    "the CA asks for Basic authentication over plain http, which would send the password "
                    "in clear; use an https URL",
                    True,
                )
            )
        if scheme in ("basic", "ntlm") and self.settings.user is None:
            raise HttpFailure(Misconfigured(f"{scheme} authentication needs --ca-user and --ca-password-source", True))
        if scheme == "negotiate" and self.settings.user is None and not _kerberos_available():
            raise HttpFailure(
                Misconfigured(
                    "Negotiate without a user needs a Kerberos ticket cache (kinit) and python-gssapi; "
                    "or give --ca-user and --ca-password-source for NTLM",
                    True,
                )
            )
        if scheme not in ("basic", "ntlm", "negotiate"):
            raise HttpFailure(Misconfigured(f"the CA asks for {scheme} authentication, which tokenagent lacks", True))
        return scheme

    def _handshake(
        self, scheme: str, method: str, target: str, body: bytes | None, headers: dict[str, str]
    ) -> HttpResponse:
        """NTLM or Negotiate: a context's tokens go back and forth on one connection until it is done."""
        import spnego
        from spnego.exceptions import SpnegoError

        header_name = "NTLM" if scheme == "ntlm" else "Negotiate"
        password = self._secret() if self.settings.user is not None else None
        try:
            context = spnego.client(
                self.settings.user,
                password,
                hostname=self.host,
                service="HTTP",
                protocol=scheme,
                channel_bindings=self._channel_bindings(),
            )
            token = context.step()
        except SpnegoError as exc:
            failed = f"{header_name} authentication cannot start: {_reason(exc)}"
            raise HttpFailure(Misconfigured(failed, True)) from None
        response: HttpResponse | None = None
        for _ in range(4):
            if token is None:
                break
            auth_headers = {**headers, "Authorization": f"{header_name} {base64.b64encode(token).decode()}"}
            response = self._exchange(method, target, body, auth_headers)
            if response.status != 401 or context.complete:
                break
            reply = _offered(response).get(scheme)
            if not reply:
                break  # the server gave up on the handshake: the credentials were refused
            try:
                token = context.step(base64.b64decode(reply))
            except (SpnegoError, ValueError) as exc:
                log.debug("%s handshake failed: %s", header_name, _reason(exc))
                break
        assert response is not None
        return response

    def _channel_bindings(self) -> Any:
        """RFC 5929 tls-server-end-point over https (IIS Extended Protection), else none."""
        if not self.secure:
            return None
        connection = self._open()
        if connection.sock is None:
            connection.connect()
        sock = connection.sock
        assert isinstance(sock, ssl.SSLSocket)
        certificate = sock.getpeercert(binary_form=True)
        if certificate is None:
            return None
        from spnego.channel_bindings import GssChannelBindings

        return GssChannelBindings(application_data=b"tls-server-end-point:" + _end_point_hash(certificate))

    def _secret(self) -> str:
        if self._password is None:
            source = self.settings.password
            if source is None:
                raise HttpFailure(
                    Misconfigured(
                        f"the CA asks for the password of {self.settings.user}: give --ca-password-source "
                        "(prompt, env:VAR, file:PATH or fd:N) or password_source in cas.toml",
                        True,
                    )
                )
            self._password = source.read(f"Password for {self.settings.user} at {self.host}: ", CAConfigError)
        return self._password.reveal()

    def _refusal(self) -> Misconfigured:
        who = self.settings.user or "(no user)"
        return Misconfigured(
            f"the CA refused the credentials of {who} (HTTP 401); not tried again, so that the account does not lock",
            True,
        )


def _offered(response: HttpResponse) -> dict[str, str]:
    """WWW-Authenticate schemes (lower case) -> their first parameter/token (may be empty)."""
    offered: dict[str, str] = {}
    for key, value in response.headers:
        if key.lower() != "www-authenticate":
            continue
        for part in value.split(","):
            words = part.strip().split(None, 1)
            if words and "=" not in words[0]:
                offered.setdefault(words[0].lower(), words[1] if len(words) > 1 else "")
    return offered


def _end_point_hash(certificate_der: bytes) -> bytes:
    """The certificate's hash with its signature's hash algorithm; SHA-256 for MD5/SHA-1 (RFC 5929 4.1)."""
    from cryptography import x509

    try:
        algorithm = x509.load_der_x509_certificate(certificate_der).signature_hash_algorithm
        name = algorithm.name if algorithm is not None else "sha256"
    except ValueError:
        name = "sha256"
    if name in ("md5", "sha1"):
        name = "sha256"
    return hashlib.new(name, certificate_der).digest()


def _kerberos_available() -> bool:
    """A ticket cache to use, and pyspnego's Kerberos extra (python-gssapi and krb5) to use it with."""
    from importlib.util import find_spec

    if find_spec("gssapi") is None or find_spec("krb5") is None:
        return False
    cache = os.environ.get("KRB5CCNAME")
    if cache:
        return not cache.startswith("FILE:") or Path(cache[5:]).exists()
    return Path(f"/tmp/krb5cc_{os.getuid()}").exists()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
