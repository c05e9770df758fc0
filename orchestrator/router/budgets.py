"""Budgets and quotas as charges: which limits a request falls under, what it may cost, and the windows they count in.

Pure: the store (`infra.ledger.store`) makes the charges atomic; this module only decides them. A request is
charged before its payload leaves with an upper estimate (prompt size, and its `max_tokens` or the org's default),
then reconciled with what the backend reports.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sovra.core.api_errors import BudgetExceeded, RateLimited
from sovra.core.backends import Backend
from sovra.core.spec.spend import Budget
from sovra.infra.ledger.store import Charge, Refusal

USD = "usd_micros"
TOKENS = "tokens"
REQUESTS = "requests"
#: Characters per token the estimate assumes for a prompt: generous (real text runs 3.5-4.5 per token in
#: English and French), so reconciling mostly gives back rather than adds.
CHARS_PER_TOKEN = 3


def minute(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M")


def month(now: dt.datetime) -> str:
    return now.strftime("%Y-%m")


def resets(metric: str, now: dt.datetime) -> dt.datetime:
    """When the window `metric` counts in at `now` ends: the next minute, or the next month (UTC)."""
    if metric == USD:
        first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return (first + dt.timedelta(days=32)).replace(day=1)
    return now.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)


def usd_micros(tokens: int, usd_per_1k_tokens: float | None) -> int:
    """List price of `tokens` in micro-USD (exact integer arithmetic downstream)."""
    if not usd_per_1k_tokens or tokens <= 0:
        return 0
    return round(tokens * usd_per_1k_tokens * 1000)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def bound_answer(body: dict[str, Any], default_max_tokens: int) -> None:
    """A chat request under a token or USD budget names the most it may answer: `default_max_tokens` when it names
    none, so its reservation is an upper bound rather than a guess at what the model's context allows."""
    if "messages" in body and _count(body.get("max_completion_tokens")) is None and _count(
            body.get("max_tokens")) is None:
        body["max_tokens"] = default_max_tokens


def estimate_tokens(body: Mapping[str, Any], default_max_tokens: int) -> int:
    """An upper-ish estimate of a request's tokens: its prompt's size and the most it may answer, times the
    number of answers it asks for (`n`)."""
    if "messages" in body:
        prompt = json.dumps(body.get("messages"), ensure_ascii=False, separators=(",", ":"))
        answer = (_count(body.get("max_completion_tokens")) or _count(body.get("max_tokens"))
                  or default_max_tokens) * (_count(body.get("n")) or 1)
    else:  # embeddings: the input only
        prompt = json.dumps(body.get("input"), ensure_ascii=False, separators=(",", ":"))
        answer = 0
    return math.ceil(len(prompt) / CHARS_PER_TOKEN) + answer


@dataclass(frozen=True)
class BudgetIndex:
    """The org's budgets, looked up by (tenant, deployment); the answer is cached (both come from the table)."""

    budgets: tuple[Budget, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cache", {})

    def applying(self, tenant: str, deployments: tuple[str, ...]) -> tuple[Budget, ...]:
        """The budgets a request of `tenant` falls under when it may land on any of `deployments` (a route by
        model name spans several): each that names the tenant or none, and one of them or none."""
        cache: dict[tuple[str, tuple[str, ...]], tuple[Budget, ...]] = self._cache  # type: ignore[attr-defined]
        hit = cache.get((tenant, deployments))
        if hit is None:
            hit = tuple(b for b in self.budgets
                        if b.tenant in (None, tenant) and (b.deployment is None or b.deployment in deployments))
            if len(cache) < 65_536:
                cache[(tenant, deployments)] = hit
        return hit


def charges(budgets: Sequence[Budget], tokens: int, usd: int, now: dt.datetime) -> list[Charge]:
    """The charges one request makes against `budgets`, estimated at `tokens` and `usd` micro-USD."""
    out: list[Charge] = []
    for b in budgets:
        if b.requests_per_minute is not None:
            out.append(Charge(b.scope, REQUESTS, minute(now), 1, b.requests_per_minute))
        if b.tokens_per_minute is not None:
            out.append(Charge(b.scope, TOKENS, minute(now), tokens, b.tokens_per_minute))
        if b.usd_per_month is not None:
            out.append(Charge(b.scope, USD, month(now), usd, round(b.usd_per_month * 1_000_000)))
    return out


def highest_price(backends: Sequence[Backend]) -> float | None:
    """The dearest per-token price among a route's backends: a USD reservation must cover wherever it lands."""
    prices = [b.usd_per_1k_tokens for b in backends if b.usd_per_1k_tokens]
    return max(prices) if prices else None


def refusal_error(refusal: Refusal, now: dt.datetime) -> BudgetExceeded:
    """The 429 a client gets: which limit, how much is used, when it resets."""
    c = refusal.charge
    end = resets(c.metric, now)
    wait = max(1, math.ceil((end - now).total_seconds()))
    when = end.isoformat().replace("+00:00", "Z")
    if c.metric == USD:
        return BudgetExceeded(
            f"the budget of {c.scope} is spent for {c.window}: ${refusal.used / 1e6:,.2f} of "
            f"${c.limit / 1e6:,.2f} used, this request may cost up to ${c.amount / 1e6:,.4f}; it resets at {when}",
            retry_after_s=wait, resets=when)
    unit = "tokens" if c.metric == TOKENS else "requests"
    return RateLimited(
        f"{c.scope} may send {c.limit:,} {unit} per minute; {refusal.used:,} used in this minute and this request "
        f"needs {c.amount:,}; retry after {when}", retry_after_s=wait, resets=when)
