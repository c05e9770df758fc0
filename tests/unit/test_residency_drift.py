"""`sovra refresh` reports a resource that now lands outside its placement's region (moved or re-created outside
Sovra), read from the stack's refreshed state in Pulumi's checkpoint format."""

from sovra.infra.pulumi.drift import residency_drift
from sovra.policies.guard import RegionRule
from sovra.core.spec import Residency
from tests import factories

PARIS = factories.target("aws-sagemaker/eu-west-3", region="eu-west-3", country="FR")
EU = Residency(zones=("EU",))
P = "urn:pulumi:dev::sovra::pulumi:providers:aws::sm-aws"


def state(provider_region: str, endpoint_region: str | None = None) -> dict:
    endpoint_outputs = {"name": "sovra-d-eu-west-3"}
    if endpoint_region:
        endpoint_outputs["region"] = endpoint_region
    return {"resources": [
        {"urn": "urn:pulumi:dev::sovra::pulumi:pulumi:Stack::sovra-dev", "type": "pulumi:pulumi:Stack",
         "custom": False},
        {"urn": P, "type": "pulumi:providers:aws", "custom": True, "inputs": {"region": "eu-west-3"},
         "outputs": {"region": provider_region}},
        {"urn": "urn:pulumi:dev::sovra::sovra:aws:SageMakerEndpoint$aws:sagemaker/endpoint:Endpoint::sm-endpoint",
         "type": "aws:sagemaker/endpoint:Endpoint", "custom": True, "provider": f"{P}::abc-123",
         "inputs": {"name": "sovra-d-eu-west-3"}, "outputs": endpoint_outputs},
    ]}


def rule() -> RegionRule:
    return RegionRule.for_placement("d", PARIS, EU)


def test_a_state_where_placed_is_no_drift():
    assert residency_drift(state("eu-west-3"), rule()) == ()


def test_a_resource_now_in_another_region_is_reported_with_the_rule():
    (why,) = residency_drift(state("eu-west-3", endpoint_region="us-east-1"), rule())
    assert "sm-endpoint" in why and "us-east-1" in why and "eu-west-3" in why and "zones [EU]" in why


def test_a_provider_moved_to_another_region_drags_its_resources_out():
    found = residency_drift(state("us-east-1"), rule())
    assert len(found) == 2 and all("us-east-1" in w for w in found)  # the provider and the endpoint it places
