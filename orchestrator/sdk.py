"""The routing SDK: sync and async clients with `residency=`, streaming iterators and typed errors.

`mode="direct"` fetches the routing table from the router (`GET /v1/routes`, already narrowed to the caller's
tenant) and calls backends directly through the same residency gate, ladder, policies and failover as the router.
It reaches every backend kind whose adapter can be called from outside the cluster (OpenAI-compatible servers and
the cloud offerings, with the caller's own credentials from each SDK's standard chain); Ray replicas are reached
only through the router, and `unreachable` lists what direct mode skips. The table is re-fetched after
`routes_ttl_s`, so a tenant's narrowed residency (or a removed backend) takes effect without a restart.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from orchestrator.spec.common import Residency

__all__ = [
    "Answer",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "NoAllowedBackendError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "SovraAPIError",
]


def _direct_kind(kind: str) -> bool:
    """Can the SDK call this kind of backend itself, from outside the cluster? (the adapter says)"""
    from providers import base

    return base.get(kind).direct

class SovraAPIError(Exception):
    """An error answered by the router (or raised client-side in direct mode), with status and code."""

    def __init__(self, message: str, *, status: int, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


class BadRequestError(SovraAPIError): ...
class AuthenticationError(SovraAPIError): ...
class PermissionDeniedError(SovraAPIError): ...
class NotFoundError(SovraAPIError): ...
class RateLimitError(SovraAPIError): ...
class NoAllowedBackendError(SovraAPIError): ...


_BY_STATUS = {400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
              429: RateLimitError, 503: NoAllowedBackendError}


def _raise_for(status: int, body: Any) -> None:
    err = body.get("error", {}) if isinstance(body, dict) else {}
    cls = _BY_STATUS.get(status, SovraAPIError)
    raise cls(str(err.get("message", f"HTTP {status}")), status=status, code=err.get("code"))


@dataclass(frozen=True)
class Answer:
    """A response body plus where it was processed."""

    data: dict[str, Any]
    target: str
    zone: str

    @property
    def text(self) -> str:
        """The first choice's message content (chat)."""
        return self.data["choices"][0]["message"]["content"]


def _residency_header(residency: str | Sequence[str] | None) -> dict[str, str]:
    if residency is None:
        return {}
    return {"X-Sovra-Residency": residency if isinstance(residency, str) else ",".join(residency)}


class AsyncClient:
    """Async client. `mode="proxy"` (default) goes through the router; `mode="direct"` skips the proxy hop."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 residency: str | Sequence[str] | None = None, mode: Literal["proxy", "direct"] = "proxy",
                 timeout_s: float = 120.0, http: httpx.AsyncClient | None = None, routes_ttl_s: float = 30.0):
        self._base = base_url.rstrip("/")
        self._headers = {**({"Authorization": f"Bearer {api_key}"} if api_key else {}), **_residency_header(residency)}
        self._residency = residency
        self._mode = mode
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0))
        self._direct = None  # (dispatcher, gate, clients), built on first use, refreshed after routes_ttl_s
        self._direct_at = 0.0
        self._routes_ttl_s = routes_ttl_s
        self._direct_lock = asyncio.Lock()  # concurrent calls fetch the routing table once
        #: backends of the tenant's table that direct mode cannot call ("deployment/target (kind)")
        self.unreachable: tuple[str, ...] = ()

    async def chat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> Answer:
        body = {"model": model, "messages": messages, **params, "stream": False}
        if self._mode == "direct":
            return await self._direct_call(model, lambda c, b: c.chat(b, body))
        return await self._post("/v1/chat/completions", body)

    async def embed(self, model: str, input: str | list[str], **params: Any) -> Answer:
        body = {"model": model, "input": input, **params}
        if self._mode == "direct":
            return await self._direct_call(model, lambda c, b: c.embed(b, body))
        return await self._post("/v1/embeddings", body)

    async def chat_stream(self, model: str, messages: list[dict[str, Any]], **params: Any
                          ) -> AsyncIterator[dict[str, Any]]:
        """Chunks as dicts; raises a typed error before the first chunk if the request is refused."""
        body = {"model": model, "messages": messages, **params, "stream": True}
        if self._mode == "direct":
            answer = await self._direct_call(model, lambda c, b: c.chat_stream(b, body), wrap=False)
            async for chunk in answer:
                yield chunk
            return
        async with self._http.stream("POST", self._base + "/v1/chat/completions", json=body,
                                     headers=self._headers) as resp:
            if resp.status_code >= 400:
                _raise_for(resp.status_code, json.loads(await resp.aread()))
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        _raise_for(502, event)
                    yield event

    async def models(self) -> list[str]:
        resp = await self._http.get(self._base + "/v1/models", headers=self._headers)
        if resp.status_code >= 400:
            _raise_for(resp.status_code, resp.json())
        return [m["id"] for m in resp.json()["data"]]

    async def _post(self, path: str, body: dict[str, Any]) -> Answer:
        resp = await self._http.post(self._base + path, json=body, headers=self._headers)
        data = resp.json()
        if resp.status_code >= 400:
            _raise_for(resp.status_code, data)
        return Answer(data, resp.headers.get("X-Sovra-Target", ""), resp.headers.get("X-Sovra-Zone", ""))

    async def _direct_call(self, model: str, op, wrap: bool = True):
        from orchestrator.router.errors import RouterError

        try:
            dispatcher, gate, clients = await self._routing()
            route = self._direct_route(dispatcher, model)
            call = (lambda b: op(clients[b.kind], b))
            if wrap:
                result, backend = await dispatcher.send(route, gate, call)
            else:
                result, backend = await dispatcher.send_stream(route, gate, call)
        except RouterError as exc:
            raise _BY_STATUS.get(exc.status, SovraAPIError)(exc.message, status=exc.status, code=exc.code) from None
        return Answer(result, backend.target, backend.zone) if wrap else result

    def _direct_route(self, dispatcher, model: str):
        from orchestrator.router.errors import ModelNotFound, NoAllowedBackend

        try:
            return dispatcher.table.resolve(model)
        except ModelNotFound:
            skipped = [u for u in self.unreachable if u.startswith(f"{model}/")]
            if skipped:
                raise NoAllowedBackend(
                    f"direct mode cannot reach any backend of {model!r}: {', '.join(skipped)} are reached only "
                    "through the router; use mode='proxy'") from None
            raise

    async def _routing(self):
        loop = asyncio.get_running_loop()
        if self._direct is None or loop.time() - self._direct_at > self._routes_ttl_s:
            async with self._direct_lock:
                if self._direct is None or loop.time() - self._direct_at > self._routes_ttl_s:
                    fresh = await self._fetch_routing()
                    if self._direct is not None:  # keep what was learnt (breakers, load) across refreshes
                        self._direct[0].table = fresh[0].table
                        self._direct = (self._direct[0], fresh[1], self._direct[2])
                    else:
                        self._direct = fresh
                    self._direct_at = loop.time()
        return self._direct

    async def _fetch_routing(self):
        """The tenant's routing table from `/v1/routes` (already narrowed to what it may reach), keeping the
        backends this process can call itself; the rest are listed in `unreachable`."""
        from orchestrator.router.backends import Backend, RoutingTable
        from orchestrator.router.clients import ClientSet, HttpClient
        from orchestrator.router.dispatch import Dispatcher
        from orchestrator.router.gate import RequestResidency

        resp = await self._http.get(self._base + "/v1/routes", headers=self._headers)
        data = resp.json()
        if resp.status_code >= 400:
            _raise_for(resp.status_code, data)
        every = [Backend.from_wire(b) for d in data["deployments"].values() for b in d["backends"]]
        backends = [b for b in every if _direct_kind(b.kind)]
        self.unreachable = tuple(sorted(f"{b.deployment}/{b.target} ({b.kind})" for b in every
                                        if not _direct_kind(b.kind)))
        header = _residency_header(self._residency).get("X-Sovra-Residency")
        gate = RequestResidency.build(Residency.model_validate(data["residency"]), header)
        return (Dispatcher(RoutingTable.of(backends)), gate,
                ClientSet({"openai-compatible": HttpClient(self._http)}))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Client:
    """Blocking client with the same methods as AsyncClient (runs a private event loop)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        self._async = self._loop.run_until_complete(self._make(base_url, kwargs))

    @staticmethod
    async def _make(base_url: str, kwargs: dict[str, Any]) -> AsyncClient:
        return AsyncClient(base_url, **kwargs)

    def chat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> Answer:
        return self._loop.run_until_complete(self._async.chat(model, messages, **params))

    def embed(self, model: str, input: str | list[str], **params: Any) -> Answer:
        return self._loop.run_until_complete(self._async.embed(model, input, **params))

    def models(self) -> list[str]:
        return self._loop.run_until_complete(self._async.models())

    def chat_stream(self, model: str, messages: list[dict[str, Any]], **params: Any) -> Iterator[dict[str, Any]]:
        agen = self._async.chat_stream(model, messages, **params)
        while True:
            try:
                yield self._loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        self._loop.run_until_complete(self._async.aclose())
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
