"""Ray Serve applications: one ModelServer app per (deployment, target), and the router ingress app.

Kept free of module-level Ray imports so `orchestrator` imports stay light; Ray is imported by the functions here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ModelServer:
    """One model replica: its engine, and the payload-free health that Serve and the router's probes ask.

    A plain class (Serve wraps it in `model_server`), so tests can build one without Ray.
    """

    def __init__(self, model: str, target: str, engine: str, engine_options: dict[str, Any] | None = None) -> None:
        from sovra.orchestrator.serving.engines import get_engine

        self.model, self.target = model, target
        self.engine = get_engine(engine)(model, target, **(engine_options or {}))

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.engine.chat(body)

    async def chat_stream(self, body: dict[str, Any]):
        async for c in self.engine.chat_stream(body):
            yield c

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.engine.embed(body)

    async def health(self) -> dict[str, Any]:
        """The engine's own check, which carries no user payload (so a probe is no residency event). An engine
        whose check fails or raises answers ok False with the reason, and the router keeps the backend out."""
        try:
            report = dict(await self.engine.health())
        except Exception as exc:  # noqa: BLE001  (a check that cannot even run is a failed check)
            report = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {**report, "ok": report.get("ok") is True, "engine": self.engine.name, "model": self.model,
                "target": self.target}

    async def check_health(self) -> None:
        """Ray Serve's replica health check (every `health_check_period_s`): raising makes Serve replace this
        replica once its failures pass Serve's threshold."""
        from sovra.orchestrator.serving.engines import EngineError

        report = await self.health()
        if not report["ok"]:
            raise EngineError(f"engine {report['engine']!r} of {self.model} on {self.target} is unhealthy: "
                              f"{report.get('error', 'no reason given')}")


def model_server(args: dict[str, Any]):
    """Serve application builder named by `up`'s declarative config (`infra.serve_config.model_app`).

    Autoscaling and actor resources come from the config's deployment overrides, so changing them is applied
    in place; the defaults here only matter when the config leaves them out.
    """
    from ray import serve

    deployment = serve.deployment(name="ModelServer", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32,
                                  # 1 s: the router's ReplicaWatch learns of a dead replica from Serve's checks
                                  health_check_period_s=1)(ModelServer)
    return deployment.bind(args["model"], args["target"], args["engine"], args.get("engine_options") or {})


class HttpModelServer(ModelServer):
    """A ModelServer that answers OpenAI's HTTP API itself (`model_http`), for a cluster the router reaches over
    HTTP rather than by handle (KubeRay, or Serve's HAProxy ingress). `replica_key`: `FROM_RAY_TOKEN` to require
    the key derived from the cluster's Ray token."""

    def __init__(self, model: str, target: str, engine: str, engine_options: dict[str, Any] | None = None,
                 replica_key: str | None = None) -> None:
        from sovra.orchestrator.serving.model_http import FROM_RAY_TOKEN, install_replica_key, require_key

        if replica_key == FROM_RAY_TOKEN:
            install_replica_key()
        elif replica_key is not None:
            raise ValueError(f"replica_key {replica_key!r}: only {FROM_RAY_TOKEN!r} is known")
        require_key()  # never a server that answers anyone who can reach it
        super().__init__(model, target, engine, engine_options)

    async def __call__(self, request):
        from sovra.orchestrator.serving.model_http import respond

        return await respond(self, request)


def model_http(args: dict[str, Any]):
    """Serve application builder for `infra.serve_config.http_model_app`: `model_server`, answering over HTTP."""
    from ray import serve

    deployment = serve.deployment(name="ModelServer", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32,
                                  health_check_period_s=1)(HttpModelServer)
    return deployment.bind(args["model"], args["target"], args["engine"], args.get("engine_options") or {},
                           args.get("replica_key"))


def router(args: dict[str, Any]):
    """Serve application builder for the router ingress; `args` is the routing table and tenants."""
    from ray import serve

    config = dict(args)

    def build_asgi():  # Serve recognises an app *builder* by a zero-argument function
        return build_router_state_app(config)

    # How many replicas: the config's deployment (`infra.serve_config.router_deployment`), applied in place.
    deployment = serve.deployment(name="Router", max_ongoing_requests=256,
                                  ray_actor_options={"num_cpus": 0.25})(serve.ingress(build_asgi)())
    return deployment.bind()


def build_router_state_app(cfg: dict[str, Any]):
    """The router's ASGI app for a routing table (`infra.serve_config.router_app` args).

    The audit trail lives on the router's own node: in `audit_path` when `up` gives one (the embedded local Ray
    shares the CLI's machine), else under that node's Sovra home; this replica writes its own chain there, named
    by its Serve replica id, and signs checkpoints with the node's key in the home's `keys/` (`audit_sign`).
    """
    from sovra.infra.ray_cluster import sovra_home
    from sovra.orchestrator.router.access import Access
    from sovra.orchestrator.router.app import RouterState, create_app
    from sovra.orchestrator.router.audit import AuditLog
    from sovra.orchestrator.router.audit_api import audit_routes
    from sovra.orchestrator.router.audit_nodes import ray_fan_out
    from sovra.orchestrator.router.audit_sign import Signer
    from sovra.core.backends import Backend, RoutingTable
    from sovra.providers.clients import ClientSet
    from sovra.orchestrator.router.dispatch import Dispatcher
    from sovra.orchestrator.router.limits import TenantLimits
    from sovra.orchestrator.router.tenants import TenantDirectory
    from sovra.orchestrator.router.tracing import Tracing
    from sovra.orchestrator.serving.model_http import FROM_RAY_TOKEN, install_replica_key
    from sovra.core.spec.org import Admin, AuditSettings, RouterSettings, Tenant

    if cfg.get("replica_key") == FROM_RAY_TOKEN:  # the key of the replicas it reaches over HTTP
        from sovra.infra.serve_config import REPLICA_KEY_ENV

        install_replica_key(REPLICA_KEY_ENV)
    table = RoutingTable.of(Backend.from_wire(b) for b in cfg["backends"])
    from sovra.providers import base

    base.check_kinds(table.backends)  # an adapter this router does not have is an error now, not at a request
    from sovra.orchestrator.serving.model_http import SERVICE_KEY_ENV, SERVICE_PURPOSE

    if any(b.params.get("api_key_env") == SERVICE_KEY_ENV for b in table.backends):
        install_replica_key(SERVICE_KEY_ENV, SERVICE_PURPOSE)  # KubeRay services keyed from this cluster's token
    tenant_list = [Tenant.model_validate(t) for t in cfg["tenants"]]
    admins = [Admin.model_validate(a) for a in cfg.get("admins", [])]
    settings = RouterSettings.model_validate(cfg.get("router") or {})
    tenants = TenantDirectory.of(tenant_list)
    trail = Path(cfg.get("audit_path") or sovra_home() / "audit")
    written = AuditSettings.model_validate(cfg.get("audit") or {})
    audit = AuditLog(trail, writer=_writer_name(), fsync=written.fsync, refuse=written.on_failure == "refuse",
                     unauthenticated_every_s=written.unauthenticated_every_s)
    signer = Signer(trail.parent / "keys")
    spend = _spend(cfg, Path(cfg.get("spend_path") or sovra_home() / "spend"), tenant_list)
    limits = TenantLimits(settings.tenant_max_concurrent)  # a tenant's own `max_concurrent` comes with it
    state = RouterState(Dispatcher(table, credited=lambda: spend.ledger.credited), tenants, ClientSet(), audit, limits=limits,
                        extra_routes=audit_routes(audit, admins, open_router=tenants.open, tenants=tenant_list,
                                                  signer=signer, fan_out=ray_fan_out(cfg.get("audit_path"))),
                        access=Access.of(admins, settings), direct_mode=settings.direct_mode,
                        direct_view=base.direct_view, spend=spend, tracing=Tracing.from_env())
    return create_app(state)


def _spend(cfg: dict[str, Any], home: Path, tenants: list[Any]):
    """The replica's budgets and ledger: the org's store (SQLite under the node's Sovra home by default, or the
    PostgreSQL database named by `dsn_env` in the router's environment), its spool beside it."""
    import os

    from sovra.core.errors import StoreUnavailable
    from sovra.core.spec.org import Credit
    from sovra.core.spec.spend import Budget, SpendSettings
    from sovra.infra.ledger.store import SpendStore
    from sovra.orchestrator.router.budgets import BudgetIndex
    from sovra.orchestrator.router.ledger import Ledger
    from sovra.orchestrator.router.spend import Spend, credit_caps

    settings = SpendSettings.model_validate(cfg.get("spend") or {})
    if settings.store == "postgres":
        dsn = os.environ.get(settings.dsn_env)
        if not dsn:
            raise StoreUnavailable(f"org.yaml spend.store is postgres, but ${settings.dsn_env} is not set where the "
                                   "router runs; set it (postgresql://user:password@host/db) in the environment "
                                   "of `sovra up`, which the local Ray inherits")
        store = SpendStore.postgres(dsn)
    else:
        store = SpendStore.sqlite(settings.path or home / "ledger.db")
    credits = [Credit.model_validate(c) for c in cfg.get("credits", [])]
    ledger = Ledger(store, home / "spool", _writer_name(), flush_every_s=settings.flush_every_s,
                    credits=credit_caps(credits))
    return Spend(store, ledger, BudgetIndex(tuple(Budget.model_validate(b) for b in cfg.get("budgets", []))),
                 settings)


def _writer_name() -> str:
    """This router replica's name in the audit trail: Serve's replica id (unique per replica, so a replica
    starting while the old one drains writes its own chain); outside Serve, host and process."""
    import os
    import re
    import socket

    try:
        from ray import serve

        unique = serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001  (not in a Serve replica: a test or `sovra serve` in-process)
        unique = f"{socket.gethostname()}.{os.getpid()}"
    return "router-" + re.sub(r"[^A-Za-z0-9._-]", "_", unique)[:72]
