"""The placement engine: hard filters, then one mixed-integer program over every deployment at once.

Pure: typed inputs in, a FleetPlan out; no I/O, no printing, nothing mutated. Deployments planned together share
on-prem capacity and per-cloud monthly credit caps, so they are solved jointly (HiGHS via scipy).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from sovra.core.spec.deployment import Deployment
from sovra.core.spec.org import Credit
from sovra.core.spec.target import Target
from sovra.policies import costs, filters
from sovra.policies.licenses import LicensePack
from sovra.policies.milp import Model, Solution
from sovra.policies.plan import Candidate, DeploymentPlan, FleetPlan, Placement, Rejection, SolveStats
from sovra.policies.residency import location_allowed

# Tie-breaks ride on the objective at well below a cent, so they never outweigh a real price difference:
# fewer targets first (per target used), then lower target ids (rank in [0, 1)).
_EPS_TARGET = 1e-4
_EPS_REPLICA = 1e-6


@dataclass(frozen=True)
class SolveOptions:
    """Solver knobs. The defaults prove optimality (to a sub-cent gap) on realistic fleets."""

    mip_rel_gap: float = 1e-7
    time_limit_s: float = 120.0
    # Most managed targets one deployment's traffic is split over (raised to min_targets when that is larger).
    # Splitting wider only pays by shifting spend between clouds' credit caps; 3 keeps 1,000-deployment fleets fast.
    max_managed_split: int = 3
    prune_dominated: bool = True


@dataclass
class _Vars:
    """Columns and rows of one deployment (internal, filled while building)."""

    cands: list[Candidate]
    targets: list[Target]
    x: dict[int, int] = field(default_factory=dict)
    y: dict[int, int] = field(default_factory=dict)
    w: dict[tuple[int, int], int] = field(default_factory=dict)
    credits: dict[str, int] = field(default_factory=dict)
    budget_slack: int | None = None


def plan_fleet(
    deployments: Sequence[Deployment],
    targets: Sequence[Target],
    *,
    credits: Sequence[Credit] = (),
    licenses: LicensePack,
    as_of: dt.date,
    options: SolveOptions = SolveOptions(),
    require: Collection[tuple[str, str]] = (),
) -> FleetPlan:
    """Place every deployment's `replicas.min` at the lowest total effective cost, jointly.

    `require` forces (deployment, target) pairs into the plan; `explain` uses it to price a counterfactual.
    """
    by_id = {t.id: t for t in targets}
    rank = {tid: i / (len(by_id) + 1) for i, tid in enumerate(sorted(by_id))}
    caps = costs.monthly_credit_caps(credits, as_of)

    evaluated: dict[str, tuple[list[Candidate], list[Rejection]]] = {}
    structural: dict[str, tuple[str, ...]] = {}
    ordered = sorted(targets, key=lambda t: t.id)
    # Fleets repeat the same rules (residency, model, licence...) across deployments: check each combination once
    # per target and add the deployment's own egress afterwards.
    memo: dict[tuple, list[Candidate | Rejection]] = {}
    price_at = filters.egress_prices(targets)
    for d in deployments:
        sources = filters.data_sources(d, price_at)
        spec = d.spec
        key = (spec.residency, spec.certifications, spec.model, spec.traffic)
        if key not in memo:
            memo[key] = [filters.evaluate(d, t, licenses, {}) for t in ordered]
        cands: list[Candidate] = []
        rejs: list[Rejection] = []
        for t, r in zip(ordered, memo[key]):
            if isinstance(r, Candidate):
                cands.append(replace(r, egress_if_all_usd=costs.egress_usd_if_all(t.location, sources)))
            else:
                rejs.append(r)
        evaluated[d.name] = (cands, rejs)
        problems = _structural(d, cands, rejs, targets, {tid for dn, tid in require if dn == d.name})
        if problems:
            structural[d.name] = problems

    solvable = [d for d in deployments if d.name not in structural]
    model_cands = {
        d.name: _prune(d, evaluated[d.name][0], by_id, {tid for dn, tid in require if dn == d.name}, options)
        if options.prune_dominated else evaluated[d.name][0]
        for d in solvable
    }
    built = _build(solvable, model_cands, by_id, rank, caps, options, require, elastic=False)
    model, dvars, cap_rows = built
    sol = model.solve(mip_rel_gap=options.mip_rel_gap, time_limit_s=options.time_limit_s)
    relax: tuple[str, ...] = ()
    blamed: set[str] = set()
    if sol.values is None and solvable:
        model, dvars, cap_rows = _build(solvable, model_cands, by_id, rank, caps, options, require, elastic=True)
        sol = model.solve(mip_rel_gap=max(options.mip_rel_gap, 1e-6), time_limit_s=options.time_limit_s)
        if sol.values is not None:
            relax, blamed = _elastic_report(sol.values, dvars, cap_rows, solvable, by_id)
            sol = Solution("infeasible", sol.values, sol.objective, sol.mip_gap, sol.seconds)
        else:
            relax = ("the solver found no plan even with budgets and capacity relaxed; see rejected targets",)
            blamed = {d.name for d in solvable}

    plans = []
    for d in deployments:
        cands, rejs = evaluated[d.name]
        if d.name in structural:
            plans.append(DeploymentPlan(d.name, False, (), tuple(rejs), tuple(cands), structural[d.name]))
        elif d.name in blamed or sol.values is None:
            mine = tuple(r for r in relax if d.name in r) or relax
            plans.append(DeploymentPlan(d.name, False, (), tuple(rejs), tuple(cands), mine))
        else:
            placements = _placements(d, dvars[d.name], sol.values, by_id)
            plans.append(DeploymentPlan(d.name, True, placements, tuple(rejs), tuple(cands)))
    stats = SolveStats(sol.status, sol.seconds, sol.mip_gap, model.num_vars, model.num_rows)
    return FleetPlan(tuple(plans), dict(caps), stats, relax if blamed else ())


def _prune(d: Deployment, cands: list[Candidate], by_id: dict[str, Target], required: set[str],
           options: SolveOptions) -> list[Candidate]:
    """Drop candidates an optimal plan never needs, so the MILP stays small.

    An uncapped candidate beaten on both compute price and egress by N others on the same cloud can be swapped for
    an unused one of them at no extra cost (same cloud, so credits are no worse): N = min_targets for replica
    targets (a plan uses at most that many *needed* targets) and N = max_managed_split for managed ones (a plan
    never splits traffic over more).
    """
    keep: list[Candidate] = []
    pools: dict[tuple[str, bool], list[Candidate]] = defaultdict(list)
    for c in cands:
        t = by_id[c.target]
        capped = c.accelerator is not None and any(
            a.sku == c.accelerator and a.available is not None for a in t.accelerators)
        if capped or c.target in required:
            keep.append(c)
        else:
            pools[(t.cloud, t.managed)].append(c)
    for (_, managed), pool in pools.items():
        need = max(options.max_managed_split, d.spec.placement.min_targets) if managed \
            else d.spec.placement.min_targets
        pool.sort(key=lambda c: (c.unit_usd, c.egress_if_all_usd, c.target))
        frontier: list[Candidate] = []
        for c in pool:  # sorted by price, so every earlier member is no dearer
            dominators = sum(1 for f in frontier if f.egress_if_all_usd <= c.egress_if_all_usd)
            if dominators < need:
                frontier.append(c)
        keep.extend(frontier)
    return sorted(keep, key=lambda c: c.target)


def _build(
    deployments: Sequence[Deployment],
    cand_map: dict[str, list[Candidate]],
    by_id: dict[str, Target],
    rank: dict[str, float],
    caps: dict[str, float],
    options: SolveOptions,
    require: Collection[tuple[str, str]],
    *,
    elastic: bool,
) -> tuple[Model, dict[str, _Vars], dict[tuple[str, str], tuple[int, int | None]]]:
    m = Model()
    dvars: dict[str, _Vars] = {}
    capacity: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    credit_cols: dict[str, list[tuple[int, float]]] = defaultdict(list)
    max_unit = max((c.unit_usd for cs in cand_map.values() for c in cs), default=1.0) or 1.0

    for d in deployments:
        cands = cand_map[d.name]
        tgts = [by_id[c.target] for c in cands]
        v = dvars[d.name] = _Vars(cands, tgts)
        reps = int(d.spec.replicas.min)
        need = d.spec.placement.min_targets
        required = {tid for dn, tid in require if dn == d.name}
        cost_terms: list[tuple[int, float]] = []  # what the deployment pays before credits
        cloud_compute: dict[str, list[tuple[int, float]]] = defaultdict(list)
        repl = [j for j, t in enumerate(tgts) if not t.managed]
        mgd = [j for j, t in enumerate(tgts) if t.managed]

        for j in repl:
            c, t = cands[j], tgts[j]
            acc = next(a for a in t.accelerators if a.sku == c.accelerator)
            ub = reps if (elastic or acc.available is None) else min(reps, acc.available)
            per_replica = c.unit_usd + c.egress_if_all_usd / reps
            v.x[j] = m.var(per_replica + _EPS_REPLICA * (1 + rank[t.id]), 0, ub, integer=True)
            cost_terms.append((v.x[j], per_replica))
            cloud_compute[t.cloud].append((v.x[j], c.unit_usd))
            if acc.available is not None:
                capacity[(t.id, acc.sku)].append((v.x[j], 1.0))
            if need > 1 or t.id in required:
                v.y[j] = m.var(_EPS_TARGET * (1 + rank[t.id]), 0, 1, integer=True)
                m.row([(v.x[j], 1.0), (v.y[j], -float(reps))], hi=0.0)
                m.row([(v.x[j], 1.0), (v.y[j], -1.0)], lo=0.0)
                if t.id in required:
                    m.row([(v.y[j], 1.0)], lo=1.0)

        z: dict[int, int] = {}
        k_max = min(len(mgd), max(need, options.max_managed_split))
        for k in range(1, k_max + 1):
            z[k] = m.var(0.0, 0, 1, integer=True)
            row = []
            for j in mgd:
                c, t = cands[j], tgts[j]
                share_cost = (c.unit_usd + c.egress_if_all_usd) / k
                v.w[(j, k)] = m.var(share_cost + _EPS_TARGET * (1 + rank[t.id]), 0, 1, integer=True)
                row.append((v.w[(j, k)], 1.0))
                cost_terms.append((v.w[(j, k)], share_cost))
                cloud_compute[t.cloud].append((v.w[(j, k)], c.unit_usd / k))
            m.row([*row, (z[k], -float(k))], lo=0.0, hi=0.0)
        for j in mgd:
            used = [(v.w[(j, k)], 1.0) for k in z]
            m.row(used, hi=1.0)
            if tgts[j].id in required:
                m.row(used, lo=1.0)
        if z:
            m.row([(zk, 1.0) for zk in z.values()], hi=1.0)

        x_terms = [(v.x[j], 1.0) for j in repl]
        if repl and z:
            u = m.var(0.0, 0, 1, integer=True)
            m.row([*x_terms, (u, -float(reps))], lo=0.0, hi=0.0)
            m.row([(u, 1.0), *[(zk, 1.0) for zk in z.values()]], lo=1.0)
        elif repl:
            m.row(x_terms, lo=float(reps), hi=float(reps))
        else:
            m.row([(zk, 1.0) for zk in z.values()], lo=1.0, hi=1.0)

        if need > 1:
            m.row([*[(yv, 1.0) for yv in v.y.values()], *[(wv, 1.0) for wv in v.w.values()]], lo=float(need))

        for cloud, terms in sorted(cloud_compute.items()):
            if caps.get(cloud, 0.0) <= 0:
                continue
            cr = v.credits[cloud] = m.var(-1.0, 0.0, np.inf)
            m.row([(cr, 1.0), *[(col, -coef) for col, coef in terms]], hi=0.0)
            credit_cols[cloud].append((cr, 1.0))

        if d.spec.budget is not None:
            terms = [*cost_terms, *[(cr, -1.0) for cr in v.credits.values()]]
            if elastic:
                v.budget_slack = m.var(100.0, 0.0, np.inf)
                terms.append((v.budget_slack, -1.0))
            m.row(terms, hi=d.spec.budget.monthly_usd)

    for cloud, cols in sorted(credit_cols.items()):
        m.row(cols, hi=caps[cloud])
    cap_rows: dict[tuple[str, str], tuple[int, int | None]] = {}
    for (tid, sku), cols in sorted(capacity.items()):
        avail = next(a.available for a in by_id[tid].accelerators if a.sku == sku)
        slack = m.var(1e4 * max_unit, 0.0, np.inf, integer=True) if elastic else None
        terms = cols + ([(slack, -1.0)] if slack is not None else [])
        cap_rows[(tid, sku)] = (m.row(terms, hi=float(avail)), slack)
    return m, dvars, cap_rows


def _placements(d: Deployment, v: _Vars, x: np.ndarray, by_id: dict[str, Target]) -> tuple[Placement, ...]:
    reps = d.spec.replicas.min
    rows: list[tuple[Target, int, str | None, float, float, float]] = []  # target, replicas, sku, compute, egress, share
    for j, col in v.x.items():
        n = int(round(x[col]))
        if n > 0:
            c = v.cands[j]
            rows.append((v.targets[j], n, c.accelerator, c.unit_usd * n, c.egress_if_all_usd * n / reps, 0.0))
    for (j, k), col in v.w.items():
        if x[col] > 0.5:
            c = v.cands[j]
            rows.append((v.targets[j], 0, None, c.unit_usd / k, c.egress_if_all_usd / k, 1.0 / k))
    compute_by_cloud: dict[str, float] = defaultdict(float)
    for t, _, _, compute, _, _ in rows:
        compute_by_cloud[t.cloud] += compute
    out = []
    for t, n, sku, compute, egress, share in sorted(rows, key=lambda r: r[0].id):
        credit_col = v.credits.get(t.cloud)
        pool = max(0.0, float(x[credit_col])) if credit_col is not None else 0.0
        total = compute_by_cloud[t.cloud]
        credit = min(compute, pool * compute / total) if total > 0 else 0.0
        out.append(Placement(t.id, t.provider, t.zone, t.country, n, sku, compute, credit, egress, share))
    return tuple(out)


def _structural(
    d: Deployment, cands: list[Candidate], rejs: list[Rejection], targets: Sequence[Target], required: set[str]
) -> tuple[str, ...]:
    """Problems no solver can fix: nothing qualifies, or too few targets for min_targets."""
    spec = d.spec
    cand_ids = {c.target for c in cands}
    missing_required = sorted(required - cand_ids)
    if missing_required:
        return tuple(f"{tid} cannot be used: it fails the hard rules (see rejected)" for tid in missing_required)
    if not cands:
        msgs = [f"no target qualifies for {d.name}: all {len(rejs)} were rejected"]
        res = spec.residency
        if not res.unrestricted and not any(location_allowed(res, t.zone, t.country) for t in targets):
            wanted = " or ".join([*(f"zone {z}" for z in res.zones), *(f"country {c}" for c in res.countries)])
            msgs.append(f"no target in {wanted}: add a cluster there in org.yaml or widen spec.residency")
        only = Counter()
        example: dict[str, str] = {}
        for r in rejs:
            rules = {reason.split(":", 1)[0] for reason in r.reasons}
            if len(rules) == 1:
                (rule,) = rules
                only[rule] += 1
                example.setdefault(rule, r.target)
        for rule, n in sorted(only.items(), key=lambda kv: (-kv[1], kv[0])):
            msgs.append(f"relax {rule}: {n} target{'s' if n != 1 else ''} fail only that rule "
                        f"(e.g. {example[rule]})")
        return tuple(msgs)
    need = spec.placement.min_targets
    n_repl = sum(1 for c in cands if c.accelerator is not None)
    reachable = min(n_repl, spec.replicas.min) + (len(cands) - n_repl)
    if need > reachable:
        if n_repl and spec.replicas.min < need and reachable < need <= len(cands):
            return (f"placement.min_targets is {need} but replicas.min is {spec.replicas.min}: raise replicas.min to "
                    f"{need} or lower min_targets to {reachable}",)
        return (f"placement.min_targets is {need} but only {len(cands)} target{'s' if len(cands) != 1 else ''} "
                f"qualify ({', '.join(c.target for c in cands)}): lower min_targets to {reachable} or relax the "
                f"rules that reject the others",)
    return ()


def _elastic_report(
    x: np.ndarray,
    dvars: dict[str, _Vars],
    cap_rows: dict[tuple[str, str], tuple[int, int | None]],
    deployments: Sequence[Deployment],
    by_id: dict[str, Target],
) -> tuple[tuple[str, ...], set[str]]:
    msgs: list[str] = []
    blamed: set[str] = set()
    for (tid, sku), (_, slack) in sorted(cap_rows.items()):
        short = int(round(x[slack])) if slack is not None else 0
        if short <= 0:
            continue
        avail = next(a.available for a in by_id[tid].accelerators if a.sku == sku)
        users = sorted(d.name for d in deployments for j, col in dvars[d.name].x.items()
                       if dvars[d.name].cands[j].target == tid and dvars[d.name].cands[j].accelerator == sku
                       and x[col] > 0.5)
        blamed.update(users)
        msgs.append(f"capacity: {tid} has {avail} {sku} instances but the plan needs {avail + short}: add {short} "
                    f"or lower replicas.min of {', '.join(users)}")
    for d in deployments:
        v = dvars[d.name]
        if v.budget_slack is not None and x[v.budget_slack] > 0.005:
            over = float(x[v.budget_slack])
            blamed.add(d.name)
            msgs.append(f"budget: {d.name} exceeds its budget by ${over:,.2f}/month (budget "
                        f"${d.spec.budget.monthly_usd:,.2f}); raise spec.budget.monthly_usd or relax residency")
    if not msgs:
        msgs.append("no plan satisfies every constraint together")
        blamed = {d.name for d in deployments}
    return tuple(msgs), blamed

