"""How the router reaches a backend: one client per backend kind (HTTP now; Ray Serve handles in `ray_client`).

Clients turn transport failures that happen before any answer byte into RetryableError, so the dispatcher may
fail over (inside the allowed set); anything after the first streamed byte is passed to the client as is.
"""

from __future__ import annotations

import abc
import asyncio
import json
import urllib.parse
import urllib.request
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

    async def health(self, backend: Backend) -> bool | None:
        """A payload-free liveness check for the prober; None when this kind of backend cannot be probed (then the
        breaker's half-open trial brings it back)."""
        return None

    async def aclose(self) -> None:
        """Release pooled connections."""


class _Upstream4xx(RouterError):
    """A backend rejected the request itself: passed through, never retried elsewhere."""

    def __init__(self, status: int, body: dict[str, Any]):
        err = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(str(err.get("message", "upstream rejected the request")))
        self.status, self.type, self.code = status, err.get("type", "invalid_request_error"), err.get("code")


# -- transports: one pooled HTTP/1.1 keep-alive client library behind the same four operations ---------------------


class _Unreachable(Exception):
    """Nothing was answered (connect failed, connection dropped before the response): safe to fail over."""


class _TimedOut(Exception):
    """The backend accepted the request but did not answer in time."""


class _Streamed(abc.ABC):
    """A response whose body is read as it arrives."""

    status: int

    @abc.abstractmethod
    async def read(self) -> bytes: ...

    @abc.abstractmethod
    def lines(self) -> AsyncIterator[str]:
        """Body lines without their line ending; transport failures surface as _Unreachable."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class _Transport(abc.ABC):
    @abc.abstractmethod
    async def post(self, url: str, content: bytes) -> tuple[int, bytes]:
        """Status and body of a JSON POST; raises _Unreachable or _TimedOut."""

    @abc.abstractmethod
    async def stream(self, url: str, content: bytes) -> _Streamed:
        """A JSON POST whose answer is streamed; raises _Unreachable before any answer."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...


_JSON = {"content-type": "application/json"}
_HTTPX_UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError)


class _HttpxTransport(_Transport):
    def __init__(self, client: httpx.AsyncClient):
        self._client = client

    async def post(self, url: str, content: bytes) -> tuple[int, bytes]:
        try:
            resp = await self._client.post(url, content=content, headers=_JSON)
        except _HTTPX_UNREACHABLE as exc:
            raise _Unreachable(type(exc).__name__) from exc
        except httpx.TimeoutException as exc:
            raise _TimedOut() from exc
        return resp.status_code, resp.content

    async def stream(self, url: str, content: bytes) -> _Streamed:
        try:
            resp = await self._client.send(self._client.build_request("POST", url, content=content, headers=_JSON),
                                           stream=True)
        except _HTTPX_UNREACHABLE as exc:
            raise _Unreachable(type(exc).__name__) from exc
        return _HttpxStreamed(resp)

    async def aclose(self) -> None:
        await self._client.aclose()


class _HttpxStreamed(_Streamed):
    def __init__(self, resp: httpx.Response):
        self._resp, self.status = resp, resp.status_code

    async def read(self) -> bytes:
        return await self._resp.aread()

    async def lines(self) -> AsyncIterator[str]:
        try:
            async for line in self._resp.aiter_lines():
                yield line
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise _Unreachable(type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self._resp.aclose()


class _AiohttpTransport(_Transport):
    """aiohttp spends several times less CPU per call than httpx (whose pool scans every connection on each
    request); on a router replica that is most of the per-request cost. The session is made on first use, on the
    event loop that serves requests."""

    def __init__(self, timeout_s: float):
        self._timeout_s = timeout_s
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxies: dict[str, str] = {}

    def _get(self):
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._loop = loop
            # Configured as the httpx client it replaces: 512 connections, 5 s keep-alive expiry (a uvicorn
            # backend's is 5 s too), httpx's TLS trust (certifi or SSL_CERT_FILE/DIR), proxy variables read once
            # (aiohttp's own trust_env would re-read them, and ~/.netrc, on every request).
            self._proxies = urllib.request.getproxies_environment()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512, limit_per_host=0, keepalive_timeout=5.0,
                                               ssl=httpx.create_ssl_context()),
                timeout=aiohttp.ClientTimeout(total=None, connect=self._timeout_s, sock_connect=2.0,
                                              sock_read=self._timeout_s),
                cookie_jar=aiohttp.DummyCookieJar())  # a backend's cookies must not follow another tenant's call
        return self._session

    def _proxy(self, url: str) -> str | None:
        if not self._proxies:
            return None
        parts = urllib.parse.urlsplit(url)
        if urllib.request.proxy_bypass_environment(parts.hostname or "", self._proxies):
            return None
        return self._proxies.get(parts.scheme) or self._proxies.get("all")

    async def post(self, url: str, content: bytes) -> tuple[int, bytes]:
        import aiohttp

        try:
            async with self._get().post(url, data=content, headers=_JSON, proxy=self._proxy(url)) as resp:
                return resp.status, await resp.read()
        except aiohttp.ConnectionTimeoutError as exc:
            raise _Unreachable(type(exc).__name__) from exc
        except TimeoutError as exc:  # aiohttp.ServerTimeoutError is one too
            raise _TimedOut() from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _Unreachable(type(exc).__name__) from exc

    async def stream(self, url: str, content: bytes) -> _Streamed:
        import aiohttp

        try:
            resp = await self._get().post(url, data=content, headers=_JSON, proxy=self._proxy(url))
        except aiohttp.ConnectionTimeoutError as exc:
            raise _Unreachable(type(exc).__name__) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _Unreachable(type(exc).__name__) from exc
        return _AiohttpStreamed(resp)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _AiohttpStreamed(_Streamed):
    def __init__(self, resp: Any):
        self._resp, self.status = resp, resp.status

    async def read(self) -> bytes:
        return await self._resp.read()

    async def lines(self) -> AsyncIterator[str]:
        import aiohttp

        pending = b""  # split on whole lines before decoding, so no UTF-8 sequence is cut; no line length limit
        try:
            async for chunk in self._resp.content.iter_any():
                *complete, pending = (pending + chunk).split(b"\n")
                for line in complete:
                    yield line.decode().rstrip("\r")
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _Unreachable(type(exc).__name__) from exc
        if pending:
            yield pending.decode().rstrip("\r")

    async def aclose(self) -> None:
        self._resp.release()


def _default_transport(timeout_s: float) -> _Transport:
    try:
        import aiohttp  # noqa: F401  (installed with ray[serve])
    except ImportError:
        return _HttpxTransport(httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=2.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128)))
    return _AiohttpTransport(timeout_s)


def _encode(body: dict[str, Any]) -> bytes:
    # exactly what httpx's `json=` sends (NaN refused), whichever transport carries it
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class HttpClient(BackendClient):
    """OpenAI-compatible HTTP backends over one pooled keep-alive client: the `httpx.AsyncClient` passed in (the
    SDK shares its own), else aiohttp where installed (it comes with ray[serve]), else a new httpx client."""

    def __init__(self, client: httpx.AsyncClient | None = None, timeout_s: float = 120.0):
        self._transport = _HttpxTransport(client) if client is not None else _default_transport(timeout_s)

    async def _post(self, backend: Backend, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            status, content = await self._transport.post(f"{backend.address}{path}", _encode(body))
        except _Unreachable as exc:
            raise RetryableError(f"{backend.target}: {exc}") from exc
        except _TimedOut as exc:
            raise UpstreamError(f"{backend.target} timed out") from exc
        return self._json(backend, status, content)

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

    async def health(self, backend: Backend) -> bool:
        """`GET /v1/models`: every OpenAI-compatible server answers it, and it carries no payload."""
        async with httpx.AsyncClient(timeout=2.0) as probe:
            return (await probe.get(f"{backend.address}/v1/models")).status_code == 200

    async def embed(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post(backend, "/v1/embeddings", body)

    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        content = _encode({**body, "stream": True})
        try:
            resp = await self._transport.stream(f"{backend.address}/v1/chat/completions", content)
        except _Unreachable as exc:
            raise RetryableError(f"{backend.target}: {exc}") from exc
        if resp.status >= 400:
            content = await resp.read()
            await resp.aclose()
            self._json(backend, resp.status, content)
        lines = resp.lines()
        try:
            first = await _next_event(lines)
        except _Unreachable as exc:
            await resp.aclose()
            raise RetryableError(f"{backend.target}: stream broke before the first chunk") from exc
        return _rest(first, lines, resp)

    async def aclose(self) -> None:
        await self._transport.aclose()


async def _next_event(lines: AsyncIterator[str]) -> dict[str, Any] | None:
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return None
        return json.loads(data)
    return None


async def _rest(first: dict[str, Any] | None, lines: AsyncIterator[str], resp: _Streamed
                ) -> AsyncIterator[dict[str, Any]]:
    try:
        event = first
        while event is not None:
            yield event
            event = await _next_event(lines)
    finally:
        await resp.aclose()
