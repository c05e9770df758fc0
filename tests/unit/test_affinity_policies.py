"""The `session` and `prefix` policies: equal keys land on the same backend of the rung, by rendezvous hashing with
bounded loads; never on anything but a candidate handed in, stable across order and router replicas, and a lost
backend moves only its own keys."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sovra.core.backends import Backend
from sovra.core.place import Place
from sovra.orchestrator.router.balancing import Candidate, PrefixPolicy, SessionPolicy, get_policy

from tests import factories

PARIS = Place("EU", "FR", "FR", "self")
AFFINITY = ("session", "prefix")


def backend(name: str, cost: float = 1.0) -> Backend:
    return factories.backend(name, PARIS, cost=cost, deployment="chat")


def idle(names: list[str]) -> list[Candidate]:
    return [Candidate(backend(n), 0, None) for n in names]


keys = st.binary(min_size=1, max_size=64)
candidates = st.lists(st.builds(lambda i, cost, load: Candidate(backend(f"b{i}", cost=cost), load, None),
                                st.integers(0, 1_000), st.sampled_from([0.1, 1.0, 5.0]), st.integers(0, 20)),
                      min_size=1, max_size=12, unique_by=lambda c: c.backend.id)


def test_the_policies_declare_which_key_they_read():
    assert get_policy("session").affinity == "session" and get_policy("prefix").affinity == "prefix"
    assert all(get_policy(n).affinity is None for n in ("cost", "least_load", "latency", "commitments"))


@pytest.mark.parametrize("name", AFFINITY)
def test_the_rung_is_one_group_whatever_the_cost(name):
    backends = [backend("a", 0.1), backend("b", 5.0), backend("c", 1.0)]
    assert get_policy(name).tiers(backends) == [tuple(backends)]


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(AFFINITY), cands=candidates, key=st.one_of(st.none(), keys), seed=st.integers(0, 2**32))
def test_the_choice_is_always_a_candidate_handed_in(name, cands, key, seed):
    policy = get_policy(name)
    assert any(policy.choose(cands, random.Random(seed), key) is c for c in cands)
    ranked = policy.rank(cands, random.Random(seed), key)
    assert sorted(map(id, ranked)) == sorted(map(id, cands))
    if key is not None:
        assert ranked[0] is policy.choose(cands, random.Random(seed), key)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(AFFINITY), cands=candidates, key=keys, shuffle=st.randoms(use_true_random=False))
def test_same_key_and_candidates_give_the_same_choice_in_any_order(name, cands, key, shuffle):
    policy = get_policy(name)
    first = policy.choose(cands, random.Random(0), key)
    shuffled = list(cands)
    shuffle.shuffle(shuffled)
    assert policy.choose(shuffled, random.Random(1), key) is first
    assert policy.rank(shuffled, random.Random(2), key) == policy.rank(cands, random.Random(3), key)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(AFFINITY), n=st.integers(2, 10), key=keys, data=st.data())
def test_losing_a_backend_moves_only_the_keys_it_had(name, n, key, data):
    policy = get_policy(name)
    cands = idle([f"b{i}" for i in range(n)])
    preferred = policy.choose(cands, random.Random(0), key)
    others = [c for c in cands if c is not preferred]
    gone = data.draw(st.sampled_from(others))
    assert policy.choose([c for c in cands if c is not gone], random.Random(0), key) is preferred
    second = policy.rank(cands, random.Random(0), key)[1]
    assert policy.choose(others, random.Random(0), key) is second  # the preferred down: its runner-up
    assert policy.choose(others + [preferred], random.Random(0), key) is preferred  # back: it takes the key again


@pytest.mark.parametrize("name", AFFINITY)
def test_keys_spread_evenly_over_equal_backends(name):
    policy, cands = get_policy(name), idle(["b0", "b1", "b2", "b3"])
    counts = {c.backend.id: 0 for c in cands}
    for i in range(2_000):
        counts[policy.choose(cands, random.Random(0), b"user-%d" % i).backend.id] += 1
    assert all(0.15 * 2_000 <= n <= 0.35 * 2_000 for n in counts.values()), counts


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(AFFINITY), n=st.integers(2, 8), key=keys, base=st.integers(0, 10))
def test_a_backend_far_above_the_mean_load_gives_way_to_the_next_by_weight(name, n, key, base):
    policy = get_policy(name)
    names = [f"b{i}" for i in range(n)]
    by_weight = [c.backend.id for c in policy.rank(idle(names), random.Random(0), key)]
    hot = {by_weight[0]: base * 4 + 10 * n}  # > 1.25 x the mean (sum + 1) / n, whatever the others carry
    loaded = [Candidate(backend(b), hot.get(f"chat@{b}", base), None) for b in names]
    assert policy.choose(loaded, random.Random(0), key).backend.id == by_weight[1]
    ranked = policy.rank(loaded, random.Random(0), key)
    assert [c.backend.id for c in ranked] == by_weight[1:] + by_weight[:1]  # the skipped one after the rest


@pytest.mark.parametrize("name", AFFINITY)
def test_a_backend_at_the_mean_keeps_its_keys(name):
    policy, names = get_policy(name), ["b0", "b1", "b2", "b3"]
    preferred = policy.choose(idle(names), random.Random(0), b"k").backend.id
    loaded = [Candidate(backend(b), 5, None) for b in names]
    assert policy.choose(loaded, random.Random(0), b"k").backend.id == preferred


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(AFFINITY), a=st.integers(0, 20), b=st.integers(0, 20), seed=st.integers(0, 2**32))
def test_without_a_key_the_less_loaded_of_two_is_chosen(name, a, b, seed):
    cands = [Candidate(backend("a"), a, None), Candidate(backend("b"), b, None)]
    chosen = get_policy(name).choose(cands, random.Random(seed))
    assert chosen.in_flight == min(a, b)
    assert get_policy(name).rank(cands, random.Random(seed))[0].in_flight == min(a, b)


@settings(max_examples=150, deadline=None)
@given(cands=candidates, key=keys)
def test_two_router_replicas_agree(cands, key):
    for cls in (SessionPolicy, PrefixPolicy):
        one, other = cls(), cls()  # separate instances and random streams, as on two replicas
        assert one.choose(cands, random.Random(1), key) is other.choose(list(reversed(cands)), random.Random(2), key)


def test_the_weights_are_fixed_across_processes():
    """blake2b, not the salted `hash()`: these picks hold on every replica and every restart."""
    cands = idle(["b0", "b1", "b2", "b3"])
    picks = [get_policy("session").choose(cands, random.Random(0), b"user-%d" % i).backend.target for i in range(8)]
    assert picks == ['b3', 'b2', 'b0', 'b1', 'b2', 'b0', 'b2', 'b1']
