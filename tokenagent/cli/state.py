"""Process-wide CLI switches that the error handler needs after click has unwound."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CliState:
    verbose: int = 0
    json: bool = False


STATE = CliState()
