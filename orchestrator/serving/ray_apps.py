"""Ray Serve applications: one ModelServer app per (deployment, target), and the router ingress app.

Kept free of module-level Ray imports so `orchestrator` imports stay light; Ray is imported by the functions here.
"""

from __future__ import annotations

from typing import Any


def model_server(args: dict[str, Any]):
    """Serve application builder named by `up`'s declarative config (`infra.serve_config.model_app`).

    Autoscaling and actor resources come from the config's deployment overrides, so changing them is applied
    in place; the defaults here only matter when the config leaves them out.
    """
    from ray import serve

    from orchestrator.serving.engines import get_engine

    model, target, engine = args["model"], args["target"], args["engine"]
    engine_options = args.get("engine_options") or {}

    @serve.deployment(name="ModelServer", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32,
                      health_check_period_s=2)
    class ModelServer:
        def __init__(self) -> None:
            self.engine = get_engine(engine)(model, target, **engine_options)

        async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
            return await self.engine.chat(body)

        async def chat_stream(self, body: dict[str, Any]):
            async for c in self.engine.chat_stream(body):
                yield c

        async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
            return await self.engine.embed(body)

        async def health(self) -> dict[str, Any]:
            """Payload-free liveness for the router's probes: answers without touching the model."""
            return {"ok": True, "model": model, "target": target}

    return ModelServer.bind()


def router(args: dict[str, Any]):
    """Serve application builder for the router ingress; `args` is the routing table and tenants."""
    from ray import serve

    config = dict(args)

    def build_asgi():  # Serve recognises an app *builder* by a zero-argument function
        return build_router_state_app(config)

    deployment = serve.deployment(name="Router", num_replicas=1, max_ongoing_requests=256,
                                  ray_actor_options={"num_cpus": 0.25})(serve.ingress(build_asgi)())
    return deployment.bind()


def build_router_state_app(cfg: dict[str, Any]):
    """The router's ASGI app for a routing table (`infra.serve_config.router_app` args)."""
    from orchestrator.router.app import RouterState, create_app
    from orchestrator.router.audit import AuditLog
    from orchestrator.router.backends import Backend, RoutingTable
    from orchestrator.router.clients import HttpClient
    from orchestrator.router.dispatch import Dispatcher
    from orchestrator.router.tenants import TenantDirectory
    from orchestrator.serving.ray_client import RayClient
    from orchestrator.spec.org import Tenant
    from policies.residency import Place

    backends = [Backend(id=b["id"], model=b["model"], target=b["target"], cost=b["cost"], kind=b["kind"],
                        address=b["address"], place=Place(**b["place"])) for b in cfg["backends"]]
    tenants = TenantDirectory.of([Tenant.model_validate(t) for t in cfg["tenants"]])
    state = RouterState(Dispatcher(RoutingTable.of(backends)), tenants,
                        {"ray": RayClient(), "http": HttpClient()},
                        AuditLog(cfg["audit_path"]) if cfg.get("audit_path") else None,
                        policies=cfg.get("policies", {}))
    return create_app(state)
