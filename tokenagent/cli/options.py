"""Options every command shares, spelled the same everywhere, and the records they become.

--token    label, serial or pkcs11: URI          --module      path or p11-kit module name
--pin-source prompt|pinpad|env:VAR|file:PATH|fd:N  --pin        literal PIN (warns; scripts only)
--force    try a PIN on its final try            --json        machine-readable output
--yes      skip confirmations

`token_options` adds the first five and hands the command one `TokenArgs` (``tokens``); the agent
and CMC options of `sign`, `new` and `revoke-request` likewise become `AgentArgs` and `CmcArgs`.
Turning them into the library's records (`TokenTarget`, `AgentOptions`, `CmcControls`) is the only
thing done here; the rules (which PIN source wins, reading a shared secret) are the library's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tokenagent.cli.state import STATE

if TYPE_CHECKING:  # the library records are imported when a command runs, not for --help
    from tokenagent.enroll.agent import AgentOptions
    from tokenagent.enroll.submit import CaOptions
    from tokenagent.request.cmc import CmcControls
    from tokenagent.token.pins import PinSource
    from tokenagent.token.target import TokenTarget

F = TypeVar("F", bound=Callable[..., Any])


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    STATE.json = bool(value)
    return value


def json_option(f: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=True,
        callback=_set_json,
        is_eager=True,
        help="Print JSON (shape documented in docs/json.md).",
    )(f)


def yes_option(f: F) -> F:
    return click.option("--yes", "-y", is_flag=True, help="Skip confirmations.")(f)


def module_option(f: F) -> F:
    return click.option(
        "--module",
        "modules",
        multiple=True,
        metavar="PATH|NAME",
        help="PKCS#11 module: a path, a p11-kit module file (FILE.module, with its x-init-reserved), or "
        "a p11-kit module name (repeatable; default: TOKENAGENT_MODULE, then the p11-kit registry).",
    )(f)


def _grouped(f: Callable[..., Any], options: list[Callable[[Any], Any]], names: tuple[str, ...], make: Any) -> Any:
    """``f`` with ``options`` added; the values of ``names`` reach it as one record, ``make(...)``,
    under the record's parameter name (`make.parameter`)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in names}
        kwargs[make.parameter] = make.from_values(**values)
        return f(*args, **kwargs)

    for option in reversed(options):  # click lists options in decoration order, innermost first
        wrapper = option(wrapper)
    return wrapper


# -- the token and its PIN ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenArgs:
    """--token, --module, --pin-source, --pin and --force as typed."""

    parameter = "tokens"
    token: str | None
    modules: tuple[str, ...]
    pin_source: str | None
    literal_pin: str | None
    force: bool
    so_pin_source: str | None = None

    @classmethod
    def from_values(cls, **values: Any) -> TokenArgs:
        return cls(**values)

    def target(self, *, pin_hint: str | None = None) -> TokenTarget:
        """The `TokenTarget`; ``pin_hint`` is a pkcs11: URI that may carry pin-source/pin-value
        (default: --token)."""
        from tokenagent.token.pins import pin_source_for
        from tokenagent.token.target import TokenTarget

        pin_source = pin_source_for(self.pin_source, self.literal_pin, pin_hint or self.token)
        return TokenTarget(
            self.token, tuple(self.modules), pin_source, self.force, so_pin_source_for(self.so_pin_source)
        )


def so_pin_source_for(text: str | None) -> PinSource | None:
    """--so-pin-source, else TOKENAGENT_SO_PIN_SOURCE, else a prompt on a terminal (asked only when used)."""
    from tokenagent.token.pins import default_pin_source, parse_pin_source

    return parse_pin_source(text) if text else default_pin_source(variable="TOKENAGENT_SO_PIN_SOURCE")


def token_options(f: F) -> F:
    options = [
        click.option(
            "--token",
            metavar="LABEL|SERIAL|URI",
            help="Token label, serial number or pkcs11: URI (default: the only token present).",
        ),
        module_option,
        click.option(
            "--pin-source",
            metavar="SOURCE",
            help="prompt, pinpad, env:VAR, file:PATH or fd:N (default: TOKENAGENT_PIN_SOURCE, else prompt on a "
            "terminal).",
        ),
        click.option(
            "--pin",
            "literal_pin",
            metavar="PIN",
            help="The PIN itself. Visible to every local user through argv: for throw-away tokens only.",
        ),
        click.option("--force", is_flag=True, help="Try the PIN even when the token says it is the final try."),
        click.option(
            "--so-pin-source",
            metavar="SOURCE",
            help="The SO PIN; on PIV cards the management key (48 hex digits): prompt, env:VAR, file:PATH or fd:N "
            "(default: TOKENAGENT_SO_PIN_SOURCE, else prompt on a terminal).",
        ),
    ]
    names = ("token", "modules", "pin_source", "literal_pin", "force", "so_pin_source")
    return _grouped(f, options, names, TokenArgs)


# -- the enrollment agent ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentArgs:
    """--agent, --agent-cert, --strict, --pss and --agent-hash as typed."""

    parameter = "agent"
    key: str | None
    certificate: str | None
    strict: bool
    pss: bool
    hash: str

    @classmethod
    def from_values(cls, **values: Any) -> AgentArgs:
        return cls(values["agent_key"], values["agent_cert"], values["strict"], values["pss"], values["agent_hash"])

    def options(self, target: TokenTarget) -> AgentOptions | None:
        """The `AgentOptions` for the agent's token ``target``; None without --agent."""
        from tokenagent.enroll.agent import AgentOptions

        if self.key is None:
            return None
        return AgentOptions(
            key=self.key,
            target=target,
            certificate=self.certificate,
            hash=self.hash,
            pss=self.pss,
            strict=self.strict,
        )


def agent_token_options(f: F) -> F:
    """--agent-token and --agent-pin-source: the same two names in every command an agent signs in."""
    f = click.option("--agent-pin-source", metavar="SOURCE", help="Where the agent token's PIN comes from.")(f)
    return click.option(
        "--agent-token", metavar="LABEL|SERIAL|URI", help="The agent's token, when --agent is a label."
    )(f)


def agent_target(
    tokens: TokenArgs, agent_key: str | None, agent_token: str | None, agent_pin_source: str | None
) -> TokenTarget:
    """`sign` and `revoke-request`, where the token options name the agent's token: --agent-token and
    --agent-pin-source mean the same there as in `new --agent` (and win over --token/--pin-source)."""
    from dataclasses import replace

    from tokenagent.errors import UsageError
    from tokenagent.token.pins import parse_pin_source

    if agent_token and tokens.token and agent_token != tokens.token:
        raise UsageError("--token and --agent-token name different tokens; here both mean the agent's: give one")
    selector = agent_token or tokens.token
    target = tokens.target(pin_hint=selector or agent_key)
    target = replace(target, selector=selector)
    if agent_pin_source:
        target = replace(target, pin_source=parse_pin_source(agent_pin_source))
    return target


def agent_options(f: F) -> F:
    options = [
        click.option(
            "--agent",
            "agent_key",
            metavar="URI|LABEL",
            help="The agent's private key: a pkcs11: URI, or its label on the agent's token.",
        ),
        click.option("--agent-cert", metavar="FILE|URI", help="The agent's certificate (default: on its token)."),
        click.option("--strict", is_flag=True, help="Refuse an agent certificate without the agent EKU, or expired."),
        click.option("--pss", is_flag=True, help="RSA agent key: sign with RSASSA-PSS."),
        click.option(
            "--agent-hash", default="sha256", type=click.Choice(["sha256", "sha384", "sha512"]), help="Digest."
        ),
    ]
    names = ("agent_key", "agent_cert", "strict", "pss", "agent_hash")
    return _grouped(f, options, names, AgentArgs)


# -- CMC controls ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CmcArgs:
    """The CMC controls as Dogtag's CMCRequest names them (sign --format cmc, new, revoke-request)."""

    parameter = "cmc"
    transaction_id: int | None
    identification: str | None
    shared_secret_source: str | None
    reg_info: tuple[str, ...]

    @classmethod
    def from_values(cls, **values: Any) -> CmcArgs:
        return cls(**values)

    @property
    def given(self) -> bool:
        return bool(
            self.transaction_id is not None or self.identification or self.shared_secret_source or self.reg_info
        )

    def controls(self) -> CmcControls:
        """The controls, with a random transactionId unless given and a fresh senderNonce."""
        import secrets

        from tokenagent.errors import UsageError
        from tokenagent.request.cmc import CmcControls
        from tokenagent.token.pins import parse_pin_source

        pairs = []
        for item in self.reg_info:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise UsageError(f"--reg-info takes NAME=VALUE, not {item!r}")
            pairs.append((name, value))
        secret = None
        if self.shared_secret_source:
            read = parse_pin_source(self.shared_secret_source).read(prompt="CMC shared secret: ")
            if not hasattr(read, "reveal"):
                raise UsageError("--shared-secret-source cannot be a PIN pad")
            secret = read.reveal().encode("utf-8")
        return CmcControls(
            transaction_id=self.transaction_id if self.transaction_id is not None else secrets.randbits(63),
            sender_nonce=secrets.token_bytes(16),
            identification=self.identification,
            shared_secret=secret,
            reg_info=tuple(pairs),
        )


def cmc_options(f: F) -> F:
    options = [
        click.option("--transaction-id", type=int, help="CMC transactionId (default: random)."),
        click.option("--identification", metavar="TEXT", help="CMC identification control."),
        click.option(
            "--shared-secret-source",
            metavar="SOURCE",
            help="The CMC shared secret for identityProofV2 (and popLinkWitnessV2 with new): "
            "prompt, env:VAR, file:PATH or fd:N, as for PINs.",
        ),
        click.option(
            "--reg-info", multiple=True, metavar="NAME=VALUE", help="A CMC regInfo name-value pair (repeatable)."
        ),
    ]
    # the order click listed them in before: reg-info, shared-secret-source, identification, transaction-id
    return _grouped(
        f, list(reversed(options)), ("transaction_id", "identification", "shared_secret_source", "reg_info"), CmcArgs
    )


# -- the CA --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaArgs:
    """--config, --cas, --ca-bundle, --ca-trust, --ca-auth, --ca-user, --ca-password-source, --timeout,
    --attrib as typed."""

    parameter = "ca"
    config: str | None
    cas_files: tuple[str, ...]
    ca_bundle: str | None
    ca_trust: str | None
    ca_auth: str | None
    ca_user: str | None
    ca_password_source: str | None
    timeout: float | None
    attributes: tuple[str, ...]

    @classmethod
    def from_values(cls, **values: Any) -> CaArgs:
        return cls(**values)

    @property
    def given(self) -> bool:
        return any(value not in (None, ()) for value in self.__dict__.values())

    def options(self) -> CaOptions:
        from pathlib import Path

        from tokenagent.ca.profiles import CaOverrides
        from tokenagent.enroll.submit import CaOptions

        overrides = CaOverrides(
            trust=Path(self.ca_trust) if self.ca_trust else None,
            ca_bundle=Path(self.ca_bundle) if self.ca_bundle else None,
            auth=self.ca_auth,
            user=self.ca_user,
            password_source=self.ca_password_source,
            timeout=self.timeout,
        )
        return CaOptions(self.config, tuple(self.cas_files), overrides, tuple(self.attributes))


def ca_options(f: F) -> F:
    options = [
        click.option(
            "--config",
            metavar="URL|PROFILE",
            help="The CA (certreq -config): file:DIR, cmc+https://HOST/PATH, certsrv+https://HOST/certsrv, "
            "HOST\\CA, or a profile of cas.toml (default: its `default`, else file: in the current directory).",
        ),
        click.option("--cas", "cas_files", multiple=True, metavar="FILE", help="A cas.toml with CA profiles."),
        click.option("--ca-bundle", metavar="PEM", help="Trust for the CA's TLS certificate (default: system store)."),
        click.option("--ca-trust", metavar="PEM", help="The CA certificates its answers must lead to (CMC: required)."),
        click.option(
            "--ca-auth",
            type=click.Choice(["auto", "basic", "ntlm", "negotiate", "none"]),
            help="HTTP authentication (default: auto, whatever the CA offers).",
        ),
        click.option("--ca-user", metavar="USER", help="User for the CA: DOMAIN\\user, user@domain or user."),
        click.option(
            "--ca-password-source",
            metavar="SOURCE",
            help="Where the CA password comes from: prompt, env:VAR, file:PATH or fd:N (never the password).",
        ),
        click.option("--timeout", type=float, metavar="SECONDS", help="For each request to the CA (default 30)."),
        click.option(
            "--attrib",
            "attributes",
            multiple=True,
            metavar="NAME:VALUE",
            help='Request attributes (certreq -attrib), e.g. "CertificateTemplate:User\\nSAN:upn=ada@example.com".',
        ),
    ]
    names = (
        "config",
        "cas_files",
        "ca_bundle",
        "ca_trust",
        "ca_auth",
        "ca_user",
        "ca_password_source",
        "timeout",
        "attributes",
    )
    return _grouped(f, options, names, CaArgs)
