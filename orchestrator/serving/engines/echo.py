"""The echo engine: deterministic answers naming the target that served them, for routing tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sovra.orchestrator.serving.engines import Engine, chunk, completion, new_completion_id


class EchoEngine(Engine, name="echo"):
    """Deterministic test engine for routing tests: answers which target served it. Never a product default.
    `delay_s` (an engine option) holds each answer that long, so tests can saturate a replica. It honours `stop`
    (the answer is cut there) and `seed` (it is deterministic anyway); tools, JSON modes and logprobs are refused."""

    supports = frozenset({"seed", "stop", "stream_options"})

    def _words(self, body: dict[str, Any]) -> list[str]:
        self.refuse_unsupported(body)
        text = f"served-by {self.target}"
        stops = [body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop") or []
        cut = min((text.index(s) for s in stops if isinstance(s, str) and s and s in text), default=len(text))
        words = text[:cut].split(" ")
        return [w for w in ((" " if i else "") + w for i, w in enumerate(words)) if w]

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        words = self._words(body)
        if self.options.get("delay_s"):
            await asyncio.sleep(float(self.options["delay_s"]))
        return completion(self.model, "".join(words), {"prompt_tokens": 1, "completion_tokens": 2,
                                                       "total_tokens": 3})

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        words = self._words(body)  # a refusal comes before the first chunk
        cid = new_completion_id()
        for word in words:
            yield chunk(self.model, cid, {"content": word})
        yield chunk(self.model, cid, {}, "stop", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})

    async def health(self) -> dict[str, Any]:
        """Always ok: there is no model to lose."""
        return {"ok": True}

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """[len(input), 1.0], or as many numbers as `dimensions` asks (the rest 1.0), so a test can ask for a big
        answer without more inputs than the router takes."""
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        width = max(2, int(body.get("dimensions") or 2))
        return {"object": "list", "model": self.model, "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
                "data": [{"object": "embedding", "index": i, "embedding": [float(len(s))] + [1.0] * (width - 1)}
                         for i, s in enumerate(inputs)]}
