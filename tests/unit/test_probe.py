"""Payload-free probes bring ejected backends back early, keep failing ones out, and never carry a request."""

import asyncio

from sovra.core.backends import RoutingTable
from sovra.providers.clients import BackendClient
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.orchestrator.router.health import Breaker
from sovra.orchestrator.router.probe import Prober
from sovra.core.place import Place
from tests import factories

EU = Place("EU", "FR", "FR", "self")


class FakeClient(BackendClient):
    """Counts calls; a test sets which backends answer their probe."""

    def __init__(self):
        self.healthy: set[str] = set()
        self.probed: list[str] = []
        self.payload_calls = 0

    async def chat(self, backend, body):
        self.payload_calls += 1
        return {}

    async def chat_stream(self, backend, body):
        self.payload_calls += 1
        return iter(())

    async def embed(self, backend, body):
        self.payload_calls += 1
        return {}

    async def health(self, backend):
        self.probed.append(backend.id)
        if backend.id not in self.healthy:
            raise ConnectionError("down")
        return True


def _setup():
    now = [0.0]
    backends = [factories.backend(n, EU) for n in ("a", "b", "c")]
    d = Dispatcher(RoutingTable.of(backends), breaker=Breaker(failures_to_open=1, cooldown_s=30, clock=lambda: now[0]))
    client = FakeClient()
    return d, client, Prober(d, {"ray": client}), now


def test_probe_readmits_a_recovered_backend_before_the_cooldown_and_only_probes_ejected_ones():
    d, client, prober, now = _setup()
    d.breaker.failure("m@a")
    d.breaker.failure("m@b")
    client.healthy = {"m@a"}
    now[0] = 1.0  # far inside the 30 s cooldown
    assert asyncio.run(prober.probe_once()) == {"m@a": True, "m@b": False}
    assert sorted(client.probed) == ["m@a", "m@b"]  # "m@c" was never ejected, so never probed
    assert d.breaker.available("m@a") and not d.breaker.available("m@b")
    assert client.payload_calls == 0


def test_a_failed_probe_restarts_the_cooldown():
    d, client, prober, now = _setup()
    d.breaker.failure("m@b")
    now[0] = 29.0
    asyncio.run(prober.probe_once())
    now[0] = 31.0  # the original cooldown has passed, but the failed probe at 29 s re-opened the circuit
    assert not d.breaker.available("m@b")
    now[0] = 59.5
    assert d.breaker.available("m@b")


def test_a_hanging_probe_counts_as_failed():
    d, client, prober, _ = _setup()

    async def hang(backend):
        await asyncio.sleep(10)

    client.health = hang
    prober.timeout_s = 0.05
    d.breaker.failure("m@a")
    assert asyncio.run(prober.probe_once()) == {"m@a": False}
