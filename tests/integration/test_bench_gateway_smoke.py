"""The gateway benchmark runs end to end in its quick mode (Sovra, Ray Serve's floor on Sovra's Ray, and the servers
called directly, in front of both backends: FastAPI/uvicorn servers and raw asyncio ones); its numbers are reported,
never asserted on time."""

import json
import subprocess
import sys

import pytest
import ray  # noqa: F401  (the 'ray' extra: scripts/test installs it, so its absence fails)

from tests.integration.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKENDS = ("fastapi", "raw")


def _haproxies() -> set[int]:
    from pathlib import Path

    out = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().split(b"\0")[0].endswith(b"haproxy"):
                out.add(int(cmdline.parent.name))
        except OSError:
            continue
    return out


def test_gateway_bench_quick_measures_sovra_as_up_deploys_it_against_the_servers_called_directly(tmp_path):
    before = _haproxies()
    r = subprocess.run([sys.executable, "bench/gateway.py", "--quick", "--no-litellm", "--no-nginx", "--floor",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=420, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    # torn down: no HAProxy of the bench's Ray left running (the floor's app once kept `down` from stopping it)
    assert not _haproxies() - before, r.stderr[-3000:]
    data = json.loads((tmp_path / "gateway-quick.json").read_text())
    results = data["results"]
    assert list(results) == list(BACKENDS), list(results)  # the setup (FastAPI) first
    assert data["skipped"] == {"litellm": "--no-litellm", "nginx": "--no-nginx"}
    assert "FastAPI" in data["backends"]["fastapi"] and "uvicorn" in data["backends"]["fastapi"], data["backends"]
    for kind in BACKENDS:
        assert set(results[kind]) == {"sovra", "direct", "floor"}, (kind, set(results[kind]))
        for name, shapes in results[kind].items():
            assert set(shapes) == {"c1", "c16", "stream"}, (kind, name)
            for shape, m in shapes.items():
                assert m["n"] > 0 and m["p50_ms"] > 0 and m["p99_ms"] >= m["p50_ms"] and m["rps"] > 0, (kind, name,
                                                                                                         shape)
                assert m["errors"] == 0, (kind, name, shape, m["first_error"])  # every request was answered
        # the answers came through Sovra's router (its header), from both servers of this backend and no other:
        # one `up`, one deployment per backend, each placed on its own pair
        assert results[kind]["sovra"]["c1"]["router_overhead_p50_ms"] is not None, kind
        assert set(data["served_by"]["sovra"][kind]) == {f"{kind}-a", f"{kind}-b"}, data["served_by"]
        vs = data["derived"][kind]["vs_direct"]["sovra"]
        assert vs["added_p50_ms_c1"] is not None and vs["rps_c16_over_direct"] > 0, kind
        assert vs["added_ttfc_p50_ms"] is not None, kind
        goals = data["derived"][kind]["goals"]
        assert {"sovra: added p50 at C=1 (ms)", "sovra: req/s at C=16 / direct", "sovra: added TTFC p50 (ms)",
                "sovra: router replica RSS (MB, largest)"} <= set(goals), kind
        assert goals["sovra: req/s at C=16 / LiteLLM"]["met"] is None  # not measured: --no-litellm
    assert data["sovra"]["sovra"]["router_replicas"] is None and data["sovra"]["sovra"]["up_s"] > 0
    assert data["rss_mb"]["sovra"]["router replica"], data["rss_mb"]  # the router's replica process was found
    # Ray Serve's floor ran on Sovra's Ray, behind its ingress, forwarding to the same pairs (no Sovra header)
    assert data["rss_mb"]["floor"]["floor replica"] and "haproxy" in data["rss_mb"]["floor"], data["rss_mb"]
    for kind in BACKENDS:
        assert set(data["served_by"]["floor"][kind]) == {f"{kind}-a", f"{kind}-b"}, data["served_by"]
        assert results[kind]["floor"]["c1"]["router_overhead_p50_ms"] is None, kind
        assert f"{kind}: Ray Serve's floor adds" in r.stdout, kind
    for token in ("Gateway benchmark", "the issue's goals", "FastAPI/uvicorn servers, as vLLM's", "stress case",
                  "servers called directly", "litellm skipped: --no-litellm"):
        assert token in r.stdout, token
    md = (tmp_path / "gateway-quick.md").read_text()
    assert md.startswith("# Gateway benchmark")
    assert md.index("as vLLM's (the issue's setup)") < md.index("stress case")  # FastAPI's tables come first
