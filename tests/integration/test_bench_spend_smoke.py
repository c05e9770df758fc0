"""The spend benchmark runs end to end in its quick mode (a real PostgreSQL server included); its numbers are
printed, never asserted on time."""

import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_spend_bench_quick_measures_every_variant_and_loses_no_ledger_entry():
    r = subprocess.run([sys.executable, "bench/spend.py", "--quick"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "PostgreSQL variants left out" not in r.stdout  # scripts/test installs the server: it must be measured
    for variant in ("off: spend off", "ledger: SQLite", "sqlite: SQLite, token", "postgres: PostgreSQL, token"):
        assert variant in r.stdout, r.stdout
    rates = [line for line in r.stdout.splitlines() if line.startswith("│ sqlite ") or line.startswith("│ postgres ")]
    assert len(rates) == 2 and all(line.count("2,000") == 2 for line in rates), rates  # added = in the store
