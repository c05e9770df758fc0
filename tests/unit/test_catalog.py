"""The shipped catalog: loads, is traceable, and covers what the product promises."""

from collections import defaultdict

import pytest

from sovra.orchestrator.catalog import load_catalog, load_targets, parse_catalog_text, shipped_catalog_files
from sovra.core.errors import SpecError
from sovra.core.spec import Org


@pytest.fixture(scope="module")
def targets():
    return load_targets(None, Org())


def test_every_file_states_its_source_and_date():
    for path in shipped_catalog_files():
        for t in load_catalog(path).targets:
            assert t.source and t.prices_as_of, (path.name, t.id)


def test_sagemaker_and_azure_ml_cover_the_required_regions(targets):
    regions = defaultdict(set)
    for t in targets:
        regions[t.provider].add((t.region, t.zone))
    sm = {r for r, _ in regions["aws-sagemaker"]}
    assert {"eu-west-3", "eu-central-1"} <= sm and len(sm) >= 6
    assert {z for _, z in regions["aws-sagemaker"]} >= {"EU", "US", "APAC"}
    az = {r for r, _ in regions["azure-ml"]}
    assert {"francecentral", "germanywestcentral", "swedencentral", "westeurope", "eastus"} <= az


def test_provider_labels_are_translated_into_zones_by_adapters(targets):
    by_id = {t.id: t for t in targets}
    assert by_id["aws-bedrock/eu"].zone == "EU" and by_id["aws-bedrock/eu"].country is None
    assert by_id["aws-bedrock/global"].zone == "GLOBAL" and by_id["aws-bedrock/apac"].zone == "APAC"
    zones = {(t.provider, t.scope): t.zone for t in targets if t.scope}
    assert zones.get(("azure-foundry", "GlobalStandard")) == "GLOBAL"  # a Foundry deployment type
    assert {z for (p, s), z in zones.items() if p == "azure-ml"} <= {"EU", "US", "APAC"}  # serverless: regional
    assert {z for (p, s), z in zones.items() if p == "snowflake-cortex" and s == "any_region"} == {"GLOBAL"}
    assert {z for (p, s), z in zones.items() if p == "snowflake-cortex" and s == "aws_eu"} == {"EU"}


def test_gpu_targets_price_instances_and_managed_targets_price_tokens(targets):
    for t in targets:
        assert bool(t.accelerators) != bool(t.models), t.id
        for a in t.accelerators:
            assert 0.2 < a.usd_per_hour < 150, (t.id, a.sku)
        for m in t.models:
            assert 0 < m.usd_per_1k_tokens < 0.1, (t.id, m.name)


def test_unknown_provider_scope_is_rejected_with_valid_labels():
    text = """
apiVersion: sovra/v1
kind: Catalog
targets:
  - {id: x/y, provider: aws-bedrock, cloud: aws, region: r, scope: europe,
     operator: {name: amazon, jurisdiction: US}, models: [{name: m, usd_per_1k_tokens: 0.001}]}
"""
    with pytest.raises(SpecError) as exc:
        parse_catalog_text(text)
    assert "unknown scope 'europe'" in str(exc.value) and "eu" in str(exc.value)


def test_country_and_zone_must_agree():
    text = """
targets:
  - {id: x/y, provider: aws-sagemaker, cloud: aws, region: r, country: US, zone: EU,
     operator: {name: amazon, jurisdiction: US}, accelerators: [{sku: s, gpus: 1, gpu_memory_gb: 24, usd_per_hour: 1}]}
"""
    with pytest.raises(SpecError) as exc:
        parse_catalog_text(text)
    assert "country US belongs to zone US, not EU" in str(exc.value)


def test_an_org_connection_that_does_not_fit_its_adapter_is_located_in_the_yaml(tmp_path):
    """The spec models sit below the providers, so the loader asks each adapter; the file, line and field stay."""
    from sovra.core.errors import SpecError
    from sovra.orchestrator.catalog import load_org

    org = tmp_path / "org.yaml"
    org.write_text("accounts:\n  - provider: databricks\n    connection: {hots: x}\n"
                   "  - {provider: snowflak}\n")
    with pytest.raises(SpecError) as exc:
        load_org(org)
    said = {(i.line, i.path): i.message for i in exc.value.issues}
    assert "valid fields: host" in said[(3, "accounts[0].connection")]
    assert "did you mean 'snowflake-cortex'" in said[(4, "accounts[1].provider")]
