"""Gateway benchmark: Sovra against its peers in front of the same OpenAI-compatible servers, of two kinds.

    .venv/bin/python bench/gateway.py                   # full run (about 5 min); bench/results/gateway.{md,json}
    .venv/bin/python bench/gateway.py --quick           # smoke (about 1-2 min): one round, small N, not a measurement
    .venv/bin/python bench/gateway.py --no-litellm --no-nginx --backends fastapi --router-replicas 1 2

Two backends, each two `bench/openai_echo.py` servers (outside Ray, each wanting a key), stand for the servers a
user runs behind a gateway:
  fastapi  FastAPI on uvicorn, as vLLM runs its OpenAI server (the issue's setup: servers of that class)
  raw      raw asyncio + uvloop, several times faster than any real server: a stress case for a gateway's own cost
In front of both, in one run (each gateway is one process set serving both backends):
  sovra    Sovra as README command 1 deploys it, defaults included: `sovra up DEPLOYMENTS --org ORG` (the CLI, a
           subprocess) in a temporary SOVRA_HOME on free ports, one deployment per backend, the four servers as
           org.yaml `endpoints:` (each offering its backend's model only, so each deployment is placed on its own
           pair; their key by `api_key_env`, in the environment of `up`, which the local Ray and its router
           inherit), the local cluster as in examples/quickstart, no tenants, the audit trail on; no tuning variable
           is set (whatever `up` does by default is measured); torn down with `sovra down ... --stop-ray`
  direct   the same servers called directly, round-robin, with the same payload and their key: the baseline
  litellm  LiteLLM's proxy (a pinned 2025 release, in its own venv under ~/.cache/sovra-bench, installed from PyPI on first
           use), one model name per backend over its two deployments, simple-shuffle, offline (local cost map, no
           telemetry)
  nginx    an nginx reverse proxy (where installed): one upstream per backend (keep-alive, unbuffered), one location
Every (variant, backend) pair runs round-robin, in a shuffled order per round, pooled over rounds, so every ratio
divides numbers of the same run. Each process this script starts is stopped at the end, on an error or Ctrl-C too.
The processes themselves are in `bench/gateway_peers.py`.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import importlib.metadata
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from gateway_peers import (
    BACKEND_KINDS,
    NGINX_HINT,
    Backend,
    Direct,
    Floor,
    Gateway,
    LiteLLM,
    Nginx,
    Sovra,
    litellm_version,
    nginx_binary,
    nginx_version,
    start_backend,
)
from loadgen import loadgen, percentile
from machine_info import cpu_model
from report import print_rows

RESULTS = Path(__file__).resolve().parent / "results"
GOALS = {"added_p50_ms": 1.0, "rps_over_direct": 0.7, "rps_over_litellm": 5.0, "added_ttfc_ms": 2.0,
         "router_rss_mb": 200.0}
SHAPES = {"c1": (1, False), "c16": (16, False), "stream": (1, True)}  # shape -> (concurrency, streamed)
LABELS = {"floor": "Ray Serve's floor: Sovra's Ray and HAProxy ingress, a replica that only forwards (aiohttp), no "
                   "Sovra code (bench/serve_floor.py)",
          "direct": "servers called directly", "litellm": "LiteLLM proxy", "nginx": "nginx reverse proxy"}
BACKEND_TITLES = {"fastapi": "FastAPI/uvicorn servers, as vLLM's (the issue's setup)",
                  "raw": "raw asyncio servers (a stress case: far faster than any real server)"}


def body(model: str) -> dict[str, Any]:
    """Every variant's payload for one backend: the same bytes whichever gateway carries them."""
    return {"model": model, "messages": [{"role": "user", "content": "hello from the gateway benchmark"}],
            "max_tokens": 16}


class Sizes:
    """Requests per measurement, and a wall cap per measurement so that a slow variant cannot stall the run."""

    def __init__(self, quick: bool):
        self.rounds = 1 if quick else 3
        self.warmup = 20 if quick else 100
        self.c1 = 40 if quick else 400
        self.c16 = 200 if quick else 1500
        self.stream = 20 if quick else 200
        self.cap_s = 5.0 if quick else 20.0
        self.warmup_c16 = 50 if quick else 500

    def n(self, shape: str) -> int:
        return getattr(self, shape)


def served_by(url: str, headers: dict[str, str], model: str, n: int = 20) -> dict[str, int]:
    """Which server answered each of `n` chat requests sent through `url` (the answers say): a gateway spreads them
    over the backend's pair, and over no other server."""
    seen: dict[str, int] = {}
    for _ in range(n):
        req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body(model)).encode(),
                                     headers={"Content-Type": "application/json", **headers})
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = json.loads(resp.read())["choices"][0]["message"]["content"]
        name = text.removeprefix("served-by ").strip()
        seen[name] = seen.get(name, 0) + 1
    return seen


# ---------------------------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------------------------


def rss_mb(pids: list[int]) -> list[float]:
    import psutil

    out = []
    for pid in pids:
        try:
            out.append(round(psutil.Process(pid).memory_info().rss / 2**20, 1))
        except psutil.Error:
            continue
    return out


def cpu_s(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def cpu_by_session() -> dict[int, float]:
    """CPU seconds used so far by the live processes of each session: to tell this bench's load from other work."""
    import psutil

    out: dict[int, float] = {}
    for proc in psutil.process_iter(["cpu_times"]):
        try:
            sid, t = os.getsid(proc.pid), proc.info["cpu_times"]
        except (ProcessLookupError, PermissionError):
            continue
        if t is not None:
            out[sid] = out.get(sid, 0.0) + t.user + t.system
    return out


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [x for s in samples for x in s["latencies_ms"]]
    overhead = [x for s in samples for x in s["overhead_ms"]]
    n, wall = sum(s["n"] for s in samples), sum(s["wall_s"] for s in samples)
    errors = [e for s in samples for e in s["errors"]]
    sent = sum(s["sent"] for s in samples)
    roles = sorted({r for s in samples for r in s["cpu_s"]})
    cpu = {r: round(sum(s["cpu_s"].get(r, 0.0) for s in samples) / sent * 1e6) for r in roles} if sent else {}
    return {"n": n, "p50_ms": _r(percentile(lat, 50)), "p99_ms": _r(percentile(lat, 99)),
            "rps": round(n / wall, 1) if wall else None,
            "rps_rounds": [round(s["n"] / s["wall_s"], 1) if s["wall_s"] else None for s in samples],
            "errors": len(errors), "first_error": errors[0] if errors else None,
            "gateway_cpu_us_per_request": sum(cpu.values()) if cpu else None, "cpu_us_per_request_by_process": cpu,
            "router_overhead_p50_ms": _r(percentile(overhead, 50))}


def _one(pool: cf.Executor, g: Gateway, b: Backend, sizes: Sizes, roles: dict[str, list[int]], shape: str
         ) -> dict[str, Any]:
    """One measurement of gateway `g` in front of backend `b`, split evenly over `g.urls(b)`. Where there are
    several (direct: each server) and the shape's concurrency allows, the parts run at once, each with its share
    of the concurrency, so that the servers are loaded together, as a gateway in front of them loads them; at C=1
    they run one after the other."""
    conc, stream = SHAPES[shape]
    urls = g.urls(b)
    together = len(urls) > 1 and conc >= len(urls)
    cpu0 = {role: cpu_s(pids) for role, pids in roles.items()}
    specs = []
    for i, url in enumerate(urls):
        n = sizes.n(shape) // len(urls) + (1 if i < sizes.n(shape) % len(urls) else 0)
        specs.append({"kind": "http", "url": url, "headers": g.headers, "body": body(b.model),
                      "concurrency": conc // len(urls) if together else conc, "n": n, "stream": stream,
                      "cap_s": sizes.cap_s if together else sizes.cap_s / len(urls),
                      "warmup": max(conc * 4, sizes.warmup // (1 if conc > 1 else 4)) // len(urls)})
    if together:
        parts = [f.result() for f in [pool.submit(loadgen, spec) for spec in specs]]
    else:
        parts = [pool.submit(loadgen, spec).result() for spec in specs]
    for spec, result in zip(specs, parts):
        result["sent"] = spec["warmup"] + result["n"] + len(result["errors"])
    walls = [p["wall_s"] for p in parts]
    return {"latencies_ms": [x for p in parts for x in p["latencies_ms"]],
            "overhead_ms": [x for p in parts for x in p["overhead_ms"]],
            "n": sum(p["n"] for p in parts), "wall_s": max(walls) if together else sum(walls),
            "errors": [e for p in parts for e in p["errors"]], "sent": sum(p["sent"] for p in parts),
            "cpu_s": {role: cpu_s(pids) - cpu0[role] for role, pids in roles.items()}}


def measure(pool: cf.Executor, gateways: dict[str, Gateway], backends: list[Backend], sizes: Sizes, log
            ) -> dict[str, dict[str, Any]]:
    """Every (variant, backend) pair in every shape, round-robin in a shuffled order per round; pooled over rounds:
    backend kind -> variant -> shape -> summary. `direct` splits each measurement over the backend's two servers
    (half the requests each, loaded together where the concurrency allows), as a round-robin client would."""
    pairs = [(name, b) for b in backends for name in gateways]
    for name, b in pairs:  # each pair warmed up once at C=16 before the first round (not recorded)
        g = gateways[name]
        for url in g.urls(b):
            pool.submit(loadgen, {"kind": "http", "url": url, "headers": g.headers, "body": body(b.model),
                                  "concurrency": 16, "n": sizes.warmup_c16 // len(g.urls(b)), "stream": False,
                                  "cap_s": sizes.cap_s, "warmup": 0}).result()
    log("    warmed up")
    raw: dict[str, dict[str, dict[str, list]]] = {b.kind: {v: {} for v in gateways} for b in backends}
    for r in range(sizes.rounds):
        order = list(pairs)
        random.Random(r).shuffle(order)
        for name, b in order:
            g = gateways[name]
            roles = g.processes()
            for shape in SHAPES:
                raw[b.kind][name].setdefault(shape, []).append(_one(pool, g, b, sizes, roles, shape))
            log(f"    round {r + 1}/{sizes.rounds}: {name} / {b.kind} done")
    return {kind: {v: {shape: summarize(samples) for shape, samples in by_shape.items()}
                   for v, by_shape in by_variant.items()} for kind, by_variant in raw.items()}


def derive(results: dict[str, Any], rss: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Each variant against `direct` (and Sovra against LiteLLM), from numbers of this one run and one backend; the
    issue's goals."""
    d = results["direct"]
    out: dict[str, Any] = {}
    for name, v in results.items():
        out[name] = {"added_p50_ms_c1": _r(v["c1"]["p50_ms"] - d["c1"]["p50_ms"]),
                     "added_p99_ms_c1": _r(v["c1"]["p99_ms"] - d["c1"]["p99_ms"]),
                     "rps_c16_over_direct": _r(v["c16"]["rps"] / d["c16"]["rps"]),
                     "rps_c16_over_direct_rounds": [_r(x / y) if x and y else None for x, y in
                                                    zip(v["c16"]["rps_rounds"], d["c16"]["rps_rounds"])],
                     "added_ttfc_p50_ms": _r(v["stream"]["p50_ms"] - d["stream"]["p50_ms"])}
        if "litellm" in results and name != "litellm":
            lite = results["litellm"]["c16"]
            out[name]["rps_c16_over_litellm"] = _r(v["c16"]["rps"] / lite["rps"])
            out[name]["rps_c16_over_litellm_rounds"] = [_r(x / y) if x and y else None for x, y in
                                                        zip(v["c16"]["rps_rounds"], lite["rps_rounds"])]
    goals: dict[str, dict[str, Any]] = {}
    for name in (n for n in results if n.startswith("sovra")):
        x = out[name]
        rows = [("added p50 at C=1 (ms)", x["added_p50_ms_c1"], "<=", GOALS["added_p50_ms"]),
                ("req/s at C=16 / direct", x["rps_c16_over_direct"], ">=", GOALS["rps_over_direct"]),
                ("req/s at C=16 / LiteLLM", x.get("rps_c16_over_litellm"), ">=", GOALS["rps_over_litellm"]),
                ("added TTFC p50 (ms)", x["added_ttfc_p50_ms"], "<=", GOALS["added_ttfc_ms"]),
                ("router replica RSS (MB, largest)", max(rss.get(name, {}).get("router replica") or [0]) or None,
                 "<=", GOALS["router_rss_mb"])]
        for label_, value, op, goal in rows:
            met = None if value is None else (value <= goal if op == "<=" else value >= goal)
            goals[f"{name}: {label_}"] = {"value": value, "goal": f"{op} {goal:g}", "met": met}
    return {"vs_direct": out, "goals": goals}


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def label(name: str, res: dict[str, Any]) -> str:
    if name == "sovra-before":
        return f"{name}: Sovra with Serve's own proxy (README command 1 before issue 20; SOVRA_SERVE_HAPROXY=0)"
    if name.startswith("sovra"):
        replicas = res["sovra"][name]["router_replicas"]
        return f"{name}: Sovra (`sovra up`, {'default router replicas' if replicas is None else f'{replicas} router replica(s)'})"
    return f"{name}: {LABELS[name]}"


def _rss(res: dict[str, Any], name: str, kind: str) -> str:
    """A gateway's processes (they serve both backends); for `direct`, this backend's two servers."""
    by_role = res["rss_mb"].get(name, {})
    if name == "direct":
        by_role = {role: mbs for role, mbs in by_role.items() if role == f"{kind} server"}
    rss = "; ".join(f"{role} {', '.join(map(str, mbs))}" for role, mbs in by_role.items())
    if sum(len(mbs) for mbs in by_role.values()) > 1:
        rss += f" (total {sum(sum(mbs) for mbs in by_role.values()):.0f})"
    return rss or "-"


def table(res: dict[str, Any], der: dict[str, Any], kind: str) -> tuple[list[str], list[list[str]]]:
    head = ["variant", "C=1 p50 ms", "C=1 p99 ms", "added p50 ms", "C=16 req/s", "÷ direct", "TTFC p50 ms",
            "added TTFC ms", "gateway CPU µs/req C=16", "errors", "RSS MB per process"]
    rows = []
    for name, v in res["results"][kind].items():
        x = der[kind]["vs_direct"][name]
        rows.append([label(name, res), _f(v["c1"]["p50_ms"]), _f(v["c1"]["p99_ms"]),
                     "-" if name == "direct" else _f(x["added_p50_ms_c1"], "+.2f"), _f(v["c16"]["rps"], ".0f"),
                     _f(x["rps_c16_over_direct"], ".3f"), _f(v["stream"]["p50_ms"]),
                     "-" if name == "direct" else _f(x["added_ttfc_p50_ms"], "+.2f"),
                     "-" if name == "direct" else _f(v["c16"]["gateway_cpu_us_per_request"], ".0f"),
                     str(sum(v[s]["errors"] for s in SHAPES)), _rss(res, name, kind)])
    return head, rows


def goal_title(kind: str) -> str:
    return f"Sovra against the issue's goals (issue 20), {BACKEND_TITLES[kind]}"


def goal_table(der: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = [[k, _f(g["value"], ".3f"), g["goal"], "n/a" if g["met"] is None else "met" if g["met"] else "NOT met"]
            for k, g in der["goals"].items()]
    return ["figure", "value", "goal", ""], rows


def lines(res: dict[str, Any], der: dict[str, Any]) -> list[str]:
    out = []
    for kind, d in der.items():
        for name, x in d["vs_direct"].items():
            if "rps_c16_over_litellm" in x and name != "direct":
                out.append(f"{kind}: {name}/litellm req/s at C=16: {_f(x['rps_c16_over_litellm'], '.2f')} (per "
                           "round: " + ", ".join(_f(r, ".2f") for r in x["rps_c16_over_litellm_rounds"]) + ")")
        for name, x in d["vs_direct"].items():
            if name != "direct":
                out.append(f"{kind}: {name}/direct req/s at C=16 per round: "
                           + ", ".join(_f(r, ".3f") for r in x["rps_c16_over_direct_rounds"]))
        for name, s in res["sovra"].items():
            m = res["results"][kind][name]
            out.append(f"{kind}: {name}: router's own time (X-Sovra-Overhead-Ms) p50 C=1 "
                       f"{_f(m['c1']['router_overhead_p50_ms'], '.3f')} ms, C=16 "
                       f"{_f(m['c16']['router_overhead_p50_ms'], '.3f')} ms")
        if "floor" in d["vs_direct"]:  # the platform's share, and Sovra's own over it
            f = d["vs_direct"]["floor"]
            for name in (n for n in d["vs_direct"] if n.startswith("sovra") and n != "sovra-before"):
                x = d["vs_direct"][name]
                out.append(f"{kind}: Ray Serve's floor adds {_f(f['added_p50_ms_c1'], '+.2f')} ms p50 at C=1 and "
                           f"reaches {_f(f['rps_c16_over_direct'], '.3f')} x direct's req/s at C=16; {name} adds "
                           f"{_f(_sub(x['added_p50_ms_c1'], f['added_p50_ms_c1']), '+.2f')} ms over it and reaches "
                           f"{_f(_div(x['rps_c16_over_direct'], f['rps_c16_over_direct']), '.2f')} x its req/s")
        for name, seen in res["served_by"].items():
            out.append(f"{kind}: {name}: requests spread over {seen[kind]}")
        for name, v in res["results"][kind].items():
            if len(cpu := v["c16"]["cpu_us_per_request_by_process"]) > 1:
                out.append(f"{kind}: {name}: CPU µs per request at C=16 by process (warm-up included): "
                           + ", ".join(f"{role} {us}" for role, us in cpu.items()))
    for name, s in res["sovra"].items():
        out.append(f"{name}: `up` took {s['up_s']} s; Serve ingress: "
                   f"{'HAProxy' if res['rss_mb'].get(name, {}).get('haproxy') else 'Serve proxy actor'}")
    for kind, stack in res["backends"].items():
        out.append(f"{kind} servers: {stack}")
    others = res["others"]
    out.append(f"CPU used by processes outside this bench while it measured: {others['cpu_s']:g} CPU s in "
               f"{others['wall_s']:g} s on {res['machine']['nproc']} CPUs (other work on a shared machine)")
    for name, why in res["skipped"].items():
        out.append(f"{name} skipped: {why}")
    return out


HOW = """\
- **The servers**: two backends of two `bench/openai_echo.py` processes each, on 127.0.0.1, outside Ray, each
  wanting the same bearer key; they answer at once, so what a gateway adds is what is measured. **fastapi**: FastAPI
  on uvicorn as vLLM's `vllm/entrypoints/openai/api_server.py` runs it (one worker in the process, `uvloop.run`, a
  pre-bound socket, httptools, keep-alive 5 s; the access log off, i.e. `--disable-uvicorn-access-log`): the HTTP
  stack of vLLM, TGI-class and NIM servers, without their per-request validation and tokenization (a real server
  is slower still). **raw**: raw asyncio HTTP/1.1 on uvloop, several times faster than FastAPI: a stress case.
- **sovra**: `.venv/bin/sovra up deployments.yaml --org org.yaml` as a subprocess, with a temporary `SOVRA_HOME` and
  free ports (`SOVRA_ROUTER_PORT`, `SOVRA_RAY_DASHBOARD_PORT`, `SOVRA_RAY_PORT`), nothing else set (inherited
  `SOVRA_*`/`RAY_SERVE_*` variables are dropped and listed in the JSON): whatever `up` deploys by default (Serve's
  proxy or its HAProxy ingress) is measured. One deployment per backend (`gw-fastapi`, `gw-raw`; `placement:
  {min_targets: 2}`, no `gpu_memory_gb`), planned jointly; the four servers are org.yaml `endpoints:`
  (`openai-compatible`, `api_key_env`), each offering its backend's model only, so each deployment is placed on its
  own pair (the "spread over" lines check it); the local cluster is declared as in examples/quickstart; no tenants
  (the router is open, on 127.0.0.1); the audit trail on, as by default; `up` sends its first request as usual.
  One router serves both deployments. Torn down with `sovra down ... --stop-ray`.
- **floor** (`--floor`): on the Ray of the first Sovra, behind its HAProxy ingress, a Serve app built as the router
  is (`serve.ingress` over a raw ASGI app, 0.25 CPU, the router's Serve settings) that forwards each request to its
  backend's servers round-robin with the router's aiohttp client settings and does nothing else
  (`bench/serve_floor.py`): what any router on Ray Serve costs before its own work. Sovra minus floor is Sovra's.
- **direct**: the same payload and key to the servers, each measurement split in two halves, one per server,
  loaded together (C=8 each at C=16; one after the other at C=1).
- **litellm**: the proxy's CLI (`litellm --config`, no database, no master key), one model name per backend, each
  with two deployments (`openai/<model>`, `api_base`, `api_key: os.environ/...`), `simple-shuffle`,
  `LITELLM_LOCAL_MODEL_COST_MAP=True`, `telemetry: false`.
- **nginx**: `worker_processes auto`, one upstream per backend with `keepalive 64`, reached under `/<backend>/`
  (the prefix stripped), `proxy_http_version 1.1`, `proxy_buffering off`, access log on (as Sovra's audit trail
  is), in the foreground with its own prefix.
- **Load**: one load-generator process (`bench/loadgen.py`: uvloop, aiohttp, a keep-alive pool); each (variant,
  backend) pair is warmed up once at C=16 before the first round, and again before each measurement; C=1 and C=16
  chat completions, and streamed ones at C=1 whose time to the first SSE `data:` line is the TTFC. Per round the
  pairs run in a shuffled order; rounds are pooled. "added" is the variant's p50 minus direct's, in front of the
  same backend; req/s ratios divide numbers of this run and backend. "gateway CPU" is the CPU the gateway's own
  processes (those in the RSS column) used during the C=16 measurement, warm-up included, per request sent. RSS is
  read after the load, once per gateway (it serves both backends)."""

LIMITS = """\
- **Two cores for everything** (unless the machine line says otherwise): the load generator, the servers, the
  gateway under test, and for Sovra its idle Ray (GCS, raylet, dashboard, controller), which runs throughout the
  run, so every variant's measurement shares the cores with it. req/s at C=16 is partly what the others leave;
  the idle servers of the other backend and the idle gateways use little.
- **direct at C=16 is the load generator's and the servers' CPU**, not a real server's capacity: the servers do no
  work. With the raw servers the ratio to direct is a strict test of a gateway's own cost; with the FastAPI ones it
  is closer to what a user sees in front of a real server, and still strict (a real server also computes).
- **Sovra's path has two hops where nginx/LiteLLM have one process**: Serve's ingress (its proxy actor, or HAProxy)
  in front of the router replica, then the router's own HTTP call; and the router writes its audit trail per
  request. That is what `up` deploys, so it is what is measured.
- **LiteLLM runs with its CLI's defaults**: as many uvicorn worker processes as CPUs (`--num_workers`, here the
  machine line's count), its default logging. Its RSS is the sum over the processes listed."""


def markdown(res: dict[str, Any], der: dict[str, Any]) -> str:
    s, m, v = res["sizes"], res["machine"], res["versions"]
    sizes = (f"`{res['command']}`: {s['rounds']} round(s); per variant, backend and round {s['c1']} requests at C=1, "
             f"{s['c16']} at C=16, {s['stream']} streamed at C=1, each after a warm-up and capped at {s['cap_s']:g} s; "
             f"took {res['total_s']:g} s.")
    box = (f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['platform']}, Python {m['python']}, {m['date']}; load "
           f"average at start {' '.join(map(str, m['load_avg_at_start']))}, at the end "
           f"{' '.join(map(str, m.get('load_avg_at_end', [])))}.")
    out = ["# Gateway benchmark", "", sizes, "", box, "",
           "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + "."]

    def md(head: list[str], rows: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]

    for kind in res["results"]:
        out += ["", f"## In front of {BACKEND_TITLES[kind]}", "", f"Servers: {res['backends'][kind]}.", "",
                *md(*table(res, der, kind))]
        out += ["", f"### {goal_title(kind)}", "", *md(*goal_table(der[kind]))]
    out += ["", "## Ratios, spread", ""] + [f"- {x}" for x in lines(res, der)]
    out += ["", "## How it is measured", "", HOW, "", "## What limits each number", "", LIMITS, ""]
    return "\n".join(out)


def versions(res: dict[str, Any]) -> dict[str, str]:
    """Of everything measured: Sovra (and its commit), Ray, Serve's HAProxy where it ran, FastAPI and uvicorn (the
    servers'), LiteLLM, nginx."""
    import ray

    v = {"sovra": importlib.metadata.version("sovra"), "ray": ray.__version__}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    if commit:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=False).stdout.strip()
        v["sovra"] += f" (git {commit}{', with uncommitted changes' if dirty else ''})"
    for exe in sorted({b for s in res["sovra"].values() for b in s.get("haproxy_binary", [])}):
        r = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
        v["haproxy (Serve's ingress)"] = f"{(r.stdout or r.stderr).splitlines()[0] if r.stdout or r.stderr else '?'} ({exe})"
    if "fastapi" in res["results"]:
        v["fastapi (servers)"] = importlib.metadata.version("fastapi")
        v["uvicorn (servers)"] = importlib.metadata.version("uvicorn")
    if "litellm" in res["rss_mb"]:
        v["litellm"] = litellm_version() or "n/a"
    if "nginx" in res["rss_mb"] and (nginx := nginx_binary()):
        v["nginx"] = nginx_version(nginx)
    return v


# ---------------------------------------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    sizes = Sizes(args.quick)
    res: dict[str, Any] = {"quick": args.quick, "sizes": {k: v for k, v in vars(sizes).items()}, "skipped": {},
                           "backends": {}, "sovra": {}, "served_by": {}, "rss_mb": {}}
    nginx = None if args.no_nginx else nginx_binary()
    if args.no_nginx:
        res["skipped"]["nginx"] = "--no-nginx"
    elif nginx is None:
        res["skipped"]["nginx"] = f"no nginx binary on PATH or at /usr/sbin/nginx: {NGINX_HINT}"
        log(f"  nginx skipped: not installed ({NGINX_HINT})")
    if args.no_litellm:
        res["skipped"]["litellm"] = "--no-litellm"
    workdir = Path(tempfile.mkdtemp(prefix="sovra-bench-gateway-"))
    backends: list[Backend] = []
    gateways: dict[str, Gateway] = {}
    try:
        for kind in args.backends:
            backends.append(b := start_backend(kind))
            res["backends"][kind] = b.servers[0].stack
            log(f"  {kind} servers: {', '.join(b.urls)} ({b.servers[0].stack})")
        gateways["direct"] = Direct()
        replicas = args.router_replicas or [None]
        for n in replicas:
            name = "sovra" if len(replicas) == 1 else f"sovra-r{n}"
            g = Sovra(name, workdir, backends, n, log)
            gateways[name] = g  # registered first: torn down even if `up` fails half-way
            g.start()
            res["sovra"][name] = {"router_replicas": n, "up_s": g.up_s, "url": g.url, "dropped_env": g.dropped}
        if args.floor:  # on the first Sovra's Ray, behind its ingress: measured like a gateway of its own
            gateways["floor"] = Floor(gateways["sovra" if len(replicas) == 1 else f"sovra-r{replicas[0]}"],
                                      backends, log)
        if args.before:  # what README command 1 deployed before issue 20: Serve's own proxy, one router replica
            g = Sovra("sovra-before", workdir, backends, None, log, extra_env={"SOVRA_SERVE_HAPROXY": "0"})
            gateways["sovra-before"] = g
            g.start()
            res["sovra"]["sovra-before"] = {"router_replicas": None, "up_s": g.up_s, "url": g.url,
                                            "dropped_env": g.dropped, "env": {"SOVRA_SERVE_HAPROXY": "0"}}
        if not args.no_litellm:
            try:
                gateways["litellm"] = LiteLLM(workdir, backends, log)
            except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
                res["skipped"]["litellm"] = f"{type(exc).__name__}: {exc}"[:2000]
                log(f"  litellm skipped: {exc}")
        if nginx:
            try:
                gateways["nginx"] = Nginx(nginx, workdir, backends, log)
            except (RuntimeError, OSError) as exc:
                res["skipped"]["nginx"] = f"{type(exc).__name__}: {exc}"[:2000]
                log(f"  nginx skipped: {exc}")
        for name, g in gateways.items():
            if name != "direct":
                res["served_by"][name] = {b.kind: served_by(g.urls(b)[0], g.headers, b.model) for b in backends}
        for name in res["sovra"]:
            res["sovra"][name]["served_by"] = res["served_by"][name]
        # two load-generator processes: `direct` loads its two servers at once (`_one`)
        with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            own = {os.getsid(0), *(s.pid for b in backends for s in b.servers),
                   *(g.session for g in gateways.values() if g.session)}
            t0, cpu0 = time.perf_counter(), cpu_by_session()
            res["results"] = measure(pool, gateways, backends, sizes, log)
            wall = time.perf_counter() - t0
            res["others"] = {"cpu_s": round(sum(max(0.0, used - cpu0.get(sid, 0.0)) for sid, used in
                                                cpu_by_session().items() if sid not in own), 1),
                             "wall_s": round(wall, 1)}
        for name, g in gateways.items():
            res["rss_mb"][name] = {role: rss_mb(pids) for role, pids in g.processes().items()}
        res["rss_mb"]["direct"] = {f"{b.kind} server": rss_mb([s.pid for s in b.servers]) for b in backends}
        for name in res["sovra"]:  # which HAProxy Serve runs, if any (for the versions line)
            res["sovra"][name]["haproxy_binary"] = sorted(
                {os.path.realpath(f"/proc/{pid}/exe") for pid in gateways[name].processes().get("haproxy", [])})
    finally:
        # Cleanup runs to the end: a second Ctrl-C would leave a Ray behind. Each step has its own time limit.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)

        def stop(name: str, g: Gateway) -> None:
            try:
                g.stop()
            except Exception as exc:  # noqa: BLE001  (every other process must still be stopped)
                log(f"  {name}: stopping failed: {exc}")

        if "floor" in gateways:  # its app first: Sovra's `down` stops a Ray only once nothing else runs on it
            stop("floor", gateways.pop("floor"))
        with cf.ThreadPoolExecutor(max(1, len(gateways))) as threads:  # `sovra down` waits on Serve: together
            list(threads.map(stop, gateways, gateways.values()))
        for b in backends:
            for s in b.servers:
                s.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return res


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
            "platform": platform.platform(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (the output folder left out)."""
    flags = [f for f, on in (("--quick", args.quick), ("--no-litellm", args.no_litellm), ("--no-nginx", args.no_nginx))
             if on]
    if list(args.backends) != list(BACKEND_KINDS):
        flags.append("--backends " + ",".join(args.backends))
    if args.router_replicas:
        flags.append("--router-replicas " + " ".join(map(str, args.router_replicas)))
    if args.before:
        flags.append("--before")
    if args.floor:
        flags.append("--floor")
    return " ".join([".venv/bin/python bench/gateway.py", *flags])


def _backends(text: str) -> list[str]:
    """`--backends`: a comma-separated subset of BACKEND_KINDS, kept in their report order."""
    asked = {k.strip() for k in text.split(",") if k.strip()}
    if not asked or asked - set(BACKEND_KINDS):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more of {','.join(BACKEND_KINDS)}, comma-separated")
    return [k for k in BACKEND_KINDS if k in asked]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one round, small N (a smoke test, not a measurement)")
    ap.add_argument("--no-litellm", action="store_true", help="skip LiteLLM's proxy (and its one-time install)")
    ap.add_argument("--no-nginx", action="store_true", help="skip nginx")
    ap.add_argument("--backends", type=_backends, default=list(BACKEND_KINDS), metavar="KINDS",
                    help="which servers to stand behind the gateways: fastapi (FastAPI/uvicorn, as vLLM's), raw (raw "
                         "asyncio, a stress case), or both (the default: fastapi,raw)")
    ap.add_argument("--router-replicas", type=int, nargs="+", metavar="N",
                    help="write `router: {replicas: N}` into org.yaml's local cluster; several values: one Sovra "
                         "(its own Ray) per value, measured in the same run (default: org.yaml says nothing)")
    ap.add_argument("--before", action="store_true",
                    help="also Sovra with Serve's own proxy (SOVRA_SERVE_HAPROXY=0), what README command 1 deployed "
                         "before issue 20, in its own Ray, measured in the same run")
    ap.add_argument("--floor", action="store_true",
                    help="also Ray Serve's floor on Sovra's Ray: a replica behind the same HAProxy ingress that only "
                         "forwards (bench/serve_floor.py), so the platform's cost and Sovra's own are told apart")
    ap.add_argument("--out", default=str(RESULTS), help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    if args.router_replicas and len(set(args.router_replicas)) != len(args.router_replicas):
        ap.error("--router-replicas: give each value once")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def on_term(signum, _frame):  # SIGTERM stops everything as Ctrl-C does: through the `finally` blocks
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    start = time.perf_counter()
    info = machine()
    res = run(args, log)
    info["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res.update(machine=info, versions=versions(res), command=command(args),
               total_s=round(time.perf_counter() - start))
    der = {kind: derive(results, res["rss_mb"]) for kind, results in res["results"].items()}
    for kind in res["results"]:
        print_rows(f"Gateway benchmark in front of {BACKEND_TITLES[kind]}: {res['backends'][kind]}",
                   *table(res, der, kind))
        print_rows(goal_title(kind), *goal_table(der[kind]))
    for line in lines(res, der):
        print(line)
    log(f"  total {res['total_s']} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "gateway-quick" if args.quick else "gateway"
    (out / f"{stem}.json").write_text(json.dumps({**res, "goal": GOALS, "derived": der}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(res, der))
    log(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
