"""Bedrock and SageMaker as the vendors behave, over real HTTP against the AWS emulator with the adapters' real
botocore clients: configuration errors that take a backend out (and fail over), Cohere's 96-text batches and Embed
v4's typed answer, OpenAI value ranges, lifecycle states that still serve, and the OpenAI tool-calling surface
translated to Converse (`toolConfig`, toolUse/toolResult blocks, ConverseStream tool deltas, structured output)."""

from __future__ import annotations

import json

import pytest

from sovra.core.errors import ProviderError
from sovra.core.backends import RoutingTable
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.core.api_errors import BadRequest, Refused, Untranslatable
from sovra.orchestrator.router.gate import RequestResidency
from sovra.orchestrator.router.probe import Prober
from sovra.core.spec import Residency
from sovra.providers.aws.bedrock import BedrockClient
from sovra.providers.aws.sagemaker import SageMakerClient
from tests.emulators.aws import _vector, aws_env, aws_environ, fake_aws
from tests.integration.test_provider_aws import (
    BEDROCK,
    CHAT,
    EU,
    PARIS,
    PIXTRAL,
    _stream,
    backend,
    run,
    target,
)

SONNET = "anthropic.claude-sonnet-4-20250514-v1:0"  # profile-only on Bedrock: no on-demand by its plain id
FRANKFURT = target("aws-bedrock/eu-central-1", region="eu-central-1", zone="EU", country="DE", scope="in-region",
                   models=(("sonnet", SONNET),))
EU_SONNET = target("aws-bedrock/eu", region="eu-central-1", zone="EU", scope="eu", models=(("sonnet", SONNET),))
EU_BOUND = RequestResidency(Residency(zones=("EU",)))
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


@pytest.fixture(scope="module")
def fake_server():
    with fake_aws() as fake:
        yield fake


@pytest.fixture
def fake(fake_server):
    """The fake, reset, with boto3 sent to it for every AWS service Sovra calls."""
    fake_server.reset()
    url = fake_server.url
    with aws_environ(aws_env(bedrock_runtime=url, bedrock=url, sagemaker_runtime=url, sagemaker=url)):
        yield fake_server


def chat(**extra) -> dict:
    return {"model": "pixtral-large", "messages": [{"role": "user", "content": "Weather in Paris?"}], **extra}


def refused_before_sending(fake, body, *words):
    with pytest.raises(Untranslatable) as err:
        run(BedrockClient().chat(backend(EU, "pixtral-large"), body))
    assert fake.requests == [], "nothing may be sent"
    assert EU.id in err.value.message and all(w in err.value.message for w in words), err.value.message
    return err.value


# -- 1. a model id Bedrock cannot serve is the backend's fault --------------------------------------------------------


def test_a_profile_only_model_by_its_plain_id_is_taken_out_and_the_request_fails_over(fake):
    fake.profile_only = {SONNET}
    plain = backend(FRANKFURT, "sonnet").model_copy(update={"cost": 1.0, "deployment": "d", "id": "d@frankfurt"})
    profile = backend(EU_SONNET, "sonnet").model_copy(update={"cost": 2.0, "id": "d@eu"})
    table = RoutingTable.of([plain, profile])
    client = BedrockClient()
    dispatcher = Dispatcher(table, backoff_s=0.0)

    answer, used = run(dispatcher.send(table.resolve("d"), EU_BOUND, lambda b: client.chat(b, CHAT)))
    assert used.id == "d@eu" and answer["choices"][0]["message"]["content"].startswith("echo:")
    assert [r.path for r in fake.requests] == [f"/model/{SONNET}/converse", f"/model/eu.{SONNET}/converse"]
    assert dispatcher.breaker.is_open("d@frankfurt"), "the misconfigured backend is out at once"
    assert [b.id for b in dispatcher.healthy(tuple(table.backends))] == ["d@eu"], "/readyz counts it down"
    assert "inference profile" in dispatcher.why["d@frankfurt"], "/readyz tells admins why"

    # the payload-free probe keeps it out while the account says so, and `sovra status` says why and what to use
    assert run(Prober(dispatcher, {"aws-bedrock": client}).probe_once()) == {"d@frankfurt": False}
    status = run(client.describe(plain))["status"]
    assert "only through an inference profile" in status and f"eu.{SONNET}" in status, status


def test_the_vendors_configuration_refusals_are_refused_down_not_400(fake):
    fake.profile_only = {SONNET}
    with pytest.raises(Refused) as err:
        run(BedrockClient().chat(backend(FRANKFURT, "sonnet"), CHAT))
    assert err.value.down and err.value.resend and "inference profile" in str(err.value)
    fake.unknown_models = {PIXTRAL}
    with pytest.raises(Refused) as err:
        run(BedrockClient().chat_stream(backend(EU, "pixtral-large"), CHAT))
    assert err.value.down and "model identifier is invalid" in str(err.value)
    assert run(BedrockClient().health(backend(EU, "pixtral-large"))) is True  # the profile itself is ACTIVE here
    with fake.failing("invalid"), pytest.raises(BadRequest):  # any other ValidationException is still the client's
        run(BedrockClient().chat(backend(EU, "pixtral-large"), CHAT))


def test_audit_settings_names_the_inference_profile_to_use(fake):
    fake.profile_only = {SONNET}
    with pytest.raises(ProviderError) as err:
        BEDROCK.live_settings(FRANKFURT, BEDROCK.connection({}))
    message = str(err.value)
    assert f"`eu.{SONNET}`" in message and "scope: eu" in message and "cannot serve" in message, message
    assert BEDROCK.live_settings(EU_SONNET, BEDROCK.connection({}))[0].zone == "EU"  # the profile id is fine


# -- 2. Cohere embeddings ---------------------------------------------------------------------------------------------


def test_cohere_embeddings_go_in_batches_of_96_joined_in_order(fake):
    t = target("aws-bedrock/eu-central-1", region="eu-central-1", zone="EU", country="DE", scope="in-region",
               models=(("embedder", "cohere.embed-multilingual-v3"),))
    texts = [f"text number {i}" for i in range(200)]
    out = run(BedrockClient().embed(backend(t, "embedder"), {"model": "embedder", "input": texts}))
    assert [len(r.json()["texts"]) for r in fake.requests] == [96, 96, 8]
    assert [d["embedding"] for d in out["data"]] == [_vector(x) for x in texts]
    assert [d["index"] for d in out["data"]] == list(range(200))


def test_cohere_embed_v4_typed_answer_and_dimensions(fake):
    t = target("aws-bedrock/eu-central-1", region="eu-central-1", zone="EU", country="DE", scope="in-region",
               models=(("v4", "cohere.embed-v4:0"), ("v3", "cohere.embed-english-v3")))
    out = run(BedrockClient().embed(backend(t, "v4"), {"model": "v4", "input": ["a", "b"], "dimensions": 256}))
    (seen,) = fake.requests
    assert seen.json() == {"texts": ["a", "b"], "input_type": "search_document", "embedding_types": ["float"],
                           "output_dimension": 256}
    assert [len(d["embedding"]) for d in out["data"]] == [256, 256]
    with pytest.raises(Untranslatable, match="dimensions"):
        run(BedrockClient().embed(backend(t, "v3"), {"model": "v3", "input": ["a"], "dimensions": 256}))
    assert len(fake.requests) == 1


# -- 3. OpenAI value ranges; 5. empty system prompt and finish reasons ------------------------------------------------


def test_values_outside_converses_range_are_a_400_naming_the_backend(fake):
    refused_before_sending(fake, chat(temperature=1.5), "`temperature` 1.5", "[0, 1]")


def test_an_empty_system_prompt_is_dropped(fake):
    body = {**CHAT, "messages": [{"role": "system", "content": ""}, *CHAT["messages"][1:]]}
    run(BedrockClient().chat(backend(EU, "pixtral-large"), body))
    assert "system" not in fake.requests[0].json()


def test_context_window_exceeded_is_length(fake):
    fake.stop_reason = "model_context_window_exceeded"
    out = run(BedrockClient().chat(backend(EU, "pixtral-large"), CHAT))
    assert out["choices"][0]["finish_reason"] == "length"
    chunks = run(_stream(BedrockClient(), backend(EU, "pixtral-large")))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


# -- 6. tools and the rest of the OpenAI surface ----------------------------------------------------------------------


def test_tools_and_a_tool_turn_are_sent_as_converse_tool_config_and_blocks(fake):
    history = [{"role": "user", "content": "Weather in Paris and Lyon?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                     "arguments": '{"city": "Paris"}'}},
                   {"id": "call_2", "type": "function", "function": {"name": "get_weather",
                                                                     "arguments": '{"city": "Lyon"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
               {"role": "tool", "tool_call_id": "call_2", "content": "21 C"}]
    out = run(BedrockClient().chat(backend(EU, "pixtral-large"), {
        "model": "pixtral-large", "messages": history, "tools": [WEATHER], "tool_choice": "required", "stop": ["X"]}))
    sent = fake.requests[0].json()
    assert sent["toolConfig"] == {"tools": [{"toolSpec": {"name": "get_weather", "description": "Weather in a city",
                                                          "inputSchema": {"json": WEATHER["function"]["parameters"]}}}],
                                  "toolChoice": {"any": {}}}
    assert sent["messages"] == [
        {"role": "user", "content": [{"text": "Weather in Paris and Lyon?"}]},
        {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}},
            {"toolUse": {"toolUseId": "call_2", "name": "get_weather", "input": {"city": "Lyon"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "call_1", "content": [{"text": "18 C"}]}},
                                     {"toolResult": {"toolUseId": "call_2", "content": [{"text": "21 C"}]}}]}]
    assert sent["inferenceConfig"] == {"stopSequences": ["X"]}
    assert out["choices"][0]["finish_reason"] == "stop"


def test_a_tool_use_answer_is_openai_tool_calls(fake):
    fake.tool_use = {"name": "get_weather", "input": {"city": "Paris"}}
    out = run(BedrockClient().chat(backend(EU, "pixtral-large"), chat(tools=[WEATHER])))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me look."
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"] == "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_a_streamed_tool_use_is_openai_tool_call_deltas(fake):
    fake.tool_use = {"name": "get_weather", "input": {"city": "Paris", "unit": "celsius"}}
    chunks = run(_stream(BedrockClient(), backend(EU, "pixtral-large"), chat(tools=[WEATHER], stream=True)))
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert deltas[0] == {"index": 0, "id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}
    assert len(deltas) > 2 and all(d["index"] == 0 and set(d["function"]) == {"arguments"} for d in deltas[1:])
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == {"city": "Paris", "unit": "celsius"}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Let me look."
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_choice_names_a_tool_or_none(fake):
    run(BedrockClient().chat(backend(EU, "pixtral-large"), chat(
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})))
    assert fake.requests[-1].json()["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}
    run(BedrockClient().chat(backend(EU, "pixtral-large"), chat(tools=[WEATHER], tool_choice="none")))
    assert "toolConfig" not in fake.requests[-1].json(), "Converse has no `none`: the tools are not offered"
    fake.requests.clear()
    refused_before_sending(fake, chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "x"}}),
                           "tool_choice")


def test_response_format_is_converse_structured_output(fake):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    out = run(BedrockClient().chat(backend(EU, "pixtral-large"), chat(
        response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}})))
    fmt = fake.requests[-1].json()["outputConfig"]["textFormat"]
    assert fmt["type"] == "json_schema" and fmt["structure"]["jsonSchema"]["name"] == "reply"
    assert json.loads(fmt["structure"]["jsonSchema"]["schema"]) == schema
    assert json.loads(out["choices"][0]["message"]["content"]) == {"echo": "echo: Weather in Paris?"}
    run(BedrockClient().chat(backend(EU, "pixtral-large"), chat(response_format={"type": "json_object"})))
    jm = fake.requests[-1].json()["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert json.loads(jm["schema"]) == {"type": "object"}


@pytest.mark.parametrize(("extra", "words"), [
    ({"seed": 7}, ["`seed`"]),
    ({"logprobs": True, "top_logprobs": 2}, ["`logprobs`", "`top_logprobs`"]),
    ({"frequency_penalty": 0.5}, ["`frequency_penalty`"]),
    ({"tools": [WEATHER], "parallel_tool_calls": False}, ["parallel"]),
    ({"functions": [WEATHER["function"]]}, ["legacy"]),
])
def test_what_converse_cannot_do_is_a_400_naming_the_backend(fake, extra, words):
    refused_before_sending(fake, chat(**extra), *words)


def test_tool_history_without_tools_is_a_400_before_sending(fake):
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                     "function": {"name": "f", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "c", "content": "ok"}]
    refused_before_sending(fake, {"model": "m", "messages": history}, "tools")
    refused_before_sending(fake, {"model": "m", "messages": history, "tools": [WEATHER], "tool_choice": "none"},
                           "tool_choice")


# -- 4. lifecycle states that still serve ------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "serves"), [
    ("InService", True), ("Updating", True), ("SystemUpdating", True), ("RollingBack", True),
    ("UpdateRollbackFailed", True), ("Creating", False), ("OutOfService", False), ("Failed", False),
    ("Deleting", False)])
def test_sagemaker_endpoints_that_still_serve_are_healthy(fake, status, serves):
    fake.endpoint_status = status
    assert run(SageMakerClient().health(backend(PARIS, "m", {"endpoint": "sovra-paris"}))) is serves


def test_sagemaker_passes_tools_and_formats_to_the_container_untouched(fake):
    body = chat(tools=[WEATHER], tool_choice="required", response_format={"type": "json_object"}, seed=7,
                logprobs=True, stop=["X"])
    run(SageMakerClient().chat(backend(PARIS, "m", {"endpoint": "sovra-paris"}), body))
    assert fake.requests[-1].json() == {**body, "model": "m", "stream": False}


@pytest.mark.parametrize("field, value", [("reasoning_effort", "high"), ("modalities", ["text", "audio"]),
                                          ("prediction", {"type": "content", "content": "x"})])
def test_newer_openai_fields_converse_has_no_place_for_are_refused_not_dropped(fake, field, value):
    refused_before_sending(fake, chat(**{field: value}), f"`{field}`")
