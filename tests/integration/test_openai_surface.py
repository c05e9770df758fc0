"""The OpenAI surface apps use, with the official `openai` client over real HTTP (uvicorn on 127.0.0.1) against the
router, whose backend is the fake OpenAI-compatible server: chat with tools, streaming with usage, the Responses API
(plain, streaming, function tools) and legacy completions, each through the same gate and audit as a chat."""

from __future__ import annotations

import hashlib
import json

import httpx
import openai
import pytest

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

KEY = "sk-test-surface"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    fake = FakeBackend("onprem-paris")
    with ServerThread(fake.app()) as backend_server:
        backend = factories.backend(fake.name, Place("EU", "FR", "FR", "self"), deployment="m", model="m",
                                    kind="openai-compatible", address=backend_server.url)
        audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
        tenants = TenantDirectory.of([Tenant(name="eu-bank", key_sha256=hashlib.sha256(KEY.encode()).hexdigest(),
                                             residency=Residency(zones=("EU",)))])
        state = RouterState(Dispatcher(RoutingTable.of([backend]), backoff_s=0.0), tenants,
                            {"openai-compatible": HttpClient()}, AuditLog(audit), probe=False)
        with ServerThread(create_app(state)) as router:
            yield {"url": router.url, "fake": fake, "audit": audit}


def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["url"] + "/v1", api_key=KEY, max_retries=0)


def last_record(stack) -> dict:
    return list(read(stack["audit"]))[-1]


def test_chat_with_tools_answers_tool_calls(stack):
    answer = client(stack).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "weather in Paris?"}], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = answer.choices[0].message.tool_calls[0]
    assert answer.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"served_by": "onprem-paris"}
    assert stack["fake"].received[-1]["tools"] == [WEATHER]  # passed to the backend as the client sent them


def test_chat_streaming_with_include_usage(stack):
    chunks = list(client(stack).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "served-by onprem-paris"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 5
    record = last_record(stack)
    assert record["status"] == 200 and record["prompt_tokens"] == 3 and record["completion_tokens"] == 2


def test_responses_plain(stack):
    raw = client(stack).responses.with_raw_response.create(model="m", input="hello", instructions="Be brief.",
                                                            max_output_tokens=50)
    response = raw.parse()
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.output_text == "served-by onprem-paris"
    assert response.output[0].type == "message" and response.output[0].content[0].type == "output_text"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (3, 2, 5)
    assert raw.headers["X-Sovra-Target"] == "onprem-paris"
    sent = stack["fake"].received[-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    assert sent["max_tokens"] == 50
    record = last_record(stack)
    assert (record["tenant"], record["deployment"], record["target"], record["status"]) == (
        "eu-bank", "m", "onprem-paris", 200)
    assert record["prompt_tokens"] == 3 and record["completion_tokens"] == 2


def test_responses_streaming_events(stack):
    events = list(client(stack).responses.create(model="m", input="hello", stream=True))
    kinds = [e.type for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "served-by onprem-paris"
    done = events[-1].response
    assert done.output_text == "served-by onprem-paris" and done.usage.total_tokens == 5
    assert stack["fake"].received[-1]["stream_options"] == {"include_usage": True}  # asked so usage can be given
    record = last_record(stack)
    assert record["status"] == 200 and record["prompt_tokens"] == 3


def test_responses_stream_helper_collects_the_final_response(stack):
    with client(stack).responses.stream(model="m", input="hello") as stream:
        final = stream.get_final_response()
    assert final.output_text == "served-by onprem-paris"


def test_responses_function_tool_round_trip(stack):
    tool = {"type": "function", "name": "get_weather", "description": "The weather in a city",
            "parameters": WEATHER["function"]["parameters"], "strict": False}
    first = client(stack).responses.create(model="m", input="weather in Paris?", tools=[tool])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id == "call_1"
    assert json.loads(call.arguments) == {"served_by": "onprem-paris"}
    sent = stack["fake"].received[-1]
    assert sent["tools"] == [{"type": "function", "function": {k: tool[k] for k in (
        "name", "description", "parameters", "strict")}}]
    # the second turn carries the call and its output as items; they reach the backend as chat's tool turn
    second = client(stack).responses.create(model="m", tool_choice="none", tools=[tool], input=[
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.output_text == "served-by onprem-paris"
    messages = stack["fake"].received[-1]["messages"]
    assert messages[1]["tool_calls"][0]["id"] == "call_1" and messages[1]["role"] == "assistant"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


def test_responses_streaming_function_call(stack):
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"],
            "strict": True}
    events = list(client(stack).responses.create(model="m", input="weather?", tools=[tool], stream=True))
    kinds = [e.type for e in events]
    assert kinds[2] == "response.output_item.added" and events[2].item.type == "function_call"
    assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed"
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == {"served_by": "onprem-paris"}
    assert events[-1].response.output[0].arguments == args


def test_responses_json_schema(stack):
    fmt = {"type": "json_schema", "name": "where", "schema": {"type": "object"}, "strict": True}
    response = client(stack).responses.create(model="m", input="who?", text={"format": fmt})
    assert json.loads(response.output_text) == {"served_by": "onprem-paris"}
    assert stack["fake"].received[-1]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "where", "schema": {"type": "object"}, "strict": True}}


@pytest.mark.parametrize("extra, says", [
    ({"previous_response_id": "resp_123"}, "keeps no conversation state"),
    ({"store": True}, "keeps no conversation state"),
    ({"conversation": "conv_1"}, "keeps no conversation state"),
    ({"background": True}, "keeps no conversation state"),
    ({"tools": [{"type": "web_search"}]}, "built-in tools"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "item_reference"),
    ({"service_tier": "flex"}, "`service_tier` is not supported"),
    ({"max_output_tokens": "5"}, "max_output_tokens"),
])
def test_responses_refusals_are_400_naming_the_field(stack, extra, says):
    before, sent = len(list(read(stack["audit"]))), len(stack["fake"].received)
    body = {"model": "m", "input": "hi", **extra}
    with pytest.raises(openai.BadRequestError) as err:
        client(stack).responses.create(**body)
    assert says in err.value.body["message"]
    assert len(stack["fake"].received) == sent  # nothing was sent
    record = list(read(stack["audit"]))[before]
    assert record["status"] == 400


def test_completions(stack):
    answer = client(stack).completions.create(model="m", prompt="Say hi", max_tokens=5, stop=["\n"], seed=7)
    assert answer.object == "text_completion" and answer.choices[0].text == "served-by onprem-paris"
    assert answer.usage.total_tokens == 5
    sent = stack["fake"].received[-1]
    assert sent["messages"] == [{"role": "user", "content": "Say hi"}]
    assert (sent["max_tokens"], sent["stop"], sent["seed"]) == (5, ["\n"], 7)
    assert last_record(stack)["completion_tokens"] == 2


def test_completions_streaming_and_logprobs(stack):
    chunks = list(client(stack).completions.create(model="m", prompt="Say hi", stream=True, logprobs=1,
                                                   stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "served-by onprem-paris"
    assert chunks[-1].usage.total_tokens == 5
    offsets = [c.choices[0].logprobs.text_offset[0] for c in chunks if c.choices and c.choices[0].logprobs]
    assert offsets == [0, len("served-by")]
    whole = client(stack).completions.create(model="m", prompt="Say hi", logprobs=1)
    assert whole.choices[0].logprobs.tokens == ["served-by", " onprem-paris"]
    assert whole.choices[0].logprobs.token_logprobs == [-0.25, -0.25]


@pytest.mark.parametrize("extra, says", [({"n": 2}, "`n`"), ({"echo": True}, "`echo`"), ({"suffix": "x"}, "`suffix`"),
                                         ({"best_of": 3}, "`best_of`"), ({"prompt": [1, 2]}, "token ids")])
def test_completions_refusals(stack, extra, says):
    with pytest.raises(openai.BadRequestError) as err:
        client(stack).completions.create(**{"model": "m", "prompt": "hi", **extra})
    assert says in err.value.body["message"]


def test_the_new_paths_need_a_key_like_chat(stack):
    for path in ("/v1/responses", "/v1/completions"):
        r = httpx.post(stack["url"] + path, json={"model": "m", "input": "x", "prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


# --- LiteLLM's SDK as a client ---------------------------------------------------------------------------------

@pytest.fixture
def litellm(monkeypatch):
    """LiteLLM with its bundled model-cost map, and any connection or lookup beyond loopback failing the test:
    it must work here without downloading anything (cost maps, tiktoken encodings)."""
    import socket

    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    real_connect, real_lookup = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"LiteLLM tried to reach {address!r}")
        return real_connect(sock, address)

    def lookup(host, *args, **kwargs):
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"LiteLLM tried to resolve {host!r}")
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    import litellm

    return litellm


def test_litellm_completion_streaming_and_tools(stack, litellm):
    where = {"api_base": stack["url"] + "/v1", "api_key": KEY}
    answer = litellm.completion(model="openai/m", messages=[{"role": "user", "content": "hi"}], **where)
    assert answer.choices[0].message.content == "served-by onprem-paris" and answer.usage.total_tokens == 5
    chunks = list(litellm.completion(model="openai/m", messages=[{"role": "user", "content": "hi"}], stream=True,
                                     stream_options={"include_usage": True}, **where))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "served-by onprem-paris"
    assert [c.usage.total_tokens for c in chunks if getattr(c, "usage", None)][-1] == 5
    called = litellm.completion(model="openai/m", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER],
                                **where)
    assert called.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert last_record(stack)["tenant"] == "eu-bank"


def test_litellm_responses(stack, litellm):
    response = litellm.responses(model="openai/m", input="hello", api_base=stack["url"] + "/v1", api_key=KEY)
    assert response.id.startswith("resp_")  # the router's own Responses answer (LiteLLM calls /v1/responses)
    assert response.output[0].content[0].text == "served-by onprem-paris"
    assert stack["fake"].received[-1]["messages"] == [{"role": "user", "content": "hello"}]
