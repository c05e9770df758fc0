from hypothesis import given, strategies as st

from sovra.core.spec import Residency
from sovra.core.spec.zones import COUNTRY_ZONE, GLOBAL
from sovra.core.place import Place
from sovra.policies.residency import allows, violations

FR_SELF = Place("EU", "FR", "FR", "self")
FR_US_OP = Place("EU", "FR", "US", "microsoft")
US = Place("US", "US", "US", "amazon")
EU_ANY = Place("EU", None, "US", "amazon")
ANY = Place(GLOBAL, None, "US", "amazon")


def test_zone_rule_passes_members_and_names_the_zone_it_failed():
    r = Residency(zones=("EU",))
    assert allows(r, FR_SELF) and violations(r, FR_SELF) == ()
    assert violations(r, US) == ("residency: zone US is not in [EU]",)


def test_countries_only_reject_targets_without_a_country():
    r = Residency(countries=("FR", "DE"))
    assert allows(r, FR_SELF)
    assert violations(r, EU_ANY) == ("residency: it may process anywhere in EU, not only in [FR, DE]",)


def test_zones_and_countries_widen_each_other():
    r = Residency(zones=("US",), countries=("FR",))
    assert allows(r, FR_SELF) and allows(r, US)
    assert not allows(r, Place("EU", "DE", "DE"))


def test_global_passes_only_unrestricted():
    assert allows(Residency(), ANY)
    assert allows(Residency(zones=("GLOBAL",)), ANY)
    assert violations(Residency(zones=("EU",)), ANY) == (
        "residency: may process anywhere (GLOBAL), but only [EU] is allowed",)


def test_sovereign_rejects_us_operator_in_eu_and_lists_every_failed_rule():
    r = Residency(zones=("EU",), sovereign=True)
    assert allows(r, FR_SELF)
    assert violations(r, FR_US_OP) == (
        "sovereignty: operator microsoft is under US jurisdiction, which is not in [EU]",)
    assert len(violations(r, US)) == 2  # location and sovereignty, both listed


def test_sovereign_with_countries_checks_jurisdiction_country():
    r = Residency(countries=("FR",), sovereign=True)
    assert allows(r, FR_SELF)
    assert not allows(r, Place("EU", "FR", "DE", "ionos"))


countries = st.sampled_from(sorted(COUNTRY_ZONE))
places = st.builds(lambda c, j, glob: ANY if glob else Place(COUNTRY_ZONE[c], c, j, "op"),
                   countries, countries, st.booleans())
residencies = st.builds(
    lambda zs, cs, sov: Residency(zones=tuple(zs), countries=tuple(cs), sovereign=sov and bool(zs or cs)),
    st.lists(st.sampled_from(sorted(set(COUNTRY_ZONE.values()))), max_size=3),
    st.lists(countries, max_size=3), st.booleans())


@given(residencies, places)
def test_allows_agrees_with_violations_and_with_the_written_rule(r, p):
    assert allows(r, p) == (violations(r, p) == ())
    unrestricted = not r.zones and not r.countries
    loc = unrestricted or (p.zone != GLOBAL and (p.zone in r.zones or p.country in r.countries))
    sov = unrestricted or not r.sovereign or (p.jurisdiction in r.countries or COUNTRY_ZONE[p.jurisdiction] in r.zones)
    assert allows(r, p) == (loc and sov)


def test_sovereign_alone_is_refused_with_the_fix():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"sovereign: true needs the zones or countries.*zones: \[EU\]"):
        Residency(sovereign=True)
