"""Backends (live endpoints with their place and price) and the routing table produced by `up`, keyed by deployment.

`Backend` is the one record of a backend: `up` writes it into the router's config, the router and `/v1/routes`
read it, the SDK and `sovra status` too. It is serialised in one place (`to_wire` / `from_wire`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sovra.core.api_errors import AmbiguousModel, ModelNotFound
from sovra.core.spec.common import Residency, routing_policy
from sovra.core.place import Place


class Backend(BaseModel):
    """One endpoint the router may send to, with its deployment's residency and routing policy.

    `kind` names the provider adapter that reaches it (`ray`, `openai-compatible`, `aws-bedrock`, ...); `address`
    is what that adapter calls (a Serve app name, a base URL, an endpoint name, a vendor model id) and `params` the
    rest of the adapter's non-secret settings (region, workspace, host). Credentials never appear here: each adapter
    takes them from its SDK's standard chain where the router runs. `cost` is the relative price of one request
    there. `tier` is the spillover ladder's rung: 0 for the company's own replicas and endpoints (already paid for),
    1 for managed per-token offerings, tried only when tier 0 is saturated or down. `capacity` caps the requests
    in flight there (None: the router's default). `cloud` and `usd_per_1k_tokens` price its answers in the
    ledger (no per-token price: capacity already paid for, 0 USD per answer). The deployment's residency travels
    with every backend so that no request to it can be routed by a bound wider than the deployment's own.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    deployment: str = Field(min_length=1)
    model: str = Field(min_length=1)
    target: str = Field(min_length=1)
    place: Place
    residency: Residency
    policy: str = "cost"
    cost: float = Field(default=0.0, ge=0)
    kind: str = "ray"
    address: str = Field(min_length=1)
    params: dict[str, str] = Field(default_factory=dict)
    tier: int = Field(default=0, ge=0, le=1)
    capacity: int | None = Field(default=None, ge=1)
    cloud: str | None = None  # the billing account family (credits are per cloud); None in tables before 0.2
    over_budget: Literal["refuse", "spill"] = "refuse"  # the deployment's `routing.over_budget`
    #: owned capacity's replica-hour spread over the tokens the org says a replica serves an hour (ledger only: the
    #: capacity is paid for either way, so it stays on the paid-for rung and burns no credit per answer)
    amortised_usd_per_1k_tokens: float | None = Field(default=None, ge=0)
    usd_per_1k_tokens: float | None = Field(default=None, ge=0)  # list price per token; None: capacity paid for
    #: a locale's variant (`spec.locales`): the deployment it varies and its BCP 47 locale; reached only through it
    variant_of: str | None = None
    locale: str | None = None

    def __hash__(self) -> int:  # `params` is a dict; equal backends share an id, so the id is a sound hash
        return hash(self.id)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        return routing_policy(value)

    @property
    def zone(self) -> str:
        return self.place.zone

    def to_wire(self) -> dict[str, Any]:
        """The JSON form, as written into the router's Serve config and served by `/v1/routes`."""
        return self.model_dump(mode="json")

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Backend:
        return cls.model_validate(data)

    def keeping(self, params: Collection[str]) -> Backend:
        """This backend with only `params` of its params (the narrowed form `/v1/routes` gives a tenant: see
        `providers.base.for_tenant`)."""
        if set(self.params) <= set(params):
            return self
        return self.model_copy(update={"params": {k: v for k, v in self.params.items() if k in params}})


_SPILLS: dict[Route, tuple[Route | None]] = {}


@dataclass(frozen=True, slots=True)
class Route:
    """What a request's `model` resolved to: one deployment, or several sharing one residency and policy."""

    name: str
    deployments: tuple[str, ...]
    model: str
    residency: Residency
    policy: str
    backends: tuple[Backend, ...]
    over_budget: str = "refuse"
    paid_only: bool = False  # narrowed to capacity already paid for (a spill over a USD budget)
    #: on a deployment with locale variants: locale -> the variant's route name (in `RoutingTable.routes`)
    variants: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    variant_of: str | None = None  # on a variant's route: the deployment it varies
    locale: str | None = None

    def spill(self) -> Route | None:
        """This route narrowed to the backends already paid for (no per-token price), where its deployment spills
        over a USD budget and has any; None otherwise. Cached: the request path asks for it per refused request."""
        cache = _SPILLS.get(self)
        if cache is None:
            paid = tuple(b for b in self.backends if not b.usd_per_1k_tokens)
            cache = (dataclasses.replace(self, backends=paid, paid_only=True),) if (
                self.over_budget == "spill" and paid and not self.paid_only) else (None,)
            if len(_SPILLS) < 4096:
                _SPILLS[self] = cache
        return cache[0]


@dataclass(frozen=True)
class RoutingTable:
    """deployment -> its route, immutable; `up` builds a new table rather than editing one."""

    routes: Mapping[str, Route]
    by_model: Mapping[str, tuple[str, ...]]  # model name -> deployments serving it
    _resolved: dict[tuple[str, frozenset[str] | None], Route | Exception] = field(
        default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, backends: Iterable[Backend]) -> RoutingTable:
        grouped: dict[str, list[Backend]] = {}
        for b in backends:
            grouped.setdefault(b.deployment, []).append(b)
        routes: dict[str, Route] = {}
        by_model: dict[str, list[str]] = {}
        variants: dict[str, dict[str, str]] = {}
        for name, bs in sorted(grouped.items()):
            first = bs[0]
            odd = [b.id for b in bs if (b.model, b.residency, b.policy, b.over_budget, b.variant_of, b.locale) != (
                first.model, first.residency, first.policy, first.over_budget, first.variant_of, first.locale)]
            if odd:
                raise ValueError(f"deployment {name!r}: backends {', '.join(odd)} disagree with {first.id} on model, "
                                 "residency, policy, over_budget or variant; one deployment has one of each")
            if first.variant_of is not None and first.locale is not None:
                # a variant's budgets are its base's too: both names are the deployments it may land on
                routes[name] = Route(name, (name, first.variant_of), first.model, first.residency, first.policy,
                                     tuple(sorted(bs, key=lambda b: b.id)), first.over_budget,
                                     variant_of=first.variant_of, locale=first.locale)
                variants.setdefault(first.variant_of, {})[first.locale] = name
                continue
            routes[name] = Route(name, (name,), first.model, first.residency, first.policy,
                                 tuple(sorted(bs, key=lambda b: b.id)), first.over_budget)
            by_model.setdefault(first.model, []).append(name)
        for base, of in variants.items():  # a variant whose deployment has no backend is unreachable: dropped
            if base in routes:
                routes[base] = dataclasses.replace(routes[base], variants=MappingProxyType(dict(sorted(of.items()))))
        routes = {n: r for n, r in routes.items() if r.variant_of is None or r.variant_of in routes}
        return cls(MappingProxyType(routes), MappingProxyType({m: tuple(ds) for m, ds in by_model.items()}))

    @property
    def backends(self) -> tuple[Backend, ...]:
        return tuple(b for r in self.routes.values() for b in r.backends)

    def names(self, visible: Collection[str] | None = None) -> tuple[str, ...]:
        """The deployments a caller limited to `visible` (None = all) can address (a locale's variant only
        through the deployment it varies)."""
        return tuple(n for n, r in self.routes.items() if r.variant_of is None and (visible is None or n in visible))

    def resolve(self, name: str, visible: frozenset[str] | None = None) -> Route:
        """The route for a request's `model`: a deployment's name, or a bare model name that is unambiguous.

        Deployments outside `visible` do not exist for the caller (404, as for a name nobody serves). A bare model
        name served by visible deployments that differ in residency or policy is a 400 naming them. Cached per
        table: the answer depends only on the table, the name and the visible set.
        """
        key = (name, visible)
        hit = self._resolved.get(key)
        if hit is None:
            try:
                hit = self._resolve(name, visible)
            except (ModelNotFound, AmbiguousModel) as exc:
                hit = exc
            if len(self._resolved) < 4096:  # bounded: names come from clients
                self._resolved[key] = hit
        if isinstance(hit, Exception):
            raise type(hit)(hit.message)
        return hit

    def _resolve(self, name: str, visible: frozenset[str] | None) -> Route:
        route = self.routes.get(name)
        if route is not None and route.variant_of is None and (visible is None or name in visible):
            return route
        serving = [self.routes[d] for d in self.by_model.get(name, ()) if visible is None or d in visible]
        if not serving:
            known = ", ".join(self.names(visible)) or "none"
            raise ModelNotFound(f"model {name!r} is not served here; deployments you can call: {known}")
        if len(serving) == 1:
            return serving[0]
        if len({(r.residency, r.policy) for r in serving}) > 1:
            options = "; ".join(f"{r.name} ({r.residency.describe()}, policy {r.policy})" for r in serving)
            raise AmbiguousModel(f"model {name!r} is served by deployments with different residency or routing "
                                 f"policy: {options}. Name the deployment in `model`.")
        first = serving[0]
        spill = "spill" if all(r.over_budget == "spill" for r in serving) else "refuse"  # the strictest
        return Route(name, tuple(r.name for r in serving), first.model, first.residency, first.policy,
                     tuple(sorted((b for r in serving for b in r.backends), key=lambda b: b.id)), spill)
