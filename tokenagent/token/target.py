"""Which token a use case works on and how it logs in: what `--token`, `--module`, `--pin-source`
(or `--pin`) and `--force` say, in one value that every options record carries."""

from __future__ import annotations

from dataclasses import dataclass

from tokenagent.token.pins import PinSource


@dataclass(frozen=True)
class TokenTarget:
    selector: str | None = None  # label, serial or pkcs11: URI; None: the only token present
    modules: tuple[str, ...] = ()  # module paths or p11-kit names; (): TOKENAGENT_MODULE, then p11-kit
    pin_source: PinSource | None = None  # None: nothing can be asked for (not a terminal)
    force: bool = False  # try a PIN that is on its final try
    #: the SO PIN: `accept --trust`, and on PIV cards (ykcs11) the management key, which generating
    #: a key or writing a certificate needs; None: nothing can be asked for
    so_pin_source: PinSource | None = None


#: The default: the only token present, the default module, the default PIN source (frozen, so shared).
ANY_TOKEN = TokenTarget()
