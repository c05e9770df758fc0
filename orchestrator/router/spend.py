"""Spend on the request path: reserve a request's budgets before its payload leaves, then turn its record into
ledger entries (priced, reconciled with the reported usage) once it has ended.

The store's calls block (SQLite, or a PostgreSQL round trip), so they run on a small thread pool; a request under
no budget never touches the store, and its ledger entries are only spooled (`orchestrator.router.ledger`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sovra.core.api_errors import SpendUnavailable
from sovra.core.backends import Backend, Route
from sovra.core.errors import StoreUnavailable
from sovra.core.spec.org import Credit
from sovra.core.spec.spend import SpendSettings
from sovra.infra.ledger.store import Charge, CreditCap, Entry, Refusal, SpendStore
from sovra.orchestrator.router import budgets as bg
from sovra.orchestrator.router.audit import AuditRecord
from sovra.orchestrator.router.ledger import Ledger
from sovra.policies.costs import monthly_credit_caps

log = logging.getLogger("sovra.router")

#: Attempt outcomes after which the backend may have done (and billed) the work.
COSTLY = frozenset({"ok", "stream_interrupted", "failed", "timeout", "cancelled"})


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a request holds of its budgets; `checked` False when the store was down and the org runs open."""

    charges: tuple[Charge, ...]
    checked: bool
    tokens: int


@dataclass
class _Lease:
    """A slice of one counter (scope, metric, window) this replica holds in the store: requests reserve from it
    locally; a new slice is asked for only when it runs short."""

    granted: int = 0
    used: int = 0  # reserved by requests in flight, then what they used
    last: float = 0.0  # when a request last took from it (monotonic)


#: A slice returns to the store after this long without a request taking from it, so other replicas may use it.
IDLE_RETURN_S = 2.0
#: How long a request waits for the store to grant a slice before the store counts as unavailable.
STORE_DEADLINE_S = 5.0


#: A slice is at most this share of a limit: what a replica killed before returning its slice takes from a
#: monthly budget until the month ends (and what other replicas may hold when one is refused).
SLICE_SHARE = 50


def _chunk(limit: int) -> Callable[[int], int]:
    """How big a slice to ask for when `room` is left of `limit`: an eighth of the room, at most 1/SLICE_SHARE of
    the limit. Slices shrink as the budget runs out, so what other replicas hold near the end is small."""
    cap = max(1, limit // SLICE_SHARE)
    return lambda room: min(room // 8, cap)


@dataclass
class Spend:
    """One router replica's budgets and ledger.

    Budgets are held exactly across replicas by slices (leases): the store grants each replica a slice of a
    counter's room atomically (`SpendStore.lease`), so the slices never add up past the limit; a request reserves
    its estimate from its replica's slice without a store round trip, and asks the store only when the slice runs
    short (near the limit, slices shrink to one request's size). Its usage is reconciled into the slice; a slice
    idle for `IDLE_RETURN_S` and what is left at shutdown go back to the store. An answer that outgrew its
    reservation adds the excess to the store with its ledger entry."""

    store: SpendStore
    ledger: Ledger
    budgets: bg.BudgetIndex
    settings: SpendSettings = field(default_factory=SpendSettings)
    clock: Callable[[], dt.datetime] = _utcnow
    pool: concurrent.futures.Executor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="sovra-spend"))
    refused: dict[str, int] = field(default_factory=dict)  # 429 code -> count
    unavailable: int = 0  # budget checks the store could not answer
    unchecked: int = 0  # of those, requests sent anyway (on_unavailable: open)
    leases_taken: int = 0  # slices the store granted this replica
    spilled: int = 0  # requests over a USD budget served from capacity already paid for (`over_budget: spill`)
    observe: Callable[[Entry], None] = lambda _entry: None  # /metrics' spend counters (`RouterMetrics.watch_spend`)
    _leases: dict[tuple[str, str, str], _Lease] = field(default_factory=dict)
    _locks: dict[tuple[str, str, str], asyncio.Lock] = field(default_factory=dict)
    _returner: asyncio.Task | None = None

    def start(self) -> None:
        """Start the ledger's writer and, on the running loop, the return of idle slices."""
        self.ledger.start()
        self._returner = asyncio.get_running_loop().create_task(self._return_idle_forever())
        self.pool.submit(_quietly, self.store.migrate)  # the schema and a connection before the first request

    async def reserve(self, tenant: str, route: Route, body: dict[str, Any]) -> Reservation | None:
        """Hold the request's share of every budget it falls under, or raise the 429 (or the 503) it gets."""
        applying = self.budgets.applying(tenant, route.deployments)
        if not applying:
            return None
        now = self.clock()
        if any(b.tokens_per_minute is not None or b.usd_per_month is not None for b in applying):
            bg.bound_answer(body, self.settings.default_max_tokens)  # else the estimate would bound nothing
        tokens = bg.estimate_tokens(body, self.settings.default_max_tokens)
        usd = bg.usd_micros(tokens, bg.highest_price(route.backends))
        charges = tuple(bg.charges(applying, tokens, usd, now))
        taken: list[Charge] = []
        try:
            for c in charges:
                await self._take(c, now)
                taken.append(c)
        except StoreUnavailable as exc:
            self._put_back(taken)
            self.unavailable += 1
            log.warning("budget check failed: %s", exc)  # the details are for the operator, not the caller
            if self.settings.on_unavailable == "open":
                self.unchecked += 1
                return Reservation(charges, checked=False, tokens=tokens)
            raise SpendUnavailable("budgets cannot be checked: the spend store is unavailable; nothing was sent "
                                   "(the router's log and /metrics say more)") from None
        except BaseException:
            self._put_back(taken)
            raise
        return Reservation(charges, checked=True, tokens=tokens)

    async def _take(self, c: Charge, now: dt.datetime) -> None:
        key = (c.scope, c.metric, c.window)
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = _Lease()
        lease.last = time.monotonic()
        if lease.used + c.amount <= lease.granted:  # the request path: no store round trip
            lease.used += c.amount
            return
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:  # one slice request per counter at a time; the others wait for its answer
            while lease.used + c.amount > lease.granted:
                need = lease.used + c.amount - lease.granted
                future = asyncio.get_running_loop().run_in_executor(
                    self.pool, self.store.lease, c.scope, c.metric, c.window, need, c.limit, _chunk(c.limit))
                # Credited when the store answers, even if this request is cancelled or gives up waiting first:
                # a slice the store granted is never lost to the replica (it goes back when idle).
                future.add_done_callback(lambda f, lease=lease: self._granted(f, lease))
                try:
                    got = await asyncio.wait_for(asyncio.shield(future), STORE_DEADLINE_S)
                except TimeoutError:
                    raise StoreUnavailable(f"the spend store did not answer in {STORE_DEADLINE_S:g} s") from None
                if isinstance(got, Refusal):
                    error = bg.refusal_error(Refusal(c, got.used), now)
                    self.refused[error.code] = self.refused.get(error.code, 0) + 1
                    raise error
            lease.used += c.amount

    def _granted(self, future: asyncio.Future, lease: _Lease) -> None:
        if not future.cancelled() and future.exception() is None and isinstance(got := future.result(), tuple):
            lease.granted += got[0]
            self.leases_taken += 1

    def _put_back(self, taken: Sequence[Charge]) -> None:
        for c in taken:
            lease = self._leases.get((c.scope, c.metric, c.window))
            if lease is not None:
                lease.used -= c.amount

    def settle(self, record: AuditRecord, backends: Sequence[Backend], held: Reservation | None) -> None:
        """Spool the record's ledger entries and reconcile `held` with what was used (nothing, when no payload
        left)."""
        if record.deployment is None:
            return
        entries, actual = entries_of(record, backends, held, self.ledger.next_id)
        adjust: list[tuple[str, str, str, int]] = []
        for c in held.charges if held is not None else ():
            used = actual[c.metric] if entries else 0
            if not held.checked:  # sent unchecked (the store was down): the store learns it with the entry
                if used:
                    adjust.append((c.scope, c.metric, c.window, used))
                continue
            lease = self._leases.get((c.scope, c.metric, c.window))
            if lease is None:  # its window has passed: the slice is gone with it
                continue
            lease.used += used - c.amount
            if lease.used > lease.granted:  # the answer outgrew its reservation: count the excess in the store
                adjust.append((c.scope, c.metric, c.window, lease.used - lease.granted))
                lease.granted = lease.used
        if entries:
            if adjust:
                entries[0] = dataclasses.replace(entries[0], adjust=tuple(adjust))
            self.ledger.add(entries)
            for e in entries:
                self.observe(e)
        elif adjust:
            self.pool.submit(_quietly, self.store.release, adjust)

    def _unused(self, idle_s: float | None) -> list[tuple[tuple[str, str, str], _Lease, int]]:
        """Set aside the unused part of slices (idle ones, or all) so no request takes it while it goes back, and
        forget the slices of past windows."""
        now, moment = time.monotonic(), self.clock()
        current = {bg.minute(moment), bg.month(moment)}
        out = []
        for key, lease in list(self._leases.items()):
            lock = self._locks.get(key)
            if key[2] not in current and lease.used <= 0 and not (lock is not None and lock.locked()):
                del self._leases[key]
                self._locks.pop(key, None)
                continue
            spare = lease.granted - max(lease.used, 0)
            if spare > 0 and (idle_s is None or now - lease.last >= idle_s):
                lease.granted -= spare
                out.append((key, lease, spare))
        return out

    def _give_back(self, unused: list[tuple[tuple[str, str, str], _Lease, int]]) -> bool:
        """Return set-aside slices to the store; on failure they are the replica's again (nothing is lost)."""
        try:
            self.store.release(sorted((*key, -spare) for key, _, spare in unused))
            return True
        except Exception as exc:  # noqa: BLE001  (kept, retried when next idle)
            log.warning("could not return unused budget slices: %s", exc)
            return False

    async def _return_idle_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(IDLE_RETURN_S / 2)
            unused = self._unused(IDLE_RETURN_S)
            if unused and not await loop.run_in_executor(self.pool, self._give_back, unused):
                for _, lease, spare in unused:
                    lease.granted += spare

    def close(self) -> None:
        """Return every slice's unused part, write what is spooled, release the store.

        What the pool is doing finishes first: an idle slice on its way back (set aside from the slice, so not
        returned again here) or a reconciliation; closing the store under it would lose it, and the counter would
        keep it until its window ends (seen: a minute counter 10 tokens over what was served)."""
        if self._returner is not None:
            self._returner.cancel()
        self.pool.shutdown(wait=True)  # store calls are bounded by its timeouts
        unused = self._unused(None)
        if unused:
            self._give_back(unused)
        self.ledger.close()
        self.store.close()


def credit_caps(credits: Sequence[Credit], clock: Callable[[], dt.datetime] = _utcnow
                ) -> Callable[[], Mapping[str, CreditCap]]:
    """What each cloud's credits may pay in the current month, as the planner spreads them
    (`policies.costs.monthly_credit_caps`): recomputed as the month turns."""

    def caps() -> Mapping[str, CreditCap]:
        now = clock()
        month = bg.month(now)
        return {cloud: CreditCap(cloud, month, round(usd * 1_000_000))
                for cloud, usd in monthly_credit_caps(credits, now.date()).items()}

    return caps


def entries_of(record: AuditRecord, backends: Sequence[Backend], held: Reservation | None,
               next_id: Callable[[], str]) -> tuple[list[Entry], dict[str, int]]:
    """One entry per attempt that may have cost money (the answering one carries the reported usage or, when
    none was reported, the reservation's estimate), and what the request used per budget metric. `backends`:
    where each attempt's target is found, the first of a target winning (the caller lists the answering ones
    first)."""
    by_target = {}
    for b in backends:
        by_target.setdefault(b.target, b)
    served = record.served
    out: list[Entry] = []
    total_tokens, total_usd = 0, 0
    for attempt in record.attempts:
        if attempt.outcome not in COSTLY:
            continue
        backend = by_target.get(attempt.target)
        price = backend.usd_per_1k_tokens if backend is not None else None
        source = "list"
        if not price:
            price = backend.amortised_usd_per_1k_tokens if backend is not None else None
            source = "amortised" if price else "capacity"
        t_in = t_out = 0
        if attempt is served:
            t_in, t_out = record.prompt_tokens, record.completion_tokens
        if not (t_in or t_out):  # no usage reported (a cancelled stream, a timeout, a failover): the backend may
            # have done and billed the work, so count what was reserved, never nothing
            t_in = held.tokens if held is not None else 0
            source += ", estimated (no usage reported)" if held is not None else ", unreported (no usage, no budget)"
        usd = bg.usd_micros(t_in + t_out, price)
        total_tokens, total_usd = total_tokens + t_in + t_out, total_usd + usd
        out.append(Entry(
            entry_id=next_id(), request_id=record.request_id, time=record.time, tenant=record.tenant,
            deployment=backend.deployment if backend is not None else (record.deployment or "-"),
            target=attempt.target,
            cloud=(backend.cloud if backend is not None and backend.cloud else "unknown"),
            provider=backend.kind if backend is not None else "unknown", outcome=attempt.outcome,
            tokens_in=t_in, tokens_out=t_out, price_source=source, usd_list_micros=usd))
    return out, {bg.REQUESTS: 1 if out else 0, bg.TOKENS: total_tokens, bg.USD: total_usd}


def _quietly(call: Callable[..., Any], *args: Any) -> None:
    try:
        call(*args)
    except Exception as exc:  # noqa: BLE001  (the request path retries what it needs)
        log.warning("spend store: %s", exc)
