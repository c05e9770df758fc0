"""OpenAI chat requests as typed values, and the plain transcript prompt format. Pure: needs no engine library."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sovra.orchestrator.serving.engines import EngineError

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP_SEQUENCES = 4  # OpenAI's limit on a request's own `stop` list

# Gemma 3 270M is a base model: a one-line preamble and a "User:/Assistant:" transcript is the format that made it
# answer plain questions sensibly (see llama_cpp.py). Any system message replaces the preamble.
DEFAULT_PREAMBLE = "The following is a conversation between a user and a helpful, knowledgeable assistant."
# A base model does not end its turn by itself: stop where it starts the next turn or a new paragraph.
TRANSCRIPT_STOPS = ("\nUser:", "\nAssistant:", "\n\n")
_SPEAKERS = {"user": "User", "assistant": "Assistant", "tool": "Tool"}
#: OpenAI chat fields that change what the model does: an engine honours each or refuses it, never ignores it.
#: The same list as the router's adapters use (`providers/openai_wire.BEHAVIOUR_FIELDS`), kept here so a replica
#: imports nothing of the router's providers.
BEHAVIOUR_FIELDS = ("tools", "tool_choice", "response_format", "seed", "stop", "logprobs", "top_logprobs", "n",
                    "presence_penalty", "frequency_penalty", "logit_bias", "parallel_tool_calls", "stream_options")


class InvalidChatRequest(EngineError):
    """The request body is not a chat request this engine can serve; the message names the field."""


@dataclass(frozen=True)
class Message:
    """One chat turn, its content flattened to text."""

    role: str
    content: str


@dataclass(frozen=True)
class ChatRequest:
    """What an engine needs from an OpenAI chat body, validated; defaults come from the engine's options."""

    messages: tuple[Message, ...]
    max_tokens: int
    temperature: float
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    response_format: dict[str, Any] | None = None  # json_object or json_schema; None for plain text

    @classmethod
    def from_body(cls, body: dict[str, Any], *, default_max_tokens: int,
                  default_temperature: float) -> ChatRequest:
        """Parse and check an OpenAI chat body; raises InvalidChatRequest quoting the offending value."""
        if body.get("n", 1) != 1:
            raise InvalidChatRequest(f"n={body['n']!r}: this engine returns one choice; send n=1")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        return cls(
            messages=_messages(body.get("messages")),
            max_tokens=default_max_tokens if max_tokens is None else _int("max_tokens", max_tokens, low=1),
            temperature=_number("temperature", body.get("temperature"), default_temperature, 0.0, 2.0),
            top_p=_number("top_p", body.get("top_p"), 1.0, 0.0, 1.0),
            stop=_stop(body.get("stop")),
            seed=None if body.get("seed") is None else _int("seed", body["seed"], low=0),
            presence_penalty=_number("presence_penalty", body.get("presence_penalty"), 0.0, -2.0, 2.0),
            frequency_penalty=_number("frequency_penalty", body.get("frequency_penalty"), 0.0, -2.0, 2.0),
            response_format=_response_format(body.get("response_format")),
        )


def refuse_unsupported(body: dict[str, Any], engine: str, supported: Iterable[str]) -> None:
    """InvalidChatRequest (a 400 from the model server, and from the router) naming every behaviour field the
    request sets that `engine` does not honour. A field at its no-op value (None, false, [], `n: 1`,
    `response_format: {type: text}`) is not a request."""
    allowed = set(supported)
    asked = [f for f in BEHAVIOUR_FIELDS if f not in allowed and body.get(f) not in (None, False, [], {})
             and not (f == "n" and body.get(f) == 1)
             and not (f == "response_format" and body.get(f) == {"type": "text"})]
    if asked:
        raise InvalidChatRequest(f"engine {engine!r} cannot do {', '.join(f'`{f}`' for f in asked)}; send the "
                                 f"request without {'it' if len(asked) == 1 else 'them'}, or to a deployment "
                                 "whose engine can")


def transcript(messages: tuple[Message, ...], preamble: str = DEFAULT_PREAMBLE) -> str:
    """A plain-text transcript ending in an open assistant turn; system messages replace the preamble."""
    system = "\n".join(m.content for m in messages if m.role in ("system", "developer") and m.content)
    turns = [f"{_SPEAKERS[m.role]}: {m.content}" for m in messages if m.role in _SPEAKERS]
    return f"{system or preamble}\n\n" + "\n".join(turns) + "\nAssistant:"


def _messages(raw: Any) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidChatRequest("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else m
            raise InvalidChatRequest(f"messages[{i}].role={role!r}: expected one of {', '.join(ROLES)}")
        out.append(Message(m["role"], _text(i, m.get("content"))))
    if not any(m.role == "user" for m in out):
        raise InvalidChatRequest("messages hold no user message")
    return tuple(out)


def _text(i: int, content: Any) -> str:
    if content is None:  # an assistant turn that only called tools
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidChatRequest(f"messages[{i}].content part of type {kind!r}: this engine reads text only")
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidChatRequest(f"messages[{i}].content: expected a string or a list of text parts, "
                             f"got {type(content).__name__}")


def _int(field: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidChatRequest(f"{field}={value!r}: expected an integer >= {low}")
    return value


def _number(field: str, value: Any, default: float, low: float, high: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise InvalidChatRequest(f"{field}={value!r}: expected a number in [{low}, {high}]")
    return float(value)


def _response_format(value: Any) -> dict[str, Any] | None:
    """OpenAI's `response_format`: None for text; a json_schema one must carry its schema."""
    if value is None or value == {"type": "text"}:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(value.get("json_schema"), dict) \
            and isinstance(value["json_schema"].get("schema"), dict):
        return {"type": "json_schema", "json_schema": value["json_schema"]}
    raise InvalidChatRequest(f"response_format={value!r}: expected {{type: text}}, {{type: json_object}} or "
                             "{type: json_schema, json_schema: {name, schema}}")


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOP_SEQUENCES \
            or not all(isinstance(s, str) and s for s in stops):
        raise InvalidChatRequest(f"stop={value!r}: expected a non-empty string or a list of at most "
                                 f"{MAX_STOP_SEQUENCES} non-empty strings")
    return tuple(stops)
