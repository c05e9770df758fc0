"""Prometheus metrics of one router replica (own registry, so several apps in one process don't clash)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest


class RouterMetrics:
    """Requests by model/target/zone/status, and their latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("sovra_requests_total", "Requests answered", ["model", "target", "zone", "status"],
                                registry=self.registry)
        self.latency = Histogram("sovra_request_seconds", "Request latency", ["model", "target"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    def observe(self, model: str, target: str, zone: str, status: int, seconds: float) -> None:
        self.requests.labels(model, target, zone, str(status)).inc()
        self.latency.labels(model, target).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
