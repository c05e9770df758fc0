"""Request bodies read with a bound and decoded as one JSON object: the router's and the model server's rule."""

from __future__ import annotations

import json
from typing import Any

from sovra.core.api_errors import BadRequest, RequestTooLarge

#: A request body over this is refused before it is read whole.
MAX_BODY_BYTES = 4_000_000
#: The deepest nesting of arrays and objects a body may have (OpenAI bodies, tool schemas included, need far less);
#: deeper is a 400 here, never a RecursionError later, wherever the body is encoded again.
MAX_DEPTH = 64


def refuse_declared(declared: str | None, limit: int = MAX_BODY_BYTES) -> None:
    """Refuse a body whose Content-Length is already over `limit`, before reading any of it."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body is over {limit} bytes")


def refuse_over(size: int, limit: int = MAX_BODY_BYTES) -> None:
    """Refuse a body once the bytes read so far pass `limit`."""
    if size > limit:
        raise RequestTooLarge(f"request body is over {limit} bytes")


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what is wrong with it (NaN and Infinity are not JSON)."""
    try:
        body = json.loads(raw, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    except RecursionError:  # Python's decoder gives up on deep nesting (e.g. 100k `[`) with the stack's limit
        raise BadRequest(f"request body nests arrays or objects deeper than {MAX_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    # Cheap first: a body with few brackets cannot be deep, so only a bracket-heavy one is walked.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(body) > MAX_DEPTH:
        raise BadRequest(f"request body nests arrays or objects deeper than {MAX_DEPTH} levels")
    return body


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in `value` (a JSON document), walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return deepest
