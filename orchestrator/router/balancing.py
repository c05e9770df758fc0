"""Routing policies, registered by name: each ranks the allowed, healthy backends for one request.

A policy is a pure function of (candidates with their observed load, rng); the dispatcher does the I/O.
"""

from __future__ import annotations

import abc
import difflib
import functools
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

    def __init_subclass__(cls, *, name: str, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = name
        _POLICIES[name] = cls

    @abc.abstractmethod
    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        """All candidates, best first."""

    def choose(self, candidates: Sequence[Candidate], rng: random.Random) -> Candidate:
        """`rank(candidates, rng)[0]`; policies override it to find the best without ranking the rest, since the
        dispatcher sends to one backend per attempt and re-chooses after a failure."""
        return self.rank(candidates, rng)[0]

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

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        tiers: dict[float, list[Candidate]] = {}
        for c in candidates:
            tiers.setdefault(_cost_key(c.backend), []).append(c)
        return [c for cost in sorted(tiers) for c in _p2c(tiers[cost], rng)]

    def choose(self, candidates: Sequence[Candidate], rng: random.Random) -> Candidate:
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

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (c.in_flight, rng.random()))

    def choose(self, candidates: Sequence[Candidate], rng: random.Random) -> Candidate:
        low = min(c.in_flight for c in candidates)  # then uniformly among the least loaded, as `rank` does
        return rng.choice([c for c in candidates if c.in_flight == low])


class LatencyPolicy(RoutingPolicy, name="latency"):
    """Lowest EWMA latency first; backends not yet measured go first so they get measured."""

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (-1.0 if c.latency_ms is None else c.latency_ms, rng.random()))

    def choose(self, candidates: Sequence[Candidate], rng: random.Random) -> Candidate:
        keys = [-1.0 if c.latency_ms is None else c.latency_ms for c in candidates]
        low = min(keys)  # then uniformly among the fastest (or the unmeasured), as `rank` does
        return rng.choice([c for c, k in zip(candidates, keys) if k == low])


class CommitmentsPolicy(RoutingPolicy, name="commitments"):
    """Spend what is already paid for: the ladder puts the company's own capacity first (tier 0); among the rest,
    backends whose cloud's credits still have room this month (burned live from the ledger, up to the monthly cap
    the planner spreads them by), then pay-as-you-go; cheapest first in each, balanced by power of two choices.
    Only ever among the candidates the dispatcher hands it: the allowed set of the request's bound."""

    wants_credits = True

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        groups: dict[tuple[bool, float], list[Candidate]] = {}
        for c in candidates:
            groups.setdefault((not c.credited, _cost_key(c.backend)), []).append(c)
        return [c for key in sorted(groups) for c in _p2c(groups[key], rng)]

    def choose(self, candidates: Sequence[Candidate], rng: random.Random) -> Candidate:
        credited = [c for c in candidates if c.credited]
        return get_policy("cost").choose(credited or candidates, rng)


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
