"""Send one request: filter by residency, choose by policy, fail over and retry only inside the request's bound.

The bound is the tenant's residency ∩ the header's ∩ the addressed deployment's. The gate runs before choosing
(a policy never even sees a forbidden backend) and again immediately before each send, so no retry, failover or
trial can reach a backend outside it. Whether an attempt may be resent is decided by the transport's verdict
(`errors.AttemptFailed`): only what was never delivered, or what the backend said it did not process, is resent.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sovra.core.backends import Backend, Route, RoutingTable
from sovra.orchestrator.router.balancing import Candidate, RoutingPolicy, get_policy
from sovra.core.api_errors import (
    AttemptFailed,
    BackendRefused,
    NoAllowedBackend,
    NotDelivered,
    NotSent,
    Refused,
    RouterError,
    Saturated,
    TimedOut,
    Untranslatable,
    UpstreamError,
    UpstreamTimeout,
)
from sovra.orchestrator.router.gate import RequestResidency
from sovra.orchestrator.router.health import Breaker

T = TypeVar("T")
#: Told of every attempt as it ends: (backend, outcome), outcome as in the audit trail ("ok", "not_sent", ...).
Observer = Callable[[Backend, str], None]
#: Told of every send immediately before its payload may leave (the audit's write-ahead); raising stops the send.
Before = Callable[[Backend], None]


def _ignore(_b: Backend, _o: str) -> None:
    return None


def _nothing(_b: Backend) -> None:
    return None


@dataclass(frozen=True, slots=True)
class _Plan:
    """The backends one (route, bound) may reach, and the same grouped in the policy's static tiers."""

    allowed: tuple[Backend, ...]
    tiers: tuple[tuple[Backend, ...], ...]


_MAX_PLANS = 4096  # cached (route, bound) plans per dispatcher; cleared when full


@dataclass
class Dispatcher:
    """Owns the per-backend load and latency observations; one per router replica (single event loop).

    What a request may reach depends only on the routing table, the route and the bound, so that "plan" (the
    allowed backends, in the policy's static tiers) is computed once and reused until `table` is swapped; per
    request only load, health and the policy's choice are evaluated.
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
    timeout_s: float = 120.0       # a whole answer, or a stream's first chunk
    chunk_timeout_s: float = 60.0  # a stream's idle time between two chunks
    stream_deadline_s: float = 600.0  # a stream's whole life, from its send: one stream cannot hold a slot forever
    #: clouds whose committed-spend credits have room this month (the ledger's live view; `commitments` reads it)
    credited: Callable[[], Collection[str]] = tuple
    in_flight: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    #: the last failure each backend's breaker counted, in words (no payload: verdicts are built without it), until
    #: it answers again; /readyz shows admins why a backend is out
    why: dict[str, str] = field(default_factory=dict)
    _plans: dict[tuple[str, tuple[str, ...], RequestResidency, bool], _Plan] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    _plans_table: RoutingTable | None = field(default=None, init=False, repr=False, compare=False)

    def plan(self, route: Route, bound: RequestResidency) -> _Plan:
        """The allowed backends of `route` under `bound` (which must already include the route's residency)."""
        if self._plans_table is not self.table:  # `up` swapped the table: every plan is stale
            self._plans.clear()
            self._plans_table = self.table
        key = (route.name, route.deployments, bound, route.paid_only)
        plan = self._plans.get(key)
        if plan is None:
            allowed = tuple(b for b in route.backends if bound.permits(b.place))
            plan = _Plan(allowed, _ladder(allowed, get_policy(route.policy)))
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def healthy(self, backends: tuple[Backend, ...]) -> list[Backend]:
        """Those whose circuit is closed (what /readyz counts)."""
        return [b for b in backends if not self.breaker.is_open(b.id)]

    async def send(self, route: Route, residency: RequestResidency, call: Callable[[Backend], Awaitable[T]],
                   observe: Observer = _ignore, before: Before = _nothing, key: bytes | None = None
                   ) -> tuple[T, Backend]:
        """Run `call` on the best allowed backend; resend only undelivered attempts; fail closed when none is left.
        `key` is the request's affinity key for policies that want one (`RoutingPolicy.affinity`)."""
        return await self._dispatch(route, residency, call, observe, before, key, stream=False)

    async def send_stream(self, route: Route, residency: RequestResidency,
                          call: Callable[[Backend], Awaitable[AsyncIterator[Any]]], observe: Observer = _ignore,
                          before: Before = _nothing, key: bytes | None = None) -> tuple[AsyncIterator[Any], Backend]:
        """As `send`, for a call returning a stream: the stream stays in flight (and under the idle-chunk timeout)
        until it ends, and its outcome is observed then."""
        return await self._dispatch(route, residency, call, observe, before, key, stream=True)

    def reachable(self, route: Route, residency: RequestResidency, down: Callable[[Backend], bool]) -> bool:
        """Whether `route` has a backend inside the request's bound whose circuit admits a request and that its
        client does not know to be down (a locale's variant is chosen only then; else its base serves)."""
        plan = self.plan(route, residency.bound_by(route.residency))
        return any(self.breaker.available(b.id) and not down(b) for b in plan.allowed)

    async def _dispatch(self, route: Route, residency: RequestResidency, call: Callable[[Backend], Awaitable[Any]],
                        observe: Observer, before: Before, key: bytes | None, *, stream: bool
                        ) -> tuple[Any, Backend]:
        bound = residency.bound_by(route.residency)
        plan = self.plan(route, bound)
        if not plan.allowed:
            raise NoAllowedBackend(
                f"no backend of {route.name!r} is in {bound.describe()}; the request was not sent anywhere")
        ranker = get_policy(route.policy)
        tried: set[str] = set()
        counted: set[str] = set()  # at most one breaker failure per request per backend
        last: AttemptFailed | None = None
        refusals: list[Refused] = []
        cannot: list[str] = []  # backends whose vendor cannot carry this request (nothing was sent to them)
        unable: set[str] = set()
        # `attempt` counts sends against max_attempts; stepping from an undelivered first try to another backend
        # is free (nothing was sent), at most once per other allowed backend, so a dead rung never uses up the
        # attempts a live one further down the ladder needs.
        attempt, free_steps = 0, len(plan.allowed) - 1
        while attempt < self.max_attempts:
            backend = self._choose(route, plan, ranker, tried, unable, key)
            if backend is None:
                break
            if not bound.permits(backend.place):  # defence in depth: never send outside the gate
                raise NoAllowedBackend(f"refused to send to {backend.target}: outside {bound.describe()}")
            fresh = backend.id not in tried
            tried.add(backend.id)
            before(backend)  # recorded before the payload may leave; an audit that cannot write stops it here
            try:
                return await self._attempt(backend, call, observe, counted, stream=stream), backend
            except Untranslatable as exc:  # e.g. tools to a vendor without them: another allowed backend may can
                cannot.append(f"{backend.target}: {exc.message}")
                unable.add(backend.id)
                continue  # nothing left: no attempt used, and `tried` keeps it from being chosen again
            except AttemptFailed as exc:
                if not exc.resend:
                    error = UpstreamTimeout if isinstance(exc, TimedOut) else UpstreamError
                    raise error(f"{backend.target}: {exc}; not resent, since it may have been received") from None
                last = exc
                refusals.append(exc if isinstance(exc, Refused) else None)
                if fresh and free_steps > 0 and isinstance(exc, NotDelivered):
                    free_steps -= 1
                    continue
                attempt += 1
                if attempt < self.max_attempts:
                    await self.sleep(self.backoff_s * (2 ** (attempt - 1)))
        if cannot and not refusals:
            raise Untranslatable(f"no allowed backend of {route.name!r} can take this request, and it was sent "
                                 f"nowhere: {'; '.join(cannot)}")
        _raise_if_all_refused(route, refusals)
        raise NoAllowedBackend(
            f"no healthy backend of {route.name!r} is left in {bound.describe()} "
            f"({len(plan.allowed)} allowed, {len(tried)} tried: {', '.join(sorted(tried)) or 'none'}); "
            f"the request was not sent outside it" + (f"; last error: {last}" if last else ""))

    def _fail(self, backend: Backend, exc: AttemptFailed, counted: set[str]) -> None:
        if exc.down or exc.counts:
            self.why[backend.id] = str(exc)[:500]
        if exc.down:
            self.breaker.trip(backend.id)
        elif exc.counts and backend.id not in counted:
            self.breaker.failure(backend.id)
        else:
            self.breaker.release(backend.id)
        counted.add(backend.id)

    async def _attempt(self, backend: Backend, call: Callable[[Backend], Awaitable[Any]], observe: Observer,
                       counted: set[str], *, stream: bool) -> Any:
        bid = backend.id
        self.breaker.begin(bid)
        self.in_flight[bid] = self.in_flight.get(bid, 0) + 1
        start = self.clock()
        handed_over = False
        try:
            try:
                async with asyncio.timeout(self.timeout_s):
                    result = await call(backend)
            except TimeoutError:
                timed_out = TimedOut(f"no answer within {self.timeout_s:g} s")
                self._fail(backend, timed_out, counted)
                observe(backend, timed_out.outcome)
                raise timed_out from None
            except AttemptFailed as exc:
                self._fail(backend, exc, counted)
                observe(backend, exc.outcome)
                raise
            except NotSent:  # the adapter could not build the request: nothing left, the backend did nothing wrong
                self.breaker.release(bid)
                observe(backend, "not_sent")
                raise
            except RouterError:  # the backend refused the request itself (4xx): it is healthy, nothing to resend
                self.breaker.release(bid)
                observe(backend, "rejected")
                raise
            except BaseException:  # cancelled (the client went away), or a bug: no verdict on the backend
                self.breaker.release(bid)
                observe(backend, "cancelled")
                raise
            self._observe_latency(bid, start)
            self.breaker.success(bid)
            self.why.pop(bid, None)
            if stream:
                handed_over = True
                return _Handed(self._rest(backend, result, observe, counted, start + self.stream_deadline_s),
                               lambda: self._never_read(backend, result, observe))
            observe(backend, "ok")
            return result
        finally:
            if not handed_over:
                self.in_flight[bid] -= 1

    async def _rest(self, backend: Backend, stream: AsyncIterator[Any], observe: Observer, counted: set[str],
                    deadline: float) -> AsyncIterator[Any]:
        """The stream as the client reads it: in flight until it ends; each chunk bounded by the idle timeout, and
        the whole stream by `deadline` (on `clock`). Passing the deadline is the router's limit, not the backend's
        failure: it ends the stream (attempt `timeout`) without counting against the breaker."""
        outcome = "cancelled"
        try:
            while True:
                wait = min(self.chunk_timeout_s, deadline - self.clock())
                try:
                    if wait <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(wait):
                        chunk = await anext(stream)
                except StopAsyncIteration:
                    outcome = "ok"
                    return
                except TimeoutError:
                    outcome = "timeout"
                    if wait < self.chunk_timeout_s:
                        self.breaker.release(backend.id)
                        raise UpstreamTimeout(f"{backend.target}: the stream ran past the router's limit of "
                                              f"{self.stream_deadline_s:g} s for one stream") from None
                    self._fail(backend, TimedOut("stream idle"), counted)
                    raise UpstreamTimeout(f"{backend.target} sent nothing for {self.chunk_timeout_s:g} s") from None
                except AttemptFailed as exc:
                    outcome = "stream_interrupted"
                    self._fail(backend, exc, counted)
                    raise UpstreamError(f"{backend.target}: the stream broke ({exc})") from None
                yield chunk
        finally:
            self.in_flight[backend.id] -= 1
            close = getattr(stream, "aclose", None)
            if close is not None:
                try:
                    await close()
                except BaseException:  # closing a broken or cancelled stream must not hide the real outcome
                    pass
            observe(backend, outcome)

    async def _never_read(self, backend: Backend, stream: AsyncIterator[Any], observe: Observer) -> None:
        """What `_rest`'s `finally` does, for a stream closed before its first read (the response never started)."""
        self.in_flight[backend.id] -= 1
        self.breaker.release(backend.id)
        close = getattr(stream, "aclose", None)
        if close is not None:
            try:
                await close()
            except BaseException:
                pass
        observe(backend, "cancelled")

    def _observe_latency(self, bid: str, start: float) -> None:
        elapsed = (self.clock() - start) * 1000
        prev = self.latency_ms.get(bid)
        self.latency_ms[bid] = elapsed if prev is None else prev + self.ewma_alpha * (elapsed - prev)

    def _choose(self, route: Route, plan: _Plan, ranker: RoutingPolicy, tried: set[str],
                unable: Collection[str] = (), key: bytes | None = None) -> Backend | None:
        """The policy's choice among the allowed backends whose circuit admits a request, untried ones first (once
        none is left a tried one may be retried: a Serve app has several replicas, so a retry after one replica's
        undelivered failure usually lands on a live one), below `max_in_flight`; never one in `unable` (its vendor
        cannot carry the request). None when none is available."""
        check = self.breaker.any_open()
        in_flight, latency, default_cap = self.in_flight, self.latency_ms, self.max_in_flight
        clouds = self.credited() if ranker.wants_credits else ()
        for skip in ((tried, frozenset()) if tried else (frozenset(),)):
            healthy = 0
            for tier in plan.tiers:
                ok = tier if not (skip or check or unable) else [
                    b for b in tier if b.id not in skip and b.id not in unable
                    and (not check or self.breaker.available(b.id))]
                if not ok:
                    continue
                healthy += len(ok)
                free = [Candidate(b, n, latency.get(b.id), b.cloud in clouds) for b in ok
                        if (n := in_flight.get(b.id, 0)) < (b.capacity or default_cap)]
                if free:
                    return ranker.choose(free, self.rng, key).backend
            if healthy:
                raise Saturated(f"all {healthy} allowed backends of {route.name!r} are at capacity", retry_after_s=1)
        return None


class _Handed:
    """A stream handed to the caller. An async generator's `finally` runs only once it has started, so closing a
    stream nobody read (the client went away before the response started) would leak its in-flight slot and
    outcome: `aclose` settles both either way. The caller must `aclose` it."""

    __slots__ = ("_closed", "_gen", "_started", "_unread")

    def __init__(self, gen: AsyncIterator[Any], unread: Callable[[], Awaitable[None]]):
        self._gen, self._unread = gen, unread
        self._started = self._closed = False

    def __aiter__(self) -> _Handed:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        self._started = True
        return await anext(self._gen)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started:
            await self._gen.aclose()  # type: ignore[attr-defined]
        else:
            await self._unread()


def _ladder(allowed: tuple[Backend, ...], policy: RoutingPolicy) -> tuple[tuple[Backend, ...], ...]:
    """The spillover ladder: the company's own backends (tier 0: replicas and endpoints it already pays for) before
    managed per-token ones (tier 1); inside a tier, the policy's static groups. `_choose` takes the first group with
    a free, healthy backend, so a saturated or dead tier spills to the next, never outside `allowed`."""
    out: list[tuple[Backend, ...]] = []
    for tier in sorted({b.tier for b in allowed}):
        out += policy.tiers([b for b in allowed if b.tier == tier])
    return tuple(out)


_REFUSAL_CODES = {429: "backend_throttled", 401: "backend_auth_failed", 404: "backend_not_found"}


def _raise_if_all_refused(route: Route, refusals: list[Refused | None]) -> None:
    """When every attempt was refused the same telling way, the client gets that status (429 with the backend's
    Retry-After, 401, 404) instead of a bare 503: it says what to do."""
    if not refusals or any(r is None for r in refusals):
        return
    statuses = {r.status for r in refusals if r is not None}
    if len(statuses) != 1 or (status := statuses.pop()) not in _REFUSAL_CODES:
        return
    last = refusals[-1]
    assert last is not None
    hints = [r.retry_after_s for r in refusals if r is not None and r.retry_after_s]
    raise BackendRefused(f"every backend of {route.name!r} tried refused the request: {last}", status=status,
                         code=_REFUSAL_CODES[status], retry_after_s=min(hints) if hints else None)
