"""Reach model replicas through Ray Serve deployment handles (backend kind "ray"; address = Serve app name).

Where the payload leaves: a handle call is first *assigned* to a replica (Serve reserves a slot on a live replica,
retrying dead ones itself), and only then is the request sent. So a call still unassigned has delivered nothing.
A Serve app whose replicas are all gone (node loss, crashes) would keep such calls waiting until Serve starts a new
replica; `ReplicaWatch` follows Serve's own replica states, and a call to an app with no running replica fails at
once as undelivered, so the dispatcher fails over inside the bound or answers 503 within about a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from orchestrator.router.backends import Backend
from orchestrator.router.clients import BackendClient
from orchestrator.router.errors import AttemptFailed, BadRequest, Failed, NotDelivered, Refused

log = logging.getLogger("sovra.router")
DEPLOYMENT = "ModelServer"


def _verdict(exc: BaseException, backend: Backend) -> AttemptFailed | BadRequest:
    """Ray failures -> the router's verdicts, in one place. Called only for failures after assignment, or for
    Serve's own refusals, which it raises before assigning."""
    from ray import exceptions as rex
    from ray.serve import exceptions as sex

    from orchestrator.serving.engines import EngineError

    if isinstance(exc, sex.DeploymentUnavailableError):
        return NotDelivered(f"{backend.target}: Serve app unavailable", down=True)
    if isinstance(exc, sex.BackPressureError):
        return Refused(f"{backend.target}: replicas' queues are full", throttled=True)
    if isinstance(getattr(exc, "cause", None), EngineError):  # the engine refused the request itself: a 400
        return BadRequest(str(exc.cause))
    if isinstance(exc, (rex.RayActorError, rex.ActorUnavailableError, sex.ReplicaUnavailableError)):
        return Failed(f"{backend.target}: replica lost while handling the request ({type(exc).__name__})")
    return Failed(f"{backend.target}: {type(exc).__name__}: {str(exc)[:300]}")


class ReplicaWatch:
    """Serve's replica states for the apps the router uses, refreshed in the background.

    `down(app)` is True only when Serve reports the app with no RUNNING replica (or not at all), never merely
    because the watch has not looked yet.
    """

    def __init__(self, status: Callable[[], Any] | None = None, interval_s: float = 0.25):
        self._status = status or _serve_status
        self.interval_s = interval_s
        self._running: dict[str, int] = {}
        self._known = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def down(self, app: str) -> bool:
        return self._known and self._running.get(app, 0) == 0

    async def refresh(self) -> None:
        running = await asyncio.to_thread(self._status)  # a blocking controller call: off the event loop
        self._running, self._known = running, True

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # keep the last view; a controller hiccup must not mark everything down
                log.debug("replica watch: %s", exc)
            await asyncio.sleep(self.interval_s)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _serve_status() -> dict[str, int]:
    """app name -> RUNNING replicas of its ModelServer, from the Serve controller."""
    from ray import serve

    out = {}
    for name, app in serve.status().applications.items():
        dep = app.deployments.get(DEPLOYMENT)
        if dep is not None:
            out[name] = int(dep.replica_states.get("RUNNING", 0))
    return out


class RayClient(BackendClient):
    """One cached DeploymentHandle per Serve app; calls fail fast, as undelivered, while an app has no replica."""

    def __init__(self, watch: ReplicaWatch | None = None, assign_check_s: float = 0.2):
        self._handles: dict[str, Any] = {}
        self.watch = watch or ReplicaWatch()
        self.assign_check_s = assign_check_s

    def known_down(self, backend: Backend) -> bool:
        return self.watch.down(backend.address)

    def _handle(self, backend: Backend):
        from ray import serve

        self.watch.start()
        h = self._handles.get(backend.address)
        if h is None:
            h = self._handles[backend.address] = serve.get_deployment_handle(DEPLOYMENT, app_name=backend.address)
        return h

    def _refuse_if_down(self, backend: Backend) -> None:
        if self.watch.down(backend.address):
            raise NotDelivered(f"{backend.target}: no running replica", down=True)

    async def _assigned(self, backend: Backend, response: Any) -> None:
        """Wait until Serve assigns the call to a replica; if meanwhile the app has no running replica, cancel it:
        it was never sent. Calls that Serve assigns in the race are delivered and left to run."""
        fetch = getattr(response, "_fetch_future_result_async", None)
        if fetch is None:  # another Ray version: no bounded wait, the dispatcher's timeout still applies
            return
        task = asyncio.ensure_future(fetch())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        while True:
            done, _ = await asyncio.wait((task,), timeout=self.assign_check_s)
            if done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # Serve refused before assigning (e.g. app unavailable)
                return
            if self.watch.down(backend.address):
                response.cancel()
                await asyncio.wait((task,), timeout=1.0)
                if task.cancelled() or task.exception() is not None:
                    raise NotDelivered(f"{backend.target}: no running replica", down=True)
                return

    async def _call(self, backend: Backend, method: str, body: dict[str, Any]) -> dict[str, Any]:
        self._refuse_if_down(backend)
        response = getattr(self._handle(backend), method).remote(body)
        try:
            await self._assigned(backend, response)
            return await response
        except asyncio.CancelledError:  # the dispatcher's timeout, or the client went away
            response.cancel()
            raise
        except AttemptFailed:
            raise
        except Exception as exc:
            raise _verdict(exc, backend) from exc

    async def chat(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(backend, "chat", body)

    async def embed(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(backend, "embed", body)

    async def health(self, backend: Backend) -> bool:
        """The replica's payload-free `health()`, which asks its engine; False at once when no replica runs."""
        if self.watch.down(backend.address):
            return False
        return bool((await self._handle(backend).health.remote()).get("ok"))

    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        self._refuse_if_down(backend)
        gen = self._handle(backend).options(stream=True).chat_stream.remote(body)
        try:
            await self._assigned(backend, gen)
            first = await anext(gen, None)
        except asyncio.CancelledError:
            gen.cancel()
            raise
        except AttemptFailed:
            raise
        except Exception as exc:
            raise _verdict(exc, backend) from exc
        return _rest(first, gen, backend)

    async def aclose(self) -> None:
        await self.watch.aclose()


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

