"""The request path's shortcuts give the answers of the long way: a policy's `choose` is its ranking's first, cost
tiers partition the allowed set, and the dispatcher's cached plans follow table swaps, residencies and the breaker."""

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovra.core.backends import Backend, RoutingTable
from sovra.orchestrator.router.balancing import Candidate, get_policy, policy_names
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.core.api_errors import ResidencyWidening
from sovra.orchestrator.router.gate import RequestResidency
from sovra.orchestrator.router.health import Breaker
from sovra.core.spec import Residency
from sovra.core.place import Place
from tests import factories

EU, US = Residency(zones=("EU",)), Residency(zones=("US",))
PARIS, FRANKFURT, VIRGINIA = Place("EU", "FR", "FR", "self"), Place("EU", "DE", "US", "amazon"), Place(
    "US", "US", "US", "amazon")


def backend(name: str, place: Place = PARIS, cost: float = 1.0) -> Backend:
    return factories.backend(name, place, cost=cost)


async def echo(b: Backend) -> str:
    return b.target


candidates = st.lists(st.builds(lambda i, cost, load, lat: Candidate(backend(f"b{i}", cost=cost), load, lat),
                                st.integers(0, 10_000), st.sampled_from([0.1, 1.0, 1.0 + 1e-12, 5.0]),
                                st.integers(0, 3), st.one_of(st.none(), st.sampled_from([1.0, 2.0, 9.5]))),
                      min_size=1, max_size=8, unique_by=lambda c: c.backend.id)


@settings(max_examples=300, deadline=None)
@given(candidates, st.integers(0, 2**32))
def test_choose_is_the_first_of_the_ranking(cands, seed):
    # cost: the same pick for the same random stream; the others break ties at random, so: one of the best
    assert get_policy("cost").choose(cands, random.Random(seed)) is get_policy("cost").rank(cands, random.Random(seed))[0]
    assert get_policy("least_load").choose(cands, random.Random(seed)).in_flight == min(c.in_flight for c in cands)

    def lat(c):
        return -1.0 if c.latency_ms is None else c.latency_ms

    assert lat(get_policy("latency").choose(cands, random.Random(seed))) == min(map(lat, cands))


@settings(max_examples=200, deadline=None)
@given(candidates)
def test_tiers_partition_the_backends_cheapest_first(cands):
    backends = [c.backend for c in cands]
    for name in policy_names():
        tiers = get_policy(name).tiers(backends)
        assert sorted((b for t in tiers for b in t), key=lambda b: b.id) == sorted(backends, key=lambda b: b.id)
        assert all(t for t in tiers)
    cost_tiers = get_policy("cost").tiers(backends)
    keys = [{round(b.cost, 9) for b in t} for t in cost_tiers]
    assert all(len(k) == 1 for k in keys) and [min(k) for k in keys] == sorted(min(k) for k in keys)


def test_plans_follow_a_swapped_table_and_each_residency():
    d = Dispatcher(RoutingTable.of([backend("paris"), backend("virginia", VIRGINIA, cost=0.1)]))
    eu, us = RequestResidency.build(EU, None), RequestResidency.build(US, None)
    assert asyncio.run(d.send(d.table.resolve("m"), eu, echo))[0] == "paris"
    assert asyncio.run(d.send(d.table.resolve("m"), us, echo))[0] == "virginia"
    d.table = RoutingTable.of([backend("frankfurt", FRANKFURT)])  # what `up` does when the table changes
    assert asyncio.run(d.send(d.table.resolve("m"), eu, echo))[0] == "frankfurt"
    assert d.plan(d.table.resolve("m"), us.bound_by(Residency())).allowed == ()


def test_an_open_circuit_is_skipped_until_its_cooldown_ends():
    now = [0.0]
    d = Dispatcher(RoutingTable.of([backend("paris", cost=0.5), backend("frankfurt", FRANKFURT)]),
                   breaker=Breaker(failures_to_open=1, cooldown_s=5, clock=lambda: now[0]))
    eu = RequestResidency.build(EU, None)
    assert asyncio.run(d.send(d.table.resolve("m"), eu, echo))[0] == "paris"
    d.breaker.failure("m@paris")
    assert asyncio.run(d.send(d.table.resolve("m"), eu, echo))[0] == "frankfurt"
    now[0] = 5.0  # half-open: the cheapest is tried again
    assert asyncio.run(d.send(d.table.resolve("m"), eu, echo))[0] == "paris"


def test_request_residency_is_reused_and_a_widening_header_is_refused_every_time():
    assert RequestResidency.build(EU, "FR") == RequestResidency.build(Residency(zones=("EU",)), "FR")
    for _ in range(2):
        with pytest.raises(ResidencyWidening):
            RequestResidency.build(EU, "US")
