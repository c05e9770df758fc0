"""Placement benchmark: solve time and plan quality of `plan_fleet` on seeded random fleets.

    .venv/bin/python bench/placement.py            # 10, 100, 1,000 deployments x 50, 200 targets
    .venv/bin/python bench/placement.py --quick    # 10 and 100 deployments only (CI smoke, < 60 s)
    .venv/bin/python bench/placement.py --profile  # also cProfile the largest size

For every size it reports: the solve of `plan_fleet` under the default SolveOptions and under a looser
`mip_rel_gap` (the "fast" run), the plan's cost, a greedy baseline's cost and the best single-cloud plan's cost.
Inputs are built before the clock starts; only `plan_fleet` is timed. Everything is reproducible from SEED.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import hashlib
import io
import json
import math
import os
import platform
import pstats
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from machine_info import cpu_model  # bench/ is on sys.path when a bench script runs
from report import print_rows

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import scipy  # noqa: E402
import scipy.optimize  # noqa: E402,F401  (imported up front so the first timed solve does not pay for it)

from sovra.core.spec.deployment import Deployment  # noqa: E402
from sovra.core.spec.org import Credit, OrgPolicy  # noqa: E402
from sovra.core.spec.target import Target  # noqa: E402
from sovra.policies import costs, filters, placement as placement_mod  # noqa: E402
from sovra.policies.licenses import license_pack  # noqa: E402
from sovra.policies.placement import SolveOptions, plan_fleet  # noqa: E402
from sovra.policies.plan import Candidate, FleetPlan  # noqa: E402

SEED = 20261122
AS_OF = dt.date(2026, 11, 22)
TIME_LIMIT_S = 60.0
SINGLE_CLOUD_TIME_LIMIT_S = 20.0  # the single-cloud comparison is secondary; keep the full run short
FAST_GAP = 1e-3  # the "fast" run: 0.1% relative gap, 10x tighter than the 1% goal
GOAL = {"deployments": 1000, "targets": 200, "seconds": 10.0, "gap": 0.01}
RESULTS = Path(__file__).resolve().parent / "results"

# ---------------------------------------------------------------------------------------------------------------
# Catalog generator
# ---------------------------------------------------------------------------------------------------------------

EU = ["FR", "DE", "IE", "NL", "SE", "IT", "ES", "PL"]
US = ["US"]
APAC = ["JP", "SG", "AU", "IN", "KR"]

# cloud -> (operator, jurisdiction, self-hosting provider or None, managed provider or None, price factor, egress)
CLOUDS: dict[str, tuple[str, str, str | None, str | None, float, float]] = {
    "aws": ("amazon", "US", "aws-sagemaker", "aws-bedrock", 1.00, 0.09),
    "azure": ("microsoft", "US", "azure-ml", "azure-ml", 0.97, 0.087),
    "gcp": ("google", "US", "databricks", "databricks", 0.95, 0.12),
    "snowflake": ("snowflake", "US", None, "snowflake-cortex", 1.0, 0.09),
    # EU-operated "sovereign" clouds (an Azure-based and a Databricks-based partner): the only cloud targets that
    # pass `sovereign: true` EU residencies, at a premium.
    "bleu": ("bleu", "FR", "azure-ml", None, 1.25, 0.08),
    "delos": ("delos", "DE", "databricks", None, 1.30, 0.08),
}
CLOUD_MIX = [("aws", 0.30), ("azure", 0.25), ("gcp", 0.18), ("snowflake", 0.07), ("bleu", 0.06), ("delos", 0.06)]
ONPREM_SHARE = 0.04  # of targets (at least 4); capped `available`, cheap, competed for

# sku family: (gpus, gpu_memory_gb, list usd/hour)
SKUS = [
    ("l4x1", 1, 24, 1.13), ("a10gx1", 1, 24, 1.41), ("l4x4", 4, 24, 5.75), ("a10gx4", 4, 24, 7.09),
    ("l40sx1", 1, 48, 2.80), ("l40sx4", 4, 48, 13.12), ("a100x1", 1, 80, 3.67), ("a100x2", 2, 80, 7.35),
    ("a100x4", 4, 80, 14.69), ("a100x8", 8, 40, 37.69), ("h100x1", 1, 80, 6.98), ("h100x2", 2, 80, 13.96),
    ("h100x8", 8, 80, 98.32),
]
BIG = {"a100x8", "h100x8", "h100x2", "a100x4"}
ONPREM_SKUS = [("a100x1", 1, 80, 1.1), ("a100x4", 4, 80, 4.2), ("l40sx1", 1, 48, 0.7), ("h100x8", 8, 80, 22.0)]

# managed model name -> (GPU memory one self-hosted replica needs, licence, typical managed usd per 1k tokens)
MODELS = {
    "mistral-7b": (16, "apache-2.0", 0.00016),
    "llama-3.1-8b": (20, "llama3.1", 0.00022),
    "mixtral-8x7b": (96, "apache-2.0", 0.00051),
    "llama-3.3-70b": (150, "llama3.3", 0.00072),
    "mistral-large-2": (250, "mrl", 0.0045),       # mrl: no self-hosting, managed only
    "pixtral-large": (250, "mrl", 0.0030),
    "qwen-2.5-32b": (70, "qwen", 0.00040),
    "custom-ft": (40, "apache-2.0", None),            # fine-tuned in-house: self-hosted only
}
MODEL_MIX = [("mistral-7b", 0.2), ("llama-3.1-8b", 0.2), ("mixtral-8x7b", 0.12), ("llama-3.3-70b", 0.15),
             ("mistral-large-2", 0.05), ("pixtral-large", 0.03), ("qwen-2.5-32b", 0.1), ("custom-ft", 0.15)]


def _pick(rng: random.Random, mix: list[tuple[str, float]]) -> str:
    return rng.choices([k for k, _ in mix], weights=[w for _, w in mix])[0]


def _place(rng: random.Random) -> tuple[str, str]:
    """(zone, country) of a cloud region: half EU, a third US, the rest APAC."""
    r = rng.random()
    if r < 0.5:
        return "EU", rng.choice(EU)
    if r < 0.83:
        return "US", "US"
    return "APAC", rng.choice(APAC)


def make_targets(n: int, n_deployments: int, rng: random.Random) -> list[dict[str, Any]]:
    """Raw target dicts (validated later, outside the clock)."""
    out: list[dict[str, Any]] = []
    n_onprem = max(4, round(n * ONPREM_SHARE))
    for i in range(n_onprem):
        country = ["FR", "DE", "FR", "US", "JP", "DE"][i % 6]
        zone = {"FR": "EU", "DE": "EU", "US": "US", "JP": "APAC"}[country]
        accs = []
        for sku, gpus, gb, usd in rng.sample(ONPREM_SKUS, rng.randint(1, 3)):
            # capacity scales with the fleet so that on-prem stays scarce at every size (a few % of demand each)
            avail = max(1, round(n_deployments * rng.uniform(0.01, 0.04) * (2 if gpus == 1 else 1)))
            accs.append({"sku": f"{sku}-dc{i}", "gpus": gpus, "gpu_memory_gb": gb,
                         "usd_per_hour": round(usd * rng.uniform(0.85, 1.15), 3), "available": avail})
        out.append({"id": f"ray/dc-{country.lower()}-{i:03d}", "provider": "ray", "cloud": "onprem",
                    "region": f"dc-{country.lower()}-{i:03d}", "country": country, "zone": zone,
                    "operator": {"name": "self", "jurisdiction": "FR"},
                    "certifications": ["iso27001", "hds"], "accelerators": accs, "egress_usd_per_gb": 0.02})
    i = 0
    while len(out) < n:
        i += 1
        cloud = _pick(rng, CLOUD_MIX)
        op, juris, self_prov, mgd_prov, factor, egress = CLOUDS[cloud]
        if cloud in ("bleu", "delos"):
            zone, country = "EU", juris
        else:
            zone, country = _place(rng)
        managed = self_prov is None or (mgd_prov is not None and rng.random() < 0.3)
        region = f"{zone.lower()}-{country.lower()}-{i:04d}"
        certs = ["iso27001", "soc2"] + (["c5"] if zone == "EU" else []) + (["hds"] if country == "FR" else [])
        raw: dict[str, Any] = {"region": region, "cloud": cloud, "country": country, "zone": zone,
                               "operator": {"name": op, "jurisdiction": juris}, "certifications": certs,
                               "egress_usd_per_gb": round(egress * rng.uniform(0.9, 1.3), 4)}
        regional = factor * {"EU": 1.1, "US": 1.0, "APAC": 1.2}[zone] * rng.uniform(0.95, 1.1)
        if managed:
            names = rng.sample([m for m, (_, _, p) in MODELS.items() if p is not None], rng.randint(2, 5))
            raw["provider"] = mgd_prov
            raw["id"] = f"{mgd_prov}/{region}"
            raw["models"] = [{"name": m, "usd_per_1k_tokens": round(MODELS[m][2] * regional * rng.uniform(0.9, 1.2), 7)}
                             for m in names]
            if rng.random() < 0.15:  # a geo profile that may process anywhere in its zone
                raw["country"] = None
        else:
            raw["provider"] = self_prov
            raw["id"] = f"{self_prov}/{region}"
            accs = []
            for sku, gpus, gb, usd in rng.sample(SKUS, rng.randint(4, 9)):
                capped = sku in BIG and rng.random() < 0.3  # quota-limited big instances
                accs.append({"sku": sku, "gpus": gpus, "gpu_memory_gb": gb,
                             "usd_per_hour": round(usd * regional, 3),
                             "available": max(1, round(n_deployments * rng.uniform(0.002, 0.01))) if capped else None})
            raw["accelerators"] = accs
        out.append(raw)
    return out


RESIDENCIES: list[tuple[dict[str, Any], float]] = [
    ({}, 0.30),
    ({"zones": ["EU"]}, 0.22),
    ({"zones": ["US"]}, 0.14),
    ({"zones": ["EU", "US"]}, 0.06),
    ({"countries": ["FR"]}, 0.04),
    ({"countries": ["DE", "FR"]}, 0.04),
    ({"zones": ["EU"], "sovereign": True}, 0.08),
    ({"countries": ["FR"], "sovereign": True}, 0.03),
    ({"zones": ["APAC"]}, 0.06),
    ({"countries": ["JP", "US"]}, 0.03),
]


def make_deployments(n: int, targets: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    locations = [(f"{t['cloud']}/{t['region']}", t["egress_usd_per_gb"]) for t in targets]
    out = []
    for i in range(n):
        model = _pick(rng, MODEL_MIX)
        gb, lic, _ = MODELS[model]
        residency = rng.choices([r for r, _ in RESIDENCIES], weights=[w for _, w in RESIDENCIES])[0]
        if lic == "mrl" and residency.get("sovereign"):
            residency = {"zones": ["EU"]}  # managed-only models have no sovereign offering
        managed_only = lic == "mrl" or (model != "custom-ft" and rng.random() < 0.04)
        reps = rng.choices(range(1, 9), weights=[14, 16, 14, 12, 10, 8, 6, 5])[0]
        min_targets = rng.choices([1, 2, 3], weights=[50, 35, 15])[0]
        if not managed_only:
            min_targets = min(min_targets, reps)
        data = []
        for _ in range(rng.choices([0, 1, 2], weights=[25, 50, 25])[0]):
            loc, price = rng.choice(locations)
            # explicit egress price: the source stays priced when a single-cloud run drops its target
            data.append({"location": loc, "monthly_gb": round(rng.lognormvariate(math.log(800), 1.2), 1),
                         "egress_usd_per_gb": price})
        spec: dict[str, Any] = {
            "model": {"name": model, "license": lic,
                      **({} if managed_only and lic != "mrl" else {"gpu_memory_gb": gb})},
            "replicas": {"min": reps},
            "residency": residency,
            "placement": {"min_targets": min_targets},
            "data": data,
            "traffic": {"requests_per_second": round(rng.lognormvariate(math.log(1.0), 0.8), 3),
                        "tokens_per_request": rng.choice([300, 600, 1000, 1500, 2500])},
            "certifications": ["hds"] if rng.random() < 0.03 else [],
        }
        if lic == "mrl":
            spec["model"].pop("gpu_memory_gb", None)
        out.append({"apiVersion": "sovra/v1", "kind": "Deployment", "metadata": {"name": f"svc-{i:04d}"},
                    "spec": spec})
    return out


def make_credits(n_deployments: int) -> list[Credit]:
    """Credits on aws and azure sized to bind: monthly caps of $300 and $200 per deployment, about 10-15% of the
    fleet's gross spend, well below what the fleet would spend on either cloud."""
    return [
        Credit(cloud="aws", usd=300.0 * n_deployments * 6, expires=dt.date(2027, 4, 30), name="aws-edp"),
        Credit(cloud="azure", usd=200.0 * n_deployments * 9, expires=dt.date(2027, 7, 31), name="azure-macc"),
    ]


def _repair(d: Deployment, raw: dict[str, Any], targets: list[Target]) -> Deployment:
    """Fix a spec no solver could place, as its owner would: widen residency and drop certifications when nothing
    qualifies, fall back to a self-hostable model, lower min_targets to what qualifies. Keeps every fleet placeable."""
    for step in range(4):
        sources = filters.data_sources(d, filters.egress_prices(targets))
        cands = [c for t in targets if isinstance(c := filters.evaluate(d, t, LICENSES, sources), Candidate)]
        problems = placement_mod._structural(d, cands, [], targets, set())
        if not problems:
            return d
        spec = raw["spec"]
        if cands:
            n_repl = sum(1 for c in cands if c.accelerator is not None)
            reachable = min(n_repl, spec["replicas"]["min"]) + (len(cands) - n_repl)
            spec["placement"]["min_targets"] = max(1, min(reachable, n_repl if n_repl else len(cands)))
        elif step == 0:
            spec["certifications"] = []
            if spec["residency"].get("sovereign"):
                spec["residency"] = {k: v for k, v in spec["residency"].items() if k != "sovereign"}
        elif step == 1:
            spec["residency"] = {}
        else:
            spec["model"] = {"name": "mistral-7b", "license": "apache-2.0", "gpu_memory_gb": 16}
        d = Deployment.model_validate(raw)
    return d


@dataclass
class Instance:
    n_deployments: int
    n_targets: int
    deployments: list[Deployment]
    targets: list[Target]
    credits: list[Credit]
    build_s: float


def make_instance(n_deployments: int, n_targets: int, seed: int = SEED) -> Instance:
    start = time.perf_counter()
    rng = random.Random(f"{seed}-{n_deployments}-{n_targets}")
    raw_t = make_targets(n_targets, n_deployments, rng)
    raw_d = make_deployments(n_deployments, raw_t, rng)
    targets = [Target.model_validate(t) for t in raw_t]
    deps = [_repair(Deployment.model_validate(d), d, targets) for d in raw_d]
    return Instance(n_deployments, n_targets, deps, targets, make_credits(n_deployments),
                    time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------

LICENSES = license_pack(OrgPolicy())


@contextlib.contextmanager
def _quiet_stdout():
    """HiGHS (inside scipy) prints stray diagnostics to the C-level stdout; drop them while solving."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def solve(inst: Instance, options: SolveOptions, *, deployments=None, targets=None) -> tuple[FleetPlan, float]:
    deps = inst.deployments if deployments is None else deployments
    tgts = inst.targets if targets is None else targets
    with _quiet_stdout():
        start = time.perf_counter()
        plan = plan_fleet(deps, tgts, credits=inst.credits, licenses=LICENSES, as_of=AS_OF, options=options)
        wall = time.perf_counter() - start
    return plan, wall


def summarize(plan: FleetPlan, wall: float) -> dict[str, Any]:
    s = plan.stats
    return {
        "wall_s": round(wall, 3),
        "solver_s": round(s.seconds, 3) if s else None,  # Model.solve: matrix assembly + HiGHS
        "status": s.status if s else None,
        "mip_gap": s.mip_gap if s else None,
        "variables": s.variables if s else 0,
        "constraints": s.constraints if s else 0,
        "feasible": plan.feasible,
        "placed": sum(1 for d in plan.deployments if d.feasible),
        "monthly_usd": round(plan.monthly_usd, 2),
        "credits_usd": round(sum(d.credits_usd for d in plan.deployments), 2),
    }


def greedy(inst: Instance, plan: FleetPlan, max_managed_split: int = SolveOptions().max_managed_split
           ) -> dict[str, Any]:
    """Largest deployments first, each on its cheapest eligible candidates (eligibility and unit prices from the
    engine's `candidates`), spread over the cheapest `min_targets` distinct targets, capacity respected; credits
    applied afterwards as min(cap, compute) per cloud."""
    by_id = {t.id: t for t in inst.targets}
    left: dict[tuple[str, str], float] = {}
    for t in inst.targets:
        for a in t.accelerators:
            left[(t.id, a.sku)] = math.inf if a.available is None else a.available
    cands = {dp.deployment: dp.candidates for dp in plan.deployments}
    compute: dict[str, float] = defaultdict(float)
    egress = 0.0
    unplaced = 0
    order = sorted(inst.deployments, key=lambda d: (-d.spec.replicas.min, d.name))
    for d in order:
        reps, need = d.spec.replicas.min, d.spec.placement.min_targets
        cs = cands[d.name]
        # option A: self-hosted replicas
        repl = sorted((c for c in cs if c.accelerator is not None),
                      key=lambda c: (c.unit_usd + c.egress_if_all_usd / reps, c.target))
        usable = [c for c in repl if left[(c.target, c.accelerator)] >= 1]
        a_alloc: dict[int, int] | None = None
        a_cost = math.inf
        if len(usable) >= need and sum(min(reps, left[(c.target, c.accelerator)]) for c in usable) >= reps:
            alloc = {j: 1 for j in range(need)}
            rem = reps - need
            for j, c in enumerate(usable):
                if rem == 0:
                    break
                room = left[(c.target, c.accelerator)] - alloc.get(j, 0)
                take = int(min(rem, room))
                if take > 0:
                    alloc[j] = alloc.get(j, 0) + take
                    rem -= take
            if rem == 0:
                a_alloc = alloc
                a_cost = sum(n * (usable[j].unit_usd + usable[j].egress_if_all_usd / reps) for j, n in alloc.items())
        # option B: managed per-token targets, traffic split evenly over the cheapest max(1, need)
        mgd = sorted((c for c in cs if c.accelerator is None), key=lambda c: (c.unit_usd + c.egress_if_all_usd, c.target))
        k = max(1, need)
        b_cost = math.inf
        if len(mgd) >= k and k <= max_managed_split:
            b_cost = sum(c.unit_usd + c.egress_if_all_usd for c in mgd[:k]) / k
        if a_alloc is None and b_cost == math.inf:
            unplaced += 1
            continue
        if a_cost <= b_cost:
            for j, n in a_alloc.items():
                c = usable[j]
                left[(c.target, c.accelerator)] -= n
                compute[by_id[c.target].cloud] += n * c.unit_usd
                egress += n * c.egress_if_all_usd / reps
        else:
            for c in mgd[:k]:
                compute[by_id[c.target].cloud] += c.unit_usd / k
                egress += c.egress_if_all_usd / k
    caps = costs.monthly_credit_caps(inst.credits, AS_OF)
    credit = sum(min(caps.get(cl, 0.0), v) for cl, v in compute.items())
    return {"monthly_usd": round(sum(compute.values()) - credit + egress, 2), "unplaced": unplaced,
            "credits_usd": round(credit, 2)}


def single_cloud(inst: Instance, plan: FleetPlan, options: SolveOptions) -> dict[str, Any]:
    """Best plan on one cloud only (on-prem counts as a cloud). Each cloud is solved for the deployments it can host
    at all (structurally); a cloud 'hosts the fleet' when that is every deployment and the solve is feasible."""
    cands = {dp.deployment: dp.candidates for dp in plan.deployments}
    by_id = {t.id: t for t in inst.targets}
    per_cloud: dict[str, Any] = {}
    for cloud in sorted({t.cloud for t in inst.targets}):
        tgts = [t for t in inst.targets if t.cloud == cloud]
        hostable = []
        for d in inst.deployments:
            mine = [c for c in cands[d.name] if by_id[c.target].cloud == cloud]
            if mine and not placement_mod._structural(d, mine, [], tgts, set()):
                hostable.append(d)
        entry: dict[str, Any] = {"hostable": len(hostable)}
        if hostable:
            p, wall = solve(inst, options, deployments=hostable, targets=tgts)
            entry.update(placed=sum(1 for d in p.deployments if d.feasible), feasible=p.feasible,
                         monthly_usd=round(p.monthly_usd, 2), wall_s=round(wall, 3), status=p.stats.status)
        per_cloud[cloud] = entry
    full = {c: e for c, e in per_cloud.items() if e["hostable"] == inst.n_deployments and e.get("feasible")}
    out: dict[str, Any] = {"per_cloud": per_cloud}
    if full:
        best = min(full, key=lambda c: full[c]["monthly_usd"])
        out.update(best=best, monthly_usd=full[best]["monthly_usd"])
    else:
        out.update(best=None, monthly_usd=None)
        # the cloud that hosts most of the fleet, compared with the multi-cloud optimum for the same deployments
        ok = {c: e for c, e in per_cloud.items() if e.get("feasible")}
        if ok:
            part = max(ok, key=lambda c: (ok[c]["hostable"], -ok[c]["monthly_usd"]))
            names = {d.name for d in inst.deployments}
            sub = [d for d in inst.deployments if d.name in names and any(
                by_id[c.target].cloud == part for c in cands[d.name])]
            sub = [d for d in sub if not placement_mod._structural(
                d, [c for c in cands[d.name] if by_id[c.target].cloud == part], [],
                [t for t in inst.targets if t.cloud == part], set())]
            multi, _ = solve(inst, options, deployments=sub)
            out["partial"] = {"cloud": part, "deployments": len(sub), "single_cloud_usd": ok[part]["monthly_usd"],
                              "multi_cloud_usd": round(multi.monthly_usd, 2),
                              "ratio": round(ok[part]["monthly_usd"] / multi.monthly_usd, 4)
                              if multi.monthly_usd > 0 else None}
    return out


def instance_facts(inst: Instance, plan: FleetPlan) -> dict[str, Any]:
    by_id = {t.id: t for t in inst.targets}
    n_cands = [len(dp.candidates) for dp in plan.deployments]
    onprem_cap = sum(a.available for t in inst.targets if t.cloud == "onprem" for a in t.accelerators)
    onprem_used = sum(p.replicas for dp in plan.deployments for p in dp.placements if by_id[p.target].cloud == "onprem")
    managed_used = sum(1 for dp in plan.deployments if any(p.managed_share for p in dp.placements))
    used_by_cloud: dict[str, float] = defaultdict(float)
    for dp in plan.deployments:
        for p in dp.placements:
            used_by_cloud[by_id[p.target].cloud] += p.credits_usd
    caps = costs.monthly_credit_caps(inst.credits, AS_OF)
    return {
        "clouds": sorted({t.cloud for t in inst.targets}),
        "managed_targets": sum(1 for t in inst.targets if t.managed),
        "onprem_targets": sum(1 for t in inst.targets if t.cloud == "onprem"),
        "replicas": sum(d.spec.replicas.min for d in inst.deployments),
        "candidates_per_deployment": round(sum(n_cands) / max(1, len(n_cands)), 1),
        "onprem_instances": onprem_cap, "onprem_replicas_used": onprem_used,
        "deployments_on_managed": managed_used,
        "credit_caps": {c: round(v, 2) for c, v in caps.items()},
        "credits_used": {c: round(used_by_cloud.get(c, 0.0), 2) for c in caps},
        "build_s": round(inst.build_s, 3),
    }


def run_size(n_dep: int, n_tgt: int, *, single: bool = True) -> dict[str, Any]:
    inst = make_instance(n_dep, n_tgt)
    fast_opts = SolveOptions(mip_rel_gap=FAST_GAP, time_limit_s=TIME_LIMIT_S)
    default_opts = SolveOptions(time_limit_s=TIME_LIMIT_S)
    fast, fast_wall = solve(inst, fast_opts)
    default, default_wall = solve(inst, default_opts)
    best = default if default.feasible else fast
    row: dict[str, Any] = {
        "deployments": n_dep, "targets": n_tgt,
        "fast": {"mip_rel_gap": FAST_GAP, **summarize(fast, fast_wall)},
        "default": {"mip_rel_gap": SolveOptions().mip_rel_gap, **summarize(default, default_wall)},
        "instance": instance_facts(inst, best),
    }
    g = greedy(inst, best)
    opt = best.monthly_usd
    row["greedy"] = {**g, "ratio": round(g["monthly_usd"] / opt, 4) if opt else None}
    if single:
        sc = single_cloud(inst, best, SolveOptions(mip_rel_gap=FAST_GAP, time_limit_s=SINGLE_CLOUD_TIME_LIMIT_S))
        sc["ratio"] = round(sc["monthly_usd"] / opt, 4) if sc["monthly_usd"] and opt else None
        row["single_cloud"] = sc
    return row


def profile_size(n_dep: int, n_tgt: int) -> str:
    inst = make_instance(n_dep, n_tgt)
    prof = cProfile.Profile()
    prof.enable()
    solve(inst, SolveOptions(mip_rel_gap=FAST_GAP, time_limit_s=TIME_LIMIT_S))
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = cpu_model()
    try:
        import highspy  # noqa: F401
        highs = getattr(highspy, "__version__", "highspy")
    except ImportError:
        highs = "bundled with scipy"
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "scipy": scipy.__version__,
            "highs": highs, "platform": platform.platform(),
            "engine_sha256": hashlib.sha256((ROOT / "policies" / "placement.py").read_bytes()).hexdigest()[:16],
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _gap(g: float | None) -> str:
    return "-" if g is None else f"{g:.2e}"


def _ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.3f}"


def table_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = ["deps x targets", "vars", "rows", f"fast (gap {FAST_GAP:g}) s", "status", "gap", "default s", "status",
            "gap", "optimal $/mo", "greedy/opt", "single-cloud/opt", "goal"]
    out = []
    for r in rows:
        f, d = r["fast"], r["default"]
        sc = r.get("single_cloud")
        if sc is None:
            scs = "not run"
        elif sc["ratio"] is not None:
            scs = f"{_ratio(sc['ratio'])} ({sc['best']})"
        else:
            part = sc.get("partial")
            scs = "infeasible" + (f" (best {part['cloud']}: {part['deployments']}/{r['deployments']} deps, "
                                  f"x{_ratio(part['ratio'])})" if part else "")
        goal = ""
        if (r["deployments"], r["targets"]) == (GOAL["deployments"], GOAL["targets"]):
            ok = f["wall_s"] <= GOAL["seconds"] and f["mip_gap"] is not None and f["mip_gap"] <= GOAL["gap"]
            goal = "MET" if ok else "MISSED"
        g = r["greedy"]
        gs = _ratio(g["ratio"]) + (f" ({g['unplaced']} unplaced)" if g["unplaced"] else "")
        out.append([f"{r['deployments']} x {r['targets']}", str(f["variables"]), str(f["constraints"]),
                    f"{f['wall_s']:.2f}", f["status"], _gap(f["mip_gap"]),
                    f"{d['wall_s']:.2f}", d["status"], _gap(d["mip_gap"]),
                    f"{(d if d['feasible'] else f)['monthly_usd']:,.0f}", gs, scs, goal])
    return head, out


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], profile: str | None) -> str:
    head, body = table_rows(rows)
    lines = ["# Placement benchmark", "",
             f"`.venv/bin/python bench/placement.py` — seed {SEED}, as_of {AS_OF}, time_limit_s {TIME_LIMIT_S:g}.", "",
             f"Machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, SciPy {info['scipy']} "
             f"(HiGHS {info['highs']}), {info['platform']}, {info['date']}; policies/placement.py sha256 "
             f"{info['engine_sha256']}.", "",
             f"Goal: {GOAL['deployments']} deployments x {GOAL['targets']} targets in <= {GOAL['seconds']:g} s "
             f"with gap <= {GOAL['gap']:.0%} (judged on the fast run).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    lines += ["", "Times are wall seconds of `plan_fleet` (filters + model build + HiGHS); inputs are built outside "
              "the clock. `gap` is `plan.stats.mip_gap`. Ratios are cost / optimal cost (the default run's plan). "
              "Greedy: largest deployments first, cheapest effective per-replica candidates, min_targets spread, "
              "capacity respected, credits applied afterwards. Single-cloud: every cloud (on-prem included) solved "
              "alone; 'infeasible' when none can host the whole fleet (residency, sovereignty, licences, "
              "capacity), then the cloud hosting most deployments is compared with the multi-cloud optimum for the "
              "same deployments.", "", "## Details", ""]
    for r in rows:
        f, d, inst = r["fast"], r["default"], r["instance"]
        lines.append(f"### {r['deployments']} deployments x {r['targets']} targets")
        lines.append("")
        lines.append(f"- instance: {inst['replicas']} replicas, {inst['managed_targets']} managed and "
                     f"{inst['onprem_targets']} on-prem targets, {inst['candidates_per_deployment']} eligible targets "
                     f"per deployment; on-prem {inst['onprem_replicas_used']}/{inst['onprem_instances']} instances "
                     f"used; {inst['deployments_on_managed']} deployments on managed targets; credits used "
                     f"{inst['credits_used']} of caps {inst['credit_caps']}; build {inst['build_s']} s (not timed)")
        for name, s in (("fast", f), ("default", d)):
            lines.append(f"- {name} (mip_rel_gap {s['mip_rel_gap']:g}): wall {s['wall_s']} s, of which Model.solve "
                         f"{s['solver_s']} s; {s['status']}, gap {_gap(s['mip_gap'])}, {s['variables']} vars, "
                         f"{s['constraints']} rows, placed {s['placed']}/{r['deployments']}, "
                         f"${s['monthly_usd']:,.2f}/mo (credits ${s['credits_usd']:,.2f})")
        g = r["greedy"]
        lines.append(f"- greedy: ${g['monthly_usd']:,.2f}/mo, x{_ratio(g['ratio'])}, unplaced {g['unplaced']}")
        sc = r.get("single_cloud")
        if sc:
            parts = []
            for c, e in sc["per_cloud"].items():
                if "monthly_usd" in e:
                    parts.append(f"{c}: {e['placed']}/{e['hostable']} placed of {r['deployments']}, "
                                 f"${e['monthly_usd']:,.0f}, {e['wall_s']} s")
                else:
                    parts.append(f"{c}: hosts none")
            lines.append("- single cloud: " + "; ".join(parts))
            if sc.get("partial"):
                p = sc["partial"]
                lines.append(f"- best partial single cloud: {p['cloud']} hosts {p['deployments']} deployments for "
                             f"${p['single_cloud_usd']:,.0f} vs ${p['multi_cloud_usd']:,.0f} multi-cloud "
                             f"(x{_ratio(p['ratio'])})")
        lines.append("")
    if profile:
        lines += ["## Profile (largest size, fast run)", "", "```", profile.strip(), "```", ""]
    return "\n".join(lines)


def print_table(rows: list[dict[str, Any]]) -> None:
    head, body = table_rows(rows)
    print_rows("Placement benchmark", head, body, width=220)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only 10 and 100 deployments (CI smoke)")
    ap.add_argument("--profile", action="store_true", help="cProfile the largest size's fast solve")
    ap.add_argument("--no-single-cloud", action="store_true", help="skip the single-cloud comparison")
    ap.add_argument("--sizes", help="comma list like 1000x200 (overrides the default grid)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    args = ap.parse_args(argv)

    if args.sizes:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    else:
        sizes = [(d, t) for d in ((10, 100) if args.quick else (10, 100, 1000)) for t in (50, 200)]
    info = machine()
    rows = []
    for n_dep, n_tgt in sizes:
        start = time.perf_counter()
        rows.append(run_size(n_dep, n_tgt, single=not args.no_single_cloud))
        print(f"  {n_dep} x {n_tgt}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    profile = profile_size(*max(sizes)) if args.profile else None
    print_table(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "placement-quick" if args.quick else "placement"
    (out / f"{stem}.json").write_text(json.dumps({"machine": info, "seed": SEED, "as_of": str(AS_OF),
                                                  "time_limit_s": TIME_LIMIT_S, "goal": GOAL, "quick": args.quick,
                                                  "results": rows}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(rows, info, profile))
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
