"""Session and prefix affinity over the real path (issue 22): the router on uvicorn, fake OpenAI-compatible servers
that are stopped and started again on the same port while sessions keep sending.

Properties: a session keeps landing on its preferred backend while it lives; when it is killed, only that backend's
sessions move, each to its next choice, never outside the bound (a cheaper backend outside it is in the same table)
nor to another rung; once it is back (after its breaker's trial), its sessions return. The hit rates are printed
(`pytest -s`) and asserted as properties, not as timings.
"""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest

from sovra.core.backends import RoutingTable
from sovra.core.place import Place
from sovra.core.spec import Residency
from sovra.core.spec.org import Tenant
from sovra.orchestrator.router.app import RouterState, create_app
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.orchestrator.router.health import Breaker
from sovra.orchestrator.router.tenants import TenantDirectory
from sovra.providers.clients import HttpClient
from tests import factories
from tests.fakes.openai_backend import FakeBackend, ServerThread

pytestmark = pytest.mark.integration
KEY = "sk-affinity-eu"
EU = [("paris", Place("EU", "FR", "FR", "self")), ("lyon", Place("EU", "FR", "FR", "self")),
      ("berlin", Place("EU", "DE", "DE", "self")), ("madrid", Place("EU", "ES", "ES", "self"))]
OUTSIDE = ("virginia", Place("US", "US", "US", "amazon"))  # cheaper, same deployment, outside the tenant's bound
MANAGED = ("bedrock-eu", Place("EU", "DE", "US", "amazon"))  # the next rung (a per-token offering) inside the bound
SESSIONS = [f"session-{i}" for i in range(40)]


class Fleet:
    """The backends as servers that can be stopped and started again on the same port."""

    def __init__(self) -> None:
        self.fakes = {n: FakeBackend(n) for n, _ in [*EU, OUTSIDE, MANAGED]}
        self.servers = {n: ServerThread(f.app()).__enter__() for n, f in self.fakes.items()}
        self.ports = {n: int(s.url.rsplit(":", 1)[1]) for n, s in self.servers.items()}

    def kill(self, name: str) -> None:
        self.servers[name].__exit__()

    def restart(self, name: str) -> None:
        self.servers[name] = ServerThread(self.fakes[name].app(), port=self.ports[name]).__enter__()

    def close(self) -> None:
        for s in self.servers.values():
            s.__exit__()


def _table(fleet: Fleet, policy: str) -> RoutingTable:
    backends = []
    for (name, place), cost, tier in [*((e, 1.0, 0) for e in EU), (OUTSIDE, 0.01, 0), (MANAGED, 0.5, 1)]:
        b = factories.backend(name, place, cost=cost, deployment="chat", policy=policy, kind="openai-compatible",
                              address=f"http://127.0.0.1:{fleet.ports[name]}")
        backends.append(b.model_copy(update={"tier": tier, "params": {"served_model": "m"}}))
    return RoutingTable.of(backends)


@pytest.fixture
def fleet():
    f = Fleet()
    yield f
    f.close()


def _router(fleet: Fleet, policy: str) -> tuple[ServerThread, RouterState]:
    tenants = TenantDirectory.of([Tenant(name="eu", key_sha256=hashlib.sha256(KEY.encode()).hexdigest(),
                                         residency=Residency(zones=("EU",)))])
    state = RouterState(Dispatcher(_table(fleet, policy), backoff_s=0.0, breaker=Breaker(cooldown_s=0.3)), tenants,
                        {"openai-compatible": HttpClient()}, probe=False)
    return ServerThread(create_app(state)).__enter__(), state


def _ask(http: httpx.Client, session: str | None = None, messages: list | None = None, user: str | None = None) -> str:
    body = {"model": "chat", "messages": messages or [{"role": "user", "content": "hello"}]}
    if user:
        body["user"] = user
    headers = {"Authorization": f"Bearer {KEY}", **({"X-Session-Id": session} if session else {})}
    r = http.post("/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.headers["x-sovra-target"]


def _round(http: httpx.Client, per: int = 3) -> dict[str, list[str]]:
    return {s: [_ask(http, s) for _ in range(per)] for s in SESSIONS}


def test_sessions_stay_move_only_inside_the_bound_and_rung_and_come_back(fleet):
    router, _ = _router(fleet, "session")
    try:
        with httpx.Client(base_url=router.url, timeout=10) as http:
            warm = _round(http)
            preferred = {s: ts[0] for s, ts in warm.items()}
            hits = sum(t == preferred[s] for s, ts in warm.items() for t in ts) / (3 * len(SESSIONS))
            assert hits == 1.0 and set(preferred.values()) <= {n for n, _ in EU}
            assert len(set(preferred.values())) >= 3  # sessions spread over the rung
            # the OpenAI `user` field is a session too
            assert len({_ask(http, user="u-17") for _ in range(5)}) == 1

            victim = max({n for n, _ in EU}, key=lambda n: sum(p == n for p in preferred.values()))
            moved = {s for s, p in preferred.items() if p == victim}
            fleet.kill(victim)
            churn = _round(http)
            stayed = [t == preferred[s] for s, ts in churn.items() if s not in moved for t in ts]
            landed = {s: set(churn[s]) for s in moved}
            print(f"\naffinity under churn: {len(moved)}/{len(SESSIONS)} sessions lost {victim}; "
                  f"the others' hit rate {sum(stayed) / len(stayed):.0%}")
            assert all(stayed)  # only the lost backend's sessions move
            for s, where in landed.items():  # each to one next choice, inside the bound and the same rung
                assert len(where) == 1 and where <= {n for n, _ in EU} - {victim}, (s, where)
            assert not fleet.fakes["virginia"].received and not fleet.fakes["bedrock-eu"].received

            fleet.restart(victim)
            time.sleep(0.4)  # the breaker's cooldown: the next request to it is its trial
            back = _round(http)
            returned = sum(t == preferred[s] for s, ts in back.items() for t in ts) / (3 * len(SESSIONS))
            print(f"after {victim} came back: hit rate {returned:.0%}")
            assert returned == 1.0
            assert not fleet.fakes["virginia"].received and not fleet.fakes["bedrock-eu"].received
    finally:
        router.__exit__()


def test_the_next_rung_serves_only_when_the_whole_first_rung_is_down(fleet):
    router, _ = _router(fleet, "session")
    try:
        with httpx.Client(base_url=router.url, timeout=10) as http:
            for name, _ in EU:
                fleet.kill(name)
            assert {_ask(http, s) for s in SESSIONS[:10]} == {"bedrock-eu"}  # spills, inside the bound
            assert not fleet.fakes["virginia"].received
    finally:
        router.__exit__()


def test_a_shared_prompt_prefix_lands_on_one_backend_and_distinct_ones_spread(fleet):
    router, _ = _router(fleet, "prefix")
    system = {"role": "system", "content": "You are the support assistant of an insurer. " * 40}  # > 1,024 chars
    try:
        with httpx.Client(base_url=router.url, timeout=10) as http:
            shared = {_ask(http, messages=[system, {"role": "user", "content": f"question {i}"}]) for i in range(20)}
            assert len(shared) == 1
            distinct = {_ask(http, messages=[{"role": "user", "content": f"a different conversation {i}"}])
                        for i in range(40)}
            assert len(distinct) >= 3 and distinct <= {n for n, _ in EU}
    finally:
        router.__exit__()
