"""Payload-free health probes: bring an ejected backend back without sending it anybody's request.

A probe carries no payload (an HTTP `GET /v1/models`, or a Ray Serve `health()` call that asks the engine itself
whether it is alive, with no request of anybody's),
so it is not a residency event. It only ever contacts backends of the router's own routing table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sovra.orchestrator.router.dispatch import Dispatcher

if TYPE_CHECKING:  # the interface only: the prober is handed its clients
    from sovra.providers.clients import BackendClient

log = logging.getLogger("sovra.router")


@dataclass
class Prober:
    """Probes every backend whose circuit is open; success closes it, failure keeps it open for another cooldown."""

    dispatcher: Dispatcher
    clients: Mapping[str, BackendClient]
    interval_s: float = 0.5
    timeout_s: float = 2.0

    async def probe_once(self) -> dict[str, bool]:
        breaker = self.dispatcher.breaker
        ejected = [b for b in self.dispatcher.table.backends if breaker.is_open(b.id)]
        results: dict[str, bool] = {}
        for b, ok in zip(ejected, await asyncio.gather(*(self._probe(b) for b in ejected)), strict=True):
            if ok is None:
                continue  # this client cannot probe: the breaker's half-open trial brings it back
            results[b.id] = ok
            if ok:
                breaker.success(b.id)
                log.info("backend %s (%s) answered its probe: back in rotation", b.id, b.target)
            else:
                breaker.failure(b.id)
        return results

    async def _probe(self, backend) -> bool | None:
        try:
            return await asyncio.wait_for(self.clients[backend.kind].health(backend), self.timeout_s)
        except Exception:  # a probe that fails for any reason keeps the backend out
            return False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.probe_once()
            except Exception:  # never let the probe loop die
                log.exception("health probe round failed")
