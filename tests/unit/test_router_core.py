"""Router core without a network: the residency gate, tenants, policies, breaker and failover."""

import asyncio
import hashlib
import random
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from sovra.core.backends import RoutingTable
from sovra.orchestrator.router.balancing import Candidate, get_policy
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.core.api_errors import (InvalidResidency, ModelNotFound, NoAllowedBackend, NotDelivered,
                                        ResidencyWidening, Saturated, Unauthorized)
from sovra.orchestrator.router.gate import RequestResidency, parse_header
from sovra.orchestrator.router.health import Breaker
from sovra.orchestrator.router.tenants import TenantDirectory
from sovra.core.spec import Residency
from sovra.core.spec.org import Tenant
from sovra.core.place import Place
from tests import factories

EU = Residency(zones=("EU",))
PLACES = {"paris": Place("EU", "FR", "FR", "self"), "frankfurt": Place("EU", "DE", "US", "amazon"),
          "virginia": Place("US", "US", "US", "amazon"), "anywhere": Place("GLOBAL", None, "US", "microsoft"),
          "tokyo": Place("APAC", "JP", "JP", "self")}


def backend(name, cost=1.0, policy="cost"):
    return factories.backend(name, PLACES[name], cost=cost, policy=policy)


def route(table: RoutingTable, name: str = "m"):
    return table.resolve(name)


def run(coro):
    return asyncio.run(coro)


async def no_sleep(_):
    return None


# -- header and tenant bound -------------------------------------------------------------------------------------

def test_header_parses_zones_and_countries_and_rejects_unknown_names():
    assert parse_header("eu") == Residency(zones=("EU",))
    assert parse_header("FR, DE") == Residency(countries=("FR", "DE"))
    with pytest.raises(InvalidResidency) as exc:
        parse_header("EU,Atlantis")
    assert exc.value.status == 400 and "Atlantis" in exc.value.message


@pytest.mark.parametrize(("tenant", "header", "ok"), [
    (EU, "FR", True), (EU, "EU", True), (EU, "FR,DE", True),
    (EU, "US", False), (EU, "EU,US", False), (EU, "GLOBAL", False),
    (Residency(countries=("FR",)), "EU", False), (Residency(countries=("FR",)), "FR", True),
    (Residency(), "US", True), (Residency(), "GLOBAL", True),
])
def test_header_narrows_but_never_widens(tenant, header, ok):
    if ok:
        RequestResidency.build(tenant, header)
    else:
        with pytest.raises(ResidencyWidening) as exc:
            RequestResidency.build(tenant, header)
        assert exc.value.status == 403


def test_narrowed_request_needs_both_tenant_and_header():
    r = RequestResidency.build(Residency(zones=("EU",), sovereign=True), "FR")
    assert r.permits(PLACES["paris"])
    assert not r.permits(PLACES["frankfurt"])  # not FR, and US-operated under a sovereign tenant
    assert not r.permits(PLACES["virginia"])


def test_tenants_authenticate_by_sha256_and_reject_bad_keys():
    key = "sk-test-eu-tenant"
    d = TenantDirectory.of([Tenant(name="bank", key_sha256=hashlib.sha256(key.encode()).hexdigest(), residency=EU)])
    assert d.authenticate(f"Bearer {key}").name == "bank"
    for bad in (None, "Bearer nope", key, "Basic abc"):
        with pytest.raises(Unauthorized):
            d.authenticate(bad)
    assert TenantDirectory.of([]).authenticate(None).residency.unrestricted  # open mode: loopback only


# -- policies ----------------------------------------------------------------------------------------------------

def test_cost_policy_prefers_cheapest_and_balances_equals_by_load():
    cands = [Candidate(backend("virginia", cost=0.5), 0, None), Candidate(backend("paris", cost=1.0), 5, None),
             Candidate(backend("frankfurt", cost=1.0), 0, None)]
    assert get_policy("cost").rank(cands, random.Random(1))[0].backend.target == "virginia"
    firsts = Counter(get_policy("cost").rank(cands[1:], random.Random(i))[0].backend.target for i in range(50))
    assert firsts == {"frankfurt": 50}  # with two equals, p2c always picks the idle one


def test_least_load_and_latency_policies():
    a, b = backend("paris"), backend("frankfurt")
    assert get_policy("least_load").rank([Candidate(a, 3, 1.0), Candidate(b, 1, 9.0)], random.Random())[0].backend is b
    assert get_policy("latency").rank([Candidate(a, 3, 1.0), Candidate(b, 1, 9.0)], random.Random())[0].backend is a
    with pytest.raises(ValueError, match="did you mean 'latency'"):
        get_policy("latncy")


# -- breaker -----------------------------------------------------------------------------------------------------

def test_breaker_opens_after_failures_readmits_after_cooldown_and_reopens_on_failure():
    now = [0.0]
    br = Breaker(failures_to_open=2, cooldown_s=10, clock=lambda: now[0])
    br.failure("x")
    assert br.available("x")
    br.failure("x")
    assert not br.available("x") and br.is_open("x")
    now[0] = 10
    assert br.available("x")  # half-open
    br.failure("x")
    assert not br.available("x")  # one failure in half-open re-ejects
    now[0] = 20
    br.success("x")
    assert br.available("x") and not br.is_open("x")


# -- dispatch ----------------------------------------------------------------------------------------------------

def test_eu_request_fails_over_inside_eu_then_fails_closed():
    table = RoutingTable.of([backend("virginia", cost=0.1), backend("paris"), backend("frankfurt")])
    d = Dispatcher(table, sleep=no_sleep)
    called = []

    async def broken(b):
        called.append(b.target)
        raise NotDelivered("connect refused")

    with pytest.raises(NoAllowedBackend) as exc:
        run(d.send(route(table), RequestResidency(EU), broken))
    # the step from paris's undelivered first try to frankfurt is free; then max_attempts sends
    assert sorted(set(called)) == ["frankfurt", "paris"] and len(called) == d.max_attempts + 1
    assert called[0] != called[1]  # both EU backends are tried before any is retried
    assert exc.value.status == 503
    assert exc.value.code == "no_allowed_backend"


def test_unknown_model_is_404_and_saturation_is_429_with_retry_after():
    table = RoutingTable.of([backend("paris")])
    d = Dispatcher(table, max_in_flight=0)
    with pytest.raises(ModelNotFound):
        table.resolve("nope")
    with pytest.raises(Saturated) as exc:
        run(d.send(route(table), RequestResidency(EU), None))
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "1"


names = st.sampled_from(sorted(PLACES))
residencies = st.sampled_from([Residency(), EU, Residency(zones=("US",)), Residency(countries=("FR",)),
                               Residency(zones=("EU",), sovereign=True), Residency(zones=("APAC", "EU"))])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(names, st.sampled_from([0.1, 1.0, 5.0])), min_size=1, max_size=5,
                unique_by=lambda t: t[0]),
       st.sets(names), residencies, st.sampled_from(["cost", "least_load", "latency"]), st.integers(1, 5))
def test_no_attempt_ever_leaves_the_allowed_set(backs, failing, tenant, policy, attempts):
    table = RoutingTable.of([backend(n, cost=c, policy=policy) for n, c in backs])
    d = Dispatcher(table, sleep=no_sleep, max_attempts=attempts, rng=random.Random(0))
    res = RequestResidency(tenant)
    called = []

    async def call(b):
        called.append(b)
        if b.target in failing:
            raise NotDelivered("down")
        return b.target

    allowed = {n for n, _ in backs if res.permits(PLACES[n])}
    try:
        served, b = run(d.send(route(table), res, call))
        assert served in allowed and b.target == served
    except NoAllowedBackend:
        assert not (allowed - failing) or len(called) == attempts
    assert {b.target for b in called} <= allowed


def test_the_ground_package_names_exactly_the_routers_policies():
    """Deployments and routing tables are checked against core's names, the router registers the classes."""
    from sovra.core.spec.common import ROUTING_POLICIES
    from sovra.orchestrator.router.balancing import policy_names

    assert set(ROUTING_POLICIES) == set(policy_names())
