"""Prometheus metrics of one router replica (own registry, so several apps in one process don't clash).

Labels never take client input: `deployment` is a resolved deployment name (or "-" when none resolved), `target`
and `zone` come from the routing table, `status` from a fixed set of codes. So a flood of bogus model names adds
no series.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class RouterMetrics:
    """Requests by deployment/target/zone/status, their latency, and the router's own time per request."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("sovra_requests_total", "Requests answered",
                                ["deployment", "target", "zone", "status"], registry=self.registry)
        self.latency = Histogram("sovra_request_seconds", "Request latency", ["deployment", "target"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.overhead_s = Histogram("sovra_router_overhead_seconds",
                                    "Time a request spent in the router itself (not waiting on a backend)",
                                    registry=self.registry,
                                    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05))
        # label values -> their children: `labels()` takes a lock and checks its arguments on every call
        self._series: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}

    def observe(self, deployment: str, target: str, zone: str, status: int, seconds: float) -> None:
        key = (deployment, target, zone, status)
        series = self._series.get(key)
        if series is None:  # bounded: every label comes from the table or a fixed set (see the module docstring)
            code = str(status) if 100 <= status <= 599 else "other"
            series = self._series[key] = (self.requests.labels(deployment, target, zone, code),
                                          self.latency.labels(deployment, target))
        series[0].inc()
        series[1].observe(seconds)

    def watch_spend(self, spend: Any) -> None:
        """Gauges read from the replica's `Spend` at each scrape: the ledger's backlog and store health, budget
        checks the store could not answer, 429s by code."""
        ledger = spend.ledger
        for name, doc, read in (
                ("sovra_ledger_pending_bytes", "Ledger entries spooled on this node, not yet in the store",
                 lambda: ledger.pending_bytes),
                ("sovra_ledger_pending_entries", "Ledger entries waiting for the store (this replica)",
                 lambda: ledger.pending_entries),
                ("sovra_ledger_written_total", "Ledger entries this replica wrote to the store",
                 lambda: ledger.written),
                ("sovra_ledger_store_failures_total", "Writes to the spend store that failed",
                 lambda: ledger.failures),
                ("sovra_ledger_store_up", "1 if the last write to the spend store worked",
                 lambda: 1.0 if ledger.healthy else 0.0),
                ("sovra_spend_checks_unavailable_total", "Budget checks the spend store could not answer",
                 lambda: spend.unavailable),
                ("sovra_spend_unchecked_total", "Requests sent unchecked (spend.on_unavailable: open)",
                 lambda: spend.unchecked),
                ("sovra_budget_spilled_total", "Requests over a USD budget served from capacity already paid for",
                 lambda: spend.spilled)):
            Gauge(name, doc, registry=self.registry).set_function(read)
        refused = Gauge("sovra_budget_refusals_total", "Requests refused by a budget or quota", ["code"],
                        registry=self.registry)
        for code in ("budget_exceeded", "rate_limited"):
            refused.labels(code).set_function(lambda code=code: spend.refused.get(code, 0))
        limit = Gauge("sovra_budget_limit", "Each budget's limit (USD per month, tokens or requests per minute)",
                      ["scope", "metric"], registry=self.registry)
        for b in spend.budgets.budgets:
            for metric, value in (("usd_per_month", b.usd_per_month), ("tokens_per_minute", b.tokens_per_minute),
                                  ("requests_per_minute", b.requests_per_minute)):
                if value is not None:
                    limit.labels(b.scope, metric).set(value)
        # Spend as this replica priced it; summed over replicas by the scraper. Labels come from the routing table
        # and org.yaml (tenant, deployment, cloud), never from a client.
        usd = Counter("sovra_spend_usd", "USD at list price of answers (ledger entries)",
                      ["tenant", "deployment", "cloud"], registry=self.registry)
        tokens = Counter("sovra_spend_tokens", "Tokens of answers", ["tenant", "deployment", "direction"],
                         registry=self.registry)
        # (what credits paid is decided in the store's transaction; `sovra spend` reports it)

        def observe(entry: Any) -> None:
            if entry.usd_list_micros:
                usd.labels(entry.tenant, entry.deployment, entry.cloud).inc(entry.usd_list_micros / 1e6)
            if entry.tokens_in:
                tokens.labels(entry.tenant, entry.deployment, "in").inc(entry.tokens_in)
            if entry.tokens_out:
                tokens.labels(entry.tenant, entry.deployment, "out").inc(entry.tokens_out)

        spend.observe = observe

    def overhead(self, seconds: float) -> None:
        self.overhead_s.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
