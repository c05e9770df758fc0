"""Circuit breaking: eject a backend after consecutive failures; after a cooldown, admit it again (half-open) and
re-eject it on its first failure. Requests that fail in half-open are retryable inside the allowed set.

Hand-written rather than pybreaker/aiobreaker because it must take an injected clock (tests drive time) and key
state by backend id; it is 40 lines and has no other job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _State:
    failures: int = 0
    opened_at: float | None = None


@dataclass
class Breaker:
    """Per-backend circuit breaker (closed -> open -> half-open -> closed)."""

    failures_to_open: int = 3
    cooldown_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _states: dict[str, _State] = field(default_factory=dict)

    def available(self, backend_id: str) -> bool:
        """Closed, or open for at least the cooldown (half-open)."""
        s = self._states.get(backend_id)
        if s is None or s.opened_at is None:
            return True
        return self.clock() - s.opened_at >= self.cooldown_s

    def success(self, backend_id: str) -> None:
        self._states.pop(backend_id, None)

    def failure(self, backend_id: str) -> None:
        s = self._states.setdefault(backend_id, _State())
        s.failures += 1
        if s.failures >= self.failures_to_open or s.opened_at is not None:
            s.opened_at = self.clock()

    def any_open(self) -> bool:
        """True while some circuit is open or half-open; when False, every backend is available."""
        return any(s.opened_at is not None for s in self._states.values())

    def is_open(self, backend_id: str) -> bool:
        s = self._states.get(backend_id)
        return s is not None and s.opened_at is not None
