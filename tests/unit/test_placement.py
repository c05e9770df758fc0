"""Placement engine behaviour on hand-computed instances."""

import datetime as dt

import pytest

from sovra.core.spec.org import LicenseRule, OrgPolicy
from tests.factories import credit, deployment, solve, target

H = 730  # hours per month


def only(plan):
    (d,) = plan.deployments
    return d


def test_cheapest_target_wins_and_cost_is_hourly_times_730():
    d = only(solve([deployment(replicas=2)], [target("a/x", price=3.0), target("b/y", price=2.0)]))
    assert d.feasible
    assert [(p.target, p.replicas) for p in d.placements] == [("b/y", 2)]
    assert d.monthly_usd == pytest.approx(2 * 2.0 * H)


def test_cheapest_fitting_accelerator_is_used():
    from sovra.core.spec import Target

    t = Target.model_validate({
        "id": "a/x", "provider": "aws-sagemaker", "cloud": "aws", "region": "x", "country": "FR",
        "zone": "EU", "operator": {"name": "amazon", "jurisdiction": "US"},
        "accelerators": [
            {"sku": "small", "gpus": 1, "gpu_memory_gb": 24, "usd_per_hour": 1.0},     # too small for 40 GB
            {"sku": "big", "gpus": 1, "gpu_memory_gb": 80, "usd_per_hour": 5.0},
            {"sku": "quad", "gpus": 4, "gpu_memory_gb": 24, "usd_per_hour": 4.0},      # 96 GB, cheapest fit
        ]})
    d = only(solve([deployment(gb=40)], [t]))
    assert d.placements[0].accelerator == "quad"


def test_unexpired_credits_beat_a_cheaper_list_price_and_are_capped_per_month():
    # azure: 5/h -> 3,650/month; aws: 4/h -> 2,920/month. Azure credits 24,000 over 8 months = 3,000/month.
    deps = [deployment()]
    tgts = [target("aws/x", cloud="aws", price=4.0), target("azure/y", cloud="azure", price=5.0)]
    credits = [credit("azure", 24_000, dt.date(2027, 6, 30))]
    d = only(solve(deps, tgts, credits))
    (p,) = d.placements
    assert p.target == "azure/y"
    assert p.credits_usd == pytest.approx(3_000)
    assert d.monthly_usd == pytest.approx(650)  # 3,650 - 3,000 < 2,920


def test_expired_credits_pay_nothing():
    tgts = [target("aws/x", cloud="aws", price=4.0), target("azure/y", cloud="azure", price=5.0)]
    d = only(solve([deployment()], tgts, [credit("azure", 24_000, dt.date(2026, 10, 31))]))
    assert d.placements[0].target == "aws/x" and d.credits_usd == 0


def test_credits_are_shared_by_a_fleet_not_counted_twice():
    tgts = [target("azure/y", cloud="azure", price=5.0)]
    plan = solve([deployment("a"), deployment("b")], tgts, [credit("azure", 3_000, dt.date(2026, 11, 30))])
    assert sum(d.credits_usd for d in plan.deployments) == pytest.approx(3_000)
    assert plan.monthly_usd == pytest.approx(2 * 5 * H - 3_000)


def test_egress_is_split_by_replica_share_and_free_at_the_source_location():
    # 1,000 GB at aws/eu-central-1 priced 0.09: a replica elsewhere pays its share.
    tgts = [target("aws/eu-central-1", cloud="aws", country="DE", price=1.0, available=1),
            target("onprem/paris", cloud="onprem", price=1.0, available=5)]
    d = only(solve([deployment(replicas=4, data=[("aws/eu-central-1", 1000, 0.09)])], tgts))
    by = {p.target: p for p in d.placements}
    assert by["aws/eu-central-1"].replicas == 1 and by["aws/eu-central-1"].egress_usd == 0
    assert by["onprem/paris"].replicas == 3
    assert by["onprem/paris"].egress_usd == pytest.approx(1000 * 0.09 * 3 / 4)


def test_egress_can_outweigh_a_cheaper_compute_price():
    tgts = [target("aws/eu-central-1", cloud="aws", country="DE", price=2.0),
            target("onprem/paris", cloud="onprem", price=1.9)]  # 73/month cheaper, but 90 of egress
    d = only(solve([deployment(data=[("aws/eu-central-1", 1000, 0.09)])], tgts))
    assert d.placements[0].target == "aws/eu-central-1"


def test_ties_go_to_fewer_targets_then_lower_ids():
    tgts = [target("b/y", price=1.0), target("a/x", price=1.0), target("c/z", price=1.0)]
    d = only(solve([deployment(replicas=3)], tgts))
    assert [(p.target, p.replicas) for p in d.placements] == [("a/x", 3)]
    d2 = only(solve([deployment(replicas=3, min_targets=2)], tgts))
    assert [p.target for p in d2.placements] == ["a/x", "b/y"]


def test_plans_are_deterministic():
    tgts = [target(f"t{i}/r", price=1.0 + (i % 3) * 0.5, available=2) for i in range(8)]
    deps = [deployment(f"d{i}", replicas=3, min_targets=2) for i in range(4)]
    def placements(plan):
        return [(d.deployment, d.placements) for d in plan.deployments]

    first = placements(solve(deps, tgts))
    assert len({p.target for _, ps in first for p in ps}) > 1
    assert all(placements(solve(deps, tgts)) == first for _ in range(3))


def test_min_targets_spreads_replicas():
    d = only(solve([deployment(replicas=2, min_targets=2)], [target("a/x", price=1.0), target("b/y", price=3.0)]))
    assert sorted(p.target for p in d.placements) == ["a/x", "b/y"]
    assert d.monthly_usd == pytest.approx((1 + 3) * H)


def test_fleet_shares_on_prem_capacity_jointly():
    # 3 deployments × 2 replicas compete for 4 cheap on-prem slots; the rest spill to the cloud.
    tgts = [target("onprem/p", cloud="onprem", price=1.0, available=4), target("aws/x", cloud="aws", price=5.0)]
    plan = solve([deployment(f"d{i}", replicas=2) for i in range(3)], tgts)
    onprem = sum(p.replicas for d in plan.deployments for p in d.placements if p.target == "onprem/p")
    assert onprem == 4 and plan.feasible
    assert plan.monthly_usd == pytest.approx((4 * 1 + 2 * 5) * H)


def test_managed_traffic_splits_evenly_over_managed_targets():
    # 1 req/s × 1000 tokens = 2,628,000 k-tokens/month
    tgts = [target("bedrock/eu", models={"m": 0.001}), target("bedrock/fr", models={"m": 0.003})]
    d = only(solve([deployment(gb=None, rps=1, tokens=1000, min_targets=2)], tgts))
    assert {p.target: p.managed_share for p in d.placements} == {"bedrock/eu": 0.5, "bedrock/fr": 0.5}
    assert d.monthly_usd == pytest.approx(2_628_000 * (0.001 + 0.003) / 2)


def test_budget_overrun_is_infeasible_and_says_by_how_much():
    d = only(solve([deployment(budget=500)], [target("a/x", price=1.0)]))  # costs 730
    assert not d.feasible
    assert any("exceeds its budget by $230.00/month" in r for r in d.relax)


def test_capacity_shortage_says_how_many_instances_are_missing():
    plan = solve([deployment(replicas=5)], [target("onprem/p", cloud="onprem", available=3)])
    assert not plan.feasible
    assert any("has 3" in r and "needs 5" in r and "add 2" in r for r in plan.deployments[0].relax)


def test_no_target_in_zone_is_reported_by_name():
    d = only(solve([deployment(residency={"zones": ["CH"]})], [target("a/x"), target("b/us", country="US")]))
    assert not d.feasible
    assert any("no target in zone CH" in r for r in d.relax)
    assert all(r.reasons for r in d.rejected) and len(d.rejected) == 2


def test_too_few_targets_for_min_targets_says_what_to_lower():
    d = only(solve([deployment(replicas=3, min_targets=3)], [target("a/x"), target("b/y")]))
    assert not d.feasible and any("lower min_targets to 2" in r for r in d.relax)


def test_every_hard_filter_gives_its_reason():
    tgts = [
        target("eu/ok", certs=["hds"]),
        target("us/far", country="US", certs=["hds"]),
        target("eu/nocert"),
        target("eu/small", gb=24, certs=["hds"]),
        target("eu/full", available=0, certs=["hds"]),
        target("eu/managed", models={"other": 0.001}, certs=["hds"]),
    ]
    d = only(solve([deployment(residency={"zones": ["EU"]}, certs=["hds"])], tgts))
    reasons = {r.target: r.reasons for r in d.rejected}
    assert reasons["us/far"] == ("residency: zone US is not in [EU]",)
    assert reasons["eu/nocert"] == ("certifications: missing hds",)
    assert reasons["eu/small"][0].startswith("accelerator: no instance type has 40 GB")
    assert reasons["eu/full"][0].startswith("capacity: no instances left")
    assert reasons["eu/managed"][0].startswith("model: m is not offered here")
    assert [p.target for p in d.placements] == ["eu/ok"]


def test_licence_rules_gate_self_hosting_but_not_managed_offerings():
    tgts = [target("eu/gpu"), target("eu/api", models={"m": 0.001})]
    d = only(solve([deployment(license="mrl", rps=1, tokens=100)], tgts))
    assert [p.target for p in d.placements] == ["eu/api"]
    assert "does not allow self-hosting" in d.rejected[0].reasons[0]
    strict = OrgPolicy(allowed_licenses=("mit",), licenses=(LicenseRule(id="mine", self_hosting=True),))
    d2 = only(solve([deployment(license="apache-2.0")], tgts, policy=strict))
    assert not d2.feasible and "not in the org's allowed licences" in d2.rejected[0].reasons[0]
    d3 = only(solve([deployment(license="mine", rps=1, tokens=1000)], tgts, policy=OrgPolicy(licenses=strict.licenses)))
    assert d3.placements[0].target == "eu/gpu"


def test_sovereign_residency_leaves_only_self_operated_capacity():
    tgts = [target("azure/fr", cloud="azure", price=1.0), target("onprem/paris", cloud="onprem", price=9.0)]
    d = only(solve([deployment(residency={"zones": ["EU"], "sovereign": True})], tgts))
    assert [p.target for p in d.placements] == ["onprem/paris"]
    assert d.rejected[0].reasons == ("sovereignty: operator microsoft is under US jurisdiction, which is not in [EU]",)


def test_required_target_prices_the_counterfactual():
    tgts = [target("a/x", price=1.0), target("b/y", price=2.0)]
    forced = only(solve([deployment()], tgts, require=[("d", "b/y")]))
    assert [p.target for p in forced.placements] == ["b/y"]


def test_splitting_managed_traffic_can_beat_a_replica_for_min_targets():
    # min_targets 2: replica (730) + one managed (1000 of traffic) = 1,730, or both managed at half each = 1,000.
    # 1 req/s × 1000 tokens = 2,628,000 k-tokens; price chosen so each managed target costs 1,000 for all traffic.
    price = 1000 / 2_628_000
    tgts = [target("gpu/x", price=1.0), target("api/a", models={"m": price}), target("api/b", models={"m": price})]
    d = only(solve([deployment(rps=1, tokens=1000, min_targets=2)], tgts))
    assert sorted(p.target for p in d.placements) == ["api/a", "api/b"]
    assert d.monthly_usd == pytest.approx(1000)


def test_a_small_saving_beats_the_tie_break_towards_fewer_targets():
    # 2 replicas: one cheap slot (730) + one at 1.05 (766.50) = 1,496.50 beats both at 1.05 (1,533) by $36.50.
    tgts = [target("a/cheap", price=1.0, available=1), target("b/dear", price=1.05)]
    d = only(solve([deployment(replicas=2)], tgts))
    assert {p.target: p.replicas for p in d.placements} == {"a/cheap": 1, "b/dear": 1}
    # Same with min_targets 2: three targets (730 + 744.60 + 766.50) beat two (730 + 2 × 766.50) by $21.90.
    tgts3 = [target("a/cheap", price=1.0, available=1), target("b/cheap", price=1.02, available=1),
             target("c/dear", price=1.05)]
    d3 = only(solve([deployment(replicas=3, min_targets=2)], tgts3))
    assert {p.target: p.replicas for p in d3.placements} == {"a/cheap": 1, "b/cheap": 1, "c/dear": 1}


def test_managed_split_cap_rises_to_min_targets():
    tgts = [target(f"api/{c}", models={"m": 0.001 * (i + 1)}) for i, c in enumerate("abcd")]
    d = only(solve([deployment(gb=None, rps=1, tokens=100, min_targets=4)], tgts))
    assert d.feasible and len(d.placements) == 4 and all(p.managed_share == 0.25 for p in d.placements)
