"""Turn a plan's Ray placements into a Ray Serve config (pure: no I/O, so `up` is easy to test and to preview).

One Serve application per (deployment, Ray target) runs the model; one router application per cluster is the
HTTP ingress and holds the routing table of the backends on that cluster. The router's arguments are the table,
so an unchanged plan gives byte-identical arguments and Serve leaves every replica alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sovra.core import __version__
from sovra.core.backends import Backend
from sovra.core.spec.deployment import PACKAGED_MODELS
from sovra.core.spec import Deployment, Target
from sovra.core.spec.org import Admin, AuditSettings, Credit, RouterScale, RouterSettings, Tenant
from sovra.core.spec.spend import Budget, SpendSettings
from sovra.policies.plan import Placement

if TYPE_CHECKING:
    from sovra.core.spec.org import RouterTls

MODEL_IMPORT = "sovra.orchestrator.serving.ray_apps:model_server"
MODEL_HTTP_IMPORT = "sovra.orchestrator.serving.ray_apps:model_http"
ROUTER_IMPORT = "sovra.orchestrator.serving.ray_apps:router"
ROUTER_APP = "sovra-router"
APP_PREFIX = "sovra."
HOURS_PER_MONTH = 730
#: Requests one model replica takes at once (Serve's max_ongoing_requests); beyond its replicas' sum the router
#: spills over to the next rung of the ladder.
MAX_ONGOING_PER_REPLICA = 32
#: A by-value call is one gRPC message each way, and gRPC refuses one over 4 MiB by default: an embeddings answer for
#: a few thousand inputs is larger, and a request within the router's 4 MB body limit can pickle larger (a float is
#: 2 bytes of JSON and 9 pickled). The router (which receives answers) and the model replicas called by handle (which
#: receive requests) lift it to what a handle call by reference takes in practice.
GRPC_MESSAGE_ENV = {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(1 << 30)}
#: Serve's own settings for the router's replica alone, as Serve's throughput-optimized mode sets them for every
#: replica: the router's code never blocks its event loop (all I/O is async; the audit line is one small write), so
#: it runs on the replica's main loop with Serve's handle router, instead of a thread and a loop of its own that
#: every request and every handle call would cross. With by-value handle calls (providers.onprem.ray_client)
#: this cuts the calling replica's CPU per request by about 20 % and the called one's by about 40 % behind
#: Serve's default proxy (bench/results/router.md, (t) against (b)). Not for model replicas: an engine may block its loop.
ROUTER_SERVE_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
                    **GRPC_MESSAGE_ENV}


def app_name(deployment: str, target: str) -> str:
    return f"{APP_PREFIX}{deployment}.{re.sub(r'[^A-Za-z0-9_-]+', '-', target)}"


TARGET_RESOURCE_PREFIX = "sovra.target/"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's own resource of the head node
# What one replica asks of its target's resource: tiny, so the resource only says *where* (a node offers 1000).
TARGET_RESOURCE_PER_REPLICA = 0.001


def target_resource(target: str) -> str:
    """The Ray custom resource that marks the nodes of a Ray target: `sovra.target/<target id>`, verbatim.

    Ray 2.60 accepts any string as a resource name ('.' and '/' included, as in its own `node:<ip>`), and target
    ids are `[A-Za-z0-9._-]` joined by '/', so no encoding is needed."""
    return f"{TARGET_RESOURCE_PREFIX}{target}"


def unplaced_targets(nodes: Iterable[Mapping[str, float]], targets: Iterable[str]) -> list[str]:
    """The targets no node carries (from each alive node's resources): `up` refuses them."""
    carried = {name for resources in nodes for name, amount in resources.items() if amount > 0}
    return sorted(t for t in set(targets) if target_resource(t) not in carried)


def resolve_engine(d: Deployment, gpus: int) -> tuple[str, float]:
    """(engine, GPUs per replica): `auto` runs a packaged small model on CPU, anything else on vLLM with GPUs."""
    s = d.spec.serving
    engine = s.engine
    if engine == "auto":
        engine = PACKAGED_MODELS.get(d.spec.model.name, "vllm")
    num_gpus = s.num_gpus if s.num_gpus is not None else (float(gpus) if engine == "vllm" else 0.0)
    return engine, num_gpus


@dataclass(frozen=True)
class RayPlacement:
    """A plan's placement on a Ray target, with what `up` needs to serve it."""

    deployment: Deployment
    placement: Placement
    target: Target
    total_replicas: int  # of this deployment over all its Ray placements


#: Route prefix under which a replica app answers OpenAI's API on the cluster's Serve port (`ServeHttp`).
REPLICA_ROUTE_PREFIX = "/sovra-replica/"
#: Where the router holds the replica key, whose HTTP client sends it (a backend names it in `api_key_env`). Not
#: SOVRA_SERVE_API_KEY, the variable replicas check: an org may name that one for a KubeRay service's own key.
REPLICA_KEY_ENV = "SOVRA_REPLICA_KEY"
#: App args value: each process derives that key from the cluster's Ray token (`model_http.install_replica_key`).
REPLICA_KEY_FROM_RAY_TOKEN = "ray-token"


@dataclass(frozen=True)
class ServeHttp:
    """How the router reaches a cluster's replicas when they answer over Serve's HTTP ingress rather than by
    DeploymentHandle: through the Serve port on the router's own node (`port`).

    Used where Serve runs its HAProxy ingress (the local Ray started with SOVRA_SERVE_HAPROXY=1): HAProxy then
    forwards straight into each replica's own HTTP server, which costs the router less than a handle call
    (bench/router.py). That port is every caller's port too, so each replica requires a key that only the
    replicas and the router hold: an app cannot skip the router's tenant and residency checks by calling a
    replica itself. Each of them derives the key from the cluster's Ray token when it starts, so the key is in no
    config, table or log (Ray logs runtime environments, so it cannot travel in one)."""

    port: int

    def route(self, app: str) -> str:
        return f"{REPLICA_ROUTE_PREFIX}{app}"


def holds_replica_key(router: Mapping[str, Any] | None) -> bool:
    """Whether a router app's config has it derive the replica key."""
    return (router or {}).get("args", {}).get("replica_key") == REPLICA_KEY_FROM_RAY_TOKEN


def replica_ceiling(rp: RayPlacement) -> int:
    """The most replicas `rp` autoscales to: its share of the deployment's maximum."""
    p = rp.placement
    return max(p.replicas, math.ceil(rp.deployment.spec.replicas.ceiling * p.replicas / max(rp.total_replicas, 1)))


def model_app(rp: RayPlacement, http: ServeHttp | None = None) -> dict[str, Any]:
    """The Serve application running `rp`'s replicas, autoscaling from the planned count to its share of max.
    With `http`, its replicas also answer OpenAI's API under `http.route(name)`, with the replica key."""
    d, p, t = rp.deployment, rp.placement, rp.target
    gpus = next((a.gpus for a in t.accelerators if a.sku == p.accelerator), 0)
    engine, num_gpus = resolve_engine(d, gpus)
    ceiling = replica_ceiling(rp)
    # The target's resource pins every replica to the nodes that carry it: a replica never runs elsewhere.
    actor: dict[str, Any] = {"num_cpus": d.spec.serving.num_cpus,
                             "resources": {target_resource(t.id): TARGET_RESOURCE_PER_REPLICA}}
    if num_gpus:
        actor["num_gpus"] = num_gpus
    name = app_name(d.name, t.id)
    # sovra_version is part of Serve's code version: upgrading Sovra rebuilds the replicas, nothing else does.
    args = {"deployment": d.name, "model": d.spec.model.name, "target": t.id, "engine": engine,
            "engine_options": dict(sorted(d.spec.serving.options.items())), "sovra_version": __version__}
    if http is not None:
        args["replica_key"] = REPLICA_KEY_FROM_RAY_TOKEN
    else:  # called by handle, by value (providers.onprem.ray_client)
        actor["runtime_env"] = {"env_vars": dict(GRPC_MESSAGE_ENV)}
    return {
        "name": name,
        "route_prefix": http.route(name) if http is not None else None,
        "import_path": MODEL_HTTP_IMPORT if http is not None else MODEL_IMPORT,
        "args": args,
        "deployments": [{
            "name": "ModelServer",
            "autoscaling_config": {"min_replicas": p.replicas, "max_replicas": ceiling,
                                   "target_ongoing_requests": 4},
            "ray_actor_options": actor,
            "max_ongoing_requests": MAX_ONGOING_PER_REPLICA,
        }],
    }


def http_model_app(rp: RayPlacement) -> dict[str, Any]:
    """`model_app` answering OpenAI's HTTP API itself at `/`: for a Ray cluster the router reaches over HTTP rather
    than by Serve handle (a KubeRay cluster Sovra provisions). Same pinning, engine and autoscaling."""
    return {**model_app(rp), "route_prefix": "/", "import_path": MODEL_HTTP_IMPORT}


def router_app(backends: Sequence[Backend], *, tenants: Iterable[Tenant], audit_path: str | None,
               admins: Iterable[Admin] = (), router: RouterSettings | None = None,
               audit: AuditSettings | None = None, num_cpus: float = 0.25,
               http: ServeHttp | None = None, scale: RouterScale | None = None, nodes: int = 1,
               spend: SpendSettings | None = None, budgets: Iterable[Budget] = (), credits: Iterable[Credit] = (),
               spend_path: str | None = None) -> dict[str, Any]:
    """The router application; its arguments are the routing table, serialised by `Backend.to_wire` only. With
    `http`, it derives the replica key when it starts (the table names only the variable it goes in).

    Each router replica writes its own chain of the audit trail (`audit_path`, a directory), so a replica
    starting while the old one drains never forks a chain."""
    args: dict[str, Any] = {
        "backends": [b.to_wire() for b in sorted(backends, key=lambda b: b.id)],
        "tenants": [t.model_dump(mode="json") for t in sorted(tenants, key=lambda t: t.name)],
        "admins": [a.model_dump(mode="json") for a in sorted(admins, key=lambda a: a.name)],
        "router": (router or RouterSettings()).model_dump(mode="json"),  # direct mode, the metrics scrape key
        "audit_path": audit_path, "audit": (audit or AuditSettings()).model_dump(mode="json"),
        # the ledger's store (a DSN only by the name of its variable) and the limits the router holds tenants to
        "spend": (spend or SpendSettings()).model_dump(mode="json"), "spend_path": spend_path,
        "budgets": [b.model_dump(mode="json", exclude_none=True) for b in budgets],
        "credits": [c.model_dump(mode="json") for c in credits],
        "sovra_version": __version__}
    if http is not None:
        args["replica_key"] = REPLICA_KEY_FROM_RAY_TOKEN
    return {
        "name": ROUTER_APP,
        "route_prefix": "/",
        "import_path": ROUTER_IMPORT,
        "args": args,
        "deployments": [router_deployment(scale, nodes, num_cpus)],
    }


#: Router replicas Serve's autoscaler aims at per replica: a quarter of the 256 each may hold.
ROUTER_TARGET_ONGOING = 64


def router_deployment(scale: RouterScale | None, nodes: int, num_cpus: float = 0.25) -> dict[str, Any]:
    """The router deployment's Serve config: `scale` (org.yaml `router:`), by default 2 replicas on a cluster with
    several alive nodes (`nodes`), 1 on a single node.

    One replica runs on the head node beside Serve's ingress (`HeadOnly`), so losing a worker node never takes the
    router down. Several are left to Serve's default SPREAD scheduling, which puts them on different nodes where
    it can: one node lost leaves the others serving. No Serve access log: the audit trail already records every
    request (with every attempt); a second line per request would only cost CPU and fill the node's disk."""
    if scale is None:
        scale = RouterScale(replicas=2 if nodes > 1 else 1)
    actor: dict[str, Any] = {"num_cpus": num_cpus, "runtime_env": {"env_vars": dict(ROUTER_SERVE_ENV)}}
    count: dict[str, Any]
    if scale.replicas is not None:
        count = {"num_replicas": scale.replicas}
    else:
        auto = scale.autoscaling
        assert auto is not None
        count = {"autoscaling_config": {"min_replicas": auto.min, "max_replicas": auto.max,
                                        "target_ongoing_requests": ROUTER_TARGET_ONGOING}}
    if scale.replicas == 1:
        actor["resources"] = {HEAD_NODE_RESOURCE: 0.001}
    return {"name": "Router", **count, "logging_config": {"enable_access_log": False}, "ray_actor_options": actor}


def http_options(*, host: str, port: int, tls: RouterTls | None = None) -> dict[str, Any]:
    """Serve's `http_options` for the router: where it listens and, with `tls` (org.yaml cluster `tls`: paths on
    the router's node, never the key itself), the files it serves HTTPS with. Serve reads them when it starts and
    cannot change them while it runs (`orchestrator.deploy` checks)."""
    options: dict[str, Any] = {"host": host, "port": port}
    if tls is not None:
        options.update(ssl_certfile=tls.cert_file, ssl_keyfile=tls.key_file)
    return options


def serve_config(apps: Sequence[Mapping[str, Any]], *, host: str, port: int, tls: RouterTls | None = None
                 ) -> dict[str, Any]:
    return {"proxy_location": "HeadOnly", "http_options": http_options(host=host, port=port, tls=tls),
            "applications": sorted(apps, key=lambda a: a["name"])}


def owned_by(app: Mapping[str, Any], deployments: Collection[str]) -> bool:
    return (app.get("import_path") in (MODEL_IMPORT, MODEL_HTTP_IMPORT)
            and (app.get("args") or {}).get("deployment") in deployments)


def router_of(apps: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The router application's config among a cluster's apps, if one runs."""
    return next((a for a in apps if a.get("name") == ROUTER_APP), None)


def merge(current: Sequence[Mapping[str, Any]], deployments: Collection[str], new_apps: Sequence[Mapping[str, Any]]
          ) -> list[dict[str, Any]]:
    """The cluster's apps with those of `deployments` replaced by `new_apps` (empty to remove them). The router is
    rebuilt by the caller from the result; other applications are kept untouched."""
    kept = [dict(a) for a in current if not owned_by(a, deployments) and a.get("name") != ROUTER_APP]
    return kept + [dict(a) for a in new_apps]
