"""The KubeRay path without Kubernetes: the exact Serve application the KubeRay component puts in a RayService's
`serveConfigV2` runs on the session's real Ray (which carries the cluster's target resource, as the worker group
does), and a router whose table holds the `kubernetes` backend that `up` makes from the stack's output reaches it
over HTTP. The org names no `api_key_env`, so the service's key is the one `up` derives from the local Ray's token
(what the Kubernetes Secret holds), and the router derives the same when it starts. What is not exercised here:
KubeRay itself, the pods, the Secret and the Service in front of them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pulumi  # noqa: F401  (the `pulumi` extra: scripts/test installs it, so its absence fails)
import pytest

from sovra.infra import serve_config as sc
from sovra.orchestrator import routing_table as rt
from sovra.infra.serve_api import ServeApi
from sovra.orchestrator.router.audit import read as read_trail
from tests.fakes.openai_backend import ServerThread

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SPECS = Path(__file__).parent / "specs"
ORG = SPECS / "kuberay-org.yaml"
KEY = "sk-test-kuberay-fr"
TARGET = "k8s-paris"
# On a KubeRay cluster the app is served at "/"; the session's Ray may already serve a router there.
PREFIX = "/kuberay-k8s-paris"
DEPLOYMENT = """apiVersion: sovra/v1
kind: Deployment
metadata: {name: contracts}
spec:
  model: {name: m, gpu_memory_gb: 1}
  replicas: {min: 1, max: 1}
  residency: {countries: [FR]}
  serving: {engine: echo}
"""


@pytest.fixture(scope="module")
def kuberay(sovra_ray, tmp_path_factory):
    from sovra.infra.pulumi.program import placement_inputs
    from sovra.infra.pulumi_stack import outputs_to_endpoints
    from sovra.orchestrator import planning
    from sovra.orchestrator.provisioning import service_keys
    from sovra.orchestrator.serving.model_http import SERVICE_KEY_ENV
    from sovra.core.spec.org import provision_for
    from sovra.policies.plan import DeploymentPlan, FleetPlan, Placement

    d = tmp_path_factory.mktemp("kuberay")
    spec = d / "contracts.yaml"
    spec.write_text(DEPLOYMENT)
    inputs = planning.load_inputs([spec], ORG)
    [deployment] = inputs.deployments
    cluster = next(t for t in inputs.targets if t.id == TARGET)
    placement = Placement(target=TARGET, provider="kubernetes", zone=cluster.zone, country=cluster.country,
                          replicas=1, accelerator="cpu-local", compute_usd=1.0, credits_usd=0.0, egress_usd=0.0)
    # What `sovra up` hands the KubeRay component: the key derived from the token of the Ray whose router reaches
    # the service (the local one: the deployment has no Ray placement), since the org names no api_key_env.
    keys = service_keys(inputs, FleetPlan((DeploymentPlan(deployment.name, True, (placement,), ()),)))
    [made] = placement_inputs([placement], deployment, [cluster], {TARGET: provision_for(inputs.org, cluster)},
                              keys)
    assert made.service_key and made.service_key == keys[TARGET]
    # The pods read the service's key from a Kubernetes Secret; here Serve's runtime_env gives the replica the same
    # variable. The router (in this process, as on the local Ray) derives its copy from the local Ray's token.
    app = {**made.app, "route_prefix": PREFIX,
           "runtime_env": {"env_vars": {"SOVRA_SERVE_API_KEY": made.service_key}}}
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", SERVICE_KEY_ENV)}
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(sovra_ray.local_ray().token_path)

    record = sovra_ray.local_ray().running()
    api = ServeApi(record.dashboard, token=sovra_ray.local_ray().token())
    others = [dict(a.config) for n, a in api.apps().items() if a.config and n != app["name"]]
    api.apply(sc.serve_config([*others, app], host="127.0.0.1", port=sovra_ray.router_port))
    api.wait(lambda apps: app["name"] in apps and apps[app["name"]].status == "RUNNING", timeout_s=180,
             what="the KubeRay model server app")
    url = f"http://127.0.0.1:{sovra_ray.router_port}{PREFIX}"
    # What `up` does with the stack's `endpoints` output: an Endpoint the kubernetes adapter locates.
    [endpoint] = outputs_to_endpoints({"endpoints": {TARGET: {"url": url, "api_key_env": SERVICE_KEY_ENV}}},
                                      [cluster])
    backend = rt.routed_entry(deployment, placement, endpoint, endpoint.connection)
    cfg = {"backends": [backend.to_wire()], "tenants": [t.model_dump(mode="json") for t in inputs.org.tenants],
           "audit_path": str(d / "audit")}
    from sovra.orchestrator.serving.ray_apps import build_router_state_app

    with ServerThread(build_router_state_app(cfg)) as router:
        assert os.environ[SERVICE_KEY_ENV] == made.service_key  # derived by the router when it started
        yield {"router": router.url, "api": api, "app": app["name"], "backend": backend, "audit": d / "audit",
               "service_key": made.service_key, "made": made, "settings": sovra_ray}
    remaining = [dict(a.config) for n, a in api.apps().items() if a.config and n != app["name"]]
    api.apply(sc.serve_config(remaining, host="127.0.0.1", port=sovra_ray.router_port))
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _chat(url: str, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                      json={"model": "contracts", "messages": [{"role": "user", "content": "clause 7"}], **extra})


def test_the_router_reaches_the_kuberay_model_server_over_http(kuberay):
    assert kuberay["backend"].kind == "kubernetes" and kuberay["backend"].tier == 0
    r = _chat(kuberay["router"])
    assert r.status_code == 200, r.text
    assert r.headers["X-Sovra-Target"] == TARGET
    assert r.json()["choices"][0]["message"]["content"] == f"served-by {TARGET}"
    with httpx.stream("POST", f"{kuberay['router']}/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "contracts", "stream": True,
                            "messages": [{"role": "user", "content": "clause 8"}]}) as s:
        assert s.status_code == 200
        body = s.read().decode()
    events = [e.removeprefix("data: ") for e in body.split("\n\n") if e.strip()]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                   if json.loads(e).get("choices"))
    assert text == f"served-by {TARGET}"
    [record] = list(read_trail(kuberay["audit"]))[:1]
    assert record["target"] == TARGET


def test_the_service_refuses_callers_without_its_key(kuberay):
    url = kuberay["backend"].address
    assert httpx.get(url + "/healthz", timeout=30).status_code == 401
    r = httpx.post(url + "/v1/chat/completions", timeout=30, headers={"Authorization": "Bearer guess"},
                   json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert kuberay["backend"].params == {"api_key_env": "SOVRA_KUBERAY_KEY"}  # the name, never the key
    assert kuberay["service_key"] not in json.dumps(kuberay["backend"].to_wire())


def test_its_replica_runs_only_where_the_target_resource_is(kuberay):
    api: ServeApi = kuberay["api"]
    nodes = {n.node_id: dict(n.resources) for n in api.alive_nodes()}
    replicas = api.details()["applications"][kuberay["app"]]["deployments"]["ModelServer"]["replicas"]
    assert replicas and all(sc.target_resource(TARGET) in nodes[r["node_id"]] for r in replicas)
    config = api.apps()[kuberay["app"]].config
    actor = config["deployments"][0]["ray_actor_options"]
    assert actor["resources"] == {sc.target_resource(TARGET): sc.TARGET_RESOURCE_PER_REPLICA}


def test_the_health_probe_asks_the_engine_and_carries_no_payload(kuberay):
    r = httpx.get(kuberay["backend"].address + "/healthz", timeout=30,
                  headers={"Authorization": f"Bearer {kuberay['service_key']}"})
    assert r.status_code == 200 and r.json()["ok"] is True and r.json()["engine"] == "echo"
    # per-deployment readiness is for admins and for a tenant's own deployments; anyone else sees the aggregate
    ready = httpx.get(f"{kuberay['router']}/readyz", timeout=30, headers={"Authorization": f"Bearer {KEY}"})
    assert ready.status_code == 200 and "contracts" in ready.text


def test_the_model_server_refuses_to_start_without_its_key(kuberay):
    """The same Serve application with no key in its environment (a RayService whose Secret is missing): its
    replicas refuse to start, Serve reports why, and nothing answers at its route, rather than a server that
    answers anyone who can reach it."""
    api: ServeApi = kuberay["api"]
    settings = kuberay["settings"]
    prefix = PREFIX + "-nokey"
    app = {**kuberay["made"].app, "name": kuberay["app"] + "-nokey", "route_prefix": prefix}
    others = [dict(a.config) for n, a in api.apps().items() if a.config and n != app["name"]]
    api.apply(sc.serve_config([*others, app], host="127.0.0.1", port=settings.router_port))
    try:
        apps = api.wait(lambda apps: app["name"] in apps and apps[app["name"]].status in ("DEPLOY_FAILED",
                                                                                          "UNHEALTHY", "RUNNING"),
                        timeout_s=180, what="the keyless model server to fail")
        assert apps[app["name"]].status == "DEPLOY_FAILED", apps[app["name"]]
        why = api.details()["applications"][app["name"]]["deployments"]["ModelServer"]["message"]
        assert "refuses to start without a key: $SOVRA_SERVE_API_KEY is not set" in why, why
        r = httpx.get(f"http://127.0.0.1:{settings.router_port}{prefix}/healthz", timeout=30)
        assert r.status_code != 200, r.text
    finally:
        api.apply(sc.serve_config(others, host="127.0.0.1", port=settings.router_port))
