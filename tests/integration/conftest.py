import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOVRA = Path(sys.executable).with_name("sovra")
# Org files whose local Ray targets the tests deploy to the session's local Ray (bench/ starts Rays of its own).
LOCAL_ORGS = [ROOT / "examples" / "quickstart" / "org.yaml", *sorted((ROOT / "tests" / "integration" / "specs")
                                                                     .glob("*org*.yaml"))]


def local_targets() -> list[str]:
    """Every local Ray target (a `provider: ray` cluster without `address`) in the orgs the tests use, and every
    Kubernetes cluster, whose KubeRay worker group the session's Ray stands in for (test_kuberay_http.py)."""
    from sovra.orchestrator.catalog import load_org

    return sorted({c.id for path in LOCAL_ORGS for c in load_org(path).clusters
                   if (c.provider == "ray" and not c.address) or c.provider == "kubernetes"})


@pytest.fixture(scope="session")
def sovra():
    """Run the installed `sovra` console script, as a user would."""

    def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
        return subprocess.run([str(SOVRA), *map(str, args)], check=False, cwd=cwd, capture_output=True, text=True, env=env,
                              timeout=600)

    assert SOVRA.exists(), f"console script missing at {SOVRA}; install with pip install -e ."
    return run


@pytest.fixture(scope="session")
def sovra_ray(tmp_path_factory):
    """One local Ray for the whole test session, started by Sovra's own code on 127.0.0.1 with free ports.

    Yields the deploy Settings; the same values are exported as SOVRA_* variables so that the `sovra` console
    script started by a test talks to this cluster too.
    """
    import ray  # noqa: F401  (the 'ray' extra: scripts/test installs it, so its absence fails)

    from sovra.infra import serve_config as sc
    from sovra.infra.ray_cluster import free_port
    from sovra.orchestrator.deploy import Settings

    home = tmp_path_factory.mktemp("sovra-home")
    settings = Settings(home=home, router_port=free_port(), dashboard_port=free_port(), gcs_port=free_port(),
                        timeout_s=300)
    env = {"SOVRA_HOME": str(home), "SOVRA_ROUTER_PORT": str(settings.router_port),
           "SOVRA_RAY_DASHBOARD_PORT": str(settings.dashboard_port), "SOVRA_RAY_PORT": str(settings.gcs_port),
           # Serve's actors report their tasks to Ray's state API, so a test can see how Serve hands requests on
           "RAY_SERVE_ENABLE_TASK_EVENTS": "1",
           # Serve's own proxy, where the router calls replicas by handle: the path of every cluster Sovra did not
           # start itself, and of a local router with `tls`. The default, HAProxy ingress, is what the quickstart,
           # test_serve_http.py and test_router_ha.py run.
           "SOVRA_SERVE_HAPROXY": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    local = settings.local_ray()
    local.ensure(resources=[sc.target_resource(t) for t in local_targets()])
    try:
        yield settings
    finally:
        local.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def ray_driver(settings) -> Iterator[None]:
    """This process as a Ray driver of the local Ray of `settings`, given its token explicitly (never ~/.ray).

    Ray reads RAY_AUTH_MODE once per process, so the mode is re-read the way Ray's own token set-up does it
    (`Config.initialize`), and the token loader's cache is reset to read RAY_AUTH_TOKEN_PATH.
    """
    import ray
    from ray._raylet import AuthenticationTokenLoader, Config

    local = settings.local_ray()
    env = local.client_env()
    saved = {k: os.environ.get(k) for k in (*env, "RAY_AUTH_TOKEN")}
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(env)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    ray.init(address=local.running().gcs_address, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def replicas_of(app: str) -> list[dict]:
    """The live ModelServer replica actors of Serve app `app` (this process must be a driver of its Ray)."""
    from ray.util import list_named_actors

    return [a for a in list_named_actors(all_namespaces=True) if app in a["name"] and "ModelServer" in a["name"]]


def timed_chats(url: str, key: str, n: int) -> list[tuple[float, int, str]]:
    """n sequential chats to the router at `url` as the tenant of `key`: (seconds, HTTP status, X-Sovra-Target)."""
    import time

    import httpx

    out = []
    with httpx.Client(timeout=130) as http:  # one pooled client: a new one per call costs ~100 ms by itself
        for _ in range(n):
            t0 = time.perf_counter()
            r = http.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": "m", "messages": [{"role": "user", "content": "eu-secret dead set"}]})
            out.append((time.perf_counter() - t0, r.status_code, r.headers.get("X-Sovra-Target", "")))
    return out
