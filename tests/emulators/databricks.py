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

Chat follows the Foundation Model APIs' OpenAI-shaped chat task (docs.databricks.com/machine-learning/
foundation-model-apis/api-reference, "Chat request" / "Chat response"): `tools` (function tools) with `tool_choice`
`required` or a named function is answered with `tool_calls` and `finish_reason: tool_calls` (in a stream: one
delta naming the call, then its arguments); `response_format` json_object / json_schema gets a JSON object as
content; a malformed tool is a 400 INVALID_PARAMETER_VALUE. Note that databricks-sdk's `serving_endpoints.query()`
has no `tools`, `tool_choice`, `response_format` or `top_p` parameter (databricks/sdk/service/serving.py), which is
one reason the adapter posts the body itself.
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
    """The echo model: the last user turn, prefixed, so tests can assert what was answered (a tool's result when
    the conversation ends with one)."""
    if messages and messages[-1].get("role") == "tool":
        return f"echo: tool said {messages[-1].get('content')}"
    last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    return f"echo: {last if isinstance(last, str) else json.dumps(last)}"


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The call the echo model makes when the request forces one: the named (or first) function, its first
    required parameter set to the last user text."""
    choice, tools = body.get("tool_choice"), body.get("tools") or []
    if not tools or not (choice == "required" or isinstance(choice, dict)):
        return None
    named = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    fn = next((t["function"] for t in tools if t["function"]["name"] == named), tools[0]["function"])
    required = (fn.get("parameters") or {}).get("required") or ["input"]
    last = next((m.get("content") for m in reversed(body["messages"]) if m.get("role") == "user"), "")
    return {"id": "call_emulated_1", "type": "function",
            "function": {"name": fn["name"], "arguments": json.dumps({required[0]: last})}}


def _json_content(body: dict[str, Any], text: str) -> str:
    """Structured output: a JSON object whose required fields (or `answer`) hold the echo."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") not in ("json_object", "json_schema"):
        return text
    required = ((fmt.get("json_schema") or {}).get("schema") or {}).get("required") or ["answer"]
    return json.dumps({key: text for key in required})


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
        if any(t.get("type") != "function" or not (t.get("function") or {}).get("name")
               for t in body.get("tools") or ()):
            return _error(400, "INVALID_PARAMETER_VALUE", "Each tool must be {type: function, function: {name}}.")
        call = _tool_call(body)
        text = "" if call else _json_content(body, reply(body["messages"]))
        usage = {"prompt_tokens": len(json.dumps(body["messages"]).split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream"):
            return StreamingResponse(self._events(name, text, usage, call), media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": None if call else text}
        if call:
            message["tool_calls"] = [call]
        return JSONResponse({"id": "chatcmpl-emu", "object": "chat.completion", "created": int(time.time()),
                             "model": name, "usage": usage,
                             "choices": [{"index": 0, "finish_reason": "tool_calls" if call else "stop",
                                          "message": message}]})

    async def _events(self, name: str, text: str, usage: dict[str, int], call: dict[str, Any] | None = None):
        base = {"id": "chatcmpl-emu", "object": "chat.completion.chunk", "created": int(time.time()), "model": name}
        if call:
            args = call["function"]["arguments"]
            deltas = [{"role": "assistant", "tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                                              "function": {"name": call["function"]["name"],
                                                                           "arguments": ""}}]},
                      {"tool_calls": [{"index": 0, "function": {"arguments": args}}]}]
        else:
            deltas = [{"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
                      for i, word in enumerate(text.split(" "))]
        for delta in deltas:
            yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n"
        finish = "tool_calls" if call else "stop"
        end = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}], "usage": usage}
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
