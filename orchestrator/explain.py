"""`sovra explain`: why one target was chosen or rejected for a deployment, with the cost behind it."""

from __future__ import annotations

import difflib
from typing import Any

from rich.console import Console

from sovra.core.errors import SpecError, SpecIssue
from sovra.orchestrator.planning import Inputs, plan
from sovra.orchestrator.render import deployment_json, placement_json
from sovra.policies import costs, filters


def explain_target(inputs: Inputs, target_id: str, deployment: str | None = None) -> dict[str, Any]:
    """A JSON-ready explanation; forcing the target in prices the road not taken."""
    names = [d.name for d in inputs.deployments]
    if deployment is None and len(names) > 1:
        raise SpecError([SpecIssue("command line", None, None, "--deployment",
                                   f"the file holds several deployments; pick one of: {', '.join(names)}")])
    name = deployment or names[0]
    if name not in names:
        raise SpecError([SpecIssue("command line", None, None, "--deployment",
                                   f"no deployment {name!r}; choose from: {', '.join(names)}")])
    by_id = {t.id: t for t in inputs.targets}
    if target_id not in by_id:
        close = difflib.get_close_matches(target_id, by_id, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; list them with `sovra targets`"
        raise SpecError([SpecIssue("command line", None, None, "--target", f"unknown target {target_id!r}{hint}")])

    target = by_id[target_id]
    dep = next(d for d in inputs.deployments if d.name == name)
    fleet = plan(inputs)
    dplan = next(p for p in fleet.deployments if p.deployment == name)
    result: dict[str, Any] = {"deployment": name, "target": target_id, "provider": target.provider,
                              "zone": target.zone, "country": target.country,
                              "operator": target.operator.model_dump()}

    rejected = next((r for r in dplan.rejected if r.target == target_id), None)
    if rejected is not None:
        return {**result, "status": "rejected", "reasons": list(rejected.reasons)}

    cand = next(c for c in dplan.candidates if c.target == target_id)
    placement = next((p for p in dplan.placements if p.target == target_id), None)
    sources = filters.data_sources(dep, filters.egress_prices(inputs.targets))
    breakdown: dict[str, Any] = {}
    if cand.accelerator is not None:
        acc = next(a for a in target.accelerators if a.sku == cand.accelerator)
        breakdown["compute"] = (f"{acc.sku}: ${acc.usd_per_hour:g}/h × {costs.HOURS_PER_MONTH} h = "
                                f"${cand.unit_usd:,.2f} per replica-month")
    else:
        offer = target.model_price(dep.spec.served_model)
        t = dep.spec.traffic
        breakdown["compute"] = (f"{t.requests_per_second:g} req/s × {costs.SECONDS_PER_MONTH:,} s × "
                                f"{t.tokens_per_request:g} tokens / 1000 × ${offer.usd_per_1k_tokens:g} = "
                                f"${cand.unit_usd:,.2f}/month for all traffic")
    breakdown["egress"] = [
        {"source": loc, "monthly_gb": gb, "usd_per_gb": price,
         "charged": loc != target.location, "usd_if_all_data": round(gb * price, 2) if loc != target.location else 0}
        for loc, (gb, price) in sorted(sources.items())
    ]
    cap = fleet.credit_caps.get(target.cloud, 0.0)
    breakdown["credits"] = (f"{target.cloud} credits may pay up to ${cap:,.2f}/month, shared by the plan"
                            if cap else f"no unexpired {target.cloud} credits")
    result["breakdown"] = breakdown
    if placement is not None:
        return {**result, "status": "chosen", "placement": placement_json(placement),
                "plan_monthly_usd": round(dplan.monthly_usd, 2)}

    forced = plan(inputs, require=[(name, target_id)])
    fplan = next(p for p in forced.deployments if p.deployment == name)
    result["status"] = "not_chosen"
    result["plan_monthly_usd"] = round(dplan.monthly_usd, 2)
    if fplan.feasible:
        extra = forced.monthly_usd - fleet.monthly_usd
        result["forced_plan"] = deployment_json(fplan)
        result["extra_monthly_usd"] = round(extra, 2)
        result["why"] = (f"eligible, but using it costs ${extra:,.2f}/month more "
                         f"(fleet ${forced.monthly_usd:,.2f} vs ${fleet.monthly_usd:,.2f})")
    else:
        result["why"] = "eligible alone, but no plan that uses it meets every constraint: " + "; ".join(
            fplan.relax or forced.relax)
    return result


def print_explanation(e: dict[str, Any], console: Console) -> None:
    """Human form of `explain_target`'s result."""
    where = f"{e['zone']}/{e['country'] or '-'}, operated by {e['operator']['name']} ({e['operator']['jurisdiction']})"
    console.print(f"[bold]{e['target']}[/] for [bold]{e['deployment']}[/] — {where}")
    status = e["status"]
    if status == "rejected":
        console.print("[red]rejected[/]:")
        for r in e["reasons"]:
            console.print(f"  - {r}", highlight=False)
        return
    if status == "chosen":
        p = e["placement"]
        what = f"{p['replicas']} × {p['accelerator']}" if p["accelerator"] else f"managed, {p['managed_share']:.0%} of traffic"
        console.print(f"[green]chosen[/]: {what}; compute ${p['compute_usd']:,.2f} − credits ${p['credits_usd']:,.2f} "
                      f"+ egress ${p['egress_usd']:,.2f} = ${p['monthly_usd']:,.2f}/month")
    else:
        console.print(f"[yellow]not chosen[/]: {e['why']}")
    b = e["breakdown"]
    console.print(f"  compute: {b['compute']}", highlight=False)
    for s in b["egress"]:
        note = f"${s['usd_if_all_data']:,.2f} if it processed all data" if s["charged"] else "same location, free"
        console.print(f"  egress from {s['source']}: {s['monthly_gb']:g} GB × ${s['usd_per_gb']:g}/GB → {note}")
    console.print(f"  credits: {b['credits']}", highlight=False)
