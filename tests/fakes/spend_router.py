"""A router process built by the real composition root (`build_router_state_app`, as a Serve replica builds it),
for tests that need several router processes over one spend store.

    python -m tests.fakes.spend_router CONFIG.json PORT [--naive] [--clock ISO-TIME]

`--naive` swaps the store's atomic slice grant (`SpendStore.lease`) for a read-then-write one, asked by every
request (no slices, no single flight: `Spend._take`) (a SELECT, a round trip's pause, an
UPDATE): the race the concurrency tests must be able to see. Test code only.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn

from sovra.infra.ledger import store as ledger_store
from sovra.orchestrator.serving.ray_apps import build_router_state_app


KEY = "sk-test-acme"
ADMIN_KEY = "sk-test-spend-admin"  # reads /metrics


def config(tmp: Path, urls: dict[str, str], store: dict[str, Any], name: str, budgets: list[dict[str, Any]],
           credits: list[dict[str, Any]] = (), usd_per_1k: float = 1.0, prices: dict[str, float | None] | None = None,
           over_budget: str = "refuse") -> dict[str, Any]:
    """The router's Serve args (`infra.serve_config.router_app`'s shape): deployment `chat` on the backends
    `urls` (target id -> URL, cheapest first, each priced `usd_per_1k` or its `prices` entry, None: capacity paid
    for, on cloud azure), tenant `acme` (EU) with key `KEY`."""
    prices = prices or {}
    from sovra.core.place import Place
    from tests import factories

    backends = [factories.backend(target, Place("EU", "FR", "FR", "self"), deployment="chat", model="chat",
                                  kind="openai-compatible", address=url, cost=i).model_copy(
        update={"cloud": "azure", "usd_per_1k_tokens": prices.get(target, usd_per_1k), "over_budget": over_budget})
        for i, (target, url) in enumerate(urls.items())]
    return {"backends": [b.to_wire() for b in backends],
            "tenants": [{"name": "acme", "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                         "residency": {"zones": ["EU"]}}],
            "admins": [{"name": "ops", "key_sha256": hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}],
            "audit_path": str(tmp / name / "audit"), "spend_path": str(tmp / "spend"), "spend": store,
            "budgets": budgets, "credits": list(credits)}


def _naive_lease(self, scope, metric, window, need, limit, chunk):
    """`SpendStore.lease` as read, decide, write: two replicas can both see room for the last of the budget."""
    self._ready()
    used = self.used(scope, metric, window)
    room = limit - used
    if need > room:
        return ledger_store.Refusal(ledger_store.Charge(scope, metric, window, need, limit), used)
    grant = need  # per request, as a naive budget check does: every request reads, decides, writes
    time.sleep(0.005)  # a few PostgreSQL round trips' worth of time between the read and the write
    with self._transaction():
        self._run("INSERT INTO spend_counters (scope, metric, window_start, used) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (scope, metric, window_start) DO UPDATE SET used = excluded.used",
                  (scope, metric, window, used + grant))
    return grant, used + grant


async def _naive_take(self, c, now):
    """`Spend._take` without slices or single flight: every request asks the store, as a naive check does."""
    import asyncio

    from sovra.orchestrator.router import budgets as bg
    from sovra.orchestrator.router import spend as spend_mod

    lease = self._leases.setdefault((c.scope, c.metric, c.window), spend_mod._Lease())
    got = await asyncio.get_running_loop().run_in_executor(
        self.pool, self.store.lease, c.scope, c.metric, c.window, c.amount, c.limit, lambda room: 0)
    if isinstance(got, ledger_store.Refusal):
        raise bg.refusal_error(ledger_store.Refusal(c, got.used), now)
    lease.granted += got[0]
    lease.used += c.amount


def _pin_clock(at: str) -> None:
    """Every router built from here on reads `at` as the time (a quota's minute cannot turn during a test)."""
    import datetime as dt

    from sovra.orchestrator.router import app as app_module

    when = dt.datetime.fromisoformat(at)
    original = app_module.create_app

    def create_app(state):
        if state.spend is not None:
            state.spend.clock = lambda: when
        return original(state)

    app_module.create_app = create_app


def main(argv: list[str]) -> None:
    cfg = json.loads(open(argv[0]).read())
    if "--clock" in argv:
        _pin_clock(argv[argv.index("--clock") + 1])
    if "--naive" in argv:
        from sovra.orchestrator.router.spend import Spend

        ledger_store.SpendStore.lease = _naive_lease  # type: ignore[method-assign]
        Spend._take = _naive_take  # type: ignore[method-assign]
    uvicorn.run(build_router_state_app(cfg), host="127.0.0.1", port=int(argv[1]), log_level="warning",
                lifespan="on")


if __name__ == "__main__":
    main(sys.argv[1:])
