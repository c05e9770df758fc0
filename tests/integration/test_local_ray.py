"""The embedded local Ray, on ports of its own beside the session's shared one. First the quickstart on a machine
that never ran Ray (an empty HOME, no SOVRA_HOME, no RAY_AUTH_* variables): Ray 2.60 turns token authentication on
and `ray start` finds no token there, so Sovra must bring its own, under ~/.sovra, and leave ~/.ray alone. Then
the targets' resources a running local Ray lacks: restarted when it serves nothing, refused otherwise."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from sovra.infra.ray_cluster import ClusterError, LocalRay, free_port
from sovra.infra.serve_api import ServeApi
from tests.integration.conftest import ROOT, SOVRA

pytestmark = [pytest.mark.integration, pytest.mark.slow]
QS = ["examples/quickstart/deployment.yaml", "--org", "examples/quickstart/org.yaml"]


def _group_alive(pgid: int) -> bool:
    """True while a process of group `pgid` runs (zombies are dead)."""
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def test_quickstart_up_and_down_from_an_empty_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    ports = {"SOVRA_ROUTER_PORT": free_port(), "SOVRA_RAY_DASHBOARD_PORT": free_port(), "SOVRA_RAY_PORT": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOVRA_", "RAY_AUTH_")) and k != "RAY_ADDRESS"}
    env.update({k: str(v) for k, v in ports.items()}, HOME=str(home), COLUMNS="200", NO_COLOR="1")

    def sovra(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(SOVRA), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                              check=False)

    sovra_home = home / ".sovra"
    try:
        up = sovra("up", *QS)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "answered via target local (zone EU)" in up.stdout, up.stdout
        token = sovra_home / "ray" / "auth_token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert token.read_text() not in up.stdout + up.stderr  # never printed
        pid = json.loads((sovra_home / "ray" / "cluster.json").read_text())["pid"]
        dashboard = f"http://127.0.0.1:{ports['SOVRA_RAY_DASHBOARD_PORT']}"
        assert httpx.get(f"{dashboard}/api/version", timeout=5).status_code == 401  # it does want a token
        down = sovra("down", *QS, "--stop-ray")
        assert down.returncode == 0, down.stdout + down.stderr
        assert not _group_alive(pid), "the local Ray outlived `down --stop-ray`"
        assert not (sovra_home / "ray" / "cluster.json").exists()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{dashboard}/api/version", timeout=5)
    finally:
        LocalRay(sovra_home).stop()  # a no-op unless a step above failed
    assert not (home / ".ray").exists(), list((home / ".ray").rglob("*"))


def test_a_local_ray_lacking_a_target_is_restarted_only_when_it_serves_nothing(tmp_path):
    local = LocalRay(tmp_path, dashboard_port=free_port(), gcs_port=free_port(), num_cpus=1)
    paris, lyon = "sovra.target/onprem-paris", "sovra.target/onprem-lyon"
    try:
        first = local.ensure(resources=[paris])
        with pytest.raises(ClusterError, match=r"without the resource sovra.target/onprem-lyon .* still serves "
                                               r"sovra.m.onprem-paris.*--stop-ray"):
            local.ensure(resources=[paris, lyon], serving=lambda _rec: ["sovra.m.onprem-paris"])
        assert local.running() == first  # refused: left as it was
        second = local.ensure(resources=[lyon, paris])  # it serves nothing: restarted with both
        assert second.pid != first.pid and second.resources == (lyon, paris)
        [node] = ServeApi(second.dashboard, token=local.token()).alive_nodes()
        assert node.resources[paris] == node.resources[lyon] == 1000
        assert local.ensure(resources=[paris]) == second  # a subset: kept
    finally:
        local.stop()
