"""What the audit trail guarantees on the router's real path: every payload is on record before it leaves, a trail
that cannot be written stops payloads (unless the org opts out), a stream whose response never starts still leaves
its record and frees its backend, and keyless callers cannot flush the trail. Real sockets: the router app served
by uvicorn on 127.0.0.1 (or called as Serve calls its ASGI app), OpenAI-compatible backends over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sovra.orchestrator.router.app import RouterState, create_app
from sovra.orchestrator.router.audit import AuditLog, read
from sovra.core.backends import RoutingTable
from sovra.providers.clients import HttpClient
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.orchestrator.router.tenants import TenantDirectory
from sovra.core.spec import Residency
from sovra.core.spec.org import Tenant
from sovra.core.place import Place
from tests import factories
from tests.fakes.openai_backend import FakeBackend, ServerThread

pytestmark = pytest.mark.integration
KEY = "sk-trail-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "eu-secret"}]}


def _state(trail: Path, url: str, *, capacity: int | None = None, refuse: bool = True) -> RouterState:
    backend = factories.backend("eu-paris", Place("EU", "FR", "FR", "self"), kind="openai-compatible", address=url)
    if capacity:
        backend = backend.model_copy(update={"capacity": capacity})
    tenants = TenantDirectory.of([Tenant(name="bank", key_sha256=hashlib.sha256(KEY.encode()).hexdigest(),
                                         residency=Residency(zones=("EU",)))])
    return RouterState(Dispatcher(RoutingTable.of([backend]), backoff_s=0.0), tenants,
                       {"openai-compatible": HttpClient()}, AuditLog(trail, writer="router-t", refuse=refuse),
                       probe=False)


def _lines(trail: Path) -> list[dict]:
    return [json.loads(x) for f in sorted(trail.glob("*.jsonl")) for x in f.read_bytes().splitlines() if x]


def test_the_send_line_is_on_disk_before_the_backend_sees_the_payload(tmp_path):
    trail = tmp_path / "audit"
    seen_first: list[list[str]] = []

    async def chat(request: Request):  # a backend that looks at the trail the moment the payload arrives
        await request.json()
        seen_first.append([f"{x['kind']}:{x.get('target')}" for x in _lines(trail)])
        return JSONResponse({"id": "c", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})

    with ServerThread(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])) as backend:
        with ServerThread(create_app(_state(trail, backend.url))) as router:
            for _ in range(3):
                assert httpx.post(router.url + "/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200
    assert seen_first == [["send:eu-paris"], ["send:eu-paris", "request:eu-paris", "send:eu-paris"],
                          ["send:eu-paris", "request:eu-paris", "send:eu-paris", "request:eu-paris", "send:eu-paris"]]
    records = list(read(trail))
    assert [r["attempts"][0]["send_seq"] for r in records] == [0, 2, 4]  # each answers its own send line


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_trail_that_cannot_be_written_refuses_payloads_until_it_can(tmp_path):
    trail = tmp_path / "audit"
    trail.mkdir(mode=0o700)
    os.symlink("/dev/full", trail / "router-t-000000000000.jsonl")  # every write: ENOSPC, as a full disk
    fake = FakeBackend("eu-paris")
    with ServerThread(fake.app()) as backend, ServerThread(create_app(_state(trail, backend.url))) as router:
        refused = httpx.post(router.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "audit_unavailable"
        stream = httpx.post(router.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
        assert stream.status_code == 503 and stream.json()["error"]["code"] == "audit_unavailable"
        ready = httpx.get(router.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["audit"] == "failing"
        assert not fake.received  # nothing left unrecorded
        (trail / "router-t-000000000000.jsonl").unlink()  # space again: the next write succeeds
        assert httpx.post(router.url + "/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200
        assert httpx.get(router.url + "/readyz").json()["audit"] == "ok"
    assert len(fake.received) == 1


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_an_org_that_opts_out_sends_unrecorded_and_readyz_says_so(tmp_path):
    trail = tmp_path / "audit"
    trail.mkdir(mode=0o700)
    os.symlink("/dev/full", trail / "router-t-000000000000.jsonl")
    fake = FakeBackend("eu-paris")
    with ServerThread(fake.app()) as backend, \
            ServerThread(create_app(_state(trail, backend.url, refuse=False))) as router:
        assert httpx.post(router.url + "/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200
        ready = httpx.get(router.url + "/readyz")
        assert ready.status_code == 200 and "sending unrecorded" in ready.json()["audit"]
    assert len(fake.received) == 1


def _asgi_stream(app, send_start) -> None:
    """One streamed chat request as Serve hands it to the app, with `send_start` in place of the response start."""
    body = json.dumps({**CHAT, "stream": True}).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "root_path": "", "query_string": b"", "http_version": "1.1", "scheme": "http",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5), "asgi": {"version": "3.0"},
             "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    messages = [{"type": "http.request", "body": body}]

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        if message["type"] == "http.response.start":
            await send_start()

    return app(scope, receive, send)


def test_streams_whose_response_never_starts_leave_records_and_free_their_backend(tmp_path):
    # capacity 2: before, two streams whose response start failed held both slots forever (every later request
    # 429) and left no record although the backend had the prompt.
    trail = tmp_path / "audit"
    fake = FakeBackend("eu-paris")

    async def client_gone():
        raise OSError("the client went away before the response started")

    async def run(app) -> None:
        for _ in range(3):
            with pytest.raises(OSError):
                await _asgi_stream(app, client_gone)
        hung = asyncio.ensure_future(_asgi_stream(app, lambda: asyncio.sleep(3600)))  # Serve cancels it
        await asyncio.sleep(0.5)
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung

    with ServerThread(fake.app()) as backend:
        state = _state(trail, backend.url, capacity=2)
        asyncio.run(run(create_app(state)))
        assert state.dispatcher.in_flight == {"m@eu-paris": 0}
        with ServerThread(create_app(state)) as router:
            after = httpx.post(router.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
            assert after.status_code == 200, after.text
    assert len(fake.received) == 5
    records = list(read(trail))
    assert [(r["status"], r["outcome"], [a["outcome"] for a in r["attempts"]]) for r in records] == [
        (499, "cancelled", ["cancelled"])] * 4 + [(200, "ok", ["ok"])]


def test_keyless_callers_are_counted_not_written_one_by_one(tmp_path):
    trail = tmp_path / "audit"
    fake = FakeBackend("eu-paris")
    with ServerThread(fake.app()) as backend:
        state = _state(trail, backend.url)
        with ServerThread(create_app(state)) as router:
            with httpx.Client() as client:
                for i in range(300):
                    r = client.post(router.url + "/v1/chat/completions", json=CHAT,
                                    headers={"Authorization": f"Bearer guess-{i}"} if i % 2 else {})
                    assert r.status_code == 401
                assert client.post(router.url + "/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200
            assert [x["kind"] for x in _lines(trail)] == ["send", "request"]  # the flood wrote nothing yet
            metrics = state.metrics.render()[0].decode()
        # the router stops: its chain ends with the count and a close line
    kinds = [(x["kind"], x.get("count")) for x in _lines(trail)]
    assert kinds == [("send", None), ("request", None), ("unauthenticated", 300), ("close", None)]
    assert read(trail).unauthenticated == 300
    assert 'deployment="-",status="401",target="none",zone="none"} 300.0' in metrics  # counted there too
