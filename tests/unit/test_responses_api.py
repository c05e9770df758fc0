"""The Responses and completions translations on their own: what chat request each body becomes, and that every
answer and stream event validates against the `openai` package's own models (not just what its client tolerates)."""

from __future__ import annotations

import json

import pytest
from openai.types import Completion
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from sovra.orchestrator.router import completions, responses
from sovra.core.api_errors import BadRequest

EVENT = TypeAdapter(ResponseStreamEvent)


def chat_answer(content="hi there", tool_calls=None, finish="stop"):
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}


def chunk(delta, finish=None, usage=None, choices=True):
    out = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
    if usage:
        out["usage"] = usage
    return out


def events(raw: list[bytes]) -> list[dict]:
    out = []
    for event in raw:
        head, data = event.decode().strip().split("\n")
        parsed = json.loads(data.removeprefix("data: "))
        assert head == "event: " + parsed["type"]  # the event line names the event, as OpenAI sends it
        EVENT.validate_python(parsed)
        out.append(parsed)
    return out


def test_items_become_chat_messages():
    shape = responses.translate({"model": "m", "instructions": "Be brief.", "input": [
        {"role": "developer", "content": "Use metric units."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"},
                                                         {"type": "input_image", "image_url": "https://x/y.png",
                                                          "detail": "low"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me check."}]},
        {"type": "function_call", "call_id": "c9", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c9", "output": "sunny"}],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": True}],
        "tool_choice": {"type": "function", "name": "get_weather"}, "max_output_tokens": 9,
        "text": {"format": {"type": "json_object"}}, "reasoning": {"effort": "low"}, "store": False})
    assert shape.chat == {
        "model": "m", "max_tokens": 9, "reasoning_effort": "low", "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"},
                                                    "strict": True}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use metric units."},
            {"role": "user", "content": [{"type": "text", "text": "weather?"},
                                         {"type": "image_url", "image_url": {"url": "https://x/y.png",
                                                                             "detail": "low"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me check."}],
             "tool_calls": [{"id": "c9", "type": "function", "function": {"name": "get_weather",
                                                                          "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c9", "content": "sunny"}]}


@pytest.mark.parametrize("body, says", [
    ({"previous_response_id": "resp_1"}, "keeps no conversation state"),
    ({"store": True}, "`store: true`"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt template"),
    ({"truncation": "auto"}, "truncation"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "built-in tools"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "'reasoning'"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input_file"),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "json_schema needs a `name`"),
    ({"temperature": "0.5"}, "temperature"),
    ({"input": []}, "input"),
    ({"max_tool_calls": 2}, "`max_tool_calls` is not supported"),
])
def test_what_cannot_be_carried_is_a_400_naming_it(body, says):
    with pytest.raises(BadRequest) as err:
        responses.translate({"model": "m", "input": "hi", **body})
    assert says in err.value.message and err.value.message.startswith("/v1/responses: ")


def test_a_whole_answer_is_an_sdk_response():
    shape = responses.translate({"model": "m", "input": "hi", "metadata": {"team": "a"}})
    answer = shape.answer(chat_answer(content="hello", tool_calls=[
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]))
    parsed = Response.model_validate(answer)  # every field the SDK's model requires is there, typed right
    assert parsed.output_text == "hello" and parsed.status == "completed" and parsed.metadata == {"team": "a"}
    assert [o.type for o in parsed.output] == ["message", "function_call"] and parsed.output[1].call_id == "call_1"
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens) == (4, 2, 6)
    cut = Response.model_validate(shape.answer(chat_answer(finish="length")))
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"


def test_a_stream_is_the_sdk_events_in_order():
    shape = responses.translate({"model": "m", "input": "hi", "stream": True})
    assert shape.chat["stream_options"] == {"include_usage": True}
    raw = shape.start()
    for c in [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
              chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "f", "arguments": ""}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
              chunk({}, "tool_calls"), chunk({}, usage={"prompt_tokens": 1, "completion_tokens": 2}, choices=False)]:
        raw += shape.feed(c)
    out = events(raw + shape.end())
    assert [e["type"] for e in out] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    final = Response.model_validate(out[-1]["response"])
    assert final.output_text == "Hello" and final.output[1].arguments == "{}" and final.usage.total_tokens == 3


def test_a_broken_stream_ends_with_error_and_failed():
    shape = responses.translate({"model": "m", "input": "hi", "stream": True})
    out = events(shape.start() + shape.feed(chunk({"content": "par"})) + shape.fail(
        {"message": "the backend stream broke", "type": "api_error", "code": "stream_interrupted"}))
    assert [e["type"] for e in out[-2:]] == ["error", "response.failed"]
    assert out[-2]["code"] == "stream_interrupted" and "stream_interrupted" in out[-1]["response"]["error"]["message"]


def test_completions_answer_and_chunks_are_sdk_completions():
    shape = completions.translate({"model": "m", "prompt": ["Say hi"], "max_tokens": 3, "logprobs": 2,
                                   "stream": True})
    assert shape.chat == {"model": "m", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 3,
                          "logprobs": True, "top_logprobs": 2, "stream": True}
    whole = Completion.model_validate(shape.answer(chat_answer()))
    assert whole.choices[0].text == "hi there" and whole.object == "text_completion"
    raw = shape.feed(chunk({"role": "assistant", "content": ""})) + shape.feed(chunk({"content": "hi"})) + \
        shape.feed(chunk({}, "stop"))
    sent = [json.loads(e.decode().removeprefix("data: ")) for e in raw]
    # OpenAI streams `finish_reason: null` until the last chunk, which the SDK's (non-optional) type does not say
    assert [c["choices"][0]["text"] for c in sent] == ["hi", ""] and sent[0]["choices"][0]["finish_reason"] is None
    assert Completion.model_validate(sent[-1]).choices[0].finish_reason == "stop"
    assert shape.end() == [b"data: [DONE]\n\n"]
