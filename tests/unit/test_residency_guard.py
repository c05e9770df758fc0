"""The residency guard's pure rule (policies.guard): where a declared resource may land."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovra.policies.guard import RAY_SERVICE, Declared, RegionRule, check, check_all, declared, normalize_region
from sovra.core.spec import Residency
from sovra.core.place import Place
from sovra.policies.residency import allows
from tests.factories import target

PARIS = target("aws-sagemaker/eu-west-3", region="eu-west-3", country="FR")
EU = Residency(zones=("EU",))


def rule(t=PARIS, residency=EU) -> RegionRule:
    return RegionRule.for_placement("support", t, residency)


def test_resource_in_the_target_region_passes():
    assert check(declared("pulumi:providers:aws", "p", {"region": "eu-west-3"}), rule()) is None
    assert check(declared("aws:sagemaker/endpoint:Endpoint", "e", {}, provider_region="eu-west-3"), rule()) is None


def test_resource_in_another_region_is_refused_with_resource_region_and_rule():
    why = check(declared("pulumi:providers:aws", "rogue", {"region": "us-east-1"}), rule())
    assert why is not None
    assert "pulumi:providers:aws 'rogue'" in why
    assert "us-east-1" in why and "eu-west-3" in why
    assert "deployment support is placed on aws-sagemaker/eu-west-3" in why and "zones [EU]" in why


def test_another_region_in_an_allowed_zone_is_still_refused():
    # eu-central-1 is in the EU too, but the plan placed (and priced) this deployment in eu-west-3.
    assert check(declared("pulumi:providers:aws", "p", {"region": "eu-central-1"}), rule()) is not None


def test_a_resource_level_region_overrides_the_provider_and_is_checked():
    found = declared("aws:sagemaker/endpoint:Endpoint", "e", {"region": "us-east-1"}, provider_region="eu-west-3")
    assert found.region == "us-east-1"
    assert "us-east-1" in check(found, rule())


def test_azure_location_is_compared_without_case_or_spaces():
    azure = target("azure-ml/francecentral", cloud="azure", provider="azure-ml", region="francecentral")
    ok = declared("azure-native:machinelearningservices:OnlineEndpoint", "e", {"location": "France Central"})
    assert check(ok, rule(azure)) is None
    assert normalize_region("France Central") == "francecentral"
    bad = declared("azure-native:machinelearningservices:OnlineEndpoint", "e", {"location": "eastus"})
    assert "eastus" in check(bad, rule(azure))


def test_unplaceable_resources_fail_closed():
    no_provider = declared("aws:sagemaker/endpoint:Endpoint", "e", {}, has_provider=False)
    assert "no explicit AWS provider" in check(no_provider, rule())
    no_region = declared("pulumi:providers:aws", "p", {})
    assert "without `region`" in check(no_region, rule())
    no_location = declared("azure-native:machinelearningservices:OnlineEndpoint", "e", {})
    assert "no `location`" in check(no_location, rule())
    unknown_cloud = declared("gcp:compute/instance:Instance", "vm", {"zone": "europe-west9-a"})
    assert "cannot tell where" in check(unknown_cloud, rule())
    computed = declared("pulumi:providers:aws", "p", {"region": object()})
    assert computed.computed and "computed at run time" in check(computed, rule())


def test_global_and_connection_placed_resources_pass():
    for type_ in ("aws:iam/role:Role", "databricks:index/modelServing:ModelServing",
                  "snowflake:index/accountRole:AccountRole", "sovra:aws:SageMakerEndpoint"):
        assert check(declared(type_, "x", {}), rule()) is None, type_


def test_a_target_the_residency_refuses_refuses_every_resource():
    us = target("aws-sagemaker/us-east-1", region="us-east-1", country="US")
    why = check(declared("aws:iam/role:Role", "r", {}), rule(us))
    assert why is not None and "residency: zone US is not in [EU]" in why


def test_sovereign_residency_refuses_a_us_operated_eu_region():
    why = check(declared("pulumi:providers:aws", "p", {"region": "eu-west-3"}),
                rule(PARIS, Residency(zones=("EU",), sovereign=True)))
    assert why is not None and "sovereignty" in why


def _ray_service(*pins: str | None) -> dict:
    groups = [{"groupName": f"g{i}", "rayStartParams": ({"resources": json.dumps({f"sovra.target/{p}": 1000})}
                                                       if p else {})} for i, p in enumerate(pins)]
    return {"spec": {"rayClusterConfig": {"workerGroupSpecs": groups}}}


def test_ray_worker_groups_must_be_pinned_to_the_target():
    paris = target("onprem/paris", cloud="onprem", provider="kubernetes", region="paris")
    assert check(declared(RAY_SERVICE, "rs", _ray_service("onprem/paris")), rule(paris)) is None
    stray = check(declared(RAY_SERVICE, "rs", _ray_service("onprem/paris", "onprem/berlin")), rule(paris))
    assert "'onprem/berlin'" in stray and "onprem/paris" in stray
    assert "unpinned" in check(declared(RAY_SERVICE, "rs", _ray_service(None)), rule(paris))


def test_check_all_lists_every_refusal_and_allowed_rule_from_config():
    r = RegionRule.allowed(["eu-west-3", "francecentral"], why="pack config")
    found = [Declared("pulumi:providers:aws", "a", region="eu-west-3"),
             Declared("pulumi:providers:aws", "b", region="us-east-1"),
             Declared("azure-native:x:Y", "c", region="westus")]
    refusals = check_all(found, r)
    assert len(refusals) == 2 and "'b'" in refusals[0] and "'c'" in refusals[1] and "pack config" in refusals[0]


REGIONS = {"eu-west-3": "FR", "eu-central-1": "DE", "us-east-1": "US", "ap-northeast-1": "JP",
           "eu-west-2": "GB", "eu-north-1": "SE"}
residencies = st.builds(
    lambda zones, countries, sovereign: Residency(zones=zones, countries=countries,
                                                  sovereign=sovereign and bool(zones or countries)),
    st.lists(st.sampled_from(["EU", "US", "APAC", "UK", "GLOBAL"]), max_size=2, unique=True).map(tuple),
    st.lists(st.sampled_from(["FR", "DE", "US", "JP", "GB"]), max_size=2, unique=True).map(tuple),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(target_region=st.sampled_from(sorted(REGIONS)), resource_region=st.sampled_from(sorted(REGIONS)),
       residency=residencies, via_provider=st.booleans())
def test_guard_allows_exactly_the_target_region_under_an_allowing_residency(target_region, resource_region,
                                                                            residency, via_provider):
    t = target(f"aws-sagemaker/{target_region}", region=target_region, country=REGIONS[target_region])
    if via_provider:
        found = declared("aws:sagemaker/model:Model", "m", {}, provider_region=resource_region)
    else:
        found = declared("pulumi:providers:aws", "p", {"region": resource_region})
    why = check(found, RegionRule.for_placement("d", t, residency))
    expected_ok = resource_region == target_region and allows(residency, Place.of(t))
    assert (why is None) == expected_ok, why
    if why is not None and resource_region != target_region and allows(residency, Place.of(t)):
        assert resource_region in why and target_region in why


def _policy_args(type_: str, props: dict, provider_region: str | None, config: dict):
    """What the Pulumi CLI hands a resource validation: the resource's inputs and its provider's."""
    from pulumi_policy import PolicyProviderResource, PolicyResourceOptions, ResourceValidationArgs

    provider = (PolicyProviderResource("pulumi:providers:aws", {"region": provider_region}, "urn:p", "default")
                if provider_region else None)
    opts = PolicyResourceOptions(protect=False, ignore_changes=[], delete_before_replace=None, aliases=[],
                                 custom_timeouts=None, additional_secret_outputs=[])
    return ResourceValidationArgs(type_, props, f"urn:{type_}", "r", opts, provider, config)


def test_crossguard_rule_refuses_what_the_guard_refuses_from_the_packs_config():
    from sovra.policies.crossguard.rule import violation

    config = {"allowedRegions": ["eu-west-3"], "rule": "deployment support: zones [EU]"}
    why = violation("aws:sagemaker/endpoint:Endpoint", "r", {}, {"region": "us-east-1"}, config)
    assert why is not None and "us-east-1" in why and "deployment support: zones [EU]" in why
    assert violation("aws:sagemaker/endpoint:Endpoint", "r", {}, {"region": "eu-west-3"}, config) is None
    assert violation("azure-native:machinelearningservices:OnlineEndpoint", "r", {"location": "eu-west-3"}, None,
                     config) is None
    assert violation("aws:sagemaker/endpoint:Endpoint", "r", {}, None, config) is not None  # no explicit provider


def test_crossguard_pack_reports_the_guard_refusal_from_its_config():
    # pulumi-policy lives in the pack's own environment (policies/crossguard/requirements.txt), not in Sovra's
    # extras: it pins protobuf ~=5.29, which ray[serve] cannot run with. Where it is installed, the pack is checked.
    pytest.importorskip("pulumi_policy", reason="the CrossGuard pack's own environment is not installed here")
    from sovra.policies.crossguard.residency_policy import POLICY, validate

    config = {"allowedRegions": ["eu-west-3"], "rule": "deployment support: zones [EU]"}
    seen: list[str] = []
    report = lambda message, urn=None: seen.append(message)
    validate(_policy_args("aws:sagemaker/endpoint:Endpoint", {}, "us-east-1", config), report)
    assert len(seen) == 1 and "us-east-1" in seen[0] and "deployment support: zones [EU]" in seen[0]
    seen.clear()
    validate(_policy_args("aws:sagemaker/endpoint:Endpoint", {}, "eu-west-3", config), report)
    validate(_policy_args("azure-native:machinelearningservices:OnlineEndpoint", {"location": "eu-west-3"}, None,
                          config), report)
    assert seen == []
    assert POLICY.name == "sovra-residency"
