"""The audit trail read through the router, wherever it runs: `GET /v1/audit` (records), `GET /v1/audit/verify`
(every chain), `POST /v1/audit/verify` (the same, and that the trail still extends a signed checkpoint given in the
body), `GET /v1/audit/checkpoint` (the router's signed heads, `audit_sign`).

Only admins (org.yaml `admins`) may read it; a tenant's key gets 403. An open router (no tenants, loopback only)
with no admins is open here too.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sovra.orchestrator.router.audit import AuditLog, Filter, now_iso
from sovra.orchestrator.router.audit_nodes import ClusterTrail, FanOut, other_nodes_missing
from sovra.orchestrator.router.audit_sign import CheckpointError, Signer, check, fingerprint
from sovra.core.api_errors import BadRequest, RouterError, Unauthorized
from sovra.orchestrator.router.tenants import bearer_digest
from sovra.core.spec.org import Admin, Tenant

MAX_LIMIT = 100_000
_QUERY = ("tenant", "deployment", "model", "zone", "status", "since", "limit")
_NO_TARGET = {"X-Sovra-Target": "none", "X-Sovra-Zone": "none"}


class NotAdmin(RouterError):
    status, type, code = 403, "permission_error", "admin_key_required"


class NoAdmins(RouterError):
    status, type, code = 403, "permission_error", "no_admins_configured"


class AuditDisabled(RouterError):
    status, type, code = 503, "service_unavailable", "audit_not_configured"


class AuditIncomplete(RouterError):
    status, type, code = 503, "service_unavailable", "audit_incomplete"


@dataclass(frozen=True)
class AdminGuard:
    """Decides who may read the trail. Keys are compared as sha256 digests, every one of them, in constant time."""

    admin_digests: tuple[str, ...]
    tenant_digests: tuple[str, ...]
    open_router: bool

    @classmethod
    def of(cls, admins: Sequence[Admin], tenants: Sequence[Tenant], *, open_router: bool) -> AdminGuard:
        return cls(tuple(a.key_sha256 for a in admins), tuple(t.key_sha256 for t in tenants), open_router)

    def check(self, authorization: str | None) -> None:
        """Return if the caller may read the trail; raise the 401/403 to answer otherwise."""
        if not self.admin_digests:
            if self.open_router:
                return
            raise NoAdmins("no admins are configured: add `admins: [{name, key_sha256}]` to org.yaml and redeploy "
                           "the router (`sovra serve --org org.yaml`) to read the audit trail through it")
        digest = bearer_digest(authorization, "admin key (`sovra audit` sends $SOVRA_ADMIN_KEY)")
        if _any_equal(digest, self.admin_digests):
            return
        if _any_equal(digest, self.tenant_digests):
            raise NotAdmin("a tenant key cannot read the audit trail: use a key listed under `admins` in org.yaml")
        raise Unauthorized("invalid admin key")


def _any_equal(digest: str, digests: tuple[str, ...]) -> bool:
    found = False
    for known in digests:  # no early exit: the time taken says nothing about which key matched
        found |= hmac.compare_digest(digest, known)
    return found


def audit_routes(log: AuditLog | None, admins: Sequence[Admin], *, open_router: bool,
                 tenants: Sequence[Tenant] = (), signer: Signer | None = None,
                 fan_out: FanOut | None = None) -> list[Route]:
    """The routes, to mount in the router app. `tenants` lets a tenant's key get 403 rather than 401; without a
    `signer` the router signs no checkpoints; `fan_out` reads the other nodes' chains (`audit_nodes`)."""
    guard = AdminGuard.of(admins, tenants, open_router=open_router)
    cluster = (ClusterTrail(log, signer.public_key if signer else None, **({"fan_out": fan_out} if fan_out else {}))
               if log is not None else None)

    async def records(request: Request) -> Response:
        try:
            trail = _authorized(guard, log, request)
            flt, limit = _query(request.query_params)
            assert cluster is not None
            result, missing = await run_in_threadpool(cluster.read, flt, limit)  # file I/O off the event loop
        except RouterError as exc:
            return _error(exc)
        return JSONResponse({"file": str(trail.path), "torn": result.torn, "files": list(result.files),
                             "unauthenticated": result.unauthenticated, "records": list(result.records),
                             "incomplete": other_nodes_missing(missing)}, headers=_NO_TARGET)

    async def verify(request: Request) -> Response:
        try:
            trail = _authorized(guard, log, request)
            if request.query_params:
                raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(request.query_params))}")
            expect = None
            assert cluster is not None
            if request.method == "POST":
                body = await request.body()
                expect = _checkpoint_heads(body, signer, await run_in_threadpool(cluster.public_keys))
            result = await run_in_threadpool(cluster.verify, expect)
        except RouterError as exc:
            return _error(exc)
        return JSONResponse({"file": str(trail.path), "writer": trail.writer, **result.to_json()},
                            headers=_NO_TARGET)

    async def checkpoint(request: Request) -> Response:
        try:
            trail = _authorized(guard, log, request)
            if signer is None:
                raise AuditDisabled("this router has no checkpoint key: it signs no checkpoints")
            assert cluster is not None
            heads, missing = await run_in_threadpool(cluster.heads)
            if missing:  # a checkpoint that leaves out a node's chains would prove nothing about them
                raise AuditIncomplete(f"cannot sign a checkpoint of the whole trail: {other_nodes_missing(missing)}")
        except RouterError as exc:
            return _error(exc)
        return JSONResponse(signer.sign(heads, time=now_iso()), headers=_NO_TARGET)

    return [Route("/v1/audit", records, methods=["GET"]),
            Route("/v1/audit/verify", verify, methods=["GET", "POST"]),
            Route("/v1/audit/checkpoint", checkpoint, methods=["GET"])]


MAX_CHECKPOINT_BYTES = 1_048_576


def _checkpoint_heads(raw: bytes, signer: Signer | None, keys: set[str]) -> dict:
    """The heads of a posted checkpoint, which the key of a router of this cluster must have signed (`keys`: each
    node's router has its own)."""
    if signer is None:
        raise AuditDisabled("this router has no checkpoint key, so it cannot check a checkpoint")
    if len(raw) > MAX_CHECKPOINT_BYTES:
        raise BadRequest(f"a checkpoint is at most {MAX_CHECKPOINT_BYTES} bytes")
    try:
        data = json.loads(raw)
        heads = check(data)
    except ValueError:
        raise BadRequest("the body is not a JSON checkpoint (from `sovra audit checkpoint`)") from None
    except CheckpointError as exc:
        raise BadRequest(str(exc)) from None
    if data.get("public_key") not in keys:
        known = ", ".join(sorted(fingerprint(k) for k in keys))
        raise BadRequest(f"the checkpoint was signed by key {fingerprint(str(data.get('public_key')))}, not by this "
                         f"trail's router (no router of this cluster holds it; theirs: {known})")
    return heads


def _authorized(guard: AdminGuard, log: AuditLog | None, request: Request) -> AuditLog:
    guard.check(request.headers.get("authorization"))
    if log is None:
        raise AuditDisabled("this router writes no audit trail: it was started without an audit path")
    return log


def _query(params: Mapping[str, str]) -> tuple[Filter, int]:
    unknown = sorted(set(params) - set(_QUERY))
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(unknown)}; known: {', '.join(_QUERY)}")
    try:
        status = _int(params, "status")
        limit = _int(params, "limit") or 100
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit: {limit} is not between 1 and {MAX_LIMIT}")
        flt = Filter(tenant=params.get("tenant"), deployment=params.get("deployment"), model=params.get("model"),
                     zone=params.get("zone"), status=status, since=params.get("since"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return flt, limit


def _int(params: Mapping[str, str], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a whole number") from None


def _error(exc: RouterError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers={**_NO_TARGET, **exc.headers})
