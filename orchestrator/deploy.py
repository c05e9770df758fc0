"""`up`, `down`, `serve` and `status` for Ray targets: plan -> declarative Serve config -> cluster.

Placements that need no provisioning — managed per-token offerings (Bedrock, Cortex, Databricks pay-per-token) and
endpoints the org already runs (org.yaml `endpoints:`) — become backends in the router's table, next to the Ray
replicas. Dedicated cloud endpoints are provisioned with Pulumi (a later layer); until then `up` refuses a plan that
needs one rather than pretending (`--ray-only` deploys the rest and says what it skipped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sovra.infra import serve_config as sc
from sovra.orchestrator import routing_table as rt
from sovra.infra.ray_cluster import (
    TARGET_RESOURCE_UNITS,
    ClusterError,
    LocalRay,
    cluster_token,
    dashboard_url,
    sovra_home,
)
from sovra.infra.serve_api import AppState, ServeApi, refuse_token_in_clear
from sovra.core.errors import ProviderError, SovraError
from sovra.orchestrator.planning import Inputs
from sovra.core.backends import Backend
from sovra.core.spec import Target
from sovra.core.spec.org import RouterScale, Cluster, RouterTls, connection_for
from sovra.policies.plan import FleetPlan
from sovra.providers import base as providers

Say = Callable[[str], None]
LOCAL = "local"


class DeployError(SovraError):
    """A plan cannot be applied as asked."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise DeployError(f"{name}={value!r} is not a port number") from None


@dataclass(frozen=True)
class Settings:
    """Where the embedded default runs; tests give their own ports and home."""

    home: Path = field(default_factory=sovra_home)
    router_port: int = field(default_factory=lambda: _env_int("SOVRA_ROUTER_PORT", 8000))
    dashboard_port: int = field(default_factory=lambda: _env_int("SOVRA_RAY_DASHBOARD_PORT", 8265))
    gcs_port: int = field(default_factory=lambda: _env_int("SOVRA_RAY_PORT", 6379))
    timeout_s: float = 600

    def local_ray(self) -> LocalRay:
        return LocalRay(self.home, dashboard_port=self.dashboard_port, gcs_port=self.gcs_port,
                        router_port=self.router_port)

    @property
    def audit_path(self) -> str:
        return str(self.home / "audit")

    @property
    def spend_path(self) -> str:
        return str(self.home / "spend")


@dataclass(frozen=True)
class ClusterResult:
    cluster: str
    dashboard: str
    router_url: str | None
    changed: bool
    apps: Mapping[str, AppState]


def cluster_key(target: Target) -> str:
    return target.address or LOCAL


def is_ray(target_or_provider: Target | str) -> bool:
    name = target_or_provider if isinstance(target_or_provider, str) else target_or_provider.provider
    return providers.get(name).provisioner == "ray-serve"


def _org_cluster(key: str, targets: Iterable[Target]) -> Cluster | None:
    """The org's settings for the Ray cluster at `key` (clusters sharing an address agree on them: see `Org`)."""
    return next((t for t in targets if isinstance(t, Cluster) and t.address == key), None)


def _router_cluster(key: str, targets: Iterable[Target]) -> Cluster | None:
    """The org's cluster whose router is cluster `key`'s (the local Ray's: a `provider: ray` cluster without
    `address`); clusters sharing one agree on its settings (see `Org`)."""
    if key != LOCAL:
        return _org_cluster(key, targets)
    return next((t for t in targets if isinstance(t, Cluster) and not t.address and is_ray(t)), None)


def router_tls(key: str, targets: Iterable[Target]) -> RouterTls | None:
    """The org's `tls` for the router of cluster `key` (certificate and key paths on its node), or None."""
    c = _router_cluster(key, targets)
    return c.tls if c else None


def _insecure_dashboard(key: str, targets: Iterable[Target]) -> bool:
    c = _org_cluster(key, targets) if key != LOCAL else None
    return bool(c and c.insecure_dashboard)


def _token(key: str, settings: Settings, targets: Iterable[Target]) -> str | None:
    """The token every client of cluster `key` sends: the local Ray's own file, or the org's / environment's."""
    if key == LOCAL:
        return cluster_token(None, home=settings.home)
    c = _org_cluster(key, targets)
    return cluster_token(key, token_file=c.auth_token_file if c else None)


def _connect(key: str, settings: Settings, say: Say, targets: Iterable[Target], *,
             local_targets: Collection[str] = ()) -> ServeApi:
    """A client of cluster `key`; the local Ray is started (with `local_targets`' resources) if it is not running."""
    if key == LOCAL:
        local = settings.local_ray()
        rec = local.ensure(say, resources=[sc.target_resource(t) for t in local_targets],
                           tls=router_tls(LOCAL, targets) is not None,
                           serving=lambda r: ServeApi(r.dashboard, token=local.token()).apps())
        return ServeApi(rec.dashboard, token=local.token())
    return ServeApi(dashboard_url(key), token=_token(key, settings, targets),
                    insecure_http=_insecure_dashboard(key, targets))


def _http(key: str, settings: Settings, targets: Iterable[Target]) -> tuple[str, int]:
    """Where the router of cluster `key` listens: loopback for the local Ray, the org's router_host/port else."""
    if key == LOCAL:
        return "127.0.0.1", settings.router_port
    c = _org_cluster(key, targets)
    fields = Cluster.model_fields
    return ((c.router_host, c.router_port) if c
            else (fields["router_host"].default, fields["router_port"].default))


def router_url(key: str, settings: Settings, targets: Iterable[Target]) -> str:
    host, port = _http(key, settings, targets)
    if key == LOCAL:
        host = "127.0.0.1"
    elif host in ("0.0.0.0", "::"):  # every interface: reach it where the dashboard is
        host = httpx.URL(dashboard_url(key)).host or "127.0.0.1"
    return f"{'https' if router_tls(key, targets) else 'http'}://{host}:{port}"


def _loopback(host: str) -> bool:
    from sovra.infra.transport import is_loopback

    return is_loopback(host)


def refuse_open_router(key: str, inputs: Inputs, settings: Settings) -> None:
    """With no tenants the router accepts any caller, so it may listen on loopback only."""
    host, port = _http(key, settings, inputs.targets)
    if inputs.org.tenants or _loopback(host):
        return
    ids = sorted(t.id for t in inputs.targets if cluster_key(t) == key)
    raise DeployError(
        f"the org has no tenants, so the router would accept any caller, and on cluster {key} it would listen on "
        f"{host}:{port}. Add tenants with key_sha256 to the org file, or bind the router to loopback with "
        f"`router_host: 127.0.0.1` on cluster{'s' if len(ids) > 1 else ''} {', '.join(ids)}.")


def refuse_node_local_budgets(key: str, inputs: Inputs, scale: RouterScale | None, nodes: int) -> None:
    """Budgets are exact across router replicas only through one store: a SQLite file lives on one node, so
    routers on several nodes would each hold the whole budget."""
    spend = inputs.org.spend
    if not inputs.org.budgets or spend.store != "sqlite" or key == LOCAL:  # the local Ray is one node
        return
    if scale is None or scale.replicas != 1:  # a cluster with one node today may add nodes, and Serve routers there
        raise DeployError(
            f"org.yaml sets budgets and the spend store is SQLite, but the router of cluster {key} may run "
            f"replicas on several nodes ({nodes} alive now), each with its own SQLite file: every node would hold "
            "the whole budget. Use `spend: {store: postgres}` with $SOVRA_SPEND_DSN set where the router runs, or "
            "pin one router with `router: {replicas: 1}` on the cluster.")


def refuse_plain_router(key: str, inputs: Inputs, settings: Settings) -> None:
    """A router beyond loopback serves HTTPS (the cluster's `tls`), unless the org says its network is trusted
    (`insecure_http: true`): tenants' keys, prompts and answers would otherwise cross that network in clear."""
    host, port = _http(key, settings, inputs.targets)
    c = _router_cluster(key, inputs.targets)
    if _loopback(host) or (c is not None and (c.tls is not None or c.insecure_http)):
        return
    ids = sorted(t.id for t in inputs.targets if isinstance(t, Cluster) and cluster_key(t) == key) or [key]
    raise DeployError(
        f"the router of cluster {key} ({', '.join(ids)}) would listen on {host}:{port}, which is not loopback, in "
        "plain HTTP: tenants' keys, prompts and answers would cross the network in clear. Give the cluster "
        "`tls: {cert_file: /path/on/head/router.crt, key_file: /path/on/head/router.key}` in org.yaml (files on "
        "the router's node), or `router_host: 127.0.0.1`; or, if that network is trusted, `insecure_http: true`.")


def _check_http_options(api: ServeApi, key: str, wanted: Mapping[str, Any]) -> None:
    """Serve reads its HTTP options when it starts and keeps them while it runs (a PUT with others only logs a
    warning): refuse rather than leave a router in plain HTTP that the org wants on HTTPS, or the reverse."""
    running = api.details().get("http_options") or {}
    if not running:
        return  # Serve is not running: this PUT starts it with `wanted`
    ssl = ("ssl_certfile", "ssl_keyfile")
    if all((running.get(k) or None) == wanted.get(k) for k in ssl):
        return
    now = "HTTPS" if running.get("ssl_certfile") else "plain HTTP"
    then = "HTTPS" if wanted.get("ssl_certfile") else "plain HTTP"
    fix = ("`sovra down FILE... --stop-ray`, then `sovra up` again" if key == LOCAL else
           "remove its Serve applications (`sovra down FILE...`, or `serve shutdown` on the cluster), then run "
           "`sovra up` again")
    what = "other certificate files" if now == then else then
    raise DeployError(f"Serve on cluster {key} already runs its HTTP proxy in {now}, and cannot switch to {what} "
                      f"while it runs: {fix}.")


def _refuse_token_in_clear(key: str, settings: Settings, targets: Iterable[Target]) -> None:
    """Before anything is sent: a remote cluster's Ray token goes only over https or to loopback (`ServeApi`
    refuses the same; checked here so that `up` stops before touching any cluster)."""
    if key != LOCAL:
        refuse_token_in_clear(dashboard_url(key), _token(key, settings, targets),
                              insecure_http=_insecure_dashboard(key, targets))


def _refuse_tls_over_haproxy(key: str, http: sc.ServeHttp | None, targets: Iterable[Target]) -> None:
    """Serve's HAProxy ingress (Ray 2.60) ignores Serve's TLS options: the router would answer in plain HTTP."""
    if http is not None and router_tls(key, targets) is not None:
        raise DeployError(
            "the local Ray runs Serve's HAProxy ingress, which does not serve HTTPS, and the org now gives the local "
            "router `tls`: stop it (`sovra down FILE... --stop-ray`) and run `sovra up` again (a local Ray started "
            "for a router with `tls` runs Serve's own proxy), or remove `tls` from the local cluster")


def check_places(api: ServeApi, key: str, targets: Iterable[str]) -> None:
    """Refuse Ray targets whose cluster has no alive node carrying their resource: their replicas could run nowhere."""
    missing = sc.unplaced_targets([n.resources for n in api.alive_nodes()], targets)
    if not missing:
        return
    where = "the local Ray" if key == LOCAL else f"the Ray cluster at {key}"
    flag = json.dumps({sc.target_resource(t): TARGET_RESOURCE_UNITS for t in missing})
    fix = ("Stop it (`sovra down FILE... --stop-ray`) and run `sovra up` again: it is restarted with them."
           if key == LOCAL else
           f"Start (or restart) the nodes that may run {'them' if len(missing) > 1 else 'it'} with "
           f"`ray start ... --resources '{flag}'` (merged with any --resources they already have).")
    raise DeployError(
        f"{where} has no alive node for target{'s' if len(missing) > 1 else ''} {', '.join(missing)}: a Ray "
        f"target's replicas run only on nodes carrying its resource ({', '.join(map(sc.target_resource, missing))}). "
        + fix)


def _cluster_keys(targets: Sequence[Target], settings: Settings) -> list[str]:
    """Every Ray cluster the targets name, plus the embedded default when it runs."""
    keys = {cluster_key(t) for t in targets if is_ray(t)} | {LOCAL}
    return sorted(k for k in keys if k != LOCAL or settings.local_ray().running() is not None)


def _current(api: ServeApi) -> list[dict[str, Any]]:
    """The configs of the cluster's Serve apps; refuses clusters with imperatively deployed apps."""
    apps = api.apps()
    if any(a.status == "DELETING" for a in apps.values()):  # a `down` (or another tool) still removing some:
        apps = api.wait(lambda now: all(a.status != "DELETING" for a in now.values()), timeout_s=120,  # they have
                        what="Serve to finish deleting applications")  # no config until gone, and would look foreign
    imperative = sorted(n for n, a in apps.items() if a.config is None)
    if imperative:
        raise DeployError(
            f"the cluster at {api.dashboard} runs Serve applications deployed with serve.run ({', '.join(imperative)});"
            " Sovra deploys declaratively, which would delete them. Use a cluster of its own, or delete them first.")
    return [dict(a.config) for a in apps.values() if a.config]


def _apply(api: ServeApi, key: str, settings: Settings, apps: list[dict[str, Any]], current: list[dict[str, Any]],
           say: Say, targets: Iterable[Target], *, check_tls: bool = True) -> bool:
    """PUT the config if it differs from what runs; True when something changed. Refused (`check_tls`; not when
    `down` removes apps) when Serve runs with other TLS settings than the org's, which it would silently keep."""
    host, port = _http(key, settings, targets)
    config = sc.serve_config(apps, host=host, port=port, tls=router_tls(key, targets))
    if check_tls:
        _check_http_options(api, key, config["http_options"])
    if key == LOCAL:
        _check_router_port(api, port)
    if _normalised(apps) == _normalised(current):
        say(f"{key}: nothing to change")
        return False
    api.apply(config)
    return True


def _check_router_port(api: ServeApi, port: int) -> None:
    """On the local Ray, before Serve starts its ingress (no HTTP options yet: this PUT starts it), the router's
    port must be free: otherwise Serve fails deep inside (HAProxy cannot bind) and answers with a traceback."""
    from sovra.infra.ray_ports import port_free

    if api.details().get("http_options"):
        return
    if not port_free(port):
        raise DeployError(f"port {port}, where the router would listen, is already taken by another program on this "
                          f"machine; stop that program or set SOVRA_ROUTER_PORT (or `sovra up --port`) to a free port")


def _normalised(apps: Sequence[Mapping[str, Any]]) -> str:
    keep = ("name", "route_prefix", "import_path", "args", "deployments")
    return json.dumps(sorted(({k: a.get(k) for k in keep} for a in apps), key=lambda a: a["name"]), sort_keys=True,
                      default=str)


def _wait_ready(api: ServeApi, key: str, settings: Settings, say: Say) -> dict[str, AppState]:
    seen: dict[str, str] = {}

    def progress(apps: dict[str, AppState]) -> None:
        for name, a in sorted(apps.items()):
            line = f"{a.status} ({a.running} replica{'s' if a.running != 1 else ''} running)"
            if seen.get(name) != line:
                seen[name] = line
                say(f"{key}: {name}: {line}")

    return api.wait(lambda apps: all(a.status == "RUNNING" for a in apps.values()), timeout_s=settings.timeout_s,
                    what="the applications to run", progress=progress)


def up(inputs: Inputs, plan: FleetPlan, settings: Settings, say: Say, *, ray_only: bool = False
       ) -> list[ClusterResult]:
    """Apply the plan's Ray placements, one declarative Serve config per cluster; wait until they run."""
    if not plan.feasible:
        raise DeployError("the plan is infeasible; run `sovra plan` to see which constraint to relax")
    targets = {t.id: t for t in inputs.targets}
    by_name = {d.name: d for d in inputs.deployments}
    clusters: dict[str, list[sc.RayPlacement]] = {}
    routed: dict[str, list[Backend]] = {}  # cluster -> backends its router reaches without a Serve app
    skipped: list[str] = []
    for dp in plan.deployments:
        d = by_name[dp.deployment]
        ray_ps = [p for p in dp.placements if is_ray(p.provider)]
        total = sum(p.replicas for p in ray_ps)
        keys = sorted({cluster_key(targets[p.target]) for p in ray_ps}) or [LOCAL]
        for p in ray_ps:
            t = targets[p.target]
            clusters.setdefault(cluster_key(t), []).append(sc.RayPlacement(d, p, t, total))
        for p in dp.placements:
            if is_ray(p.provider):
                continue
            t = targets[p.target]
            try:
                backend = rt.routed_entry(d, p, t, connection_for(inputs.org, t))
            except ProviderError as exc:
                skipped.append(f"{dp.deployment} on {p.target}: {exc}")
                continue
            for key in keys:  # every router of the deployment can spill over to it
                routed.setdefault(key, []).append(backend)
                clusters.setdefault(key, [])
    if skipped and not ray_only:
        raise DeployError(
            "the plan places replicas where `up` cannot route: " + "; ".join(skipped)
            + ". Re-run with --ray-only to deploy the rest.")
    for s in skipped:
        say(f"skipped: {s}")
    for key in sorted(clusters):  # before touching anything
        refuse_open_router(key, inputs, settings)
        refuse_plain_router(key, inputs, settings)
        _refuse_token_in_clear(key, settings, inputs.targets)
    local_targets = sorted(t.id for t in inputs.targets if is_ray(t) and cluster_key(t) == LOCAL)
    started = LOCAL in clusters and settings.local_ray().running() is None
    fresh: set[str] = set()  # clusters where Serve ran no app before this `up`
    try:
        apis = {key: _connect(key, settings, say, inputs.targets,
                              local_targets=local_targets if key == LOCAL else ()) for key in sorted(clusters)}
        for key, rps in sorted(clusters.items()):  # every cluster checked before any is changed
            check_places(apis[key], key, [rp.target.id for rp in rps])
        results = []
        for key, rps in sorted(clusters.items()):
            api = apis[key]
            current = _current(api)
            if not current:
                fresh.add(key)
            names = {rp.deployment.name for rp in rps} | {b.deployment for b in routed.get(key, ())}
            http = _serve_http(key, settings)
            _refuse_tls_over_haproxy(key, http, inputs.targets)
            configs = sc.merge(current, names, [sc.model_app(rp, http) for rp in rps])
            backends = _table(sc.router_of(current), names,
                              [rt.backend_entry(rp, http) for rp in rps] + routed.get(key, []))
            configs = _with_router(configs, backends, inputs, settings, key, http or _kept_http(current, settings),
                                   nodes=len(api.alive_nodes()))
            changed = _apply(api, key, settings, configs, current, say, inputs.targets)
            apps = _wait_ready(api, key, settings, say)
            results.append(ClusterResult(key, api.dashboard, router_url(key, settings, inputs.targets), changed, apps))
        return results
    except BaseException:  # a failure, or Ctrl-C: undo what this `up` started, then say why it stopped
        _undo(started, fresh, settings, say, inputs.targets)
        raise


def _undo(started: bool, fresh: Collection[str], settings: Settings, say: Say, targets: Iterable[Target]) -> None:
    """After a failed `up`: stop the local Ray if this `up` started it, and remove the Serve applications from
    clusters that ran none before it (so Serve's proxy or HAProxy holds no port for a router that never came up).
    Clusters that already served something are left as they are: their earlier apps still serve."""
    if started and settings.local_ray().stop():
        say("stopped the local Ray that this `up` started")
    for key in sorted(fresh):
        if key == LOCAL and started:
            continue  # stopped whole, above
        try:
            if key == LOCAL:
                local = settings.local_ray()
                rec = local.running()
                api = ServeApi(rec.dashboard, token=local.token()) if rec else None
            else:
                api = ServeApi(dashboard_url(key), token=_token(key, settings, targets),
                               insecure_http=_insecure_dashboard(key, targets))
            if api is not None and api.apps():
                say(f"{key}: removing the applications this `up` deployed")
                api.delete_all()
        except ClusterError as exc:
            say(f"{key}: could not remove what this `up` deployed ({exc})")


def _serve_http(key: str, settings: Settings) -> sc.ServeHttp | None:
    """Replicas answer over Serve's HTTP ingress (`sc.ServeHttp`) where Serve runs its HAProxy ingress: on the
    local Ray when it was started with it. Elsewhere (Serve's own proxy, or a cluster whose ingress Sovra did not
    start) the router calls them by handle, which costs less than a second trip through Serve's Python proxy."""
    if key != LOCAL:
        return None
    rec = settings.local_ray().record()  # `_connect` has just made sure it runs
    return sc.ServeHttp(settings.router_port) if rec is not None and rec.serve_http else None


def _kept_http(current: Sequence[Mapping[str, Any]], settings: Settings) -> sc.ServeHttp | None:
    """The running router's replica key, kept when its table is rebuilt (`down`, `serve`): replicas deployed over
    HTTP still need it."""
    return sc.ServeHttp(settings.router_port) if sc.holds_replica_key(sc.router_of(current)) else None


def _with_router(configs: list[dict[str, Any]], backends: list[Backend], inputs: Inputs, settings: Settings,
                 key: str, http: sc.ServeHttp | None = None, *, nodes: int = 1) -> list[dict[str, Any]]:
    """The cluster's apps with the router rebuilt over `backends` (none: no router). A remote cluster's router
    keeps its audit trail on its own node (`sovra audit` reads it over HTTP), the local one under $SOVRA_HOME.
    With `http`, the router holds the key of the replicas it reaches over HTTP."""
    configs = [c for c in configs if c.get("name") != sc.ROUTER_APP]
    if not backends:
        return configs
    refuse_open_router(key, inputs, settings)
    refuse_plain_router(key, inputs, settings)
    c = _router_cluster(key, inputs.targets)
    refuse_node_local_budgets(key, inputs, c.router if c else None, nodes)
    return [*configs, sc.router_app(backends, tenants=inputs.org.tenants, admins=inputs.org.admins,
                                    router=inputs.org.router, audit=inputs.org.audit,
                                    audit_path=settings.audit_path if key == LOCAL else None, http=http,
                                    scale=c.router if c else None, nodes=nodes, spend=inputs.org.spend,
                                    budgets=inputs.org.budgets, credits=inputs.org.credits,
                                    spend_path=settings.spend_path if key == LOCAL else None)]


def _table(current_router: Mapping[str, Any] | None, deployments: Collection[str],
           new: Sequence[Backend]) -> list[Backend]:
    try:
        return rt.router_backends(current_router, deployments, new)
    except rt.StaleRouterError as exc:
        raise DeployError(str(exc)) from None


def down(inputs: Inputs, settings: Settings, say: Say, *, stop_ray: bool = False) -> list[ClusterResult]:
    """Remove the deployments' Serve apps from every Ray cluster that may hold them (and the router when empty)."""
    names = {d.name for d in inputs.deployments}
    results = []
    for key in _cluster_keys(inputs.targets, settings):
        try:
            api = _connect(key, settings, say, inputs.targets)
            current = _current(api)
        except ClusterError as exc:
            say(f"{key}: skipped ({exc})")
            continue
        old_router = sc.router_of(current)
        configs = _with_router(sc.merge(current, names, []), _table(old_router, names, []), inputs, settings, key,
                               _kept_http(current, settings), nodes=len(api.alive_nodes()))
        changed = False
        if not configs and current:
            api.delete_all()
            changed = True
        elif configs:
            changed = _apply(api, key, settings, configs, current, say, inputs.targets, check_tls=False)
        wanted = {c["name"] for c in configs}
        apps = api.wait(lambda apps, wanted=wanted: set(apps) <= wanted
                        and all(a.status == "RUNNING" for a in apps.values()),
                        timeout_s=settings.timeout_s, what="the applications to be removed")
        results.append(ClusterResult(key, api.dashboard, router_url(key, settings, inputs.targets) if configs else None,
                                     changed, apps))
    if stop_ray:
        local = settings.local_ray()
        rec = local.running()
        if rec is not None:
            leftover = ServeApi(rec.dashboard, token=local.token()).apps()
            if leftover:
                say(f"local Ray kept running: it still serves {', '.join(sorted(leftover))}")
            else:
                local.stop(say)
    return results


def serve(inputs: Inputs, settings: Settings, say: Say) -> list[ClusterResult]:
    """(Re)deploy only the router of each cluster, e.g. after tenants changed in org.yaml; models are untouched."""
    results = []
    for key in _cluster_keys(inputs.targets, settings):
        api = _connect(key, settings, say, inputs.targets)
        current = _current(api)
        old_router = sc.router_of(current)
        backends = _table(old_router, (), [])
        if not backends:
            say(f"{key}: no deployments to route to; run `sovra up` first")
            continue
        configs = _with_router(current, backends, inputs, settings, key, _kept_http(current, settings),
                               nodes=len(api.alive_nodes()))
        changed = _apply(api, key, settings, configs, current, say, inputs.targets)
        apps = _wait_ready(api, key, settings, say)
        results.append(ClusterResult(key, api.dashboard, router_url(key, settings, inputs.targets), changed, apps))
    return results


def status(targets: Sequence[Target], settings: Settings) -> list[dict[str, Any]]:
    """What runs on each Ray cluster: per backend its deployment, target, zone, replicas and health."""
    keys = sorted({cluster_key(t) for t in targets if is_ray(t)} | {LOCAL})
    out = []
    for key in keys:
        entry: dict[str, Any] = {"cluster": key, "reachable": False, "backends": [], "router": None}
        if key == LOCAL:
            rec = settings.local_ray().running()
            if rec is None:
                entry["message"] = "local Ray is not running (run `sovra up`)"
                out.append(entry)
                continue
            dash = rec.dashboard
            entry["ports"] = dict(rec.ports)  # every port the local Ray was given (`infra.ray_ports`)
            entry["ingress"] = "haproxy" if rec.serve_http else "serve-proxy"
            from sovra.orchestrator.router.audit_sign import existing_public_key

            entry["audit_key"] = existing_public_key(settings.home / "keys")  # the local router's, on this node
        else:
            dash = dashboard_url(key)
        try:
            api = ServeApi(dash, token=_token(key, settings, targets), timeout_s=5,
                           insecure_http=_insecure_dashboard(key, targets))
            apps = api.apps()
            options = api.details().get("http_options") or {}
        except ClusterError as exc:
            entry["message"] = str(exc)
            out.append(entry)
            continue
        entry.update(reachable=True, dashboard=dash)
        router = apps.get(sc.ROUTER_APP)
        for b in _table(router.config if router else None, (), []):
            row = {"deployment": b.deployment, "model": b.model, "target": b.target, "zone": b.zone,
                   "country": b.place.country, "residency": b.residency.describe(), "policy": b.policy,
                   "kind": b.kind, "tier": b.tier}
            if not is_ray(b.kind):  # a routed backend: its vendor says how it is
                row.update(replicas=None, min=None, max=None, engine=None, status=describe_backend(b))
                entry["backends"].append(row)
                continue
            a = apps.get(b.address)
            auto = ((a.config or {}).get("deployments") or [{}])[0].get("autoscaling_config", {}) if a else {}
            row.update(replicas=a.running if a else 0, min=auto.get("min_replicas"), max=auto.get("max_replicas"),
                       status=a.status if a else "MISSING",
                       engine=((a.config or {}).get("args") or {}).get("engine") if a else None)
            entry["backends"].append(row)
        if router:
            url, transport = router_transport(router_url(key, settings, targets), options)
            live, ready = _probe_router(url)
            entry["router"] = {"url": url, "status": router.status, "replicas": router.running,
                               "healthy": live, "ready": ready, **transport}
        out.append(entry)
    return out


def local_router_url(settings: Settings) -> str:
    """The local router's URL (`sovra audit`'s default), https when its Serve proxy serves HTTPS (the org gave the
    local cluster `tls`); http when the local Ray does not run or does not say."""
    url = f"http://127.0.0.1:{settings.router_port}"
    local = settings.local_ray()
    rec = local.running()
    if rec is None:
        return url
    try:
        options = ServeApi(rec.dashboard, token=local.token(), timeout_s=5).details().get("http_options") or {}
    except ClusterError:
        return url
    return router_transport(url, options)[0]


def router_transport(url: str, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The router's URL with the scheme Serve really serves (its running `http_options`; `url` as the org says
    when Serve does not tell), and how it is reached: `https`, where it listens, and a `warning` when it serves
    plain HTTP beyond loopback (tenants' keys and payloads cross the network in clear)."""
    https = bool(options.get("ssl_certfile")) if options else url.startswith("https:")
    parsed = httpx.URL(url)
    url = str(parsed.copy_with(scheme="https" if https else "http")).rstrip("/")
    host = str(options.get("host") or parsed.host)
    info: dict[str, Any] = {"https": https, "listen": f"{host}:{options.get('port') or parsed.port}"}
    if not https and not _loopback(host):
        info["warning"] = (f"plain HTTP on {host}, which is not loopback: tenants' keys, prompts and answers cross "
                           "the network in clear (give the cluster `tls` in org.yaml)")
    return url, info


def describe_backend(backend: Backend, timeout_s: float = 10.0) -> str:
    """A routed backend's state in its vendor's words (e.g. "InService"), asked from here with this machine's
    credentials and no payload; the failure itself when it cannot be asked."""
    import asyncio

    from sovra.providers import base

    async def ask() -> dict[str, Any]:
        client = base.get(backend.kind).client()
        try:
            return await asyncio.wait_for(client.describe(backend), timeout_s)
        finally:
            await client.aclose()

    try:
        info = asyncio.run(ask())
    except Exception as exc:  # noqa: BLE001  (status reports, it never fails on one backend)
        return f"unknown ({type(exc).__name__}: {str(exc)[:120]})"
    return str(info.get("status") or "routed")


def _probe_router(url: str) -> tuple[bool, dict[str, Any] | None]:
    """(answers /healthz, the /readyz body: per deployment its healthy allowed backends). A router with tenants or
    admins gives the per-deployment part only to an admin: the key in $SOVRA_ADMIN_KEY, as `sovra audit` sends."""
    from sovra.infra.transport import client_trust, key_may_travel

    key = os.environ.get("SOVRA_ADMIN_KEY") if key_may_travel(url) else None  # never in clear to another machine
    verify = client_trust() if url.startswith("https:") else True
    try:
        live = httpx.get(f"{url}/healthz", timeout=3, verify=verify).status_code == 200
        ready = httpx.get(f"{url}/readyz", timeout=3, verify=verify,
                          headers={"Authorization": f"Bearer {key}"} if key else None).json()
    except (httpx.HTTPError, ValueError):
        return False, None
    return live, ready
