"""The request keys of the affinity policies (`session`, `prefix` in `balancing`): computed here from the request,
hashed there onto the allowed backends of one rung, so that a session or a shared prompt prefix keeps landing on
the engine whose KV/prefix cache already holds it.

Keys are digests: the policy never sees the session id or the text, and nothing of either is stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

#: The prompt prefix hashed by `prefix` (~256 tokens: what a shared system prompt and few-shot examples fill).
PREFIX_CHARS = 1024
_MAX_SESSION = 256


def key(kind: str | None, headers: Mapping[str, str], body: Mapping[str, Any]) -> bytes | None:
    """The affinity key a policy of `kind` wants for this request; None when it has none (no session given)."""
    if kind == "session":
        value = headers.get("x-session-id") or body.get("user")
        if not isinstance(value, str) or not value:
            return None
        return hashlib.blake2b(value[:_MAX_SESSION].encode("utf-8", "replace"), digest_size=16).digest()
    if kind == "prefix":
        return hashlib.blake2b(prefix(body).encode("utf-8", "replace"), digest_size=16).digest()
    return None


def prefix(body: Mapping[str, Any]) -> str:
    """The first `PREFIX_CHARS` of the prompt as an engine sees it: every turn's role and text, in order."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        value = body.get("input", body.get("prompt"))
        if isinstance(value, list):
            value = value[0] if value and isinstance(value[0], str) else ""
        return value[:PREFIX_CHARS] if isinstance(value, str) else ""
    parts: list[str] = []
    size = 0
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
        part = f"{message.get('role')}\x1f{content if isinstance(content, str) else ''}\x1e"
        parts.append(part)
        size += len(part)
        if size >= PREFIX_CHARS:
            break
    return "".join(parts)[:PREFIX_CHARS]
