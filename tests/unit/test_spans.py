"""Spans: targets that may process in several places the caller cannot choose among (a Databricks Geo, a
two-country Azure geography). Data may go there only if it may go to every place in the span."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sovra.core.spec.common import Residency
from sovra.core.spec.zones import COUNTRY_ZONE, ZONE_COUNTRIES, normalize_span
from sovra.core.place import Place
from sovra.policies.residency import allows, location_allowed, violations

EUROPE, AMERICAS = "EU+UK+CH", "US+CA+BR"


@pytest.mark.parametrize("residency, allowed", [
    (Residency(zones=("EU", "UK", "CH")), True),
    (Residency(zones=("EU", "EEA", "UK", "CH")), True),
    (Residency(zones=("EU",)), False),
    (Residency(zones=("EEA",)), False),
    (Residency(countries=("DE",)), False),
    (Residency(zones=("EU", "UK"), countries=("CH",)), True),
    (Residency(zones=("GLOBAL",)), True),
])
def test_a_geo_is_allowed_only_where_every_place_in_it_is(residency, allowed):
    assert allows(residency, Place(EUROPE, None, "US")) is allowed
    assert (violations(residency, Place(EUROPE, None, "US")) == ()) is allowed


@pytest.mark.parametrize("residency, allowed", [
    (Residency(zones=("US", "CA", "LATAM")), True),
    (Residency(countries=("US", "CA", "BR")), True),
    (Residency(zones=("US", "CA")), False),
    (Residency(zones=("US",)), False),
])
def test_a_country_in_a_span_is_allowed_by_its_name_or_its_zone(residency, allowed):
    assert location_allowed(residency, AMERICAS, None) is allowed


def test_a_refused_span_says_which_places_are_outside():
    [reason] = violations(Residency(zones=("EU",)), Place(EUROPE, None, "US"))
    assert "EU, UK, CH" in reason and "UK, CH are not in [EU]" in reason


@pytest.mark.parametrize("raw, span", [("eu+uk+ch", "EU+UK+CH"), ("IE + NL", "IE+NL"), ("EU+EU", "EU"),
                                       ("US+CA+BR", "US+CA+BR")])
def test_spans_are_normalized(raw, span):
    assert normalize_span(raw) == span


@pytest.mark.parametrize("raw", ["EU+GLOBAL", "EU+XX", "EU+"])
def test_a_bad_span_names_what_a_part_may_be(raw):
    with pytest.raises(ValueError, match="GLOBAL|neither a zone"):
        normalize_span(raw)


places = st.sampled_from(sorted({*ZONE_COUNTRIES, *COUNTRY_ZONE}))


@given(st.lists(places, min_size=2, max_size=5, unique=True), st.lists(places, max_size=6))
def test_a_span_is_allowed_exactly_when_each_of_its_places_alone_is(span, bound):
    residency = Residency(zones=tuple(p for p in bound if p in ZONE_COUNTRIES and p not in COUNTRY_ZONE),
                          countries=tuple(p for p in bound if p in COUNTRY_ZONE))
    if residency.unrestricted:
        return
    one_by_one = all(
        location_allowed(residency, COUNTRY_ZONE[p], p) if p in COUNTRY_ZONE else location_allowed(residency, p, None)
        for p in span)
    assert location_allowed(residency, "+".join(span), None) is one_by_one
