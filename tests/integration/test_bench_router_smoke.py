"""The router benchmark runs end to end in its quick mode; its numbers are reported, never asserted on time."""

import json
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT

pytest.importorskip("ray", reason="the router benchmark needs the 'ray' extra (scripts/test installs it)")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_router_bench_quick_measures_every_variant_and_prints_the_ratios(tmp_path):
    r = subprocess.run([sys.executable, "bench/router.py", "--quick", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "router-quick.json").read_text())["results"]
    expected = {"default": {"direct", "serve", "sovra", "sovra-uv", "sdk"},
                "haproxy": {"direct", "serve-ha", "serve-ha-irr", "sovra-ha"}}
    if "haproxy_skipped" in results:
        del expected["haproxy"]
    assert {p: set(v) for p, v in results["phases"].items()} == expected
    for phase, variants in results["phases"].items():
        for name, shapes in variants.items():
            wanted = {"c1", "c16", "stream"} | (set() if name == "sdk" else {"lean_c1", "lean_c16"})
            assert set(shapes) == wanted, (phase, name)
            for shape, m in shapes.items():
                assert m["n"] > 0 and m["p50_ms"] > 0 and m["p99_ms"] >= m["p50_ms"] and m["rps"] > 0, (name, shape)
                assert m["errors"] == 0, (phase, name, shape, m["first_error"])  # every request was answered
    assert [d["backends"] for d in results["decision"] if d["policy"] == "cost"] == [10, 100, 1000]
    assert all(d["us_per_decision"] > 0 for d in results["decision"])
    assert results["rss_mb"]["default"]["router"] > 0
    for label in ("(a) direct", "(b) bare Serve ingress", "(c) Sovra router on Serve", "(c') Sovra router, uvicorn",
                  "(d) SDK direct mode"):
        assert label in r.stdout
    for token in ("c/b ", "c'/b ", "d/a ", "added p50 over direct at C=1", "decision cost (us", "goals ("):
        assert token in r.stdout
    assert (tmp_path / "router-quick.md").read_text().startswith("# Router benchmark")
