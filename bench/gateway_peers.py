"""The gateways `bench/gateway.py` compares, as processes: how each is configured, started, reached and stopped.

  Backends  the OpenAI-compatible servers (`bench/openai_echo.py`), one pair per HTTP stack
  Direct    the servers themselves, round-robin (the baseline)
  Sovra     `sovra up` in a temporary SOVRA_HOME, one deployment per backend; `sovra down --stop-ray`
  LiteLLM   its proxy's CLI, from a pinned release in its own venv (installed from PyPI on first use)
  Nginx     a reverse proxy in the foreground with its own prefix, one upstream per backend

Every process runs in its own session, is tied to this script's life (SIGTERM when it dies) and is stopped by
group. Each gateway serves every backend at once, so one process per gateway is measured in front of both.
"""

from __future__ import annotations

import abc
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai_echo import EchoProcess

KEY_ENV, KEY = "SOVRA_BENCH_GW_KEY", "sk-bench-backend"  # the servers' key, as org.yaml's `api_key_env` names it
SERVER_HEADERS = {"Authorization": f"Bearer {KEY}"}  # what direct and nginx callers send; Sovra and LiteLLM add it
BACKEND_KINDS = ("fastapi", "raw")  # bench/openai_echo.py's --server values, in the order reports list them
LITELLM_PIN = "litellm[proxy]==1.76.3"
# Outside the repository: a third-party venv (its packages ship sample keys and certificates) is no part of the tree.
LITELLM_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sovra-bench" / "litellm-1.76.3"
# Offline: the cost map bundled with the package (and, in later releases, every other catalog: offline mode); no
# telemetry is set in its config.
LITELLM_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true"}
NGINX_HINT = "apt-get install -y nginx-light (or nginx)"

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------------------------
# Processes: started in their own session, tied to this one's life, stopped by group
# ---------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec (it has its own session already): SIGTERM when this script dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass


def spawn(cmd: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
          ) -> subprocess.Popen:
    """`cmd` in its own session (stopped with `kill_group`), output to `log`, no stdin."""
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509  (started before any thread runs)


def kill_group(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process group `pid` leads, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def session_processes(leader: int) -> list[Any]:
    """The live processes of the session `leader` started (psutil.Process objects)."""
    import psutil

    out = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if os.getsid(proc.pid) == leader:
                out.append(proc)
        except (ProcessLookupError, PermissionError):
            continue
    return out


def _get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float, what: str, log: Path,
               headers: dict[str, str] | None = None) -> None:
    """Until GET `url` answers 200; an exited `proc` or the deadline is an error quoting `log`'s tail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if _get(url, headers, timeout=2.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    state = f"exited {proc.returncode}" if proc.poll() is not None else f"not ready in {timeout_s:g} s"
    raise RuntimeError(f"{what} {state} ({url}); log tail:\n{tail}")


# ---------------------------------------------------------------------------------------------------------------
# Backends: the servers every gateway stands in front of
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """Two OpenAI-compatible servers with one HTTP stack (`kind`), and the model name every variant asks for."""

    kind: str
    servers: tuple[EchoProcess, ...]

    @property
    def model(self) -> str:
        """The Sovra deployment's name and model, LiteLLM's model name, the payload's `model`."""
        return f"gw-{self.kind}"

    @property
    def names(self) -> tuple[str, ...]:
        """Who answers (`served-by <name>`), also their org.yaml endpoint ids."""
        return tuple(f"{self.kind}-{c}" for c in "ab"[:len(self.servers)])

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(s.url for s in self.servers)


def start_backend(kind: str) -> Backend:
    """Two servers of `kind`, each wanting the bench's key; a failure stops the one already started."""
    servers: list[EchoProcess] = []
    try:
        for c in "ab":
            servers.append(EchoProcess(name=f"{kind}-{c}", api_key_env=KEY_ENV, env={KEY_ENV: KEY}, server=kind))
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return Backend(kind, tuple(servers))


# ---------------------------------------------------------------------------------------------------------------
# Gateways
# ---------------------------------------------------------------------------------------------------------------


class Gateway(abc.ABC):
    """One variant under test: where to send a backend's requests, and which processes it runs (for RSS, CPU)."""

    name: str
    url: str
    headers: dict[str, str]

    @property
    def session(self) -> int | None:
        """The session its processes run in (they lead their own)."""
        return None

    def urls(self, backend: Backend) -> list[str]:
        """Where a measurement of `backend` sends its requests, in equal shares."""
        return [self.url]

    @abc.abstractmethod
    def processes(self) -> dict[str, list[int]]:
        """role -> pids of the gateway's own processes."""

    def stop(self) -> None:
        return None


class Direct(Gateway):
    """The servers themselves: each measurement sends half its requests to each, both at once where it can."""

    name = "direct"

    def __init__(self) -> None:
        self.url, self.headers = "", SERVER_HEADERS

    def urls(self, backend: Backend) -> list[str]:
        return list(backend.urls)

    def processes(self) -> dict[str, list[int]]:
        return {}


class Sovra(Gateway):
    """`sovra up` as README command 1 runs it, in a temporary SOVRA_HOME on free ports, one deployment per backend
    in one file (planned jointly); `sovra down --stop-ray`."""

    def __init__(self, name: str, workdir: Path, backends: list[Backend], replicas: int | None, log: Log,
                 extra_env: dict[str, str] | None = None):
        self.name, self.log = name, log
        self.dir = workdir / name
        self.dir.mkdir()
        # A short path of its own: Serve's HAProxy puts its admin socket under SOVRA_HOME, and a Unix socket's path
        # may not exceed 107 bytes.
        self.home = Path(tempfile.mkdtemp(prefix="sgw-"))
        self.deployment, self.org = self.dir / "deployments.yaml", self.dir / "org.yaml"
        self.deployment.write_text(deployments_yaml(backends))
        self.org.write_text(org_yaml(backends, replicas))
        self.replicas = replicas
        port, dashboard = free_port(), free_port()
        # Inherited SOVRA_* / RAY_SERVE_* settings would change what `up` does by default: dropped (and recorded).
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SOVRA_", "RAY_SERVE_", "RAY_ADDRESS"))}
        self.dropped = sorted(set(os.environ) - set(base))
        self.env = {**base, "SOVRA_HOME": str(self.home), "SOVRA_ROUTER_PORT": str(port),
                    "SOVRA_RAY_DASHBOARD_PORT": str(dashboard), "SOVRA_RAY_PORT": str(free_port()),
                    KEY_ENV: KEY,  # where the router runs: the local Ray inherits the environment of `up`
                    **(extra_env or {})}  # only `--before`: Serve's own proxy, the default before issue 20
        self.dashboard_port = dashboard
        self.url = f"http://127.0.0.1:{port}"
        self.headers = {}
        self.ray_pid: int | None = None
        self.up_s: float | None = None
        here = Path(sys.executable).parent / "sovra"
        self.cli = str(here) if here.exists() else (shutil.which("sovra") or "sovra")

    def command(self, *args: str) -> list[str]:
        return [self.cli, *args, str(self.deployment), "--org", str(self.org)]

    def start(self) -> None:
        log_path = self.dir / "up.log"
        self.log(f"  {self.name}: sovra up (log {log_path}) ...")
        t0 = time.perf_counter()
        proc = spawn(self.command("up"), log_path, env=self.env, cwd=self.dir)
        try:
            code = proc.wait(600)
        except subprocess.TimeoutExpired:
            code = None
        finally:  # on a timeout or Ctrl-C `up` is stopped before `down` runs; a no-op once it has exited
            kill_group(proc.pid)
            self.ray_pid = self._ray_pid()
        if code != 0:
            raise RuntimeError(f"`sovra up` failed ({code}); last lines of {log_path}:\n"
                               + log_path.read_text(errors="replace")[-3000:])
        self.up_s = round(time.perf_counter() - t0, 1)
        self.log(f"  {self.name}: up in {self.up_s} s, router {self.url}")

    def _ray_pid(self) -> int | None:
        """The `ray start` process of this home: from Sovra's record, else by its dashboard port (a record is
        written only once the node registered)."""
        try:
            return int(json.loads((self.home / "ray" / "cluster.json").read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        import psutil

        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if "start" in cmd and "--dashboard-port" in cmd and str(self.dashboard_port) in cmd:
                return proc.pid
        return None

    @property
    def session(self) -> int | None:
        return self.ray_pid

    def processes(self) -> dict[str, list[int]]:
        """Router replicas, Serve's proxy actors (ProxyActor, or HAProxyManager) and HAProxy, in this Ray's
        session (other Rays may run on the machine)."""
        if self.ray_pid is None:
            return {}
        out: dict[str, list[int]] = {}
        for proc in session_processes(self.ray_pid):
            cmd = proc.info["cmdline"] or []
            title = cmd[0] if cmd else ""
            if title.startswith("ray::ServeReplica:sovra-router:Router"):
                role = "router replica"
            elif title.startswith("ray::") and "Proxy" in title.split()[0]:
                role = title.split()[0].removeprefix("ray::").split(".")[0]  # the actor's class
            elif proc.info["name"] == "haproxy" or os.path.basename(title) == "haproxy":
                role = "haproxy"
            else:
                continue
            out.setdefault(role, []).append(proc.pid)
        return out

    def stop(self) -> None:
        if self.ray_pid is None:
            self.ray_pid = self._ray_pid()
        t0 = time.perf_counter()
        try:
            r = subprocess.run(self.command("down", "--stop-ray"), env=self.env, cwd=self.dir, capture_output=True,
                               text=True, timeout=180, stdin=subprocess.DEVNULL, check=False)
            if r.returncode != 0:
                self.log(f"  {self.name}: sovra down failed ({r.returncode}): {(r.stdout + r.stderr)[-800:]}")
        except subprocess.TimeoutExpired:
            self.log(f"  {self.name}: sovra down did not finish in 180 s")
        if self.ray_pid is not None:
            kill_group(self.ray_pid)  # a no-op when `down --stop-ray` stopped it
        from sovra.infra.ray_cluster import haproxy_dir, stop_haproxy

        stop_haproxy(haproxy_dir(self.home))  # Serve's HAProxy runs in a session of its own: never left behind
        shutil.rmtree(self.home, ignore_errors=True)
        self.log(f"  {self.name}: torn down in {time.perf_counter() - t0:.1f} s")


class Floor(Gateway):
    """The floor of a router on Ray Serve (`bench/serve_floor.py`): on the Ray a `Sovra` gateway started, behind the
    same HAProxy ingress, a replica that only forwards. Added to Serve's config next to Sovra's apps (`up` keeps
    applications it does not own); gone with that Ray."""

    name = "floor"
    APP = "bench-floor"

    def __init__(self, sovra: Sovra, backends: list[Backend], log: Log):
        from sovra.infra import serve_config as sc
        from sovra.infra.ray_cluster import LocalRay
        from sovra.infra.serve_api import ServeApi

        self.sovra, self.url, self.headers = sovra, sovra.url + "/floor", {}
        local = LocalRay(sovra.home)
        rec = local.record()
        if rec is None:
            raise RuntimeError(f"no local Ray recorded under {sovra.home}")
        api = ServeApi(rec.dashboard, token=local.token())
        current = [dict(a.config) for a in api.apps().values() if a.config and a.config.get("name") != self.APP]
        root = str(Path(__file__).resolve().parents[1])
        app = {"name": self.APP, "route_prefix": "/floor", "import_path": "bench.serve_floor:floor_app",
               "args": {"models": {b.model: list(b.urls) for b in backends}, "key": KEY},
               "runtime_env": {"env_vars": {**sc.ROUTER_SERVE_ENV, "PYTHONPATH": root}}}
        self.api, self.port = api, int(sovra.url.rsplit(":", 1)[1])
        api.apply(sc.serve_config([*current, app], host="127.0.0.1", port=self.port))
        api.wait(lambda apps: self.APP in apps and all(a.status == "RUNNING" for a in apps.values()),
                 timeout_s=300, what="the floor application to run")
        log(f"  floor: running on {sovra.name}'s Ray, {self.url}")

    def stop(self) -> None:
        """Remove the floor's app before Sovra's `down`: with an application it does not own still running,
        `down --stop-ray` leaves the Ray up (and the bench's fallback kill would leave Serve's HAProxy behind)."""
        from sovra.infra import serve_config as sc

        current = [dict(a.config) for a in self.api.apps().values() if a.config and a.config.get("name") != self.APP]
        self.api.apply(sc.serve_config(current, host="127.0.0.1", port=self.port))
        self.api.wait(lambda apps: self.APP not in apps, timeout_s=120, what="the floor application to go")

    @property
    def session(self) -> int | None:
        return None  # the Sovra gateway's session: counted there once

    def processes(self) -> dict[str, list[int]]:
        """The floor's replica, and the ingress it shares with Sovra (HAProxy and its manager)."""
        out: dict[str, list[int]] = {}
        for role, pids in self.sovra.processes().items():
            if role != "router replica":
                out[role] = pids
        if self.sovra.ray_pid is not None:
            for proc in session_processes(self.sovra.ray_pid):
                cmd = proc.info["cmdline"] or []
                if cmd and cmd[0].startswith(f"ray::ServeReplica:{self.APP}:"):
                    out.setdefault("floor replica", []).append(proc.pid)
        return out


def deployments_yaml(backends: list[Backend]) -> str:
    """One deployment per backend, each placed on that backend's two endpoints (min_targets 2; the org's endpoints
    offer each model on its own pair only); no gpu_memory_gb: per-token offerings only."""
    return "---\n".join(f"""\
apiVersion: sovra/v1
kind: Deployment
metadata: {{name: {b.model}}}
spec:
  model: {{name: {b.model}}}
  replicas: {{min: 1, max: 1}}
  residency: {{zones: [EU]}}
  placement: {{min_targets: 2}}
""" for b in backends)


def org_yaml(backends: list[Backend], router_replicas: int | None) -> str:
    """The local cluster as in examples/quickstart/org.yaml (with `router: {replicas: N}` when asked), every server
    as an `endpoints:` entry offering its backend's model only, no tenants."""
    router = f"    router: {{replicas: {router_replicas}}}\n" if router_replicas is not None else ""
    endpoints = "".join(f"""\
  - id: {name}
    provider: openai-compatible
    cloud: onprem
    region: paris
    country: FR
    zone: EU
    operator: {{name: self, jurisdiction: FR}}
    models: [{{name: {b.model}, usd_per_1k_tokens: 0}}]
    connection: {{url: "{url}", api_key_env: {KEY_ENV}}}
""" for b in backends for name, url in zip(b.names, b.urls))
    return f"""\
apiVersion: sovra/v1
kind: Org
clusters:
  - id: local
    provider: ray
    country: FR
    operator: {{name: self, jurisdiction: FR}}
    accelerators: [{{sku: cpu-local, gpus: 1, gpu_memory_gb: 2, usd_per_hour: 0.0, available: 2}}]
{router}endpoints:
{endpoints}"""


class LiteLLM(Gateway):
    """LiteLLM's proxy as its CLI starts it (uvicorn, one worker per CPU): one model name per backend, each with
    the backend's two servers as two deployments."""

    name = "litellm"

    def __init__(self, workdir: Path, backends: list[Backend], log: Log):
        exe = ensure_litellm(log)
        port = free_port()
        cfg = workdir / "litellm.yaml"
        deployments = "".join(
            f"  - model_name: {b.model}\n    litellm_params:\n      model: openai/{b.model}\n"
            f"      api_base: {url}/v1\n      api_key: os.environ/{KEY_ENV}\n" for b in backends for url in b.urls)
        cfg.write_text(f"model_list:\n{deployments}router_settings:\n  routing_strategy: simple-shuffle\n"
                       "litellm_settings:\n  telemetry: false\n")
        self.log_path = workdir / "litellm.log"
        env = {**os.environ, **LITELLM_ENV, KEY_ENV: KEY}
        env.pop("DATABASE_URL", None)
        self.proc = spawn([str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)], self.log_path,
                          env=env, cwd=workdir)
        self.url, self.headers = f"http://127.0.0.1:{port}", {}
        t0 = time.perf_counter()
        try:
            _wait_http(self.url + "/health/readiness", self.proc, 240, "LiteLLM's proxy", self.log_path)
        except BaseException:
            self.stop()
            raise
        self.ready_s = round(time.perf_counter() - t0, 1)
        log(f"  litellm: ready in {self.ready_s} s at {self.url}")

    @property
    def session(self) -> int | None:
        return self.proc.pid

    def processes(self) -> dict[str, list[int]]:
        """Its CLI's process, the uvicorn workers it spawns (one per CPU by default) and multiprocessing's tracker."""
        out: dict[str, list[int]] = {}
        for proc in session_processes(self.proc.pid):
            cmd = " ".join(proc.info["cmdline"] or [])
            role = "worker" if "spawn_main" in cmd else "resource tracker" if "resource_tracker" in cmd else "main"
            out.setdefault(role, []).append(proc.pid)
        return out

    def stop(self) -> None:
        kill_group(self.proc.pid)


def ensure_litellm(log: Log) -> Path:
    """The pinned LiteLLM proxy's CLI, in its own venv; created with pip from PyPI on first use, reused after."""
    exe, py = LITELLM_VENV / "bin" / "litellm", LITELLM_VENV / "bin" / "python"
    want = LITELLM_PIN.split("==")[1]
    if exe.exists() and litellm_version() == want:
        return exe
    log(f"  litellm: one-time install: python3 -m venv {LITELLM_VENV}; pip install '{LITELLM_PIN}' (from PyPI) ...")
    subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", LITELLM_PIN], check=True)
    if litellm_version() != want:
        raise RuntimeError(f"{LITELLM_VENV} holds litellm {litellm_version()}, not {want}")
    return exe


def litellm_version() -> str | None:
    py = LITELLM_VENV / "bin" / "python"
    if not py.exists():
        return None
    r = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                       capture_output=True, text=True, check=False)
    return r.stdout.strip() or None


class Nginx(Gateway):
    """nginx in the foreground with its own prefix, config, pid and logs: master + workers (`auto`); one upstream
    per backend, reached under `/<kind>/` (the prefix is stripped before the server sees the path)."""

    name = "nginx"

    def __init__(self, exe: str, workdir: Path, backends: list[Backend], log: Log):
        prefix = workdir / "nginx"
        prefix.mkdir()
        port = free_port()
        built = subprocess.run([exe, "-V"], capture_output=True, text=True, check=False).stderr
        temp = "".join(f"  {kind}_temp_path {prefix}/{kind}_temp;\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                                     "uwsgi", "scgi")
                       if f"--without-http_{kind}_module" not in built)
        upstreams = "".join(
            f"  upstream {b.kind} {{\n"
            + "".join(f"    server {url.removeprefix('http://')};\n" for url in b.urls)
            + "    keepalive 64;\n  }\n" for b in backends)
        locations = "".join(
            f"    location /{b.kind}/ {{\n      proxy_pass http://{b.kind}/;\n      proxy_http_version 1.1;\n"
            "      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }\n" for b in backends)
        (prefix / "nginx.conf").write_text(
            f"worker_processes auto;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
            "events { worker_connections 4096; }\n"
            f"http {{\n  access_log {prefix}/access.log;\n{temp}{upstreams}"
            f"  server {{\n    listen 127.0.0.1:{port};\n{locations}  }}\n}}\n")
        self.log_path = prefix / "stderr.log"
        self.proc = spawn([exe, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log"),
                           "-g", "daemon off;"], self.log_path)
        self.url, self.headers = f"http://127.0.0.1:{port}", SERVER_HEADERS
        try:
            for b in backends:
                _wait_http(f"{self.url}/{b.kind}/v1/models", self.proc, 30, "nginx", prefix / "error.log",
                           SERVER_HEADERS)
        except BaseException:
            self.stop()
            raise
        log(f"  nginx: ready at {self.url}")

    def urls(self, backend: Backend) -> list[str]:
        return [f"{self.url}/{backend.kind}"]

    @property
    def session(self) -> int | None:
        return self.proc.pid

    def processes(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for proc in session_processes(self.proc.pid):
            cmd = " ".join(proc.info["cmdline"] or [])
            out.setdefault("master" if "master" in cmd else "worker", []).append(proc.pid)
        return out

    def stop(self) -> None:
        kill_group(self.proc.pid)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def nginx_version(exe: str) -> str:
    return subprocess.run([exe, "-v"], capture_output=True, text=True, check=False).stderr.strip() \
        .removeprefix("nginx version: ")
