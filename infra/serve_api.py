"""Ray Serve's declarative REST API on a cluster's dashboard: the one way Sovra changes what a cluster serves.

Declarative deploys are what make `up` idempotent: Serve derives an application's code version from its import path
and arguments, so re-applying the same config changes nothing, and a changed replica count or autoscaling range is
applied in place to the running replicas.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from sovra.infra.ray_cluster import NODES_PATH, ClusterError, Node, alive_nodes, auth_headers

APPS_PATH = "/api/serve/applications/"


@dataclass(frozen=True)
class AppState:
    """What Serve reports about one application."""

    name: str
    status: str
    message: str
    config: Mapping[str, Any] | None
    replicas: Mapping[str, tuple[str, ...]]  # deployment -> replica states
    replica_ids: tuple[str, ...]

    @property
    def running(self) -> int:
        return sum(s == "RUNNING" for states in self.replicas.values() for s in states)


#: What to do instead of sending a Ray token in clear to a dashboard that is not loopback.
TOKEN_IN_CLEAR_FIX = ("Give the cluster an https:// dashboard address (a TLS proxy in front of Ray's dashboard), "
                      "reach it through a tunnel on 127.0.0.1, or, if the network to it is trusted, set "
                      "`insecure_dashboard: true` on the cluster in org.yaml.")


def refuse_token_in_clear(dashboard: str, token: str | None, *, insecure_http: bool = False) -> None:
    """Raise ClusterError when `token` would go over plain http to a dashboard that is not loopback
    (`infra.transport.is_loopback`), unless the org says the network is trusted (`insecure_http`)."""
    from sovra.infra.transport import TokenInClearError
    from sovra.infra.transport import refuse_token_in_clear as refuse

    if not token or insecure_http:
        return
    try:
        refuse(dashboard, what=f"the Ray token for the dashboard at {dashboard}", fix=TOKEN_IN_CLEAR_FIX)
    except TokenInClearError as exc:
        raise ClusterError(str(exc)) from None


_RAISED = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit))(?:\([\w.]*\))?: (.+)$")


def explain(text: str) -> str:
    """A dashboard's error body as one sentence: its innermost raised error when it is a Python traceback (what
    Ray answers when Serve fails to start), else the body itself, shortened."""
    if "Traceback (most recent call last)" not in text:
        return text.strip()[:2000]
    raised = [m for line in text.splitlines() if (m := _RAISED.match(line))]
    if not raised:
        return "Ray answered with a Python traceback; the dashboard's log on the head node has it in full"
    kind, message = raised[-1][1], re.sub(r"\x1b\[[0-9;]*m", "", raised[-1][2]).strip()
    return f"{kind}: {message[:600]} (the dashboard's log on the head node has the full traceback)"


class ServeApi:
    """A thin client of a cluster's dashboard: `/api/serve/applications/` (GET details, PUT the whole config,
    DELETE all) and the state API's node list. `token` comes from `infra.ray_cluster.cluster_token`; it is sent
    only over https or to loopback, unless `insecure_http` (the org's `insecure_dashboard`). https is verified
    against the CAs the standard variables name (`infra.transport.client_trust`)."""

    def __init__(self, dashboard: str, *, token: str | None, timeout_s: float = 30, insecure_http: bool = False):
        from sovra.infra.transport import client_trust

        self.dashboard = dashboard.rstrip("/")
        refuse_token_in_clear(self.dashboard, token, insecure_http=insecure_http)
        self._http = httpx.Client(base_url=self.dashboard, timeout=timeout_s, headers=auth_headers(token),
                                  verify=client_trust() if self.dashboard.startswith("https:") else True)

    def _request(self, method: str, json_body: Any = None, path: str = APPS_PATH, *, reads: int = 3,
                 pause_s: float = 0.5) -> dict[str, Any]:
        """A read answered 5xx is asked again (up to `reads` times): the dashboard answers 500 while Serve's
        controller is being replaced or shut down (it held a handle to the one that just died, as right after
        `down` removed every application), and the next read finds the new state. Writes are sent once."""
        for attempt in range(1, reads + 1):
            try:
                resp = self._http.request(method, path, json=json_body)
            except httpx.HTTPError as exc:
                raise ClusterError(f"cannot reach the Ray dashboard at {self.dashboard} ({exc}); is the cluster up?"
                                   ) from exc
            if method != "GET" or resp.status_code < 500 or attempt == reads:
                break
            time.sleep(pause_s)
        if resp.status_code in (401, 403):
            raise ClusterError(f"the Ray dashboard at {self.dashboard} refused Sovra's token "
                               f"({'none sent' if resp.status_code == 401 else 'wrong token'}); give the cluster "
                               "`auth_token_file` in org.yaml, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (the "
                               "local Ray's token is $SOVRA_HOME/ray/auth_token)")
        if resp.status_code >= 400:
            raise ClusterError(f"Ray rejected {method} {path} ({resp.status_code}): {explain(resp.text)}")
        return resp.json() if resp.content and method == "GET" else {}

    def details(self) -> dict[str, Any]:
        return self._request("GET")

    def apps(self) -> dict[str, AppState]:
        out: dict[str, AppState] = {}
        for name, app in (self.details().get("applications") or {}).items():
            replicas = {dname: tuple(r.get("state", "?") for r in (d.get("replicas") or ()))
                        for dname, d in (app.get("deployments") or {}).items()}
            ids = tuple(sorted(r.get("replica_id", "") for d in (app.get("deployments") or {}).values()
                               for r in (d.get("replicas") or ())))
            out[name] = AppState(name, app.get("status", "?"), app.get("message") or "",
                                 app.get("deployed_app_config"), replicas, ids)
        return out

    def apply(self, config: Mapping[str, Any]) -> None:
        """Replace the cluster's whole Serve config (applications left out are deleted by Serve)."""
        self._request("PUT", dict(config))

    def delete_all(self) -> None:
        self._request("DELETE")

    def alive_nodes(self) -> list[Node]:
        """The cluster's alive nodes, from the dashboard's state API (what `up` checks targets against)."""
        return alive_nodes(self._request("GET", path=NODES_PATH))

    def wait(self, done: Callable[[dict[str, AppState]], bool], *, timeout_s: float, what: str,
             progress: Callable[[dict[str, AppState]], None] = lambda _a: None, poll_s: float = 0.5
             ) -> dict[str, AppState]:
        """Poll until `done(apps)`; a failed app stops the wait with Serve's own message."""
        deadline = time.monotonic() + timeout_s
        while True:
            apps = self.apps()
            progress(apps)
            if done(apps):
                return apps
            failed = {n: a for n, a in apps.items() if a.status in ("DEPLOY_FAILED", "UNHEALTHY")}
            if failed:
                raise ClusterError("Ray Serve could not deploy " + "; ".join(
                    f"{n}: {a.status}: {a.message.strip()[-1500:]}" for n, a in sorted(failed.items())))
            if time.monotonic() > deadline:
                states = ", ".join(f"{n}={a.status}" for n, a in sorted(apps.items())) or "no applications"
                raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for {what} ({states})")
            time.sleep(poll_s)
