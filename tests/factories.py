"""Tiny builders for spec objects, so tests state only what matters to them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sovra.core.spec import Deployment, Target
from sovra.core.spec.org import Credit, OrgPolicy
from sovra.policies.licenses import license_pack
from sovra.policies.placement import SolveOptions, plan_fleet

AS_OF = dt.date(2026, 11, 22)
OPERATORS = {"aws": ("amazon", "US"), "azure": ("microsoft", "US"), "onprem": ("self", "FR")}


def target(tid: str, *, cloud: str = "aws", country: str | None = "FR", zone: str | None = None,
           jurisdiction: str | None = None, price: float | None = 1.0, gpus: int = 1, gb: float = 80,
           available: int | None = None, models: dict[str, float] | None = None, certs=(), egress: float = 0.0,
           region: str | None = None, provider: str | None = None) -> Target:
    from sovra.core.spec.zones import zone_of

    op, home = OPERATORS.get(cloud, (cloud, "US"))
    raw: dict[str, Any] = {
        "id": tid, "provider": provider or ("ray" if cloud == "onprem" else "aws-sagemaker"),
        "cloud": cloud, "region": region or tid.split("/")[-1], "country": country,
        "zone": zone or (zone_of(country) if country else "GLOBAL"),
        "operator": {"name": op, "jurisdiction": jurisdiction or home},
        "certifications": list(certs), "egress_usd_per_gb": egress,
    }
    if models:
        raw["models"] = [{"name": n, "usd_per_1k_tokens": p} for n, p in models.items()]
        raw["provider"] = provider or "aws-bedrock"
    else:
        raw["accelerators"] = [{"sku": f"gpu{gb:g}x{gpus}", "gpus": gpus, "gpu_memory_gb": gb,
                                "usd_per_hour": price, "available": available}]
    return Target.model_validate(raw)


def deployment(name: str = "d", *, model: str = "m", gb: float | None = 40, replicas: int = 1,
               residency: dict | None = None, min_targets: int = 1, data=(), rps: float = 0, tokens: float = 0,
               budget: float | None = None, license: str = "apache-2.0", certs=()) -> Deployment:
    spec: dict[str, Any] = {
        "model": {"name": model, "gpu_memory_gb": gb, "license": license},
        "replicas": {"min": replicas},
        "residency": residency or {},
        "placement": {"min_targets": min_targets},
        "data": [{"location": loc, "monthly_gb": g, **({"egress_usd_per_gb": p} if p is not None else {})}
                 for loc, g, p in data],
        "traffic": {"requests_per_second": rps, "tokens_per_request": tokens},
        "certifications": list(certs),
    }
    if budget is not None:
        spec["budget"] = {"monthly_usd": budget}
    return Deployment.model_validate({"apiVersion": "sovra/v1", "kind": "Deployment", "metadata": {"name": name},
                                      "spec": spec})


def credit(cloud: str, usd: float, expires: dt.date) -> Credit:
    return Credit(cloud=cloud, usd=usd, expires=expires)


def solve(deps, targets, credits=(), *, as_of=AS_OF, policy: OrgPolicy | None = None, **kw):
    return plan_fleet(list(deps), list(targets), credits=list(credits), licenses=license_pack(policy or OrgPolicy()),
                      as_of=as_of, options=SolveOptions(**kw.pop("options", {})), **kw)


def backend(name: str, place, *, cost: float = 1.0, deployment: str = "m", model: str = "m",
            residency: Any = None, policy: str = "cost", kind: str = "ray", address: str | None = None):
    """A routing-table record: backend `name` of `deployment` at `place` (a policies.residency.Place)."""
    from sovra.core.backends import Backend
    from sovra.core.spec import Residency

    return Backend(id=f"{deployment}@{name}", deployment=deployment, model=model, target=name, place=place,
                   residency=residency if residency is not None else Residency(), policy=policy, cost=cost,
                   kind=kind, address=address or f"sovra.{deployment}.{name}")
