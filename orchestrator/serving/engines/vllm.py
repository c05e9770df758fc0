"""Chat on vLLM's async engine: the production GPU path (`pip install 'sovra[vllm]'` on a GPU node).

The OpenAI -> SamplingParams and messages -> prompt translations are pure functions, testable without vLLM. The
prompt is the model's own chat template (`tokenizer.apply_chat_template`); a model without one gets the plain
transcript of `request.transcript` and its stop sequences. vLLM batches concurrent requests itself, so there is no
lock here. Weights are read from local files only unless `offline` is turned off.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sovra.orchestrator.serving.engines import (
    Engine,
    EngineError,
    chunk,
    completion,
    new_completion_id,
    token_usage,
)
from sovra.orchestrator.serving.engines.request import TRANSCRIPT_STOPS, ChatRequest, Message, transcript

INSTALL_HINT = "vLLM is not installed; pip install 'sovra[vllm]' on a GPU node"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class VLLMOptions(BaseModel):
    """Engine options of `vllm` (a deployment's `engine_options`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str | None = Field(None, description="Local weights directory (or hub id when offline is off); "
                                                    "default: the deployment's model name.")
    max_tokens: int = Field(256, ge=1, description="Completion length when a request sets no max_tokens.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="Temperature when a request sets none "
                                                                "(OpenAI's default).")
    offline: bool = Field(True, description="Forbid Hugging Face downloads; weights must be on local disk.")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="Extra vLLM AsyncEngineArgs, e.g. "
                                        "tensor_parallel_size, gpu_memory_utilization, max_model_len.")


def sampling_kwargs(req: ChatRequest, extra_stops: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword arguments for vllm.SamplingParams from a parsed OpenAI chat request."""
    out: dict[str, Any] = {"n": 1, "max_tokens": req.max_tokens, "temperature": req.temperature,
                           "top_p": req.top_p, "presence_penalty": req.presence_penalty,
                           "frequency_penalty": req.frequency_penalty}
    stops = list(dict.fromkeys(req.stop + extra_stops))
    if stops:
        out["stop"] = stops
    if req.seed is not None:
        out["seed"] = req.seed
    return out


def chat_prompt(tokenizer: Any, messages: tuple[Message, ...]) -> tuple[str, tuple[str, ...]]:
    """The prompt text for `messages`, and the stop sequences its format needs beyond the model's own EOS."""
    if getattr(tokenizer, "chat_template", None) is None:
        return transcript(messages), TRANSCRIPT_STOPS
    turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in messages]
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True), ()


def finish_reason(reason: str | None) -> str:
    """vLLM's finish reason as OpenAI's: 'length' when max_tokens was reached, 'stop' otherwise."""
    return "length" if reason == "length" else "stop"


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise EngineError(INSTALL_HINT) from None
    return vllm


class VLLMEngine(Engine, name="vllm"):
    """OpenAI chat on vllm.AsyncLLMEngine with the model's chat template; streams as vLLM produces text. Tools, JSON
    modes, logprobs and logit_bias are refused (a 400 naming the engine): this engine renders the prompt itself and
    has no tool-call parser or structured-output wiring yet; an `openai-compatible` backend pointing at vLLM's own
    server passes them through."""

    supports = frozenset({"seed", "stop", "presence_penalty", "frequency_penalty", "stream_options"})

    def __init__(self, model: str, target: str, **options: Any):
        super().__init__(model, target, **options)
        self.settings = VLLMOptions(**options)
        if self.settings.offline:
            os.environ.update(OFFLINE_ENV)
        vllm = _import_vllm()
        args = vllm.AsyncEngineArgs(model=self.settings.model_path or model, **self.settings.engine_args)
        self._engine = vllm.AsyncLLMEngine.from_engine_args(args)
        self._sampling_params = vllm.SamplingParams
        self._tokenizer: Any = None

    async def health(self) -> dict[str, Any]:
        """vLLM's own `check_health()`: it raises when the engine's background loop or its engine-core process
        died (AsyncEngineDeadError / EngineDeadError). vLLM answers it without running the model."""
        try:
            await self._engine.check_health()
        except Exception as exc:  # noqa: BLE001  (any failure of vLLM's check: this replica cannot serve)
            return {"ok": False, "error": f"vLLM engine unhealthy: {type(exc).__name__}: {exc}"}
        return {"ok": True}

    def _request(self, body: dict[str, Any]) -> ChatRequest:
        self.refuse_unsupported(body)
        return ChatRequest.from_body(body, default_max_tokens=self.settings.max_tokens,
                                     default_temperature=self.settings.temperature)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        text, finish, use = "", "stop", token_usage(0, 0)
        async with aclosing(self._generate(self._request(body))) as steps:
            async for delta, done in steps:
                text += delta
                if done is not None:
                    finish, use = done
        return completion(self.model, text, use, finish)

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        req = self._request(body)  # a bad request fails before the first chunk
        cid = new_completion_id()
        yield chunk(self.model, cid, {"role": "assistant", "content": ""})
        # aclosing: a client that leaves mid-stream aborts the vLLM request now, not when the generator is collected.
        async with aclosing(self._generate(req)) as steps:
            async for delta, done in steps:
                if delta:
                    yield chunk(self.model, cid, {"content": delta})
                if done is not None:
                    yield chunk(self.model, cid, {}, done[0], done[1])

    async def _generate(self, req: ChatRequest
                        ) -> AsyncIterator[tuple[str, tuple[str, dict[str, int]] | None]]:
        """(new text, None) per step, then (last text, (finish reason, usage)); aborts the request if abandoned."""
        if self._tokenizer is None:
            tokenizer = self._engine.get_tokenizer()
            # A coroutine on the releases this was written against; plain on some others.
            self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        prompt, stops = chat_prompt(self._tokenizer, req.messages)
        params = self._sampling_params(**sampling_kwargs(req, stops))
        request_id, sent, finished = new_completion_id(), 0, False
        try:
            # Default (cumulative) outputs: each step carries the whole text so far, on every vLLM release.
            async for out in self._engine.generate(prompt, params, request_id):
                result = out.outputs[0]
                delta, sent = result.text[sent:], len(result.text)
                if out.finished:
                    finished = True
                    use = token_usage(len(out.prompt_token_ids or ()), len(result.token_ids))
                    yield delta, (finish_reason(result.finish_reason), use)
                else:
                    yield delta, None
        finally:
            if not finished:
                await self._engine.abort(request_id)
