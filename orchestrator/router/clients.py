"""How the router reaches a backend: one client per backend kind (HTTP now; Ray Serve handles in `ray_client`).

Clients turn transport failures that happen before any answer byte into RetryableError, so the dispatcher may
fail over (inside the allowed set); anything after the first streamed byte is passed to the client as is.
"""

from __future__ import annotations

import abc
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from orchestrator.router.backends import Backend
from orchestrator.router.dispatch import RetryableError
from orchestrator.router.errors import RouterError, UpstreamError


class BackendClient(abc.ABC):
    """Invoke a backend's OpenAI-compatible operations."""

    @abc.abstractmethod
    async def chat(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming chat completion."""

    @abc.abstractmethod
    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Chat completion chunks; the first is fetched before this returns, so failures before it are retryable."""

    @abc.abstractmethod
    async def embed(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        """Embeddings."""

    async def aclose(self) -> None:
        """Release pooled connections."""


class _Upstream4xx(RouterError):
    """A backend rejected the request itself: passed through, never retried elsewhere."""

    def __init__(self, status: int, body: dict[str, Any]):
        err = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(str(err.get("message", "upstream rejected the request")))
        self.status, self.type, self.code = status, err.get("type", "invalid_request_error"), err.get("code")


class HttpClient(BackendClient):
    """OpenAI-compatible HTTP backends through one pooled httpx.AsyncClient."""

    def __init__(self, client: httpx.AsyncClient | None = None, timeout_s: float = 120.0):
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=2.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128))

    async def _post(self, backend: Backend, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = await self._client.post(f"{backend.address}{path}", json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise RetryableError(f"{backend.target}: {type(exc).__name__}") from exc
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"{backend.target} timed out") from exc
        return self._json(backend, resp.status_code, resp.content)

    @staticmethod
    def _json(backend: Backend, status: int, content: bytes) -> dict[str, Any]:
        if status >= 500:
            raise RetryableError(f"{backend.target}: HTTP {status}")
        try:
            data = json.loads(content)
        except ValueError as exc:
            raise UpstreamError(f"{backend.target} answered invalid JSON") from exc
        if status >= 400:
            raise _Upstream4xx(status, data)
        return data

    async def chat(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post(backend, "/v1/chat/completions", {**body, "stream": False})

    async def embed(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post(backend, "/v1/embeddings", body)

    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        request = self._client.build_request("POST", f"{backend.address}/v1/chat/completions",
                                             json={**body, "stream": True})
        try:
            resp = await self._client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise RetryableError(f"{backend.target}: {type(exc).__name__}") from exc
        if resp.status_code >= 400:
            content = await resp.aread()
            await resp.aclose()
            self._json(backend, resp.status_code, content)
        lines = resp.aiter_lines()
        try:
            first = await _next_event(lines)
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            await resp.aclose()
            raise RetryableError(f"{backend.target}: stream broke before the first chunk") from exc
        return _rest(first, lines, resp)

    async def aclose(self) -> None:
        await self._client.aclose()


async def _next_event(lines: AsyncIterator[str]) -> dict[str, Any] | None:
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return None
        return json.loads(data)
    return None


async def _rest(first: dict[str, Any] | None, lines: AsyncIterator[str], resp: httpx.Response
                ) -> AsyncIterator[dict[str, Any]]:
    try:
        event = first
        while event is not None:
            yield event
            event = await _next_event(lines)
    finally:
        await resp.aclose()
