"""Live settings hold a target to where its account really processes: a widened account is planned at its live
zone (an ANY_REGION Snowflake account is refused for EU data), an unreadable one is reported, never "verified"."""

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from sovra.orchestrator import live_settings as ls
from sovra.core.spec.org import Org
from sovra.core.spec.zones import GLOBAL
from sovra.providers.base import LiveSetting
from tests import factories

ORG = Org.model_validate({"accounts": [{"provider": "aws-bedrock", "connection": {}}]})


def managed(tid: str, country: str = "DE"):
    return factories.target(tid, country=country, models={"m": 0.001}, provider="aws-bedrock")


def test_a_widened_account_is_planned_at_its_live_zone_and_eu_data_avoids_it():
    cheap, dear = managed("aws-bedrock/eu-cheap"), managed("aws-bedrock/eu-dear")
    dear = dear.model_copy(update={"models": (dear.models[0].model_copy(update={"usd_per_1k_tokens": 0.01}),)})

    def read(t, _conn):
        value = "global.m" if t.id == cheap.id else "eu.m"
        return [LiveSetting(t.id, "inference profile", value, GLOBAL if value.startswith("global") else "EU")]

    report = ls.check(ORG, [cheap, dear], read=read)
    assert [f.target for f in report.widened] == [cheap.id]
    targets = ls.apply([cheap, dear], report.findings)
    held = {t.id: t for t in targets}
    assert held[cheap.id].zone == GLOBAL and held[cheap.id].country is None
    assert held[dear.id] == dear

    d = factories.deployment("eu", residency={"zones": ["EU"]}, rps=1, tokens=100)
    before = factories.solve([d], [cheap, dear])
    after = factories.solve([d], targets)
    assert [p.target for p in before.deployments[0].placements] == [cheap.id]
    assert [p.target for p in after.deployments[0].placements] == [dear.id]
    assert any(r.target == cheap.id for r in after.deployments[0].rejected)


def denied(_t, _conn):
    raise RuntimeError("AccessDenied")


def test_an_unreadable_account_is_reported_not_verified_and_fails_closed_to_global():
    t = managed("aws-bedrock/eu")
    report = ls.check(ORG, [t], read=denied)
    assert report.findings == () and [u.target for u in report.unread] == [t.id]
    (u,) = report.unread
    assert "AccessDenied" in u.reason and (u.catalog_zone, u.zone, u.widened) == ("EU", GLOBAL, True)
    [held] = ls.apply([t], report.unread)
    assert held.zone == GLOBAL and held.country is None
    # so EU data is never planned on it, and the plan says why it was rejected
    d = factories.deployment("eu", residency={"zones": ["EU"]}, rps=1, tokens=100)
    result = factories.solve([d], [held])
    assert not result.deployments[0].placements
    assert any(r.target == t.id for r in result.deployments[0].rejected)


def test_an_account_may_choose_to_trust_the_catalog_when_its_settings_cannot_be_read():
    t = managed("aws-bedrock/eu")
    trusting = Org.model_validate({"accounts": [{"provider": "aws-bedrock", "if_unread": "catalog"}]})
    (u,) = ls.check(trusting, [t], read=denied).unread
    assert (u.zone, u.widened) == ("EU", False)
    assert ls.apply([t], [u]) == (t,)


def test_if_unread_takes_only_the_two_documented_values():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="global"):
        Org.model_validate({"accounts": [{"provider": "aws-bedrock", "if_unread": "trust-me"}]})


def test_targets_without_an_account_are_not_checked():
    t = managed("aws-bedrock/eu")
    assert ls.checkable(Org(), [t]) == []
    assert ls.checkable(ORG, [t]) == [t]


def test_findings_round_trip_through_the_record(tmp_path):
    t = managed("aws-bedrock/eu")
    report = ls.check(ORG, [t], read=lambda t, _c: [LiveSetting(t.id, "s", "ANY_REGION", GLOBAL, "pin it")])
    path = ls.save(report, tmp_path / "live.json")
    assert ls.recorded(path) == report.findings
    assert ls.recorded(tmp_path / "missing.json") == ()
    unread = ls.check(ORG, [t], read=denied)
    assert ls.recorded(ls.save(unread, tmp_path / "unread.json")) == unread.unread


def test_a_damaged_record_is_an_error_not_a_clean_slate(tmp_path):
    import pytest

    from sovra.core.errors import SovraError

    path = tmp_path / "live.json"
    path.write_text('{"findings": [')
    with pytest.raises(SovraError, match="sovra audit settings"):
        ls.recorded(path)


ZONES = st.sampled_from(["EU", "US", "APAC", GLOBAL])


@given(catalog=ZONES, live=ZONES)
def test_the_held_zone_never_narrows_what_the_account_may_do(catalog, live):
    held = ls.widest(catalog, live)
    assert held in (catalog, live, GLOBAL)
    if live == GLOBAL or catalog == GLOBAL:
        assert held == GLOBAL
    if catalog != GLOBAL and live != GLOBAL:
        assert held == live  # data may go where the account says, whatever the catalog claimed


def test_as_of_is_a_date():  # the record's timestamp is ISO with an offset (UTC)
    report = ls.check(ORG, [])
    assert dt.datetime.fromisoformat(report.checked_at).tzinfo is not None


# -- Snowflake Cortex: CORTEX_ENABLED_CROSS_REGION is read as every place the account may use ---------------------

SNOWFLAKE_ORG = Org.model_validate({"accounts": [{"provider": "snowflake-cortex", "connection": {"account": "a"}}]})


def cortex(tid: str, country: str):
    return factories.target(tid, country=country, models={"m": 0.001}, provider="snowflake-cortex")


def test_a_london_cortex_account_on_aws_eu_is_held_to_eu_and_uk():
    """AWS_EU is the default Snowflake sets for London accounts: EU regions, and the account's own UK region."""
    from sovra.core.spec.zones import zone_of
    from sovra.providers.snowflake.provider import SETTING, zone_for_cross_region

    london, frankfurt = cortex("snowflake-cortex/eu-west-2", "GB"), cortex("snowflake-cortex/eu-central-1", "DE")

    def read(t, _conn):
        return [LiveSetting(t.id, SETTING, "AWS_EU", zone_for_cross_region("AWS_EU", zone_of(t.country)))]

    report = ls.check(SNOWFLAKE_ORG, [london, frankfurt], read=read)
    assert [(f.target, f.zone) for f in report.widened] == [(london.id, "EU+UK")]
    held = {t.id: t for t in ls.apply([london, frankfurt], report.findings)}
    assert held[london.id].zone == "EU+UK" and held[london.id].country is None
    assert held[frankfurt.id] == frankfurt  # AWS_EU from Frankfurt stays in the EU

    eu_only = factories.deployment("eu", residency={"zones": ["EU"]}, rps=1, tokens=100)
    eu_uk = factories.deployment("euuk", residency={"zones": ["EU", "UK"]}, rps=1, tokens=100)
    targets = [held[london.id]]
    assert not factories.solve([eu_only], targets).deployments[0].placements
    assert [p.target for p in factories.solve([eu_uk], targets).deployments[0].placements] == [london.id]


def test_a_cloud_wide_cortex_setting_is_global():
    from sovra.providers.snowflake.provider import zone_for_cross_region

    for value in ("AWS_GLOBAL", "AZURE_GLOBAL", "GCP_GLOBAL", "ANY_REGION", "AWS_EU,GCP_GLOBAL"):
        assert zone_for_cross_region(value, "EU") == GLOBAL
