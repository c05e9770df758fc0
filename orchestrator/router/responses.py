"""OpenAI's Responses API (`POST /v1/responses`) as a chat request and back, so a Responses call goes through the
same gate, ladder and audit as a chat. Shapes follow the `openai` package (3.x): `types/responses/
response_create_params.py` (the request), `response.py` (the answer), `response_output_message.py`,
`response_output_text.py`, `response_function_tool_call.py`, `response_usage.py`, and the stream events
`response_created_event.py` ... `response_completed_event.py`, each with its `sequence_number`.

Sovra keeps no conversation state: what needs stored responses or conversations (`previous_response_id`,
`store: true`, `conversation`, `background`, stored `prompt`s, `item_reference`s) is a 400 that says so, as are
OpenAI's built-in tools (web search, file search, ...), which run on OpenAI's side.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sovra.core.api_errors import BadRequest
from sovra.orchestrator.router.requests import Translated, sse, strict

SURFACE = "/v1/responses"
#: Input items and tools one request may carry (the chat path's own message limit).
MAX_ITEMS = 10_000
MAX_TOOLS = 128

_Text = Annotated[str, Field(strict=True)]
_Int = Annotated[int, Field(strict=True)]
_Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
_Flag = Annotated[bool, Field(strict=True)]

#: Fields that need state Sovra does not keep, and why each is refused.
_STATEFUL = {
    "previous_response_id": "continues a response stored by the server",
    "conversation": "continues a conversation stored by the server",
    "prompt": "names a prompt template stored by the server",
    "background": "runs the response in the background, to be fetched later from the server",
    "context_management": "compacts a conversation the server keeps",
}


class ResponsesRequest(BaseModel):
    """The `/v1/responses` fields the router can carry to a chat backend; any other field is a 400."""

    model_config = ConfigDict(extra="forbid")
    model: _Text = Field(min_length=1, max_length=256)
    input: _Text | Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_ITEMS)]
    instructions: _Text | None = None
    max_output_tokens: _Int | None = Field(default=None, ge=1, le=131_072)
    temperature: _Number | None = Field(default=None, ge=0, le=2)
    top_p: _Number | None = Field(default=None, ge=0, le=1)
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: _Text | dict[str, Any] | None = None
    parallel_tool_calls: _Flag | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    stream: _Flag = False
    stream_options: dict[str, Any] | None = None
    store: _Flag | None = None
    metadata: Annotated[dict[str, Annotated[str, Field(strict=True, max_length=512)]],
                        Field(max_length=16)] | None = None
    user: _Text | None = Field(default=None, max_length=256)
    safety_identifier: _Text | None = Field(default=None, max_length=256)
    truncation: Literal["disabled"] | None = None
    include: Annotated[list[Any], Field(max_length=0)] | None = None  # every `include` asks for state or extras
    background: Literal[False] | None = None
    previous_response_id: None = None
    conversation: None = None
    prompt: None = None


def translate(body: dict[str, Any]) -> Responses:
    """A `/v1/responses` body as a chat request; a 400 for what cannot be carried."""
    for name, why in _STATEFUL.items():
        if body.get(name) not in (None, False):
            raise BadRequest(f"{SURFACE}: `{name}` {why}, and Sovra keeps no conversation state; send the whole "
                             "conversation as `input` items instead")
    if body.get("store") is True:
        raise BadRequest(f"{SURFACE}: `store: true` asks the server to keep the response, and Sovra keeps no "
                         "conversation state; send `store: false` (or leave it out) and keep the conversation in "
                         "your app")
    if body.get("truncation") == "auto":
        raise BadRequest(f"{SURFACE}: `truncation: auto` drops turns the server keeps; Sovra keeps none; send "
                         "`truncation: disabled` or leave it out")
    req: ResponsesRequest = strict(ResponsesRequest, body, SURFACE)
    return Responses(req)


def _fail(where: str, message: str) -> BadRequest:
    return BadRequest(f"{SURFACE}: {where}: {message}")


def _messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """`instructions` and `input` (a string, or input items) as chat messages."""
    out: list[dict[str, Any]] = []
    if req.instructions:  # OpenAI: "a system (or developer) message inserted into the model's context"
        out.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        out.append({"role": "user", "content": req.input})
        return out
    for i, item in enumerate(req.input):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _fail(where, f"role {role!r} is not one of user, assistant, system, developer")
            out.append({"role": role, "content": _content(where, item.get("content"))})
        elif kind == "function_call":
            call = {"id": _string(where, item, "call_id"), "type": "function",
                    "function": {"name": _string(where, item, "name"),
                                 "arguments": _string(where, item, "arguments")}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_call_id" not in last:
                last.setdefault("tool_calls", []).append(call)  # one assistant turn: its text and its calls
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _text_parts(where + ".output", output)
            out.append({"role": "tool", "tool_call_id": _string(where, item, "call_id"), "content": text})
        elif kind == "item_reference":
            raise _fail(where, "an `item_reference` points at an item stored by the server, and Sovra keeps no "
                               "conversation state; send the item itself")
        else:
            raise _fail(where, f"items of type {kind!r} cannot be sent to a chat backend; Sovra carries message, "
                               "function_call and function_call_output items")
    return out


def _string(where: str, item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise _fail(f"{where}.{key}", "expected a string")
    return value


def _content(where: str, content: Any) -> str | list[dict[str, Any]]:
    """Input content (a string, or input_text / output_text / input_image parts) as chat content."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _fail(f"{where}.content", "expected a string or a list of content parts")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _fail(f"{where}.content[{j}]", f"parts of type {kind!r} cannot be sent to a chat backend; Sovra "
                                                 "carries input_text, output_text and input_image (by URL) parts")
    return parts


def _text_parts(where: str, parts: Any) -> str:
    if not isinstance(parts, list) or not all(isinstance(p, dict) and p.get("type") in ("input_text", "output_text")
                                              and isinstance(p.get("text"), str) for p in parts):
        raise _fail(where, "expected a string or a list of input_text parts")
    return "".join(p["text"] for p in parts)


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses' flat function tools (`function_tool_param.py`) as chat's nested ones."""
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind != "function":
            raise _fail(f"tools[{i}]", f"{kind!r} is one of OpenAI's built-in tools, which run on OpenAI's side; "
                                       "Sovra's backends take function tools only")
        unknown = sorted(set(tool) - {"type", "name", "description", "parameters", "strict"})
        if unknown:
            raise _fail(f"tools[{i}]", f"{', '.join(unknown)} cannot be sent to a chat backend")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _fail(f"tools[{i}].name", "expected a non-empty string")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _fail("tool_choice", f"{choice!r} is not one of none, auto, required")
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _fail("tool_choice", "Sovra carries none, auto, required or {type: function, name}; built-in tools and "
                               "allowed_tools run on OpenAI's side")


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    """`text.format` (`response_format_text_config_param.py`) as chat's `response_format`."""
    unknown = sorted(set(text) - {"format"})
    if unknown:
        raise _fail("text", f"{', '.join(unknown)} cannot be sent to a chat backend")
    fmt = text.get("format")
    if fmt is None or fmt == {"type": "text"}:
        return None
    if fmt == {"type": "json_object"}:
        return {"type": "json_object"}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise _fail("text.format", "json_schema needs a `name` (string) and a `schema` (object)")
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "description", "strict")
                                                       if fmt.get(k) is not None}}
    raise _fail("text.format", "expected {type: text}, {type: json_object} or {type: json_schema, name, schema}")


def _usage(usage: Any) -> dict[str, Any] | None:
    """Chat usage as `response_usage.py`'s."""
    if not isinstance(usage, dict):
        return None
    p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": p, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": c, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": int(usage.get("total_tokens") or p + c)}


def _new(prefix: str) -> str:
    return prefix + secrets.token_hex(24)


class Responses(Translated):
    """One Responses call: the chat request it becomes, and its answer or stream of events."""

    def __init__(self, req: ResponsesRequest):
        self.req = req
        chat: dict[str, Any] = {"model": req.model, "messages": _messages(req)}
        if req.max_output_tokens is not None:
            chat["max_tokens"] = req.max_output_tokens
        for key in ("temperature", "top_p", "parallel_tool_calls"):
            if getattr(req, key) is not None:
                chat[key] = getattr(req, key)
        if req.tools:
            chat["tools"] = _tools(req.tools)
        if req.tool_choice is not None:
            chat["tool_choice"] = _tool_choice(req.tool_choice)
        if req.text is not None and (fmt := _response_format(req.text)) is not None:
            chat["response_format"] = fmt
        if req.reasoning:
            unknown = sorted(set(req.reasoning) - {"effort"})
            if unknown:
                raise _fail("reasoning", f"{', '.join(unknown)} cannot be sent to a chat backend; send `effort` only")
            if req.reasoning.get("effort") is not None:
                chat["reasoning_effort"] = req.reasoning["effort"]
        if req.user or req.safety_identifier:
            chat["user"] = req.safety_identifier or req.user
        if req.stream_options and set(req.stream_options) - {"include_obfuscation"}:
            raise _fail("stream_options", "only include_obfuscation is a Responses stream option")
        if req.stream:
            # the Responses API always reports usage at the end: ask the backend for it
            chat["stream"], chat["stream_options"] = True, {"include_usage": True}
        self.chat = chat
        self.id, self.created = _new("resp_"), int(time.time())
        # streaming state
        self._seq = 0
        self._items: list[dict[str, Any]] = []  # output items so far, in order
        self._message: dict[str, Any] | None = None  # the open message item
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> open function_call item
        self._finish: str | None = None
        self._usage: Any = None
        self._model = req.model

    # -- the whole answer -------------------------------------------------------------------------------------------
    def answer(self, result: dict[str, Any]) -> dict[str, Any]:
        choice = (result.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        output: list[dict[str, Any]] = []
        text = message.get("content")
        if isinstance(text, str) and text:
            output.append(self._message_item(text, "completed"))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            output.append({"type": "function_call", "id": _new("fc_"), "call_id": call.get("id") or _new("call_"),
                           "name": function.get("name", ""), "arguments": function.get("arguments") or "",
                           "status": "completed"})
        return self._response(self._status(choice.get("finish_reason")), output, _usage(result.get("usage")),
                              result.get("model"))

    def _message_item(self, text: str | None, status: str) -> dict[str, Any]:
        content = [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return {"type": "message", "id": _new("msg_"), "status": status, "role": "assistant", "content": content}

    @staticmethod
    def _status(finish_reason: Any) -> tuple[str, dict[str, Any] | None]:
        """`status` and `incomplete_details` (`response.py`) for a chat finish reason."""
        if finish_reason == "length":
            return "incomplete", {"reason": "max_output_tokens"}
        if finish_reason == "content_filter":
            return "incomplete", {"reason": "content_filter"}
        return "completed", None

    def _response(self, status: tuple[str, dict[str, Any] | None], output: list[dict[str, Any]], usage: Any,
                  model: Any = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        req = self.req
        fmt = (req.text or {}).get("format") or {"type": "text"}
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status[0],
                "completed_at": int(time.time()) if status[0] == "completed" else None,
                "error": error, "incomplete_details": status[1], "instructions": req.instructions,
                "max_output_tokens": req.max_output_tokens, "model": model or self._model, "output": output,
                "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
                "previous_response_id": None, "reasoning": req.reasoning, "store": False,
                "temperature": req.temperature, "text": {"format": fmt},
                "tool_choice": "auto" if req.tool_choice is None else req.tool_choice,
                "tools": req.tools or [], "top_p": req.top_p, "truncation": "disabled",
                "usage": usage, "user": req.user, "metadata": req.metadata or {}}

    # -- the stream ------------------------------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> bytes:
        self._seq += 1
        return sse({"type": kind, "sequence_number": self._seq - 1, **fields}, kind)

    def start(self) -> list[bytes]:
        in_progress = self._response(("in_progress", None), [], None)
        return [self._event("response.created", response=in_progress),
                self._event("response.in_progress", response=in_progress)]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        self._model = chunk.get("model") or self._model
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._text(text)
            for call in delta.get("tool_calls") or ():
                out += self._call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def _text(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._message is None:
            out += self._close_calls()
            item = self._message_item(None, "in_progress")
            self._message, index = item, len(self._items)
            self._items.append(item)
            item["_text"] = ""
            out.append(self._event("response.output_item.added", output_index=index, item=_public(item)))
            out.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                   content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                          "logprobs": []}))
        item = self._message
        item["_text"] += text
        out.append(self._event("response.output_text.delta", item_id=item["id"], output_index=self._items.index(item),
                               content_index=0, delta=text, logprobs=[]))
        return out

    def _call(self, delta: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = delta.get("index", 0)
        function = delta.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            out += self._close_message()
            item = {"type": "function_call", "id": _new("fc_"), "call_id": delta.get("id") or _new("call_"),
                    "name": function.get("name") or "", "arguments": "", "status": "in_progress"}
            self._calls[index] = item
            self._items.append(item)
            out.append(self._event("response.output_item.added", output_index=len(self._items) - 1,
                                   item=_public(item)))
        elif function.get("name"):
            item["name"] += function["name"]
        args = function.get("arguments")
        if isinstance(args, str) and args:
            item["arguments"] += args
            out.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                   output_index=self._items.index(item), delta=args))
        return out

    def _close_message(self) -> list[bytes]:
        item, self._message = self._message, None
        if item is None:
            return []
        index, text = self._items.index(item), item.pop("_text")
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item["content"], item["status"] = [part], "completed"
        return [self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                            text=text, logprobs=[]),
                self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                            part=part),
                self._event("response.output_item.done", output_index=index, item=_public(item))]

    def _close_calls(self) -> list[bytes]:
        out = []
        for item in self._calls.values():
            if item["status"] == "completed":
                continue
            index = self._items.index(item)
            item["status"] = "completed"
            out.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                   name=item["name"], arguments=item["arguments"]))
            out.append(self._event("response.output_item.done", output_index=index, item=_public(item)))
        return out

    def end(self) -> list[bytes]:
        out = self._close_message() + self._close_calls()
        status = self._status(self._finish)
        kind = "response.completed" if status[0] == "completed" else "response.incomplete"
        final = self._response(status, [_public(i) for i in self._items], _usage(self._usage))
        return [*out, self._event(kind, response=final)]

    def fail(self, error: dict[str, Any]) -> list[bytes]:
        code, message = error.get("code") or "stream_interrupted", error.get("message") or "the stream broke"
        # `response_error.py` takes a fixed set of codes: Sovra's own code goes in the message (and the error event)
        failed = self._response(("failed", None), [_public(i) for i in self._items], _usage(self._usage),
                                error={"code": "rate_limit_exceeded" if code == "rate_limited" else "server_error",
                                       "message": f"{message} ({code})"})
        return [self._event("error", code=code, message=message, param=None),
                self._event("response.failed", response=failed)]


def _public(item: dict[str, Any]) -> dict[str, Any]:
    """An output item without the translator's own bookkeeping (keys starting with `_`)."""
    return {k: v for k, v in item.items() if not k.startswith("_")}


__all__ = ["Responses", "ResponsesRequest", "translate"]
