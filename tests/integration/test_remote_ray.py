"""Ray clusters with an `address`, the path a company's own clusters take: a real two-node Ray on 127.0.0.1 (a
head and a worker, each `ray start` with token authentication and a different target resource), used through an
org that names it by dashboard address with its own token file. Each target's replicas run only on its node, and
when the EU node dies EU requests fail closed while US ones go on."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray  # noqa: F401  (the 'ray' extra: scripts/test installs it, so its absence fails)

from sovra.infra import serve_config as sc
from sovra.infra.ray_cluster import ClusterError
from sovra.infra.ray_cluster import free_port as _free_port
from sovra.infra.serve_api import ServeApi
from tests.integration.conftest import ROOT, SOVRA

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EU, US = "eu-paris", "us-virginia"
EU_KEY, US_KEY = "sk-test-ray-eu", "sk-test-ray-us"
EU_APP, US_APP = sc.app_name("m", EU), sc.app_name("m", US)
DEPLOYMENT = """\
apiVersion: sovra/v1
kind: Deployment
metadata: {name: m}
spec:
  model: {name: m, gpu_memory_gb: 1}
  replicas: {min: 3, max: 3}
  placement: {min_targets: 2}
  serving: {engine: echo}
"""


def _cluster(cid: str, country: str, price: float, address: str, extra: str) -> str:
    return (f"  - {{id: {cid}, provider: ray, address: '{address}', country: {country},{extra}\n"
            f"     operator: {{name: self, jurisdiction: {country}}},\n"
            f"     accelerators: [{{sku: cpu, gpus: 1, gpu_memory_gb: 2, usd_per_hour: {price}, available: 4}}]}}\n")


_HANDED: set[int] = set()


def free_port() -> int:
    """A free port not handed out before in this process: the kernel may give the same one twice in a row, and a
    `ray start` given one port for two of its components refuses to start (seen in CI)."""
    while (port := _free_port()) in _HANDED:
        pass
    _HANDED.add(port)
    return port


def _tenant(name: str, key: str, zone: str) -> str:
    return (f"  - {{name: {name}, key_sha256: {hashlib.sha256(key.encode()).hexdigest()}, "
            f"residency: {{zones: [{zone}]}}}}\n")


def _sovra(*args: str | Path, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SOVRA_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    return subprocess.run([str(SOVRA), *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=600, check=False)


def test_up_refuses_an_open_router_on_a_remote_cluster_before_touching_anything(tmp_path):
    """No tenants: the router would accept anyone, so it may not listen beyond loopback (default 0.0.0.0)."""
    address = "http://203.0.113.7:8265"  # TEST-NET-3: nothing answers there
    org = tmp_path / "org.yaml"
    org.write_text("apiVersion: sovra/v1\nkind: Org\nclusters:\n" + _cluster("onprem-lyon", "FR", 0.0, address, ""))
    spec = tmp_path / "m.yaml"
    spec.write_text(DEPLOYMENT.replace("{min: 3, max: 3}", "{min: 1, max: 1}").replace("min_targets: 2",
                                                                                       "min_targets: 1"))
    home = tmp_path / "sovra-home"
    t0 = time.monotonic()
    r = _sovra("up", spec, "--org", org, home=home)
    assert r.returncode == 1, r.stdout + r.stderr
    err = " ".join(r.stderr.split())
    assert "the org has no tenants, so the router would accept any caller" in err, err
    assert f"on cluster {address} it would listen on 0.0.0.0:8000" in err
    assert "Add tenants with key_sha256" in err and "`router_host: 127.0.0.1` on cluster onprem-lyon" in err
    assert "cannot reach" not in err and time.monotonic() - t0 < 20  # it never tried the cluster
    assert not home.exists()  # no local Ray started, no token written


# --- a real two-node Ray ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TwoNodes:
    dashboard: str
    token_file: Path
    head: subprocess.Popen
    worker: subprocess.Popen

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()


def _node_flags() -> list[str]:
    """Ports of their own for each raylet, since both nodes share 127.0.0.1 (as ray.cluster_utils does)."""
    return ["--block", "--node-ip-address", "127.0.0.1", "--object-store-memory", str(80 * 2**20),
            "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
            "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats"]


def _ray_start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", *args, *_node_flags()],
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def _live(pgid: int) -> list[int]:
    """The processes of group `pgid` still running (zombies, already dead, are not counted)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


def _kill_node(proc: subprocess.Popen) -> None:
    """SIGKILL the node's whole process group (`ray start`, raylet, agents, workers): a crash, not a drain."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _live(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)


def _alive_nodes(api: ServeApi) -> dict[str, dict[str, float]]:
    return {n.node_id: dict(n.resources) for n in api.alive_nodes()}


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    d = tmp_path_factory.mktemp("two-nodes")
    token_file = d / "ray.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAY_USAGE_STATS_ENABLED="0")
    gcs, dash = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_ray_start(["--head", "--port", str(gcs), "--num-cpus", "2", "--include-dashboard", "true",
                                 "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                                 "--ray-client-server-port", str(free_port()),
                                 "--resources", json.dumps({sc.target_resource(US): 1000})], d / "head.log", env))
        api = ServeApi(f"http://127.0.0.1:{dash}", token=token_file.read_text(), timeout_s=5)
        _wait(lambda: len(_alive_nodes(api)) == 1, 90, "the head node", d / "head.log")
        procs.append(_ray_start(["--address", f"127.0.0.1:{gcs}", "--num-cpus", "1",
                                 "--resources", json.dumps({sc.target_resource(EU): 1000})], d / "worker.log", env))
        _wait(lambda: len(_alive_nodes(api)) == 2, 90, "the worker node", d / "worker.log")
        yield TwoNodes(api.dashboard, token_file, procs[0], procs[1])
    finally:
        for proc in reversed(procs):
            _kill_node(proc)
        leftover = {p.pid: _live(p.pid) for p in procs if _live(p.pid)}
        assert not leftover, f"Ray processes left running after teardown: {leftover}"


def _wait(done, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if done():
                return
        except ClusterError as exc:  # the dashboard is not up yet: retried until the deadline
            log_tail = f"last error: {exc}"
        else:
            log_tail = ""
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; {log_tail}\n{tail}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def deployed(two_nodes, tmp_path_factory):
    d = tmp_path_factory.mktemp("remote-org")
    router_port = free_port()
    extra = (f"\n     auth_token_file: '{two_nodes.token_file}', router_host: 127.0.0.1, "
             f"router_port: {router_port},")
    org = d / "org.yaml"
    org.write_text("apiVersion: sovra/v1\nkind: Org\nclusters:\n"
                   + _cluster(EU, "FR", 0.1, two_nodes.dashboard, extra)
                   + _cluster(US, "US", 1.0, two_nodes.dashboard, extra)
                   + "tenants:\n" + _tenant("eu", EU_KEY, "EU") + _tenant("us", US_KEY, "US"))
    spec = d / "m.yaml"
    spec.write_text(DEPLOYMENT)
    home = d / "sovra-home"
    up = _sovra("up", spec, "--org", org, home=home)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"router http://127.0.0.1:{router_port}" in up.stdout
    assert not (home / "ray").exists()  # the remote path never starts a local Ray
    yield {"url": f"http://127.0.0.1:{router_port}", "api": ServeApi(two_nodes.dashboard, token=two_nodes.token),
           "nodes": two_nodes}
    down = _sovra("down", spec, "--org", org, home=home)
    assert down.returncode == 0 or two_nodes.head.poll() is not None, down.stdout + down.stderr


def _chat(url: str, key: str, text: str = "hello") -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": "m", "messages": [{"role": "user", "content": text}]})


def _replica_nodes(api: ServeApi, app: str) -> list[str]:
    deployments = api.details()["applications"][app]["deployments"]
    return [r["node_id"] for r in deployments["ModelServer"]["replicas"] if r["state"] == "RUNNING"]


def test_every_replica_runs_on_its_targets_node(deployed):
    api = deployed["api"]
    nodes = _alive_nodes(api)
    eu_nodes = {n for n, res in nodes.items() if sc.target_resource(EU) in res}
    us_nodes = {n for n, res in nodes.items() if sc.target_resource(US) in res}
    assert len(eu_nodes) == len(us_nodes) == 1 and eu_nodes != us_nodes
    eu, us = _replica_nodes(api, EU_APP), _replica_nodes(api, US_APP)
    assert len(eu) == 2 and set(eu) == eu_nodes, (eu, eu_nodes)
    assert len(us) == 1 and set(us) == us_nodes, (us, us_nodes)
    router = api.details()["applications"][sc.ROUTER_APP]["deployments"]["Router"]["replicas"]
    # no single router: by default on a cluster of several nodes, 2 replicas, one on each node
    assert len(router) == 2 and {r["node_id"] for r in router} == eu_nodes | us_nodes, router
    r = _chat(deployed["url"], EU_KEY)
    assert r.status_code == 200 and r.headers["X-Sovra-Target"] == EU, r.text
    r = _chat(deployed["url"], US_KEY)
    assert r.status_code == 200 and r.headers["X-Sovra-Target"] == US, r.text


def test_losing_the_eu_node_fails_eu_requests_closed_and_keeps_us_working(deployed):
    _kill_node(deployed["nodes"].worker)
    url, seen = deployed["url"], []
    deadline = time.monotonic() + 60
    while True:
        r = _chat(url, EU_KEY, "eu-secret")
        seen.append((r.status_code, r.headers.get("X-Sovra-Target")))
        assert r.status_code != 200 or r.headers["X-Sovra-Target"] == EU, r.text  # never answered from the US
        if r.status_code == 503 and r.json()["error"]["code"] == "no_allowed_backend":
            break
        assert time.monotonic() < deadline, f"EU requests never failed closed: {seen[-10:]}"
        time.sleep(0.5)
    for _ in range(5):  # and they stay closed
        r = _chat(url, EU_KEY, "eu-secret")
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_allowed_backend", r.text
        r = _chat(url, US_KEY)
        assert r.status_code == 200 and r.headers["X-Sovra-Target"] == US, r.text
