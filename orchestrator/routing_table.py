"""The routing table `up` hands the router: one `Backend` per placement, built here and only here.

A Ray placement is reached through its Serve app (`backend_entry`); any other through its provider adapter's
`locate` (`routed_entry`). `router_backends` merges a redeploy into the table a cluster's router already has.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sovra.core.backends import Backend
from sovra.core.errors import ProviderError
from sovra.core.place import Place
from sovra.core.spec import Deployment, Target
from sovra.core.spec.org import Endpoint
from sovra.infra.serve_config import (
    HOURS_PER_MONTH,
    MAX_ONGOING_PER_REPLICA,
    REPLICA_KEY_ENV,
    RayPlacement,
    ServeHttp,
    app_name,
    replica_ceiling,
)
from sovra.policies.plan import Placement
from sovra.providers import base
from sovra.providers.base import needs_provisioning


def backend_entry(rp: RayPlacement, http: ServeHttp | None = None) -> Backend:
    """The router's view of `rp`: where it processes, under which deployment residency and routing policy, and
    what a replica-hour costs at list price. Its address is the Serve app (handles, replica states); with `http`
    its params say where the router reaches it over HTTP and which variable holds the key (never the key).

    List price (not net of credits) keeps the entry stable from day to day, so `up` does not restart the router
    just because a credit moved closer to expiry.
    """
    d, p, t = rp.deployment, rp.placement, rp.target
    unit = p.compute_usd / p.replicas / HOURS_PER_MONTH if p.replicas else 0.0
    name = app_name(d.name, t.id)
    params = ({"url": f"http://127.0.0.1:{http.port}{http.route(name)}", "api_key_env": REPLICA_KEY_ENV}
              if http is not None else {})
    return Backend(id=name, deployment=d.name, model=d.spec.served_model, target=t.id, place=Place.of(t),
                   residency=d.spec.residency, policy=d.spec.routing.policy, cost=round(unit, 6), kind="ray",
                   address=name, params=params, capacity=replica_ceiling(rp) * MAX_ONGOING_PER_REPLICA,
                   cloud=t.cloud, over_budget=d.spec.routing.over_budget,
                   amortised_usd_per_1k_tokens=_amortised(unit, getattr(t, "tokens_per_replica_hour", None)),
                   **_variant(d))


def _variant(d: Deployment) -> dict[str, str]:
    """A locale variant's link to the deployment it varies (the router reaches it only through that one)."""
    v = d.spec.variant_of
    return {"variant_of": v.base, "locale": v.locale} if v is not None else {}


def _amortised(usd_per_replica_hour: float, tokens_per_hour: int | None) -> float | None:
    """A replica-hour's price per 1,000 of the tokens the org says a replica serves in an hour."""
    if not tokens_per_hour:
        return None
    return round(usd_per_replica_hour / tokens_per_hour * 1000, 9)


def routed_entry(d: Deployment, p: Placement, t: Target, connection: Mapping[str, Any]) -> Backend:
    """The router's view of a placement that needs no Serve app: a managed per-token offering (Bedrock, Cortex,
    Databricks pay-per-token, Azure serverless) or an endpoint the org already runs (`endpoints:` in org.yaml).
    Its provider adapter says where it is (`locate`; ProviderError with the fix when it cannot). Org endpoints
    are the company's own capacity: the ladder's first rung with the Ray replicas; managed offerings the second.
    `cost` is the list price per 1,000 tokens."""

    if needs_provisioning(t):
        raise ProviderError(
            f"{t.id}: a dedicated {t.provider} endpoint must be created first, and `up`'s Pulumi step did not create "
            f"it (skipped with --ray-only, or its stack failed); run `sovra up` without --ray-only, or name an "
            f"existing endpoint serving {d.spec.model.name} under `endpoints:` in org.yaml")
    adapter = base.get(t.provider)
    served = d.spec.served_model  # a locale's LoRA adapter: the endpoint's engine selects it by `model`
    where = adapter.locate(t, served, adapter.connection(connection))
    price = t.model_price(served)
    own = isinstance(t, Endpoint)
    params = dict(where.params)
    return Backend(id=f"{d.name}@{t.id}", deployment=d.name, model=d.spec.served_model, target=t.id,
                   place=Place.of(t), residency=d.spec.residency, policy=d.spec.routing.policy,
                   cost=round(price.usd_per_1k_tokens, 6) if price else 0.0, kind=t.provider,
                   address=where.address, params=params, tier=0 if own else 1,
                   capacity=getattr(t, "capacity", None), cloud=t.cloud, over_budget=d.spec.routing.over_budget,
                   usd_per_1k_tokens=price.usd_per_1k_tokens if price else None, **_variant(d))


class StaleRouterError(ValueError):
    """The cluster's router was deployed by a Sovra whose routing table this one cannot read."""


def router_backends(current_router: Mapping[str, Any] | None, deployments: Collection[str],
                    new_backends: Sequence[Backend]) -> list[Backend]:
    """The routing table after `deployments` are (re)deployed with `new_backends` (or removed with none)."""
    old = []
    for raw in (current_router or {}).get("args", {}).get("backends", []):
        try:
            old.append(Backend.from_wire(raw))
        except ValueError as exc:
            raise StaleRouterError(
                f"the router on this cluster lists backend {raw.get('id')!r} in a form this Sovra cannot read "
                f"(deployed by an earlier version?): {exc}. Run `sovra down` for its deployments, then `sovra up`."
            ) from None
    _no_name_clash(old, deployments, new_backends)
    # a redeployed deployment's variants go with it: a locale dropped from its file leaves no stale variant
    return [b for b in old if b.deployment not in deployments and b.variant_of not in deployments] + list(new_backends)


def _no_name_clash(old: Sequence[Backend], deployments: Collection[str], new: Sequence[Backend]) -> None:
    """A deployment named like another's locale variant (`support.fr` beside `support`'s fr variant) would take
    its routes, silently: refused, naming both, unless the deployment being redeployed is the one that owns it."""
    was = {b.deployment: b.variant_of for b in old}
    for b in new:
        if b.deployment in was and was[b.deployment] != b.variant_of:
            owner = (f"the {b.deployment.rsplit('.', 1)[-1]} variant of {was[b.deployment]!r}"
                     if was[b.deployment] else "a deployment of its own")
            now = f"a variant of {b.variant_of!r}" if b.variant_of else "a deployment of its own"
            raise StaleRouterError(
                f"{b.deployment!r} on this router is {owner}; this `up` would replace it with {now}. Rename one, or "
                f"run `sovra down` for the one on the router first")
