"""Sovra's own clients against a hostile or distant router, over real sockets: the SDK reads a router's stream with a
bound (an endless line is a broken stream, not unbounded memory), and the CLI never sends the admin key in clear to
a router on another machine (`sovra audit`), nor does `sovra status` (it asks without it)."""

from __future__ import annotations

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from sovra.providers.clients import MAX_SSE_LINE
from sovra.orchestrator.sdk import AsyncClient, SovraAPIError
from tests.fakes.openai_backend import ServerThread
from tests.integration.test_transport_security import _non_loopback_ip

pytestmark = pytest.mark.integration
ADMIN_KEY = "sk-admin-never-in-clear"


def _endless_line_router() -> Starlette:
    """A router whose stream is one line that never ends (first an ordinary event)."""

    async def chat(request: Request):
        async def body():
            yield b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n'
            chunk = b"x" * 65536
            for _ in range(MAX_SSE_LINE // len(chunk) + 8):
                yield chunk
            yield b"\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_the_sdk_reads_a_routers_stream_with_a_bound():
    async def run(url):
        got = []
        async with AsyncClient(url) as client:
            with pytest.raises(SovraAPIError) as caught:
                async for chunk in client.chat_stream("m", [{"role": "user", "content": "hi"}]):
                    got.append(chunk)
        return got, caught.value

    with ServerThread(_endless_line_router()) as router:
        got, exc = asyncio.run(run(router.url))
    assert len(got) == 1  # the ordinary event came through, then the endless line broke the stream
    assert exc.status == 502 and exc.code == "stream_interrupted" and "over" in str(exc)


class _KeyRecorder:
    """A router stand-in that records every Authorization header it is sent."""

    def __init__(self):
        self.auth: list[str | None] = []

    def app(self) -> Starlette:
        async def anything(request: Request):
            self.auth.append(request.headers.get("authorization"))
            if request.url.path == "/healthz":
                return JSONResponse({"status": "ok"})
            return JSONResponse({"status": "ready", "records": [], "torn": 0, "file": "-", "files": []})

        return Starlette(routes=[Route("/{p:path}", anything, methods=["GET", "POST"])])


@pytest.fixture
def remote_router():
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback address to stand in for another machine")
    recorder = _KeyRecorder()
    with ServerThread(recorder.app(), host=ip) as server:
        yield recorder, server.url


def test_sovra_audit_never_sends_the_admin_key_in_clear_to_another_machine(remote_router, sovra, monkeypatch):
    recorder, url = remote_router
    monkeypatch.setenv("SOVRA_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.delenv("SOVRA_ALLOW_PLAIN_HTTP", raising=False)
    for args in (("audit", "--router", url), ("audit", "verify", "--router", url)):
        refused = sovra(*args)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        text = " ".join(refused.stderr.split())
        assert "would cross the network in clear" in text and "SOVRA_ALLOW_PLAIN_HTTP=1" in text, text
        assert ADMIN_KEY not in refused.stdout + refused.stderr
    assert recorder.auth == []  # nothing was sent at all
    monkeypatch.setenv("SOVRA_ALLOW_PLAIN_HTTP", "1")  # the user says this network is trusted
    assert sovra("audit", "--router", url).returncode == 0
    assert recorder.auth == [f"Bearer {ADMIN_KEY}"]


def test_status_asks_a_distant_plain_http_router_without_the_admin_key(remote_router, monkeypatch):
    from sovra.orchestrator.deploy import _probe_router

    recorder, url = remote_router
    monkeypatch.setenv("SOVRA_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.delenv("SOVRA_ALLOW_PLAIN_HTTP", raising=False)
    live, ready = _probe_router(url)
    assert live and ready is not None
    assert recorder.auth == [None, None]  # /healthz and /readyz, neither with the key
