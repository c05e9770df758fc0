"""Property tests: random small catalogs and fleets, checked against rules written out independently."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sovra.core.spec.org import OrgPolicy
from sovra.core.spec.zones import COUNTRY_ZONE
from sovra.policies import filters
from sovra.policies.licenses import license_pack
from sovra.policies.placement import SolveOptions
from tests.factories import AS_OF, credit, deployment, solve, target

COUNTRIES = ["FR", "DE", "US", "JP"]
CLOUDS = ["aws", "azure", "onprem"]
PRICES = [1.0, 1.05, 1.1, 1.5]  # few, close values: ties happen often and egress can tip the balance


@st.composite
def targets_st(draw):
    n = draw(st.integers(2, 6))
    out = []
    for i in range(n):
        cloud = draw(st.sampled_from(CLOUDS))
        glob = draw(st.integers(0, 5)) == 0
        country = None if glob else draw(st.sampled_from(COUNTRIES))
        common = dict(cloud=cloud, country=country, zone="GLOBAL" if glob else None,
                      jurisdiction=draw(st.sampled_from(COUNTRIES)), region=draw(st.sampled_from(["r1", "r2"])),
                      egress=draw(st.sampled_from([0.0, 0.05, 0.09])))
        if draw(st.integers(0, 3)) == 0:
            models = {m: draw(st.sampled_from([0.0005, 0.001, 0.002])) for m in
                      draw(st.sampled_from([["m"], ["m", "n"], ["n"]]))}
            out.append(target(f"t{i}/x", models=models, **common))
        else:
            out.append(target(f"t{i}/x", price=draw(st.sampled_from(PRICES)), gb=draw(st.sampled_from([24, 80])),
                              gpus=draw(st.sampled_from([1, 2])), available=draw(st.sampled_from([None, None, 0, 1, 2, 4])),
                              **common))
    return out


@st.composite
def fleet_st(draw):
    tgts = draw(targets_st())
    locations = sorted({t.location for t in tgts})
    budget_left = 8
    deps = []
    for i in range(draw(st.integers(1, 3))):
        reps = draw(st.integers(1, max(1, min(4, budget_left - (2 - i)))))
        budget_left -= reps
        residency = draw(st.sampled_from([
            {}, {}, {}, {"zones": ["EU"]}, {"zones": ["EU", "US"]}, {"zones": ["EU"], "sovereign": True},
            {"countries": ["FR"]}, {"zones": ["US"], "countries": ["JP"]},
            {"countries": ["DE", "US"], "sovereign": True}]))
        data = [(loc, draw(st.sampled_from([200.0, 2000.0])), draw(st.sampled_from([0.02, 0.09])))
                for loc in draw(st.lists(st.sampled_from(locations), max_size=2, unique=True))]
        deps.append(deployment(f"d{i}", model=draw(st.sampled_from(["m", "m", "n"])), replicas=reps,
                               gb=draw(st.sampled_from([None, 20, 20, 40, 100])), residency=residency,
                               min_targets=draw(st.sampled_from([1, 1, 2])), data=data,
                               rps=draw(st.sampled_from([0.5, 2.0])), tokens=500))
    credits = [credit(c, draw(st.sampled_from([1500.0, 6000.0, 20000.0])), dt.date(2027, draw(st.integers(1, 6)), 28))
               for c in draw(st.lists(st.sampled_from(["aws", "azure"]), max_size=2, unique=True))]
    return deps, tgts, credits


def _months(expires: dt.date, as_of: dt.date) -> int:
    # Written differently from policies.costs on purpose: walk month by month.
    n, y, m = 0, as_of.year, as_of.month
    while (y, m) <= (expires.year, expires.month) and expires >= as_of:
        n += 1
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return n


def brute_force(deps, tgts, credits, as_of=AS_OF):
    """Enumerate every allocation (managed traffic split over at most max(max_managed_split, min_targets) targets);
    cost = compute − Σ_cloud min(cap, compute on cloud) + egress."""
    lic = license_pack(OrgPolicy())
    by_id = {t.id: t for t in tgts}
    caps = defaultdict(float)
    for c in credits:
        if _months(c.expires, as_of):
            caps[c.cloud] += c.usd / _months(c.expires, as_of)
    per_dep = []
    for d in deps:
        sources = {s.location: (s.monthly_gb, s.egress_usd_per_gb) for s in d.spec.data}
        ok = [c.target for c in (filters.evaluate(d, t, lic, sources) for t in tgts) if hasattr(c, "unit_usd")]
        reps = [tid for tid in ok if not by_id[tid].managed]
        mgd = [tid for tid in ok if by_id[tid].managed]
        R = d.spec.replicas.min

        def egress(tid, share):
            loc = by_id[tid].location
            return share * sum(gb * p for src, (gb, p) in sources.items() if src != loc)

        def sku(tid):
            fits = [a for a in by_id[tid].accelerators
                    if a.gpus * a.gpu_memory_gb >= d.spec.model.gpu_memory_gb and a.available != 0]
            return min(fits, key=lambda a: (a.usd_per_hour, a.sku))

        options = []
        allocs = [()] + [c for c in itertools.product(range(R + 1), repeat=len(reps)) if sum(c) == R] if reps else [()]
        for alloc in allocs:
            split_cap = max(SolveOptions().max_managed_split, d.spec.placement.min_targets)
            for k in range(min(len(mgd), split_cap) + 1):
                for subset in itertools.combinations(mgd, k):
                    if not alloc and not subset:
                        continue
                    if alloc and sum(alloc) != R:
                        continue
                    used = sum(1 for n in alloc if n) + len(subset)
                    if used < d.spec.placement.min_targets:
                        continue
                    compute, eg, usage = defaultdict(float), 0.0, defaultdict(int)
                    for tid, n in zip(reps, alloc or [0] * len(reps)):
                        if n:
                            a = sku(tid)
                            compute[by_id[tid].cloud] += n * a.usd_per_hour * 730
                            eg += egress(tid, n / R)
                            if a.available is not None:
                                usage[(tid, a.sku)] += n
                    for tid in subset:
                        t = by_id[tid]
                        price = next(m.usd_per_1k_tokens for m in t.models if m.name == d.spec.model.name)
                        full = d.spec.traffic.requests_per_second * 2_628_000 * d.spec.traffic.tokens_per_request / 1000
                        compute[t.cloud] += full * price / k
                        eg += egress(tid, 1 / k)
                    options.append((dict(compute), eg, dict(usage)))
        per_dep.append(options)
    best = None
    for combo in itertools.product(*per_dep):
        usage = defaultdict(int)
        compute = defaultdict(float)
        eg = 0.0
        for comp, e, use in combo:
            eg += e
            for k, v in comp.items():
                compute[k] += v
            for k, v in use.items():
                usage[k] += v
        if any(n > next(a.available for a in by_id[tid].accelerators if a.sku == s) for (tid, s), n in usage.items()):
            continue
        cost = sum(compute.values()) - sum(min(caps.get(c, 0.0), v) for c, v in compute.items()) + eg
        best = cost if best is None or cost < best else best
    return best


def evaluate_placements(plan, deps, tgts, credits, as_of=AS_OF):
    """Re-price the engine's chosen placements from raw target data (not from the engine's own numbers)."""
    by_id = {t.id: t for t in tgts}
    caps = defaultdict(float)
    for c in credits:
        if _months(c.expires, as_of):
            caps[c.cloud] += c.usd / _months(c.expires, as_of)
    compute, eg, usage = defaultdict(float), 0.0, defaultdict(int)
    for d, dplan in zip(deps, plan.deployments):
        sources = {s.location: (s.monthly_gb, s.egress_usd_per_gb) for s in d.spec.data}
        managed = [p for p in dplan.placements if by_id[p.target].managed]
        for p in dplan.placements:
            t = by_id[p.target]
            out = sum(gb * pr for src, (gb, pr) in sources.items() if src != t.location)
            if t.managed:
                price = next(m.usd_per_1k_tokens for m in t.models if m.name == d.spec.model.name)
                full = d.spec.traffic.requests_per_second * 2_628_000 * d.spec.traffic.tokens_per_request / 1000
                compute[t.cloud] += full * price / len(managed)
                eg += out / len(managed)
            else:
                a = next(a for a in t.accelerators if a.sku == p.accelerator)
                compute[t.cloud] += p.replicas * a.usd_per_hour * 730
                eg += out * p.replicas / d.spec.replicas.min
                if a.available is not None:
                    usage[(t.id, a.sku)] += p.replicas
    for (tid, sku), n in usage.items():
        assert n <= next(a.available for a in by_id[tid].accelerators if a.sku == sku), "capacity exceeded"
    return sum(compute.values()) - sum(min(caps.get(c, 0.0), v) for c, v in compute.items()) + eg


def _residency_holds(res: dict, t) -> bool:
    zones, countries = set(res.get("zones", [])), set(res.get("countries", []))
    if not zones and not countries:
        return True
    in_place = t.zone != "GLOBAL" and (t.zone in zones or t.country in countries)
    sovereign = t.operator.jurisdiction in countries or COUNTRY_ZONE[t.operator.jurisdiction] in zones
    return in_place and (sovereign or not res.get("sovereign"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet_st())
def test_no_placement_ever_breaks_residency_or_sovereignty(fleet):
    deps, tgts, credits = fleet
    plan = solve(deps, tgts, credits)
    by_id = {t.id: t for t in tgts}
    for d, dplan in zip(deps, plan.deployments):
        res = d.spec.residency.model_dump()
        for p in dplan.placements:
            assert _residency_holds(res, by_id[p.target]), (d.name, p.target)


@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet_st())
def test_plan_cost_equals_brute_force_optimum(fleet):
    deps, tgts, credits = fleet
    plan = solve(deps, tgts, credits)
    best = brute_force(deps, tgts, credits)
    if best is None:
        assert not plan.feasible
    else:
        assert plan.feasible, [d.relax for d in plan.deployments]
        assert evaluate_placements(plan, deps, tgts, credits) == pytest.approx(best, rel=1e-6, abs=0.01)
        assert plan.monthly_usd == pytest.approx(best, rel=1e-6, abs=0.01)
        for dplan, d in zip(plan.deployments, deps):
            assert sum(p.replicas for p in dplan.placements) in (0, d.spec.replicas.min)
            assert len(dplan.placements) >= d.spec.placement.min_targets
