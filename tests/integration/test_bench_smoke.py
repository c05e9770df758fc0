"""The placement benchmark runs end to end (small sizes); its numbers are reported, never asserted on time."""

import json
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT


@pytest.mark.slow
def test_placement_bench_quick_runs_and_reports_optimal_plans(tmp_path):
    r = subprocess.run([sys.executable, "bench/placement.py", "--quick", "--no-single-cloud", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    files = list(tmp_path.glob("*.json"))
    assert files
    rows = json.loads(files[0].read_text())
    rows = rows["results"]
    assert rows and all(row["default"]["status"] == "optimal" for row in rows)
    assert all(row["greedy"]["ratio"] is None or row["greedy"]["ratio"] >= 1 - 1e-9 for row in rows)
