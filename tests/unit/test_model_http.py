"""The model server's own OpenAI HTTP surface (what a KubeRay cluster serves to the router), over ASGI: the answers
the router's HTTP client expects, a health that asks the engine, and bounded, OpenAI-shaped errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from sovra.orchestrator.router.body import MAX_BODY_BYTES
from sovra.orchestrator.serving.engines import Engine
from sovra.orchestrator.serving.model_http import create_app
from sovra.orchestrator.serving.ray_apps import ModelServer

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
SERVER_KEY = "k-server-123"
AUTH = {"Authorization": f"Bearer {SERVER_KEY}"}


@pytest.fixture(autouse=True)
def server_key(monkeypatch):
    """The model server never runs without its key (on KubeRay: from the Kubernetes Secret)."""
    monkeypatch.setenv("SOVRA_SERVE_API_KEY", SERVER_KEY)


class _Sick(Engine, name="test-sick-http"):
    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("never called")

    async def chat_stream(self, body: dict[str, Any]):
        yield {"choices": [{"index": 0, "delta": {"content": "half"}}]}
        raise RuntimeError("GPU fell off the bus")

    async def health(self) -> dict[str, Any]:
        return {"ok": False, "error": "weights not loaded"}


def call(engine: str, method: str, path: str, **kw) -> httpx.Response:
    app = create_app(ModelServer("m", "onprem/paris", engine))

    kw.setdefault("headers", AUTH)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://k") as c:
            return await c.request(method, path, **kw)

    return asyncio.run(go())


def test_chat_embeddings_and_models_answer_as_openai_does():
    r = call("echo", "POST", "/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "served-by onprem/paris"
    assert r.json()["usage"]["total_tokens"] == 3
    r = call("echo", "POST", "/v1/embeddings", json={"model": "m", "input": ["ab", "c"]})
    assert r.status_code == 200 and [d["embedding"][0] for d in r.json()["data"]] == [2.0, 1.0]
    assert call("echo", "GET", "/v1/models").json()["data"][0]["id"] == "m"


def test_a_stream_is_server_sent_events_ending_with_done():
    r = call("echo", "POST", "/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in r.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "served-by onprem/paris"


def test_health_asks_the_engine_and_a_sick_one_is_503():
    ok = call("echo", "GET", "/healthz")
    assert ok.status_code == 200 and ok.json()["ok"] is True and ok.json()["target"] == "onprem/paris"
    sick = call("test-sick-http", "GET", "/healthz")
    assert sick.status_code == 503 and sick.json() == {
        "ok": False, "error": "weights not loaded", "engine": "test-sick-http", "model": "m", "target": "onprem/paris"}


def test_an_engine_failing_mid_stream_ends_with_an_error_event_not_done():
    r = call("test-sick-http", "POST", "/v1/chat/completions", json={**CHAT, "stream": True})
    events = [line.removeprefix("data: ") for line in r.text.split("\n\n") if line]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "half"
    assert json.loads(events[-1])["error"]["code"] == "engine_error" and "[DONE]" not in events
    assert "GPU fell" not in r.text  # the exception's text (it may quote a payload) stays on the replica


@pytest.mark.parametrize("kw, status, code", [
    ({"content": b"{not json"}, 400, "invalid_request"),
    ({"json": ["a", "list"]}, 400, "invalid_request"),
    ({"content": b"{" + b" " * MAX_BODY_BYTES + b"}"}, 413, "request_too_large"),
])
def test_bad_bodies_are_openai_errors(kw, status, code):
    r = call("echo", "POST", "/v1/chat/completions", **kw)
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_an_engine_without_embeddings_and_an_unknown_path_are_explained():
    r = call("test-sick-http", "POST", "/v1/embeddings", json={"model": "m", "input": "x"})
    assert r.status_code == 400 and "serves no embeddings" in r.json()["error"]["message"]
    r = call("echo", "GET", "/v1/completions")
    assert r.status_code == 404 and "POST /v1/chat/completions" in r.json()["error"]["message"]


def test_the_model_http_client_probes_and_describes_through_healthz():
    """The router's side of the same surface, over real HTTP: health and `sovra status` ask the engine."""
    from sovra.providers.onprem.model_http_client import ModelHttpClient
    from sovra.core.place import Place
    from tests import factories
    from tests.fakes.openai_backend import ServerThread

    for engine, ok, status in (("echo", True, "healthy"), ("test-sick-http", False, "unhealthy")):
        with ServerThread(create_app(ModelServer("m", "onprem/paris", engine))) as server:
            b = factories.backend("onprem/paris", Place("EU", "FR", "FR", "self"), kind="kubernetes",
                                  address=server.url)
            b = b.model_copy(update={"params": {"api_key_env": "SOVRA_SERVE_API_KEY"}})  # the router holds it too

            async def ask(b=b):
                client = ModelHttpClient()
                try:
                    return await client.health(b), await client.describe(b)
                finally:
                    await client.aclose()

            health, described = asyncio.run(ask())
        assert health is ok and described["status"].startswith(status)


def test_with_a_key_configured_every_call_needs_it(monkeypatch):
    monkeypatch.setenv("SOVRA_SERVE_API_KEY", "k-123")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k-123"}):
        r = call("echo", "POST", "/v1/chat/completions", json=CHAT, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert call("echo", "GET", "/healthz", headers=headers).status_code == 401
    ok = call("echo", "POST", "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer k-123"})
    assert ok.status_code == 200 and "k-123" not in ok.text


def test_the_model_http_client_sends_the_key_from_the_variable_its_backend_names(monkeypatch):
    from sovra.providers.onprem.model_http_client import ModelHttpClient
    from sovra.core.place import Place
    from tests import factories
    from tests.fakes.openai_backend import ServerThread

    monkeypatch.setenv("SOVRA_SERVE_API_KEY", "k-123")  # the server's (the pod reads it from its Secret)
    with ServerThread(create_app(ModelServer("m", "onprem/paris", "echo"))) as server:
        b = factories.backend("onprem/paris", Place("EU", "FR", "FR", "self"), kind="kubernetes",
                              address=server.url)
        b = b.model_copy(update={"params": {"api_key_env": "PARIS_KEY"}})

        async def health():
            client = ModelHttpClient()
            try:
                return await client.health(b)
            finally:
                await client.aclose()

        monkeypatch.setenv("PARIS_KEY", "wrong")
        assert asyncio.run(health()) is False
        monkeypatch.setenv("PARIS_KEY", "k-123")  # the router's, from where it runs
        assert asyncio.run(health()) is True


def test_the_model_server_refuses_to_start_without_a_key(monkeypatch):
    """Serve's deployment (what a KubeRay RayService runs) and the plain ASGI app alike: no key, no server that
    answers anyone who can reach it."""
    from sovra.orchestrator.serving.ray_apps import HttpModelServer

    for unset in ("", "   "):
        monkeypatch.setenv("SOVRA_SERVE_API_KEY", unset)
        with pytest.raises(RuntimeError, match=r"refuses to start without a key: \$SOVRA_SERVE_API_KEY is not set"):
            HttpModelServer("m", "onprem/paris", "echo")
        with pytest.raises(RuntimeError, match=r"refuses to start without a key"):
            create_app(ModelServer("m", "onprem/paris", "echo"))
    monkeypatch.delenv("SOVRA_SERVE_API_KEY")
    with pytest.raises(RuntimeError, match=r"refuses to start without a key"):
        HttpModelServer("m", "onprem/paris", "echo")


def test_a_server_whose_key_is_gone_answers_no_one_over_http(monkeypatch):
    """Over real HTTP: with its key the server answers only that key; if the key is taken from its environment
    after it started, it answers no one (503), never everyone."""
    from tests.fakes.openai_backend import ServerThread

    with ServerThread(create_app(ModelServer("m", "onprem/paris", "echo"))) as server:
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 401
        assert httpx.get(f"{server.url}/healthz", headers=AUTH, timeout=10).status_code == 200
        monkeypatch.delenv("SOVRA_SERVE_API_KEY")
        for headers in ({}, AUTH, {"Authorization": "Bearer"}):
            r = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, headers=headers, timeout=10)
            assert r.status_code == 503 and r.json()["error"]["code"] == "server_key_missing", r.text
