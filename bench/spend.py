"""Spend on the hot path: the router's own time and CPU per request with the ledger and budgets on vs off, and the
ledger's sustained write rate, on SQLite and on a real PostgreSQL server, in one run.

Part 1 drives Sovra's router app through the ASGI calls Serve makes (no HTTP server, no Ray) at C=16, against a
backend client that answers at once, so only the router's own work is left; variants interleaved in rounds:

- off      spend off (the router before issue 21; the audit trail on, as always)
- ledger   spend on, SQLite, no budget applies: each answer is priced and spooled (every request pays this)
- sqlite   spend on, SQLite, the tenant under a token and a USD budget: a reservation per request
- postgres spend on, PostgreSQL (a private server on 127.0.0.1, Debian's binaries), the same budgets

Figures per variant: `X-Sovra-Overhead-Ms` p50 (the router's own time up to its answer: it includes the
reservation's wait), CPU µs per request (the process, flusher thread included) and requests/s.

Part 2 feeds the ledger entries one by one, as the router does, as fast as one thread can, and times until the store
holds them all (none lost: counted in the store).

    .venv/bin/python bench/spend.py            # ~1 min; results in bench/results/spend.{md,json}
    .venv/bin/python bench/spend.py --quick    # a smoke run, not a measurement
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import print_rows
from bench.router_cpu import BODY, Instant, _scope, overhead_ms
from sovra.core.backends import Backend, RoutingTable
from sovra.core.place import Place
from sovra.core.spec import Residency
from sovra.core.spec.org import Tenant
from sovra.core.spec.spend import Budget, SpendSettings
from sovra.infra.ledger.store import Entry, SpendStore
from sovra.orchestrator.router.app import RouterState, create_app
from sovra.orchestrator.router.audit import AuditLog
from sovra.orchestrator.router.budgets import BudgetIndex
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.orchestrator.router.ledger import Ledger
from sovra.orchestrator.router.spend import Spend
from sovra.orchestrator.router.tenants import TenantDirectory

KEY = "sk-bench-eu"
OUT = Path(__file__).resolve().parent / "results"
BUDGETS = (Budget(tenant="eu", tokens_per_minute=10**12, usd_per_month=10**9),)


def _backend() -> Backend:
    return Backend(id="bench@local", deployment="bench", model="bench-model", target="local",
                   place=Place("EU", "FR", "FR", "self"), residency=Residency(zones=("EU",)), policy="cost",
                   cost=0.0, kind="ray", address="sovra.bench.local", cloud="azure", usd_per_1k_tokens=0.5)


def _app(tmp: Path, name: str, store: SpendStore | None, budgets: tuple[Budget, ...]):
    tenants = TenantDirectory.of([Tenant(name="eu", key_sha256=hashlib.sha256(KEY.encode()).hexdigest(),
                                         residency=Residency(zones=("EU",)))])
    spend = None
    if store is not None:
        ledger = Ledger(store, tmp / name / "spool", f"bench-{name}")
        spend = Spend(store, ledger, BudgetIndex(budgets), SpendSettings())
        ledger.start()
    state = RouterState(Dispatcher(RoutingTable.of([_backend()])), tenants, {"ray": Instant()},
                        AuditLog(tmp / name / "audit", writer="bench"), probe=False, spend=spend)
    return create_app(state), spend


async def _one(app) -> float:
    return await overhead_ms(app, _scope(), BODY)


async def _round(app, n: int, c: int) -> dict[str, float]:
    per_task = n // c

    async def worker() -> list[float]:
        return [await _one(app) for _ in range(per_task)]

    t0, w0 = time.process_time(), time.perf_counter()
    samples = [x for part in await asyncio.gather(*(worker() for _ in range(c))) for x in part]
    wall, cpu = time.perf_counter() - w0, time.process_time() - t0
    return {"overhead_p50_ms": statistics.median(samples), "cpu_us": cpu / len(samples) * 1e6,
            "rps": len(samples) / wall}


async def hot_path(stores: dict[str, SpendStore | None], n: int, rounds: int, c: int, tmp: Path
                   ) -> dict[str, dict[str, float]]:
    apps = {}
    for name, store in stores.items():
        apps[name] = _app(tmp, name, store, BUDGETS if name in ("sqlite", "postgres") else ())
    for app, _ in apps.values():
        await _round(app, min(n, 400), c)  # warm: imports, caches, files, the schema
    out: dict[str, list[dict[str, float]]] = {k: [] for k in apps}
    for _ in range(rounds):
        order = list(apps)
        random.shuffle(order)
        for k in order:
            out[k].append(await _round(apps[k][0], n, c))
    for _, spend in apps.values():
        if spend is not None:
            spend.close()
    return {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in out.items()}


def write_rate(store: SpendStore, n: int, tmp: Path, name: str) -> dict[str, float]:
    """Entries/s from the first `add` until the store holds all `n`."""
    ledger = Ledger(store, tmp / f"rate-{name}", f"rate-{name}")
    ledger.start()
    t0 = time.perf_counter()
    for i in range(n):
        ledger.add([Entry(ledger.next_id(), f"r{i}", "2026-12-07T00:00:00.000+00:00", "eu", "bench", "local",
                          "azure", "ray", "ok", 5, 1, "list", 3)])
    added = time.perf_counter() - t0
    while _count(store) < n:
        time.sleep(0.01)
        if time.perf_counter() - t0 > 300:
            raise SystemExit(f"{name}: the store did not get all {n} entries in 300 s")
    done = time.perf_counter() - t0
    ledger.close()
    held = _count(store)
    return {"entries": n, "in_store": held, "add_us_per_entry": added / n * 1e6, "entries_per_s": n / done}


def _count(store: SpendStore) -> int:
    rows = store.summary("2026-12-07", "2026-12-08", [])
    return rows[0]["entries"] if rows else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=4000, help="requests per variant per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-c", type=int, default=16, help="requests in flight")
    ap.add_argument("--entries", type=int, default=50_000, help="ledger entries for the write rate")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.rounds, args.entries = 400, 1, 2_000
    server = None
    try:
        try:
            from tests.pg_server import PostgresServer

            server = PostgresServer()
            server.start()
        except Exception as exc:  # noqa: BLE001  (no server here: the PostgreSQL variants are left out, and said so)
            print(f"PostgreSQL variants left out: {exc}")
            server = None
        with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp_name:
            tmp = Path(tmp_name)
            stores: dict[str, SpendStore | None] = {
                "off": None, "ledger": SpendStore.sqlite(tmp / "ledger.db"), "sqlite": SpendStore.sqlite(tmp / "b.db")}
            if server is not None:
                stores["postgres"] = SpendStore.postgres(server.create_database("bench_hot"))
            hot = asyncio.run(hot_path(stores, args.n, args.rounds, args.c, tmp))
            rates = {"sqlite": write_rate(SpendStore.sqlite(tmp / "rate.db"), args.entries, tmp, "sqlite")}
            if server is not None:
                rates["postgres"] = write_rate(SpendStore.postgres(server.create_database("bench_rate")),
                                               args.entries, tmp, "postgres")
    finally:
        if server is not None:
            server.close()
    report(hot, rates, args)
    return 0


NAMES = {"off": "off: spend off (before issue 21)", "ledger": "ledger: SQLite, no budget applies",
         "sqlite": "sqlite: SQLite, token + USD budget", "postgres": "postgres: PostgreSQL, token + USD budget"}


def report(hot: dict[str, dict[str, float]], rates: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    base = hot["off"]
    rows = [[NAMES[k], f"{v['overhead_p50_ms']:.3f}", f"{v['overhead_p50_ms'] - base['overhead_p50_ms']:+.3f}",
             f"{v['cpu_us']:.0f}", f"{v['cpu_us'] - base['cpu_us']:+.0f}", f"{v['rps']:.0f}"] for k, v in hot.items()]
    head = ["variant", "own time p50 ms", "vs off", "CPU µs/req", "vs off", "req/s"]
    title = f"Router's own time at C={args.c} ({args.rounds} rounds × {args.n}, medians; Instant backend)"
    print_rows(title, head, rows)
    rate_rows = [[k, f"{v['entries']:,}", f"{v['in_store']:,}", f"{v['add_us_per_entry']:.1f}",
                  f"{v['entries_per_s']:,.0f}"] for k, v in rates.items()]
    rate_head = ["store", "entries added", "in the store", "add µs/entry", "entries/s to the store"]
    print_rows("Ledger write rate (one writer, entries added one by one)", rate_head, rate_rows)
    if args.quick:
        return
    OUT.mkdir(exist_ok=True)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine = f"{platform.machine()}, {platform.platform()}, Python {platform.python_version()}"
    (OUT / "spend.json").write_text(json.dumps({"when": when, "machine": machine, "args": vars(args),
                                                "hot_path": hot, "write_rate": rates}, indent=2))
    md = [f"# Spend benchmark\n\n`.venv/bin/python bench/spend.py` at {when} on {machine}.\n",
          f"## {title}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "## Ledger write rate (one writer, entries added one by one)\n", "| " + " | ".join(rate_head) + " |",
           "|" + "---|" * len(rate_head)]
    md += ["| " + " | ".join(r) + " |" for r in rate_rows]
    (OUT / "spend.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
