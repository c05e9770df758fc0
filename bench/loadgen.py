"""The load generator of `bench/router.py`: one measurement per call of `loadgen(spec)`.

One client per measurement, warmed up, then `n` requests from `concurrency` workers. Clients:
  http    an aiohttp session (keep-alive pool): a lean client, so that the servers' cost is what is measured
          and not the client's (httpx costs several times more CPU per request on this machine)
  handle  a Ray Serve DeploymentHandle to the replica's ModelServer, called from where this runs: inside a Serve
          replica (`bench/serve_ingress.py:handle_caller`), as Sovra's router calls it, with no HTTP per call
Each result has the latencies (or, streamed, the time to the first chunk), the wall time, the errors, and the
router's own time per request where it sent one (`X-Sovra-Overhead-Ms`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

OVERHEAD_HEADER = "X-Sovra-Overhead-Ms"


def percentile(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


class _Http:
    """POST /v1/chat/completions with aiohttp; streamed, the time to the first SSE `data:` line."""

    def __init__(self, spec: dict[str, Any]):
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=spec["concurrency"]))
        self.url = spec["url"] + "/v1/chat/completions"
        self.body = json.dumps({**spec["body"], "stream": spec["stream"]}).encode()
        self.headers = {"Content-Type": "application/json", **spec.get("headers", {})}
        self.stream = spec["stream"]

    async def one(self) -> tuple[float, float | None]:
        start = time.perf_counter()
        async with self.session.post(self.url, data=self.body, headers=self.headers) as resp:
            overhead = resp.headers.get(OVERHEAD_HEADER)
            if self.stream:
                first = None
                async for line in resp.content:
                    if first is None and line.startswith(b"data:"):
                        first = time.perf_counter()
                if resp.status != 200 or first is None:
                    raise RuntimeError(f"HTTP {resp.status}, first chunk {first}")
                return first - start, _float(overhead)
            data = json.loads(await resp.read())
            if resp.status != 200 or not data.get("choices"):
                raise RuntimeError(f"HTTP {resp.status}: {str(data)[:200]}")
            return time.perf_counter() - start, _float(overhead)

    async def close(self) -> None:
        await self.session.close()


class _Handle:
    """`ModelServer.chat` (or `chat_stream`, to its first chunk) through a DeploymentHandle from this driver."""

    def __init__(self, spec: dict[str, Any]):
        from ray import serve

        handle = serve.get_deployment_handle("ModelServer", app_name=spec["app"])
        self.chat = handle.chat
        self.chat_stream = handle.options(stream=True).chat_stream
        self.body = {**spec["body"], "stream": spec["stream"]}
        self.stream = spec["stream"]

    async def one(self) -> tuple[float, None]:
        start = time.perf_counter()
        if self.stream:
            gen = self.chat_stream.remote(self.body)
            await gen.__anext__()
            first = time.perf_counter()
            async for _ in gen:
                pass
            return first - start, None
        answer = await self.chat.remote(self.body)
        if not answer.get("choices"):
            raise RuntimeError(f"no choices: {str(answer)[:200]}")
        return time.perf_counter() - start, None

    async def close(self) -> None:
        return None


async def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement on the running event loop (a Serve replica runs it this way, for the handle baseline)."""
    client = _Handle(spec) if spec["kind"] == "handle" else _Http(spec)
    latencies: list[float] = []
    overheads: list[float] = []
    errors: list[str] = []

    async def worker(left: list[int], deadline: float, record: bool) -> None:
        while left[0] > 0 and time.perf_counter() < deadline:
            left[0] -= 1
            try:
                t, overhead = await client.one()
                if record:
                    latencies.append(t)
                    if overhead is not None:
                        overheads.append(overhead)
            except Exception as exc:  # noqa: BLE001  (counted and reported: a benchmark must finish)
                errors.append(f"{type(exc).__name__}: {exc}"[:200])

    conc = spec["concurrency"]
    try:
        warm = [spec["warmup"]]
        await asyncio.gather(*(worker(warm, time.perf_counter() + spec["cap_s"], False) for _ in range(conc)))
        left = [spec["n"]]
        start = time.perf_counter()
        await asyncio.gather(*(worker(left, start + spec["cap_s"], True) for _ in range(conc)))
        wall = time.perf_counter() - start
    finally:
        await client.close()
    return {"n": len(latencies), "wall_s": wall, "latencies_ms": [x * 1000 for x in latencies],
            "overhead_ms": overheads, "errors": errors}


def _float(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement (see the module docstring) and return its raw latencies, wall time and errors."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(measure(spec))
    return uvloop.run(measure(spec))
