"""What the router checks of a request before any attempt: the fields some adapter converts (Bedrock's `int(n)`,
Cortex's sampling options, an engine's `dimensions`) are typed here, strictly, so a client's mistake is a 400 at the
router and never an adapter's exception that would be taken for the backend's failure (and open a breaker that
every tenant shares). Everything else is passed to the backend untouched (`extra="allow"`).

Strict types: a JSON string is not a number here ("2" is not 2), since the body is forwarded as the client sent it.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sovra.core.api_errors import BadRequest

#: OpenAI's own limit on inputs per embeddings request.
MAX_EMBEDDING_INPUTS = 2048
#: All inputs of one embeddings request together: OpenAI's 300k tokens per request at about 4 characters a token.
MAX_EMBEDDING_CHARS = 1_200_000
#: Stop sequences one request may give (OpenAI takes 4; vLLM servers more).
MAX_STOP = 16

_Text = Annotated[str, Field(strict=True)]
_Int = Annotated[int, Field(strict=True)]
_Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # an int is a number too
_Flag = Annotated[bool, Field(strict=True)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: _Text | list[dict[str, Any]] | None = None


class Sampling(BaseModel):
    """The generation fields chat and legacy completions share, typed the same way for both."""

    model: _Text = Field(min_length=1, max_length=256)
    stream: _Flag = False
    stream_options: dict[str, Any] | None = None
    max_tokens: _Int | None = Field(default=None, ge=1, le=131_072)
    temperature: _Number | None = Field(default=None, ge=0, le=2)
    top_p: _Number | None = Field(default=None, ge=0, le=1)
    presence_penalty: _Number | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: _Number | None = Field(default=None, ge=-2, le=2)
    stop: _Text | Annotated[list[_Text], Field(max_length=MAX_STOP)] | None = None
    seed: _Int | None = Field(default=None, ge=-(2 ** 63), le=2 ** 63 - 1)
    user: _Text | None = Field(default=None, max_length=256)


class ChatRequest(Sampling):
    """The chat fields the router checks; everything else is passed to the backend untouched."""

    model_config = ConfigDict(extra="allow")
    messages: list[_Message] = Field(min_length=1, max_length=10_000)
    n: _Int | None = Field(default=None, ge=1, le=128)
    max_completion_tokens: _Int | None = Field(default=None, ge=1, le=131_072)
    logprobs: _Flag | None = None
    top_logprobs: _Int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: _Text | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class EmbeddingRequest(BaseModel):
    """The embeddings fields the router checks; `input` is bounded in count and size."""

    model_config = ConfigDict(extra="allow")
    model: _Text = Field(min_length=1, max_length=256)
    input: _Text | list[_Text] = Field(min_length=1)
    dimensions: _Int | None = Field(default=None, ge=1, le=65_536)
    encoding_format: Literal["float", "base64"] | None = None
    user: _Text | None = Field(default=None, max_length=256)

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"holds {len(value)} inputs; send at most {MAX_EMBEDDING_INPUTS} per request")
        chars = len(value) if isinstance(value, str) else sum(map(len, value))
        if chars > MAX_EMBEDDING_CHARS:
            raise ValueError(f"holds {chars} characters; send at most {MAX_EMBEDDING_CHARS} per request")
        return value


class Translated(abc.ABC):
    """A request of another OpenAI surface (`/v1/responses`, `/v1/completions`) as the chat request the router sends
    through the same gate, ladder and audit as any chat, and the way back to the surface's own answer and events.
    One instance per request: it keeps what the answer echoes (the request's tools, instructions, ...)."""

    #: The chat body to send (validated by `ChatRequest` like a client's own).
    chat: dict[str, Any]

    @abc.abstractmethod
    def answer(self, result: dict[str, Any]) -> dict[str, Any]:
        """A backend's `chat.completion` as this surface's answer."""

    @abc.abstractmethod
    def start(self) -> list[bytes]:
        """Server-sent events to send before the first chunk."""

    @abc.abstractmethod
    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        """The events for one `chat.completion.chunk`."""

    @abc.abstractmethod
    def end(self) -> list[bytes]:
        """The events that close a stream that ended well."""

    @abc.abstractmethod
    def fail(self, error: dict[str, Any]) -> list[bytes]:
        """The events that close a stream that broke (`error` is OpenAI's `{"message", "type", "code"}`)."""


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event (`event:` line only where the surface names its events, as the Responses API does)."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def strict(model: type[BaseModel], body: dict[str, Any], surface: str, known: Iterable[str] = ()) -> Any:
    """`body` validated by `model`; a field the router does not know is named in the 400 (never dropped), and the
    first validation error is quoted with its place in the body."""
    unknown = sorted(set(body) - set(model.model_fields) - set(known))
    if unknown:
        raise BadRequest(f"{surface}: {', '.join(f'`{f}`' for f in unknown)} "
                         f"{'is' if len(unknown) == 1 else 'are'} not supported by Sovra's router; send the request "
                         f"without {'it' if len(unknown) == 1 else 'them'}")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"{surface}: {where}: {first['msg']}") from None
