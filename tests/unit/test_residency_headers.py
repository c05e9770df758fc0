"""Repeated `X-Sovra-Residency` headers (a gateway appends its own): every one narrows the bound, none is ignored,
and the bound stays a hashable, cached value."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovra.core.api_errors import InvalidResidency, ResidencyWidening
from sovra.orchestrator.router.gate import MAX_HEADERS, RequestResidency, parse_header
from sovra.core.spec import Residency
from sovra.core.place import Place
from sovra.policies.residency import allows

PLACES = [Place("EU", "FR", "FR", "self"), Place("EU", "DE", "US", "amazon"), Place("EU", "DE", "DE", "self"),
          Place("US", "US", "US", "amazon"), Place("GLOBAL", None, "US", "microsoft"),
          Place("APAC", "JP", "JP", "self"), Place("CH", "CH", "CH", "self")]
TENANTS = [Residency(zones=("GLOBAL",)), Residency(zones=("EU",)), Residency(zones=("EU",), sovereign=True),
           Residency(countries=("FR", "DE")), Residency(zones=("EU", "US"))]
DEPLOYMENTS = [Residency(), Residency(zones=("EU",)), Residency(countries=("FR",)), Residency(zones=("US",))]
HEADERS = ["EU", "FR", "DE", "FR,DE", "US", "EU,US", "GLOBAL", "CH", "eu , fr", "JP"]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(TENANTS), st.lists(st.sampled_from(HEADERS), min_size=1, max_size=4),
       st.sampled_from(DEPLOYMENTS), st.sampled_from(PLACES))
def test_permits_is_every_part_permitting(tenant, headers, deployment, place):
    try:
        bound = RequestResidency.build(tenant, headers).bound_by(deployment)
    except ResidencyWidening:  # then one of them widens on its own, and alone it is refused too
        assert any(_widens(tenant, h) for h in headers)
        return
    parts = [tenant, *(Residency(zones=parse_header(h).zones, countries=parse_header(h).countries,
                                 sovereign=tenant.sovereign) for h in headers), deployment]
    assert bound.permits(place) == all(allows(r, place) for r in parts)
    # order does not matter, and a repeated header changes nothing
    assert RequestResidency.build(tenant, list(reversed(headers))).bound_by(deployment).permits(place) \
        == bound.permits(place)
    assert RequestResidency.build(tenant, [*headers, headers[0]]).bound_by(deployment) == bound


def _widens(tenant, header):
    try:
        RequestResidency.build(tenant, header)
    except ResidencyWidening:
        return True
    return False


def test_two_headers_narrow_to_their_intersection_and_stay_a_cached_hashable_value():
    eu = Residency(zones=("EU",))
    both = RequestResidency.build(eu, ("EU", "FR"))
    assert both.permits(PLACES[0]) and not both.permits(PLACES[2])  # Paris, not Berlin
    assert both == RequestResidency.build(eu, ["EU", "FR"])
    assert hash(both) == hash(RequestResidency.build(eu, ("EU", "FR")))
    assert {both: 1}[RequestResidency.build(eu, ("EU", "FR"))] == 1
    assert RequestResidency.build(eu, ("EU", "FR")) is RequestResidency.build(eu, ("EU", "FR"))  # cached
    assert RequestResidency.build(eu, ["FR"]) == RequestResidency.build(eu, "FR")  # one line is one header
    assert RequestResidency.build(eu, []) == RequestResidency.build(eu, None)
    assert both.describe() == "zones [EU] ∩ countries [FR]"


def test_any_widening_header_is_a_403_and_any_unknown_one_a_400():
    eu = Residency(zones=("EU",))
    with pytest.raises(ResidencyWidening):
        RequestResidency.build(eu, ("FR", "US"))
    with pytest.raises(InvalidResidency):
        RequestResidency.build(eu, ("FR", "Narnia"))
    with pytest.raises(InvalidResidency, match="at most"):
        RequestResidency.build(eu, ["FR"] * (MAX_HEADERS + 1))
