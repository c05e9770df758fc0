"""The `sovra` command line. Heavy modules are imported inside commands so `sovra --help` stays instant."""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sovra.core.errors import SovraError, SpecError

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
OrgOpt = Annotated[Path | None, typer.Option("--org", help="Org file: credits, clusters, tenants, policy.")]
CatalogOpt = Annotated[
    list[Path] | None, typer.Option("--catalog", help="Catalog file replacing the shipped one (repeatable).")
]
AsOfOpt = Annotated[str | None, typer.Option("--as-of", help="Date credits are counted from (YYYY-MM-DD).")]
OutputOpt = Annotated[Output, typer.Option("-o", "--output", help="Output format.")]


def _as_of(value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise SpecError([_cli_issue("--as-of", f"{value!r} is not a date; expected YYYY-MM-DD, e.g. 2026-11-22")]) from None


def _cli_issue(option: str, message: str):
    from sovra.core.errors import SpecIssue

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
    from sovra.orchestrator.planning import load_inputs

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
    from sovra.orchestrator import planning, render
    from sovra.policies.placement import SolveOptions

    try:
        inputs = _inputs(files, org, catalog, as_of)
        with err.status(f"planning {len(inputs.deployments)} deployment(s) over {len(inputs.targets)} targets…"):
            result = planning.plan(inputs, SolveOptions(time_limit_s=time_limit))
    except SovraError as exc:
        _fail(exc)
    if output is Output.table:
        variants = {d.name: f"locale {d.spec.variant_of.locale} of {d.spec.variant_of.base}"
                    for d in inputs.deployments if d.spec.variant_of is not None}
        render.print_plan(result, out, all_rejected=all_rejected, notes=variants)
    else:
        _emit(render.plan_json(result), output)
    raise typer.Exit(0 if result.feasible else 1)


@app.command()
def explain(
    file: Annotated[Path, typer.Argument(help="Deployment YAML file.")],
    target: Annotated[str, typer.Option("--target", help="Target id to explain.")],
    deployment: Annotated[str | None, typer.Option(help="Deployment name, if the file holds several.")] = None,
    org: OrgOpt = None,
    catalog: CatalogOpt = None,
    as_of: AsOfOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Why a target was chosen or rejected, with the cost breakdown."""
    from sovra.orchestrator.explain import explain_target, print_explanation

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
    zone: Annotated[str | None, typer.Option(help="Only targets in this zone (EU, US, APAC, GLOBAL…).")] = None,
    provider: Annotated[str | None, typer.Option(help="Only this provider (aws-sagemaker, azure-ml…).")] = None,
    country: Annotated[str | None, typer.Option(help="Only targets in this country (ISO code).")] = None,
    gpu_memory: Annotated[
        float | None, typer.Option("--gpu-memory", help="Only targets with an instance of at least this many GB.")
    ] = None,
    org: OrgOpt = None,
    catalog: CatalogOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """List the target catalog (shipped catalog plus org clusters), filtered."""
    from sovra.orchestrator.catalog import load_org, load_targets
    from sovra.orchestrator.targets import filter_targets, print_targets, targets_json

    try:
        rows = filter_targets(load_targets(catalog, load_org(org)), zone=zone, provider=provider, country=country,
                              gpu_memory=gpu_memory)
    except SovraError as exc:
        _fail(exc)
    if output is Output.table:
        print_targets(rows, out)
    else:
        _emit(targets_json(rows), output)

PortOpt = Annotated[int | None, typer.Option(
    "--port", help="Router HTTP port on the local Ray (default $SOVRA_ROUTER_PORT or 8000).")]


def _settings(port: int | None):
    from sovra.orchestrator.deploy import Settings

    return Settings() if port is None else Settings(router_port=port)


def _say(message: str) -> None:
    err.print(f"[dim]·[/] {message}", highlight=False)


def _print_status(entries: list[dict[str, Any]]) -> None:
    from rich.table import Table

    for e in entries:
        if not e["reachable"]:
            out.print(f"[bold]{e['cluster']}[/]: {e.get('message', 'unreachable')}")
            continue
        r = e["router"]
        router = (f"router {r['url']} {r['status']}, {'live' if r['healthy'] else 'NOT answering /healthz'}"
                  if r else "no router")
        ready = ((r or {}).get("ready") or {}).get("deployments", {})
        out.print(f"[bold]{e['cluster']}[/] (dashboard {e['dashboard']}): {router}")
        if r and r.get("warning"):
            err.print(f"[yellow]warning:[/] router of {e['cluster']}: {r['warning']}", highlight=False)
        elif r and "https" in r:
            out.print(f"router serves {'HTTPS' if r['https'] else 'plain HTTP'} on {r['listen']}", highlight=False)
        if r:
            out.print(f"router replicas running: {r.get('replicas')}", highlight=False)
        if e.get("ingress"):
            ports = e.get("ports") or {}
            out.print(f"ingress: {'HAProxy' if e['ingress'] == 'haproxy' else 'Serve proxy'}; ports: router "
                      f"{ports.get('router')}, GCS {ports.get('gcs')}, dashboard {ports.get('dashboard')} "
                      f"({len(ports)} in all: `-o json`)", highlight=False)
        if e.get("audit_key"):
            from sovra.orchestrator.router.audit_sign import fingerprint

            out.print(f"audit checkpoint key: {e['audit_key']} (fingerprint {fingerprint(e['audit_key'])})",
                      highlight=False)
        table = Table("deployment", "model", "residency", "target", "zone", "country", "replicas", "engine",
                      "status", "ready")
        for b in e["backends"]:
            d = ready.get(b["deployment"])
            ready_text = "-" if d is None else (f"yes ({d['healthy']}/{d['backends']})" if d["ready"]
                                                else f"NO (0/{d['backends']})")
            replicas = "-" if b["replicas"] is None else f"{b['replicas']} ({b['min']}..{b['max']})"
            engine = b["engine"] or (b["kind"] if b["kind"] != "ray" else "-")
            table.add_row(b["deployment"], b["model"], b["residency"], b["target"], b["zone"], b["country"] or "-",
                          replicas, engine, b["status"], ready_text)
        out.print(table)


def _answered(model: str, deployment: str, answer) -> None:
    from sovra.orchestrator.up import FIRST_PROMPT

    out.print(f"first request: {FIRST_PROMPT}", highlight=False)
    out.print(f"[bold]{model}[/] (deployment {deployment}) answered via target [bold]{answer.target}[/] "
              f"(zone {answer.zone}): [cyan]{answer.text.strip()}[/]", highlight=False)


def _live(inputs):
    """Re-read the live settings of every account `up` may route to, and hold widened targets to their real zone
    before planning (recorded for later plans too)."""
    import dataclasses

    from sovra.orchestrator import live_settings as ls

    if not ls.checkable(inputs.org, inputs.targets):
        return inputs
    with err.status("reading account settings…"):
        report = ls.check(inputs.org, inputs.targets)
    ls.save(report)
    for f in report.widened:
        err.print(f"[yellow]live setting:[/] {f.target}: {f.setting} = {f.value} processes in {f.zone}, not "
                  f"{f.catalog_zone} as the catalog says; planning it at {f.zone}. Fix: {f.fix}", highlight=False)
    for u in report.unread:
        err.print(f"[yellow]warning:[/] {u.target}: its live settings could not be read ({u.reason}); "
                  f"{_held(u)}", highlight=False)
    return dataclasses.replace(inputs, targets=ls.apply(inputs.targets, (*report.findings, *report.unread)))


def _held(u) -> str:
    if u.widened:
        return (f"planning it at {u.zone}, unverified (fails closed). Give Sovra's credentials read access to the "
                "setting, or set `if_unread: catalog` on its account or endpoint in org.yaml to trust the catalog")
    return f"it keeps its catalog zone {u.zone}, unverified (`if_unread: catalog` in org.yaml)"


# ------------------------------------------------------------------------------------ Pulumi (cloud targets)
BackendOpt = Annotated[str | None, typer.Option(
    "--backend", help="Pulumi backend URL (file://, s3://, azblob://, gs://, https://api.pulumi.com); default "
    "$SOVRA_PULUMI_BACKEND or file://$SOVRA_HOME/pulumi.")]
EnvOpt = Annotated[str, typer.Option("--env", help="Environment: stacks are named <deployment>-<env>.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking after the preview.")]


def _engine():
    from sovra.orchestrator.provisioning import Engine

    return Engine(err, _say)


def _plan_for_pulumi(files, org, catalog, as_of):
    from sovra.orchestrator import planning

    inputs = _inputs(files, org, catalog, as_of)
    with err.status("planning…"):
        result = planning.plan(inputs)
    if not result.feasible:
        from sovra.core.errors import ProvisionError

        raise ProvisionError("the plan is infeasible; run `sovra plan` to see which constraint to relax")
    return inputs, result


@app.command()
def preview(
    files: FilesArg,
    org: OrgOpt = None,
    catalog: CatalogOpt = None,
    as_of: AsOfOpt = None,
    backend: BackendOpt = None,
    env: EnvOpt = "dev",
) -> None:
    """Plan, then show what `up` would provision with Pulumi (one stack per deployment); changes nothing."""
    from sovra.orchestrator import provisioning as pv

    try:
        inputs, result = _plan_for_pulumi(files, org, catalog, as_of)
        found = pv.provisioned(inputs, result)
        if not found:
            out.print("nothing to provision with Pulumi: every placement is a Ray target, a managed offering or an "
                      "org endpoint (`sovra up` deploys them)")
            return
        stacks = pv.open_stacks(found, backend, env, inputs.org, lambda: pv.service_keys(inputs, result))
        for r in _engine()("preview", stacks):
            counts = ", ".join(f"{n} to {op}" for op, n in sorted(r.changes.items()) if op != "same") or "no changes"
            out.print(f"[bold]{r.stack}[/]: {counts}", highlight=False)
    except SovraError as exc:
        _fail(exc)


@app.command()
def refresh(
    files: FilesArg,
    org: OrgOpt = None,
    catalog: CatalogOpt = None,
    as_of: AsOfOpt = None,
    backend: BackendOpt = None,
    env: EnvOpt = "dev",
) -> None:
    """Read the live state of the deployments' Pulumi stacks and report drift. Exit 1 when something drifted."""
    from sovra.orchestrator import provisioning as pv

    try:
        inputs, result = _plan_for_pulumi(files, org, catalog, as_of)
        found = pv.provisioned(inputs, result)
        if not found:
            out.print("no Pulumi stacks for these deployments: nothing to refresh")
            return
        drifted = False
        for stack, changed, moved in pv.refresh(found, backend, env, inputs.org, _engine()):
            drifted = drifted or bool(changed) or bool(moved)
            text = ", ".join(f"{n} {op}d outside Sovra" for op, n in sorted(changed.items())) or "no drift"
            out.print(f"[bold]{stack}[/]: {text}", highlight=False)
            for why in moved:
                out.print(f"[red]outside its residency:[/] {why}", highlight=False)
    except SovraError as exc:
        _fail(exc)
    raise typer.Exit(1 if drifted else 0)


@app.command()
def up(
    files: FilesArg,
    org: OrgOpt = None,
    catalog: CatalogOpt = None,
    as_of: AsOfOpt = None,
    port: PortOpt = None,
    ray_only: Annotated[bool, typer.Option("--ray-only", help="Deploy the Ray placements, skip cloud ones.")] = False,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Send a first chat request when done.")] = True,
    backend: BackendOpt = None,
    env: EnvOpt = "dev",
    yes: YesOpt = False,
) -> None:
    """Plan; provision cloud and Kubernetes placements with Pulumi (preview, confirm, up); deploy the Ray placements
    declaratively (idempotent) and start the router over all of them. Exit 1 on failure."""
    from sovra.orchestrator import up as sequence

    ask = None if not sys.stdin.isatty() else (lambda: typer.confirm("apply these changes?", default=False, err=True))
    hooks = sequence.Hooks(say=_say, warn=lambda m: err.print(f"[yellow]warning:[/] {m}", highlight=False),
                           live=_live, engine=_engine(), confirm=(lambda: True) if yes else ask, status=err.status,
                           deployed=_deployed, answered=_answered)
    try:
        sequence.run(_inputs(files, org, catalog, as_of), _settings(port), hooks, ray_only=ray_only, check=check,
                     backend=backend, env=env)
    except SovraError as exc:
        _fail(exc)


def _deployed(results) -> None:
    for r in results:
        out.print(f"[green]up[/]: {r.cluster}: {'changed' if r.changed else 'unchanged'}; "
                  f"router {r.router_url} (OpenAI-compatible: {r.router_url}/v1)")


def _destroy(inputs, backend: str | None, env: str) -> None:
    from sovra.orchestrator import planning
    from sovra.orchestrator.provisioning import destroy

    with err.status("planning…"):
        result = planning.plan(inputs)
    destroy(inputs, result, backend, env, _engine(), lambda line: out.print(line, highlight=False))


@app.command()
def down(
    files: FilesArg,
    org: OrgOpt = None,
    catalog: CatalogOpt = None,
    port: PortOpt = None,
    stop_ray: Annotated[bool, typer.Option("--stop-ray", help="Also stop the local Ray when nothing is left.")] = False,
    as_of: AsOfOpt = None,
    backend: BackendOpt = None,
    env: EnvOpt = "dev",
) -> None:
    """Remove what `up` deployed for these deployments: their Pulumi stacks' resources, their Serve apps (the router
    too when no backend is left)."""
    from sovra.orchestrator import deploy

    try:
        inputs = _inputs(files, org, catalog, as_of)
        _destroy(inputs, backend, env)
        results = deploy.down(inputs, _settings(port), _say, stop_ray=stop_ray)
    except SovraError as exc:
        _fail(exc)
    for r in results:
        out.print(f"[green]down[/]: {r.cluster}: {'removed' if r.changed else 'nothing to remove'}; "
                  f"left: {', '.join(sorted(r.apps)) or 'nothing'}")
    if not results:  # e.g. run with another $SOVRA_HOME (or HOME) than the `up`, which holds the local Ray's record
        from sovra.infra.home import sovra_home

        out.print(f"down: nothing deployed from {sovra_home()} is running for these deployments (an `up` from another "
                  "SOVRA_HOME or HOME keeps its own record of the local Ray)", highlight=False)


@app.command()
def serve(
    org: OrgOpt = None,
    catalog: CatalogOpt = None,
    port: PortOpt = None,
) -> None:
    """(Re)deploy the router on Ray Serve with the org's current tenants; models are left untouched."""
    from sovra.orchestrator import deploy
    from sovra.orchestrator.planning import Inputs

    try:
        from sovra.orchestrator.catalog import load_org, load_targets

        org_ = load_org(org)
        inputs = Inputs((), org_, load_targets(catalog, org_), dt.date.today())
        results = deploy.serve(inputs, _settings(port), _say)
    except SovraError as exc:
        _fail(exc)
    for r in results:
        out.print(f"[green]serving[/]: {r.cluster}: router {r.router_url} ({'updated' if r.changed else 'unchanged'})")


@app.command()
def status(
    org: OrgOpt = None,
    catalog: CatalogOpt = None,
    port: PortOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Deployments, backends, zones, replicas and health on each Ray cluster."""
    from sovra.orchestrator import deploy
    from sovra.orchestrator.catalog import load_org, load_targets

    try:
        org_ = load_org(org)
        entries = deploy.status(load_targets(catalog, org_), _settings(port))
    except SovraError as exc:
        _fail(exc)
    if output is Output.table:
        _print_status(entries)
    else:
        _emit(entries, output)


audit_app = typer.Typer(
    help="Show where requests were processed: every attempt, from the router's audit trail (never payloads).",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(audit_app, name="audit")
RouterOpt = Annotated[str | None, typer.Option(
    "--router", help="Router URL to read the trail from (default http://127.0.0.1:$SOVRA_ROUTER_PORT or 8000).")]
AuditFileOpt = Annotated[Path | None, typer.Option(
    "--file", help="Read a local copy of the trail (its directory, e.g. ~/.sovra/audit) instead of asking the router.")]
AdminKeyEnvOpt = Annotated[str, typer.Option(
    "--admin-key-env", help="Environment variable holding the admin key (a key is never taken on the command line).")]


@audit_app.callback()
def audit(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    deployment: Annotated[str | None, typer.Option(help="Only this deployment.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    zone: Annotated[str | None, typer.Option(
        help="Only requests whose payload reached this zone in any attempt (served or not).")] = None,
    status_: Annotated[int | None, typer.Option("--status", help="Only this HTTP status.")] = None,
    since: Annotated[str | None, typer.Option(help="Only records at or after this ISO time (UTC if no offset).")] = None,
    last: Annotated[int, typer.Option("--last", "-n", min=1, help="At most this many (newest).")] = 50,
    router: RouterOpt = None,
    file: AuditFileOpt = None,
    admin_key_env: AdminKeyEnvOpt = "SOVRA_ADMIN_KEY",
    output: OutputOpt = Output.table,
) -> None:
    """Show where requests were processed: every attempt, from the router's audit trail (never payloads)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from sovra.orchestrator import audit_client as ac

    filters = {"tenant": tenant, "deployment": deployment, "model": model, "zone": zone, "status": status_,
               "since": since}
    try:
        trail = (ac.from_file(file, filters, last) if file is not None
                 else ac.from_router(router or ac.default_router(), admin_key_env, filters, last))
    except SovraError as exc:
        _fail(exc)
    torn = f"{trail.torn} torn line(s) skipped" if trail.torn else ""
    if trail.incomplete:  # some node's chains are missing from this answer: never a silently partial trail
        err.print(f"[yellow]warning:[/] {trail.incomplete}", highlight=False)
    if output is not Output.table:
        _emit(trail.records, output)
        if torn:
            err.print(torn, highlight=False)
        return
    localised = any("locale" in r for r in trail.records)  # a deployment with locale variants: which one served
    table = Table("time", "tenant", "deployment", "model", *(("locale → variant",) if localised else ()), "attempts",
                  "zone", "status", "outcome", "ms", "tokens in/out")
    for r in trail.records:
        variant = ((f"{r.get('locale') or '-'} ({r.get('locale_source') or 'none'}) → "
                    f"{r.get('variant') or r.get('deployment') or '-'}"),) if localised else ()
        table.add_row(r.get("time"), r.get("tenant"), r.get("deployment") or "-", r.get("model") or "-", *variant,
                      ac.attempts_text(r), r.get("zone") or "-", str(r.get("status")), r.get("outcome"),
                      f"{r.get('latency_ms', 0):.1f}", f"{r.get('prompt_tokens', 0)}/{r.get('completion_tokens', 0)}")
    out.print(table)
    out.print(f"{len(trail.records)} record(s) from {trail.source}" + (f"; {torn}" if torn else ""), highlight=False)


@audit_app.command("verify")
def audit_verify(
    router: RouterOpt = None,
    file: AuditFileOpt = None,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", help="A checkpoint from `sovra audit checkpoint -o FILE`: fail unless the trail still "
        "extends it (no tail cut, rewrite, reorder or gap since).")] = None,
    forget: Annotated[bool, typer.Option(
        "--forget", help="Forget the heads this auditor verified last for this trail (e.g. after archiving).")] = False,
    admin_key_env: AdminKeyEnvOpt = "SOVRA_ADMIN_KEY",
    output: OutputOpt = Output.table,
) -> None:
    """Prove no audit line was removed, reordered or edited: every writer's chain and its seq continuity, and with
    --checkpoint that the trail still extends signed heads. Also checks the heads this auditor verified last.
    Exit 0 intact, 1 naming the writer and the first broken or missing seq."""
    from sovra.infra.home import sovra_home
    from sovra.orchestrator import audit_client as ac
    from sovra.orchestrator.router.audit import now_iso

    source = str(file.resolve()) if file is not None else (router or ac.default_router())
    memory = ac.Memory(sovra_home(), source)
    if forget:
        memory.forget()
    try:
        given = None if checkpoint is None else _read_json(checkpoint)
        remembered = memory.load()
        pinned = ((remembered or {}).get("checkpoint") or {}).get("public_key")
        if file is not None:
            result = ac.verify_file(file, given, public_key=pinned if given else None)
            earlier = ac.extends(file, remembered["checkpoint"]) if remembered and given is None else None
        else:
            url = router or ac.default_router()
            result = ac.verify_router(url, admin_key_env, given)
            earlier = (ac.verify_router(url, admin_key_env, remembered["checkpoint"])
                       if remembered and given is None and pinned else None)
    except SovraError as exc:
        _fail(exc)
    ok = result["ok"] and (earlier is None or earlier["ok"])
    if earlier is not None and not earlier["ok"]:
        err.print(f"WARNING: this trail no longer extends the heads this auditor verified on "
                  f"{remembered.get('verified_at')}: {earlier['message']}", highlight=False)
    if ok:  # remember what was proven: the router's signed heads, or the local trail's heads
        try:
            if file is None:
                fresh = ac.checkpoint_router(router or ac.default_router(), admin_key_env)
                if pinned and fresh.get("public_key") != pinned:
                    err.print(f"WARNING: the router's checkpoint key changed since {remembered.get('verified_at')} "
                              "(a new key under its $SOVRA_HOME/keys); verify it out of band, then --forget",
                              highlight=False)
                    ok = False
                else:
                    memory.save(fresh, time=now_iso())
            else:
                memory.save(ac.heads_checkpoint(result), time=now_iso())
        except SovraError as exc:
            err.print(f"note: the heads were not remembered ({exc})", highlight=False)
    if output is Output.table:
        out.print(f"{result['file']}: {result['message']}", highlight=False)
        for chain in result.get("chains", []):
            last = chain.get("last") or {}
            state = "ok" if chain["ok"] else "BROKEN"
            out.print(f"  {chain['writer']}: {state}, {chain['records']} record(s), seq "
                      f"{chain.get('first_seq')}–{last.get('seq')}{', closed' if chain.get('closed') else ''}"
                      f"{'; missing ' + chain['missing'] if chain.get('missing') else ''}", highlight=False)
        for problem in result.get("problems", []):
            out.print(f"  {problem['message']}", highlight=False)
    else:
        _emit({**result, "extends_remembered": None if earlier is None else earlier["ok"]}, output)
    raise typer.Exit(0 if ok else 1)


@audit_app.command("checkpoint")
def audit_checkpoint(
    router: RouterOpt = None,
    output_file: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Write the checkpoint here (keep it away from the router's node).")] = None,
    admin_key_env: AdminKeyEnvOpt = "SOVRA_ADMIN_KEY",
) -> None:
    """Fetch the router's signed heads (Ed25519): later, `sovra audit verify --checkpoint FILE` proves the trail
    still extends them."""
    from sovra.orchestrator import audit_client as ac
    from sovra.orchestrator.router.audit_sign import check, fingerprint

    try:
        cp = ac.checkpoint_router(router or ac.default_router(), admin_key_env)
        heads = check(cp)
    except SovraError as exc:
        _fail(exc)
    text = json.dumps(cp, indent=1)
    if output_file is None:
        out.print(text, highlight=False)
    else:
        fd = os.open(output_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        err.print(f"checkpoint of {len(heads)} chain(s) signed by {cp['public_key']} "
                  f"(fingerprint {fingerprint(cp['public_key'])}) written to {output_file}", highlight=False)


def _read_json(path: Path) -> Any:
    from sovra.orchestrator.audit_client import AuditReadError

    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise AuditReadError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise AuditReadError(f"{path} is not JSON: give a file written by `sovra audit checkpoint -o`") from None


@audit_app.command("settings")
def audit_settings(
    org: OrgOpt = None,
    catalog: CatalogOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Read, per account, the settings that decide where data is really processed, and report every mismatch
    with the catalog. Widened targets are recorded: later plans hold them to their real zone. Exit 1 on a
    mismatch or an account that could not be read."""
    from rich.table import Table

    from sovra.orchestrator import live_settings as ls
    from sovra.orchestrator.catalog import load_org, load_targets

    try:
        org_ = load_org(org)
        targets = load_targets(catalog, org_)
        if not ls.checkable(org_, targets):
            out.print("no accounts to check: add `accounts:` (managed targets) or `endpoints:` to the org file")
            raise typer.Exit(0)
        with err.status("reading account settings…"):
            report = ls.check(org_, targets)
        path = ls.save(report)
    except SovraError as exc:
        _fail(exc)
    if output is not Output.table:
        _emit({"checked_at": report.checked_at, "findings": [vars(f) | {"widened": f.widened}
                                                            for f in report.findings],
               "unread": [vars(u) | {"widened": u.widened} for u in report.unread]}, output)
    else:
        table = Table("target", "setting", "value", "catalog zone", "live zone", "verdict", "fix")
        for f in report.findings:
            verdict = "[red]WIDER[/]" if f.widened else "[green]ok[/]"
            table.add_row(f.target, f.setting, f.value, f.catalog_zone, f.zone, verdict, f.fix if f.widened else "")
        for u in report.unread:
            table.add_row(u.target, "-", "-", u.catalog_zone, u.zone, "[yellow]UNREAD[/]", f"{u.reason}; {_held(u)}")
        out.print(table)
        out.print(f"{len(report.widened)} widened, {len(report.unread)} unread; recorded in {path} (plans hold "
                  "widened targets to their live zone, unread ones to GLOBAL unless `if_unread: catalog`)",
                  highlight=False)
    raise typer.Exit(1 if report.widened or report.unread else 0)


class SpendOutput(str, enum.Enum):
    table = "table"
    json = "json"
    csv = "csv"


@app.command()
def spend(
    org: OrgOpt = None,
    since: Annotated[str | None, typer.Option(help="First day (YYYY-MM-DD, UTC); default: this month's first.")] = None,
    until: Annotated[str | None, typer.Option(help="Last day, inclusive (YYYY-MM-DD); default: now.")] = None,
    by: Annotated[str | None, typer.Option(help="Group by, comma-separated: tenant, deployment, target, cloud, "
                                                "provider, day, month.")] = None,
    output: Annotated[SpendOutput, typer.Option("-o", "--output", help="Output format.")] = SpendOutput.table,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report here.")] = None,
) -> None:
    """Spend from the router's ledger: per group, credits' burn and forecast, budgets. Exit 1 if unreadable."""
    from sovra.orchestrator import spend_report as sr
    from sovra.orchestrator.catalog import load_org

    try:
        report = sr.report(load_org(org), since, until, by, dt.datetime.now(dt.UTC), daily=html is not None)
    except ValueError as exc:
        _fail(SpecError([_cli_issue("--by" if "group by" in str(exc) else "--since/--until", str(exc))]))
    except SovraError as exc:
        _fail(exc)
    if output is SpendOutput.table:
        sr.render_table(report, out)
    else:
        sys.stdout.write(sr.render_json(report) if output is SpendOutput.json else sr.render_csv(report))
    if html is not None:
        html.write_text(sr.render_html(report), encoding="utf-8")
        err.print(f"wrote {html}", highlight=False)


@app.command()
def schema(kind: Annotated[SchemaKind, typer.Argument(help="Which file format.")]) -> None:
    """Print the JSON Schema of a file format (for editors and CI validation)."""
    from sovra.core.spec import Catalog, Deployment, Org

    model = {"deployment": Deployment, "org": Org, "catalog": Catalog}[kind.value]
    sys.stdout.write(json.dumps(model.model_json_schema(by_alias=True), indent=2) + "\n")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
