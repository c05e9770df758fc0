"""The model server's own OpenAI-compatible HTTP surface, for Ray clusters the router reaches over HTTP rather than
by Serve handle (a KubeRay cluster Sovra provisioned). Only the router calls it; residency is decided there.

`respond` answers one request for a `ModelServer`; the Serve deployment (`ray_apps.model_http`) calls it from
`__call__`, and `create_app` wraps it as a plain ASGI app for tests and for running it without Serve.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sovra.orchestrator.router.body import json_object, refuse_declared, refuse_over
from sovra.core.api_errors import RouterError
from sovra.core.service_keys import (  # noqa: F401  (the server's key vocabulary, named here too)
    FROM_RAY_TOKEN,
    KEY_VARIABLE,
    REPLICA_PURPOSE,
    SERVICE_KEY_ENV,
    SERVICE_PURPOSE,
    derive_key,
)

if TYPE_CHECKING:
    from sovra.orchestrator.serving.ray_apps import ModelServer


class _NotFound(RouterError):
    status, type, code = 404, "invalid_request_error", "not_found"


class _EngineRefused(RouterError):
    status, type, code = 400, "invalid_request_error", "unsupported"


async def respond(server: ModelServer, request: Request) -> Response:
    """Answer `request` (OpenAI's chat, embeddings and models paths, and `/healthz`); errors in OpenAI's shape."""
    from sovra.orchestrator.serving.engines import EngineError

    try:
        _authorize(request)
        route = (request.method, _path(request))
        if route == ("GET", "/healthz"):
            report = await server.health()  # the engine's own check: no payload
            return JSONResponse(report, status_code=200 if report["ok"] else 503)
        if route == ("GET", "/v1/models"):
            return JSONResponse({"object": "list", "data": [{"id": server.model, "object": "model",
                                                             "owned_by": "sovra"}]})
        if route == ("POST", "/v1/chat/completions"):
            body = await read_json(request)
            if body.get("stream") is True:
                chunks = server.chat_stream(body)
                # the first chunk before the status line: an engine's refusal of the request is still a 400
                first = await anext(chunks, None)
                return StreamingResponse(_sse(_then(first, chunks)), media_type="text/event-stream")
            return JSONResponse(await server.chat(body))
        if route == ("POST", "/v1/embeddings"):
            return JSONResponse(await server.embed(await read_json(request)))
        raise _NotFound(f"no route {request.method} {request.url.path}; this model server answers "
                        "POST /v1/chat/completions, POST /v1/embeddings, GET /v1/models and GET /healthz")
    except RouterError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    except EngineError as exc:
        return JSONResponse(_EngineRefused(str(exc)).body(), status_code=400)


class _Unauthorized(RouterError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


def install_replica_key(variable: str = KEY_VARIABLE, purpose: bytes = REPLICA_PURPOSE) -> None:
    """Put the key for `purpose` in this process's `variable` (a replica checks KEY_VARIABLE), derived from the
    Ray cluster's auth token: an HMAC of it, so the key is never written anywhere (not in the Serve config, not in
    Ray's logs, which print runtime environments) and only processes holding the token, which controls the cluster
    anyway, can compute it. Run in the router and in each replica of a cluster whose replicas answer over HTTP
    (`infra.serve_config.ServeHttp`), and in a router that reaches KubeRay services with a derived key."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not token and path:
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
    if not token:
        raise RuntimeError("this Ray has no auth token (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) to derive the "
                           "key from; start Ray with token authentication and one of those variables set on its "
                           "nodes (Sovra's local Ray has it), or name the key's variable in org.yaml "
                           "(`provision: {api_key_env: ...}` for a KubeRay cluster)")
    os.environ[variable] = derive_key(token, purpose)


def require_key() -> None:
    """The model server answers only callers holding its key: refuse to start without one rather than answer
    anyone who can reach it."""
    if not os.environ.get(KEY_VARIABLE, "").strip():
        raise RuntimeError(f"the model server refuses to start without a key: ${KEY_VARIABLE} is not set (on a "
                           "KubeRay cluster it comes from the Kubernetes Secret Sovra provisions; behind Serve's "
                           "HTTP ingress it is derived from the Ray token)")


class _NoKey(RouterError):
    status, type, code = 503, "api_error", "server_key_missing"


def _authorize(request: Request) -> None:
    """Every call (health included) must carry the server's key as a bearer token; with none configured (it was
    removed after start) the server answers no one."""
    key = os.environ.get(KEY_VARIABLE, "")
    if not key.strip():
        raise _NoKey(f"this model server has no key (${KEY_VARIABLE}), so it answers no one")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
        raise _Unauthorized("this model server requires its key (Authorization: Bearer ...)")


def _path(request: Request) -> str:
    """The path under the app's route prefix (ASGI `root_path`; Serve sets it), so the server answers the same
    at `/` (as KubeRay runs it) and under any prefix."""
    path, root = request.scope.get("path", "/"), request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path.rstrip("/") or "/"


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object, read with the router's bound (never whole first)."""
    refuse_declared(request.headers.get("content-length"))
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        refuse_over(size)
        parts.append(chunk)
    return json_object(b"".join(parts))


async def _then(first: dict[str, Any] | None, rest: AsyncIterator[dict[str, Any]]
                ) -> AsyncIterator[dict[str, Any]]:
    """`first`, then the rest of the stream it came from."""
    try:
        if first is None:
            return
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Server-sent events as OpenAI sends them; an engine failure mid-stream ends it with an error event, so the
    router sees a broken stream (after the payload was received: never resent)."""
    try:
        async for chunk in chunks:
            yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    except Exception as exc:  # noqa: BLE001  (the status line is sent: an error event is all that is left)
        error = {"error": {"message": f"the engine failed mid-stream: {type(exc).__name__}", "type": "api_error",
                           "code": "engine_error"}}
        yield b"data: " + json.dumps(error).encode() + b"\n\n"
        return
    yield b"data: [DONE]\n\n"


def create_app(server: ModelServer) -> Starlette:
    """`respond` as an ASGI app (every path goes to it); refused without a key, as the Serve deployment is."""
    require_key()

    async def endpoint(request: Request) -> Response:
        return await respond(server, request)

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])
