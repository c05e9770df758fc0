"""The OpenAI-compatible HTTP API. A plain ASGI app: Ray Serve wraps it as its ingress, tests serve it directly."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sovra.orchestrator.router import affinity, completions, direct_report, responses
from sovra.orchestrator.router.access import Access, ReadinessView, cross_site, preflight
from sovra.orchestrator.router.audit import CLIENT_CLOSED, AuditLog, RequestContext
from sovra.core.backends import Backend, Route as TableRoute

if TYPE_CHECKING:  # the interface only: the router is handed its clients and imports no provider
    from sovra.providers.clients import BackendClient
from sovra.orchestrator.router.body import json_object, refuse_declared, refuse_over
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.core.api_errors import BadRequest, BudgetExceeded, NoAllowedBackend, RouterError, Saturated
from sovra.orchestrator.router.balancing import get_policy
from sovra.orchestrator.router.gate import RequestResidency
from sovra.orchestrator.router.limits import TenantLimits
from sovra.orchestrator.router.locales import Choice, Locales, has_variants
from sovra.orchestrator.router.metrics import RouterMetrics
from sovra.orchestrator.router.probe import Prober
from sovra.orchestrator.router.requests import ChatRequest, EmbeddingRequest, Translated
from sovra.orchestrator.router.spend import Spend
from sovra.orchestrator.router.tenants import TenantDirectory
from sovra.orchestrator.router.tracing import RequestTrace, Tracing
from sovra.core.spec.org import Tenant
from sovra.policies.residency import allows

log = logging.getLogger("sovra.router")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass
class RouterState:
    """Everything a router replica needs; `dispatcher.table` is swapped by `up` when the routing table changes."""

    dispatcher: Dispatcher
    tenants: TenantDirectory
    clients: Mapping[str, BackendClient]
    audit: AuditLog | None = None
    metrics: RouterMetrics = field(default_factory=RouterMetrics)
    probe: bool = True  # payload-free probes of ejected backends (orchestrator.router.probe)
    limits: TenantLimits = field(default_factory=TenantLimits)  # requests in flight per tenant
    ready_wait_s: float = 0.5  # /readyz waits this long for fresh backend state, then answers from the last
    extra_routes: Sequence[Route] = ()  # e.g. the admin-only audit endpoints
    access: Access = field(default_factory=Access)  # admins' and the metrics scraper's keys
    direct_mode: bool = True  # org.yaml `router.direct_mode`: may tenants route client-side?
    spend: Spend | None = None  # budgets and the ledger (orchestrator.router.spend); None: neither
    locales: Locales = field(default_factory=Locales)  # which locale variant answers (orchestrator.router.locales)
    tracing: Tracing | None = None  # OpenTelemetry spans (orchestrator.router.tracing); None: off
    #: what a tenant's direct-mode client may see of a backend, None when only the router can call it (from the
    #: providers, handed in by the composition root: `providers.base.direct_view`); by default none is direct
    direct_view: Callable[[Backend], Backend | None] = field(default=lambda _: None)

    def client(self, backend: Backend) -> BackendClient:
        return self.clients[backend.kind]

    def down(self, backend: Backend) -> bool:
        """Known to have no live replica (the client's own knowledge, e.g. Ray Serve's replica states)."""
        return self.clients[backend.kind].known_down(backend)


def create_app(state: RouterState) -> Callable:
    """The router's ASGI app."""
    if state.spend is not None:
        state.metrics.watch_spend(state.spend)
    if state.tenants.open:
        log.warning("SOVRA ROUTER IS RUNNING OPEN: no tenants are configured in org.yaml, so any caller is "
                    "accepted with no residency bound beyond each deployment's. Sovra binds it to loopback only.")

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
        try:
            tenant = state.tenants.authenticate(request.headers.get("authorization"))
            if not state.direct_mode:
                raise direct_report.disabled()
        except RouterError as exc:
            return _error(exc)
        return JSONResponse(_tenant_table(state, tenant), headers=_where(None))

    async def report(request: Request) -> Response:
        return await direct_report.report(state, request)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers=_where(None))

    async def readyz(request: Request) -> Response:
        await _refreshed(state)
        return _readiness(state, state.access.readiness(state.tenants, request.headers.get("authorization")))

    async def metrics(request: Request) -> Response:
        try:
            state.access.check_metrics(state.tenants, request.headers.get("authorization"))
        except RouterError as exc:
            return _error(exc)
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type, headers=_where(None))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        prober = asyncio.create_task(Prober(state.dispatcher, state.clients).run()) if state.probe else None
        if state.spend is not None:
            state.spend.start()
        if has_variants(state.dispatcher.table.backends):  # the language model loads once, not on a request
            await asyncio.to_thread(state.locales.detector.load)
        try:
            yield
        finally:
            if state.spend is not None:  # what is spooled goes to the store now, or stays for the next replica
                state.spend.close()
            if prober is not None:
                prober.cancel()
            for client in state.clients.values():  # release pooled backend connections when the replica stops
                await client.aclose()
            if state.audit is not None:  # the chain ends cleanly: the strangers' count, then a `close` line
                state.audit.close()
            if state.tracing is not None:
                state.tracing.close()

    slow = Starlette(lifespan=lifespan, routes=[
        Route("/v1/chat/completions", _Payload(state, "chat"), methods=["POST"]),
        Route("/v1/embeddings", _Payload(state, "embed"), methods=["POST"]),
        Route("/v1/responses", _Payload(state, "responses"), methods=["POST"]),
        Route("/v1/completions", _Payload(state, "completions"), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/routes", routes, methods=["GET"]),
        Route("/v1/audit/report", report, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *state.extra_routes,
    ], exception_handlers={404: _not_found, 405: _not_allowed})

    async def app(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        # The two payload routes skip Starlette's middleware, routing and Request objects: on the path every
        # request takes, they cost more CPU than the router's own work. Anything else (other paths and methods,
        # lifespan, the Starlette routes above, which serve the same two paths too) goes through Starlette.
        if scope["type"] == "http":  # before either path: what a web page could make a browser send
            refused = cross_site(scope) if state.tenants.open else preflight(scope)
            if refused is not None:
                return await _error(refused)(scope, receive, send)
        op = _FAST.get(_route_path(scope)) if scope["type"] == "http" and scope.get("method") == "POST" else None
        if op is None:
            return await slow(scope, receive, send)
        await _serve(state, scope, receive, send, op)

    return app


class _Payload:
    """The payload routes as ASGI endpoints for Starlette (which calls an instance as an ASGI app), so both ways
    in share `_serve`."""

    def __init__(self, state: RouterState, op: str):
        self.state, self.op = state, op

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        await _serve(self.state, scope, receive, send, self.op)


_FAST = {"/v1/chat/completions": "chat", "/v1/embeddings": "embed", "/v1/responses": "responses",
         "/v1/completions": "completions"}
#: The surfaces sent as chat requests: each turns its body into one and the answer back (`requests.Translated`).
_TRANSLATED: dict[str, Callable[[dict[str, Any]], Translated]] = {
    "responses": responses.translate, "completions": completions.translate}


def _route_path(scope: dict[str, Any]) -> str:
    """The path below the app's mount point (`root_path`), as Starlette's router matches it."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] == "/":
        return path[len(root):]
    return path


async def _refreshed(state: RouterState) -> None:
    """Ask every client to bring its view up to date, waiting at most `ready_wait_s`: a slow source (Serve's
    controller under load) must not hold /readyz, which then answers from the last view. The refresh goes on in
    the background and serves a later call."""
    refresh = asyncio.ensure_future(
        asyncio.gather(*(c.refresh() for c in state.clients.values()), return_exceptions=True))
    await asyncio.wait({refresh}, timeout=state.ready_wait_s)


def _readiness(state: RouterState, view: ReadinessView) -> Response:
    """Ready when every deployment (locale variants aside) has a backend its own residency allows that is neither
    ejected nor known down.
    The aggregate is everyone's; per deployment, admins see all, a tenant its own (within its bound), others none."""
    table = state.dispatcher.table

    def detail(route: Any, bound: RequestResidency | None) -> dict[str, Any]:
        allowed = [b for b in route.backends
                   if (bound.permits(b.place) if bound else allows(route.residency, b.place))]
        healthy = [b for b in state.dispatcher.healthy(tuple(allowed)) if not state.down(b)]
        return {"ready": bool(healthy), "healthy": len(healthy), "backends": len(allowed),
                "down": sorted(b.target for b in allowed if b not in healthy)}

    every = {name: detail(route, None) for name, route in table.routes.items()}
    if view == "all":  # admins see why each backend is out (the verdict's words: no payload, no key)
        for name, route in table.routes.items():
            why = {b.target: state.dispatcher.why.get(b.id) or ("its client reports no live replica"
                                                               if state.down(b) else "its circuit is open")
                   for b in route.backends if b.target in every[name]["down"]}
            if why:
                every[name]["why"] = why
    # a locale's variant without a live backend is not unready: its base deployment serves its locale meanwhile
    ready = bool(every) and all(d["ready"] for name, d in every.items() if table.routes[name].variant_of is None)
    audit = _audit_state(state.audit)
    ready = ready and audit != "failing"
    body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "audit": audit}
    if view == "all":
        body["deployments"] = every
    elif not isinstance(view, str):  # a tenant: its deployments, as far as its own bound reaches
        bound = RequestResidency(view.residency)
        body["deployments"] = {name: detail(table.routes[name], bound.bound_by(table.routes[name].residency))
                               for name in table.names(state.tenants.visible(view))}
    return JSONResponse(body, status_code=200 if ready else 503, headers=_where(None))


def _audit_state(audit: AuditLog | None) -> str:
    """`ok`, `off` (no trail), `failing` (the last write failed: payload requests are refused until one succeeds),
    or `failing, sending unrecorded` (the org opted out of refusing)."""
    if audit is None:
        return "off"
    if audit.healthy:
        return "ok"
    return "failing" if audit.refuse else "failing, sending unrecorded (org.yaml audit.on_failure: continue)"


def _tenant_table(state: RouterState, tenant: Tenant) -> dict[str, Any]:
    """`/v1/routes`: the routing table for client-side routing, holding only what this tenant may ever reach and
    direct mode can call, each backend in its narrowed form (`state.direct_view`: no Ray addresses, Snowflake users
    or roles, Azure subscriptions); the targets within reach that only the router can call are named, no more."""
    bound = RequestResidency(tenant.residency)
    table = state.dispatcher.table
    out = {}
    for name in table.names(state.tenants.visible(tenant)):
        route = table.routes[name]
        within = [b for b in route.backends if bound.bound_by(route.residency).permits(b.place)]
        views = [(b, state.direct_view(b)) for b in within]
        out[name] = {"model": route.model, "residency": route.residency.model_dump(mode="json"),
                     "policy": route.policy,
                     "backends": [v.to_wire() for _, v in views if v is not None],
                     "proxy_only": [{"target": b.target, "kind": b.kind} for b, v in views if v is None]}
    return {"tenant": tenant.name, "residency": tenant.residency.model_dump(mode="json"), "deployments": out}


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


@dataclass
class _Outcome:
    """How a request ended, as the trail records it; filled as it goes (a stream's by its body iterator)."""

    status: int = CLIENT_CLOSED  # until proven otherwise: the client went away
    outcome: str = "cancelled"
    usage: Any = None
    model: Any = None  # the answer's `model` (the span's gen_ai.response.model)


async def _serve(state: RouterState, scope: dict[str, Any], receive: Callable, send: Callable, op: str) -> None:
    """Answer one chat, embeddings, responses or completions request (the last two sent as the chat they become)
    and record it. Everything that must happen once a payload may have left (closing a stream, releasing its
    backend's slot, the record) is in this one `finally`, independent of whether the answer or a stream's body ever
    started: the client may go away, or Serve cancel us, at any await."""
    start = time.perf_counter()
    headers = _headers(scope)
    rid = headers.get("x-request-id") or ""
    rid = rid if _REQUEST_ID.match(rid) else secrets.token_hex(16)  # client text reaches the trail only if tame
    ctx = RequestContext(request_id=rid)
    served: list[Backend] = []
    timer = _Timed()
    end = _Outcome()
    label = "-"
    stream: Any = None
    recorded = False
    release: Callable[[], None] = _nothing  # the tenant's in-flight slot, once taken
    held: list[Any] = [None, ()]  # the budget reservation and the route's backends, for the ledger
    trace: RequestTrace | None = None  # opened once the caller is known: strangers make no spans
    try:
        answer: _Answer | None = None
        extra: dict[str, str] = {}  # X-Sovra-Variant and X-Sovra-Locale on a deployment with variants
        try:
            tenant = state.tenants.authenticate(headers.get("authorization"))
            ctx.tenant = tenant.name
            if state.tracing is not None:
                trace = state.tracing.request(op, headers)
            release = state.limits.acquire(tenant)  # freed in the `finally` below, however the request ends
            residency = RequestResidency.build(tenant.residency, _every(scope, b"x-sovra-residency") or None)
            ctx.residency = residency.describe()
            body = await _body(receive, headers.get("content-length"))
            shape = None
            if op in _TRANSLATED:  # sent as the chat request it becomes, through the same path as any chat
                shape = _TRANSLATED[op](body)
                body, op = shape.chat, "chat"
            parsed = _validate(ChatRequest if op == "chat" else EmbeddingRequest, body)
            route = base = state.dispatcher.table.resolve(parsed.model, state.tenants.visible(tenant))
            ctx.deployment, ctx.model, label = route.name, route.model, route.name
            if route.variants:  # a locale's variant, when one has a backend inside the bound; else the base
                choice = _variant(state, route, residency, headers, body)
                route = choice.route  # the metrics' label: `ctx.variant or label`, as it stands at the end
                ctx.locale, ctx.locale_source, ctx.variant, ctx.model = (
                    choice.locale, choice.source, choice.variant, route.model)
                extra = {"X-Sovra-Variant": route.name, **({"X-Sovra-Locale": choice.locale} if choice.locale else {})}
            ctx.residency = residency.bound_by(route.residency).describe()
            if trace is not None:
                trace.routed(_span_facts(ctx, route))
            observe, before = _observer(ctx, served, trace), _write_ahead(state, ctx, trace)
            if state.spend is not None:
                route = await _reserve(state.spend, tenant.name, route, body, held, base)
                if route.variant_of is None and ctx.variant is not None:  # spilled: the base's paid-for capacity
                    _to_base(ctx, base, residency, extra)
            key = affinity.key(get_policy(route.policy).affinity, headers, body)
            if op == "chat" and parsed.stream:
                stream, backend = await _sent(
                    state, route, base, lambda r: state.dispatcher.send_stream(
                        r, residency, timer.wrap(lambda b: state.client(b).chat_stream(b, body)), observe, before,
                        key), ctx, extra, residency)
                events = _sse(stream, end) if shape is None else _translated_sse(stream, end, shape)
                answer = StreamingResponse(events, media_type="text/event-stream",
                                           headers={**_where(backend, timer.overhead_ms(start)), **extra})
            else:
                call: Callable = (lambda b: state.client(b).chat(b, body)) if op == "chat" else (
                    lambda b: state.client(b).embed(b, body))
                result, backend = await _sent(
                    state, route, base, lambda r: state.dispatcher.send(
                        r, residency, timer.wrap(call), observe, before, key), ctx, extra, residency)
                end.usage = result.get("usage")
                end.model = result.get("model")
                if shape is not None:
                    result = shape.answer(result)
                end.status, end.outcome = 200, "ok"
                overhead = timer.overhead_ms(start)
                state.metrics.overhead(overhead / 1000)
                answer = _Json(200, result, {**_where(backend, overhead), **extra})
        except _ClientGone:
            return  # recorded as cancelled (499) below; there is no one to answer
        except RouterError as exc:
            end.status, end.outcome = exc.status, exc.code or exc.type
            answer = _error(exc, extra)
        except Exception:  # never let one request take the router down; the client still gets JSON
            log.exception("request %s failed", rid)
            end.status, end.outcome = 500, "internal_error"
            answer = _error(RouterError("internal router error; see the router log for request id " + rid))
        if stream is None:  # a whole answer is on record before the client has it, like every refusal
            recorded = True
            _finish(state, ctx, served, end, start, label, held, trace)
        await answer(scope, receive, send)
    finally:  # cancellation included
        release()
        if stream is not None:  # settles the attempt and frees its slot even if the body never started
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await stream.aclose()
        if not recorded:
            _finish(state, ctx, served, end, start, label, held, trace)


def _nothing() -> None:
    return None


async def _reserve(spend: Spend, tenant: str, route: TableRoute, body: dict[str, Any], held: list[Any],
                   base: TableRoute | None = None) -> TableRoute:
    """Reserve the request's budgets (into `held`); over a USD budget, a deployment that spills is served from its
    capacity already paid for, inside the same bound: the route narrowed to it is what the request goes to.

    A locale's variant may still hand the request to its `base` (`_sent`), so its reservation is priced at the
    dearer of both and held under both deployments' budgets; a spill goes to the base's paid-for capacity."""
    priced = route if base is None or base is route else dataclasses.replace(
        route, backends=(*route.backends, *base.backends))
    held[1] = priced.backends
    try:
        held[0] = await spend.reserve(tenant, priced, body)
        return route
    except BudgetExceeded as exc:
        paid = (base or route).spill() if exc.code == "budget_exceeded" else None
        if paid is None:
            raise
    held[1] = paid.backends
    held[0] = await spend.reserve(tenant, paid, body)  # priced at 0 USD; token and request quotas still hold
    spend.spilled += 1
    return paid


def _variant(state: RouterState, route: TableRoute, residency: RequestResidency, headers: Mapping[str, str],
             body: Mapping[str, Any]) -> Choice:
    """The locale's variant of `route` when it has a live backend inside this request's bound, else `route`."""
    table = state.dispatcher.table
    return state.locales.choose(route, headers, body,
                                lambda r: state.dispatcher.reachable(r, residency, state.down), table.routes)


async def _sent(state: RouterState, route: TableRoute, base: TableRoute, send: Callable[[TableRoute], Awaitable[Any]],
                ctx: RequestContext, extra: dict[str, str], residency: RequestResidency) -> Any:
    """`send(route)`; a variant that turns out to have no backend able to take the request (every one refused or
    unreachable, so nothing was processed there) hands it to its base deployment, inside the same bound (its
    reservation already covers the base: `_reserve`)."""
    try:
        return await send(route)
    except (NoAllowedBackend, Saturated):
        if route.variant_of is None or route.variant_of != base.name or route.paid_only:
            raise
    log.info("request %s: variant %s could not take it; its deployment %s serves", ctx.request_id, route.name,
             base.name)
    _to_base(ctx, base, residency, extra)
    return await send(base)


def _to_base(ctx: RequestContext, base: TableRoute, residency: RequestResidency, extra: dict[str, str]) -> None:
    """The request goes to its base deployment after all: the trail's bound (the `send` lines after this one and the
    record) is the base's, as is what the answer says served it."""
    ctx.variant, ctx.model = None, base.model
    ctx.residency = residency.bound_by(base.residency).describe()
    extra["X-Sovra-Variant"] = base.name


def _span_facts(ctx: RequestContext, route: TableRoute) -> dict[str, Any]:
    """The request span's routing attributes: the audit's facts, never the payload."""
    return {"gen_ai.request.model": route.model, "sovra.deployment": ctx.deployment, "sovra.tenant": ctx.tenant,
            "sovra.residency": ctx.residency, "sovra.variant": ctx.variant, "sovra.locale": ctx.locale,
            "sovra.locale_source": ctx.locale_source}


def _write_ahead(state: RouterState, ctx: RequestContext, trace: RequestTrace | None = None
                 ) -> Callable[[Backend], None]:
    """Before each send: the trail's `send` line (raising `AuditUnavailable` stops the send), then the attempt
    (and its span, whose trace context the transport carries to the backend)."""
    audit = state.audit

    def before(backend: Backend) -> None:
        country = backend.place.country
        seq = audit.sending(ctx, backend.target, backend.zone, country) if audit is not None else None
        ctx.sending(backend.target, backend.zone, country, seq)
        if trace is not None:
            trace.sending(backend, state.client(backend).gen_ai_system)

    return before


def _observer(ctx: RequestContext, served: list[Backend], trace: RequestTrace | None = None
              ) -> Callable[[Backend, str], None]:
    def observe(backend: Backend, outcome: str) -> None:
        ctx.ended(backend.target, backend.zone, backend.place.country, outcome)
        if trace is not None:
            trace.ended(outcome)
        if outcome == "ok":
            served.append(backend)

    return observe


class _ClientGone(Exception):
    """The client disconnected while its request body was being read."""


def _every(scope: dict[str, Any], name: bytes) -> tuple[str, ...]:
    """Every value of a header that may be repeated, in order: each `X-Sovra-Residency` line narrows the bound, so
    none may be dropped (as `_headers` drops all but the first)."""
    return tuple(value.decode("latin-1") for key, value in scope["headers"] if key == name)


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


async def _sse(stream: AsyncIterator[dict[str, Any]], end: _Outcome) -> AsyncIterator[bytes]:
    """The stream as server-sent events; how it ended goes in `end` (`_serve` closes the stream and records)."""
    try:
        async for chunk in stream:
            end.usage = chunk.get("usage") or end.usage
            end.model = end.model or chunk.get("model")
            yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
        end.status, end.outcome = 200, "ok"
        yield b"data: [DONE]\n\n"
    except RouterError as exc:  # after the first byte nothing may be resent: tell the client, stop
        end.status, end.outcome = exc.status, exc.code or "stream_interrupted"
        yield b"data: " + json.dumps(exc.body()).encode() + b"\n\n"
    except Exception as exc:
        log.warning("stream broke: %s", exc)
        end.status, end.outcome = 502, "stream_interrupted"
        err = {"error": {"message": "the backend stream broke", "type": "api_error", "code": end.outcome}}
        yield b"data: " + json.dumps(err).encode() + b"\n\n"
    finally:
        # Close the dispatcher's stream first (shielded: this may run while the response is being cancelled), so
        # the attempt's own outcome is observed before `_serve` writes the record.
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]


async def _translated_sse(stream: AsyncIterator[dict[str, Any]], end: _Outcome, shape: Translated
                           ) -> AsyncIterator[bytes]:
    """`_sse` for a surface sent as chat (`/v1/responses`, `/v1/completions`): the same bookkeeping, the chunks
    as that surface's events."""
    try:
        for event in shape.start():
            yield event
        async for chunk in stream:
            end.usage = chunk.get("usage") or end.usage
            end.model = end.model or chunk.get("model")
            for event in shape.feed(chunk):
                yield event
        end.status, end.outcome = 200, "ok"
        for event in shape.end():
            yield event
    except RouterError as exc:  # after the first byte nothing may be resent: tell the client, stop
        end.status, end.outcome = exc.status, exc.code or "stream_interrupted"
        for event in shape.fail(exc.body()["error"]):
            yield event
    except Exception as exc:  # noqa: BLE001  (as `_sse`: any break after the first byte ends in the surface's event)
        log.warning("stream broke: %s", exc)
        end.status, end.outcome = 502, "stream_interrupted"
        for event in shape.fail({"message": "the backend stream broke", "type": "api_error", "code": end.outcome}):
            yield event
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]


def _finish(state: RouterState, ctx: RequestContext, served: list[Backend], end: _Outcome, start: float,
            label: str, held: Sequence[Any] = (None, ()), trace: RequestTrace | None = None) -> None:
    latency = time.perf_counter() - start
    where = served[-1] if served else None
    label = ctx.variant or label  # the variant that served, else the deployment
    state.metrics.observe(label, where.target if where else "none", where.zone if where else "none", end.status,
                          latency)
    if trace is not None:
        _end_trace(trace, ctx, end, where)
    if state.audit is None and state.spend is None:
        return
    if end.status == 401 and ctx.tenant == "-":  # never authenticated: counted, so strangers cannot flush the trail
        if state.audit is not None:
            state.audit.unauthenticated()
        return
    ctx.usage(end.usage)  # a backend's token counts, only where they are counts
    record = ctx.finish(status=end.status, outcome=end.outcome, latency_ms=round(latency * 1000, 3))
    if state.audit is not None:
        try:
            state.audit.write(record)
        except Exception:  # the answer is decided; the `send` line already holds where the payload went
            log.exception("audit write failed for request %s", ctx.request_id)
    if state.spend is not None:
        try:
            # the backends that answered first: a by-model route may hold one target under two deployments
            state.spend.settle(record, (*served, *held[1]), held[0])
        except Exception:  # the answer is decided; a reservation not reconciled only holds budget longer
            log.exception("ledger entry failed for request %s", ctx.request_id)


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


def _end_trace(trace: RequestTrace, ctx: RequestContext, end: _Outcome, where: Backend | None) -> None:
    """End the request's spans; never let tracing fail a request."""
    try:
        if ctx.locale is not None:  # the deployment that served its locale: the variant, or the base after all
            trace.span.set_attribute("sovra.variant", ctx.variant or ctx.deployment or "")
        trace.span.set_attribute("sovra.residency", ctx.residency)  # the bound applied, after a fallback too
        ctx.usage(end.usage)
        tokens = (ctx.prompt_tokens, ctx.completion_tokens)
        price = where.usd_per_1k_tokens if where is not None else None
        trace.finish(status=end.status, outcome=end.outcome, usage=tokens, response_model=_model_name(end.model),
                     served=where,
                     cost_usd=round(sum(tokens) * price / 1000, 9) if price else (0.0 if where else None))
    except Exception:
        log.warning("ending the trace of request %s failed", ctx.request_id, exc_info=True)


_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")


def _model_name(value: Any) -> str | None:
    """The answer's `model` as a span may carry it: a model's name, or nothing (it is the backend's text)."""
    return value if isinstance(value, str) and _MODEL_NAME.match(value) else None


def _error(exc: RouterError, extra: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers={**_where(None), **exc.headers, **(extra or {})})


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(_Simple(404, "not_found", f"no route {request.url.path}"))


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return _error(_Simple(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}"))


class _Simple(RouterError):
    type = "invalid_request_error"

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code
