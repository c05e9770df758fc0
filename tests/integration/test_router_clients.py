"""HttpClient over real sockets, with both of its transports (aiohttp, the router's default; an injected httpx
client, the SDK's): the same answers, and the same failures sorted into retryable (nothing was answered) or not."""

from __future__ import annotations

import asyncio
import json
import socket
import socketserver
import threading

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.router.backends import Backend
from orchestrator.router.clients import HttpClient
from orchestrator.router.dispatch import RetryableError
from orchestrator.router.errors import RouterError, UpstreamError
from policies.residency import Place
from tests.fakes.openai_backend import FakeBackend, ServerThread

pytestmark = pytest.mark.integration
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class RawServer:
    """Answers every connection with fixed bytes (possibly an incomplete response), then hangs up."""

    def __init__(self, reply: bytes):
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(65536)
                self.request.sendall(reply)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _odd_backend() -> Starlette:
    async def chat(request):
        body = await request.json()
        if body["messages"][0]["content"] == "reject":
            return JSONResponse({"error": {"message": "bad messages", "type": "invalid_request_error",
                                           "code": "bad"}}, status_code=400)
        events = [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in ("a", "é")]
        text = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in events) + "data: [DONE]\r\n\r\n"
        return Response(text.encode(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture(scope="module")
def servers():
    fake, slow, failing = FakeBackend("ok"), FakeBackend("slow", delay_s=2.0), FakeBackend("down", failing=True)
    threads = {k: ServerThread(app).__enter__()
               for k, app in {"ok": fake.app(), "slow": slow.app(), "down": failing.app(), "odd": _odd_backend()}.items()}
    raw = {"hangup": RawServer(b""),
           "torn": RawServer(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: connection refused
    yield {**{k: t.url for k, t in threads.items()}, **{k: r.url for k, r in raw.items()}, "refused": refused}
    for t in threads.values():
        t.__exit__()
    for r in raw.values():
        r.close()


def backend(url: str) -> Backend:
    return Backend(id="m@x", model="m", target="x", place=Place("EU", "FR", "FR", "self"), kind="http", address=url)


TRANSPORTS = {"aiohttp": lambda: HttpClient(timeout_s=0.5),
              "httpx": lambda: HttpClient(httpx.AsyncClient(timeout=httpx.Timeout(0.5, connect=2.0)))}


def run(transport: str, scenario):
    async def main():
        client = TRANSPORTS[transport]()
        try:
            return await scenario(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_answers_streams_and_embeddings(servers, transport):
    async def scenario(c: HttpClient):
        answer = await c.chat(backend(servers["ok"]), BODY)
        chunks = [ch async for ch in await c.chat_stream(backend(servers["ok"]), BODY)]
        crlf = [ch async for ch in await c.chat_stream(backend(servers["odd"]), BODY)]
        emb = await c.embed(backend(servers["ok"]), {"model": "m", "input": ["abc"]})
        return answer, chunks, crlf, emb

    answer, chunks, crlf, emb = run(transport, scenario)
    assert answer["choices"][0]["message"]["content"] == "served-by ok"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "served-by ok"
    assert [c["choices"][0]["delta"]["content"] for c in crlf] == ["a", "é"]  # CRLF events, UTF-8 kept
    assert emb["data"][0]["embedding"][0] == 3.0


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("where", ["refused", "hangup", "down"])
def test_nothing_answered_is_retryable(servers, transport, where):
    for op in ("chat", "chat_stream"):
        with pytest.raises(RetryableError):
            run(transport, lambda c, op=op: getattr(c, op)(backend(servers[where]), BODY))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stream_torn_before_its_first_chunk_is_retryable(servers, transport):
    with pytest.raises(RetryableError, match="before the first chunk"):
        run(transport, lambda c: c.chat_stream(backend(servers["torn"]), BODY))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_slow_answer_is_an_upstream_timeout_and_a_4xx_is_passed_through(servers, transport):
    with pytest.raises(UpstreamError, match="timed out"):
        run(transport, lambda c: c.chat(backend(servers["slow"]), BODY))
    with pytest.raises(RouterError) as exc:
        run(transport, lambda c: c.chat(backend(servers["odd"]), {**BODY, "messages": [
            {"role": "user", "content": "reject"}]}))
    assert not isinstance(exc.value, RetryableError)
    assert (exc.value.status, exc.value.code, exc.value.message) == (400, "bad", "bad messages")
