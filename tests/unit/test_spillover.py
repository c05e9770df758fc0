"""The spillover ladder: the company's own backends first, managed per-token ones only when the own tier is
saturated or down, never a step outside the request's bound; and a refusal shared by every backend tried reaches
the client with its own status (429 with Retry-After, 401, 404) rather than a bare 503."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovra.core.backends import RoutingTable
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.core.api_errors import BackendRefused, NoAllowedBackend, NotDelivered, Refused, Saturated
from sovra.orchestrator.router.gate import RequestResidency
from sovra.core.spec import Residency
from sovra.core.place import Place
from sovra.policies.residency import allows
from tests import factories

EU = RequestResidency(Residency(zones=("EU",)))
PARIS, FRANKFURT, VIRGINIA = (Place("EU", "FR", "FR", "self"), Place("EU", "DE", "US", "amazon"),
                              Place("US", "US", "US", "amazon"))


def ladder(own_capacity: int = 2, managed_us: bool = True):
    """An FR Ray replica (own, dear), a cheaper managed EU backend, and a cheapest managed US one."""
    backends = [factories.backend("ray-paris", PARIS, cost=5.0, kind="ray").model_copy(
                    update={"capacity": own_capacity}),
                factories.backend("bedrock-eu", FRANKFURT, cost=1.0, kind="aws-bedrock").model_copy(
                    update={"tier": 1})]
    if managed_us:
        backends.append(factories.backend("bedrock-us", VIRGINIA, cost=0.1, kind="aws-bedrock").model_copy(
            update={"tier": 1}))
    return RoutingTable.of(backends)


async def no_sleep(_):
    return None


def route_of(d: Dispatcher):
    return d.table.resolve("m")


def test_own_replicas_first_even_when_managed_is_cheaper():
    d = Dispatcher(ladder(), sleep=no_sleep)
    sent = []

    async def call(b):
        sent.append(b.target)
        return "ok"

    for _ in range(5):
        asyncio.run(d.send(route_of(d), EU, call))
    assert sent == ["ray-paris"] * 5


def test_a_saturated_own_tier_spills_to_the_managed_tier_inside_the_bound():
    d = Dispatcher(ladder(own_capacity=2), sleep=no_sleep)
    sent = []

    async def main():
        gate = asyncio.Event()

        async def call(b):
            sent.append(b.target)
            if b.target == "ray-paris":
                await gate.wait()
            return b.target

        tasks = [asyncio.create_task(d.send(route_of(d), EU, call)) for _ in range(4)]
        await asyncio.sleep(0.01)
        gate.set()
        return [r for r, _ in await asyncio.gather(*tasks)]

    answers = asyncio.run(main())
    assert sent.count("ray-paris") == 2  # its capacity
    assert sorted(answers) == ["bedrock-eu", "bedrock-eu", "ray-paris", "ray-paris"]
    assert "bedrock-us" not in sent  # cheapest, but outside an EU request's bound


def test_a_dead_own_tier_spills_over_and_a_dead_ladder_fails_closed():
    d = Dispatcher(ladder(managed_us=True), sleep=no_sleep)
    sent = []

    async def call(b):
        sent.append(b.target)
        raise NotDelivered(f"{b.target} down", down=True)

    with pytest.raises(NoAllowedBackend) as exc:
        asyncio.run(d.send(route_of(d), EU, call))
    assert exc.value.status == 503 and exc.value.code == "no_allowed_backend"
    assert sent[:2] == ["ray-paris", "bedrock-eu"] and set(sent) == {"ray-paris", "bedrock-eu"}


def test_throttled_everywhere_is_a_429_with_the_backends_retry_after():
    d = Dispatcher(ladder(managed_us=False), sleep=no_sleep)

    async def call(b):
        raise Refused(f"{b.target} throttled", throttled=True, retry_after_s=7 if b.tier else 3)

    with pytest.raises(BackendRefused) as exc:
        asyncio.run(d.send(route_of(d), EU, call))
    assert exc.value.status == 429 and exc.value.code == "backend_throttled"
    assert exc.value.headers["Retry-After"] == "3"


@pytest.mark.parametrize(("status", "code"), [(401, "backend_auth_failed"), (404, "backend_not_found")])
def test_the_same_refusal_everywhere_keeps_its_status(status, code):
    d = Dispatcher(ladder(managed_us=False), sleep=no_sleep)

    async def call(b):
        raise Refused(f"{b.target}: HTTP {status}", status=status, down=True)

    with pytest.raises(BackendRefused) as exc:
        asyncio.run(d.send(route_of(d), EU, call))
    assert (exc.value.status, exc.value.code) == (status, code)


def test_mixed_failures_stay_a_503():
    d = Dispatcher(ladder(managed_us=False), sleep=no_sleep)

    async def call(b):
        raise (Refused("throttled", throttled=True) if b.tier else NotDelivered("connect refused"))

    with pytest.raises(NoAllowedBackend):
        asyncio.run(d.send(route_of(d), EU, call))


PLACES = [PARIS, FRANKFURT, VIRGINIA, Place("GLOBAL", None, "US", "amazon"), Place("EU", "IE", "US", "microsoft")]
BOUNDS = [Residency(zones=("EU",)), Residency(countries=("FR",)), Residency(zones=("US",)),
          Residency(zones=("EU", "US")), Residency(zones=("EU",), sovereign=True)]


@st.composite
def tables(draw):
    n = draw(st.integers(1, 8))
    backends = []
    for i in range(n):
        backends.append(factories.backend(
            f"b{i}", draw(st.sampled_from(PLACES)), cost=draw(st.sampled_from([0.1, 1.0, 5.0])),
            kind=draw(st.sampled_from(["ray", "aws-bedrock", "openai-compatible"]))).model_copy(
            update={"tier": draw(st.integers(0, 1)), "capacity": draw(st.integers(1, 3))}))
    return backends


@settings(max_examples=200, deadline=None)
@given(backends=tables(), bound=st.sampled_from(BOUNDS), busy=st.lists(st.integers(0, 3), min_size=8, max_size=8),
       dead=st.sets(st.integers(0, 7)))
def test_every_choice_is_inside_the_bound_and_on_the_lowest_free_rung(backends, bound, busy, dead):
    d = Dispatcher(RoutingTable.of(backends), sleep=no_sleep, max_attempts=1)
    for i, b in enumerate(backends):
        d.in_flight[b.id] = busy[i]
        if i in dead:
            d.breaker.trip(b.id)
    gate = RequestResidency(bound)
    free = [b for i, b in enumerate(backends)
            if allows(bound, b.place) and i not in dead and busy[i] < (b.capacity or d.max_in_flight)]
    sent = []

    async def call(b):
        sent.append(b)
        return b

    try:
        asyncio.run(d.send(d.table.resolve("m"), gate, call))
    except (NoAllowedBackend, Saturated):
        assert not free
        return
    (chosen,) = sent
    assert allows(bound, chosen.place)
    assert chosen in free
    assert chosen.tier == min(b.tier for b in free)  # a higher rung only when every lower one is full or dead
