"""Send one request: filter by residency, rank by policy, fail over and retry only inside the allowed set.

The residency gate runs before ranking (a policy never even sees a forbidden backend) and again immediately before
each send, so no retry, failover or trial can reach a backend outside the request's residency.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from orchestrator.router.backends import Backend, RoutingTable
from orchestrator.router.balancing import Candidate, get_policy
from orchestrator.router.errors import ModelNotFound, NoAllowedBackend, Saturated
from orchestrator.router.gate import RequestResidency
from orchestrator.router.health import Breaker

T = TypeVar("T")


class RetryableError(Exception):
    """A failure that happened before any answer byte reached the client (connect error, 5xx before first byte).

    `eject=False` marks a failure of one replica behind a backend that has others (Ray Serve tracks replica
    health itself), so it is retried without counting against the backend's circuit breaker.
    """

    def __init__(self, message: str, *, eject: bool = True):
        super().__init__(message)
        self.eject = eject


@dataclass
class Dispatcher:
    """Owns the per-backend load and latency observations; one per router replica (single event loop)."""

    table: RoutingTable
    breaker: Breaker = field(default_factory=Breaker)
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.perf_counter
    max_attempts: int = 3
    backoff_s: float = 0.02
    max_in_flight: int = 64
    ewma_alpha: float = 0.3
    in_flight: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)

    def allowed(self, model: str, residency: RequestResidency) -> list[Backend]:
        """Backends of `model` this request may reach (404 for an unknown model)."""
        backends = self.table.get(model)
        if backends is None:
            raise ModelNotFound(f"model {model!r} is not served here; available: {', '.join(self.table.models())}")
        return [b for b in backends if residency.permits(b.place)]

    async def send(
        self,
        model: str,
        residency: RequestResidency,
        call: Callable[[Backend], Awaitable[T]],
        policy: str = "cost",
    ) -> tuple[T, Backend]:
        """Run `call` on the best allowed backend, failing over on RetryableError; fail closed when none is left."""
        allowed = self.allowed(model, residency)
        if not allowed:
            raise NoAllowedBackend(
                f"no backend of model {model!r} is in {residency.describe()}; the request was not sent anywhere")
        ranker = get_policy(policy)
        tried: set[str] = set()
        last: Exception | None = None
        for attempt in range(self.max_attempts):
            available = [b for b in allowed if self.breaker.available(b.id)]
            # Untried backends first; once none is left, a tried one may be retried (a Serve app has several
            # replicas, so the retry usually lands on a live one). Either way only allowed backends are candidates.
            healthy = [b for b in available if b.id not in tried] or available
            if not healthy:
                break
            free = [b for b in healthy if self.in_flight.get(b.id, 0) < self.max_in_flight]
            if not free:
                raise Saturated(f"all {len(healthy)} allowed backends of {model!r} are at capacity", retry_after_s=1)
            ranked = ranker.rank([Candidate(b, self.in_flight.get(b.id, 0), self.latency_ms.get(b.id)) for b in free],
                                 self.rng)
            backend = ranked[0].backend
            if not residency.permits(backend.place):  # defence in depth: never send outside the gate
                raise NoAllowedBackend(f"refused to send to {backend.target}: outside {residency.describe()}")
            tried.add(backend.id)
            try:
                return await self._call(backend, call), backend
            except RetryableError as exc:
                last = exc
                if attempt + 1 < self.max_attempts:
                    await self.sleep(self.backoff_s * (2 ** attempt))
        raise NoAllowedBackend(
            f"no healthy backend of model {model!r} is left in {residency.describe()} "
            f"({len(allowed)} allowed, {len(tried)} tried: {', '.join(sorted(tried)) or 'none'}); "
            f"the request was not sent outside it" + (f"; last error: {last}" if last else ""))

    async def _call(self, backend: Backend, call: Callable[[Backend], Awaitable[T]]) -> T:
        self.in_flight[backend.id] = self.in_flight.get(backend.id, 0) + 1
        start = self.clock()
        try:
            result = await call(backend)
        except RetryableError as exc:
            if exc.eject:
                self.breaker.failure(backend.id)
            raise
        finally:
            self.in_flight[backend.id] -= 1
        elapsed = (self.clock() - start) * 1000
        prev = self.latency_ms.get(backend.id)
        self.latency_ms[backend.id] = elapsed if prev is None else prev + self.ewma_alpha * (elapsed - prev)
        self.breaker.success(backend.id)
        return result
