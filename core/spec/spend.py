"""org.yaml's run-time spend: where the ledger lives, and the budgets and quotas the router holds tenants to."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sovra.core.spec.common import Frozen, Name

#: The variable holding the PostgreSQL connection URI where the router runs (a secret: never in org.yaml).
DEFAULT_DSN_ENV = "SOVRA_SPEND_DSN"


class SpendSettings(Frozen):
    """The ledger's store and what the router does when it cannot reach it."""

    store: Literal["sqlite", "postgres"] = Field(
        default="sqlite", description="`sqlite` (the default: a file on the router's node, for routers on one "
        "node) or `postgres` (one database shared by router replicas on several nodes).")
    path: str | None = Field(
        default=None, description="SQLite: the database file on the router's node (absolute). Default: "
        "$SOVRA_HOME/spend/ledger.db.")
    dsn_env: str = Field(
        default=DEFAULT_DSN_ENV, pattern=r"^[A-Z_][A-Z0-9_]*$", description="PostgreSQL: the environment variable "
        "holding the connection URI where the router runs (it holds a password: never in org.yaml).")
    on_unavailable: Literal["closed", "open"] = Field(
        default="closed", description="When the store cannot be reached for a budget check: `closed` (the "
        "default) answers 503 spend_unavailable and sends nothing; `open` sends unchecked (counted in /metrics) "
        "and the entries reach the ledger when the store is back.")
    default_max_tokens: int = Field(
        default=4096, ge=1, le=1_000_000, description="Tokens reserved for the answer of a request that names "
        "no max_tokens, against a token or USD budget (reconciled with the usage the backend reports).")
    flush_every_s: float = Field(
        default=0.05, gt=0, le=60, description="How often the router writes its pending ledger entries to the "
        "store (each is on the router's disk before its answer is sent).")

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("an absolute path on the router's node")
        return value

    @model_validator(mode="after")
    def _store_fields(self) -> SpendSettings:
        if self.store == "postgres" and self.path is not None:
            raise ValueError("`path` is for store: sqlite; PostgreSQL is reached through `dsn_env`")
        return self


class Budget(Frozen):
    """A limit for a tenant, a deployment, or a tenant on a deployment: USD per calendar month (UTC) and tokens
    and requests per minute. Held exactly across router replicas: reserved before a payload leaves."""

    tenant: Name | None = Field(default=None, description="The tenant it limits (omitted: every tenant together).")
    deployment: Name | None = Field(default=None, description="The deployment it limits (omitted: every "
                                    "deployment together).")
    usd_per_month: float | None = Field(default=None, gt=0, description="List-price USD per calendar month (UTC).")
    tokens_per_minute: int | None = Field(default=None, ge=1, description="Prompt and answer tokens per minute.")
    requests_per_minute: int | None = Field(default=None, ge=1, description="Requests per minute.")

    @model_validator(mode="after")
    def _meaningful(self) -> Budget:
        if self.tenant is None and self.deployment is None:
            raise ValueError("a budget names a `tenant`, a `deployment`, or both")
        if self.usd_per_month is None and self.tokens_per_minute is None and self.requests_per_minute is None:
            raise ValueError("a budget sets usd_per_month, tokens_per_minute or requests_per_minute")
        return self

    @property
    def scope(self) -> str:
        """Its key in the store: `tenant=a`, `deployment=d` or `tenant=a,deployment=d`."""
        parts = [f"tenant={self.tenant}"] if self.tenant else []
        return ",".join([*parts, *([f"deployment={self.deployment}"] if self.deployment else [])])



def check_budgets(budgets: tuple[Budget, ...], tenants: set[str]) -> None:
    """ValueError for a budget naming an unknown tenant or two budgets for one scope (which would hold?)."""
    unknown = sorted({b.tenant for b in budgets if b.tenant is not None and b.tenant not in tenants})
    if unknown:
        raise ValueError(f"budgets name tenant {', '.join(unknown)}, which is not in `tenants`"
                         + (f" (known: {', '.join(sorted(tenants))})" if tenants else ""))
    scopes = [b.scope for b in budgets]
    dupes = sorted({s for s in scopes if scopes.count(s) > 1})
    if dupes:
        raise ValueError(f"two budgets for {', '.join(dupes)}: give each scope one budget with all its limits")
