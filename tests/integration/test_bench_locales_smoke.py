"""The locales benchmark runs end to end in its quick mode: every variant measured (numbers printed, never asserted on
time), and the detection accuracy it reports is the goal's (≥ 95 % per language on prompts of 20+ characters)."""

import re
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_locales_bench_quick_measures_every_variant_and_reports_accuracy_per_language():
    r = subprocess.run([sys.executable, "bench/locales.py", "--quick"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    for variant in ("off: cost policy", "session affinity", "prefix affinity", "locales (detected)", "locales (X-Sovra-Locale)",
                    "locales + session affinity", "off + OpenTelemetry"):
        assert variant in r.stdout, r.stdout
    rates = dict(re.findall(r"│ ([a-z]{2}) +│ ([0-9.]+)%", r.stdout))
    assert len(rates) == 14 and all(float(v) >= 95.0 for v in rates.values()), rates
