"""A Databricks workspace's Model Serving on 127.0.0.1, speaking the real REST paths so that databricks-sdk and
the adapter run unpatched (point DATABRICKS_HOST at `emulator.host`, DATABRICKS_TOKEN at `emulator.token`).

Served: `GET /.well-known/databricks-config` (the SDK's host-metadata probe), `GET /api/2.0/serving-endpoints`,
`GET /api/2.0/serving-endpoints/{name}`, `POST /serving-endpoints/{name}/invocations` (chat as JSON or as
server-sent events, embeddings), and the compliance-security-profile setting
`GET /api/2.0/settings/types/shield_csp_enablement_ws_db/names/default`. Every path checks the bearer token and
answers errors in Databricks' shape (`{"error_code", "message"}`).

Faults (set `emulator.fault`, cleared with None): "throttle" (429 REQUEST_LIMIT_EXCEEDED with Retry-After),
"unavailable" (503 TEMPORARILY_UNAVAILABLE), "server_error" (500), "gateway_timeout" (a gateway's 504),
"bare_unavailable" (a gateway's 503, with no code and no Retry-After), "unauthorized" (403 with any token), "slow"
(answers after `delay_s`), "malformed" (200 with a body that is not JSON), "bad_request" (400 on invocations).
An unknown endpoint name is a 404 RESOURCE_DOES_NOT_EXIST; `closed_url()` is a port nothing listens on.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Self

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.openai_backend import ServerThread

CHAT, EMBEDDINGS = "llm/v1/chat", "llm/v1/embeddings"
DEFAULT_ENDPOINTS = {"databricks-meta-llama-3-3-70b-instruct": CHAT, "databricks-meta-llama-3-1-8b-instruct": CHAT,
                     "databricks-llama-4-maverick": CHAT, "databricks-gte-large-en": EMBEDDINGS}
FAULTS = (None, "throttle", "unavailable", "server_error", "unauthorized", "slow", "malformed", "bad_request")


def reply(messages: list[dict[str, Any]]) -> str:
    """The echo model: the last user turn, prefixed, so tests can assert what was answered."""
    last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    return f"echo: {last if isinstance(last, str) else json.dumps(last)}"


def vector(text: str) -> list[float]:
    """A deterministic 4-dimensional embedding."""
    return [float(len(text)), float(sum(map(ord, text)) % 997), 1.0, 0.0]


def closed_url() -> str:
    """A URL on 127.0.0.1 whose port was just released: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error_code": code, "message": message}, status_code=status, headers=headers)


@dataclass
class DatabricksEmulator:
    """The workspace; a context manager that serves it on a free port. `received` records every invocation body,
    so a test can prove a payload was sent exactly once."""

    token: str = "fake-databricks-token-for-tests"
    endpoints: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ENDPOINTS))
    not_ready: set[str] = field(default_factory=set)
    compliance_profile: bool = False
    workspace_id: str = "1234567890123456"
    fault: str | None = None
    retry_after: str = "7"
    delay_s: float = 1.0
    sse_done: bool = True  # end streams with `data: [DONE]` (False: the stream just ends)
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _server: ServerThread | None = field(default=None, repr=False)

    def __enter__(self) -> Self:
        self._server = ServerThread(self.app()).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.__exit__(*exc)

    @property
    def host(self) -> str:
        assert self._server is not None, "use the emulator as a context manager"
        return self._server.url

    def invocations(self, name: str) -> list[dict[str, Any]]:
        return [body for n, body in self.received if n == name]

    # -- the app -----------------------------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/.well-known/databricks-config", self._metadata, methods=["GET"]),
            Route("/api/2.0/serving-endpoints", self._list, methods=["GET"]),
            Route("/api/2.0/serving-endpoints/{name}", self._get, methods=["GET"]),
            Route("/serving-endpoints/{name}/invocations", self._invoke, methods=["POST"]),
            Route("/api/2.0/settings/types/shield_csp_enablement_ws_db/names/default", self._csp, methods=["GET"]),
        ])

    def _denied(self, request: Request) -> Response | None:
        auth = request.headers.get("authorization")
        if not auth:
            return _error(401, "UNAUTHENTICATED", "Credential was not sent or was of an unsupported type.")
        if self.fault == "unauthorized" or auth != f"Bearer {self.token}":
            return _error(403, "PERMISSION_DENIED", "Invalid access token.")
        return None

    async def _common_fault(self) -> Response | None:
        if self.fault == "throttle":
            return _error(429, "REQUEST_LIMIT_EXCEEDED", "Exceeded workspace rate limit; please retry later.",
                          {"Retry-After": self.retry_after})
        if self.fault == "unavailable":
            return _error(503, "TEMPORARILY_UNAVAILABLE", "The service is temporarily unavailable.",
                          {"Retry-After": self.retry_after})
        if self.fault == "server_error":
            return _error(500, "INTERNAL_ERROR", "Internal error.")
        if self.fault == "gateway_timeout":  # a gateway in front of the endpoint gave up waiting on it
            return Response(b"upstream request timeout", status_code=504, media_type="text/plain")
        if self.fault == "bare_unavailable":  # a 503 with no sign that the request was not processed
            return Response(b"upstream connect error or disconnect/reset before headers", status_code=503,
                            media_type="text/plain")
        if self.fault == "slow":
            await asyncio.sleep(self.delay_s)
        if self.fault == "malformed":
            return Response(b'{"choices": [', media_type="application/json")
        return None

    async def _metadata(self, request: Request) -> Response:
        return JSONResponse({"workspace_id": self.workspace_id, "cloud": "AWS"})

    def _describe(self, name: str) -> dict[str, Any]:
        ready = "NOT_READY" if name in self.not_ready else "READY"
        return {"name": name, "id": f"id-{name}", "creator": "emulator", "task": self.endpoints[name],
                "state": {"ready": ready, "config_update": "NOT_UPDATING"},
                "config": {"served_entities": [{"name": name, "entity_name": f"system.ai.{name}"}]}}

    async def _list(self, request: Request) -> Response:
        return self._denied(request) or await self._common_fault() or JSONResponse(
            {"endpoints": [self._describe(n) for n in sorted(self.endpoints)]})

    async def _get(self, request: Request) -> Response:
        name = request.path_params["name"]
        if denied := self._denied(request) or await self._common_fault():
            return denied
        if name not in self.endpoints:
            return _error(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist.")
        return JSONResponse(self._describe(name))

    async def _csp(self, request: Request) -> Response:
        return self._denied(request) or await self._common_fault() or JSONResponse(
            {"setting_name": "default", "etag": "1",
             "compliance_security_profile_workspace": {"is_enabled": self.compliance_profile,
                                                       "compliance_standards": []}})

    async def _invoke(self, request: Request) -> Response:
        name = request.path_params["name"]
        if denied := self._denied(request):
            return denied
        if name not in self.endpoints:
            return _error(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist.")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "BAD_REQUEST", "Request body is not valid JSON.")
        self.received.append((name, body))
        if fault := await self._common_fault():
            return fault
        if self.fault == "bad_request":
            return _error(400, "INVALID_PARAMETER_VALUE", "Invalid request: unexpected field(s).")
        if self.endpoints[name] == EMBEDDINGS:
            return self._embeddings(name, body)
        if "messages" not in body:
            return _error(400, "BAD_REQUEST", "Missing required field: messages.")
        text = reply(body["messages"])
        usage = {"prompt_tokens": len(json.dumps(body["messages"]).split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream"):
            return StreamingResponse(self._events(name, text, usage), media_type="text/event-stream")
        return JSONResponse({"id": "chatcmpl-emu", "object": "chat.completion", "created": int(time.time()),
                             "model": name, "usage": usage,
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}]})

    async def _events(self, name: str, text: str, usage: dict[str, int]):
        base = {"id": "chatcmpl-emu", "object": "chat.completion.chunk", "created": int(time.time()), "model": name}
        for i, word in enumerate(text.split(" ")):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
            yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n"
        end = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
        yield f"data: {json.dumps(end)}\n\n"
        if self.sse_done:
            yield "data: [DONE]\n\n"

    def _embeddings(self, name: str, body: dict[str, Any]) -> Response:
        value = body.get("input")
        inputs = [value] if isinstance(value, str) else list(value or [])
        if not inputs:
            return _error(400, "BAD_REQUEST", "Missing required field: input.")
        tokens = sum(len(str(s).split()) for s in inputs)
        return JSONResponse({"object": "list", "model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                             "data": [{"object": "embedding", "index": i, "embedding": vector(str(s))}
                                      for i, s in enumerate(inputs)]})
