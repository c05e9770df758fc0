"""OpenAI chat <-> Bedrock Converse, tools included, as botocore's `bedrock-runtime` model (2023-09-30) defines it:
`Message`/`ContentBlock` (`text`, `toolUse` = ToolUseBlock, `toolResult` = ToolResultBlock), `ToolConfiguration`
(`tools[].toolSpec{name, description, inputSchema{json}, strict}`, `toolChoice` auto|any|tool),
`InferenceConfiguration` (temperature and topP 0..1), `OutputConfig.textFormat` (a JSON schema, as a string), and
ConverseStream's `contentBlockStart.start.toolUse` / `contentBlockDelta.delta.toolUse.input`.

What Converse has no place for (`seed`, `logprobs`, penalties, `logit_bias`, `n` > 1, `parallel_tool_calls: false`)
is a 400 naming the backend before anything is sent, never dropped. Values outside Converse's ranges are refused
the same way rather than rescaled: `temperature` 1.5 means something different on a 0..1 scale.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sovra.providers import openai_wire

#: Converse stopReason (botocore `StopReason`) -> OpenAI finish_reason
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "content_filtered": "content_filter", "guardrail_intervened": "content_filter",
          "model_context_window_exceeded": "length"}
#: OpenAI behaviour fields Converse carries (translated below); every other one is refused.
CARRIED = ("tools", "tool_choice", "response_format", "stop", "stream_options", "parallel_tool_calls", "n")
#: JSON mode (`{"type": "json_object"}`) as Converse's structured output: any JSON object.
JSON_OBJECT = {"type": "object"}


def converse_request(body: Mapping[str, Any], where: str = "aws-bedrock") -> dict[str, Any]:
    """An OpenAI chat body as Converse arguments: system prompts apart (empty ones dropped: Converse requires a
    system block's text to be non-empty), consecutive turns of one role merged (Converse wants them alternating;
    `tool` results become the next user turn's `toolResult` blocks), sampling in `inferenceConfig`, tools in
    `toolConfig`, `response_format` in `outputConfig`. Raises ValueError (a 400 naming `where`) for what Converse
    cannot carry."""
    openai_wire.refuse_unsupported(body, where, CARRIED)
    if body.get("n") not in (None, 1):
        raise ValueError(f"{where} answers one choice per request; n must be 1")
    if body.get("functions") or body.get("function_call"):
        raise ValueError(f"{where} takes OpenAI `tools`, not the legacy `functions`/`function_call`")
    if body.get("parallel_tool_calls") is False:
        raise ValueError(f"{where} cannot forbid parallel tool calls (Converse has no such setting); send the "
                         "request without `parallel_tool_calls: false`")
    system, turns = openai_wire.split_system(body.get("messages") or [])
    messages = _messages(turns, where)
    out: dict[str, Any] = {"messages": messages}
    system = [s for s in system if s]
    if system:
        out["system"] = [{"text": s} for s in system]
    config = _inference(body, where)
    if config:
        out["inferenceConfig"] = config
    tools = _tool_config(body, where, uses_tools=any("toolUse" in b or "toolResult" in b
                                                     for m in messages for b in m["content"]))
    if tools:
        out["toolConfig"] = tools
    output = _output_config(body.get("response_format"), where)
    if output:
        out["outputConfig"] = output
    return out


def _messages(turns: Iterable[Mapping[str, Any]], where: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    calls: set[str] = set()  # tool-call ids the assistant made, which a `tool` message must answer
    for m in turns:
        role, content = m.get("role"), m.get("content")
        if role == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in calls:
                raise ValueError(f"{where}: a `tool` message answers tool call {call_id!r}, which no earlier "
                                 "assistant message made")
            role, blocks = "user", [{"toolResult": {"toolUseId": call_id,
                                                    "content": [{"text": openai_wire.text_of(content)}]}}]
        elif role in ("user", "assistant"):
            if isinstance(content, list) and any(not isinstance(p, Mapping) or p.get("type") != "text"
                                                 for p in content):
                raise ValueError(f"{where}: only text content parts are translated")
            text = openai_wire.text_of(content)
            blocks = [{"text": text}] if text or role == "user" else []
            if role == "assistant":
                for call in m.get("tool_calls") or ():
                    blocks.append({"toolUse": _tool_use(call, where)})
                    calls.add(call["id"])
                if not blocks:
                    raise ValueError(f"{where}: an assistant message needs content or tool_calls")
        else:
            raise ValueError(f"{where}: a message with role {role!r} cannot be sent (system, user, assistant, tool)")
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += blocks
        else:
            messages.append({"role": role, "content": blocks})
    return messages


def _tool_use(call: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An assistant's OpenAI tool call as a ToolUseBlock; its `arguments` JSON string becomes the `input` object."""
    if call.get("type", "function") != "function":
        raise ValueError(f"{where} carries only function tool calls, not {call.get('type')!r}")
    fn = call["function"]
    args = fn.get("arguments") or "{}"
    try:
        data = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        raise ValueError(f"{where}: tool call {call.get('id')!r} has arguments that are not JSON") from None
    if not isinstance(data, Mapping):
        raise TypeError(f"{where}: tool call {call.get('id')!r} must have a JSON object as its arguments")
    return {"toolUseId": str(call["id"]), "name": str(fn["name"]), "input": dict(data)}


def _inference(body: Mapping[str, Any], where: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        config["maxTokens"] = int(max_tokens)
    for key, field in (("temperature", "temperature"), ("topP", "top_p")):
        value = openai_wire.within(body, field, 0, 1, where)  # InferenceConfiguration: min 0, max 1
        if value is not None:
            config[key] = value
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    return config


def _tool_config(body: Mapping[str, Any], where: str, *, uses_tools: bool) -> dict[str, Any] | None:
    """OpenAI `tools`/`tool_choice` as a ToolConfiguration. `tool_choice: "none"` sends no tools (Converse has no
    "none"), which it can only do when the conversation holds no tool calls: Converse requires `toolConfig`
    whenever toolUse or toolResult blocks are present."""
    tools, choice = body.get("tools") or [], body.get("tool_choice")
    if choice == "none" or not tools:
        if uses_tools:
            raise ValueError(f"{where} needs the request's `tools` (and a tool_choice other than none) when its "
                             "messages hold tool calls or tool results: Converse requires them")
        if choice not in (None, "none", "auto"):
            raise ValueError(f"{where}: `tool_choice` names a tool, but the request has no `tools`")
        return None
    specs = []
    for tool in tools:
        if tool.get("type") != "function":
            raise ValueError(f"{where} carries only function tools, not {tool.get('type')!r}")
        fn = tool["function"]
        spec: dict[str, Any] = {"name": str(fn["name"]),
                                "inputSchema": {"json": fn.get("parameters") or {"type": "object", "properties": {}}}}
        if fn.get("description"):
            spec["description"] = str(fn["description"])
        if fn.get("strict"):
            spec["strict"] = True
        specs.append({"toolSpec": spec})
    out: dict[str, Any] = {"tools": specs}
    if choice == "required":
        out["toolChoice"] = {"any": {}}
    elif isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        if choice.get("type") != "function" or name not in {s["toolSpec"]["name"] for s in specs}:
            raise ValueError(f"{where}: `tool_choice` must name one of the request's function tools")
        out["toolChoice"] = {"tool": {"name": name}}
    elif choice not in (None, "auto"):  # auto is Converse's default
        raise ValueError(f"{where}: unknown tool_choice {choice!r} (none, auto, required or a function)")
    return out


def _output_config(fmt: Mapping[str, Any] | None, where: str) -> dict[str, Any] | None:
    """`response_format` as Converse's structured output (`outputConfig.textFormat`, type json_schema, the schema
    as a JSON string). JSON mode is the schema of any object. A model without structured output answers Bedrock's
    own ValidationException, which the client gets as a 400."""
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        schema: Any = JSON_OBJECT
        named: dict[str, Any] = {"name": "json_object"}
    elif fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema")
        if not isinstance(schema, Mapping):
            raise ValueError(f"{where}: response_format json_schema needs a `schema` object")
        named = {k: str(spec[k]) for k in ("name", "description") if spec.get(k)}
    else:
        raise ValueError(f"{where}: unknown response_format type {fmt.get('type')!r}")
    return {"textFormat": {"type": "json_schema",
                           "structure": {"jsonSchema": {"schema": json.dumps(schema), **named}}}}


def openai_messages(request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Converse arguments back as OpenAI messages (system first, one message per text block): the inverse of
    `converse_request` for text chat, used to check the translation."""
    out: list[dict[str, Any]] = [{"role": "system", "content": s.get("text", "")} for s in request.get("system") or ()]
    for m in request.get("messages") or ():
        out += [{"role": m["role"], "content": b["text"]} for b in m.get("content") or () if "text" in b]
    return out


def answer(model: str, resp: Mapping[str, Any]) -> dict[str, Any]:
    """A Converse answer as an OpenAI chat.completion: text blocks joined, toolUse blocks as `tool_calls` (content
    None when there is no text, as OpenAI sends it), Converse's token usage."""
    content = resp["output"]["message"]["content"]
    usage = resp.get("usage") or {}
    text = "".join(b.get("text", "") for b in content)
    calls = [openai_wire.tool_call(b["toolUse"]["toolUseId"], b["toolUse"]["name"], b["toolUse"].get("input") or {})
             for b in content if "toolUse" in b]
    return openai_wire.completion(model, text if text or not calls else None,
                                  finish_reason=FINISH.get(resp.get("stopReason"), "stop"),
                                  prompt_tokens=usage.get("inputTokens"), completion_tokens=usage.get("outputTokens"),
                                  tool_calls=calls)


def stream_chunks(model: str, events: Iterable[Mapping[str, Any]], *, include_usage: bool = False
                  ) -> Iterator[dict[str, Any]]:
    """ConverseStream events as OpenAI chunks: the role first, each text delta, each tool call (named by its
    `contentBlockStart`, its arguments by `contentBlockDelta.delta.toolUse.input` pieces), then the finish reason.
    With `include_usage`, as OpenAI does, a last chunk with no choices carries the usage (Converse's `metadata`);
    without, the finish chunk carries it (OpenAI's chunk has a nullable `usage`), so the trail still counts tokens."""
    id, finish, ended = openai_wire.new_id(), None, False
    tools: dict[int, int] = {}  # contentBlockIndex -> OpenAI tool-call index
    for event in events:
        if "messageStart" in event:
            yield openai_wire.chunk(model, id, role="assistant", content="")
        elif "contentBlockStart" in event:
            start = event["contentBlockStart"]
            use = (start.get("start") or {}).get("toolUse")
            if use:
                k = tools[start.get("contentBlockIndex", 0)] = len(tools)
                yield openai_wire.chunk(model, id, tool_calls=[openai_wire.tool_call_delta(
                    k, id=use["toolUseId"], name=use["name"], arguments="")])
        elif "contentBlockDelta" in event:
            block = event["contentBlockDelta"]
            delta = block.get("delta") or {}
            if delta.get("text"):
                yield openai_wire.chunk(model, id, content=delta["text"])
            elif "toolUse" in delta and block.get("contentBlockIndex", 0) in tools:
                yield openai_wire.chunk(model, id, tool_calls=[openai_wire.tool_call_delta(
                    tools[block.get("contentBlockIndex", 0)], arguments=delta["toolUse"].get("input", ""))])
        elif "messageStop" in event:
            finish = FINISH.get(event["messageStop"].get("stopReason"), "stop")
        elif "metadata" in event:
            ended = True
            u = event["metadata"].get("usage") or {}
            counted = openai_wire.usage(u.get("inputTokens"), u.get("outputTokens"))
            if include_usage:
                yield openai_wire.chunk(model, id, finish_reason=finish or "stop")
                yield {**openai_wire.chunk(model, id), "choices": [], "usage": counted}
            else:  # on the finish chunk, where a client that did not ask ignores it and the audit still counts
                yield openai_wire.chunk(model, id, finish_reason=finish or "stop", usage_=counted)
    if not ended and finish is not None:
        yield openai_wire.chunk(model, id, finish_reason=finish)
