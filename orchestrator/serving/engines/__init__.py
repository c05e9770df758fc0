"""Inference engines a model replica can run, registered by name.

Importing this package is light: each real engine lives in its own module, imported by `get_engine` on first use,
and imports its heavy library (llama.cpp, torch, vLLM) only when an engine object is built.
"""

from __future__ import annotations

import abc
import importlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

from sovra.core.errors import EngineError, SovraError  # noqa: F401  (EngineError: the engines' error, named here too)
from sovra.core.spec.deployment import PACKAGED_MODELS  # noqa: F401  (what `engine: auto` picks, named here too)

_ENGINES: dict[str, type[Engine]] = {}

# Engine name -> module that registers it; imported by `get_engine` on first use.
_MODULES: dict[str, str] = {
    "echo": "sovra.orchestrator.serving.engines.echo",
    "llama-cpp": "sovra.orchestrator.serving.engines.llama_cpp",
    "minilm": "sovra.orchestrator.serving.engines.sentence",
    "vllm": "sovra.orchestrator.serving.engines.vllm",
}



class Engine(abc.ABC):
    """OpenAI-shaped chat and embeddings for one model, built as `Engine(model, target, **options)`."""

    name: ClassVar[str]
    #: The OpenAI behaviour fields (`request.BEHAVIOUR_FIELDS`) this engine honours; a request setting any other is
    #: refused with a 400 naming the engine (`refuse_unsupported`), never served as if it were not there.
    supports: ClassVar[frozenset[str]] = frozenset({"stream_options"})

    def __init_subclass__(cls, *, name: str, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = name
        _ENGINES[name] = cls

    def __init__(self, model: str, target: str, **options: Any):
        self.model, self.target, self.options = model, target, options

    @abc.abstractmethod
    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer an OpenAI chat request with a `chat.completion` object."""

    @abc.abstractmethod
    def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Answer an OpenAI chat request with `chat.completion.chunk` objects; the last carries usage."""

    def refuse_unsupported(self, body: dict[str, Any]) -> None:
        """Refuse (EngineError, a 400) a chat request asking for what this engine does not honour."""
        from sovra.orchestrator.serving.engines.request import refuse_unsupported

        refuse_unsupported(body, self.name, self.supports)

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer an OpenAI embeddings request; engines that serve none say so."""
        raise EngineError(f"engine {self.name!r} serves no embeddings; deploy an embeddings engine such as 'minilm'")

    @abc.abstractmethod
    async def health(self) -> dict[str, Any]:
        """Whether the engine can serve, found by exercising it without any user payload: `{"ok": bool, ...}`.

        Called every few seconds by Serve's replica health check and by the router's probes, so it must answer
        in milliseconds, also while a long generation runs; a failure may raise instead of returning ok False.
        """


class Heartbeat:
    """When the engine's one-at-a-time work (a generation, an encode) last made progress, so that `health` can tell
    a busy engine from a stuck one without waiting for the work to end. Written by the worker thread, read by the
    event loop: a float assignment is atomic."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._at: float | None = None

    def beat(self) -> None:
        """Work started, or made progress (e.g. one more token)."""
        self._at = self._clock()

    def stop(self) -> None:
        """The work ended."""
        self._at = None

    def silent_for(self) -> float | None:
        """Seconds since the running work last made progress; None when nothing runs."""
        at = self._at
        return None if at is None else self._clock() - at

    def stalled(self, after_s: float) -> str | None:
        """Why the running work counts as stuck (no progress for `after_s`), or None."""
        silent = self.silent_for()
        if silent is not None and silent > after_s:
            return f"the running request made no progress for {silent:.0f} s (limit {after_s:g} s)"
        return None


def known_engines() -> list[str]:
    """Every engine name `get_engine` accepts."""
    return sorted(set(_MODULES) | set(_ENGINES))


def get_engine(name: str) -> type[Engine]:
    """The engine class registered as `name`, importing its module on first use."""
    if name not in _ENGINES and name in _MODULES:
        importlib.import_module(_MODULES[name])
    try:
        return _ENGINES[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r}; known: {', '.join(known_engines())}") from None


def new_completion_id() -> str:
    """An id in OpenAI's `chatcmpl-...` form."""
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def token_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage block."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(model: str, text: str, usage: dict[str, int], finish_reason: str = "stop") -> dict[str, Any]:
    """A `chat.completion` object with one assistant choice."""
    return {"id": new_completion_id(), "object": "chat.completion", "created": int(time.time()),
            "model": model, "usage": usage,
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": text}}]}


def chunk(model: str, cid: str, delta: dict[str, Any], finish: str | None = None,
          usage: dict[str, int] | None = None) -> dict[str, Any]:
    """A `chat.completion.chunk` object; the final one carries `finish` and `usage`."""
    out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        out["usage"] = usage
    return out


def __getattr__(attr: str) -> Any:
    """`EchoEngine` stays importable from here (public API) without this module importing echo.py at load."""
    if attr == "EchoEngine":
        return get_engine("echo")
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["EchoEngine", "Engine", "EngineError", "Heartbeat", "chunk", "completion", "get_engine", "known_engines",
           "new_completion_id", "token_usage"]
