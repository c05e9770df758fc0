import os
import subprocess
import sys
from pathlib import Path

import pytest

# Sovra's local Ray runs with Ray's token authentication; a driver in this process must know before Ray is imported.
os.environ.setdefault("RAY_AUTH_MODE", "token")

ROOT = Path(__file__).resolve().parents[2]
SOVRA = Path(sys.executable).with_name("sovra")


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
    pytest.importorskip("ray", reason="Ray tests need the 'ray' extra (scripts/test installs it)")
    from infra.ray_cluster import free_port
    from orchestrator.deploy import Settings

    home = tmp_path_factory.mktemp("sovra-home")
    settings = Settings(home=home, router_port=free_port(), dashboard_port=free_port(), gcs_port=free_port(),
                        timeout_s=300)
    env = {"SOVRA_HOME": str(home), "SOVRA_ROUTER_PORT": str(settings.router_port),
           "SOVRA_RAY_DASHBOARD_PORT": str(settings.dashboard_port), "SOVRA_RAY_PORT": str(settings.gcs_port)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray = settings.local_ray()
    ray.ensure()
    try:
        yield settings
    finally:
        ray.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
