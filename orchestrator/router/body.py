"""Request bodies read with a bound and decoded as one JSON object: the router's and the model server's rule."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.router.errors import BadRequest, RequestTooLarge

#: A request body over this is refused before it is read whole.
MAX_BODY_BYTES = 4_000_000


def refuse_declared(declared: str | None, limit: int = MAX_BODY_BYTES) -> None:
    """Refuse a body whose Content-Length is already over `limit`, before reading any of it."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body is over {limit} bytes")


def refuse_over(size: int, limit: int = MAX_BODY_BYTES) -> None:
    """Refuse a body once the bytes read so far pass `limit`."""
    if size > limit:
        raise RequestTooLarge(f"request body is over {limit} bytes")


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body
