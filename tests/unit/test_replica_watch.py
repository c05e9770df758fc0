"""The Ray client's view of Serve's replica states: fetched only on demand, one fetch at a time, and a stale
"down" never refuses a send (Ray itself is not needed: the status call is injected)."""

import asyncio
import threading

from sovra.providers.onprem.ray_client import ReplicaWatch


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


def test_a_backend_served_over_http_goes_over_http_with_its_key_and_not_while_serve_says_its_app_is_down(
        monkeypatch):
    """A Ray backend with a `url` (Serve's HTTP ingress) is called over HTTP, with the key from the variable it
    names; Serve's replica states still refuse it, undelivered, while its app has no replica."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import pytest

    from sovra.core.backends import Backend
    from sovra.core.api_errors import NotDelivered
    from sovra.providers.onprem.ray_client import RayClient
    from sovra.core.spec.common import Residency
    from sovra.core.place import Place

    seen = []

    class Replica(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers.get("Authorization"), body["messages"][0]["content"]))
            out = json.dumps({"choices": [{"message": {"role": "assistant", "content": "ok"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Replica)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SOVRA_SERVE_API_KEY", "replica-key")
    url = f"http://127.0.0.1:{server.server_address[1]}/sovra-replica/sovra.m.paris"
    backend = Backend(id="sovra.m.paris", deployment="m", model="m", target="paris", address="sovra.m.paris",
                      place=Place("EU", "FR", "FR", "self"), residency=Residency(zones=("EU",)),
                      params={"url": url, "api_key_env": "SOVRA_SERVE_API_KEY"})
    status = Status({"sovra.m.paris": 1})

    async def run():
        client = RayClient(ReplicaWatch(status))
        try:
            answer = await client.chat(backend, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            assert answer["choices"][0]["message"]["content"] == "ok"
            status.running = {"sovra.m.paris": 0}
            await client.watch.fresh(0)
            with pytest.raises(NotDelivered):
                await client.chat(backend, {"model": "m", "messages": [{"role": "user", "content": "secret"}]})
        finally:
            await client.aclose()
            server.shutdown()

    asyncio.run(run())
    assert seen == [("/sovra-replica/sovra.m.paris/v1/chat/completions", "Bearer replica-key", "hi")]


def test_a_nudge_refreshes_a_stale_view_in_the_background_once_and_never_waits():
    now = [0.0]
    status = Status({"a": 1})
    watch = ReplicaWatch(status, trust_s=1.0, clock=lambda: now[0])

    async def run():
        status.gate.clear()  # the controller is slow: the nudge must not wait for it
        watch.nudge(0.5)
        watch.nudge(0.5)  # one fetch in flight at a time
        await asyncio.sleep(0.05)
        assert not watch.down("a")
        status.running = {"a": 0}
        status.gate.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if watch.down("a"):
                break
        assert watch.down("a") and status.calls == 1
        watch.nudge(0.5)  # fresh enough: nothing asked
        await asyncio.sleep(0.05)
        assert status.calls == 1
        now[0] = 0.6
        watch.nudge(0.5)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if status.calls == 2:
                break
        assert status.calls == 2

    asyncio.run(run())


def test_a_failed_by_value_call_is_not_resent_and_reads_for_people():
    """gRPC's own error text is a debug dump; the verdict keeps its code and details, and leaves naming the target
    to the dispatcher (which puts it in front once)."""
    import grpc

    from sovra.core.api_errors import Failed
    from sovra.providers.onprem.ray_client import _verdict
    from sovra.core.place import Place
    from tests import factories

    exc = grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                               details="Received message larger than max (5719882 vs. 4194304)",
                               debug_error_string="UNKNOWN:Error received from peer {grpc_status:8}")
    verdict = _verdict(exc, factories.backend("onprem-paris", Place("EU", "FR", "FR", "self")))
    assert isinstance(verdict, Failed) and not verdict.resend
    assert str(verdict) == ("the by-value call to the replica failed (RESOURCE_EXHAUSTED: Received message larger "
                            "than max (5719882 vs. 4194304))")


def test_an_engine_refusal_is_a_400_however_serve_delivers_it():
    """By reference Serve raises the replica's exception wrapped in a RayTaskError (its `cause`); by value it raises
    the exception itself. Either way the engine refused the request: the client gets 400, nothing is resent."""
    from ray.exceptions import RayTaskError

    from sovra.core.api_errors import BadRequest
    from sovra.orchestrator.serving.engines import EngineError
    from sovra.providers.onprem.ray_client import _verdict
    from sovra.core.place import Place
    from tests import factories

    backend = factories.backend("local", Place("EU", "FR", "FR", "self"))
    refusal = EngineError("engine 'llama-cpp' serves no embeddings")
    wrapped = RayTaskError("embed", "traceback", refusal).as_instanceof_cause()
    for exc in (refusal, wrapped):
        verdict = _verdict(exc, backend)
        assert isinstance(verdict, BadRequest) and "serves no embeddings" in str(verdict)
