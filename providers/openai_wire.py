"""OpenAI's chat/embeddings wire format, for adapters whose vendor speaks another: build the OpenAI answers from
a vendor's, and run blocking SDK calls (boto3, the Snowflake connector, databricks-sdk) off the router's loop.

Every adapter translates requests and answers itself; what they share is here, so each answer has one shape.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

#: One pool per router replica for blocking SDK calls; sized for many slow calls in flight (they wait on I/O).
_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="sovra-sdk")
    return _POOL


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking SDK call in the shared pool."""
    return await asyncio.get_running_loop().run_in_executor(_pool(), fn, *args)


_DONE = object()


async def iterate(make: Callable[[], Iterable[T]]) -> AsyncIterator[T]:
    """A blocking iterator (a vendor's event stream) as an async one: `make()` and every `next()` run in the pool,
    so the router's loop never blocks. Closing the async iterator closes the blocking one where it can."""
    it: Iterator[T] | None = None

    def start() -> Iterator[T]:
        return iter(make())

    def step(i: Iterator[T]) -> Any:
        return next(i, _DONE)

    try:
        it = await blocking(start)
        while True:
            item = await blocking(step, it)
            if item is _DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001  (closing a broken vendor stream must not mask the real outcome)
                pass


def text_of(content: Any) -> str:
    """A message's text: a string, or the `text` parts of a content list (other parts are not text)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")


def split_system(messages: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[Mapping[str, Any]]]:
    """System (and developer) prompts apart from the conversation, as most vendor APIs take them."""
    system = [text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
    return system, [m for m in messages if m.get("role") not in ("system", "developer")]


def usage(prompt_tokens: int | None, completion_tokens: int | None) -> dict[str, int]:
    p, c = int(prompt_tokens or 0), int(completion_tokens or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def completion(model: str, text: str | None, *, finish_reason: str | None = "stop", prompt_tokens: int | None = None,
               completion_tokens: int | None = None, id: str | None = None,
               tool_calls: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """An OpenAI `chat.completion` with one choice; `tool_calls` as `tool_call()` builds them (then the text may be
    None, as OpenAI sends it)."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = [dict(c) for c in tool_calls]
    return {"id": id or new_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def tool_call(id: str, name: str, arguments: str | Mapping[str, Any], *, index: int | None = None) -> dict[str, Any]:
    """One OpenAI tool call (`arguments` is a JSON string on the wire; a mapping is encoded). `index` is for stream
    deltas, where OpenAI numbers the calls of one answer."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, separators=(",", ":"))
    out: dict[str, Any] = {"id": id, "type": "function", "function": {"name": name, "arguments": args}}
    if index is not None:
        out = {"index": index, **out}
    return out


def tool_call_delta(index: int, *, id: str | None = None, name: str | None = None,
                    arguments: str | None = None) -> dict[str, Any]:
    """A piece of a streamed tool call: the first names it (id, name), the next carry `arguments` text."""
    out: dict[str, Any] = {"index": index}
    function: dict[str, Any] = {}
    if id is not None:
        out["id"], out["type"] = id, "function"
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    out["function"] = function
    return out


def chunk(model: str, id: str, *, content: str | None = None, role: str | None = None,
          finish_reason: str | None = None, usage_: Mapping[str, int] | None = None,
          tool_calls: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk`; `tool_calls` are `tool_call_delta()`s."""
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls:
        delta["tool_calls"] = [dict(c) for c in tool_calls]
    out: dict[str, Any] = {"id": id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    if usage_ is not None:
        out["usage"] = dict(usage_)
    return out


def as_chunks(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A faithful stream of a whole answer, for vendors that do not stream: the text in one chunk, then the
    finish reason with the usage."""
    model, id = answer.get("model", ""), answer.get("id") or new_id()
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    text = message.get("content") or ""
    calls = [{"index": i, **c} for i, c in enumerate(message.get("tool_calls") or ())]
    return [chunk(model, id, role="assistant", content=text, tool_calls=calls),
            chunk(model, id, finish_reason=choice.get("finish_reason") or "stop", usage_=answer.get("usage"))]


async def first_then_rest(stream: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Fetch the first chunk now (so a refusal is still an HTTP error, per `BackendClient.chat_stream`) and give a
    stream that yields it, then the rest."""
    first = await anext(stream, None)

    async def rest() -> AsyncIterator[dict[str, Any]]:
        try:
            if first is None:
                return
            yield first
            async for c in stream:
                yield c
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    return rest()


async def replay(items: Sequence[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        yield item


def embeddings(model: str, vectors: Sequence[Sequence[float]], prompt_tokens: int | None = None) -> dict[str, Any]:
    """An OpenAI embeddings answer."""
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": list(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": int(prompt_tokens or 0), "total_tokens": int(prompt_tokens or 0)}}


def inputs_of(body: Mapping[str, Any]) -> list[str]:
    """An embeddings request's `input` as a list of strings."""
    value = body.get("input")
    return [value] if isinstance(value, str) else [str(v) for v in (value or [])]


# -- what a vendor cannot carry: refused before anything is sent, never silently dropped -------------------------
# Adapters call these inside `errors.building(...)`, which turns the ValueError into a 400 (`Untranslatable`) that
# names the backend, with nothing sent and the backend's breaker untouched.

#: OpenAI chat fields that change what the model does; an adapter that has no place for one must refuse it.
BEHAVIOUR_FIELDS = ("tools", "tool_choice", "response_format", "seed", "stop", "logprobs", "top_logprobs", "n",
                    "presence_penalty", "frequency_penalty", "logit_bias", "parallel_tool_calls", "stream_options",
                    "reasoning_effort", "modalities", "audio", "prediction", "web_search_options")


def refuse_unsupported(body: Mapping[str, Any], where: str, supported: Iterable[str]) -> None:
    """ValueError naming every behaviour field the request sets that `where` (e.g. "aws-bedrock model X") cannot
    carry. A field set to its no-op value (None, `n: 1`, `logprobs: false`, an empty list) is not a request."""
    allowed = set(supported)
    unset = (None, False, [], {})
    asked = [f for f in BEHAVIOUR_FIELDS if f not in allowed and body.get(f) not in unset
             and not (f == "n" and body.get(f) == 1)]
    if asked:
        raise ValueError(f"{where} cannot do {', '.join(f'`{f}`' for f in asked)}; send the request without "
                         f"{'it' if len(asked) == 1 else 'them'}, or to a deployment whose backends can")


def within(body: Mapping[str, Any], field: str, low: float, high: float, where: str) -> float | None:
    """`body[field]` when it is in the vendor's range [low, high], else a ValueError that says the range (OpenAI's
    own range is wider for some fields: temperature is 0..2 there, 0..1 at several vendors)."""
    value = body.get(field)
    if value is None:
        return None
    if not low <= value <= high:
        raise ValueError(f"`{field}` {value} is outside {where}'s range [{low:g}, {high:g}]")
    return value
