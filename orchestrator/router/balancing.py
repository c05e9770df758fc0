"""Routing policies, registered by name: each ranks the allowed, healthy backends for one request.

A policy is a pure function of (candidates with their observed load, the request's affinity key, rng); the dispatcher
does the I/O.
"""

from __future__ import annotations

import abc
import difflib
import functools
import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from sovra.core.backends import Backend

_POLICIES: dict[str, type[RoutingPolicy]] = {}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A backend and what the router currently observes about it."""

    backend: Backend
    in_flight: int
    latency_ms: float | None  # EWMA; None before the first answer
    credited: bool = False  # its cloud's committed-spend credits have room this month (for `commitments`)


class RoutingPolicy(abc.ABC):
    """Ranks candidates best-first. Subclasses register themselves with `name=`."""

    name: ClassVar[str]
    wants_credits: ClassVar[bool] = False  # the dispatcher fills `Candidate.credited` only for policies that read it
    #: the request key the policy reads, "session" or "prefix"; the app computes a key only for policies that want one
    affinity: ClassVar[str | None] = None

    def __init_subclass__(cls, *, name: str, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = name
        _POLICIES[name] = cls

    @abc.abstractmethod
    def rank(self, candidates: Sequence[Candidate], rng: random.Random, key: bytes | None = None) -> list[Candidate]:
        """All candidates, best first. `key` is the request's affinity key (see `affinity`); others ignore it."""

    def choose(self, candidates: Sequence[Candidate], rng: random.Random, key: bytes | None = None) -> Candidate:
        """`rank(candidates, rng, key)[0]`; policies override it to find the best without ranking the rest, since the
        dispatcher sends to one backend per attempt and re-chooses after a failure."""
        return self.rank(candidates, rng, key)[0]

    def tiers(self, backends: Sequence[Backend]) -> list[tuple[Backend, ...]]:
        """The part of the ranking that depends on the backends alone: groups such that every member of a group
        ranks before every member of a later group, whatever the load. The dispatcher computes them once per
        routing table and residency, then chooses only among the first group that has a free backend."""
        return [tuple(backends)]


def _p2c_first(group: Sequence[Candidate], rng: random.Random) -> Candidate:
    """Power of two choices: of two random members, the less loaded one."""
    if len(group) == 1:
        return group[0]
    a, b = rng.sample(group, 2)
    return a if a.in_flight <= b.in_flight else b


def _p2c(group: list[Candidate], rng: random.Random) -> list[Candidate]:
    """Power of two choices first; the rest follow by load."""
    if len(group) <= 1:
        return group
    first = _p2c_first(group, rng)
    rest = sorted((c for c in group if c is not first), key=lambda c: c.in_flight)
    return [first, *rest]


def _cost_key(backend: Backend) -> float:
    return round(backend.cost, 9)


class CostPolicy(RoutingPolicy, name="cost"):
    """Cheapest allowed backend first; load-balanced by power of two choices among equally cheap ones."""

    def rank(self, candidates: Sequence[Candidate], rng: random.Random, key: bytes | None = None) -> list[Candidate]:
        tiers: dict[float, list[Candidate]] = {}
        for c in candidates:
            tiers.setdefault(_cost_key(c.backend), []).append(c)
        return [c for cost in sorted(tiers) for c in _p2c(tiers[cost], rng)]

    def choose(self, candidates: Sequence[Candidate], rng: random.Random, key: bytes | None = None) -> Candidate:
        costs = [round(c.backend.cost, 9) for c in candidates]  # _cost_key inlined: the request path
        cheapest = min(costs)
        return _p2c_first([c for c, cost in zip(candidates, costs) if cost == cheapest], rng)

    def tiers(self, backends: Sequence[Backend]) -> list[tuple[Backend, ...]]:
        groups: dict[float, list[Backend]] = {}
        for b in backends:
            groups.setdefault(_cost_key(b), []).append(b)
        return [tuple(groups[cost]) for cost in sorted(groups)]


class LeastLoadPolicy(RoutingPolicy, name="least_load"):
    """Fewest in-flight requests first; ties broken at random so load spreads."""

    def rank(self, candidates: Sequence[Candidate], rng: random.Random, key: bytes | None = None) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (c.in_flight, rng.random()))

    def choose(self, candidates: Sequence[Candidate], rng: random.Random, key: bytes | None = None) -> Candidate:
        low = min(c.in_flight for c in candidates)  # then uniformly among the least loaded, as `rank` does
        return rng.choice([c for c in candidates if c.in_flight == low])


class LatencyPolicy(RoutingPolicy, name="latency"):
    """Lowest EWMA latency first; backends not yet measured go first so they get measured."""

    def rank(self, candidates: Sequence[Candidate], rng: random.Random, key: bytes | None = None) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (-1.0 if c.latency_ms is None else c.latency_ms, rng.random()))

    def choose(self, candidates: Sequence[Candidate], rng: random.Random, key: bytes | None = None) -> Candidate:
        keys = [-1.0 if c.latency_ms is None else c.latency_ms for c in candidates]
        low = min(keys)  # then uniformly among the fastest (or the unmeasured), as `rank` does
        return rng.choice([c for c, k in zip(candidates, keys) if k == low])


class CommitmentsPolicy(RoutingPolicy, name="commitments"):
    """Spend what is already paid for: the ladder puts the company's own capacity first (tier 0); among the rest,
    backends whose cloud's credits still have room this month (burned live from the ledger, up to the monthly cap
    the planner spreads them by), then pay-as-you-go; cheapest first in each, balanced by power of two choices.
    Only ever among the candidates the dispatcher hands it: the allowed set of the request's bound."""

    wants_credits = True

    def rank(self, candidates: Sequence[Candidate], rng: random.Random, key: bytes | None = None) -> list[Candidate]:
        groups: dict[tuple[bool, float], list[Candidate]] = {}
        for c in candidates:
            groups.setdefault((not c.credited, _cost_key(c.backend)), []).append(c)
        return [c for g in sorted(groups) for c in _p2c(groups[g], rng)]

    def choose(self, candidates: Sequence[Candidate], rng: random.Random, key: bytes | None = None) -> Candidate:
        credited = [c for c in candidates if c.credited]
        return get_policy("cost").choose(credited or candidates, rng)


#: how far above the mean load a backend may run before affinity gives way (Mirrokni et al.'s c): a hot key can
#: then load its backend to about 1.25x the mean, never the whole rung
_LOAD_BOUND = 1.25


def _by_affinity(candidates: Sequence[Candidate], key: bytes) -> list[Candidate]:
    """Highest random weight first (rendezvous hashing); those loaded past the bound after the rest, by weight.

    A candidate's weight is blake2b of (key, its id): stable across processes and replicas (unlike `hash()`), and
    per (key, backend), so losing a backend moves only the keys it had and its return takes them back."""
    seed = hashlib.blake2b(key, digest_size=8)

    def weight(c: Candidate) -> bytes:
        bid = c.backend.id.encode()
        h = seed.copy()
        h.update(bid)
        return h.digest() + bid  # as in `_Affinity.choose`

    ordered = sorted(candidates, key=weight, reverse=True)
    cap = math.ceil(_LOAD_BOUND * (sum(c.in_flight for c in candidates) + 1) / len(candidates))
    return [c for c in ordered if c.in_flight < cap] + [c for c in ordered if c.in_flight >= cap]


class _Affinity:
    """Sends equal keys to the same backend of the rung, within a bounded load; power of two choices without a key.

    Only the rung matters (`tiers` does not split by cost), else the cheapest backend would always win and
    affinity could never move inside the rung. Nothing is kept per key: keys come from clients."""

    def rank(self, candidates: Sequence[Candidate], rng: random.Random, key: bytes | None = None) -> list[Candidate]:
        return _p2c(list(candidates), rng) if key is None else _by_affinity(candidates, key)

    def choose(self, candidates: Sequence[Candidate], rng: random.Random, key: bytes | None = None) -> Candidate:
        if key is None or len(candidates) == 1:
            return _p2c_first(candidates, rng)
        cap = math.ceil(_LOAD_BOUND * (sum(c.in_flight for c in candidates) + 1) / len(candidates))
        seed = hashlib.blake2b(key, digest_size=8)
        best, best_w = candidates[0], b""  # some candidate is under the cap: the least loaded is at most the mean
        for c in candidates:
            if c.in_flight < cap:
                bid = c.backend.id.encode()
                h = seed.copy()
                h.update(bid)
                w = h.digest() + bid  # the 8 bytes compare as the 64-bit weight would; the id breaks a tie
                if w > best_w:
                    best, best_w = c, w
        return best

    def tiers(self, backends: Sequence[Backend]) -> list[tuple[Backend, ...]]:
        return [tuple(backends)]


class SessionPolicy(_Affinity, RoutingPolicy, name="session"):
    """One conversation on one backend (its KV cache, any server-side session): keyed by `X-Session-Id`, else the
    OpenAI `user` field."""

    affinity = "session"


class PrefixPolicy(_Affinity, RoutingPolicy, name="prefix"):
    """Prompts that share their opening on one backend, so its engine's prefix cache hits: keyed by a digest of
    the prompt's first characters."""

    affinity = "prefix"


@functools.cache
def get_policy(name: str) -> RoutingPolicy:
    """The policy registered as `name` (stateless, so one shared instance), or ValueError with a suggestion."""
    try:
        return _POLICIES[name]()
    except KeyError:
        close = difflib.get_close_matches(name, _POLICIES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown routing policy {name!r}{hint}; known: {', '.join(sorted(_POLICIES))}") from None


def policy_names() -> tuple[str, ...]:
    return tuple(sorted(_POLICIES))
