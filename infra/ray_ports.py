"""Every port the local Ray listens on, chosen before it starts and checked free, each with the setting that moves it.

Left to itself, Ray 2.60 takes fixed defaults that another local service may hold (8500/9500 for Serve's fallback
proxy, 8404/9101 for HAProxy's stats and metrics, 52365 for the dashboard agent, 10001 for Ray Client) and fails
deep inside Serve with a traceback when one is taken. Sovra picks every one of them: the three a person may want
to know (router, GCS, dashboard) from settings, the rest free ones, and checks them all before `ray start`, so a
taken port is a sentence naming it and the setting to change.

Where they listen: the dashboard, the router (Serve's HTTP ingress), HAProxy's internal listeners and Serve's
fallback proxy on 127.0.0.1. Ray 2.60's core gRPC servers (GCS, raylet, object manager, workers, dashboard agent,
runtime-env agent) bind every interface whatever `--node-ip-address` says: Ray has no setting for it. The local Ray
runs them with token authentication (`infra.ray_cluster`), so a peer that reaches them without the token is refused.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import ClassVar

from sovra.core.errors import SovraError

#: Ray's default range for worker processes' gRPC ports; Ray refuses to start when another of its ports is in it.
DEFAULT_WORKER_PORTS = (10002, 19999)


class PortError(SovraError):
    """A port the local Ray needs is taken or clashes with another of its ports."""


def port_free(port: int) -> bool:
    """Whether nothing listens on `port` on any address (Ray's gRPC servers bind every interface). SO_REUSEADDR,
    so a port with only closing connections (TIME_WAIT) counts as free, as it does for the servers themselves."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RayPorts:
    """The local Ray's ports. The first three come from settings; the rest are picked free by `choose`."""

    router: int
    gcs: int
    dashboard: int
    dashboard_agent_http: int
    dashboard_agent_grpc: int
    client_server: int
    node_manager: int
    object_manager: int
    metrics_export: int
    runtime_env_agent: int
    haproxy_stats: int
    haproxy_metrics: int
    serve_fallback_http: int
    serve_fallback_grpc: int
    worker_min: int = DEFAULT_WORKER_PORTS[0]
    worker_max: int = DEFAULT_WORKER_PORTS[1]

    #: The setting that moves each port a person chooses; the others are picked free at every start.
    SETTINGS: ClassVar[dict[str, str]] = {"router": "SOVRA_ROUTER_PORT (or `sovra up --port`)", "gcs": "SOVRA_RAY_PORT",
                "dashboard": "SOVRA_RAY_DASHBOARD_PORT", "worker": "SOVRA_RAY_WORKER_PORTS (e.g. 20000-20999)"}

    @classmethod
    def choose(cls, *, router: int, gcs: int, dashboard: int, workers: tuple[int, int] = DEFAULT_WORKER_PORTS,
               pick: Callable[[], int] = free_port) -> RayPorts:
        """Ports for a new local Ray: the given ones, and distinct free ones for everything else."""
        taken = {router, gcs, dashboard}
        picked: dict[str, int] = {}
        for f in fields(cls):
            if f.name in ("router", "gcs", "dashboard", "worker_min", "worker_max"):
                continue
            for _ in range(50):
                port = pick()
                if port not in taken and not workers[0] <= port <= workers[1]:
                    break
            taken.add(port)
            picked[f.name] = port
        return cls(router=router, gcs=gcs, dashboard=dashboard, worker_min=workers[0], worker_max=workers[1],
                   **picked)

    def singles(self) -> Iterator[tuple[str, int]]:
        for f in fields(self):
            if f.name not in ("worker_min", "worker_max"):
                yield f.name, getattr(self, f.name)

    def check(self, free: Callable[[int], bool] = port_free) -> None:
        """Refuse ports that clash with each other or with the worker range, or that something already holds."""
        seen: dict[int, str] = {}
        lo, hi = self.worker_min, self.worker_max
        if not 1024 <= lo <= hi <= 65535:
            raise PortError(f"the worker port range {lo}-{hi} is not a range of ports above 1023; "
                            f"set {self.SETTINGS['worker']}")
        for name, port in self.singles():
            if port in seen:
                raise PortError(f"the local Ray's {_what(name)} and {_what(seen[port])} are both set to port {port}; "
                                f"change {self._setting(name)}")
            seen[port] = name
            if lo <= port <= hi:
                raise PortError(f"the local Ray's {_what(name)} (port {port}) is inside the range Ray gives its "
                                f"workers ({lo}-{hi}); change {self._setting(name)}, or move the range with "
                                f"{self.SETTINGS['worker']}")
        for name, port in self.singles():
            if not free(port):
                raise PortError(f"port {port}, which the local Ray's {_what(name)} needs, is already taken by another "
                                f"program on this machine; {self._fix(name)}")

    def _setting(self, name: str) -> str:
        return self.SETTINGS.get(name, "nothing: it is picked free at the next start")

    def _fix(self, name: str) -> str:
        if name in self.SETTINGS:
            return f"stop that program or set {self.SETTINGS[name]} to a free port"
        return "run `sovra up` again (a free one is picked at each start)"

    def start_args(self) -> list[str]:
        """`ray start` flags for every port Ray itself opens."""
        return ["--port", str(self.gcs), "--dashboard-port", str(self.dashboard),
                "--dashboard-agent-listen-port", str(self.dashboard_agent_http),
                "--dashboard-agent-grpc-port", str(self.dashboard_agent_grpc),
                "--ray-client-server-port", str(self.client_server),
                "--node-manager-port", str(self.node_manager), "--object-manager-port", str(self.object_manager),
                "--metrics-export-port", str(self.metrics_export),
                "--runtime-env-agent-port", str(self.runtime_env_agent),
                "--min-worker-port", str(self.worker_min), "--max-worker-port", str(self.worker_max)]

    def serve_env(self) -> dict[str, str]:
        """Serve's own listeners, which it reads from the environment of `ray start`."""
        return {"RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(self.serve_fallback_http),
                "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(self.serve_fallback_grpc),
                "RAY_SERVE_HAPROXY_STATS_PORT": str(self.haproxy_stats),
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(self.haproxy_metrics)}


def parse_range(value: str, setting: str) -> tuple[int, int]:
    """`lo-hi` from a setting, or a sentence saying what is wrong."""
    try:
        lo, hi = (int(x) for x in value.split("-", 1))
    except ValueError:
        raise PortError(f"{setting}={value!r} is not a port range like 20000-20999") from None
    return lo, hi


def _what(name: str) -> str:
    return {"router": "router", "gcs": "GCS", "dashboard": "dashboard",
            "dashboard_agent_http": "dashboard agent (HTTP)", "dashboard_agent_grpc": "dashboard agent (gRPC)",
            "client_server": "Ray Client server", "node_manager": "node manager",
            "object_manager": "object manager", "metrics_export": "metrics exporter",
            "runtime_env_agent": "runtime-env agent", "haproxy_stats": "HAProxy stats listener",
            "haproxy_metrics": "HAProxy metrics listener", "serve_fallback_http": "Serve fallback proxy (HTTP)",
            "serve_fallback_grpc": "Serve fallback proxy (gRPC)"}[name]
