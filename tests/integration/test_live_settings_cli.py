"""`sovra audit settings` against an emulated Snowflake account, through the console script: an account switched to
`CORTEX_ENABLED_CROSS_REGION = ANY_REGION` is reported with the setting to pin, recorded, and from then on planned
at GLOBAL, so EU data is never placed there; pinned back, it is planned again."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.emulators.snowflake import SnowflakeEmulator
from tests.integration.conftest import ROOT, SOVRA

pytestmark = pytest.mark.integration
FRANKFURT = "snowflake-cortex/aws-eu-central-1"
CATALOG = ROOT / "providers" / "snowflake" / "catalogs" / "snowflake_cortex.yaml"
DEPLOYMENT = """apiVersion: sovra/v1
kind: Deployment
metadata: {name: contracts}
spec:
  model: {name: mistral-large-2, license: mistral-research}
  residency: {zones: [EU]}
  traffic: {requests_per_second: 1, tokens_per_request: 500}
"""


@pytest.fixture
def account(tmp_path):
    with SnowflakeEmulator() as emu:
        org = tmp_path / "org.yaml"
        org.write_text(json.dumps({"apiVersion": "sovra/v1", "kind": "Org", "accounts": [
            {"provider": "snowflake-cortex", "targets": [FRANKFURT], "connection": emu.connection()}]}))
        dep = tmp_path / "deployment.yaml"
        dep.write_text(DEPLOYMENT)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SNOWFLAKE_", "SOVRA_"))}
        env.update(SNOWFLAKE_PASSWORD=emu.password, SNOWFLAKE_HOME=str(tmp_path / "snowflake"),
                   SOVRA_HOME=str(tmp_path / "sovra"), COLUMNS="200", NO_COLOR="1")

        def sovra(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(SOVRA), *args, "--org", str(org), "--catalog", str(CATALOG)], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=120, check=False)

        yield emu, sovra, str(dep)


def placed(sovra, dep: str) -> tuple[list[str], dict[str, list[str]]]:
    r = sovra("plan", dep, "-o", "json")
    data = json.loads(r.stdout)
    return [p["target"] for p in data["placements"]], {x["target"]: x["reasons"] for x in data["rejected"]}


def test_an_account_widened_to_any_region_is_reported_and_then_planned_at_global(account):
    emu, sovra, dep = account
    targets, _ = placed(sovra, dep)
    assert targets == [FRANKFURT]  # the catalog says in-region Frankfurt: the cheapest EU offering

    emu.cross_region = "ANY_REGION"
    report = sovra("audit", "settings", "-o", "json")
    assert report.returncode == 1, report.stdout + report.stderr
    (finding,) = json.loads(report.stdout)["findings"]
    assert (finding["target"], finding["value"], finding["zone"], finding["widened"]) == (
        FRANKFURT, "ANY_REGION", "GLOBAL", True)
    assert "CORTEX_ENABLED_CROSS_REGION" in finding["fix"]
    assert emu.password not in report.stdout + report.stderr

    targets, rejected = placed(sovra, dep)
    assert FRANKFURT not in targets and any("GLOBAL" in r for r in rejected[FRANKFURT])

    emu.cross_region = "DISABLED"  # pinned back: the next audit records it, and plans use Frankfurt again
    again = sovra("audit", "settings")
    assert again.returncode == 0, again.stdout + again.stderr
    assert placed(sovra, dep)[0] == [FRANKFURT]


def test_an_account_whose_settings_cannot_be_read_fails_closed_until_it_can_be(account, tmp_path):
    emu, sovra, dep = account
    emu.refuse_logins = True  # e.g. Sovra's credentials were rotated: nothing is known of where it processes
    report = sovra("audit", "settings", "-o", "json")
    assert report.returncode == 1, report.stdout + report.stderr
    (unread,) = json.loads(report.stdout)["unread"]
    assert (unread["target"], unread["catalog_zone"], unread["zone"], unread["widened"]) == (
        FRANKFURT, "EU", "GLOBAL", True)
    assert emu.password not in report.stdout + report.stderr
    table = sovra("audit", "settings")
    assert "UNREAD" in table.stdout and "if_unread: catalog" in table.stdout, table.stdout

    targets, rejected = placed(sovra, dep)
    assert FRANKFURT not in targets and any("GLOBAL" in r for r in rejected[FRANKFURT])

    # the org may choose to trust the catalog for this account; then the unread account is planned again
    org = tmp_path / "org.yaml"
    data = json.loads(org.read_text())
    data["accounts"][0]["if_unread"] = "catalog"
    org.write_text(json.dumps(data))
    assert sovra("audit", "settings").returncode == 1  # still unread, still reported
    assert placed(sovra, dep)[0] == [FRANKFURT]


# -- Bedrock: a target whose model id Bedrock serves only through an inference profile ---------------------------------

SONNET = "anthropic.claude-sonnet-4-20250514-v1:0"
BEDROCK_CATALOG = {"apiVersion": "sovra/v1", "kind": "Catalog", "targets": [{
    "id": "aws-bedrock/eu-central-1", "provider": "aws-bedrock", "cloud": "aws", "region": "eu-central-1",
    "country": "DE", "zone": "EU", "scope": "in-region", "operator": {"name": "amazon", "jurisdiction": "US"},
    "models": [{"name": "sonnet", "id": SONNET, "usd_per_1k_tokens": 0.003}]}]}


def test_audit_settings_names_the_profile_a_profile_only_bedrock_model_needs(tmp_path):
    from tests.emulators.aws import aws_env, fake_aws

    org, catalog = tmp_path / "org.yaml", tmp_path / "catalog.yaml"
    org.write_text(json.dumps({"apiVersion": "sovra/v1", "kind": "Org", "accounts": [
        {"provider": "aws-bedrock", "targets": ["aws-bedrock/eu-central-1"], "connection": {}}]}))
    catalog.write_text(json.dumps(BEDROCK_CATALOG))
    with fake_aws() as fake:
        fake.profile_only = {SONNET}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SOVRA_"))}
        env.update(aws_env(bedrock=fake.url, bedrock_runtime=fake.url), SOVRA_HOME=str(tmp_path / "sovra"),
                   COLUMNS="200", NO_COLOR="1")
        r = subprocess.run([str(SOVRA), "audit", "settings", "-o", "json", "--org", str(org), "--catalog",
                            str(catalog)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    (unread,) = json.loads(r.stdout)["unread"]
    assert unread["target"] == "aws-bedrock/eu-central-1" and f"`eu.{SONNET}`" in unread["reason"], unread
    assert "scope: eu" in unread["reason"]
