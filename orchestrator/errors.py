"""Sovra's error hierarchy: each error says what went wrong and what to do next."""

from __future__ import annotations

from dataclasses import dataclass


class SovraError(Exception):
    """Base of every error Sovra raises on purpose."""

    exit_code = 1


@dataclass(frozen=True)
class SpecIssue:
    """One problem in one input file, located as precisely as the YAML allows."""

    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(SovraError):
    """Invalid input; carries every issue found, not just the first."""

    exit_code = 2

    def __init__(self, issues: list[SpecIssue] | tuple[SpecIssue, ...]):
        self.issues = tuple(issues)
        n = len(self.issues)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in input:\n" + "\n".join(f"  {i}" for i in self.issues))


class ProviderError(SovraError):
    """A provider adapter is unknown, missing its SDK, or failed."""
