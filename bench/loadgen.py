"""The load generator of `bench/router.py`, run in a process of its own (`loadgen(spec)` is its entry point).

One client per measurement, warmed up, then `n` requests from `concurrency` workers on uvloop. Clients:
  httpx    httpx.AsyncClient (keep-alive pool), the client of every HTTP variant and of the reference numbers
  aiohttp  a lean client (several times less CPU per request), to show what the servers cost when the client
           is not the bottleneck
  sdk      `orchestrator.sdk.AsyncClient(mode="direct")` over an httpx client with the same settings
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any


def percentile(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def _httpx_client(concurrency: int):
    import httpx

    size = max(concurrency, 20)
    return httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0),
                             limits=httpx.Limits(max_connections=size, max_keepalive_connections=size))


async def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    kind, stream, conc = spec["kind"], spec["stream"], spec["concurrency"]
    url = spec["url"] + "/v1/chat/completions"
    body = json.dumps({**spec["body"], "stream": stream}).encode()
    headers = spec["headers"]
    http = _httpx_client(conc)
    aio = sdk = None
    if kind == "aiohttp":
        import aiohttp

        aio = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc))
    elif kind == "sdk":
        from orchestrator.sdk import AsyncClient

        sdk = AsyncClient(spec["routes_url"], api_key=spec["key"], residency=spec["residency"], mode="direct",
                          http=http)
    model, messages = spec["body"]["model"], spec["body"]["messages"]
    params = {k: v for k, v in spec["body"].items() if k not in ("model", "messages")}

    async def one() -> float:
        """Latency of one request, or its time to the first SSE `data:` line when streamed."""
        start = time.perf_counter()
        if sdk is not None:
            if stream:
                chunks = sdk.chat_stream(model, messages, **params)
                await chunks.__anext__()
                first = time.perf_counter()
                async for _ in chunks:
                    pass
                return first - start
            answer = await sdk.chat(model, messages, **params)
            assert answer.data["choices"], answer
            return time.perf_counter() - start
        if aio is not None:
            async with aio.post(url, data=body, headers=headers) as resp:
                if stream:
                    first = None
                    async for line in resp.content:
                        if first is None and line.startswith(b"data:"):
                            first = time.perf_counter()
                    assert resp.status == 200 and first is not None, resp.status
                    return first - start
                data = json.loads(await resp.read())
                assert resp.status == 200 and data["choices"], data
                return time.perf_counter() - start
        if stream:
            async with http.stream("POST", url, content=body, headers=headers) as resp:
                first = None
                async for line in resp.aiter_lines():
                    if first is None and line.startswith("data:"):
                        first = time.perf_counter()
                assert resp.status_code == 200 and first is not None, resp.status_code
                return first - start
        resp = await http.post(url, content=body, headers=headers)
        data = resp.json()
        assert resp.status_code == 200 and data["choices"], data
        return time.perf_counter() - start

    latencies: list[float] = []
    errors: list[str] = []

    async def worker(left: list[int], deadline: float, record: bool) -> None:
        while left[0] > 0 and time.perf_counter() < deadline:
            left[0] -= 1
            try:
                t = await one()
                if record:
                    latencies.append(t)
            except Exception as exc:  # noqa: BLE001  (counted and reported: a benchmark must finish)
                errors.append(f"{type(exc).__name__}: {exc}"[:200])

    try:
        if sdk is not None:  # the routing table is fetched once per client, before the clock
            await sdk.chat(model, messages, **params)
        warm = [spec["warmup"]]
        await asyncio.gather(*(worker(warm, time.perf_counter() + spec["cap_s"], False) for _ in range(conc)))
        left = [spec["n"]]
        start = time.perf_counter()
        await asyncio.gather(*(worker(left, start + spec["cap_s"], True) for _ in range(conc)))
        wall = time.perf_counter() - start
    finally:
        await http.aclose()
        if aio is not None:
            await aio.close()
    return {"n": len(latencies), "wall_s": wall, "latencies_ms": [x * 1000 for x in latencies], "errors": errors}


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement (see the module docstring) and return its raw latencies, wall time and errors."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_measure(spec))
    return uvloop.run(_measure(spec))
