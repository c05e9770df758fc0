"""A deterministic OpenAI-compatible backend for routing tests (never a product default), and a uvicorn runner."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route


#: What an overloaded OpenAI-compatible server answers with its 503: it did not take the request on.
OVERLOADED = {"error": {"message": "The server is overloaded or not ready yet.", "type": "server_error"}}


@dataclass
class FakeBackend:
    """Answers `served-by <name>`; records every payload it received; can be switched to fail (`failing`: refuse
    as an overloaded server does, which may be resent elsewhere; `status`: any other error status)."""

    name: str
    received: list[dict] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)  # the Authorization header of each request
    traceparent: list[str | None] = field(default_factory=list)  # the W3C trace context of each request
    tracestate: list[str | None] = field(default_factory=list)
    model_name: str | None = None  # answer with this `model` instead of the one asked for (a hostile backend's text)
    failing: bool = False
    delay_s: float = 0.0
    chunk_gap_s: float = 0.0  # pause between streamed chunks
    odd_error: bool = False   # answer 400 with `{"error": "text"}`, a shape some servers send
    status: int | None = None  # answer this status with a plain error body (a bare 503, a gateway's 504, ...)
    error_body: dict | None = None  # ... or with this body
    error_html: str | None = None  # ... or with this HTML page, as a proxy in front of a server answers (nginx's 413)
    retry_after: str | None = None  # ... with this Retry-After header

    def _error(self) -> Response:
        if self.error_html is not None:
            return HTMLResponse(self.error_html, status_code=self.status or 500)
        body = self.error_body or {"error": {"message": f"HTTP {self.status}", "type": "api_error"}}
        headers = {"Retry-After": self.retry_after} if self.retry_after else None
        return JSONResponse(body, status_code=self.status or 500, headers=headers)

    def app(self) -> Starlette:
        async def chat(request: Request):
            body = await request.json()
            self.received.append(body)
            self.authorization.append(request.headers.get("authorization"))
            self.traceparent.append(request.headers.get("traceparent"))
            self.tracestate.append(request.headers.get("tracestate"))
            if self.failing:
                return JSONResponse(OVERLOADED, status_code=503)
            if self.status is not None:
                return self._error()
            if self.odd_error:
                return JSONResponse({"error": "quota text, not an object"}, status_code=400)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            text = f"served-by {self.name}"
            if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
                text = json.dumps({"served_by": self.name})
            usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            calls = _tool_calls(body, self.name)
            finish = "tool_calls" if calls else "stop"
            if body.get("stream"):
                return StreamingResponse(_events(body, text, calls, usage, self.chunk_gap_s),
                                         media_type="text/event-stream")
            message = {"role": "assistant", "content": None if calls else text}
            if calls:
                message["tool_calls"] = calls
            choice = {"index": 0, "finish_reason": finish, "message": message}
            if body.get("logprobs") and not calls:
                choice["logprobs"] = {"content": [_logprob(w, body) for w in _words(text)]}
            return JSONResponse({"id": "c1", "object": "chat.completion", "created": int(time.time()),
                                 "model": self.model_name or body["model"], "usage": usage, "choices": [choice]})

        async def embeddings(request: Request):
            body = await request.json()
            self.received.append(body)
            self.authorization.append(request.headers.get("authorization"))
            self.traceparent.append(request.headers.get("traceparent"))
            self.tracestate.append(request.headers.get("tracestate"))
            if self.failing:
                return JSONResponse(OVERLOADED, status_code=503)
            if self.status is not None:
                return self._error()
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            return JSONResponse({"object": "list", "model": body["model"],
                                 "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
                                 "data": [{"object": "embedding", "index": i,
                                           "embedding": [float(len(s)), 1.0, 0.0]} for i, s in enumerate(inputs)]})

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                                 Route("/v1/embeddings", embeddings, methods=["POST"])])


def _words(text: str) -> list[str]:
    return [(" " if i else "") + w for i, w in enumerate(text.split(" "))]


def _logprob(token: str, body: dict) -> dict:
    """A made-up log probability in chat's `logprobs.content` shape (openai/types/chat/chat_completion_token_logprob.py)."""
    top = [{"token": token, "logprob": -0.25, "bytes": list(token.encode())}][:int(body.get("top_logprobs") or 0)]
    return {"token": token, "logprob": -0.25, "bytes": list(token.encode()), "top_logprobs": top}


def _tool_calls(body: dict, name: str) -> list[dict]:
    """As OpenAI answers when `tools` are given (and `tool_choice` is not "none"): one call to the tool `tool_choice`
    names, else to the first, with arguments naming the backend."""
    tools, choice = body.get("tools") or [], body.get("tool_choice")
    if not tools or choice == "none":
        return []
    chosen = choice["function"]["name"] if isinstance(choice, dict) else tools[0]["function"]["name"]
    return [{"id": "call_1", "type": "function",
             "function": {"name": chosen, "arguments": json.dumps({"served_by": name})}}]


async def _events(body: dict, text: str, calls: list[dict], usage: dict, gap_s: float):
    """A chat stream as OpenAI sends it: content (or tool-call) deltas, the finish reason, then, only when
    `stream_options.include_usage` is set, a last chunk with no choices and the usage
    (openai/types/chat/chat_completion_stream_options_param.py)."""
    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, **extra}
        return "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 0,
                                      "model": body["model"], "choices": [choice]}) + "\n\n"

    if calls:
        call = calls[0]
        yield chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"],
                                                                           "arguments": ""}}]})
        args = call["function"]["arguments"]
        for piece in (args[:len(args) // 2], args[len(args) // 2:]):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    else:
        for word in _words(text):
            if gap_s:
                await asyncio.sleep(gap_s)
            extra = {"logprobs": {"content": [_logprob(word, body)]}} if body.get("logprobs") else {}
            yield chunk({"content": word}, **extra)
    yield chunk({}, "tool_calls" if calls else "stop")
    if (body.get("stream_options") or {}).get("include_usage"):
        yield "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 0,
                                     "model": body["model"], "choices": [], "usage": usage}) + "\n\n"
    yield "data: [DONE]\n\n"


class ServerThread:
    """Serve an ASGI app on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, app, port: int = 0, host: str = "127.0.0.1"):
        # lifespan "auto": an app's shutdown hook (the router closes its backend connections) runs on __exit__
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    lifespan="auto"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
