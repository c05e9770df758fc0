"""Engine benchmark: load time, generation speed, first-token latency and memory of each real engine.

    .venv/bin/python bench/engines.py            # llama-cpp (Gemma 3 270M) and minilm, side by side
    .venv/bin/python bench/engines.py --json     # the same numbers as JSON

Each engine is measured in its own child process, so its RSS is that of a process holding only that model.
"Load" is building the engine object with the model file already on disk (the GGUF's one-time assembly is timed
apart). Generation is greedy; decode speed counts tokens after the first, first-token latency is from the call
to the first content chunk of a stream (prompt evaluation included). For embeddings the analogues are inputs and
tokens per second over a batch, and the latency of one short request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHAT_PROMPTS = ["What is the capital of France? Answer in one sentence.",
                "Tell me a story about a dragon who learns to fly.",
                "What should I pack for a week of hiking?"]
SENTENCES = [f"Sentence number {i} is about {topic}." for i, topic in
             enumerate(["cats", "finance", "the weather", "rivers", "databases", "music", "trains", "bread"] * 32)]


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def bench_llama(repeats: int, threads: int) -> dict[str, Any]:
    from sovra.orchestrator.serving.engines.llama_cpp import packaged_gguf

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        packaged_gguf(Path(tmp))
        assemble_s = time.perf_counter() - t
    base = rss_mb()[0]
    t = time.perf_counter()
    from sovra.orchestrator.serving.engines import get_engine

    engine = get_engine("llama-cpp")("gemma-3-270m", "bench", n_threads=threads)
    load_s = time.perf_counter() - t

    async def stream(prompt: str) -> tuple[float, float, int]:
        start, first, last, n = time.perf_counter(), None, None, 0
        async for c in engine.chat_stream({"messages": [{"role": "user", "content": prompt}], "max_tokens": 128}):
            now = time.perf_counter()
            if c["choices"][0]["delta"].get("content"):
                first = first or now
                last = now
            if c.get("usage"):
                n = c["usage"]["completion_tokens"]
        return first - start, last - first, n

    async def measure() -> list[tuple[float, float, int]]:
        await stream(CHAT_PROMPTS[0])  # warm-up
        return [await stream(p) for _ in range(repeats) for p in CHAT_PROMPTS]

    runs = asyncio.run(measure())
    decode_tokens = sum(n - 1 for _, _, n in runs)
    return {"engine": "llama-cpp", "model": engine.model_path.name, "load_s": load_s, "assemble_s": assemble_s,
            "tokens_per_s": decode_tokens / sum(d for _, d, _ in runs),
            "first_token_ms": statistics.median(f for f, _, _ in runs) * 1000,
            "rss_base_mb": base, "rss_mb": rss_mb()[0], "rss_peak_mb": rss_mb()[1]}


def bench_minilm(repeats: int, threads: int) -> dict[str, Any]:
    base = rss_mb()[0]
    t = time.perf_counter()
    from sovra.orchestrator.serving.engines import get_engine

    engine = get_engine("minilm")("all-minilm-l6-v2", "bench", n_threads=threads)
    load_s = time.perf_counter() - t

    async def measure() -> tuple[float, int, list[float]]:
        await engine.embed({"input": SENTENCES[:32]})  # warm-up
        t = time.perf_counter()
        tokens = 0
        for _ in range(repeats):
            tokens += (await engine.embed({"input": SENTENCES}))["usage"]["prompt_tokens"]
        batch_s = time.perf_counter() - t
        single = []
        for s in SENTENCES[:20]:
            t = time.perf_counter()
            await engine.embed({"input": s})
            single.append(time.perf_counter() - t)
        return batch_s, tokens, single

    batch_s, tokens, single = asyncio.run(measure())
    return {"engine": "minilm", "model": "all-MiniLM-L6-v2", "load_s": load_s, "assemble_s": None,
            "inputs_per_s": repeats * len(SENTENCES) / batch_s, "tokens_per_s": tokens / batch_s,
            "first_token_ms": statistics.median(single) * 1000,
            "rss_base_mb": base, "rss_mb": rss_mb()[0], "rss_peak_mb": rss_mb()[1]}


BENCHES = {"llama-cpp": bench_llama, "minilm": bench_minilm}


def child(name: str, repeats: int, threads: int) -> dict[str, Any]:
    r = subprocess.run([sys.executable, __file__, "--child", name, "--repeats", str(repeats),
                        "--threads", str(threads)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{name} benchmark failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]]) -> str:
    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = [("", *[r["engine"] for r in rows]),
             ("model", *[r["model"] for r in rows]),
             ("load (s, file on disk)", *[fmt(r["load_s"], ".2f") for r in rows]),
             ("GGUF assembly, once (s)", *[fmt(r["assemble_s"], ".2f") for r in rows]),
             ("tokens/s (decode; embed: read)", *[fmt(r["tokens_per_s"], ".0f") for r in rows]),
             ("inputs/s (embeddings)", *[fmt(r.get("inputs_per_s"), ".0f") for r in rows]),
             ("first token / one request (ms)", *[fmt(r["first_token_ms"], ".0f") for r in rows]),
             ("RSS before load (MB)", *[fmt(r["rss_base_mb"], ".0f") for r in rows]),
             ("RSS holding model (MB)", *[fmt(r["rss_mb"], ".0f") for r in rows]),
             ("peak RSS (MB)", *[fmt(r["rss_peak_mb"], ".0f") for r in rows])]
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the prompts / the sentence batch")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads each engine computes with")
    ap.add_argument("--child", choices=sorted(BENCHES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(BENCHES[args.child](args.repeats, args.threads)))
        return
    rows = [child(name, args.repeats, args.threads) for name in BENCHES]
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    print(f"\n{os.cpu_count()} CPUs, {args.threads} threads per engine, Python {sys.version.split()[0]}, "
          f"load average {os.getloadavg()[0]:.1f} (other work on the machine skews every number)", file=sys.stderr)


if __name__ == "__main__":
    main()
