"""The cost terms of a plan, each a small pure function so tests can check them by hand."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

from sovra.core.spec.common import Accelerator, ManagedModel
from sovra.core.spec.deployment import Traffic
from sovra.core.spec.org import Credit

HOURS_PER_MONTH = 730
SECONDS_PER_MONTH = 2_628_000  # 730 h × 3,600 s


def replica_monthly_usd(accelerator: Accelerator) -> float:
    """One replica uses one instance all month."""
    return accelerator.usd_per_hour * HOURS_PER_MONTH


def managed_monthly_usd(model: ManagedModel, traffic: Traffic) -> float:
    """All of a deployment's tokens for a month at one managed target's price."""
    tokens = traffic.requests_per_second * SECONDS_PER_MONTH * traffic.tokens_per_request
    return tokens / 1000 * model.usd_per_1k_tokens


def months_left(expires: dt.date, as_of: dt.date) -> int:
    """Calendar months from `as_of` through `expires`, counting the started month whole; 0 once expired."""
    if expires < as_of:
        return 0
    return (expires.year - as_of.year) * 12 + (expires.month - as_of.month) + 1


def monthly_credit_caps(credits: Iterable[Credit], as_of: dt.date) -> dict[str, float]:
    """cloud -> the most its credits may pay per month (balance spread over the months left)."""
    caps: dict[str, float] = {}
    for credit in credits:
        months = months_left(credit.expires, as_of)
        if months > 0 and credit.usd > 0:
            caps[credit.cloud] = caps.get(credit.cloud, 0.0) + credit.usd / months
    return caps


def egress_usd_if_all(target_location: str, sources: Mapping[str, tuple[float, float]]) -> float:
    """Egress per month if this target received all of the data: sources maps location -> (gb, usd_per_gb).

    A target's share of replicas (or of managed traffic) scales this linearly.
    """
    return sum(gb * price for location, (gb, price) in sources.items() if location != target_location)
