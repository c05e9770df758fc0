"""Glue between files and the pure engine: load specs, build inputs, call the planner."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sovra.orchestrator import live_settings
from sovra.orchestrator.catalog import load_org, load_targets
from sovra.core.errors import SpecError, SpecIssue
from sovra.core.spec import Deployment, Org, Target
from sovra.core.spec.loader import parse_documents, validate
from sovra.policies.licenses import license_pack
from sovra.policies.placement import SolveOptions, plan_fleet
from sovra.policies.plan import FleetPlan


@dataclass(frozen=True)
class Inputs:
    """Everything a plan depends on, validated."""

    deployments: tuple[Deployment, ...]
    org: Org
    targets: tuple[Target, ...]
    as_of: dt.date


def load_deployments(paths: Sequence[str | Path]) -> tuple[Deployment, ...]:
    """Every Deployment in the files (a file may hold several YAML documents), each followed by its locale variants
    (`Deployment.expanded`: planned like any deployment); all errors reported together."""
    out: list[Deployment] = []
    issues: list[SpecIssue] = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            issues.append(SpecIssue(str(path), None, None, "", f"cannot read file: {exc.strerror or exc}"))
            continue
        try:
            docs = parse_documents(text, str(path))
        except SpecError as exc:
            issues.extend(exc.issues)
            continue
        if not docs:
            issues.append(SpecIssue(str(path), None, None, "", "file holds no Deployment"))
        for doc in docs:
            try:
                out.extend(validate(Deployment, doc).expanded())
            except SpecError as exc:
                issues.extend(exc.issues)
    names = [d.name for d in out]
    for name in sorted({n for n in names if names.count(n) > 1}):
        issues.append(SpecIssue(", ".join(map(str, paths)), None, None, "metadata.name",
                                f"deployment {name!r} is declared twice; names must be unique"))
    if issues:
        raise SpecError(issues)
    return tuple(out)


def load_inputs(
    files: Sequence[str | Path],
    org_file: str | Path | None = None,
    catalog_files: Sequence[str | Path] | None = None,
    as_of: dt.date | None = None,
) -> Inputs:
    """Load and validate deployments, org and catalog, collecting errors across all files."""
    issues: list[SpecIssue] = []
    deployments: tuple[Deployment, ...] = ()
    org = Org()
    targets: tuple[Target, ...] = ()
    try:
        deployments = load_deployments(files)
    except SpecError as exc:
        issues.extend(exc.issues)
    try:
        org = load_org(org_file)
    except SpecError as exc:
        issues.extend(exc.issues)
    try:
        # held to the live settings last read from the accounts (`sovra audit settings`), where wider
        targets = live_settings.apply(load_targets(catalog_files, org), live_settings.recorded())
    except SpecError as exc:
        issues.extend(exc.issues)
    if issues:
        raise SpecError(issues)
    return Inputs(deployments, org, targets, as_of or dt.date.today())


def plan(inputs: Inputs, options: SolveOptions | None = None, require: Sequence[tuple[str, str]] = ()) -> FleetPlan:
    """Plan every deployment jointly."""
    return plan_fleet(
        inputs.deployments,
        inputs.targets,
        credits=inputs.org.credits,
        licenses=license_pack(inputs.org.policy),
        as_of=inputs.as_of,
        options=options or SolveOptions(),
        require=require,
    )
