"""Circuit breaking: eject a backend after consecutive failures (or at once when it is known to be down); after a
cooldown, let exactly one trial request through (half-open); close on its success, re-open on its failure.

Hand-written rather than pybreaker/aiobreaker because it must take an injected clock (tests drive time) and key
state by backend id; it has no other job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _State:
    failures: int = 0
    opened_at: float | None = None
    trial: bool = False  # half-open: one trial request is in flight


@dataclass
class Breaker:
    """Per-backend circuit breaker (closed -> open -> half-open -> closed). One event loop: no locking."""

    failures_to_open: int = 3
    cooldown_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _states: dict[str, _State] = field(default_factory=dict)

    def available(self, backend_id: str) -> bool:
        """Closed, or half-open with no trial in flight."""
        s = self._states.get(backend_id)
        if s is None or s.opened_at is None:
            return True
        return not s.trial and self.clock() - s.opened_at >= self.cooldown_s

    def begin(self, backend_id: str) -> None:
        """A request is about to be sent: if the circuit is half-open, it is the one trial."""
        s = self._states.get(backend_id)
        if s is not None and s.opened_at is not None:
            s.trial = True

    def release(self, backend_id: str) -> None:
        """The request ended without a verdict on the backend (cancelled, rejected as invalid)."""
        s = self._states.get(backend_id)
        if s is not None:
            s.trial = False

    def success(self, backend_id: str) -> None:
        self._states.pop(backend_id, None)

    def failure(self, backend_id: str) -> None:
        s = self._states.setdefault(backend_id, _State())
        s.failures += 1
        s.trial = False
        if s.failures >= self.failures_to_open or s.opened_at is not None:
            s.opened_at = self.clock()

    def trip(self, backend_id: str) -> None:
        """Open now: the backend is known to be down (e.g. no live replica), so no request should wait on it."""
        s = self._states.setdefault(backend_id, _State())
        s.failures = max(s.failures + 1, self.failures_to_open)
        s.trial = False
        s.opened_at = self.clock()

    def any_open(self) -> bool:
        """True while some circuit is open or half-open; when False, every backend is available."""
        return any(s.opened_at is not None for s in self._states.values())

    def is_open(self, backend_id: str) -> bool:
        s = self._states.get(backend_id)
        return s is not None and s.opened_at is not None
