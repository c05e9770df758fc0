"""OpenAI's legacy completions (`POST /v1/completions`) as a chat request and back, through the same gate, ladder
and audit as a chat. Shapes follow the `openai` package (3.x): `types/completion_create_params.py` (the request),
`types/completion.py` and `types/completion_choice.py` (the answer; a stream sends the same object per chunk).

The prompt becomes one user message, so the backend's chat template applies: a chat model answers the prompt rather
than continuing its text. What a chat backend cannot give (`n` > 1, `best_of`, `echo`, `suffix`, token-id prompts,
several prompts) is a 400 that says so.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from sovra.core.api_errors import BadRequest
from sovra.orchestrator.router.requests import Sampling, Translated, sse, strict

SURFACE = "/v1/completions"
#: A prompt's size: the chat path's body limit bounds it anyway; this keeps the message readable.
MAX_PROMPT_CHARS = 1_200_000

_Text = Annotated[str, Field(strict=True)]
_Int = Annotated[int, Field(strict=True)]
_Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
_Flag = Annotated[bool, Field(strict=True)]


class CompletionRequest(Sampling):
    """The `/v1/completions` fields the router can carry to a chat backend; any other field is a 400."""

    model_config = ConfigDict(extra="forbid")
    prompt: _Text | Annotated[list[_Text], Field(min_length=1, max_length=1)] = Field(
        description="One prompt (a string, or a list holding one string)")
    logprobs: _Int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, _Int] | None = None
    n: _Int | None = Field(default=None, ge=1, le=1)
    best_of: _Int | None = Field(default=None, ge=1, le=1)
    echo: _Flag | None = None
    suffix: None = None


def translate(body: dict[str, Any]) -> Completions:
    """A `/v1/completions` body as a chat request; a 400 for what a chat backend cannot give."""
    refusals = {
        "n": (body.get("n") not in (None, 1), "several choices; send n=1 or leave it out"),
        "best_of": (body.get("best_of") not in (None, 1), "server-side best-of; send best_of=1 or leave it out"),
        "echo": (body.get("echo") is True, "the prompt echoed in the answer; prepend it in your app"),
        "suffix": (body.get("suffix") not in (None, ""), "insertion (text after the completion)"),
    }
    for name, (asked, what) in refusals.items():
        if asked:
            raise BadRequest(f"{SURFACE}: `{name}` asks for {what}; Sovra sends completions to chat backends, "
                             "which cannot do that")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], str):
        raise BadRequest(f"{SURFACE}: `prompt` as token ids cannot be sent to a chat backend; send the text")
    if isinstance(prompt, list) and len(prompt) > 1:
        raise BadRequest(f"{SURFACE}: `prompt` holds {len(prompt)} prompts; a chat backend answers one per request, "
                         "so send one prompt per request")
    req: CompletionRequest = strict(CompletionRequest, body, SURFACE)
    return Completions(req)


def _logprobs(logprobs: Any, offset: int) -> dict[str, Any] | None:
    """Chat's `logprobs.content` as `completion_choice.py`'s `Logprobs` (parallel lists, text offsets from `offset`)."""
    content = (logprobs or {}).get("content") if isinstance(logprobs, dict) else None
    if not content:
        return None
    tokens = [t.get("token", "") for t in content]
    offsets, at = [], offset
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {"tokens": tokens, "token_logprobs": [t.get("logprob") for t in content],
            "top_logprobs": [{p.get("token", ""): p.get("logprob") for p in t.get("top_logprobs") or ()}
                             for t in content],
            "text_offset": offsets}


class Completions(Translated):
    """One completions call: the chat request it becomes, and its answer or chunks."""

    def __init__(self, req: CompletionRequest):
        prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
        if len(prompt) > MAX_PROMPT_CHARS:
            raise BadRequest(f"{SURFACE}: `prompt` holds {len(prompt)} characters; send at most {MAX_PROMPT_CHARS}")
        chat: dict[str, Any] = {"model": req.model, "messages": [{"role": "user", "content": prompt}]}
        for key in ("max_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty", "stop", "seed",
                    "logit_bias", "user", "stream_options"):
            if getattr(req, key) is not None:
                chat[key] = getattr(req, key)
        if req.logprobs is not None:  # legacy: the number of most likely tokens to list per position
            chat["logprobs"], chat["top_logprobs"] = True, req.logprobs
        if req.stream:
            chat["stream"] = True
        self.chat, self.req = chat, req
        self.id, self.created = "cmpl-" + secrets.token_hex(16), int(time.time())
        self._sent = 0  # characters streamed so far (the logprobs' text offsets)

    def _object(self, model: Any, choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
        out = {"id": self.id, "object": "text_completion", "created": self.created, "model": model or self.req.model,
               "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out

    def answer(self, result: dict[str, Any]) -> dict[str, Any]:
        choice = (result.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content") or ""
        return self._object(result.get("model"), [{"text": text, "index": 0, "logprobs": _logprobs(
            choice.get("logprobs"), 0), "finish_reason": choice.get("finish_reason") or "stop"}], result.get("usage"))

    def start(self) -> list[bytes]:
        return []

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        choices = []
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content") or ""
            logprobs = _logprobs(choice.get("logprobs"), self._sent)
            self._sent += len(text)
            if text or choice.get("finish_reason") or logprobs:
                choices.append({"text": text, "index": 0, "logprobs": logprobs,
                                "finish_reason": choice.get("finish_reason")})
        if not choices and not chunk.get("usage"):
            return []  # a role-only or empty chunk has nothing a completion shows
        return [sse(self._object(chunk.get("model"), choices, chunk.get("usage")))]

    def end(self) -> list[bytes]:
        return [b"data: [DONE]\n\n"]

    def fail(self, error: dict[str, Any]) -> list[bytes]:
        return [sse({"error": error})]
