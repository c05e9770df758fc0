"""The `sovra` command line. Heavy modules are imported inside commands so `sovra --help` stays instant."""

from __future__ import annotations

import datetime as dt
import enum
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from orchestrator.errors import SovraError, SpecError

app = typer.Typer(
    name="sovra",
    help="Place model deployments where rules allow and credits go furthest; route within residency.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)


class Output(str, enum.Enum):
    table = "table"
    json = "json"
    yaml = "yaml"


class SchemaKind(str, enum.Enum):
    deployment = "deployment"
    org = "org"
    catalog = "catalog"


FilesArg = Annotated[list[Path], typer.Argument(help="Deployment YAML file(s); several are planned jointly.")]
OrgOpt = Annotated[Optional[Path], typer.Option("--org", help="Org file: credits, clusters, tenants, policy.")]
CatalogOpt = Annotated[
    Optional[list[Path]], typer.Option("--catalog", help="Catalog file replacing the shipped one (repeatable).")
]
AsOfOpt = Annotated[Optional[str], typer.Option("--as-of", help="Date credits are counted from (YYYY-MM-DD).")]
OutputOpt = Annotated[Output, typer.Option("-o", "--output", help="Output format.")]


def _as_of(value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise SpecError([_cli_issue("--as-of", f"{value!r} is not a date; expected YYYY-MM-DD, e.g. 2026-11-22")]) from None


def _cli_issue(option: str, message: str):
    from orchestrator.errors import SpecIssue

    return SpecIssue("command line", None, None, option, message)


def _emit(data: Any, fmt: Output) -> None:
    if fmt is Output.yaml:
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _fail(exc: SovraError) -> None:
    if isinstance(exc, SpecError):
        err.print(f"[red]error:[/] {len(exc.issues)} problem{'s' if len(exc.issues) != 1 else ''} in input")
        for issue in exc.issues:
            err.print(f"  {issue}", highlight=False, markup=False)
    else:
        err.print(f"[red]error:[/] {exc}", highlight=False)
    raise typer.Exit(exc.exit_code)


def _inputs(files, org, catalog, as_of):
    from orchestrator.planning import load_inputs

    return load_inputs(files, org, catalog, _as_of(as_of))


@app.command()
def validate(files: FilesArg, org: OrgOpt = None, catalog: CatalogOpt = None) -> None:
    """Check deployment, org and catalog files; report every problem with file:line and field."""
    try:
        inputs = _inputs(files, org, catalog, None)
    except SovraError as exc:
        _fail(exc)
    names = ", ".join(d.name for d in inputs.deployments)
    out.print(f"[green]ok[/]: {len(inputs.deployments)} deployment(s) ({names}), {len(inputs.targets)} targets")


@app.command()
def plan(
    files: FilesArg,
    org: OrgOpt = None,
    catalog: CatalogOpt = None,
    as_of: AsOfOpt = None,
    output: OutputOpt = Output.table,
    all_rejected: Annotated[bool, typer.Option("--all-rejected", help="List every rejected target.")] = False,
    time_limit: Annotated[float, typer.Option(help="Solver time limit in seconds.")] = 120.0,
) -> None:
    """Place deployments at the lowest effective cost. Exit 0 feasible, 1 infeasible, 2 invalid input."""
    from orchestrator import planning, render
    from policies.placement import SolveOptions

    try:
        inputs = _inputs(files, org, catalog, as_of)
        with err.status(f"planning {len(inputs.deployments)} deployment(s) over {len(inputs.targets)} targets…"):
            result = planning.plan(inputs, SolveOptions(time_limit_s=time_limit))
    except SovraError as exc:
        _fail(exc)
    if output is Output.table:
        render.print_plan(result, out, all_rejected=all_rejected)
    else:
        _emit(render.plan_json(result), output)
    raise typer.Exit(0 if result.feasible else 1)


@app.command()
def explain(
    file: Annotated[Path, typer.Argument(help="Deployment YAML file.")],
    target: Annotated[str, typer.Option("--target", help="Target id to explain.")],
    deployment: Annotated[Optional[str], typer.Option(help="Deployment name, if the file holds several.")] = None,
    org: OrgOpt = None,
    catalog: CatalogOpt = None,
    as_of: AsOfOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Why a target was chosen or rejected, with the cost breakdown."""
    from orchestrator.explain import explain_target, print_explanation

    try:
        inputs = _inputs([file], org, catalog, as_of)
        result = explain_target(inputs, target, deployment)
    except SovraError as exc:
        _fail(exc)
    if output is Output.table:
        print_explanation(result, out)
    else:
        _emit(result, output)


@app.command()
def targets(
    zone: Annotated[Optional[str], typer.Option(help="Only targets in this zone (EU, US, APAC, GLOBAL…).")] = None,
    provider: Annotated[Optional[str], typer.Option(help="Only this provider (aws-sagemaker, azure-ml…).")] = None,
    country: Annotated[Optional[str], typer.Option(help="Only targets in this country (ISO code).")] = None,
    gpu_memory: Annotated[
        Optional[float], typer.Option("--gpu-memory", help="Only targets with an instance of at least this many GB.")
    ] = None,
    org: OrgOpt = None,
    catalog: CatalogOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """List the target catalog (shipped catalog plus org clusters), filtered."""
    from orchestrator.catalog import load_org, load_targets
    from orchestrator.targets import filter_targets, print_targets, targets_json

    try:
        rows = filter_targets(load_targets(catalog, load_org(org)), zone=zone, provider=provider, country=country,
                              gpu_memory=gpu_memory)
    except SovraError as exc:
        _fail(exc)
    if output is Output.table:
        print_targets(rows, out)
    else:
        _emit(targets_json(rows), output)


@app.command()
def schema(kind: Annotated[SchemaKind, typer.Argument(help="Which file format.")]) -> None:
    """Print the JSON Schema of a file format (for editors and CI validation)."""
    from orchestrator.spec import Catalog, Deployment, Org

    model = {"deployment": Deployment, "org": Org, "catalog": Catalog}[kind.value]
    sys.stdout.write(json.dumps(model.model_json_schema(by_alias=True), indent=2) + "\n")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
