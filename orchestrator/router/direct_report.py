"""`POST /v1/audit/report`: a direct-mode client's account of one request, written into the router's audit trail.

In direct mode the payload never passes through the router, so the SDK reports what it did after each call: the
deployment it addressed, the `X-Sovra-Residency` it narrowed by, and every attempt (target and outcome). The router
trusts none of the rest: the tenant is the key's, the bound is recomputed from the tenant, the header and the
deployment, each reported target must be a backend that bound allows and direct mode can call (what `/v1/routes`
gave that tenant), and zone and country come from the router's own table. A report outside that is refused
whole. Reported records carry a request id starting `direct:`, so the trail tells them from what the router saw.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sovra.orchestrator.router.audit import OUTCOMES, RequestContext
from sovra.orchestrator.router.body import json_object, refuse_declared, refuse_over
from sovra.core.api_errors import BadRequest, DirectModeDisabled, RouterError
from sovra.orchestrator.router.gate import MAX_HEADERS, RequestResidency

if TYPE_CHECKING:
    from sovra.orchestrator.router.app import RouterState

log = logging.getLogger("sovra.router")

#: A report is a few attempts' metadata: anything bigger is not one.
MAX_REPORT_BYTES = 16_384
MAX_ATTEMPTS = 32
PREFIX = "direct:"
_NO_TARGET = {"X-Sovra-Target": "none", "X-Sovra-Zone": "none"}
_ID = r"^[A-Za-z0-9._:-]{1,120}$"


class ReportedAttempt(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    target: str = Field(min_length=1, max_length=256)
    outcome: Literal[tuple(sorted(OUTCOMES))]  # type: ignore[valid-type]


class Report(BaseModel):
    """One direct-mode request as its client saw it. Metadata only: the fields are fixed, no payload fits."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: str = Field(pattern=_ID)
    model: str = Field(min_length=1, max_length=256, description="What the app addressed, as in a request.")
    residency: tuple[str, ...] = Field(default=(), max_length=MAX_HEADERS,
                                       description="The X-Sovra-Residency values the app narrowed by.")
    attempts: tuple[ReportedAttempt, ...] = Field(max_length=MAX_ATTEMPTS)
    status: int = Field(ge=100, le=599)
    outcome: str = Field(pattern=r"^[a-z_]{1,64}$")
    latency_ms: float = Field(ge=0, le=86_400_000)
    prompt_tokens: int = Field(default=0, ge=0, le=1_000_000_000)
    completion_tokens: int = Field(default=0, ge=0, le=1_000_000_000)


async def report(state: RouterState, request: Request) -> Response:
    """Authenticate, check the report against the tenant's own table, write one record; 204 when written."""
    try:
        tenant = state.tenants.authenticate(request.headers.get("authorization"))
        if not state.direct_mode:
            raise disabled()
        body = await _read(request)
        try:
            got = Report.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise BadRequest(f"report: {'.'.join(str(p) for p in first['loc']) or 'body'}: {first['msg']}") from None
        route = state.dispatcher.table.resolve(got.model, state.tenants.visible(tenant))
        bound = RequestResidency.build(tenant.residency, got.residency or None).bound_by(route.residency)
        reachable = {}
        for b in route.backends:
            if bound.permits(b.place) and state.direct_view(b) is not None:
                reachable.setdefault(b.target, b)
        outside = sorted({a.target for a in got.attempts if a.target not in reachable})
        if outside:
            raise BadRequest(f"report: {', '.join(outside)[:500]} is not a backend of {route.name!r} that your "
                             f"direct mode may call within {bound.describe()}; nothing was recorded")
        if state.audit is None:
            from sovra.orchestrator.router.audit_api import AuditDisabled

            raise AuditDisabled("this router writes no audit trail: it was started without an audit path")
        ctx = RequestContext(request_id=PREFIX + got.request_id)
        ctx.tenant, ctx.deployment, ctx.model, ctx.residency = tenant.name, route.name, route.model, bound.describe()
        for a in got.attempts:
            b = reachable[a.target]
            ctx.attempt(b.target, b.zone, b.place.country, a.outcome)
        record = ctx.finish(status=got.status, outcome=got.outcome, latency_ms=round(got.latency_ms, 3),
                            prompt_tokens=got.prompt_tokens, completion_tokens=got.completion_tokens)
        try:
            state.audit.write(record)
        except Exception:  # the client must know its request went unrecorded
            log.exception("audit write failed for direct-mode report %s", record.request_id)
            raise _Unwritten("the audit trail could not be written; see the router log") from None
    except RouterError as exc:
        return JSONResponse(exc.body(), status_code=exc.status, headers={**_NO_TARGET, **exc.headers})
    return Response(status_code=204, headers=_NO_TARGET)


class _Unwritten(RouterError):
    status, type, code = 503, "service_unavailable", "audit_unavailable"


_DISABLED = ("direct mode is disabled for this organisation (org.yaml `router: {direct_mode: false}`): every request "
             "goes through the router; use mode='proxy'")


def disabled() -> DirectModeDisabled:
    """The refusal `/v1/routes` and the report endpoint answer when the org turned direct mode off."""
    return DirectModeDisabled(_DISABLED)


async def _read(request: Request) -> dict:
    refuse_declared(request.headers.get("content-length"), MAX_REPORT_BYTES)
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        refuse_over(size, MAX_REPORT_BYTES)
        parts.append(chunk)
    return json_object(b"".join(parts))
