"""No transport follows a redirect: a backend answering 3xx has had the payload (an answer, never resent), and the
`Location` host receives nothing, whatever it is. Real sockets: a redirecting server, a second server that would
receive the prompt, the router app over HTTP, and HttpClient with both its transports."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sovra.orchestrator.router.app import RouterState, create_app
from sovra.orchestrator.router.audit import AuditLog, read
from sovra.core.backends import RoutingTable
from sovra.providers.clients import HttpClient
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.core.api_errors import Failed
from sovra.orchestrator.router.tenants import TenantDirectory
from sovra.core.spec import Residency
from sovra.core.spec.org import Tenant
from sovra.core.place import Place
from tests import factories
from tests.fakes.openai_backend import FakeBackend, ServerThread

pytestmark = pytest.mark.integration
KEY = "sk-redirect-test"
BODY = {"model": "m", "messages": [{"role": "user", "content": "eu-secret"}]}


def _redirector(target: str, status: int, seen: list[str]) -> Starlette:
    """Answers every request with `status` and a Location on `target` (same path), as a hostile backend would."""

    async def any_path(request: Request) -> Response:
        seen.append(f"{request.method} {request.url.path}")
        return Response(status_code=status, headers={"Location": target + request.url.path})

    return Starlette(routes=[Route("/{path:path}", any_path, methods=["GET", "POST"])])


@pytest.fixture(scope="module")
def elsewhere():
    """The server a redirect points at: outside the bound, it must never receive anything."""
    fake = FakeBackend("us-virginia")
    with ServerThread(fake.app()) as server:
        yield fake, server.url
    assert not fake.received


@pytest.fixture(params=[307, 308, 301, 302, 303])
def redirecting(request, elsewhere):
    seen: list[str] = []
    with ServerThread(_redirector(elsewhere[1], request.param, seen)) as server:
        yield server.url, seen, request.param


def _backend(url: str):
    return factories.backend("eu-paris", Place("EU", "FR", "FR", "self"), kind="openai-compatible", address=url)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx-following"])
def test_http_client_treats_a_redirect_as_the_backends_answer_and_follows_none(redirecting, elsewhere, transport):
    url, seen, status = redirecting
    # The SDK hands HttpClient its own httpx client; one configured to follow redirects must not make it follow.
    client = HttpClient(httpx.AsyncClient(follow_redirects=True) if transport.startswith("httpx") else None)
    backend = _backend(url)

    async def run():
        try:
            for call in (lambda: client.chat(backend, BODY), lambda: client.chat_stream(backend, {**BODY}),
                         lambda: client.embed(backend, {"model": "m", "input": "eu-secret"})):
                with pytest.raises(Failed) as caught:
                    await call()
                assert not caught.value.resend  # it reached the backend: never resent anywhere
                assert f"HTTP {status}" in str(caught.value) and "redirect" in str(caught.value)
            assert await client.health(backend) is False  # a probe does not follow either
        finally:
            await client.aclose()

    asyncio.run(run())
    assert len(seen) == 4  # chat, stream, embeddings and the probe reached the redirecting backend, once each
    assert not elsewhere[0].received


def test_router_answers_502_and_audits_the_redirecting_backend_only(redirecting, elsewhere, tmp_path):
    url, seen, _ = redirecting
    us = factories.backend("us-virginia", Place("US", "US", "US", "amazon"), kind="openai-compatible",
                           address=elsewhere[1], cost=0.01)
    tenants = TenantDirectory.of([Tenant(name="eu-bank", key_sha256=hashlib.sha256(KEY.encode()).hexdigest(),
                                         residency=Residency(zones=("EU",)))])
    audit = tmp_path / "audit.jsonl"
    state = RouterState(Dispatcher(RoutingTable.of([_backend(url), us]), backoff_s=0.0), tenants,
                        {"openai-compatible": HttpClient()}, AuditLog(audit), probe=False)
    with ServerThread(create_app(state)) as router:
        headers = {"Authorization": f"Bearer {KEY}"}
        chat = httpx.post(router.url + "/v1/chat/completions", json=BODY, headers=headers)
        stream = httpx.post(router.url + "/v1/chat/completions", json={**BODY, "stream": True}, headers=headers)
        embed = httpx.post(router.url + "/v1/embeddings", json={"model": "m", "input": "eu-secret"},
                           headers=headers)
    for resp in (chat, stream, embed):
        assert resp.status_code == 502, resp.text
        assert resp.json()["error"]["code"] == "upstream_error"
    assert len(seen) == 3 and not elsewhere[0].received
    records = list(read(audit))
    assert [[(a["target"], a["outcome"]) for a in r["attempts"]] for r in records] == [
        [("eu-paris", "failed")]] * 3
