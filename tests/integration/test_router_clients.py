"""HttpClient over real sockets, with both of its transports (aiohttp, the router's default; an injected httpx
client, the SDK's): the same answers, and every failure given the same verdict: never delivered (connection
refused) may be resent; refused by the backend (503) may be resent; anything after the payload left (a hang-up, a
torn stream, a reply that is not a JSON object, an endless SSE line) is never resent."""

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

from sovra.providers.clients import MAX_SSE_LINE, HttpClient
from sovra.core.api_errors import Failed, NotDelivered, Refused, RouterError
from sovra.core.place import Place
from tests import factories
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
    fake, failing = FakeBackend("ok"), FakeBackend("down", failing=True)
    odd_error = FakeBackend("odd-error", odd_error=True)
    threads = {k: ServerThread(app).__enter__()
               for k, app in {"ok": fake.app(), "down": failing.app(), "odd": _odd_backend(),
                              "odd_error": odd_error.app()}.items()}
    endless = b"data: " + b"x" * (MAX_SSE_LINE + 10)
    raw = {"hangup": RawServer(b""),
           "torn": RawServer(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"),
           "not_object": RawServer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n"
                                   b"\r\n[1,2,3]"),
           "endless": RawServer(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: "
                                + str(len(endless)).encode() + b"\r\n\r\n" + endless)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: connection refused
    yield {**{k: t.url for k, t in threads.items()}, **{k: r.url for k, r in raw.items()}, "refused": refused}
    for t in threads.values():
        t.__exit__()
    for r in raw.values():
        r.close()


def backend(url: str):
    return factories.backend("x", Place("EU", "FR", "FR", "self"), kind="openai-compatible", address=url)


TRANSPORTS = {"aiohttp": lambda: HttpClient(),
              "httpx": lambda: HttpClient(httpx.AsyncClient(timeout=httpx.Timeout(None, connect=2.0)))}


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
@pytest.mark.parametrize(("where", "verdict"), [("refused", NotDelivered), ("down", Refused), ("hangup", Failed),
                                                ("torn", Failed), ("not_object", Failed), ("endless", Failed)])
def test_each_failure_gets_one_verdict_on_every_transport(servers, transport, where, verdict):
    for op in ("chat", "chat_stream"):
        with pytest.raises(verdict) as exc:
            async def scenario(c, op=op):
                result = await getattr(c, op)(backend(servers[where]), BODY)
                if op == "chat_stream":
                    return [chunk async for chunk in result]
                return result

            run(transport, scenario)
        assert exc.value.resend is (verdict is not Failed)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_4xx_is_passed_through_and_an_odd_error_body_keeps_its_message(servers, transport):
    with pytest.raises(RouterError) as exc:
        run(transport, lambda c: c.chat(backend(servers["odd"]), {**BODY, "messages": [
            {"role": "user", "content": "reject"}]}))
    # the backend's own code ("bad") is not in the router's vocabulary: it never reaches the client or the trail
    assert (exc.value.status, exc.value.code, exc.value.message) == (400, "upstream_rejected", "bad messages")
    with pytest.raises(RouterError) as odd:
        run(transport, lambda c: c.chat(backend(servers["odd_error"]), BODY))
    assert (odd.value.status, odd.value.message) == (400, "quota text, not an object")
