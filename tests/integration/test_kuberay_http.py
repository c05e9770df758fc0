"""The KubeRay path without Kubernetes: the exact Serve application the KubeRay component puts in a RayService's
`serveConfigV2` runs on the session's real Ray (which carries the cluster's target resource, as the worker group
does), and a router whose table holds the `kubernetes` backend that `up` makes from the stack's output reaches it
over HTTP. What is not exercised here: KubeRay itself, the pods, and the Service in front of them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pulumi  # noqa: F401  (the `pulumi` extra: scripts/test installs it, so its absence fails)
import pytest

from infra import serve_config as sc
from infra.serve_api import ServeApi
from tests.fakes.openai_backend import ServerThread

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SPECS = Path(__file__).parent / "specs"
ORG = SPECS / "kuberay-org.yaml"
KEY = "sk-test-kuberay-fr"
SERVICE_KEY = "kuberay-service-key-test"
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
    from infra.pulumi.program import placement_inputs
    from infra.pulumi_stack import outputs_to_endpoints
    from orchestrator import planning
    from orchestrator.spec.org import provision_for
    from policies.plan import Placement

    d = tmp_path_factory.mktemp("kuberay")
    spec = d / "contracts.yaml"
    spec.write_text(DEPLOYMENT)
    inputs = planning.load_inputs([spec], ORG)
    [deployment] = inputs.deployments
    cluster = next(t for t in inputs.targets if t.id == TARGET)
    placement = Placement(target=TARGET, provider="kubernetes", zone=cluster.zone, country=cluster.country,
                          replicas=1, accelerator="cpu-local", compute_usd=1.0, credits_usd=0.0, egress_usd=0.0)
    [made] = placement_inputs([placement], deployment, [cluster], {TARGET: provision_for(inputs.org, cluster)})
    # The pods read the service's key from a Kubernetes Secret; here Serve's runtime_env gives the replica the same
    # variable, and the router (in this process) reads its copy from the variable the connection names.
    app = {**made.app, "route_prefix": PREFIX, "runtime_env": {"env_vars": {"SOVRA_SERVE_API_KEY": SERVICE_KEY}}}
    os.environ["KUBERAY_TEST_KEY"] = SERVICE_KEY

    record = sovra_ray.local_ray().running()
    api = ServeApi(record.dashboard, token=sovra_ray.local_ray().token())
    others = [dict(a.config) for n, a in api.apps().items() if a.config and n != app["name"]]
    api.apply(sc.serve_config([*others, app], host="127.0.0.1", port=sovra_ray.router_port))
    api.wait(lambda apps: app["name"] in apps and apps[app["name"]].status == "RUNNING", timeout_s=180,
             what="the KubeRay model server app")
    url = f"http://127.0.0.1:{sovra_ray.router_port}{PREFIX}"
    # What `up` does with the stack's `endpoints` output: an Endpoint the kubernetes adapter locates.
    [endpoint] = outputs_to_endpoints({"endpoints": {TARGET: {"url": url, "api_key_env": "KUBERAY_TEST_KEY"}}},
                                      [cluster])
    backend = sc.routed_entry(deployment, placement, endpoint, endpoint.connection)
    cfg = {"backends": [backend.to_wire()], "tenants": [t.model_dump(mode="json") for t in inputs.org.tenants],
           "audit_path": str(d / "audit.jsonl")}
    from orchestrator.serving.ray_apps import build_router_state_app

    with ServerThread(build_router_state_app(cfg)) as router:
        yield {"router": router.url, "api": api, "app": app["name"], "backend": backend, "audit": d / "audit.jsonl"}
    remaining = [dict(a.config) for n, a in api.apps().items() if a.config and n != app["name"]]
    api.apply(sc.serve_config(remaining, host="127.0.0.1", port=sovra_ray.router_port))
    os.environ.pop("KUBERAY_TEST_KEY", None)


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
    [record] = [json.loads(line) for line in kuberay["audit"].read_text().splitlines()][:1]
    assert record["target"] == TARGET


def test_the_service_refuses_callers_without_its_key(kuberay):
    url = kuberay["backend"].address
    assert httpx.get(url + "/healthz", timeout=30).status_code == 401
    r = httpx.post(url + "/v1/chat/completions", timeout=30, headers={"Authorization": "Bearer guess"},
                   json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert kuberay["backend"].params == {"api_key_env": "KUBERAY_TEST_KEY"}  # the name, never the key


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
                  headers={"Authorization": f"Bearer {SERVICE_KEY}"})
    assert r.status_code == 200 and r.json()["ok"] is True and r.json()["engine"] == "echo"
    ready = httpx.get(f"{kuberay['router']}/readyz", timeout=30)
    assert ready.status_code == 200 and "contracts" in ready.text
