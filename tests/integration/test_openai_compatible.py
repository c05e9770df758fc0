"""An OpenAI-compatible server the company runs (NIM, vLLM, TGI), declared in org.yaml `endpoints:`: `up` routes to
it from its declaration alone, the router sends the key from the environment variable org.yaml names (never the
key itself in any record), the served model's own name, and maps a refused key to a 401 refusal."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sovra.orchestrator import routing_table as rt
from sovra.providers.clients import HttpClient
from sovra.core.api_errors import NotDelivered, Refused
from sovra.core.spec.org import Endpoint, Org, connection_for
from sovra.policies.plan import Placement
from sovra.providers import base
from tests import factories
from tests.fakes.openai_backend import ServerThread

KEY = "nim-secret-key-123"


def nim_app(seen: list) -> Starlette:
    async def chat(request: Request):
        seen.append({"auth": request.headers.get("authorization"), "body": await request.json()})
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        body = await request.json()
        return JSONResponse({"id": "x", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": "bonjour"}}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture
def nim():
    seen: list = []
    with ServerThread(nim_app(seen)) as server:
        yield server.url, seen


def endpoint(url: str) -> Endpoint:
    return Endpoint.model_validate({
        "id": "nim-paris", "provider": "openai-compatible", "cloud": "onprem", "region": "paris", "country": "FR",
        "zone": "EU", "operator": {"name": "self", "jurisdiction": "FR"}, "capacity": 8,
        "models": [{"name": "mistral-small-24b", "usd_per_1k_tokens": 0.0}],
        "connection": {"url": url, "api_key_env": "NIM_KEY"}})


def routed(url: str):
    t = endpoint(url)
    d = factories.deployment("support", model="mistral-small-24b", residency={"zones": ["EU"]})
    p = Placement(t.id, t.provider, t.zone, t.country, 0, None, 0.0, 0.0, 0.0, 1.0)
    return rt.routed_entry(d, p, t, connection_for(Org(endpoints=(t,)), t))


def test_up_routes_to_a_declared_endpoint_in_the_first_rung_without_its_key(nim, monkeypatch):
    url, _ = nim
    monkeypatch.setenv("NIM_KEY", KEY)
    b = routed(url)
    assert (b.kind, b.address, b.tier, b.capacity, b.zone) == ("openai-compatible", url, 0, 8, "EU")
    assert b.params == {"api_key_env": "NIM_KEY"}
    assert KEY not in json.dumps(b.to_wire())


def test_the_key_comes_from_the_named_variable_and_the_model_is_the_servers(nim, monkeypatch):
    url, seen = nim
    monkeypatch.setenv("NIM_KEY", KEY)
    answer = asyncio.run(HttpClient().chat(routed(url), {"model": "support", "messages": [
        {"role": "user", "content": "salut"}]}))
    assert answer["choices"][0]["message"]["content"] == "bonjour"
    assert seen[-1]["auth"] == f"Bearer {KEY}" and seen[-1]["body"]["model"] == "mistral-small-24b"


def test_a_missing_key_sends_nothing_and_a_refused_key_is_a_401_refusal(nim, monkeypatch):
    url, seen = nim
    monkeypatch.delenv("NIM_KEY", raising=False)
    with pytest.raises(NotDelivered, match="NIM_KEY") as missing:
        asyncio.run(HttpClient().chat(routed(url), {"model": "support", "messages": [{"role": "user", "content": "x"}]}))
    assert missing.value.down and seen == []
    monkeypatch.setenv("NIM_KEY", "wrong")
    with pytest.raises(Refused) as refused:
        asyncio.run(HttpClient().chat(routed(url), {"model": "support", "messages": [{"role": "user", "content": "x"}]}))
    assert refused.value.status == 401 and refused.value.down and "wrong" not in str(refused.value)


def test_a_connection_field_that_is_not_the_adapters_is_refused_with_the_valid_ones():
    with pytest.raises(Exception, match="valid fields: url, api_key_env"):
        base.get("openai-compatible").connection({"url": "http://x", "api_key": "inline-secret"})


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_throttled_answer_keeps_the_servers_retry_after(transport):
    import httpx

    async def busy(request: Request):
        return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "9"})

    app = Starlette(routes=[Route("/v1/chat/completions", busy, methods=["POST"])])
    with ServerThread(app) as server:
        b = factories.backend("x", _paris(), kind="openai-compatible", address=server.url)

        async def call():
            client = HttpClient() if transport == "aiohttp" else HttpClient(httpx.AsyncClient())
            try:
                return await client.chat(b, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
            finally:
                await client.aclose()

        with pytest.raises(Refused) as exc:
            asyncio.run(call())
    assert exc.value.throttled and exc.value.retry_after_s == 9 and exc.value.resend


def _paris():
    from sovra.core.place import Place

    return Place("EU", "FR", "FR", "self")
