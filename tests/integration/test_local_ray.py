"""The embedded local Ray, on ports of its own beside the session's shared one. First the quickstart on a machine
that never ran Ray (an empty HOME, no SOVRA_HOME, no RAY_AUTH_* variables): Ray 2.60 turns token authentication on
and `ray start` finds no token there, so Sovra must bring its own, under ~/.sovra, and leave ~/.ray alone. Then
the targets' resources a running local Ray lacks: restarted when it serves nothing, refused otherwise."""

from __future__ import annotations

import json
import os
import socket
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
        # README command 1 deploys the fast ingress: Serve's HAProxy, the `ray` extra's binary
        assert json.loads((sovra_home / "ray" / "cluster.json").read_text())["serve_http"] is True
        assert "HAProxy ingress" in up.stderr + up.stdout
        # a re-deploy after `down` removed every application (it once failed in HAProxy mode)
        emptied = sovra("down", *QS)
        assert emptied.returncode == 0 and "removed" in emptied.stdout, emptied.stdout + emptied.stderr
        again = sovra("up", *QS)
        assert again.returncode == 0 and "answered via target local (zone EU)" in again.stdout, (
            again.stdout + again.stderr)
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


def _env(home: Path, **ports: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOVRA_", "RAY_AUTH_")) and k != "RAY_ADDRESS"}
    env.update({k: str(v) for k, v in ports.items()}, SOVRA_HOME=str(home), COLUMNS="200", NO_COLOR="1")
    return env


def _held_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


ECHO = ["tests/integration/specs/two-zones.yaml", "--org", "tests/integration/specs/two-zones-org.yaml", "--no-check"]


def test_a_taken_router_port_stops_up_before_ray_starts_with_a_sentence(tmp_path):
    """Another program holds the router's port: `up` says so, naming the setting, and starts nothing."""
    with _held_port() as held:
        port = held.getsockname()[1]
        env = _env(tmp_path / "home", SOVRA_ROUTER_PORT=port, SOVRA_RAY_DASHBOARD_PORT=free_port(),
                   SOVRA_RAY_PORT=free_port())
        r = subprocess.run([str(SOVRA), "up", *ECHO], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600, check=False)
    assert r.returncode == 1
    err = " ".join(r.stderr.split())
    assert f"port {port}, which the local Ray's router needs, is already taken by another program" in err, err
    assert "SOVRA_ROUTER_PORT" in err and "Traceback" not in r.stderr + r.stdout
    assert LocalRay(tmp_path / "home").running() is None
    assert not (tmp_path / "home" / "ray" / "cluster.json").exists()


def test_a_failed_up_on_a_running_ray_removes_what_it_deployed_and_says_why(tmp_path):
    """The Ray runs (started by an earlier `up`) but serves nothing, and the router's port is taken meanwhile:
    the error is a sentence (once a 500 with Serve's traceback), and the Ray is left as it was, serving nothing."""
    home = tmp_path / "home"
    router, env = free_port(), None
    env = _env(home, SOVRA_ROUTER_PORT=router, SOVRA_RAY_DASHBOARD_PORT=free_port(), SOVRA_RAY_PORT=free_port())

    def sovra(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(SOVRA), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                              check=False)

    try:
        first = sovra("up", *ECHO)
        assert first.returncode == 0, first.stdout + first.stderr
        assert sovra("down", *ECHO[:-1]).returncode == 0  # every app removed: Serve and HAProxy stop
        local = LocalRay(home)
        rec = local.running()
        assert rec is not None
        with socket.socket() as held:
            held.bind(("127.0.0.1", router))
            held.listen()
            r = sovra("up", *ECHO)
        assert r.returncode == 1
        err = " ".join(r.stderr.split())
        assert f"port {router}, where the router would listen, is already taken" in err, err
        assert "Traceback" not in r.stderr + r.stdout
        assert local.running() == rec  # not started by this `up`: kept
        assert ServeApi(rec.dashboard, token=local.token()).apps() == {}
        again = sovra("up", *ECHO)  # the port is free again
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        LocalRay(home).stop()
    # Stopped while Serve ran: HAProxy (in a session of its own, out of the Ray's process group) went too, and its
    # folder with it; it once kept listening on the router's port after its Ray was gone.
    from sovra.infra.ray_cluster import haproxy_dir

    folder = str(haproxy_dir(home / "ray"))
    left = [p for p in Path("/proc").glob("[0-9]*/cmdline") if folder.encode() in _read(p)]
    assert not left, left
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", router))  # nothing holds the router's port any more


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
