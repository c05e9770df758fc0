"""The OpenAI-compatible HTTP API. A plain ASGI app: Ray Serve wraps it as its ingress, tests serve it directly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from orchestrator.router.audit import CLIENT_CLOSED, AuditLog, RequestContext
from orchestrator.router.backends import Backend
from orchestrator.router.body import json_object, refuse_declared, refuse_over
from orchestrator.router.clients import BackendClient
from orchestrator.router.dispatch import Dispatcher
from orchestrator.router.errors import BadRequest, RouterError
from orchestrator.router.gate import RequestResidency
from orchestrator.router.metrics import RouterMetrics
from orchestrator.router.probe import Prober
from orchestrator.router.tenants import TenantDirectory
from policies.residency import allows

log = logging.getLogger("sovra.router")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """The fields the router checks; everything else is passed to the backend untouched."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=256)
    messages: list[_Message] = Field(min_length=1, max_length=10_000)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1, le=131_072)
    temperature: float | None = Field(default=None, ge=0, le=2)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] = Field(min_length=1)


@dataclass
class RouterState:
    """Everything a router replica needs; `dispatcher.table` is swapped by `up` when the routing table changes."""

    dispatcher: Dispatcher
    tenants: TenantDirectory
    clients: Mapping[str, BackendClient]
    audit: AuditLog | None = None
    metrics: RouterMetrics = field(default_factory=RouterMetrics)
    probe: bool = True  # payload-free probes of ejected backends (orchestrator.router.probe)
    extra_routes: Sequence[Route] = ()  # e.g. the admin-only audit endpoints

    def client(self, backend: Backend) -> BackendClient:
        return self.clients[backend.kind]

    def down(self, backend: Backend) -> bool:
        """Known to have no live replica (the client's own knowledge, e.g. Ray Serve's replica states)."""
        return self.clients[backend.kind].known_down(backend)


def create_app(state: RouterState) -> Callable:
    """The router's ASGI app."""
    if state.tenants.open:
        log.warning("SOVRA ROUTER IS RUNNING OPEN: no tenants are configured in org.yaml, so any caller is "
                    "accepted with no residency bound beyond each deployment's. Sovra binds it to loopback only.")

    async def chat(request: Request) -> Response:
        return await _handle(state, request.scope, request.receive, "chat") or Response(status_code=CLIENT_CLOSED)

    async def embeddings(request: Request) -> Response:
        return await _handle(state, request.scope, request.receive, "embed") or Response(status_code=CLIENT_CLOSED)

    async def models(request: Request) -> Response:
        try:
            tenant = state.tenants.authenticate(request.headers.get("authorization"))
        except RouterError as exc:
            return _error(exc)
        table = state.dispatcher.table
        data = [{"id": name, "object": "model", "owned_by": "sovra", "created": 0,
                 "model": table.routes[name].model}
                for name in table.names(state.tenants.visible(tenant))]
        return JSONResponse({"object": "list", "data": data}, headers=_where(None))

    async def routes(request: Request) -> Response:
        # The routing table for client-side routing: only what this tenant may ever reach, plus its bound.
        try:
            tenant = state.tenants.authenticate(request.headers.get("authorization"))
        except RouterError as exc:
            return _error(exc)
        bound = RequestResidency(tenant.residency)
        table = state.dispatcher.table
        out = {}
        for name in table.names(state.tenants.visible(tenant)):
            route = table.routes[name]
            within = bound.bound_by(route.residency)
            out[name] = {"model": route.model, "residency": route.residency.model_dump(mode="json"),
                         "policy": route.policy,
                         "backends": [b.to_wire() for b in route.backends if within.permits(b.place)]}
        return JSONResponse({"tenant": tenant.name, "residency": tenant.residency.model_dump(mode="json"),
                             "deployments": out}, headers=_where(None))

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers=_where(None))

    async def readyz(_: Request) -> Response:
        await asyncio.gather(*(c.refresh() for c in state.clients.values()), return_exceptions=True)
        return _readiness(state)

    async def metrics(_: Request) -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type, headers=_where(None))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        prober = asyncio.create_task(Prober(state.dispatcher, state.clients).run()) if state.probe else None
        try:
            yield
        finally:
            if prober is not None:
                prober.cancel()
            for client in state.clients.values():  # release pooled backend connections when the replica stops
                await client.aclose()

    slow = Starlette(lifespan=lifespan, routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/routes", routes, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *state.extra_routes,
    ], exception_handlers={404: _not_found, 405: _not_allowed})

    async def app(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        # The two payload routes skip Starlette's middleware, routing and Request objects: on the path every
        # request takes, they cost more CPU than the router's own work. Anything else (other paths and methods,
        # lifespan, the Starlette routes above, which serve the same two paths too) goes through Starlette.
        op = _FAST.get(_route_path(scope)) if scope["type"] == "http" and scope.get("method") == "POST" else None
        if op is None:
            return await slow(scope, receive, send)
        response = await _handle(state, scope, receive, op)
        if response is not None:
            await response(scope, receive, send)

    return app


_FAST = {"/v1/chat/completions": "chat", "/v1/embeddings": "embed"}


def _route_path(scope: dict[str, Any]) -> str:
    """The path below the app's mount point (`root_path`), as Starlette's router matches it."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] == "/":
        return path[len(root):]
    return path


def _readiness(state: RouterState) -> Response:
    """Per deployment, the backends its own residency allows that are neither ejected nor known down."""
    deployments = {}
    for name, route in state.dispatcher.table.routes.items():
        allowed = [b for b in route.backends if allows(route.residency, b.place)]
        healthy = [b for b in state.dispatcher.healthy(tuple(allowed)) if not state.down(b)]
        deployments[name] = {"ready": bool(healthy), "healthy": len(healthy), "backends": len(allowed),
                             "down": sorted(b.target for b in allowed if b not in healthy)}
    ready = bool(deployments) and all(d["ready"] for d in deployments.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "deployments": deployments},
                        status_code=200 if ready else 503, headers=_where(None))


class _Timed:
    """Wraps a backend call to sum the time spent waiting on backends, so the router can report its own time."""

    __slots__ = ("backend_s",)

    def __init__(self) -> None:
        self.backend_s = 0.0

    def wrap(self, call: Callable[[Backend], Awaitable[Any]]) -> Callable[[Backend], Awaitable[Any]]:
        async def timed(backend: Backend) -> Any:
            t0 = time.perf_counter()
            try:
                return await call(backend)
            finally:
                self.backend_s += time.perf_counter() - t0

        return timed

    def overhead_ms(self, start: float) -> float:
        return max(0.0, (time.perf_counter() - start - self.backend_s) * 1000)


async def _handle(state: RouterState, scope: dict[str, Any], receive: Callable, op: str) -> _Answer | None:
    """Answer one chat or embeddings request; None when the client went away before it was read whole."""
    start = time.perf_counter()
    headers = _headers(scope)
    rid = headers.get("x-request-id") or ""
    rid = rid if _REQUEST_ID.match(rid) else secrets.token_hex(16)  # client text reaches the trail only if tame
    ctx = RequestContext(request_id=rid)
    served: list[Backend] = []
    timer = _Timed()
    status, outcome, usage, label = 499, "cancelled", None, "-"  # until proven otherwise: the client went away
    streaming = False
    try:
        tenant = state.tenants.authenticate(headers.get("authorization"))
        ctx.tenant = tenant.name
        residency = RequestResidency.build(tenant.residency, headers.get("x-sovra-residency"))
        ctx.residency = residency.describe()
        body = await _body(receive, headers.get("content-length"))
        parsed = _validate(ChatRequest if op == "chat" else EmbeddingRequest, body)
        route = state.dispatcher.table.resolve(parsed.model, state.tenants.visible(tenant))
        ctx.deployment, ctx.model, label = route.name, route.model, route.name
        ctx.residency = residency.bound_by(route.residency).describe()
        observe = _observer(ctx, served)
        if op == "chat" and parsed.stream:
            stream, backend = await state.dispatcher.send_stream(
                route, residency, timer.wrap(lambda b: state.client(b).chat_stream(b, body)), observe)
            headers = _where(backend, timer.overhead_ms(start))
            streaming = True
            return StreamingResponse(_sse(stream, lambda s, o, u: _finish(state, ctx, served, s, o, u, start, label)),
                                     media_type="text/event-stream", headers=headers)
        call: Callable = (lambda b: state.client(b).chat(b, body)) if op == "chat" else (
            lambda b: state.client(b).embed(b, body))
        result, backend = await state.dispatcher.send(route, residency, timer.wrap(call), observe)
        status, outcome, usage = 200, "ok", result.get("usage")
        overhead = timer.overhead_ms(start)
        state.metrics.overhead(overhead / 1000)
        return _Json(200, result, _where(backend, overhead))
    except _ClientGone:
        return None  # recorded as cancelled (499) below; there is no one to answer
    except RouterError as exc:
        status, outcome = exc.status, exc.code or exc.type
        return _error(exc)
    except Exception:  # never let one request take the router down; the client still gets JSON
        log.exception("request %s failed", rid)
        status, outcome = 500, "internal_error"
        return _error(RouterError("internal router error; see the router log for request id " + rid))
    finally:  # cancellation included: every request leaves a record (a stream's record is written when it ends)
        if not streaming:
            _finish(state, ctx, served, status, outcome, usage, start, label)


def _observer(ctx: RequestContext, served: list[Backend]) -> Callable[[Backend, str], None]:
    def observe(backend: Backend, outcome: str) -> None:
        ctx.attempt(backend.target, backend.zone, backend.place.country, outcome)
        if outcome == "ok":
            served.append(backend)

    return observe


class _ClientGone(Exception):
    """The client disconnected while its request body was being read."""


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    """The request's headers by (lowercase, as ASGI gives them) name; the first of repeated ones, as Starlette."""
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1")
        if key not in out:
            out[key] = value.decode("latin-1")
    return out


async def _body(receive: Callable, declared: str | None) -> dict[str, Any]:
    refuse_declared(declared)
    parts, size, more = [], 0, True
    while more:  # read with the limit, never whole first
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        refuse_over(size)
        parts.append(chunk)
        more = message.get("more_body", False)
    return json_object(b"".join(parts))


def _validate(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"{where}: {first['msg']}") from None


async def _sse(stream: AsyncIterator[dict[str, Any]], done: Callable[[int, str, Any], None]) -> AsyncIterator[bytes]:
    status, outcome, usage = 499, "cancelled", None
    try:
        try:
            async for chunk in stream:
                usage = chunk.get("usage") or usage
                yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
            status, outcome = 200, "ok"
            yield b"data: [DONE]\n\n"
        except RouterError as exc:  # after the first byte nothing may be resent: tell the client, stop
            status, outcome = exc.status, exc.code or "stream_interrupted"
            yield b"data: " + json.dumps(exc.body()).encode() + b"\n\n"
        except Exception as exc:
            log.warning("stream broke: %s", exc)
            status, outcome = 502, "stream_interrupted"
            err = {"error": {"message": "the backend stream broke", "type": "api_error", "code": outcome}}
            yield b"data: " + json.dumps(err).encode() + b"\n\n"
    finally:
        # Close the dispatcher's stream first (shielded: this may run while the response is being cancelled), so
        # the attempt's own outcome is observed before the record is written.
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        done(status, outcome, usage)


def _finish(state: RouterState, ctx: RequestContext, served: list[Backend], status: int, outcome: str, usage: Any,
            start: float, label: str) -> None:
    latency = time.perf_counter() - start
    usage = usage if isinstance(usage, dict) else {}
    where = served[-1] if served else None
    state.metrics.observe(label, where.target if where else "none", where.zone if where else "none", status, latency)
    if state.audit is not None:
        try:
            state.audit.write(ctx.finish(status=status, outcome=outcome, latency_ms=round(latency * 1000, 3),
                                         prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                         completion_tokens=int(usage.get("completion_tokens") or 0)))
        except Exception:  # the answer is already decided; a failing disk must not turn it into a 500
            log.exception("audit write failed for request %s", ctx.request_id)


class _Json:
    """A JSON answer as an ASGI callable: what Starlette's JSONResponse sends (same bytes and headers), without
    its per-response machinery, on the path every request takes."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, content: Any, headers: Mapping[str, str]):
        self.status = status
        self.body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        self.headers = [(b"content-length", str(len(self.body)).encode()), (b"content-type", b"application/json"),
                        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())]

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


_Answer = _Json | Response


def _where(backend: Backend | None, overhead_ms: float | None = None) -> dict[str, str]:
    headers = ({"X-Sovra-Target": "none", "X-Sovra-Zone": "none"} if backend is None
               else {"X-Sovra-Target": backend.target, "X-Sovra-Zone": backend.zone})
    if overhead_ms is not None:
        headers["X-Sovra-Overhead-Ms"] = f"{overhead_ms:.3f}"
    return headers


def _error(exc: RouterError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers={**_where(None), **exc.headers})


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(_Simple(404, "not_found", f"no route {request.url.path}"))


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return _error(_Simple(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}"))


class _Simple(RouterError):
    type = "invalid_request_error"

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code
