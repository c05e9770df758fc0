"""The Ray client's view of Serve's replica states: fetched only on demand, one fetch at a time, and a stale
"down" never refuses a send (Ray itself is not needed: the status call is injected)."""

import asyncio
import threading

from orchestrator.serving.ray_client import ReplicaWatch


class Status:
    """A fake controller: answers `running`, counts calls, can be made to fail or to block."""

    def __init__(self, running):
        self.running, self.calls, self.fail = running, 0, False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self):
        self.calls += 1
        self.gate.wait(5)
        if self.fail:
            raise ConnectionError("controller unreachable")
        return dict(self.running)


def test_nothing_is_known_down_before_serve_was_asked():
    watch = ReplicaWatch(Status({"a": 0}))
    assert not watch.down("a")


def test_down_only_while_the_view_is_recent():
    now = [0.0]
    status = Status({"a": 0, "b": 2})
    watch = ReplicaWatch(status, trust_s=1.0, clock=lambda: now[0])
    asyncio.run(watch.fresh(0.25))
    assert watch.down("a") and not watch.down("b") and watch.down("gone")
    now[0] = 1.5  # the app may have recovered since: a stale "down" is not believed
    assert not watch.down("a")


def test_a_recent_view_is_reused_and_concurrent_callers_share_one_fetch():
    now = [0.0]
    status = Status({"a": 1})
    watch = ReplicaWatch(status, clock=lambda: now[0])

    async def main():
        status.gate.clear()
        waiters = [asyncio.ensure_future(watch.fresh(0.25)) for _ in range(10)]
        await asyncio.sleep(0.05)
        status.gate.set()
        await asyncio.gather(*waiters)
        await watch.fresh(0.25)  # still fresh: no second fetch

    asyncio.run(main())
    assert status.calls == 1


def test_a_failed_fetch_keeps_the_last_view():
    now = [0.0]
    status = Status({"a": 0})
    watch = ReplicaWatch(status, clock=lambda: now[0])
    asyncio.run(watch.fresh(0.25))
    status.fail, now[0] = True, 0.5
    asyncio.run(watch.fresh(0.25))
    assert status.calls == 2 and watch.down("a")
