"""Inference engines a model replica can run. Registered by name; heavy libraries are imported on first use."""

from __future__ import annotations

import abc
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

_ENGINES: dict[str, type[Engine]] = {}


class Engine(abc.ABC):
    """OpenAI-shaped chat and embeddings for one model."""

    name: ClassVar[str]

    def __init_subclass__(cls, *, name: str, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = name
        _ENGINES[name] = cls

    def __init__(self, model: str, target: str, **options: Any):
        self.model, self.target, self.options = model, target, options

    @abc.abstractmethod
    async def chat(self, body: dict[str, Any]) -> dict[str, Any]: ...

    @abc.abstractmethod
    def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError(f"engine {self.name} serves no embeddings")


def get_engine(name: str) -> type[Engine]:
    try:
        return _ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(sorted(_ENGINES))}") from None


def completion(model: str, text: str, usage: dict[str, int]) -> dict[str, Any]:
    return {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "object": "chat.completion", "created": int(time.time()),
            "model": model, "usage": usage,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}


def chunk(model: str, cid: str, delta: dict[str, Any], finish: str | None = None,
          usage: dict[str, int] | None = None) -> dict[str, Any]:
    out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        out["usage"] = usage
    return out


class EchoEngine(Engine, name="echo"):
    """Deterministic test engine for routing tests: answers which target served it. Never a product default."""

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return completion(self.model, f"served-by {self.target}", {"prompt_tokens": 1, "completion_tokens": 2,
                                                                    "total_tokens": 3})

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        for i, word in enumerate(("served-by", self.target)):
            yield chunk(self.model, cid, {"content": (" " if i else "") + word})
        yield chunk(self.model, cid, {}, "stop", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return {"object": "list", "model": self.model, "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
                "data": [{"object": "embedding", "index": i, "embedding": [float(len(s)), 1.0]}
                         for i, s in enumerate(inputs)]}
