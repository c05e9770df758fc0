"""Turn plans into the JSON contract of design.md and into rich tables for people."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from sovra.policies.plan import DeploymentPlan, FleetPlan, Placement

TABLE_REJECTED_LIMIT = 12


def _usd(x: float) -> float:
    return round(x + 0.0, 2)


def placement_json(p: Placement) -> dict[str, Any]:
    """One placement, keys as design.md's contract (plus provider, zone, country, managed_share)."""
    return {
        "target": p.target,
        "replicas": p.replicas,
        "accelerator": p.accelerator,
        "monthly_usd": _usd(p.monthly_usd),
        "compute_usd": _usd(p.compute_usd),
        "credits_usd": _usd(p.credits_usd),
        "egress_usd": _usd(p.egress_usd),
        "provider": p.provider,
        "zone": p.zone,
        "country": p.country,
        "managed_share": round(p.managed_share, 6),
    }


def deployment_json(d: DeploymentPlan) -> dict[str, Any]:
    """A deployment plan as design.md's JSON contract."""
    return {
        "deployment": d.deployment,
        "feasible": d.feasible,
        "placements": [placement_json(p) for p in d.placements],
        "monthly_usd": _usd(d.monthly_usd),
        "compute_usd": _usd(d.compute_usd),
        "credits_usd": _usd(d.credits_usd),
        "egress_usd": _usd(d.egress_usd),
        "rejected": [{"target": r.target, "reasons": list(r.reasons)} for r in d.rejected],
        "relax": list(d.relax),
    }


def plan_json(plan: FleetPlan) -> dict[str, Any]:
    """One object for a single deployment, a fleet object for several."""
    if len(plan.deployments) == 1 and not plan.relax:
        return deployment_json(plan.deployments[0])
    stats = plan.stats
    return {
        "fleet": True,
        "feasible": plan.feasible,
        "monthly_usd": _usd(plan.monthly_usd),
        "deployments": [deployment_json(d) for d in plan.deployments],
        "credit_caps_monthly_usd": {k: _usd(v) for k, v in sorted(plan.credit_caps.items())},
        "relax": list(plan.relax),
        "solver": None if stats is None else {
            "status": stats.status, "seconds": round(stats.seconds, 4), "mip_gap": stats.mip_gap,
            "variables": stats.variables, "constraints": stats.constraints,
        },
    }


def print_plan(plan: FleetPlan, console: Console, *, all_rejected: bool = False,
               notes: Mapping[str, str] | None = None) -> None:
    """Human view: placements with cost split, totals, and why targets were rejected; `notes` by deployment (a
    locale variant says whose)."""
    for d in plan.deployments:
        status = "[green]feasible[/]" if d.feasible else "[red]infeasible[/]"
        note = f" ({(notes or {})[d.deployment]})" if d.deployment in (notes or {}) else ""
        console.print(f"\n[bold]{d.deployment}[/]{note}: {status}, ${d.monthly_usd:,.2f}/month "
                      f"(compute ${d.compute_usd:,.2f} − credits ${d.credits_usd:,.2f} + egress ${d.egress_usd:,.2f})")
        if d.placements:
            t = Table(show_edge=False, header_style="bold")
            for col in ("target", "zone", "replicas", "accelerator", "compute $", "credits $", "egress $", "monthly $"):
                t.add_column(col, justify="right" if col.endswith("$") or col == "replicas" else "left")
            for p in d.placements:
                reps = str(p.replicas) if p.accelerator else f"managed {p.managed_share:.0%}"
                t.add_row(p.target, f"{p.zone}/{p.country or '-'}", reps, p.accelerator or "-",
                          f"{p.compute_usd:,.2f}", f"{p.credits_usd:,.2f}", f"{p.egress_usd:,.2f}",
                          f"{p.monthly_usd:,.2f}")
            console.print(t)
        for line in d.relax:
            console.print(f"  [yellow]relax:[/] {line}")
        shown = d.rejected if all_rejected else d.rejected[:TABLE_REJECTED_LIMIT]
        if shown:
            console.print(f"  rejected {len(d.rejected)} target{'s' if len(d.rejected) != 1 else ''}:")
            for r in shown:
                console.print(f"    [dim]{r.target}[/]: {'; '.join(r.reasons)}", highlight=False)
            if len(shown) < len(d.rejected):
                console.print(f"    … {len(d.rejected) - len(shown)} more (--all-rejected, -o json, or sovra explain)")
    if len(plan.deployments) > 1 or plan.relax:
        console.print(f"\n[bold]fleet[/]: {'[green]feasible[/]' if plan.feasible else '[red]infeasible[/]'}, "
                      f"${plan.monthly_usd:,.2f}/month over {len(plan.deployments)} deployments")
        for line in plan.relax:
            console.print(f"  [yellow]relax:[/] {line}")
    if plan.stats is not None:
        gap = "-" if plan.stats.mip_gap is None else f"{plan.stats.mip_gap:.2e}"
        console.print(f"[dim]solver: {plan.stats.status} in {plan.stats.seconds:.3f}s, gap {gap}, "
                      f"{plan.stats.variables} variables, {plan.stats.constraints} constraints[/]")
