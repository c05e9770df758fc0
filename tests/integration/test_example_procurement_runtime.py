"""examples/procurement/runtime/walkthrough.sh as a user runs it: two local servers stand in for the Azure and AWS
deployments, `sovra up` on its own local Ray, requests through the router, `sovra spend`. The router spends the
Azure credit first and moves to AWS once this month's cap is burned; `sovra spend` shows the credit paid exactly its
cap."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import subprocess

import pytest

from sovra.orchestrator.catalog import load_org
from sovra.infra.ray_cluster import free_port
from sovra.policies.costs import monthly_credit_caps
from tests.integration.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXAMPLE = ROOT / "examples" / "procurement" / "runtime"


def test_the_walkthrough_burns_the_credit_then_pays_aws(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOVRA_", "RAY_"))}
    env.update(SOVRA_HOME=str(tmp_path / "home"), SOVRA_ROUTER_PORT=str(free_port()),
               SOVRA_RAY_DASHBOARD_PORT=str(free_port()), SOVRA_RAY_PORT=str(free_port()), REQUESTS="30",
               SPEND_HTML=str(tmp_path / "spend.html"), COLUMNS="200", NO_COLOR="1")
    r = subprocess.run([str(EXAMPLE / "walkthrough.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900, check=False)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    order = re.search(r"served, in order: (.*)", r.stdout).group(1)
    runs = [(t, int(n)) for t, n in re.findall(r"([a-z0-9-]+) x(\d+)", order)]
    cap = monthly_credit_caps(load_org(EXAMPLE / "org.yaml").credits, dt.date.today())["azure"]
    per_answer = 3 * 10.0 / 1000  # the servers report 3 tokens; Azure's list price is $10 per 1k
    assert runs[0][0] == "azure-swedencentral" and runs[0][1] in (math.ceil(cap / per_answer),
                                                                  math.ceil(cap / per_answer) + 1), runs
    assert [t for t, _ in runs[1:]] == ["aws-eu-central-1"], runs  # then AWS, never back, never outside the EU
    row = next(line for line in r.stdout.splitlines() if "│ azure-swedencentral " in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]  # cloud, target, entries, in, out, list, credits, net
    assert float(cells[6]) == pytest.approx(round(cap, 2)), row  # the credit paid exactly this month's cap
    assert (tmp_path / "spend.html").read_text().count("<svg") >= 2
