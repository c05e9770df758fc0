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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sovra.core.api_errors import SpendUnavailable
from sovra.core.backends import Backend, Route
from sovra.core.errors import StoreUnavailable
from sovra.core.spec.org import Credit
from sovra.core.spec.spend import SpendSettings
from sovra.infra.ledger.store import Charge, CreditCap, Entry, SpendStore
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
class Spend:
    """One router replica's budgets and ledger."""

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

    async def reserve(self, tenant: str, route: Route, body: Mapping[str, Any]) -> Reservation | None:
        """Hold the request's share of every budget it falls under, or raise the 429 (or the 503) it gets."""
        applying = self.budgets.applying(tenant, route.name)
        if not applying:
            return None
        now = self.clock()
        tokens = bg.estimate_tokens(body, self.settings.default_max_tokens)
        usd = bg.usd_micros(tokens, bg.highest_price(route.backends))
        charges = tuple(bg.charges(applying, tokens, usd, now))
        try:
            refusal = await asyncio.get_running_loop().run_in_executor(self.pool, self.store.reserve, charges)
        except StoreUnavailable as exc:
            self.unavailable += 1
            if self.settings.on_unavailable == "open":
                self.unchecked += 1
                return Reservation(charges, checked=False, tokens=tokens)
            raise SpendUnavailable(f"budgets cannot be checked: {exc}; nothing was sent (org.yaml spend."
                                   "on_unavailable: closed)") from None
        if refusal is not None:
            error = bg.refusal_error(refusal, now)
            self.refused[error.code] = self.refused.get(error.code, 0) + 1
            raise error
        return Reservation(charges, checked=True, tokens=tokens)

    def settle(self, record: AuditRecord, backends: Sequence[Backend], held: Reservation | None) -> None:
        """Spool the record's ledger entries, reconciling `held`; give a reservation back when nothing left."""
        if record.deployment is None:
            return
        entries = entries_of(record, backends, held, self.ledger.next_id)
        if entries:
            self.ledger.add(entries)
        elif held is not None and held.checked:  # no payload left: nothing will reconcile it
            give_back = [(c.scope, c.metric, c.window, -c.amount) for c in held.charges]
            self.pool.submit(_quietly, self.store.release, give_back)

    def close(self) -> None:
        self.ledger.close()
        self.pool.shutdown(wait=False)
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
               next_id: Callable[[], str]) -> list[Entry]:
    """One entry per attempt that may have cost money; the answering one carries the reported usage (or, when
    none was reported, the reservation's estimate) and the reconciliation of `held`."""
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
        t_in = t_out = 0
        source = "capacity" if not price else "list"
        if attempt is served:
            t_in, t_out = record.prompt_tokens, record.completion_tokens
            if not (t_in or t_out):  # no usage reported: count what was reserved, never nothing
                t_in = held.tokens if held is not None else 0
                source += ", estimated (no usage reported)"
        else:
            source += ", unreported (no answer)"
        usd = bg.usd_micros(t_in + t_out, price)
        total_tokens, total_usd = total_tokens + t_in + t_out, total_usd + usd
        out.append(Entry(
            entry_id=next_id(), request_id=record.request_id, time=record.time, tenant=record.tenant,
            deployment=record.deployment or "-", target=attempt.target,
            cloud=(backend.cloud if backend is not None and backend.cloud else "unknown"),
            provider=backend.kind if backend is not None else "unknown", outcome=attempt.outcome,
            tokens_in=t_in, tokens_out=t_out, price_source=source, usd_list_micros=usd))
    if out and held is not None:
        actual = {bg.REQUESTS: 1, bg.TOKENS: total_tokens, bg.USD: total_usd}
        adjust = tuple((c.scope, c.metric, c.window, actual[c.metric] - (c.amount if held.checked else 0))
                       for c in held.charges)
        out[0] = dataclasses.replace(out[0], adjust=adjust)
    return out


def _quietly(call: Callable[..., Any], *args: Any) -> None:
    try:
        call(*args)
    except Exception as exc:  # noqa: BLE001  (a reservation not given back only holds budget until the window ends)
        log.warning("could not give a reservation back: %s", exc)
