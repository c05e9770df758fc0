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


class ProvisionError(SovraError):
    """Provisioning through Pulumi failed; the message says what to do next (see `infra.pulumi_stack.errors_of`)."""


class PulumiMissingError(ProvisionError):
    """The Pulumi CLI, which the Automation API drives, is not installed here."""

    def __init__(self, fix: str):
        self.fix = fix
        super().__init__(f"the Pulumi CLI is not installed (no `pulumi` on PATH); {fix}")


class ConcurrentUpdateError(ProvisionError):
    """Another update holds the stack's lock."""

    def __init__(self, fix: str):
        self.fix = fix
        super().__init__(fix)


class CloudCredentialsError(ProvisionError):
    """A cloud's Pulumi provider found no usable credentials."""

    def __init__(self, *, cloud: str, variables: tuple[str, ...], detail: str):
        self.cloud, self.variables, self.detail = cloud, tuple(variables), detail
        self.fix = f"set {', '.join(self.variables)} where Sovra runs"
        super().__init__(f"no usable {cloud} credentials for Pulumi ({detail}); {self.fix}")


class QuotaError(ProvisionError):
    """A cloud refused the resources for lack of quota."""

    def __init__(self, *, detail: str, fix: str):
        self.detail, self.fix = detail, fix
        super().__init__(f"the cloud refused for lack of quota ({detail}); {fix}")


class SecretsProviderError(ProvisionError):
    """The stack's secrets provider cannot be used (missing or wrong passphrase)."""

    def __init__(self, fix: str):
        self.fix = fix
        super().__init__(fix)


class EngineError(SovraError):
    """An engine is unknown, its library is missing, or a request cannot be served by it."""


class StoreUnavailable(SovraError):
    """The spend store (SQLite file or PostgreSQL server) cannot be reached or written."""
