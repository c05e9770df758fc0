"""OpenAI behaviour fields on the local engines: each is honoured or refused with a 400 naming the engine, over the
model server's own HTTP surface (ASGI), streaming included; never served as if it were not there."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from sovra.orchestrator.serving.engines import get_engine
from sovra.orchestrator.serving.engines.request import InvalidChatRequest, refuse_unsupported
from sovra.orchestrator.serving.model_http import create_app
from sovra.orchestrator.serving.ray_apps import ModelServer

KEY = "k-fields"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def call(body: dict, monkeypatch) -> httpx.Response:
    monkeypatch.setenv("SOVRA_SERVE_API_KEY", KEY)
    app = create_app(ModelServer("m", "onprem/paris", "echo"))

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://k") as c:
            return await c.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})

    return asyncio.run(go())


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("extra, named", [({"tools": TOOLS}, "`tools`"), ({"logprobs": True}, "`logprobs`"),
                                          ({"response_format": {"type": "json_object"}}, "`response_format`")])
def test_the_model_server_refuses_what_its_engine_cannot_do_before_any_chunk(monkeypatch, stream, extra, named):
    r = call({**CHAT, **extra, "stream": stream}, monkeypatch)
    assert r.status_code == 400  # a stream too: the refusal comes before the status line
    message = r.json()["error"]["message"]
    assert "engine 'echo'" in message and named in message


def test_echo_honours_stop_and_takes_no_op_values(monkeypatch):
    r = call({**CHAT, "stop": [" "], "seed": 3, "n": 1, "logprobs": False, "tools": [],
              "response_format": {"type": "text"}, "stream_options": {"include_usage": True}}, monkeypatch)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "served-by"
    r = call({**CHAT, "stop": "paris", "stream": True}, monkeypatch)
    text = "".join(json.loads(e.removeprefix("data: "))["choices"][0]["delta"].get("content", "")
                   for e in r.text.split("\n\n") if e.startswith("data: {"))
    assert text == "served-by onprem/"


@pytest.mark.parametrize("engine, refused, taken", [
    ("llama-cpp", ["tools", "tool_choice", "logprobs", "top_logprobs", "logit_bias", "parallel_tool_calls"],
     ["response_format", "seed", "stop", "presence_penalty", "frequency_penalty", "stream_options"]),
    ("vllm", ["tools", "tool_choice", "response_format", "logprobs", "logit_bias"],
     ["seed", "stop", "presence_penalty", "frequency_penalty", "stream_options"]),
])
def test_each_engine_declares_what_it_honours(engine, refused, taken):
    cls = get_engine(engine)  # the class only: no model is loaded
    assert not set(refused) & cls.supports and set(taken) <= cls.supports
    with pytest.raises(InvalidChatRequest, match=f"engine '{engine}' cannot do `tools`"):
        refuse_unsupported({**CHAT, "tools": TOOLS}, engine, cls.supports)
