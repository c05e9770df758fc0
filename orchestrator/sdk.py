"""The routing SDK: sync and async clients with `residency=`, streaming iterators and typed errors.

`mode="direct"` fetches the routing table from the router (`GET /v1/routes`, already narrowed to the caller's
tenant) and calls backends directly through the same residency gate, ladder, policies and failover as the router.
It reaches every backend kind whose adapter can be called from outside the cluster (OpenAI-compatible servers and
the cloud offerings, with the caller's own credentials from each SDK's standard chain); Ray replicas are reached
only through the router, and `unreachable` lists what direct mode skips, and why. The table is re-fetched after
`routes_ttl_s`, so a tenant's narrowed residency (or a removed backend) takes effect without a restart.

Whatever answers at `base_url` writes that table, so it never chooses where this app's payloads and credentials
go: direct mode calls only hosts the app allows (`direct_hosts`), sends a bearer key only from the variable the app
names for that target or host (`direct_keys`; a table's `api_key_env` is never read), keeps only the params each
kind's client needs, and needs https for a router that is not on this machine. After each call it reports the
attempts to the router (`POST /v1/audit/report`), which writes them into its audit trail under the key's tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from sovra.core.spec.common import Residency

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


log = logging.getLogger("sovra.sdk")
#: How long the report of a direct call may take before it is given up (logged, never raised).
REPORT_TIMEOUT_S = 10.0


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


def _loopback(host: str) -> bool:
    from sovra.infra.transport import is_loopback  # Sovra's one rule: decided from the address as written

    return is_loopback(host)


def _check_base_url(base_url: str, *, keyed: bool, direct: bool, insecure_http: bool) -> None:
    """Refuse what would hand a network the key or the routing table: plain http to a host not on this machine."""
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https"):
        raise ValueError(f"base_url {base_url!r}: use https:// (or http:// to this machine)")
    if url.scheme == "https" or _loopback(url.host):
        return
    if direct:
        raise ValueError(f"direct mode takes its routing table (where payloads go) from base_url, so it needs "
                         f"https:// for a router that is not on this machine ({url.host}), not {base_url!r}")
    if keyed and not insecure_http:
        raise ValueError(f"{base_url!r} would carry the API key in clear to {url.host}: use https://, or pass "
                         "insecure_http=True if the network to the router is trusted")


def _trust() -> Any:
    """How https servers are verified: the CAs the standard variables name (a company CA in SSL_CERT_FILE or
    REQUESTS_CA_BUNDLE), else certifi's (`infra.transport.client_trust`)."""
    from sovra.infra.transport import client_trust

    return client_trust()


def _host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """`host` is one of `allowed`: an exact name (`nim.paris.internal`, `127.0.0.1`) or `*.suffix`."""
    host = host.lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower().rstrip(".")
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


class AsyncClient:
    """Async client. `mode="proxy"` (default) goes through the router; `mode="direct"` skips the proxy hop.

    Direct mode calls only backends whose host is in `direct_hosts` (exact names or `*.suffix`; by default none,
    so each must be allowed by the app), and sends an OpenAI-compatible backend the bearer key held in the variable
    `direct_keys` names for its target id or host (none otherwise). Nothing keyed goes over plain http to a host
    that is not this machine — the router in proxy mode, a backend in direct mode — unless `insecure_http=True`;
    in direct mode the router itself always needs https there, since its table decides where payloads go.
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 residency: str | Sequence[str] | None = None, mode: Literal["proxy", "direct"] = "proxy",
                 timeout_s: float = 120.0, http: httpx.AsyncClient | None = None, routes_ttl_s: float = 30.0,
                 direct_hosts: Sequence[str] = (), direct_keys: Mapping[str, str] | None = None,
                 insecure_http: bool = False):
        _check_base_url(base_url, keyed=bool(api_key), direct=mode == "direct", insecure_http=insecure_http)
        if isinstance(direct_hosts, str):
            raise TypeError("direct_hosts is a list of host names, e.g. ['nim.paris.internal']")
        self._direct_hosts = tuple(direct_hosts)
        self._direct_keys = dict(direct_keys or {})
        self._insecure_http = insecure_http
        self._base = base_url.rstrip("/")
        self._headers = {**({"Authorization": f"Bearer {api_key}"} if api_key else {}), **_residency_header(residency)}
        self._residency = residency
        self._mode = mode
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0), verify=_trust())
        self._direct = None  # (dispatcher, gate, clients), built on first use, refreshed after routes_ttl_s
        self._direct_at = 0.0
        self._routes_ttl_s = routes_ttl_s
        self._direct_lock = asyncio.Lock()  # concurrent calls fetch the routing table once
        #: backends of the tenant's table that direct mode does not call, and why ("deployment/target (kind): why")
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
            try:
                async for chunk in answer:
                    yield chunk
            finally:
                await answer.aclose()  # ends the backend stream and sends its report, even if the app stopped early
            return
        async with self._http.stream("POST", self._base + "/v1/chat/completions", json=body,
                                     headers=self._headers) as resp:
            if resp.status_code >= 400:
                _raise_for(resp.status_code, json.loads(await resp.aread()))
            from sovra.providers.clients import sse_lines
            from sovra.core.api_errors import Failed

            try:
                async for line in sse_lines(resp.aiter_bytes()):  # bounded: an endless line is a broken stream
                    if line.startswith("data:"):
                        data = line[5:].strip()
                        if data == "[DONE]":
                            return
                        event = json.loads(data)
                        if "error" in event:
                            _raise_for(502, event)
                        yield event
            except Failed as exc:
                raise SovraAPIError(f"the router's stream broke: {exc}", status=502,
                                    code="stream_interrupted") from None

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
        from sovra.core.api_errors import RouterError

        try:
            dispatcher, gate, clients = await self._routing()
            route = self._direct_route(dispatcher, model)
        except RouterError as exc:  # nothing was sent anywhere: nothing to report
            raise _typed(exc) from None
        attempts: list[dict[str, str]] = []
        report = _Report(self, model, attempts)
        call = (lambda b: op(clients[b.kind], b))
        observe = (lambda b, outcome: attempts.append({"target": b.target, "outcome": outcome}))
        try:
            if wrap:
                result, backend = await dispatcher.send(route, gate, call, observe)
            else:
                result, backend = await dispatcher.send_stream(route, gate, call, observe)
        except RouterError as exc:
            await report.send(exc.status, exc.code or exc.type)
            raise _typed(exc) from None
        if not wrap:
            return _reported_stream(result, report)
        await report.send(200, "ok", result.get("usage") if isinstance(result, dict) else None)
        return Answer(result, backend.target, backend.zone)

    async def _report(self, body: dict[str, Any]) -> None:
        """Post one direct call's attempts to the router's audit trail. Never raises: the call already happened,
        and raising would invite the app to send the payload again; a refused or lost report is logged."""
        try:
            resp = await self._http.post(self._base + "/v1/audit/report", json=body, headers=self._headers,
                                         timeout=REPORT_TIMEOUT_S)
        except httpx.HTTPError as exc:
            log.warning("direct-mode request %s was not recorded in the router's audit trail: %s",
                        body["request_id"], exc)
            return
        if resp.status_code >= 400:
            log.warning("the router refused the audit report of direct-mode request %s: HTTP %s %s",
                        body["request_id"], resp.status_code, resp.text[:500])

    def _direct_route(self, dispatcher, model: str):
        from sovra.core.api_errors import ModelNotFound, NoAllowedBackend

        try:
            return dispatcher.table.resolve(model)
        except ModelNotFound:
            skipped = [u for u in self.unreachable if u.startswith(f"{model}/")]
            if skipped:
                raise NoAllowedBackend(
                    f"direct mode cannot reach any backend of {model!r}: {'; '.join(skipped)}. Use mode='proxy', "
                    "or allow a backend's host with direct_hosts=[...] (nothing is allowed unless the app says "
                    "so)") from None
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
        backends this process can call itself and the app allows; the rest are listed in `unreachable`."""
        from sovra.core.backends import RoutingTable
        from sovra.providers.clients import ClientSet, HttpClient
        from sovra.orchestrator.router.dispatch import Dispatcher
        from sovra.orchestrator.router.gate import RequestResidency

        resp = await self._http.get(self._base + "/v1/routes", headers=self._headers)
        data = resp.json()
        if resp.status_code >= 400:
            _raise_for(resp.status_code, data)
        backends, skipped = [], []
        for name, d in data["deployments"].items():
            for raw in d["backends"]:
                backend, why = self._callable(raw)
                if backend is not None:
                    backends.append(backend)
                else:
                    skipped.append(f"{raw.get('deployment', name)}/{raw.get('target')} ({raw.get('kind')}): {why}")
            skipped += [f"{name}/{p.get('target')} ({p.get('kind')}): reached only through the router"
                        for p in d.get("proxy_only", ())]
        self.unreachable = tuple(sorted(skipped))
        header = _residency_header(self._residency).get("X-Sovra-Residency")
        gate = RequestResidency.build(Residency.model_validate(data["residency"]), header)
        return (Dispatcher(RoutingTable.of(backends)), gate,
                ClientSet({"openai-compatible": HttpClient(self._http)}))

    def _callable(self, raw: Mapping[str, Any]):
        """(the backend as direct mode calls it, None) or (None, why it is skipped). Only the app's settings decide
        the host and the key: the table's params are cut to what the kind's client needs, and the bearer key's
        variable is the one `direct_keys` names for this target or host."""
        from sovra.core.backends import Backend
        from sovra.providers import base

        backend = Backend.from_wire(raw)
        provider = base.get(backend.kind)
        if not provider.direct:
            return None, "reached only through the router"
        backend = base.for_tenant(backend)  # drops any `api_key_env`, profile or user a table may carry
        try:
            url = httpx.URL(provider.direct_url(backend) or "")
        except httpx.InvalidURL:
            url = httpx.URL("")
        host = url.host
        if not host or url.scheme not in ("http", "https"):
            return None, "its address cannot be told from the table"
        if not _host_allowed(host, self._direct_hosts):
            return None, (f"host {host} is not in direct_hosts (allowed: {', '.join(self._direct_hosts) or 'none'});"
                          " the app must allow every host it sends payloads to")
        if url.scheme != "https" and not _loopback(host) and not self._insecure_http:
            return None, (f"plain http to {host} would carry the payload and key in clear; use https, or pass "
                          "insecure_http=True if the network is trusted")
        env = self._direct_keys.get(backend.target) or self._direct_keys.get(host)
        if env:
            backend = backend.model_copy(update={"params": {**backend.params, "api_key_env": env}})
        return backend, None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _typed(exc: Any) -> SovraAPIError:
    """A router error raised client-side in direct mode, as the SDK's typed error."""
    return _BY_STATUS.get(exc.status, SovraAPIError)(exc.message, status=exc.status, code=exc.code)


class _Report:
    """One direct call's account for the router's audit trail: the attempts as the dispatcher observed them."""

    def __init__(self, client: AsyncClient, model: str, attempts: list[dict[str, str]]):
        self._client, self._attempts = client, attempts
        self._body = {"request_id": secrets.token_hex(16), "model": model,
                      "residency": list(_residency_header(client._residency).values())}
        self._start = time.perf_counter()

    async def send(self, status: int, outcome: str, usage: Any = None) -> None:
        usage = usage if isinstance(usage, dict) else {}
        await self._client._report({
            **self._body, "attempts": list(self._attempts), "status": status, "outcome": outcome,
            "latency_ms": round((time.perf_counter() - self._start) * 1000, 3),
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0)})


async def _reported_stream(stream: AsyncIterator[dict[str, Any]], report: _Report
                           ) -> AsyncIterator[dict[str, Any]]:
    """The dispatcher's stream, reported when it ends: whole, broken, or left by the app."""
    from sovra.core.api_errors import RouterError

    status, outcome, usage = 499, "cancelled", None
    try:
        async for chunk in stream:
            usage = chunk.get("usage") or usage
            yield chunk
        status, outcome = 200, "ok"
    except RouterError as exc:
        status, outcome = exc.status, exc.code or "stream_interrupted"
        raise _typed(exc) from None
    except Exception:
        status, outcome = 502, "stream_interrupted"
        raise
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]  (the attempt's own outcome is observed first)
        await report.send(status, outcome, usage)


class Client:
    """Blocking client with the same methods as AsyncClient (runs a private event loop)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        try:
            self._async = self._loop.run_until_complete(self._make(base_url, kwargs))
        except BaseException:
            self._loop.close()
            raise

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
