"""The W3C trace context of the send in progress, for the transports to put on their request.

The router sets it immediately before each send (`orchestrator.router.tracing`); an HTTP transport adds it to the
headers of the request it makes for that send. It lives in the ground package so that providers can read it without
importing the router. Only `traceparent` travels (a caller's `tracestate` is not forwarded): trace ids, never
payload or keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType

_NONE: Mapping[str, str] = MappingProxyType({})
OUTGOING: ContextVar[Mapping[str, str]] = ContextVar("sovra_trace_outgoing", default=_NONE)


def outgoing() -> Mapping[str, str]:
    """The trace headers for the send in progress in this task (empty when tracing is off)."""
    return OUTGOING.get()
