"""Residency and the audit trail against hostile backends, hostile callers and hostile routing tables (issue 17):
the router served over real HTTP on 127.0.0.1, the real SDK, real local backends; nothing of ours is mocked."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sovra.orchestrator import sdk
from sovra.orchestrator.router.access import Access
from sovra.orchestrator.router.app import RouterState, create_app
from sovra.orchestrator.router.audit import AuditLog, read
from sovra.orchestrator.router.audit_api import audit_routes
from sovra.core.backends import Backend, RoutingTable
from sovra.providers.clients import HttpClient
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.orchestrator.router.tenants import TenantDirectory
from sovra.core.spec import Residency
from sovra.core.spec.org import EMPTY_SHA256, Admin, RouterSettings, Tenant
from sovra.core.place import Place
from sovra.providers.base import direct_view
from tests import factories
from tests.fakes.openai_backend import FakeBackend, ServerThread

EU_KEY, US_KEY, ADMIN_KEY, SCRAPE_KEY = "sk-h-eu", "sk-h-us", "sk-h-admin", "sk-h-scrape"
PARIS, BERLIN, VIRGINIA = Place("EU", "FR", "FR", "self"), Place("EU", "DE", "DE", "self"), Place("US", "US", "US",
                                                                                                  "amazon")
CANARY = "canary-aws-secret-do-not-send"
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "local"}]})


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def backend(name: str, place: Place, url: str, *, cost: float, deployment: str = "m", **params: str) -> Backend:
    return factories.backend(name, place, deployment=deployment, cost=cost, kind="openai-compatible",
                             address=url).model_copy(update={"params": dict(params)})


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A tenant router (EU bank, US shop limited to `m`, an admin, a scrape key) over three real backends."""
    fakes = {"paris": FakeBackend("paris"), "berlin": FakeBackend("berlin"), "virginia": FakeBackend("virginia")}
    servers = {k: ServerThread(f.app()).__enter__() for k, f in fakes.items()}
    table = RoutingTable.of([
        backend("paris", PARIS, servers["paris"].url, cost=1.0, served_model="m"),
        backend("berlin", BERLIN, servers["berlin"].url, cost=2.0, served_model="m"),
        backend("virginia", VIRGINIA, servers["virginia"].url, cost=0.1, served_model="m"),
        backend("paris", PARIS, servers["paris"].url, cost=1.0, deployment="legal")])
    tenants = [Tenant(name="eu-bank", key_sha256=sha(EU_KEY), residency=Residency(zones=("EU",))),
               Tenant(name="us-shop", key_sha256=sha(US_KEY), residency=Residency(zones=("US",)), deployments=("m",))]
    admins = [Admin(name="dpo", key_sha256=sha(ADMIN_KEY))]
    audit_path = tmp_path_factory.mktemp("audit") / "router.jsonl"
    audit = AuditLog(audit_path)
    state = RouterState(Dispatcher(table, backoff_s=0.0), TenantDirectory.of(tenants),
                        {"openai-compatible": HttpClient()}, audit, probe=False,
                        extra_routes=audit_routes(audit, admins, open_router=False, tenants=tenants),
                        access=Access.of(admins, RouterSettings(scrape_key_sha256=sha(SCRAPE_KEY))), direct_view=direct_view)
    router = ServerThread(create_app(state)).__enter__()
    yield {"url": router.url, "fakes": fakes, "servers": servers, "state": state, "audit": audit_path}
    router.__exit__()
    for s in servers.values():
        s.__exit__()
    assert not [b for b in fakes["virginia"].received if "eu-secret" in json.dumps(b)]


def records(fleet) -> list[dict]:
    return list(read(fleet["audit"]))


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- A. direct mode takes hosts and key variables only from the app ----------------------------------------------

@pytest.fixture
def hostile():
    """Whatever answers at `base_url`: here a table naming a cheap backend on a host the app never allowed, and the
    app's AWS secret as every backend's bearer key. Both backends are real servers that record what they get."""
    fakes = {"evil": FakeBackend("evil"), "good": FakeBackend("good")}
    servers = {k: ServerThread(f.app()).__enter__() for k, f in fakes.items()}
    evil_port = servers["evil"].url.rsplit(":", 1)[1]
    table = [backend("evil", PARIS, f"http://localhost:{evil_port}", cost=0.0, api_key_env="AWS_SECRET_ACCESS_KEY"),
             backend("good", PARIS, servers["good"].url, cost=1.0, api_key_env="AWS_SECRET_ACCESS_KEY")]
    reports: list[dict] = []

    async def routes(_: Request) -> Response:
        return JSONResponse({"tenant": "t", "residency": {"zones": ["GLOBAL"]}, "deployments": {"m": {
            "model": "m", "residency": {}, "policy": "cost", "backends": [b.to_wire() for b in table]}}})

    async def report(request: Request) -> Response:
        reports.append(await request.json())
        return Response(status_code=204)

    app = Starlette(routes=[Route("/v1/routes", routes), Route("/v1/audit/report", report, methods=["POST"])])
    with ServerThread(app) as table_server:
        yield {"url": table_server.url, "fakes": fakes, "reports": reports}
    for s in servers.values():
        s.__exit__()


def test_direct_mode_allows_no_host_the_app_did_not_name_and_never_reads_a_tables_key_variable(hostile, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)

    async def scenario():
        async with sdk.AsyncClient(hostile["url"], api_key="sk-app", mode="direct") as c:
            with pytest.raises(sdk.NoAllowedBackendError, match="direct_hosts"):
                await c.chat("m", [{"role": "user", "content": "secret prompt"}])
            return c.unreachable

    unreachable = asyncio.run(scenario())
    assert hostile["fakes"]["evil"].received == [] and hostile["fakes"]["good"].received == []
    assert len(unreachable) == 2 and all("not in direct_hosts" in u for u in unreachable), unreachable


def test_direct_mode_calls_only_allowed_hosts_with_the_key_the_app_pinned(hostile, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)
    monkeypatch.setenv("APP_GOOD_KEY", "sk-good-backend")
    fakes = hostile["fakes"]

    async def scenario():
        async with sdk.AsyncClient(hostile["url"], api_key="sk-app", mode="direct",
                                   direct_hosts=["127.0.0.1"]) as c:
            unpinned = await c.chat("m", [{"role": "user", "content": "secret prompt"}])
        async with sdk.AsyncClient(hostile["url"], api_key="sk-app", mode="direct", direct_hosts=["127.0.0.1"],
                                   direct_keys={"127.0.0.1": "APP_GOOD_KEY"}) as c:
            pinned = await c.chat("m", [{"role": "user", "content": "secret prompt"}])
            return unpinned, pinned, c.unreachable

    unpinned, pinned, unreachable = asyncio.run(scenario())
    assert unpinned.target == pinned.target == "good"  # the cheaper backend is on a host the app never allowed
    assert fakes["evil"].received == []
    assert fakes["good"].authorization == [None, "Bearer sk-good-backend"]  # never the table's AWS_SECRET_ACCESS_KEY
    assert unreachable == (("m/evil (openai-compatible): host localhost is not in direct_hosts (allowed: 127.0.0.1); "
                            "the app must allow every host it sends payloads to"),)
    # each call was reported to whoever served the table (the real router writes it into its trail)
    assert [[(a["target"], a["outcome"]) for a in r["attempts"]] for r in hostile["reports"]] == [
        [("good", "ok")], [("good", "ok")]]
    assert CANARY not in json.dumps(hostile["reports"])


def test_a_table_cannot_downgrade_an_allowed_host_to_plain_http():
    """The app allowed nim.example.com (meaning https); a table naming http://nim.example.com is not followed."""
    table = [backend("nim", PARIS, "http://nim.example.com", cost=0.0),
             backend("ipv6", PARIS, "http://[::1]:9", cost=1.0)]

    async def routes(_: Request) -> Response:
        return JSONResponse({"tenant": "t", "residency": {"zones": ["GLOBAL"]}, "deployments": {"m": {
            "model": "m", "residency": {}, "policy": "cost", "backends": [b.to_wire() for b in table]}}})

    with ServerThread(Starlette(routes=[Route("/v1/routes", routes)])) as server:
        async def scenario():
            async with sdk.AsyncClient(server.url, mode="direct", direct_hosts=["nim.example.com"]) as c:
                with pytest.raises(sdk.NoAllowedBackendError, match="plain http to nim.example.com"):
                    await c.chat("m", [{"role": "user", "content": "secret prompt"}])
                return c.unreachable

        unreachable = asyncio.run(scenario())
    assert [u.split(":")[0] for u in unreachable] == ["m/ipv6 (openai-compatible)", "m/nim (openai-compatible)"]


@pytest.mark.parametrize(("url", "kwargs"), [
    ("http://10.1.2.3:8000", {"mode": "direct"}),
    ("http://router.example.com", {"mode": "direct", "insecure_http": True}),  # direct mode: https, always
    ("http://router.example.com", {"api_key": "sk-x"}),  # the key, in clear, to another machine
    ("ftp://127.0.0.1", {}),
])
def test_the_sdk_refuses_plain_http_to_another_machine_for_direct_mode_and_for_a_key(url, kwargs):
    with pytest.raises(ValueError, match="https://"):
        sdk.AsyncClient(url, **kwargs)


@pytest.mark.parametrize(("url", "kwargs"), [
    ("http://127.0.0.1:8000", {"mode": "direct", "api_key": "k"}), ("http://[::1]:8000", {"api_key": "k"}),
    ("http://localhost:8000", {"mode": "direct"}), ("https://router.example.com", {"mode": "direct", "api_key": "k"}),
    ("http://router.example.com", {}),  # no key to leak
    ("http://router.example.com", {"api_key": "k", "insecure_http": True}),  # the app says the network is trusted
])
def test_the_sdk_accepts_loopback_https_and_an_explicit_insecure_proxy(url, kwargs):
    asyncio.run(sdk.AsyncClient(url, **kwargs).aclose())


def test_direct_calls_are_recorded_in_the_routers_trail_under_the_keys_tenant(fleet):
    fakes = fleet["fakes"]

    async def scenario():
        async with sdk.AsyncClient(fleet["url"], api_key=EU_KEY, mode="direct", direct_hosts=["127.0.0.1"],
                                   residency="DE") as c:
            answer = await c.chat("m", [{"role": "user", "content": "eu-secret direct"}])
            chunks = [ch async for ch in c.chat_stream("m", [{"role": "user", "content": "eu-secret stream"}])]
            fakes["berlin"].failing = True
            try:
                with pytest.raises(sdk.NoAllowedBackendError):
                    await c.chat("m", [{"role": "user", "content": "eu-secret refused"}])
            finally:
                fakes["berlin"].failing = False
                fleet["state"].dispatcher.breaker._states.clear()
            return answer, chunks

    before = len(records(fleet))
    answer, chunks = asyncio.run(scenario())
    assert answer.target == "berlin" and chunks
    new = records(fleet)[before:]
    assert [r["request_id"].startswith("direct:") for r in new] == [True, True, True]
    assert {r["tenant"] for r in new} == {"eu-bank"} and {r["deployment"] for r in new} == {"m"}
    assert [(r["status"], r["outcome"]) for r in new] == [(200, "ok"), (200, "ok"), (503, "no_allowed_backend")]
    assert [r["attempts"] for r in new[:2]] == [[{"target": "berlin", "zone": "EU", "country": "DE",
                                                  "outcome": "ok"}]] * 2
    assert new[2]["attempts"][0]["outcome"] == "refused"
    assert all("countries [DE]" in r["residency"] for r in new)  # the bound the app narrowed to, recomputed
    assert new[0]["prompt_tokens"] == 3 and new[0]["completion_tokens"] == 2
    trail = fleet["audit"]
    files = [f for f in trail.rglob("*") if f.is_file()] if trail.is_dir() else [trail]
    assert files and not [f for f in files if b"eu-secret" in f.read_bytes()]


def _report(**over):
    body = {"request_id": "r1", "model": "m", "attempts": [{"target": "paris", "outcome": "ok"}],
            "status": 200, "outcome": "ok", "latency_ms": 3.0}
    return {**body, **over}


@pytest.mark.parametrize(("key", "body", "status", "code"), [
    (EU_KEY, _report(attempts=[{"target": "virginia", "outcome": "ok"}]), 400, "invalid_request"),  # outside bound
    (US_KEY, _report(), 400, "invalid_request"),  # paris is outside the US tenant's bound
    (US_KEY, _report(model="legal"), 404, "model_not_found"),  # a deployment the tenant may not see
    (EU_KEY, _report(residency=["US"]), 403, "residency_not_allowed"),  # a header that widens
    (EU_KEY, _report(residency=["DE"]), 400, "invalid_request"),  # paris is outside EU ∩ DE
    (EU_KEY, _report(tenant="us-shop"), 400, "invalid_request"),  # the tenant is the key's, never the body's
    (EU_KEY, _report(attempts=[{"target": "paris", "outcome": "ok"}] * 33), 400, "invalid_request"),
    (EU_KEY, _report(request_id="x" * 20_000), 413, "request_too_large"),
    (None, _report(), 401, "invalid_api_key"),
])
def test_a_report_outside_the_tenants_own_table_is_refused_whole(fleet, key, body, status, code):
    before = len(records(fleet))
    r = httpx.post(fleet["url"] + "/v1/audit/report", json=body, headers=auth(key) if key else {})
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert len(records(fleet)) == before


def test_a_report_inside_the_bound_is_written_with_the_routers_own_zone_and_country(fleet):
    attempts = [{"target": "berlin", "outcome": "refused"}, {"target": "paris", "outcome": "ok"}]
    r = httpx.post(fleet["url"] + "/v1/audit/report", headers=auth(EU_KEY),
                   json=_report(request_id="own-1", attempts=attempts))
    assert r.status_code == 204, r.text
    rec = records(fleet)[-1]
    assert rec["request_id"] == "direct:own-1" and rec["tenant"] == "eu-bank" and rec["zone"] == "EU"
    assert [(a["target"], a["country"], a["outcome"]) for a in rec["attempts"]] == [
        ("berlin", "DE", "refused"), ("paris", "FR", "ok")]


def test_an_org_that_disables_direct_mode_gets_a_403_and_the_sdk_says_so(fleet):
    state = fleet["state"]
    state.direct_mode = False
    try:
        r = httpx.get(fleet["url"] + "/v1/routes", headers=auth(EU_KEY))
        report = httpx.post(fleet["url"] + "/v1/audit/report", headers=auth(EU_KEY), json=_report())

        async def scenario():
            async with sdk.AsyncClient(fleet["url"], api_key=EU_KEY, mode="direct", direct_hosts=["127.0.0.1"]) as c:
                await c.chat("m", [{"role": "user", "content": "eu-secret"}])

        with pytest.raises(sdk.PermissionDeniedError, match="direct_mode: false") as exc:
            asyncio.run(scenario())
    finally:
        state.direct_mode = True
    assert r.status_code == 403 and r.json()["error"]["code"] == "direct_mode_disabled"
    assert report.status_code == 403 and exc.value.code == "direct_mode_disabled"


def test_the_org_file_carries_the_direct_mode_and_scrape_key_settings():
    from sovra.core.spec.org import Org

    org = Org.model_validate({"router": {"direct_mode": False, "scrape_key_sha256": sha(SCRAPE_KEY)}})
    assert org.router.direct_mode is False
    with pytest.raises(ValueError, match="scrape_key_sha256 is a tenant's"):
        Org.model_validate({"router": {"scrape_key_sha256": sha(EU_KEY)}, "tenants": [
            {"name": "eu", "key_sha256": sha(EU_KEY), "residency": {"zones": ["EU"]}}]})


# -- B. repeated X-Sovra-Residency headers: every one narrows -----------------------------------------------------

def _chat(fleet, headers, text="eu-secret header"):
    return httpx.post(fleet["url"] + "/v1/chat/completions", headers=headers,
                      json={"model": "m", "messages": [{"role": "user", "content": text}]}, timeout=30)


def test_repeated_residency_headers_are_intersected_never_ignored(fleet):
    key = ("Authorization", f"Bearer {EU_KEY}")
    both = _chat(fleet, [key, ("X-Sovra-Residency", "EU"), ("X-Sovra-Residency", "DE")])
    assert both.status_code == 200 and both.headers["X-Sovra-Target"] == "berlin"  # EU ∩ DE; Paris is cheaper
    assert "zones [EU] ∩ countries [DE]" in records(fleet)[-1]["residency"]
    fr = _chat(fleet, [key, ("X-Sovra-Residency", "EU"), ("X-Sovra-Residency", "FR")])
    assert fr.headers["X-Sovra-Target"] == "paris"
    # two disjoint narrowings leave nothing: refused, sent nowhere
    berlin_before = len(fleet["fakes"]["berlin"].received)
    none = _chat(fleet, [key, ("X-Sovra-Residency", "FR"), ("X-Sovra-Residency", "DE")])
    assert none.status_code == 503 and none.json()["error"]["code"] == "no_allowed_backend"
    assert len(fleet["fakes"]["berlin"].received) == berlin_before
    # a gateway's narrowing header after one that widens does not hide the widening
    wide = _chat(fleet, [key, ("X-Sovra-Residency", "DE"), ("X-Sovra-Residency", "US")])
    assert wide.status_code == 403 and wide.json()["error"]["code"] == "residency_not_allowed"


# -- C. what the router shows, and to whom ------------------------------------------------------------------------

def test_readyz_names_deployments_only_to_admins_and_to_a_tenant_for_its_own(fleet):
    for headers in ({}, auth("sk-nope"), {"Authorization": "Basic x"}):
        anonymous = httpx.get(fleet["url"] + "/readyz", headers=headers)
        assert anonymous.status_code == 200 and anonymous.json()["status"] == "ready"
        assert "deployments" not in anonymous.json()
        assert not [n for n in ("legal", "paris", "berlin", "virginia") if n in anonymous.text]
    admin = httpx.get(fleet["url"] + "/readyz", headers=auth(ADMIN_KEY)).json()
    assert admin["deployments"]["m"] == {"ready": True, "healthy": 3, "backends": 3, "down": []}
    us = httpx.get(fleet["url"] + "/readyz", headers=auth(US_KEY)).json()
    assert us["deployments"] == {"m": {"ready": True, "healthy": 1, "backends": 1, "down": []}}  # its bound only


def test_readyz_for_sovra_status_sends_the_admin_key(fleet, monkeypatch):
    from sovra.orchestrator.deploy import _probe_router

    monkeypatch.setenv("SOVRA_ADMIN_KEY", ADMIN_KEY)
    live, ready = _probe_router(fleet["url"])
    assert live and set(ready["deployments"]) == {"legal", "m"}
    monkeypatch.delenv("SOVRA_ADMIN_KEY")
    assert "deployments" not in _probe_router(fleet["url"])[1]


@pytest.mark.parametrize(("key", "status"), [(None, 401), (EU_KEY, 403), ("sk-nope", 401), (ADMIN_KEY, 200),
                                             (SCRAPE_KEY, 200)])
def test_metrics_need_an_admin_or_the_scrape_key(fleet, key, status):
    r = httpx.get(fleet["url"] + "/metrics", headers=auth(key) if key else {})
    assert r.status_code == status
    if status == 200:
        assert "sovra_requests_total" in r.text
    else:
        assert "paris" not in r.text and set(r.json()["error"]) >= {"message", "type", "code"}


def test_routes_give_a_tenant_only_what_direct_mode_can_use_and_nothing_of_the_accounts():
    at = Place("EU", "FR", "FR", "self")
    table = RoutingTable.of([
        factories.backend("ray-paris", at, kind="ray").model_copy(update={"params": {
            "url": "http://10.0.0.5:8000/sovra-replica/sovra.m.ray-paris", "api_key_env": "SOVRA_REPLICA_KEY"}}),
        factories.backend("cortex", at, kind="snowflake-cortex", address="mistral-large2").model_copy(update={
            "params": {"account": "acme-eu", "user": "SVC_SOVRA", "role": "CORTEX_ROLE", "warehouse": "WH",
                       "connection_name": "prod"}}),
        factories.backend("aml", at, kind="azure-ml", address="ep-1").model_copy(update={"params": {
            "subscription_id": "00000000-1111-2222-3333-444444444444", "resource_group": "rg-secret",
            "workspace": "ws"}}),
        factories.backend("nim", at, kind="openai-compatible", address="https://nim.paris.example").model_copy(
            update={"params": {"api_key_env": "NIM_KEY", "served_model": "mistral"}}),
        factories.backend("bedrock", at, kind="aws-bedrock", address="eu.mistral").model_copy(update={
            "params": {"region": "eu-west-3", "profile": "router-admin"}})])
    state = RouterState(Dispatcher(table), TenantDirectory.of([
        Tenant(name="eu", key_sha256=sha(EU_KEY), residency=Residency(zones=("EU",)))]), {}, probe=False, direct_view=direct_view)
    with ServerThread(create_app(state)) as router:
        r = httpx.get(router.url + "/v1/routes", headers=auth(EU_KEY))
    m = r.json()["deployments"]["m"]
    assert {b["target"]: b["params"] for b in m["backends"]} == {
        "cortex": {"account": "acme-eu", "warehouse": "WH"}, "nim": {"served_model": "mistral"},
        "bedrock": {"region": "eu-west-3"}}
    assert sorted((p["target"], p["kind"]) for p in m["proxy_only"]) == [("aml", "azure-ml"), ("ray-paris", "ray")]
    for secret in ("10.0.0.5", "sovra.m.ray-paris", "SVC_SOVRA", "CORTEX_ROLE", "prod", "00000000-1111",
                   "rg-secret", "NIM_KEY", "SOVRA_REPLICA_KEY", "router-admin", "ep-1"):
        assert secret not in r.text, secret


def test_the_sdk_lists_proxy_only_backends_as_unreachable_with_the_reason():
    ray_only = RouterState(Dispatcher(RoutingTable.of([factories.backend("onprem-paris", PARIS, kind="ray")])),
                           TenantDirectory.of([]), {}, probe=False, direct_view=direct_view)
    with ServerThread(create_app(ray_only)) as server:
        async def scenario():
            async with sdk.AsyncClient(server.url, mode="direct", direct_hosts=["127.0.0.1"]) as c:
                with pytest.raises(sdk.NoAllowedBackendError, match="only through the router"):
                    await c.chat("m", [{"role": "user", "content": "hi"}])
                return c.unreachable

        assert asyncio.run(scenario()) == ("m/onprem-paris (ray): reached only through the router",)


def test_org_yaml_refuses_the_digest_of_the_empty_key():
    from sovra.core.spec.org import Org

    for raw in ({"tenants": [{"name": "t", "key_sha256": EMPTY_SHA256, "residency": {"zones": ["EU"]}}]},
                {"admins": [{"name": "a", "key_sha256": EMPTY_SHA256}]},
                {"router": {"scrape_key_sha256": EMPTY_SHA256}}):
        with pytest.raises(ValueError, match="empty string"):
            Org.model_validate(raw)


def _raw(url: str, method: str, path: str, authorization: bytes, body: bytes = b"") -> tuple[int, dict]:
    """One request written byte for byte (httpx will not send a header value ending in spaces)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    head = [f"{method} {path} HTTP/1.1".encode(), f"Host: {host}:{port}".encode(), b"Connection: close",
            b"Content-Type: application/json", f"Content-Length: {len(body)}".encode(),
            b"Authorization: " + authorization]
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, json.loads(answer.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("value", [b"Bearer ", b"Bearer    ", b"Bearer \t ", b"Bearer \xa0", b"bearer \xa0\xa0",
                                   b"Bearer", b""])
def test_an_empty_bearer_is_a_401_even_where_a_digest_of_nothing_slipped_into_the_org(value, tmp_path):
    """An org validated by an older Sovra may hold sha256(""): no empty or blank key may ever match it."""
    empty = Tenant.model_construct(name="legacy", key_sha256=EMPTY_SHA256, residency=Residency(zones=("EU",)),
                                   deployments=None)
    admin = Admin.model_construct(name="legacy-admin", key_sha256=EMPTY_SHA256)
    audit = AuditLog(tmp_path / "a.jsonl")
    fake = FakeBackend("paris")
    with ServerThread(fake.app()) as backend_server:
        state = RouterState(Dispatcher(RoutingTable.of([backend("paris", PARIS, backend_server.url, cost=1.0)])),
                            TenantDirectory.of([empty]), {"openai-compatible": HttpClient()}, audit, probe=False,
                            extra_routes=audit_routes(audit, [admin], open_router=False, tenants=[empty]), direct_view=direct_view)
        with ServerThread(create_app(state)) as router:
            chat = _raw(router.url, "POST", "/v1/chat/completions", value, BODY.encode())
            trail = _raw(router.url, "GET", "/v1/audit", value)
            routes = _raw(router.url, "GET", "/v1/routes", value)
    for status, body in (chat, trail, routes):
        assert (status, body["error"]["code"]) == (401, "invalid_api_key"), body
    assert fake.received == []


# -- C. the open router refuses what a browser can send cross-site -------------------------------------------------

@pytest.fixture(scope="module")
def open_router():
    fake = FakeBackend("paris")
    with ServerThread(fake.app()) as backend_server:
        state = RouterState(Dispatcher(RoutingTable.of([backend("paris", PARIS, backend_server.url, cost=1.0)])),
                            TenantDirectory.of([]), {"openai-compatible": HttpClient()}, probe=False, direct_view=direct_view)
        with ServerThread(create_app(state)) as router:
            yield {"url": router.url, "fake": fake}


@pytest.mark.parametrize(("path", "headers", "status", "code"), [
    ("/v1/chat/completions", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    ("/v1/chat/completions", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ("/v1/embeddings", {"Content-Type": "multipart/form-data; boundary=x"}, 415, "unsupported_media_type"),
    ("/v1/chat/completions", {}, 415, "unsupported_media_type"),
    ("/v1/audit/report", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),  # a Starlette route too
    ("/v1/chat/completions", {"Content-Type": "application/json", "Host": "attacker.example:8000"}, 403,
     "cross_site_refused"),
    ("/v1/chat/completions", {"Content-Type": "application/json", "Origin": "https://attacker.example"}, 403,
     "cross_site_refused"),
    ("/v1/chat/completions", {"Content-Type": "application/json", "Origin": "null"}, 403, "cross_site_refused"),
])
def test_the_open_router_refuses_cross_site_posts(open_router, path, headers, status, code):
    before = len(open_router["fake"].received)
    r = httpx.post(open_router["url"] + path, content=BODY, headers=headers)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert set(r.json()["error"]) >= {"message", "type", "code"}
    assert len(open_router["fake"].received) == before


@pytest.mark.parametrize("headers", [{"Origin": "https://attacker.example"}, {"Host": "rebound.attacker.example"}])
def test_the_open_router_answers_no_read_to_another_origin_or_a_rebound_name(open_router, headers):
    for path in ("/v1/models", "/readyz", "/v1/routes"):
        r = httpx.get(open_router["url"] + path, headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site_refused"


def test_the_open_router_still_serves_local_programs(open_router):
    for host in (None, "localhost:1234", "127.0.0.1", "[::1]:8000"):
        headers = {"Content-Type": "application/json; charset=utf-8", **({"Host": host} if host else {})}
        r = httpx.post(open_router["url"] + "/v1/chat/completions", content=BODY, headers=headers)
        assert r.status_code == 200, (host, r.text)
    assert "deployments" in httpx.get(open_router["url"] + "/readyz").json()  # open loopback: fully open
    assert httpx.get(open_router["url"] + "/metrics").status_code == 200


@pytest.mark.parametrize("router", ["open", "tenant"])
def test_no_router_answers_a_cors_preflight(open_router, fleet, router):
    url = (open_router if router == "open" else fleet)["url"]
    r = httpx.request("OPTIONS", url + "/v1/chat/completions", headers={
        "Origin": "https://attacker.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site_refused"
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]


def test_a_tenant_router_still_takes_any_content_type_with_a_key(fleet):
    r = httpx.post(fleet["url"] + "/v1/chat/completions", content=json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "eu-secret"}]}),
        headers={**auth(EU_KEY), "Content-Type": "text/plain"})
    assert r.status_code == 200
