"""Backends (live endpoints with their place and price) and the routing table produced by `up`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from policies.residency import Place


@dataclass(frozen=True, slots=True)
class Backend:
    """One endpoint the router may send to. `cost` is the relative price of one request there."""

    id: str
    model: str
    target: str
    place: Place
    cost: float = 0.0
    kind: str = "ray"          # how the router reaches it: a Ray Serve handle, or "http"
    address: str | None = None  # base URL for http backends / deployment name for ray

    @property
    def zone(self) -> str:
        return self.place.zone


@dataclass(frozen=True)
class RoutingTable:
    """model -> backends, immutable; `up` builds a new table rather than editing one."""

    by_model: Mapping[str, tuple[Backend, ...]]

    @classmethod
    def of(cls, backends: Iterable[Backend]) -> RoutingTable:
        grouped: dict[str, list[Backend]] = {}
        for b in backends:
            grouped.setdefault(b.model, []).append(b)
        return cls(MappingProxyType({m: tuple(sorted(bs, key=lambda b: b.id)) for m, bs in grouped.items()}))

    def models(self) -> tuple[str, ...]:
        return tuple(sorted(self.by_model))

    def get(self, model: str) -> tuple[Backend, ...] | None:
        return self.by_model.get(model)
