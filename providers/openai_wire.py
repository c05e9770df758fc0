"""OpenAI's chat/embeddings wire format, for adapters whose vendor speaks another: build the OpenAI answers from
a vendor's, and run blocking SDK calls (boto3, the Snowflake connector, databricks-sdk) off the router's loop.

Every adapter translates requests and answers itself; what they share is here, so each answer has one shape.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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


def completion(model: str, text: str, *, finish_reason: str | None = "stop", prompt_tokens: int | None = None,
               completion_tokens: int | None = None, id: str | None = None) -> dict[str, Any]:
    """An OpenAI `chat.completion` with one choice."""
    return {"id": id or new_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(model: str, id: str, *, content: str | None = None, role: str | None = None,
          finish_reason: str | None = None, usage_: Mapping[str, int] | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk`."""
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
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
    text = (choice.get("message") or {}).get("content") or ""
    return [chunk(model, id, role="assistant", content=text),
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
