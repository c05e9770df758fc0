"""Databricks serving processes in the workspace's Geo (cross-Geo processing disabled), not in its region's
country: the shipped catalog's targets are held to the Geo's span, and the planner places a deployment there only
when every place in the Geo is allowed (docs.databricks.com/aws/en/resources/databricks-geos)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sovra.orchestrator.catalog import load_catalog
from sovra.providers import base
from sovra.providers.databricks.geo import geo_of
from tests.factories import deployment, solve

CATALOG = Path(__file__).resolve().parents[2] / "providers" / "databricks" / "catalogs" / "databricks.yaml"
TARGETS = {t.id: t for t in load_catalog(CATALOG).targets}
PROVIDER = base.get("databricks")


@pytest.mark.parametrize("target, zone", [
    ("databricks/aws-eu-central-1", "EU+UK+CH"),
    ("databricks/aws-eu-west-1", "EU+UK+CH"),
    ("databricks/aws-us-east-1", "US+CA+BR"),
    ("databricks/aws-ap-northeast-1", "HK+JP+KR+SG"),
    ("databricks/azure-westeurope", "IE+NL"),   # Azure's "Europe" geography: North and West Europe
    ("databricks/azure-eastus", "US"),
    ("databricks/aws-eu-central-1-cross-geo", "GLOBAL"),
])
def test_shipped_targets_process_in_their_geo_not_their_country(target, zone):
    assert TARGETS[target].zone == zone
    assert TARGETS[target].country in (None, "US")  # a span has no one country; Azure's US geography is one


def managed(residency: dict):
    return deployment(model="llama-3.1-8b", gb=None, residency=residency)


def placed(residency: dict, targets=("databricks/aws-eu-central-1", "databricks/aws-eu-west-1")) -> set[str]:
    (d,) = solve([managed(residency)], [TARGETS[t] for t in targets]).deployments
    return {p.target for p in d.placements}


def test_data_bound_to_germany_or_the_eea_is_not_placed_in_the_europe_geo():
    assert placed({"countries": ["DE"]}) == set()
    assert placed({"zones": ["EEA"]}) == set()
    assert placed({"zones": ["EU"]}) == set()


def test_data_allowed_in_the_eu_uk_and_switzerland_is():
    assert placed({"zones": ["EU", "UK", "CH"]}) <= {"databricks/aws-eu-central-1", "databricks/aws-eu-west-1"}
    assert placed({"zones": ["EU", "UK", "CH"]})


def test_a_refusal_names_the_geo_and_the_places_outside_the_bound():
    (d,) = solve([managed({"countries": ["DE"]})], [TARGETS["databricks/aws-eu-central-1"]]).deployments
    said = " ".join(r for rej in d.rejected for r in rej.reasons)
    assert "EU, UK, CH" in said and "not in [DE]" in said


@pytest.mark.parametrize("region, country, geo", [
    ("eu-central-1", "DE", "EU+UK+CH"), ("eu-west-2", None, "EU+UK+CH"), ("sa-east-1", "BR", "US+CA+BR"),
    ("europe-west3", "DE", "EU+UK+CH"), ("ap-south-1", "IN", "APAC"), ("germanywestcentral", None, "EU"),
    ("northeurope", None, "IE+NL"), ("uksouth", None, "UK"),
])
def test_geo_of_a_workspace_region(region, country, geo):
    assert geo_of(region, country) == geo


def test_a_region_sovra_cannot_place_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="Geo"):
        geo_of("mars-north-1", None)


def test_in_region_is_read_as_the_geo_too():
    assert PROVIDER.zone_for_target("in-region", "DE", "eu-central-1") == "EU+UK+CH"
    assert PROVIDER.zone_for_target("cross-geo", None, "eu-central-1") == "GLOBAL"
