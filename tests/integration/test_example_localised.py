"""examples/localised/walkthrough.sh as a user runs it: three local servers stand in for the endpoints in Frankfurt,
Paris and Dubai, `sovra plan` and `sovra up` on its own local Ray, a French, an Arabic and an EU tenant's Arabic
request through the router, `sovra audit`. Each request goes to its locale's variant when the variant is inside the
tenant's residency (the Arabic adapter's name reaching Dubai), else to the base deployment inside the bound."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from sovra.infra.ray_cluster import free_port

from tests.integration.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXAMPLE = ROOT / "examples" / "localised"


def section(out: str, title: str) -> dict[str, str]:
    """The `key: value` lines the walkthrough printed under `-- <title>:` (headers and the answer)."""
    block = out.split(f"-- {title}:", 1)[1].split("\n--", 1)[0].split("\n==", 1)[0]
    return dict(line.split(": ", 1) for line in block.splitlines()[1:] if ": " in line)


def test_the_walkthrough_serves_each_locale_inside_its_bound(tmp_path):
    (tmp_path / "user").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOVRA_", "RAY_"))}
    env.update(SOVRA_HOME=str(tmp_path / "home"), HOME=str(tmp_path / "user"), SOVRA_ROUTER_PORT=str(free_port()),
               SOVRA_RAY_DASHBOARD_PORT=str(free_port()), SOVRA_RAY_PORT=str(free_port()), COLUMNS="200",
               NO_COLOR="1")
    r = subprocess.run([str(EXAMPLE / "walkthrough.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900, check=False)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    out = r.stdout

    # the plan: three deployments, each inside its own residency
    assert re.search(r"^support +residency zones \[EU, MEA\] +-> vllm-dubai \(MEA/AE\), vllm-frankfurt \(EU/DE\)$",
                     out, re.MULTILINE), out  # min_targets 2: a base in each tenant's bound
    assert re.search(r"^support\.fr +residency countries \[FR\] +-> vllm-paris \(EU/FR\)$", out, re.MULTILINE), out
    assert re.search(r"^support\.ar +residency countries \[AE, SA\] +-> vllm-dubai \(MEA/AE\)$", out, re.MULTILINE), out

    fr = section(out, "French (detected)")
    assert (fr["x-sovra-variant"], fr["x-sovra-locale"], fr["x-sovra-target"]) == ("support.fr", "fr", "vllm-paris")
    assert fr["answer"] == "'served-by vllm-paris', model received: mistral-small-fr", fr

    ar = section(out, "Arabic (explicit locale)")
    assert (ar["x-sovra-variant"], ar["x-sovra-locale"], ar["x-sovra-target"]) == ("support.ar", "ar-AE",
                                                                                   "vllm-dubai")
    assert ar["answer"] == "'served-by vllm-dubai', model received: mistral-small-gulf-ar-lora", ar  # the adapter

    eu = section(out, "Arabic from the EU tenant (detected)")  # the Arabic variant is outside the EU: the base serves
    assert (eu["x-sovra-variant"], eu["x-sovra-locale"], eu["x-sovra-target"]) == ("support", "ar", "vllm-frankfurt")
    assert eu["answer"] == "'served-by vllm-frankfurt', model received: mistral-small-3.1", eu

    gulf = section(out, "English from the Gulf tenant (detected)")  # no English variant: the base, inside the Gulf
    assert (gulf["x-sovra-variant"], gulf["x-sovra-locale"], gulf["x-sovra-target"]) == ("support", "en", "vllm-dubai")

    audit = out.split("== sovra audit", 1)[1].strip().splitlines()
    assert audit == [
        ("tenant=eu-helpdesk deployment=support locale=fr locale_source=detected variant=support.fr "
         "target=vllm-paris zone=EU status=200"),
        ("tenant=gulf-helpdesk deployment=support locale=ar-AE locale_source=header variant=support.ar "
         "target=vllm-dubai zone=MEA status=200"),
        ("tenant=eu-helpdesk deployment=support locale=ar locale_source=detected variant=None "
         "target=vllm-frankfurt zone=EU status=200"),
        ("tenant=gulf-helpdesk deployment=support locale=en locale_source=detected variant=None "
         "target=vllm-dubai zone=MEA status=200"),
    ], out
