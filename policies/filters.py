"""Hard rules: may a deployment run on a target at all? Each failed rule becomes a reason a person can act on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sovra.core.errors import SpecError, SpecIssue
from sovra.core.spec.common import Accelerator
from sovra.core.spec.deployment import Deployment
from sovra.core.spec.target import Target
from sovra.policies import costs
from sovra.policies.licenses import LicensePack
from sovra.policies.plan import Candidate, Rejection
from sovra.core.place import Place
from sovra.policies.residency import violations

#: Reason prefixes, in the order rules are checked; used to group rejections when explaining infeasibility.
RULES = ("residency", "sovereignty", "certifications", "licence", "model", "accelerator", "capacity")


def egress_prices(targets: Sequence[Target]) -> dict[str, float]:
    """cloud/region -> egress USD/GB, from the first target there by id (computed once per plan)."""
    price_at: dict[str, float] = {}
    for t in sorted(targets, key=lambda t: t.id):
        price_at.setdefault(t.location, t.egress_usd_per_gb)
    return price_at


def data_sources(deployment: Deployment, price_at: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """location -> (monthly GB, egress USD/GB): the price is the deployment's override or the catalog's there."""
    out: dict[str, tuple[float, float]] = {}
    issues = []
    for i, src in enumerate(deployment.spec.data):
        price = src.egress_usd_per_gb if src.egress_usd_per_gb is not None else price_at.get(src.location)
        if price is None:
            known = ", ".join(sorted(price_at)[:12])
            issues.append(SpecIssue(deployment.name, None, None, f"spec.data[{i}].location",
                                    f"{src.location} matches no target's cloud/region, so its egress price is "
                                    f"unknown; set egress_usd_per_gb or use a known location (e.g. {known}, ...)"))
            continue
        gb, _ = out.get(src.location, (0.0, price))
        out[src.location] = (gb + src.monthly_gb, price)
    if issues:
        raise SpecError(issues)
    return out


def cheapest_fitting(target: Target, need_gb: float) -> Accelerator | None:
    """The cheapest instance type that fits the model and has capacity left (ties: sku name)."""
    fitting = [a for a in target.accelerators if a.total_memory_gb >= need_gb and a.available != 0]
    return min(fitting, key=lambda a: (a.usd_per_hour, a.sku), default=None)


def evaluate(
    deployment: Deployment,
    target: Target,
    licenses: LicensePack,
    sources: Mapping[str, tuple[float, float]],
) -> Candidate | Rejection:
    """Check every hard rule; a target that passes all of them becomes a priced candidate."""
    spec = deployment.spec
    reasons = list(violations(spec.residency, Place.of(target)))
    missing = [c for c in spec.certifications if c.lower() not in {x.lower() for x in target.certifications}]
    if missing:
        reasons.append(f"certifications: missing {', '.join(missing)}")
    reasons.extend(licenses.reasons(spec.model.license, self_hosted=not target.managed))

    accelerator: Accelerator | None = None
    unit = 0.0
    adapter = spec.variant_of.adapter if spec.variant_of is not None else None
    if target.managed:
        # a locale's LoRA adapter is served where the endpoint lists it (its engine loads it: vLLM --lora-modules)
        offer = target.model_price(spec.served_model)
        if offer is None:
            offered = ", ".join(m.name for m in target.models)
            what = f"the LoRA adapter {adapter} (on {spec.model.name})" if adapter else spec.model.name
            reasons.append(f"model: {what} is not offered here (offers: {offered})")
        else:
            unit = costs.managed_monthly_usd(offer, spec.traffic)
    elif adapter is not None:
        reasons.append(f"model: the LoRA adapter {adapter} needs an endpoint that loads it (org.yaml `endpoints:` "
                       "listing it in `models`, e.g. vLLM's server with --lora-modules, or NIM); Sovra's own engines "
                       "on Ray targets do not load adapters")
    elif spec.model.gpu_memory_gb is None:
        reasons.append("model: gpu_memory_gb is not declared, so the model cannot be self-hosted here")
    else:
        need = spec.model.gpu_memory_gb
        fits = [a for a in target.accelerators if a.total_memory_gb >= need]
        if not fits:
            big = max(target.accelerators, key=lambda a: a.total_memory_gb)
            reasons.append(f"accelerator: no instance type has {need:g} GB of GPU memory (largest: {big.sku} with "
                           f"{big.gpus}×{big.gpu_memory_gb:g} = {big.total_memory_gb:g} GB)")
        else:
            accelerator = cheapest_fitting(target, need)
            if accelerator is None:
                reasons.append(f"capacity: no instances left of {', '.join(a.sku for a in fits)}")
            else:
                unit = costs.replica_monthly_usd(accelerator)
    if reasons:
        return Rejection(target.id, tuple(reasons))
    return Candidate(
        target=target.id,
        accelerator=accelerator.sku if accelerator else None,
        unit_usd=unit,
        egress_if_all_usd=costs.egress_usd_if_all(target.location, sources),
    )
