"""End to end through the router `sovra up` deploys: one deployment with a Ray replica in FR (own), an existing
SageMaker endpoint in the EU (own, declared in org.yaml), Databricks pay-per-token in the EU and Bedrock in the US
(managed). Every cloud is an emulator on 127.0.0.1 that the router's SDKs are pointed at the way a user points them
at an account (AWS_ENDPOINT_URL_*, DATABRICKS_HOST/TOKEN), through the environment of the local Ray `up` starts.

An EU tenant's requests only ever reach EU backends: its own rung first, spilling to the managed rung when the
replica is saturated or killed, and 503 once every EU backend is gone; the audit trail names every attempt."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from sovra.infra import serve_config as sc
from sovra.infra.ray_cluster import LocalRay, free_port
from sovra.orchestrator.deploy import Settings
from tests.emulators.aws import aws_env, fake_aws
from tests.emulators.databricks import DatabricksEmulator
from tests.integration.conftest import ROOT, SOVRA, ray_driver

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SPECS = Path(__file__).parent / "specs" / "ladder"
EU_KEY, ANY_KEY, ADMIN_KEY = "sk-ladder-eu", "sk-ladder-any", "sk-ladder-admin"
RAY, SAGEMAKER, DATABRICKS, BEDROCK = "onprem-paris", "sagemaker-eu", "databricks/eu-west-1", "aws-bedrock/us-east-1"
EU_TARGETS = {RAY, SAGEMAKER, DATABRICKS}
OWN = {RAY, SAGEMAKER}  # the first rung: capacity already paid for (equally cheap: either may serve)


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ladder")
    with contextlib.ExitStack() as stack:
        sagemaker = stack.enter_context(contextlib.ExitStack())  # closed by a test: the EU endpoint goes away
        sm = sagemaker.enter_context(fake_aws())
        bedrock = stack.enter_context(fake_aws())
        dbx = DatabricksEmulator().__enter__()
        org = tmp / "org.yaml"
        org.write_text((SPECS / "org.template.yaml").read_text().replace("@DATABRICKS_HOST@", dbx.host)
                       .replace("@EU_SHA@", sha(EU_KEY)).replace("@ANY_SHA@", sha(ANY_KEY))
                       .replace("@ADMIN_SHA@", sha(ADMIN_KEY)))
        settings = Settings(home=tmp / "sovra", router_port=free_port(), dashboard_port=free_port(),
                            gcs_port=free_port(), timeout_s=300)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SOVRA_", "RAY_AUTH_", "AWS_", "DATABRICKS_")) and k != "RAY_ADDRESS"}
        env.update(aws_env(sagemaker_runtime=sm.url, sagemaker=sm.url, bedrock_runtime=bedrock.url,
                           bedrock=bedrock.url),
                   DATABRICKS_TOKEN=dbx.token, DATABRICKS_CONFIG_FILE=str(tmp / "databrickscfg"),
                   SOVRA_HOME=str(settings.home), SOVRA_ROUTER_PORT=str(settings.router_port),
                   SOVRA_RAY_DASHBOARD_PORT=str(settings.dashboard_port), SOVRA_RAY_PORT=str(settings.gcs_port),
                   SOVRA_ADMIN_KEY=ADMIN_KEY, COLUMNS="200", NO_COLOR="1",
                   # by handle: a killed replica is then provably unassigned at once (the ladder's timing below);
                   # over HAProxy a request may wait out its connect retries for Serve's replacement replica
                   # (test_serve_http.py holds that path to the same residency guarantees)
                   SOVRA_SERVE_HAPROXY="0")

        def sovra(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(SOVRA), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=600, check=False)

        files = [str(SPECS / "deployment.yaml"), "--org", str(org), "--catalog", str(SPECS / "catalog.yaml")]
        try:
            up = sovra("up", *files, "--no-check")
            assert up.returncode == 0, up.stdout + up.stderr
            yield {"url": f"http://127.0.0.1:{settings.router_port}", "settings": settings, "sovra": sovra,
                   "sm": sm, "sagemaker": sagemaker, "bedrock": bedrock, "dbx": dbx, "up": up, "files": files}
        finally:
            with contextlib.suppress(Exception):
                dbx.__exit__(None, None, None)
            LocalRay(settings.home).stop()


def chat(url: str, key: str, text: str, http: httpx.Client | None = None) -> httpx.Response:
    client = http or httpx.Client(timeout=60)
    try:
        return client.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "ladder", "messages": [{"role": "user", "content": text}]})
    finally:
        if http is None:
            client.close()


def eu_payloads_at_bedrock(d) -> list[str]:
    return [r.path for r in d["bedrock"].requests if b"eu-secret" in r.body]


def test_up_routes_the_managed_and_declared_backends_beside_the_ray_replica(ladder):
    routes = httpx.get(ladder["url"] + "/v1/routes", headers={"Authorization": f"Bearer {ANY_KEY}"}).json()
    backends = {b["target"]: b for b in routes["deployments"]["ladder"]["backends"]}
    # a tenant's table holds what direct mode can call; the Ray replica is only named (no Serve address)
    assert set(backends) == (EU_TARGETS - {RAY}) | {BEDROCK}
    assert routes["deployments"]["ladder"]["proxy_only"] == [{"target": RAY, "kind": "ray"}]
    assert {t: (b["kind"], b["tier"]) for t, b in backends.items()} == {
        SAGEMAKER: ("aws-sagemaker", 0), DATABRICKS: ("databricks", 1), BEDROCK: ("aws-bedrock", 1)}
    assert backends[BEDROCK]["address"] == "mistral.mistral-small-2402-v1:0"
    wire = json.dumps(routes)
    assert ladder["dbx"].token not in wire and "AWS_SECRET" not in wire
    eu = httpx.get(ladder["url"] + "/v1/routes", headers={"Authorization": f"Bearer {EU_KEY}"}).json()
    assert {b["target"] for b in eu["deployments"]["ladder"]["backends"]} == EU_TARGETS - {RAY}
    # `sovra status` shows every rung; routed backends in their vendor's own words, asked without a payload
    status = ladder["sovra"]("status", "-o", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {b["target"]: b for e in json.loads(status.stdout) for b in e["backends"]}
    assert rows[RAY]["status"] == "RUNNING" and rows[DATABRICKS]["status"] == "READY"
    assert rows[BEDROCK]["kind"] == "aws-bedrock" and rows[BEDROCK]["tier"] == 1
    assert len(ladder["dbx"].invocations("databricks-meta-llama-3-3-70b-instruct")) == 0


def test_the_own_rung_serves_first_and_a_saturated_replica_spills_inside_the_eu(ladder):
    first = chat(ladder["url"], EU_KEY, "eu-secret hello")
    assert first.status_code == 200 and first.headers["X-Sovra-Target"] in OWN
    # 32 requests fill the replica (2 s each); the SageMaker endpoint (capacity 4) is held slow; the rest spill
    # to Databricks. The cheapest backend, Bedrock US, is never a step for an EU tenant.
    ladder["sm"].slow_s = 5.0
    with ladder["sm"].failing("slow"), httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64)) as http, \
            cf.ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(lambda i: chat(ladder["url"], EU_KEY, f"eu-secret burst {i}", http), range(44)))
    assert [a.status_code for a in answers] == [200] * 44
    served = [a.headers["X-Sovra-Target"] for a in answers]
    assert set(served) <= EU_TARGETS
    assert DATABRICKS in served, served
    assert not eu_payloads_at_bedrock(ladder)


def test_the_anywhere_tenant_reaches_the_us_rung_only_when_it_is_the_cheapest_allowed(ladder):
    # an unrestricted tenant is bound by the deployment (EU or US): its own rung first, like everyone
    r = chat(ladder["url"], ANY_KEY, "global hello")
    assert r.status_code == 200 and r.headers["X-Sovra-Target"] in OWN


def test_a_killed_replica_and_lost_endpoints_spill_down_the_ladder_and_then_fail_closed(ladder):
    import ray
    from ray.util import list_named_actors

    app = sc.app_name("ladder", RAY)
    with ray_driver(ladder["settings"]):
        victims = [a for a in list_named_actors(all_namespaces=True) if app in a["name"] and "ModelServer" in a["name"]]
        assert victims
        for v in victims:
            ray.kill(ray.get_actor(v["name"], namespace=v["namespace"]), no_restart=True)
    with httpx.Client(timeout=60) as http:
        r = chat(ladder["url"], EU_KEY, "eu-secret replica gone", http)
        assert r.status_code == 200 and r.headers["X-Sovra-Target"] in (SAGEMAKER, RAY)  # Serve may have replaced it
        ladder["sagemaker"].close()  # the EU endpoint goes away
        # until Serve replaces the replica, EU requests land on Databricks (managed); never on Bedrock US
        targets = [chat(ladder["url"], EU_KEY, f"eu-secret after {i}", http).headers["X-Sovra-Target"]
                   for i in range(4)]
        assert set(targets) <= {RAY, DATABRICKS} and not eu_payloads_at_bedrock(ladder)
        ladder["dbx"].__exit__(None, None, None)  # the managed EU rung goes too
        with ray_driver(ladder["settings"]):  # and the replica again, if Serve has brought it back
            for v in [a for a in list_named_actors(all_namespaces=True)
                      if app in a["name"] and "ModelServer" in a["name"]]:
                ray.kill(ray.get_actor(v["name"], namespace=v["namespace"]), no_restart=True)
        t0 = time.perf_counter()
        gone = chat(ladder["url"], EU_KEY, "eu-secret nothing left", http)
        assert gone.status_code == 503, gone.text
        assert gone.json()["error"]["code"] == "no_allowed_backend"
        assert time.perf_counter() - t0 < 10
        wide = chat(ladder["url"], ANY_KEY, "global when the EU is gone", http)
        assert wide.status_code == 200 and wide.headers["X-Sovra-Target"] == BEDROCK
    assert not eu_payloads_at_bedrock(ladder)
    assert any(b"global when the EU is gone" in r.body for r in ladder["bedrock"].requests)


def test_the_audit_trail_names_every_attempt(ladder):
    trail = ladder["sovra"]("audit", "--router", ladder["url"], "--tenant", "eu-bank", "-n", "200", "-o", "json")
    assert trail.returncode == 0, trail.stdout + trail.stderr
    records = json.loads(trail.stdout)
    attempts = [a for r in records for a in r["attempts"]]
    assert {a["target"] for a in attempts} <= EU_TARGETS  # no EU request was ever attempted outside the EU
    refused = next(r for r in records if r["status"] == 503)
    assert {a["target"] for a in refused["attempts"]} <= EU_TARGETS and refused["attempts"]
    assert all(a["outcome"] in ("not_sent", "refused") for a in refused["attempts"])
    verify = ladder["sovra"]("audit", "verify", "--router", ladder["url"])
    assert verify.returncode == 0, verify.stdout + verify.stderr
