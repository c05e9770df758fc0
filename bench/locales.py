"""Locales, affinity and traces on the hot path (issue 22): the router's own time per request with each on vs off, and
the accuracy of the router's language detection (its `Detector`, threshold included) per language on the shipped set.

Part 1 drives Sovra's router app through the ASGI calls Serve makes (no HTTP server, no Ray) at C=16, against a
backend client that answers at once, so only the router's own work is left; variants interleaved in rounds, every
variant sending the same prompts (the shipped multilingual set, 20+ characters, round robin):

- off        policy `cost`, no variants (the router before issue 22; the audit trail on, as always)
- session    policy `session`, `X-Session-Id` per request (rendezvous hashing over 4 backends)
- prefix     policy `prefix` (a digest of the first 1,024 characters of the prompt)
- locales    a French and an Arabic variant: every request's language detected, its variant chosen
- header     the same variants, the locale given by `X-Sovra-Locale` (no detection): locales − header = detection
- both       locales + session affinity (what `examples/localised` with `session` would run)
- traced     `off` with OpenTelemetry on (spans to an exporter that drops them: the SDK's own cost)

Part 2: the router's detector over the whole set: accuracy per language on prompts of 20+ characters (the goal is
≥ 95 %), and how often a short prompt (under 20 characters, never detected) would have been right.

    .venv/bin/python bench/locales.py            # ~1 min; results in bench/results/locales.{md,json}
    .venv/bin/python bench/locales.py --quick    # a smoke run, not a measurement
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
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import print_rows
from bench.router_cpu import Instant, overhead_ms
from sovra.core.backends import Backend, RoutingTable
from sovra.core.place import Place
from sovra.core.spec import Residency
from sovra.core.spec.org import Tenant
from sovra.orchestrator.router.app import RouterState, create_app
from sovra.orchestrator.router.audit import AuditLog
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.orchestrator.router.locales import MIN_DETECT_CHARS, Detector, Locales
from sovra.orchestrator.router.tenants import TenantDirectory
from sovra.orchestrator.router.tracing import Tracing

KEY = "sk-bench-locale"
OUT = Path(__file__).resolve().parent / "results"
PROMPTS = [json.loads(line) for line in (Path(__file__).resolve().parents[1] / "tests" / "data" /
                                         "multilingual_prompts.jsonl").read_text("utf-8").splitlines() if line]
VARIANTS = ("off", "session", "prefix", "locales", "header", "both", "traced")


def _backends(policy: str, variants: bool) -> list[Backend]:
    def b(name: str, deployment: str, country: str, zone: str, locale: str | None = None) -> Backend:
        return Backend(id=f"{deployment}@{name}", deployment=deployment, model=deployment, target=name,
                       place=Place(zone, country, country, "self"), residency=Residency(zones=("EU", "MEA")),
                       policy=policy, cost=1.0, kind="ray", address=f"sovra.{deployment}.{name}",
                       variant_of="bench" if locale else None, locale=locale)

    out = [b(f"eu-{i}", "bench", "FR", "EU") for i in range(4)]
    if variants:
        out += [b("paris-fr", "bench.fr", "FR", "EU", "fr"), b("dubai-ar", "bench.ar", "AE", "MEA", "ar")]
    return out


def _app(tmp: Path, name: str, detector: Detector):
    tenants = TenantDirectory.of([Tenant(name="eu", key_sha256=hashlib.sha256(KEY.encode()).hexdigest(),
                                         residency=Residency(zones=("EU", "MEA")))])
    policy = {"session": "session", "prefix": "prefix", "both": "session"}.get(name, "cost")
    tracing = None
    if name == "traced":
        from opentelemetry.sdk.trace.export import SpanExportResult, SpanExporter

        class Drop(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS

        tracing = Tracing.with_exporter(Drop())
    state = RouterState(Dispatcher(RoutingTable.of(_backends(policy, name in ("locales", "header", "both")))), tenants,
                        {"ray": Instant()}, AuditLog(tmp / name / "audit", writer="bench"), probe=False,
                        locales=Locales(detector), tracing=tracing)
    return create_app(state), tracing


def _bodies() -> list[bytes]:
    texts = [p["text"] for p in PROMPTS if len(p["text"]) >= MIN_DETECT_CHARS]
    return [json.dumps({"model": "bench", "max_tokens": 16, "messages": [
        {"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": t}]},
        ensure_ascii=False).encode() for t in texts]


async def _one(app, body: bytes, session: bytes, locale: bytes | None = None) -> float:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "root_path": "",
             "query_string": b"", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()), (b"authorization", f"Bearer {KEY}".encode()),
                         (b"x-session-id", session), *(((b"x-sovra-locale", locale),) if locale else ())]}
    return await overhead_ms(app, scope, body)


async def _round(app, bodies: list[bytes], n: int, c: int, locale: bytes | None = None) -> dict[str, float]:
    per_task = n // c

    async def worker(w: int) -> list[float]:
        return [await _one(app, bodies[(w * per_task + i) % len(bodies)], b"s-%d" % ((w * 31 + i) % 64), locale)
                for i in range(per_task)]

    t0, w0 = time.process_time(), time.perf_counter()
    samples = [x for part in await asyncio.gather(*(worker(w) for w in range(c))) for x in part]
    wall, cpu = time.perf_counter() - w0, time.process_time() - t0
    return {"overhead_p50_ms": statistics.median(samples), "cpu_us": cpu / len(samples) * 1e6,
            "rps": len(samples) / wall}


async def hot_path(n: int, rounds: int, c: int, tmp: Path) -> dict[str, dict[str, float]]:
    detector = Detector()
    detector.load()
    apps = {name: _app(tmp, name, detector) for name in VARIANTS}
    bodies = _bodies()
    locale = {"header": b"fr"}
    for k, (app, _) in apps.items():
        await _round(app, bodies, min(n, 400), c, locale.get(k))  # warm
    out: dict[str, list[dict[str, float]]] = {k: [] for k in apps}
    for _ in range(rounds):
        order = list(apps)
        random.shuffle(order)
        for k in order:
            out[k].append(await _round(apps[k][0], bodies, n, c, locale.get(k)))
    for _, tracing in apps.values():
        if tracing is not None:
            tracing.close()
    return {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in out.items()}


def accuracy() -> dict[str, dict[str, float]]:
    """Per language: prompts of 20+ characters detected right (the router's threshold: below it, no locale, so the
    base serves, counted as a miss here), and short ones the model would have got right were they detected."""
    detector = Detector()
    detector.load()
    long_right, long_all, short_right, short_all = Counter(), Counter(), Counter(), Counter()
    for p in PROMPTS:
        if len(p["text"]) >= MIN_DETECT_CHARS:
            long_all[p["lang"]] += 1
            long_right[p["lang"]] += detector.detect(p["text"]) == p["lang"]
        else:
            short_all[p["lang"]] += 1
            short_right[p["lang"]] += detector._identify(p["text"])[0] == p["lang"]  # type: ignore[misc]
    return {lang: {"long": long_right[lang] / long_all[lang], "n_long": long_all[lang],
                   "short": short_right[lang] / short_all[lang] if short_all[lang] else float("nan"),
                   "n_short": short_all[lang]} for lang in sorted(long_all)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3000, help="requests per variant per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-c", type=int, default=16, help="requests in flight")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.rounds = 320, 1
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp_name:
        hot = asyncio.run(hot_path(args.n, args.rounds, args.c, Path(tmp_name)))
    report(hot, accuracy(), args)
    return 0


NAMES = {"off": "off: cost policy, no variants", "session": "session affinity", "prefix": "prefix affinity",
         "locales": "locales (detected)", "header": "locales (X-Sovra-Locale)", "both": "locales + session affinity", "traced": "off + OpenTelemetry"}


def report(hot: dict[str, dict[str, float]], acc: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    base = hot["off"]
    rows = [[NAMES[k], f"{v['overhead_p50_ms']:.3f}", f"{v['overhead_p50_ms'] - base['overhead_p50_ms']:+.3f}",
             f"{v['cpu_us']:.0f}", f"{v['cpu_us'] - base['cpu_us']:+.0f}", f"{v['rps']:.0f}"] for k, v in hot.items()]
    head = ["variant", "own time p50 ms", "vs off", "CPU µs/req", "vs off", "req/s"]
    title = f"Router's own time at C={args.c} ({args.rounds} rounds × {args.n}, medians; Instant backend)"
    print_rows(title, head, rows)
    acc_rows = [[lang, f"{a['long']:.1%}", str(a["n_long"]), f"{a['short']:.0%}", str(a["n_short"])]
                for lang, a in acc.items()]
    total = sum(a["long"] * a["n_long"] for a in acc.values()) / sum(a["n_long"] for a in acc.values())
    acc_rows.append(["all", f"{total:.1%}", str(sum(int(a["n_long"]) for a in acc.values())), "", ""])
    acc_head = ["language", "detected right (20+ chars)", "prompts", "short, if detected", "prompts"]
    acc_title = "The router's detector (py3langid, its threshold) on tests/data/multilingual_prompts.jsonl"
    print_rows(acc_title, acc_head, acc_rows)
    if args.quick:
        return
    OUT.mkdir(exist_ok=True)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine = f"{platform.machine()}, {platform.platform()}, Python {platform.python_version()}"
    (OUT / "locales.json").write_text(json.dumps({"when": when, "machine": machine, "args": vars(args),
                                                 "hot_path": hot, "accuracy": acc}, indent=2))
    md = [f"# Locales, affinity and traces benchmark\n\n`.venv/bin/python bench/locales.py` at {when} on {machine}.\n",
          f"## {title}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", f"## {acc_title}\n", "| " + " | ".join(acc_head) + " |", "|" + "---|" * len(acc_head)]
    md += ["| " + " | ".join(r) + " |" for r in acc_rows]
    (OUT / "locales.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
