"""Reach model replicas through Ray Serve deployment handles (backend kind "ray"; address = Serve app name)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from orchestrator.router.backends import Backend
from orchestrator.router.clients import BackendClient
from orchestrator.router.dispatch import RetryableError
from orchestrator.router.errors import BadRequest, UpstreamError


def _as_retryable(exc: BaseException, backend: Backend, when: str = "") -> RetryableError | None:
    """Ray failures that happened before an answer: a dead replica (retry, Serve picks another) or a missing app."""
    from ray import exceptions as rex
    from ray.serve import exceptions as sex

    if isinstance(exc, sex.DeploymentUnavailableError):
        return RetryableError(f"{backend.target}: app unavailable{when}", eject=True)
    if isinstance(exc, (rex.RayActorError, rex.ActorDiedError, rex.ActorUnavailableError,
                        sex.ReplicaUnavailableError)):
        return RetryableError(f"{backend.target}: replica lost{when} ({type(exc).__name__})", eject=False)
    return None


def _raise_request_error(exc: BaseException) -> None:
    """An engine refusing the request itself (e.g. embeddings from a chat model) is the caller's 400, not a 500."""
    from orchestrator.serving.engines import EngineError

    cause = getattr(exc, "cause", None)
    if isinstance(cause, EngineError):
        raise BadRequest(str(cause)) from exc


class RayClient(BackendClient):
    """One cached DeploymentHandle per Serve app."""

    def __init__(self, timeout_s: float = 120.0) -> None:
        self._handles: dict[str, Any] = {}
        self.timeout_s = timeout_s

    def _handle(self, backend: Backend):
        from ray import serve

        h = self._handles.get(backend.address)
        if h is None:
            h = self._handles[backend.address] = serve.get_deployment_handle("ModelServer", app_name=backend.address)
        return h

    async def _call(self, backend: Backend, method: str, body: dict[str, Any]) -> dict[str, Any]:
        response = getattr(self._handle(backend), method).remote(body)
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except TimeoutError as exc:  # the replica may be mid-answer: a 504-like error, never a retry elsewhere
            response.cancel()
            raise UpstreamError(f"{backend.target} did not answer within {self.timeout_s:.0f} s") from exc
        except Exception as exc:
            retry = _as_retryable(exc, backend)
            if retry is not None:
                raise retry from exc
            _raise_request_error(exc)
            raise

    async def chat(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(backend, "chat", body)

    async def health(self, backend: Backend) -> bool:
        """The replica's payload-free `health()`; raises (probe failed) when no replica answers."""
        return bool((await self._handle(backend).health.remote()).get("ok"))

    async def embed(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(backend, "embed", body)

    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        gen = self._handle(backend).options(stream=True).chat_stream.remote(body)
        try:
            first = await asyncio.wait_for(gen.__anext__(), self.timeout_s)
        except StopAsyncIteration:
            first = None
        except TimeoutError as exc:
            gen.cancel()
            raise UpstreamError(f"{backend.target} sent no first chunk within {self.timeout_s:.0f} s") from exc
        except Exception as exc:
            retry = _as_retryable(exc, backend, " before the first chunk")
            if retry is not None:
                raise retry from exc
            _raise_request_error(exc)
            raise

        async def rest():
            if first is None:
                return
            yield first
            async for c in gen:
                yield c

        return rest()
