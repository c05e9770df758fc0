"""One classification for every transport: only what was never delivered (or what the backend said it did not
process) is resent, always inside the bound; everything that may have been received is answered as an error and
counts once against that backend's breaker. Streams stay in flight until they end and time out when idle."""

import asyncio

import pytest

from sovra.core.backends import RoutingTable
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.core.api_errors import (
    Failed,
    NoAllowedBackend,
    NotDelivered,
    Refused,
    TimedOut,
    UpstreamError,
    UpstreamTimeout,
)
from sovra.orchestrator.router.gate import RequestResidency
from sovra.orchestrator.router.health import Breaker
from sovra.core.spec import Residency
from sovra.core.place import Place
from tests import factories

EU = RequestResidency(Residency(zones=("EU",)))
PARIS, LYON = Place("EU", "FR", "FR", "self"), Place("EU", "FR", "FR", "self")


def table(*names: str) -> RoutingTable:
    return RoutingTable.of([factories.backend(n, PARIS, cost=i + 1) for i, n in enumerate(names)])


async def no_sleep(_):
    return None


def run(coro):
    return asyncio.run(coro)


class Script:
    """A backend call that raises the scripted verdict per target (or answers), and records every send."""

    def __init__(self, **by_target):
        self.by_target, self.sent, self.seen = by_target, [], []

    def observe(self, b, outcome):
        self.seen.append((b.target, outcome))

    async def __call__(self, b):
        self.sent.append(b.target)
        verdict = self.by_target.get(b.target)
        if isinstance(verdict, BaseException):
            raise verdict
        return b.target


@pytest.mark.parametrize(("verdict", "outcome"), [(NotDelivered("refused"), "not_sent"),
                                                  (Refused("HTTP 503"), "refused")])
def test_undelivered_or_refused_is_resent_to_the_next_allowed_backend(verdict, outcome):
    t = table("paris", "lyon")
    d, s = Dispatcher(t, sleep=no_sleep), Script(paris=verdict)
    assert run(d.send(t.resolve("m"), EU, s, s.observe))[0] == "lyon"
    assert s.sent == ["paris", "lyon"] and s.seen == [("paris", outcome), ("lyon", "ok")]


@pytest.mark.parametrize(("verdict", "error", "outcome"), [(Failed("dropped after send"), UpstreamError, "failed"),
                                                           (TimedOut("read timeout"), UpstreamTimeout, "timeout")])
def test_what_may_have_been_received_is_never_resent(verdict, error, outcome):
    t = table("paris", "lyon")
    d, s = Dispatcher(t, sleep=no_sleep), Script(paris=verdict)
    with pytest.raises(error) as exc:
        run(d.send(t.resolve("m"), EU, s, s.observe))
    assert s.sent == ["paris"] and s.seen == [("paris", outcome)]
    assert exc.value.status in (502, 504) and "not resent" in exc.value.message


def test_a_hung_backend_times_out_counts_against_its_breaker_and_is_not_resent():
    t = table("paris", "lyon")
    d = Dispatcher(t, sleep=no_sleep, timeout_s=0.05, breaker=Breaker(failures_to_open=1))
    sent = []

    async def hang(b):
        sent.append(b.target)
        await asyncio.sleep(10)

    with pytest.raises(UpstreamTimeout):
        run(d.send(t.resolve("m"), EU, hang))
    assert sent == ["paris"] and d.breaker.is_open("m@paris") and d.in_flight["m@paris"] == 0


def test_one_request_counts_at_most_once_against_one_backend():
    t = table("paris")
    d = Dispatcher(t, sleep=no_sleep, breaker=Breaker(failures_to_open=2))
    s = Script(paris=NotDelivered("one replica lost"))
    with pytest.raises(NoAllowedBackend):
        run(d.send(t.resolve("m"), EU, s))
    assert s.sent == ["paris"] * d.max_attempts  # retried on the same app (another replica may take it)
    assert not d.breaker.is_open("m@paris")  # three attempts, one request: one failure, below the threshold


def test_a_backend_known_down_is_ejected_at_once_and_the_request_fails_over():
    t = table("paris", "lyon")
    d = Dispatcher(t, sleep=no_sleep, breaker=Breaker(failures_to_open=5))
    s = Script(paris=NotDelivered("no running replica", down=True))
    assert run(d.send(t.resolve("m"), EU, s))[0] == "lyon"
    assert d.breaker.is_open("m@paris")
    assert run(d.send(t.resolve("m"), EU, s))[0] == "lyon" and s.sent.count("paris") == 1


def test_half_open_lets_exactly_one_trial_through():
    now = [0.0]
    t = table("paris", "lyon")
    d = Dispatcher(t, sleep=no_sleep, breaker=Breaker(failures_to_open=1, cooldown_s=5, clock=lambda: now[0]))
    d.breaker.failure("m@paris")
    now[0] = 5.0
    gate, sent = asyncio.Event(), []

    async def slow(b):
        sent.append(b.target)
        if b.target == "paris":
            await gate.wait()
        return b.target

    async def main():
        trial = asyncio.create_task(d.send(t.resolve("m"), EU, slow))
        await asyncio.sleep(0)
        others = [await d.send(t.resolve("m"), EU, slow) for _ in range(3)]  # while the trial is in flight
        gate.set()
        return (await trial)[0], [o[0] for o in others]

    trial, others = run(main())
    assert trial == "paris" and others == ["lyon"] * 3 and sent.count("paris") == 1
    assert not d.breaker.is_open("m@paris")  # the trial succeeded: closed


async def _chunks(n: int, gap_s: float = 0.0, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise Failed("connection dropped mid-stream")
        await asyncio.sleep(gap_s)
        yield {"i": i}


def test_a_stream_is_in_flight_until_it_ends_and_its_outcome_is_observed_then():
    t = table("paris")
    d, seen = Dispatcher(t), []

    async def main():
        async def open_stream(b):
            return _chunks(3)

        stream, _ = await d.send_stream(t.resolve("m"), EU, open_stream, lambda b, o: seen.append(o))
        counts = [d.in_flight["m@paris"]]
        async for _ in stream:
            counts.append(d.in_flight["m@paris"])
        return counts + [d.in_flight["m@paris"]]

    assert run(main()) == [1, 1, 1, 1, 0] and seen == ["ok"]


def test_an_idle_stream_times_out_per_chunk_and_counts_against_the_backend():
    t = table("paris")
    d, seen = Dispatcher(t, chunk_timeout_s=0.05, breaker=Breaker(failures_to_open=1)), []

    async def main():
        async def open_stream(b):
            return _chunks(3, gap_s=1.0)

        stream, _ = await d.send_stream(t.resolve("m"), EU, open_stream, lambda b, o: seen.append(o))
        return [c async for c in stream]

    with pytest.raises(UpstreamTimeout):
        run(main())
    assert seen == ["timeout"] and d.in_flight["m@paris"] == 0 and d.breaker.is_open("m@paris")


def test_a_stream_broken_midway_is_an_error_to_the_client_never_a_resend():
    t = table("paris", "lyon")
    d, seen, opened = Dispatcher(t), [], []

    async def main():
        async def open_stream(b):
            opened.append(b.target)
            return _chunks(3, fail_at=1)

        stream, _ = await d.send_stream(t.resolve("m"), EU, open_stream, lambda b, o: seen.append(o))
        return [c async for c in stream]

    with pytest.raises(UpstreamError):
        run(main())
    assert opened == ["paris"] and seen == ["stream_interrupted"]


def test_a_stream_the_client_abandons_is_observed_as_cancelled_and_leaves_nothing_in_flight():
    t = table("paris")
    d, seen = Dispatcher(t), []

    async def main():
        async def open_stream(b):
            return _chunks(5)

        stream, _ = await d.send_stream(t.resolve("m"), EU, open_stream, lambda b, o: seen.append(o))
        await anext(stream)
        await stream.aclose()

    run(main())
    assert seen == ["cancelled"] and d.in_flight["m@paris"] == 0


def test_a_backend_that_cannot_carry_the_request_steps_aside_for_one_in_the_bound_that_can():
    """`tools` to a vendor without them: nothing left, so the next allowed backend takes it, and no attempt is
    used up (max_attempts 1 still reaches it)."""
    from sovra.core.api_errors import Untranslatable

    t = table("paris", "lyon")
    d = Dispatcher(t, sleep=no_sleep, max_attempts=1)
    s = Script(paris=Untranslatable("aws-bedrock cannot do `seed`"))
    assert run(d.send(t.resolve("m"), EU, s, s.observe))[0] == "lyon"
    assert s.seen == [("paris", "not_sent"), ("lyon", "ok")]
    assert not d.breaker.is_open(t.resolve("m").backends[0].id)


def test_when_no_allowed_backend_can_carry_it_the_client_gets_a_400_naming_each():
    from sovra.core.api_errors import Untranslatable

    t = table("paris", "lyon")
    d = Dispatcher(t, sleep=no_sleep)
    s = Script(paris=Untranslatable("vendor A cannot do `seed`"), lyon=Untranslatable("vendor B cannot do `seed`"))
    with pytest.raises(Untranslatable) as exc:
        run(d.send(t.resolve("m"), EU, s, s.observe))
    assert exc.value.status == 400 and s.sent == ["paris", "lyon"]
    assert "paris: vendor A" in exc.value.message and "lyon: vendor B" in exc.value.message
