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

from orchestrator.router.backends import Backend

_POLICIES: dict[str, type[RoutingPolicy]] = {}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A backend and what the router currently observes about it."""

    backend: Backend
    in_flight: int
    latency_ms: float | None  # EWMA; None before the first answer


class RoutingPolicy(abc.ABC):
    """Ranks candidates best-first. Subclasses register themselves with `name=`."""

    name: ClassVar[str]

    def __init_subclass__(cls, *, name: str, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = name
        _POLICIES[name] = cls

    @abc.abstractmethod
    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        """All candidates, best first (the dispatcher fails over down this list)."""


def _p2c(group: list[Candidate], rng: random.Random) -> list[Candidate]:
    """Power of two choices: of two random members, the less loaded goes first; the rest follow by load."""
    if len(group) <= 1:
        return group
    a, b = rng.sample(group, 2)
    first = a if a.in_flight <= b.in_flight else b
    rest = sorted((c for c in group if c is not first), key=lambda c: c.in_flight)
    return [first, *rest]


class CostPolicy(RoutingPolicy, name="cost"):
    """Cheapest allowed backend first; load-balanced by power of two choices among equally cheap ones."""

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        tiers: dict[float, list[Candidate]] = {}
        for c in candidates:
            tiers.setdefault(round(c.backend.cost, 9), []).append(c)
        return [c for cost in sorted(tiers) for c in _p2c(tiers[cost], rng)]


class LeastLoadPolicy(RoutingPolicy, name="least_load"):
    """Fewest in-flight requests first; ties broken at random so load spreads."""

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (c.in_flight, rng.random()))


class LatencyPolicy(RoutingPolicy, name="latency"):
    """Lowest EWMA latency first; backends not yet measured go first so they get measured."""

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (-1.0 if c.latency_ms is None else c.latency_ms, rng.random()))


@functools.cache
def get_policy(name: str) -> RoutingPolicy:
    """The policy registered as `name` (stateless, so one shared instance), or ValueError with a suggestion."""
    try:
        return _POLICIES[name]()
    except KeyError:
        close = difflib.get_close_matches(name, _POLICIES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown routing policy {name!r}{hint} Known: {', '.join(sorted(_POLICIES))}") from None


def policy_names() -> tuple[str, ...]:
    return tuple(sorted(_POLICIES))
