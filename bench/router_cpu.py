"""CPU per request of Sovra's router app itself, in one process, against a bare ASGI forwarder.

`bench/router.py` measures the whole path `up` deploys, where Ray, the proxy and the replica dominate and two runs
differ by up to 30 %. This one isolates what Sovra adds inside its replica: the same ASGI calls that Serve makes
(scope, receive, send; no HTTP server, no Ray) against a backend client that answers at once, measured as process
CPU time and wall time per request (requests one at a time: fsync's cost is waiting, not CPU), variants interleaved
in rounds. Variants:

- (s) Sovra's app as `up` builds it: tenant key, `X-Sovra-Residency: EU`, deployment resolution, dispatch, metrics,
  the hash-chained audit trail on a temporary disk under the working directory (a `send` line written to the OS
  before the payload leaves, the request's line after: the default durability);
- (f) the same with `audit: {fsync: true}`: each line forced to disk before the payload leaves;
- (n) the same with the audit trail off, so the trail's share shows;
- (b) a bare ASGI app that reads the body, parses it, calls the same client and writes the JSON answer: what
  `bench/serve_ingress.py` does in its replica.

    .venv/bin/python bench/router_cpu.py              # ~20 s
    .venv/bin/python bench/router_cpu.py --profile    # also the top functions of (s) by own time
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import json
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import print_rows
from sovra.orchestrator.router.app import RouterState, create_app
from sovra.orchestrator.router.audit import AuditLog
from sovra.core.backends import Backend, RoutingTable
from sovra.providers.clients import BackendClient
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.orchestrator.router.tenants import TenantDirectory
from sovra.core.spec import Residency
from sovra.core.spec.org import Tenant
from sovra.core.place import Place

KEY = "sk-bench-eu"
ANSWER = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hello from the benchmark"}],
                   "max_tokens": 16}).encode()


class Instant(BackendClient):
    """A backend that answers at once: only the router's own work is left to measure."""

    async def chat(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        return ANSWER

    async def chat_stream(self, backend, body):  # pragma: no cover - not measured here
        raise NotImplementedError

    async def embed(self, backend, body):  # pragma: no cover - not measured here
        raise NotImplementedError


def _backend() -> Backend:
    return Backend(id="bench@local", deployment="bench", model="bench-model", target="local",
                   place=Place("EU", "FR", "FR", "self"), residency=Residency(zones=("EU",)), policy="cost",
                   cost=0.0, kind="ray", address="sovra.bench.local")


def sovra_app(audit_dir: Path | None, *, fsync: bool = False):
    tenants = TenantDirectory.of([Tenant(name="eu", key_sha256=hashlib.sha256(KEY.encode()).hexdigest(),
                                         residency=Residency(zones=("EU",)))])
    audit = AuditLog(audit_dir, writer="bench", fsync=fsync) if audit_dir is not None else None
    state = RouterState(Dispatcher(RoutingTable.of([_backend()])), tenants, {"ray": Instant()}, audit, probe=False)
    return create_app(state)


def bare_app():
    client, backend = Instant(), _backend()

    async def app(scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        answer = json.dumps(await client.chat(backend, json.loads(body))).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})

    return app


def _scope() -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "root_path": "",
            "query_string": b"", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
            "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(BODY)).encode()), (b"authorization", f"Bearer {KEY}".encode()),
                        (b"x-sovra-residency", b"EU")]}


async def overhead_ms(app, scope: dict[str, Any], body: bytes) -> float:
    """One request through the router app as Serve calls it: the `X-Sovra-Overhead-Ms` it answers (the router's own
    time); anything but a 200 stops the benchmark, with the answer."""
    sent = iter([{"type": "http.request", "body": body, "more_body": False}])
    overhead, status = -1.0, 0

    async def receive():
        return next(sent, {"type": "http.disconnect"})

    async def send(message):
        nonlocal overhead, status
        if message["type"] == "http.response.start":
            status = message["status"]
            overhead = float(dict(message["headers"]).get(b"x-sovra-overhead-ms", b"-1"))
        elif status != 200:
            raise SystemExit(f"benchmark request answered {status}, not 200: {message.get('body', b'')[:300]!r}")

    await app(scope, receive, send)
    return overhead


async def _one(app) -> int:
    sent = iter([{"type": "http.request", "body": BODY, "more_body": False}])
    status = 0

    async def receive():
        return next(sent, {"type": "http.disconnect"})

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(), receive, send)
    return status


async def _cpu_us(app, n: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per request."""
    gc.collect()
    t0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        status = await _one(app)
        if status != 200:
            raise SystemExit(f"benchmark request answered {status}, not 200")
    return (time.process_time() - t0) / n * 1e6, (time.perf_counter() - w0) / n * 1e6


async def measure(n: int, rounds: int, fsync_n: int) -> dict[str, list[tuple[float, float]]]:
    # on this disk, under the working directory: /tmp may be a RAM disk, where fsync costs nothing
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp:
        apps = {"s": sovra_app(Path(tmp) / "s"), "f": sovra_app(Path(tmp) / "f", fsync=True),
                "n": sovra_app(None), "b": bare_app()}
        for app in apps.values():  # warm: imports, caches, the audit file
            await _cpu_us(app, 200)
        out: dict[str, list[tuple[float, float]]] = {k: [] for k in apps}
        for _ in range(rounds):
            order = list(apps)
            random.shuffle(order)
            for k in order:  # fsync is slow: fewer requests, the same per-request figure
                out[k].append(await _cpu_us(apps[k], fsync_n if k == "f" else n))
        return out


async def profile(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = sovra_app(Path(tmp))
        await _cpu_us(app, 200)
        pr = cProfile.Profile()
        pr.enable()
        await _cpu_us(app, n)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(30)


NAMES = {"s": "(s) Sovra router app, audit on (write-ahead to the OS)",
         "f": "(f) Sovra router app, audit on, fsync per line", "n": "(n) Sovra router app, audit off",
         "b": "(b) bare ASGI forwarder"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000, help="requests per variant per round")
    ap.add_argument("--fsync-n", type=int, default=300, help="requests per round for the fsync variant")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    res = asyncio.run(measure(args.n, args.rounds, args.fsync_n))
    cpu = {k: statistics.median(c for c, _ in v) for k, v in res.items()}
    wall = {k: statistics.median(w for _, w in v) for k, v in res.items()}
    rows = [[NAMES[k], f"{cpu[k]:.1f}", f"{min(c for c, _ in v):.1f}–{max(c for c, _ in v):.1f}", f"{wall[k]:.1f}"]
            for k, v in res.items()]
    print_rows(f"Per request in one process ({args.rounds} rounds × {args.n}, fsync {args.fsync_n}; median)",
               ["variant", "CPU µs", "CPU range", "wall µs"], rows)
    print(f"Sovra − bare: {cpu['s'] - cpu['b']:.1f} µs CPU/request; of it the audit trail (write-ahead and record): "
          f"{cpu['s'] - cpu['n']:.1f} µs; Sovra/bare CPU: {cpu['s'] / cpu['b']:.1f}×")
    print(f"fsync per line: +{wall['f'] - wall['s']:.0f} µs wall/request over the default "
          f"({wall['f'] / wall['s']:.1f}× the router's own time)")
    if args.profile:
        asyncio.run(profile(args.n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
