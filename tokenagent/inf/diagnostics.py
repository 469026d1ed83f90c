"""Warnings and errors about an INF file, each with file:line.

Errors stop parsing at once (a `PolicyError` whose message starts with ``file:line:``); warnings
are collected and returned with the policy so the CLI can print them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from tokenagent.errors import PolicyError


@dataclass(frozen=True)
class Diagnostic:
    filename: str
    line: int
    severity: str  # "warning" | "error"
    message: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}: {self.severity}: {self.message}"

    def to_json(self) -> dict[str, object]:
        return {"file": self.filename, "line": self.line, "severity": self.severity, "message": self.message}


class InfError(PolicyError):
    """A PolicyError that knows where it happened."""

    def __init__(self, diagnostic: Diagnostic, *, hresult: int | None = None) -> None:
        super().__init__(f"{diagnostic.filename}:{diagnostic.line}: {diagnostic.message}", hresult=hresult)
        self.diagnostic = diagnostic


class Diagnostics:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.warnings: list[Diagnostic] = []

    def warning(self, line: int, message: str) -> None:
        self.warnings.append(Diagnostic(self.filename, line, "warning", message))

    def error(self, line: int, message: str, *, hresult: int | None = None) -> NoReturn:
        raise InfError(Diagnostic(self.filename, line, "error", message), hresult=hresult)
