"""Spend through the router over real HTTP (the real composition root, real SQLite and PostgreSQL stores): ledger
entries priced and reconciled, 429s with Retry-After, fail-closed and fail-open when the store is down, and a
replica killed with entries still spooled."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from sovra.infra.ledger.store import SpendStore
from sovra.orchestrator.serving.ray_apps import build_router_state_app
from tests.fakes.openai_backend import FakeBackend, ServerThread
from tests.fakes.spend_router import ADMIN_KEY, KEY, config

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HI = [{"role": "user", "content": "hi"}]


def _until(check, timeout_s: float = 10.0):
    deadline = time.time() + timeout_s
    while True:
        value = check()
        if value or time.time() > deadline:
            return value
        time.sleep(0.05)


@pytest.fixture
def backend():
    fake = FakeBackend("paris-1")
    with ServerThread(fake.app()) as server:
        yield fake, server.url


def _router(tmp_path, url, store, budgets, **kw):
    return ServerThread(build_router_state_app(config(tmp_path, {"paris-1": url}, store, "r", budgets, **kw)))


def test_every_answer_is_a_priced_ledger_entry_and_credits_pay_first(tmp_path, backend):
    fake, url = backend
    path = tmp_path / "ledger.db"
    today = dt.date.today()  # credits expiring this month: all of them may pay this month
    last_day = (today.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
    credits = [{"cloud": "azure", "usd": 0.012, "expires": last_day.isoformat()}]
    with _router(tmp_path, url, {"store": "sqlite", "path": str(path)}, [], credits=credits, usd_per_1k=2.0) as r:
        client = openai.OpenAI(base_url=r.url + "/v1", api_key=KEY, max_retries=0)
        answer = client.chat.completions.create(model="chat", messages=HI)
        assert answer.usage.total_tokens == 5
        chunks = list(client.chat.completions.create(model="chat", messages=HI, stream=True,
                                                     stream_options={"include_usage": True}))
        assert chunks
        store = SpendStore.sqlite(path)
        entries = _until(lambda: len(store.entries()) == 2 and store.entries())
    assert [(e.tenant, e.deployment, e.target, e.cloud, e.provider, e.outcome) for e in entries] == [
        ("acme", "chat", "paris-1", "azure", "openai-compatible", "ok")] * 2
    assert all(e.tokens_in == 3 and e.tokens_out == 2 and e.usd_list_micros == 10_000 for e in entries)
    assert {e.request_id for e in entries} and len({e.entry_id for e in entries}) == 2
    assert [e.credit_micros for e in entries] == [10_000, 2_000]  # the credit's $0.012, then list price
    # the audit trail's request ids: the ledger's entries can be joined with where each payload went
    trail = "".join(p.read_text() for p in (tmp_path / "r" / "audit").glob("*.jsonl"))
    assert all(e.request_id in trail for e in entries)


def test_over_budget_is_a_429_with_retry_after_and_nothing_is_sent(tmp_path, backend):
    fake, url = backend
    budgets = [{"tenant": "acme", "usd_per_month": 0.03}, {"deployment": "chat", "requests_per_minute": 100}]
    with _router(tmp_path, url, {"store": "sqlite", "path": str(tmp_path / "l.db")}, budgets) as r:
        codes = []
        for _ in range(6):  # each reserves ceil(31/3) + 4 = 15 tokens = $0.015 at $1/1k; uses 5 = $0.005
            codes.append(httpx.post(r.url + "/v1/chat/completions", headers=AUTH, timeout=10,
                                    json={"model": "chat", "messages": HI, "max_tokens": 4}))
            time.sleep(0.15)  # the ledger reconciles (gives back 10 tokens) within its flush interval
        sent = len(fake.received)
        refused = [c for c in codes if c.status_code == 429]
        # reserved then reconciled: $0.005, 0.010, 0.015, 0.020 used; a 5th may cost up to $0.015 and $0.035 > $0.03
        assert [c.status_code for c in codes].count(200) == sent == 4
        error = refused[0].json()["error"]
        assert error["code"] == "budget_exceeded" and error["type"] == "rate_limit_error"
        assert "tenant=acme" in error["message"] and "resets at" in error["message"]
        assert int(refused[0].headers["Retry-After"]) >= 1
        assert refused[0].headers["X-Sovra-Budget-Reset"].endswith("-01T00:00:00Z")
        metrics = httpx.get(r.url + "/metrics", headers=ADMIN).text
        assert 'sovra_budget_refusals_total{code="budget_exceeded"} 2.0' in metrics
        assert 'sovra_budget_limit{metric="usd_per_month",scope="tenant=acme"} 0.03' in metrics
        assert 'sovra_spend_usd_total{cloud="azure",deployment="chat",tenant="acme"} 0.02' in metrics  # 4 x $0.005
        assert 'sovra_spend_tokens_total{deployment="chat",direction="out",tenant="acme"} 8.0' in metrics


@pytest.mark.parametrize("over_budget", ["spill", "refuse"])
def test_over_a_usd_budget_a_spilling_deployment_is_served_by_capacity_already_paid_for(tmp_path, over_budget):
    cloud, own = FakeBackend("cloud-1"), FakeBackend("own-1")
    with ServerThread(cloud.app()) as c, ServerThread(own.app()) as o:
        cfg = config(tmp_path, {"cloud-1": c.url, "own-1": o.url}, {"store": "sqlite", "path": str(tmp_path / "l.db")},
                     "r", [{"tenant": "acme", "usd_per_month": 0.02}], prices={"own-1": None},
                     over_budget=over_budget)
        with ServerThread(build_router_state_app(cfg)) as r:
            answers = []
            for _ in range(4):  # $0.015 reserved each at $1/1k, $0.005 used: the third does not fit the $0.02
                answers.append(httpx.post(r.url + "/v1/chat/completions", headers=AUTH, timeout=10,
                                          json={"model": "chat", "messages": HI, "max_tokens": 4}))
                time.sleep(0.15)
            metrics = httpx.get(r.url + "/metrics", headers=ADMIN).text
    served = [a.headers.get("X-Sovra-Target") if a.status_code == 200 else a.status_code for a in answers]
    if over_budget == "spill":
        assert served == ["cloud-1", "cloud-1", "own-1", "own-1"]  # the priced backend is cheaper by `cost`
        assert "sovra_budget_spilled_total 2.0" in metrics
    else:
        assert served == ["cloud-1", "cloud-1", 429, 429] and len(own.received) == 0


def test_a_request_rate_quota_is_rate_limited(tmp_path, backend):
    fake, url = backend
    with _router(tmp_path, url, {"store": "sqlite", "path": str(tmp_path / "l.db")},
                 [{"tenant": "acme", "deployment": "chat", "requests_per_minute": 2}]) as r:
        codes = [httpx.post(r.url + "/v1/chat/completions", headers=AUTH, timeout=10,
                            json={"model": "chat", "messages": HI}) for _ in range(3)]
    assert [c.status_code for c in codes[:2]] == [200, 200] or time.gmtime().tm_sec < 2  # a minute may turn
    last = codes[-1]
    if last.status_code == 429:
        assert last.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(last.headers["Retry-After"]) <= 60


def test_store_down_fails_closed_by_default_and_sends_nothing(tmp_path, backend, postgres_own):
    fake, url = backend
    dsn = postgres_own.create_database("spend")
    os.environ["SOVRA_SPEND_DSN"] = dsn
    try:
        with _router(tmp_path, url, {"store": "postgres"}, [{"tenant": "acme", "tokens_per_minute": 10_000}]) as r:
            assert httpx.post(r.url + "/v1/chat/completions", headers=AUTH, timeout=10,
                              json={"model": "chat", "messages": HI}).status_code == 200
            postgres_own.kill()
            before = len(fake.received)
            down = httpx.post(r.url + "/v1/chat/completions", headers=AUTH, timeout=30,
                              json={"model": "chat", "messages": HI})
            assert down.status_code == 503 and down.json()["error"]["code"] == "spend_unavailable"
            assert "nothing was sent" in down.json()["error"]["message"]
            assert "PostgreSQL at" not in down.text and "127.0.0.1" not in down.text  # no store details to callers
            assert "password" not in down.text and dsn.split("@")[0].split(":")[-1] not in down.text
            assert len(fake.received) == before
            postgres_own.start()
            assert _until(lambda: httpx.post(r.url + "/v1/chat/completions", headers=AUTH, timeout=30,
                                             json={"model": "chat", "messages": HI}).status_code == 200)
    finally:
        os.environ.pop("SOVRA_SPEND_DSN", None)


def test_store_down_fails_open_where_configured_and_replays_every_entry_once(tmp_path, backend, postgres_own):
    fake, url = backend
    dsn = postgres_own.create_database("spend")
    os.environ["SOVRA_SPEND_DSN"] = dsn
    try:
        store_settings = {"store": "postgres", "on_unavailable": "open"}
        # each request reserves 11 + 4,096 tokens (no max_tokens): its replica's slice of 8,300 is that one request,
        # so every later one needs the store (a bigger budget would let the slice carry on while the store is down)
        with _router(tmp_path, url, store_settings, [{"tenant": "acme", "tokens_per_minute": 8_300}]) as r:
            post = lambda: httpx.post(r.url + "/v1/chat/completions", headers=AUTH, timeout=30,  # noqa: E731
                                      json={"model": "chat", "messages": HI})
            assert post().status_code == 200
            postgres_own.kill()
            assert [post().status_code for _ in range(5)] == [200] * 5  # sent unchecked
            metrics = httpx.get(r.url + "/metrics", headers=ADMIN).text
            assert "sovra_spend_unchecked_total 5.0" in metrics
            assert _until(lambda: "sovra_ledger_store_up 0.0" in httpx.get(r.url + "/metrics", headers=ADMIN).text)
            postgres_own.start()
            store = SpendStore.postgres(dsn)
            entries = _until(lambda: len(store.entries()) == 6 and store.entries(), 20)
            assert entries and len({e.entry_id for e in entries}) == 6
            # the unchecked ones count against the quota once replayed, and the idle slice goes back: 6 answers x 5
            assert _until(lambda: sum(c[3] for c in store.counters("tenant=acme") if c[1] == "tokens") == 30, 10)
            assert _until(lambda: "sovra_ledger_store_up 1.0" in httpx.get(r.url + "/metrics", headers=ADMIN).text)
        assert len(store.entries()) == 6  # shutdown flushed nothing twice
        store.close()
    finally:
        os.environ.pop("SOVRA_SPEND_DSN", None)


@pytest.mark.slow
def test_a_router_killed_with_entries_spooled_loses_none_of_them(tmp_path, backend):
    """SIGKILL while entries wait in the spool (the store is written only every 60 s here): the next router
    process on the node finds the spool its writer no longer holds and replays it, each entry once."""
    fake, url = backend
    path = tmp_path / "l.db"
    store_settings = {"store": "sqlite", "path": str(path), "flush_every_s": 60}
    cfg = tmp_path / "r.json"
    cfg.write_text(json.dumps(config(tmp_path, {"paris-1": url}, store_settings, "r", [])))

    def start() -> tuple[subprocess.Popen, str]:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.spend_router", str(cfg), str(port)], cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        assert _until(lambda: _up(base), 60), "router did not start"
        return proc, base

    first, base = start()
    try:
        answered = sum(httpx.post(base + "/v1/chat/completions", headers=AUTH, timeout=10,
                                  json={"model": "chat", "messages": HI}).status_code == 200 for _ in range(20))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert answered == 20
    store = SpendStore.sqlite(path)
    assert store.entries() == []  # nothing had reached the store: all 20 were only spooled
    second, _ = start()  # its first flush replays the orphaned spool
    try:
        entries = _until(lambda: len(store.entries()) >= 20 and store.entries(), 20)
        assert entries and len(entries) == 20 and len({e.request_id for e in entries}) == 20
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert len(store.entries()) == 20
    assert list((tmp_path / "spend" / "spool").glob("*.spool")) == [] or all(
        p.stat().st_size == 0 for p in (tmp_path / "spend" / "spool").glob("*.spool"))


def _up(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
