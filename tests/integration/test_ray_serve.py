"""Real Ray Serve on 127.0.0.1: model apps on an EU and a US Ray target, the router as ingress, the openai client."""

from __future__ import annotations

import hashlib
import json
import socket
import time

import pytest

ray = pytest.importorskip("ray", reason="Ray tests need the 'ray' extra (scripts/test installs it)")
serve = pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")

from orchestrator.serving.ray_apps import model_server_app, router_app  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EU_KEY, US_KEY = "sk-test-ray-eu", "sk-test-ray-us"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray")
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    apps = {"sovra-m-eu": ("onprem-paris", {"zone": "EU", "country": "FR", "jurisdiction": "FR", "operator": "self"}),
            "sovra-m-us": ("onprem-virginia", {"zone": "US", "country": "US", "jurisdiction": "US", "operator": "self"})}
    for name, (target, _) in apps.items():
        serve.run(model_server_app(model="m", target=target, engine="echo", min_replicas=1,
                                   max_replicas=2), name=name, route_prefix=None)
    audit = tmp / "audit.jsonl"
    config = {
        "backends": [{"id": f"m@{t}", "model": "m", "target": t, "cost": 0.1 if "us" in n else 1.0, "kind": "ray",
                      "address": n, "place": place} for n, (t, place) in apps.items()],
        "tenants": [{"name": "eu", "key_sha256": hashlib.sha256(EU_KEY.encode()).hexdigest(),
                     "residency": {"zones": ["EU"]}},
                    {"name": "us", "key_sha256": hashlib.sha256(US_KEY.encode()).hexdigest(),
                     "residency": {"zones": ["US"]}}],
        "audit_path": str(audit),
    }
    cfg_path = tmp / "router.json"
    cfg_path.write_text(json.dumps(config))
    serve.run(router_app(str(cfg_path)), name="sovra-router", route_prefix="/")
    yield {"url": f"http://127.0.0.1:{port}", "audit": audit}
    serve.shutdown()
    ray.shutdown()


def client(cluster, key=EU_KEY):
    return openai.OpenAI(base_url=cluster["url"] + "/v1", api_key=key, max_retries=0)


def test_openai_client_through_ray_serve_router(cluster):
    raw = client(cluster).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "eu-secret"}])
    assert raw.parse().choices[0].message.content == "served-by onprem-paris"
    assert raw.headers["X-Sovra-Target"] == "onprem-paris" and raw.headers["X-Sovra-Zone"] == "EU"
    chunks = list(client(cluster).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "eu-secret"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "served-by onprem-paris"
    emb = client(cluster).embeddings.create(model="m", input="abcd")
    assert emb.data[0].embedding[0] == 4.0


def test_us_tenant_reaches_us_and_eu_tenant_fails_closed_when_eu_is_gone(cluster):
    raw = client(cluster, US_KEY).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["X-Sovra-Target"] == "onprem-virginia"
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=cluster["url"] + "/v1", api_key=EU_KEY, max_retries=0,
                      default_headers={"X-Sovra-Residency": "US"}).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "eu-secret widen"}])
    serve.delete("sovra-m-eu")  # every EU backend killed
    try:
        with pytest.raises(openai.InternalServerError) as exc:
            client(cluster).chat.completions.create(model="m", messages=[{"role": "user", "content": "eu-secret"}])
        assert exc.value.status_code == 503 and exc.value.body["code"] == "no_allowed_backend"
    finally:
        serve.run(model_server_app(model="m", target="onprem-paris", engine="echo",
                                   min_replicas=1, max_replicas=2), name="sovra-m-eu", route_prefix=None)
    time.sleep(0.5)
    records = [json.loads(line) for line in cluster["audit"].read_text().splitlines()]
    eu = [r for r in records if r["tenant"] == "eu"]
    assert eu and all(r["zone"] in ("EU", None) for r in eu)
    assert "eu-secret" not in cluster["audit"].read_text()


def test_replica_killed_under_load_fails_no_request(cluster):
    import concurrent.futures as cf

    from ray.util import list_named_actors

    serve.run(model_server_app(model="m", target="onprem-paris", engine="echo",
                               min_replicas=2, max_replicas=2), name="sovra-m-eu", route_prefix=None)
    c = client(cluster)
    deadline = time.time() + 30
    while True:  # the previous test ejected the EU backend: wait until traffic is admitted to it again
        try:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "warm"}])
            break
        except openai.APIStatusError:
            assert time.time() < deadline, "EU backend never came back"
            time.sleep(0.5)

    done_at: list[float] = []

    def one(i):
        try:
            r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": f"eu-secret {i}"}])
            done_at.append(time.time())
            return r.choices[0].message.content
        except Exception as exc:  # counted, not raised: the assertion below says how many failed
            return f"FAILED {type(exc).__name__}: {exc}"

    replicas = [a for a in list_named_actors(all_namespaces=True)
                if "sovra-m-eu" in a["name"] and "ModelServer" in a["name"]]
    assert len(replicas) == 2
    with cf.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(300)]
        time.sleep(0.3)
        victim = replicas[0]
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
        killed_at = time.time()
        results = [f.result() for f in futures]
    assert sum(t > killed_at for t in done_at) >= 50, "the kill did not happen under load"
    failed = [r for r in results if r.startswith("FAILED")]
    assert not failed, failed[:3]
    assert all(r == "served-by onprem-paris" for r in results)
