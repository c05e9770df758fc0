"""The OpenAI-compatible backend of `bench/router.py`: a minimal, fast HTTP server in its own process, outside Ray.

    .venv/bin/python bench/openai_echo.py [--port 0] [--api-key-env VAR] [--name TEXT] [--server raw|fastapi]

It stands for the vLLM / NIM / TGI server a user declares under `endpoints:` in org.yaml, doing no work, so that
what a gateway in front of it adds is what is measured. Two HTTP stacks answer the same routes in the same shapes:
  raw      (the default) raw asyncio HTTP/1.1 (uvloop when installed), keep-alive: far faster than any real server,
           so a gateway's own cost is measured at its strictest
  fastapi  FastAPI on uvicorn (one worker, uvloop + httptools when installed, no access log, keep-alive 5 s), as
           vLLM runs its OpenAI server: the HTTP stack of the servers users put behind a gateway
  POST /v1/chat/completions   `served-by <name>` as one JSON answer, or with `"stream": true` as server-sent
                              events (chunked), in the shapes of Sovra's echo engine (`orchestrator/serving/engines/
                              echo.py`); the answer's `model` is the request's
  GET  /v1/models             the one model it has seen asked for (the router's payload-free health probe)
With `--api-key-env VAR`, every request must carry `Authorization: Bearer $VAR` (401 otherwise), as a server with
a key does. It binds 127.0.0.1 on a free port, prints one JSON line `{"ready": true, "url": ...}` and serves until
its stdin closes or it gets SIGTERM: a parent that dies takes it along.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

SERVERS = ("raw", "fastapi")  # --server choices; raw first: the default
MAX_HEAD = 65_536
MAX_BODY = 16 * 1_048_576
USAGE = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           411: "Length Required", 413: "Payload Too Large", 431: "Request Header Fields Too Large"}


def _error(message: str, kind: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind}}).encode()


class EchoApp:
    """What the server answers, given a parsed request (no I/O: the protocol below writes it)."""

    def __init__(self, name: str, api_key: str | None):
        self.name = name
        self.auth = f"Bearer {api_key}" if api_key else None
        self.models: list[str] = []

    def answer(self, method: str, path: str, headers: Mapping[str, str], body: bytes
               ) -> tuple[int, str, list[bytes]]:
        """(status, content type, body parts): one part is a plain body, several are the chunks of a stream."""
        if self.auth is not None and headers.get("authorization") != self.auth:
            return 401, "application/json", [_error("missing or wrong API key", "authentication_error")]
        path = path.split("?", 1)[0]
        if path == "/v1/models":
            if method != "GET":
                return 405, "application/json", [_error("use GET")]
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "sovra-bench"} for m in self.models]
            return 200, "application/json", [json.dumps({"object": "list", "data": data}).encode()]
        if path != "/v1/chat/completions":
            return 404, "application/json", [_error(f"no route {path}")]
        if method != "POST":
            return 405, "application/json", [_error("use POST")]
        try:
            request = json.loads(body)
            model = str(request["model"])
        except (ValueError, KeyError, TypeError):
            return 400, "application/json", [_error("the body must be a JSON object with `model`")]
        if model not in self.models:
            self.models.append(model)
        cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        if request.get("stream"):
            def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
                c: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                if finish:
                    c["usage"] = USAGE
                return b"data: " + json.dumps(c).encode() + b"\n\n"

            return 200, "text/event-stream", [event({"role": "assistant", "content": "served-by"}),
                                              event({"content": " " + self.name}), event({}, "stop"),
                                              b"data: [DONE]\n\n"]
        return 200, "application/json", [json.dumps({
            "id": cid, "object": "chat.completion", "created": created, "model": model, "usage": USAGE,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"served-by {self.name}"}}]}).encode()]


class _Connection(asyncio.Protocol):
    """One client connection: requests parsed as they arrive (pipelined ones too), answered in order."""

    def __init__(self, app: EchoApp):
        self.app = app
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None and not self.transport.is_closing():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._send(431, "application/json", [_error("request head too large")], keep=False)
                return
            try:
                method, target, version, headers = _head(bytes(self.buf[:end]))
                length = int(headers.get("content-length") or 0)
            except ValueError:
                self._send(400, "application/json", [_error("malformed request")], keep=False)
                return
            if "transfer-encoding" in headers:  # the bench's clients and Sovra's router send Content-Length
                self._send(411, "application/json", [_error("send Content-Length")], keep=False)
                return
            if length > MAX_BODY:
                self._send(413, "application/json", [_error("body too large")], keep=False)
                return
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = bytes(self.buf[end + 4:total])
            del self.buf[:total]
            connection = headers.get("connection", "").lower()
            keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
            status, content_type, parts = self.app.answer(method, target, headers, body)
            self._send(status, content_type, parts, keep=keep)

    def _send(self, status: int, content_type: str, parts: list[bytes], *, keep: bool) -> None:
        assert self.transport is not None
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", f"Content-Type: {content_type}"]
        if not keep:
            head.append("Connection: close")
        if len(parts) == 1:
            head.append(f"Content-Length: {len(parts[0])}")
            out = [("\r\n".join(head) + "\r\n\r\n").encode(), parts[0]]
        else:  # a stream: one chunk per event
            head += ["Cache-Control: no-cache", "Transfer-Encoding: chunked"]
            out = [("\r\n".join(head) + "\r\n\r\n").encode()]
            for p in parts:
                out += [f"{len(p):x}\r\n".encode(), p, b"\r\n"]
            out.append(b"0\r\n\r\n")
        self.transport.write(b"".join(out))
        if not keep:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _head(raw: bytes) -> tuple[str, str, str, dict[str, str]]:
    """(method, target, version, lower-cased headers) of a request head; ValueError when it is not HTTP/1.x."""
    request_line, *lines = raw.decode("latin-1").split("\r\n")
    method, target, version = request_line.split(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(version)
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(line)
        headers[name.strip().lower()] = value.strip()
    return method, target, version, headers


async def serve(app: EchoApp, host: str, port: int) -> None:
    """Serve until stdin reaches EOF or SIGTERM/SIGINT; print the ready line once listening."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(app), host, port, backlog=1024)
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)

    def stdin_readable() -> None:
        try:
            if not os.read(sys.stdin.fileno(), 4096):
                done.set()
        except OSError:
            done.set()

    if not sys.stdin.isatty():
        loop.add_reader(sys.stdin.fileno(), stdin_readable)
    bound = server.sockets[0].getsockname()
    print(json.dumps({"ready": True, "url": f"http://{bound[0]}:{bound[1]}", "pid": os.getpid(),
                      "loop": type(loop).__module__.split(".")[0]}), flush=True)
    async with server:
        await done.wait()


def fastapi_app(echo: EchoApp) -> Any:
    """`echo`'s answers through FastAPI: Starlette's routing, `Request`, `Response` and, for a stream, a
    `StreamingResponse` over an async generator (chunked), as vLLM's chat route answers."""
    from fastapi import FastAPI, Request
    from fastapi.responses import Response, StreamingResponse

    api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)  # vLLM's --disable-fastapi-docs

    async def respond(request: Request) -> Response:
        status, content_type, parts = echo.answer(request.method, request.url.path, request.headers,
                                                  await request.body())
        if len(parts) == 1:
            return Response(parts[0], status_code=status, media_type=content_type)

        async def events():
            for part in parts:
                yield part

        return StreamingResponse(events(), status_code=status, media_type=content_type,
                                 headers={"Cache-Control": "no-cache"})

    # FastAPI injects the request by its annotation, which `from __future__ import annotations` left as a string
    # naming a local import: given as the class.
    respond.__annotations__ = {"request": Request, "return": Response}
    api.add_api_route("/v1/chat/completions", respond, methods=["POST"])
    api.add_api_route("/v1/models", respond, methods=["GET"])
    # Anything else (another path, a wrong method, no key): EchoApp's 401/404/405, as the raw server answers.
    api.add_api_route("/{path:path}", respond, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    return api


def _http_impl() -> str:
    """uvicorn's HTTP/1.1 parser as its `http="auto"` picks it: httptools when installed, else h11."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


async def serve_fastapi(app: EchoApp, host: str, port: int) -> None:
    """Serve `fastapi_app(app)` with uvicorn as vLLM's OpenAI server does, until stdin reaches EOF or SIGTERM/SIGINT;
    print the ready line once listening.

    Modelled on vLLM's `vllm/entrypoints/openai/api_server.py` (`run_server` -> `build_and_serve`) and
    `vllm/entrypoints/launcher.py` (`serve_http`): the process runs `uvloop.run(run_server(args))`; `setup_server`
    binds the socket first (SO_REUSEADDR, SO_REUSEPORT); `serve_http` builds `uvicorn.Config(app, host, port,
    log_level=..., access_log=not args.disable_uvicorn_access_log, timeout_keep_alive=
    envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE, ...)` (that variable's default: "5" seconds, `vllm/envs.py`) and awaits
    `uvicorn.Server(config).serve(sockets=[sock])`: one worker, in this process. uvicorn's `http`/`loop` stay "auto"
    there (httptools when installed; the loop is the one uvloop.run made). vLLM's access log is on unless
    `--disable-uvicorn-access-log` is given; it is off here (that flag), so that the server is as fast as its stack
    allows: a slower server would flatter every gateway's ratio to it. vLLM also validates each request with
    pydantic and tokenizes it, which this server does not: a real server is slower still.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    http = _http_impl()
    config = uvicorn.Config(fastapi_app(app), host=host, port=sock.getsockname()[1], http=http, lifespan="off",
                            log_level="warning", access_log=False, timeout_keep_alive=5,
                            timeout_graceful_shutdown=3, backlog=1024)
    server = uvicorn.Server(config)  # its own SIGTERM/SIGINT handlers end `serve` (then re-raise the signal)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if task.done():
        await task  # a start-up failure, raised
        return
    loop = asyncio.get_running_loop()

    def stdin_readable() -> None:
        try:
            if not os.read(sys.stdin.fileno(), 4096):
                server.should_exit = True
        except OSError:
            server.should_exit = True

    if not sys.stdin.isatty():
        loop.add_reader(sys.stdin.fileno(), stdin_readable)
    bound = sock.getsockname()
    print(json.dumps({"ready": True, "url": f"http://{bound[0]}:{bound[1]}", "pid": os.getpid(),
                      "loop": type(loop).__module__.split(".")[0], "server": "fastapi", "http": http}), flush=True)
    await task


class EchoProcess:
    """This server run as a child process of the caller, with the HTTP stack `server` names (see the module
    docstring); `url` once it listens. Stopped by `stop()` or when the caller exits (its stdin closes)."""

    def __init__(self, *, name: str, api_key_env: str | None = None, env: Mapping[str, str] | None = None,
                 timeout_s: float = 30.0, server: str = "raw"):
        import select

        if server not in SERVERS:
            raise ValueError(f"server {server!r}: choose one of {', '.join(SERVERS)}")
        cmd = [sys.executable, os.path.abspath(__file__), "--name", name]
        if server != "raw":
            cmd += ["--server", server]
        if api_key_env:
            cmd += ["--api-key-env", api_key_env]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        assert self.proc.stdout
        if not select.select([self.proc.stdout], [], [], timeout_s)[0]:
            self.stop()
            raise RuntimeError(f"the OpenAI-compatible echo server said nothing in {timeout_s:g} s")
        line = self.proc.stdout.readline()
        if not line.startswith("{"):
            code = self.stop()
            raise RuntimeError(f"the OpenAI-compatible echo server exited ({code}) before listening: {line!r}")
        ready = json.loads(line)
        self.url: str = ready["url"]
        self.loop: str = ready["loop"]
        self.server = server
        # What answers, in words: for reports.
        self.stack = (f"FastAPI {_version('fastapi')} on uvicorn {_version('uvicorn')} ({ready['loop']}, "
                      f"{ready['http']}, one worker)" if server == "fastapi" else f"raw asyncio ({ready['loop']})")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int:
        """Close its stdin (it exits), then SIGTERM, then SIGKILL; its exit status."""
        if self.proc.poll() is None and self.proc.stdin:
            try:
                self.proc.stdin.close()
                return self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: a free port (printed in the ready line)")
    ap.add_argument("--name", default="openai-echo", help="who the answers say served them")
    ap.add_argument("--api-key-env", help="environment variable holding the key every request must carry")
    ap.add_argument("--server", choices=SERVERS, default="raw",
                    help="HTTP stack: raw asyncio (default) or FastAPI on uvicorn, as vLLM runs its server")
    args = ap.parse_args(argv)
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            ap.error(f"--api-key-env {args.api_key_env}: the variable is not set")
    app = EchoApp(args.name, key)
    main_coro = (serve_fastapi if args.server == "fastapi" else serve)(app, args.host, args.port)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_coro)
    else:
        uvloop.run(main_coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
