"""The OpenAI-compatible HTTP API. A plain ASGI app: Ray Serve wraps it as its ingress, tests serve it directly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from orchestrator.router.audit import AuditLog, AuditRecord, now_iso
from orchestrator.router.backends import Backend
from orchestrator.router.clients import BackendClient
from orchestrator.router.dispatch import Dispatcher
from orchestrator.router.errors import BadRequest, RouterError
from orchestrator.router.gate import RequestResidency
from orchestrator.router.metrics import RouterMetrics
from orchestrator.router.probe import Prober
from orchestrator.router.tenants import TenantDirectory

log = logging.getLogger("sovra.router")
MAX_BODY_BYTES = 4_000_000


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
    policies: Mapping[str, str] = field(default_factory=dict)  # model -> routing policy name
    metrics: RouterMetrics = field(default_factory=RouterMetrics)
    probe: bool = True  # payload-free probes of ejected backends (orchestrator.router.probe)

    def client(self, backend: Backend) -> BackendClient:
        return self.clients[backend.kind]


def create_app(state: RouterState) -> Starlette:
    """The router's ASGI app."""
    if state.tenants.open:
        log.warning("SOVRA ROUTER IS RUNNING OPEN: no tenants are configured in org.yaml, so any caller is "
                    "accepted with no residency bound. Configure tenants with key_sha256 to enforce residency.")

    async def chat(request: Request) -> Response:
        return await _handle(state, request, "chat")

    async def embeddings(request: Request) -> Response:
        return await _handle(state, request, "embed")

    async def models(request: Request) -> Response:
        try:
            state.tenants.authenticate(request.headers.get("authorization"))
        except RouterError as exc:
            return _error(exc)
        data = [{"id": m, "object": "model", "owned_by": "sovra", "created": 0}
                for m in state.dispatcher.table.models()]
        return JSONResponse({"object": "list", "data": data}, headers=_where(None))

    async def routes(request: Request) -> Response:
        # The routing table for client-side routing: only the backends this tenant may ever reach, plus its bound.
        try:
            tenant = state.tenants.authenticate(request.headers.get("authorization"))
            bound = RequestResidency(tenant.residency)
        except RouterError as exc:
            return _error(exc)
        table = {m: [_backend_json(b, state.policies.get(m, "cost")) for b in bs if bound.permits(b.place)]
                 for m, bs in state.dispatcher.table.by_model.items()}
        return JSONResponse({"tenant": tenant.name, "residency": tenant.residency.model_dump(mode="json"),
                             "models": table}, headers=_where(None))

    async def healthz(_: Request) -> Response:
        backends = [b for bs in state.dispatcher.table.by_model.values() for b in bs]
        open_ = [b.id for b in backends if state.dispatcher.breaker.is_open(b.id)]
        return JSONResponse({"status": "ok", "backends": len(backends), "ejected": open_,
                             "open_mode": state.tenants.open}, headers=_where(None))

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

    return Starlette(lifespan=lifespan, routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/routes", routes, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ], exception_handlers={404: _not_found, 405: _not_allowed})


async def _handle(state: RouterState, request: Request, op: str) -> Response:
    start = time.perf_counter()
    rid = request.headers.get("x-request-id") or uuid.uuid4().hex
    tenant_name, model, residency_text = "-", "-", "-"
    try:
        tenant = state.tenants.authenticate(request.headers.get("authorization"))
        tenant_name = tenant.name
        residency = RequestResidency.build(tenant.residency, request.headers.get("x-sovra-residency"))
        residency_text = residency.describe()
        body = await _body(request)
        parsed = _validate(ChatRequest if op == "chat" else EmbeddingRequest, body)
        model = parsed.model
        policy = state.policies.get(model, "cost")
        if op == "chat" and parsed.stream:
            stream, backend = await state.dispatcher.send(
                model, residency, lambda b: state.client(b).chat_stream(b, body), policy)
            return StreamingResponse(
                _sse(stream, lambda status, outcome, usage: _record(
                    state, rid, tenant_name, model, backend, residency_text, status, outcome, start, usage)),
                media_type="text/event-stream", headers=_where(backend))
        call: Callable = (lambda b: state.client(b).chat(b, body)) if op == "chat" else (
            lambda b: state.client(b).embed(b, body))
        result, backend = await state.dispatcher.send(model, residency, call, policy)
        _record(state, rid, tenant_name, model, backend, residency_text, 200, "ok", start, result.get("usage"))
        return JSONResponse(result, headers=_where(backend))
    except RouterError as exc:
        _record(state, rid, tenant_name, model, None, residency_text, exc.status, exc.code or exc.type, start, None)
        return _error(exc)
    except Exception:  # never let one request take the router down; the client still gets JSON
        log.exception("request %s failed", rid)
        _record(state, rid, tenant_name, model, None, residency_text, 500, "internal_error", start, None)
        return _error(RouterError("internal router error; see the router log for request id " + rid))


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"request body is over {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _validate(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"{where}: {first['msg']}") from None


async def _sse(stream: AsyncIterator[dict[str, Any]], done: Callable[[int, str, Any], None]) -> AsyncIterator[bytes]:
    usage = None
    try:
        async for chunk in stream:
            usage = chunk.get("usage") or usage
            yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
        done(200, "ok", usage)
    except Exception as exc:  # after the first byte nothing may be retried elsewhere: tell the client, stop
        log.warning("stream broke: %s", exc)
        err = {"error": {"message": "the backend stream broke", "type": "api_error", "code": "stream_interrupted"}}
        yield b"data: " + json.dumps(err).encode() + b"\n\n"
        done(502, "stream_interrupted", usage)


def _record(state: RouterState, rid: str, tenant: str, model: str, backend: Backend | None, residency: str,
            status: int, outcome: str, start: float, usage: Any) -> None:
    latency = (time.perf_counter() - start) * 1000
    usage = usage if isinstance(usage, dict) else {}
    state.metrics.observe(model, backend.target if backend else "none", backend.zone if backend else "none",
                          status, latency / 1000)
    if state.audit is not None:
        state.audit.write(AuditRecord(
            time=now_iso(), request_id=rid, tenant=tenant, model=model,
            target=backend.target if backend else None, zone=backend.zone if backend else None,
            country=backend.place.country if backend else None, residency=residency, status=status,
            outcome=outcome, latency_ms=round(latency, 3),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0)))


def _where(backend: Backend | None) -> dict[str, str]:
    if backend is None:
        return {"X-Sovra-Target": "none", "X-Sovra-Zone": "none"}
    return {"X-Sovra-Target": backend.target, "X-Sovra-Zone": backend.zone}


def _error(exc: RouterError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers={**_where(None), **exc.headers})


def _backend_json(b: Backend, policy: str) -> dict[str, Any]:
    return {"id": b.id, "target": b.target, "zone": b.place.zone, "country": b.place.country,
            "jurisdiction": b.place.jurisdiction, "operator": b.place.operator, "cost": b.cost, "kind": b.kind,
            "address": b.address, "policy": policy}


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(_Simple(404, "not_found", f"no route {request.url.path}"))


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return _error(_Simple(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}"))


class _Simple(RouterError):
    type = "invalid_request_error"

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code
