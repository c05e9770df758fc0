"""Reach model replicas through Ray Serve deployment handles, by value (backend kind "ray"; address = Serve app
name), or over Serve's HTTP ingress where the backend gives a `url` (`infra.serve_config.ServeHttp`: the replicas'
own HTTP servers behind Serve's HAProxy, which cost the router less than a handle call).

Where the payload leaves: a handle call is first *assigned* to a replica (Serve reserves a slot on a live replica,
retrying dead ones itself), and only then is the request sent. So a call still unassigned has delivered nothing.
A Serve app whose replicas are all gone (node loss, crashes) would keep such calls waiting until Serve starts a new
replica. A call still unassigned after `assign_check_s` makes the client ask Serve's own replica states
(`ReplicaWatch`); with no running replica the pending assignment is cancelled — the payload never left — and the
dispatcher fails over inside the bound or answers 503 within about a second. Later calls to that app fail at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from sovra.core.backends import Backend
from sovra.providers.clients import BackendClient
from sovra.core.api_errors import AttemptFailed, BadRequest, Failed, NotDelivered, Refused

log = logging.getLogger("sovra.router")
DEPLOYMENT = "ModelServer"


def _verdict(exc: BaseException, backend: Backend) -> AttemptFailed | BadRequest:
    """Ray failures -> the router's verdicts, in one place. Called only for failures after assignment, or for
    Serve's own refusals, which it raises before assigning."""
    from ray import exceptions as rex
    from ray.serve import exceptions as sex

    from sovra.core.errors import EngineError

    if isinstance(exc, sex.DeploymentUnavailableError):
        return NotDelivered(f"{backend.target}: Serve app unavailable", down=True)
    if isinstance(exc, sex.BackPressureError):
        return Refused(f"{backend.target}: replicas' queues are full", throttled=True)
    # The engine refused the request itself: a 400. Serve raises it wrapped (a RayTaskError that is also an
    # EngineError, the engine's own in `cause`) or, for some by-value failures, as itself.
    cause = getattr(exc, "cause", exc)
    if isinstance(cause, EngineError):
        return BadRequest(str(cause))
    # The dispatcher names the target in front of these; gRPC's own text (a debug dump) is not for people.
    if isinstance(exc, (rex.RayActorError, rex.ActorUnavailableError, sex.ReplicaUnavailableError)):
        return Failed(f"replica lost while handling the request ({type(exc).__name__})")
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):  # grpc.aio.AioRpcError: the by-value call itself failed
        return Failed(f"the by-value call to the replica failed ({getattr(code(), 'name', code())}: "
                      f"{str(details())[:200]})")
    return Failed(f"{type(exc).__name__}: {str(exc)[:300]}")


class ReplicaWatch:
    """Serve's replica states for the apps the router uses, fetched on demand (one fetch at a time).

    Nothing polls while every call is assigned promptly: the view is refreshed only when a call has waited for a
    replica, when a probe asks, when /readyz asks, or, behind calls over HTTP (which have no assignment to wait
    on), in the background when it is older than `behind_s` (`nudge`). A "down" view older than `trust_s` is not
    believed, so a stale view can delay a send but never refuse one to an app that has recovered.
    """

    def __init__(self, status: Callable[[], Any] | None = None, *, trust_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self._status = status or _serve_status
        self.trust_s = trust_s
        self._clock = clock
        self._running: dict[str, int] = {}
        self._at: float | None = None
        self._refreshing: asyncio.Future | None = None

    def down(self, app: str) -> bool:
        """Serve reported, within `trust_s`, no RUNNING replica of `app` (or no such app)."""
        return (self._at is not None and self._clock() - self._at <= self.trust_s
                and self._running.get(app, 0) == 0)

    def nudge(self, behind_s: float) -> None:
        """Start a refresh in the background when the view is older than `behind_s`; never waits for it."""
        if self._refreshing is None and (self._at is None or self._clock() - self._at > behind_s):
            self._refreshing = asyncio.ensure_future(self._refresh())

    async def fresh(self, max_age_s: float) -> None:
        """Make the view at most `max_age_s` old; concurrent callers share one fetch."""
        if self._at is not None and self._clock() - self._at <= max_age_s:
            return
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._refresh())
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        try:
            self._running = await asyncio.to_thread(self._status)  # a blocking controller call: off the loop
            self._at = self._clock()
        except Exception as exc:  # keep the last view; a controller hiccup must not mark everything down
            log.debug("replica watch: %s", exc)
        finally:
            self._refreshing = None


def _serve_status() -> dict[str, int]:
    """app name -> RUNNING replicas of its ModelServer, from the Serve controller."""
    from ray import serve

    out = {}
    for name, app in serve.status().applications.items():
        dep = app.deployments.get(DEPLOYMENT)
        if dep is not None:
            out[name] = int(dep.replica_states.get("RUNNING", 0))
    return out


class _AssignmentGuard:
    """Watches one handle call until Serve assigns it to a replica; if it is still unassigned after `check_s` and
    Serve reports no running replica, it cancels the assignment. A successful cancel of the pending assignment is
    proof the payload never left: `undelivered` is then True. One timer per call, nothing else while it is
    assigned promptly (the usual case)."""

    __slots__ = ("_client", "_app", "_future", "_timer", "_task", "undelivered")

    def __init__(self, client: RayClient, app: str, response: Any):
        self._client, self._app, self.undelivered = client, app, False
        self._future = getattr(response, "_replica_result_future", None)  # assigned when done (Ray >= 2.4x)
        self._task: asyncio.Task | None = None
        self._timer = (asyncio.get_running_loop().call_later(client.assign_check_s, self._fire)
                       if self._future is not None else None)

    def _fire(self) -> None:
        if self._future is None or self._future.done():
            return
        self._task = asyncio.ensure_future(self._check())

    async def _check(self) -> None:
        watch = self._client.watch
        await watch.fresh(self._client.assign_check_s)
        if self._future.done():
            return
        if watch.down(self._app):
            self.undelivered = self._future.cancel()  # False: Serve assigned it meanwhile; it runs on
            return
        self._timer = asyncio.get_running_loop().call_later(self._client.assign_check_s, self._fire)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()


def _cancelled_by_us() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class RayClient(BackendClient):
    """One cached DeploymentHandle per Serve app; calls fail fast, as undelivered, while an app has no replica.

    A backend with a `url` param is called over HTTP instead (`ModelHttpClient`, with the replica key). Serve's
    replica states, kept at most about `http_watch_s` old behind such calls (fetched in the background, one call
    at a time), refuse it before sending while its app has no running replica. What HAProxy took
    cannot be proven undelivered (it answers 500 both for "no server" and for a server lost mid-request), so a
    failure there is a 502 that is not resent; the breaker then ejects the backend."""

    gen_ai_system = "ray_serve"

    def __init__(self, watch: ReplicaWatch | None = None, assign_check_s: float = 0.2, http_watch_s: float = 0.5):
        self._handles: dict[str, Any] = {}
        self._http: BackendClient | None = None
        self.watch = watch or ReplicaWatch()
        self.assign_check_s = assign_check_s
        self.http_watch_s = http_watch_s

    def _over_http(self, backend: Backend) -> BackendClient | None:
        if "url" not in backend.params:
            return None
        self.watch.nudge(self.http_watch_s)
        if self._http is None:
            from sovra.providers.onprem.model_http_client import ModelHttpClient

            self._http = ModelHttpClient()
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    def known_down(self, backend: Backend) -> bool:
        return self.watch.down(backend.address)

    async def refresh(self) -> None:
        await self.watch.fresh(self.watch.trust_s)

    def _handle(self, backend: Backend):
        from ray import serve

        h = self._handles.get(backend.address)
        if h is None:
            # By value: Serve sends the call to the replica it assigned over that replica's own gRPC server (Serve's
            # inter-deployment transport, Ray's token and TLS applied) instead of as a Ray actor task through the
            # object store. Same assignment, same replica, same failures (a lost replica is ActorUnavailableError);
            # it costs the replica about 40 % less CPU per call (bench/results/router.md, default mode).
            from ray.exceptions import TaskCancelledError

            try:
                h = serve.get_deployment_handle(DEPLOYMENT, app_name=backend.address).options(_by_reference=False)
            except TaskCancelledError:  # Serve cancelled this request (its client left) while asking the
                raise asyncio.CancelledError from None  # controller: a cancellation, not a router failure (500)
            self._handles[backend.address] = h
        return h

    def _refuse_if_down(self, backend: Backend) -> None:
        if self.watch.down(backend.address):
            raise NotDelivered(f"{backend.target}: no running replica", down=True)

    @staticmethod
    def _failure(exc: BaseException, backend: Backend, guard: _AssignmentGuard, response: Any) -> BaseException:
        """What a failed handle call raises: undelivered when the guard cancelled its assignment; a cancellation of
        our own (timeout, client gone) cancels the call and stays a cancellation; anything else is classified."""
        if guard.undelivered and not _cancelled_by_us():
            return NotDelivered(f"{backend.target}: no running replica; the request was never sent", down=True)
        if isinstance(exc, asyncio.CancelledError):
            response.cancel()
            return exc
        return exc if isinstance(exc, AttemptFailed) else _verdict(exc, backend)

    async def _call(self, backend: Backend, method: str, body: dict[str, Any]) -> dict[str, Any]:
        self._refuse_if_down(backend)
        response = getattr(self._handle(backend), method).remote(body)
        guard = _AssignmentGuard(self, backend.address, response)
        try:
            return await response
        except (asyncio.CancelledError, Exception) as exc:
            raise self._failure(exc, backend, guard, response) from exc
        finally:
            guard.disarm()

    async def chat(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        if http := self._over_http(backend):
            self._refuse_if_down(backend)
            return await http.chat(backend, body)
        return await self._call(backend, "chat", body)

    async def embed(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        if http := self._over_http(backend):
            self._refuse_if_down(backend)
            return await http.embed(backend, body)
        return await self._call(backend, "embed", body)

    async def health(self, backend: Backend) -> bool:
        """The replica's payload-free health (`health()`, or `/healthz` over HTTP), which asks its engine; False
        at once when no replica runs."""
        await self.watch.fresh(self.watch.trust_s)
        if self.watch.down(backend.address):
            return False
        if http := self._over_http(backend):
            return bool(await http.health(backend))
        return bool((await self._handle(backend).health.remote()).get("ok"))

    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        self._refuse_if_down(backend)
        if http := self._over_http(backend):
            return await http.chat_stream(backend, body)
        gen = self._handle(backend).options(stream=True).chat_stream.remote(body)
        guard = _AssignmentGuard(self, backend.address, gen)
        try:
            first = await anext(gen, None)
        except (asyncio.CancelledError, Exception) as exc:
            raise self._failure(exc, backend, guard, gen) from exc
        finally:
            guard.disarm()
        return _rest(first, gen, backend)


async def _rest(first: dict[str, Any] | None, gen: Any, backend: Backend) -> AsyncIterator[dict[str, Any]]:
    """The rest of a Ray stream; failures after the first chunk are `Failed` (the dispatcher bounds idle time)."""
    finished = False
    try:
        if first is None:
            finished = True
            return
        yield first
        try:
            async for chunk in gen:
                yield chunk
        except Exception as exc:
            raise _verdict(exc, backend) from exc
        finished = True
    finally:
        if not finished:
            gen.cancel()

