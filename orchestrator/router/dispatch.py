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
from orchestrator.router.balancing import Candidate, RoutingPolicy, get_policy
from orchestrator.router.errors import ModelNotFound, NoAllowedBackend, Saturated
from orchestrator.router.gate import RequestResidency
from orchestrator.router.health import Breaker

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Plan:
    """The backends one (model, residency, policy) may reach, and the same grouped in the policy's static tiers."""

    allowed: tuple[Backend, ...]
    tiers: tuple[tuple[Backend, ...], ...]


class RetryableError(Exception):
    """A failure that happened before any answer byte reached the client (connect error, 5xx before first byte).

    `eject=False` marks a failure of one replica behind a backend that has others (Ray Serve tracks replica
    health itself), so it is retried without counting against the backend's circuit breaker.
    """

    def __init__(self, message: str, *, eject: bool = True):
        super().__init__(message)
        self.eject = eject


_MAX_PLANS = 4096  # cached (model, residency, policy) plans per dispatcher; cleared when full


@dataclass
class Dispatcher:
    """Owns the per-backend load and latency observations; one per router replica (single event loop).

    What a request may reach depends only on the routing table, the model, the residency and the policy, so that
    "plan" (the allowed backends, in the policy's static tiers) is computed once and reused until `table` is
    swapped; per request only load, health and the policy's choice are evaluated.
    """

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
    _plans: dict[tuple[str, RequestResidency, str], _Plan] = field(default_factory=dict, init=False, repr=False,
                                                                   compare=False)
    _plans_table: RoutingTable | None = field(default=None, init=False, repr=False, compare=False)

    def allowed(self, model: str, residency: RequestResidency) -> list[Backend]:
        """Backends of `model` this request may reach (404 for an unknown model)."""
        backends = self.table.get(model)
        if backends is None:
            raise ModelNotFound(f"model {model!r} is not served here; available: {', '.join(self.table.models())}")
        return [b for b in backends if residency.permits(b.place)]

    def _plan(self, model: str, residency: RequestResidency, policy: str) -> _Plan:
        if self._plans_table is not self.table:  # `up` swapped the table: every plan is stale
            self._plans.clear()
            self._plans_table = self.table
        key = (model, residency, policy)
        plan = self._plans.get(key)
        if plan is None:
            allowed = tuple(self.allowed(model, residency))
            plan = _Plan(allowed, tuple(get_policy(policy).tiers(allowed)))
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    async def send(
        self,
        model: str,
        residency: RequestResidency,
        call: Callable[[Backend], Awaitable[T]],
        policy: str = "cost",
    ) -> tuple[T, Backend]:
        """Run `call` on the best allowed backend, failing over on RetryableError; fail closed when none is left."""
        plan = self._plan(model, residency, policy)
        if not plan.allowed:
            raise NoAllowedBackend(
                f"no backend of model {model!r} is in {residency.describe()}; the request was not sent anywhere")
        ranker = get_policy(policy)
        tried: set[str] = set()
        last: Exception | None = None
        for attempt in range(self.max_attempts):
            backend = self._choose(model, plan, ranker, tried)
            if backend is None:
                break
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
            f"({len(plan.allowed)} allowed, {len(tried)} tried: {', '.join(sorted(tried)) or 'none'}); "
            f"the request was not sent outside it" + (f"; last error: {last}" if last else ""))

    def _choose(self, model: str, plan: _Plan, ranker: RoutingPolicy, tried: set[str]) -> Backend | None:
        """The policy's choice among the allowed backends whose circuit is closed, untried ones first (once none
        is left a tried one may be retried: a Serve app has several replicas, so the retry usually lands on a
        live one), below `max_in_flight`. None when no allowed backend is available at all."""
        check = self.breaker.any_open()
        in_flight, latency, cap = self.in_flight, self.latency_ms, self.max_in_flight
        for skip in ((tried, frozenset()) if tried else (frozenset(),)):
            healthy = 0
            for tier in plan.tiers:
                ok = tier if not (skip or check) else [
                    b for b in tier if b.id not in skip and (not check or self.breaker.available(b.id))]
                if not ok:
                    continue
                healthy += len(ok)
                free = [Candidate(b, n, latency.get(b.id)) for b in ok if (n := in_flight.get(b.id, 0)) < cap]
                if free:
                    return ranker.choose(free, self.rng).backend
            if healthy:
                raise Saturated(f"all {healthy} allowed backends of {model!r} are at capacity", retry_after_s=1)
        return None

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
