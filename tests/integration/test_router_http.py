"""The router over real HTTP (uvicorn on 127.0.0.1) with the official openai client, backends EU and US."""

from __future__ import annotations

import hashlib
import json

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sovra.orchestrator.router.access import Access
from sovra.orchestrator.router.app import RouterState, create_app
from sovra.orchestrator.router.audit import AuditLog, read
from sovra.core.backends import RoutingTable
from sovra.providers.clients import HttpClient
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.orchestrator.router.tenants import TenantDirectory
from sovra.core.spec import Residency
from sovra.core.spec.org import Admin, Tenant
from sovra.core.place import Place
from tests import factories
from tests.fakes.openai_backend import FakeBackend, ServerThread

EU_KEY, US_KEY, ANY_KEY = "sk-test-eu", "sk-test-us", "sk-test-any"
ADMIN = {"Authorization": "Bearer sk-test-admin"}  # /metrics and /readyz's detail are for admins


def sha(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    fakes = {"paris": FakeBackend("onprem-paris"), "frankfurt": FakeBackend("aws-sagemaker/eu-central-1"),
             "virginia": FakeBackend("aws-sagemaker/us-east-1")}
    places = {"paris": Place("EU", "FR", "FR", "self"), "frankfurt": Place("EU", "DE", "US", "amazon"),
              "virginia": Place("US", "US", "US", "amazon")}
    servers = {k: ServerThread(f.app()).__enter__() for k, f in fakes.items()}

    def b(k, deployment="m", model="m", residency=None, cost=None):
        return factories.backend(fakes[k].name, places[k], deployment=deployment, model=model, residency=residency,
                                 cost=cost if cost is not None else {"virginia": 0.1, "paris": 1.0, "frankfurt": 2.0}[k],
                                 kind="openai-compatible", address=servers[k].url).model_copy(
            # the servers see which deployment a request was routed for (the invariants below check it)
            update={"params": {"served_model": deployment}})

    fr, eu = Residency(countries=("FR",)), Residency(zones=("EU",))
    backends = [b(k) for k in fakes] + [
        # `legal` (FR) shares its model with `support` (EU); its table even lists a cheaper German backend, as a
        # model-keyed table would have: the deployment's own residency must keep every request off it.
        b("paris", "legal", "mistral", fr), b("frankfurt", "legal", "mistral", fr, cost=0.5),
        b("paris", "support", "mistral", eu), b("frankfurt", "support", "mistral", eu)]
    audit_path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    tenants = TenantDirectory.of([
        Tenant(name="eu-bank", key_sha256=sha(EU_KEY), residency=Residency(zones=("EU",))),
        Tenant(name="us-retail", key_sha256=sha(US_KEY), residency=Residency(zones=("US",)), deployments=("m",)),
        Tenant(name="global", key_sha256=sha(ANY_KEY), residency=Residency(zones=("GLOBAL",)))])
    state = RouterState(Dispatcher(RoutingTable.of(backends), backoff_s=0.0), tenants, {"openai-compatible": HttpClient()},
                        AuditLog(audit_path), access=Access.of([Admin(name="ops", key_sha256=sha("sk-test-admin"))]), direct_view=direct_view)
    router = ServerThread(create_app(state)).__enter__()
    yield {"url": router.url, "fakes": fakes, "state": state, "audit": audit_path}
    router.__exit__()
    for s in servers.values():
        s.__exit__()
    # invariant: the EU tenant's payloads never reached the US backend
    assert not [b for b in fakes["virginia"].received if "eu-secret" in json.dumps(b)]
    # invariant: nothing addressed to `legal` (FR only) ever reached Germany
    assert not [b for b in fakes["frankfurt"].received if b.get("model") == "legal"]


def client(stack, key=EU_KEY, **headers) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["url"] + "/v1", api_key=key, default_headers=headers or None, max_retries=0)


def test_openai_client_chat_answers_with_target_headers(stack):
    raw = client(stack).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "eu-secret hello"}])
    answer = raw.parse()
    assert answer.choices[0].message.content == "served-by onprem-paris"  # cheapest allowed (US is cheaper)
    assert raw.headers["X-Sovra-Target"] == "onprem-paris" and raw.headers["X-Sovra-Zone"] == "EU"


def test_openai_client_streaming_chat(stack):
    chunks = list(client(stack).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "eu-secret stream"}], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "served-by onprem-paris"


def test_openai_client_embeddings_and_models(stack):
    emb = client(stack).embeddings.create(model="m", input=["abc", "de"])
    assert [d.embedding[0] for d in emb.data] == [3.0, 2.0]
    assert [m.id for m in client(stack).models.list()] == ["legal", "m", "support"]  # deployments, by name


def test_us_tenant_goes_to_the_us_backend(stack):
    raw = client(stack, US_KEY).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["X-Sovra-Target"] == "aws-sagemaker/us-east-1"


def test_errors_are_openai_style(stack):
    with pytest.raises(openai.AuthenticationError) as e401:
        client(stack, "sk-wrong").chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert e401.value.status_code == 401 and e401.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError):
        client(stack).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.PermissionDeniedError) as e403:
        client(stack, **{"X-Sovra-Residency": "US"}).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "eu-secret widen"}])
    assert e403.value.body["code"] == "residency_not_allowed"
    with pytest.raises(openai.BadRequestError) as e400:
        client(stack, **{"X-Sovra-Residency": "Narnia"}).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}])
    assert e400.value.body["code"] == "invalid_residency"


def test_header_narrows_to_a_country(stack):
    raw = client(stack, **{"X-Sovra-Residency": "DE"}).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "eu-secret to germany"}])
    assert raw.headers["X-Sovra-Target"] == "aws-sagemaker/eu-central-1"


def test_eu_tenant_with_every_eu_backend_down_gets_503_and_nothing_reaches_the_us(stack):
    fakes = stack["fakes"]
    before = len(fakes["virginia"].received)
    fakes["paris"].failing = fakes["frankfurt"].failing = True
    try:
        with pytest.raises(openai.InternalServerError) as exc:
            client(stack).chat.completions.create(model="m", messages=[{"role": "user", "content": "eu-secret 503"}])
        assert exc.value.status_code == 503 and exc.value.body["code"] == "no_allowed_backend"
        assert exc.value.response.headers["X-Sovra-Target"] == "none"
    finally:
        fakes["paris"].failing = fakes["frankfurt"].failing = False
        stack["state"].dispatcher.breaker._states.clear()
    assert len(fakes["virginia"].received) == before


def test_audit_has_one_line_per_request_with_target_and_no_payload(stack):
    n_before = len(list(read(stack["audit"])))
    client(stack).chat.completions.create(model="m", messages=[{"role": "user", "content": "eu-secret audit"}])
    records = list(read(stack["audit"]))
    assert len(records) == n_before + 1
    last = records[-1]
    assert last["tenant"] == "eu-bank" and last["target"] == "onprem-paris" and last["zone"] == "EU"
    text = "".join(f.read_text() for f in stack["audit"].iterdir())  # every writer's chain in the trail
    assert "eu-secret" not in text and EU_KEY not in text


def test_metrics_and_healthz(stack):
    m = httpx.get(stack["url"] + "/metrics", headers=ADMIN)
    assert m.status_code == 200 and "sovra_requests_total" in m.text and "sovra_router_overhead_seconds" in m.text
    assert httpx.get(stack["url"] + "/healthz").json() == {"status": "ok"}


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                           max_leaves=8)
bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"model": st.one_of(st.just("m"), st.text(max_size=5), st.integers()),
                           "messages": st.one_of(json_values, st.lists(st.fixed_dictionaries(
                               {"role": st.sampled_from(["user", "system", "robot", 3]),
                                "content": json_values}), max_size=2)),
                           "stream": st.one_of(st.booleans(), json_values)},
                          optional={"max_tokens": json_values, "input": json_values}
                          ).map(lambda d: json.dumps(d).encode()))
header_values = st.one_of(st.none(), st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=12),
                          st.sampled_from(["EU", "US", "FR,DE", "GLOBAL", ",", "eu , fr"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, residency=header_values, path=st.sampled_from(["/v1/chat/completions", "/v1/embeddings"]))
def test_fuzzed_requests_get_json_4xx_never_500(stack, body, residency, path):
    headers = {"Authorization": f"Bearer {EU_KEY}", "Content-Type": "application/json"}
    if residency is not None:
        headers["X-Sovra-Residency"] = residency
    r = httpx.post(stack["url"] + path, content=body, headers=headers, timeout=10)
    assert r.status_code < 500 or r.json()["error"]["code"] == "no_allowed_backend", r.text
    assert "X-Sovra-Target" in r.headers
    if r.status_code >= 400:
        assert set(r.json()["error"]) >= {"message", "type", "code"}
    else:
        assert r.headers["X-Sovra-Zone"] == "EU"


# -- the routing SDK ---------------------------------------------------------------------------------------------

from sovra.orchestrator import sdk
from sovra.providers.base import direct_view


def test_sdk_proxy_mode_sync_stream_and_typed_errors(stack):
    with sdk.Client(stack["url"], api_key=EU_KEY, residency="DE") as c:
        a = c.chat("m", [{"role": "user", "content": "eu-secret sdk"}])
        assert a.text == "served-by aws-sagemaker/eu-central-1" and a.target == "aws-sagemaker/eu-central-1"
        chunks = list(c.chat_stream("m", [{"role": "user", "content": "eu-secret sdk stream"}]))
        assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"]) \
            == "served-by aws-sagemaker/eu-central-1"
        assert c.models() == ["legal", "m", "support"]
    with sdk.Client(stack["url"], api_key=EU_KEY, residency=["US"]) as c:
        with pytest.raises(sdk.PermissionDeniedError):
            c.chat("m", [{"role": "user", "content": "x"}])
    with sdk.Client(stack["url"], api_key="sk-nope") as c, pytest.raises(sdk.AuthenticationError):
        c.embed("m", "x")


def test_routes_expose_only_what_the_tenant_may_reach(stack):
    r = httpx.get(stack["url"] + "/v1/routes", headers={"Authorization": f"Bearer {EU_KEY}"}).json()
    assert r["residency"]["zones"] == ["EU"]
    assert {b["place"]["zone"] for b in r["deployments"]["m"]["backends"]} == {"EU"}
    assert [b["target"] for b in r["deployments"]["legal"]["backends"]] == ["onprem-paris"]  # tenant ∩ deployment
    us = httpx.get(stack["url"] + "/v1/routes", headers={"Authorization": f"Bearer {US_KEY}"}).json()
    assert list(us["deployments"]) == ["m"]  # a tenant limited to `m` does not learn the others exist


def test_sdk_direct_mode_obeys_residency_policy_and_fails_closed(stack):
    import asyncio

    fakes = stack["fakes"]
    us_before = len(fakes["virginia"].received)

    async def scenario():
        async with sdk.AsyncClient(stack["url"], api_key=EU_KEY, mode="direct", direct_hosts=["127.0.0.1"]) as c:
            a = await c.chat("m", [{"role": "user", "content": "eu-secret direct"}])
            assert a.target == "onprem-paris"  # cost policy, within EU (US is cheaper but forbidden)
            e = await c.embed("m", ["abc"])
            assert e.zone == "EU"
            chunks = [ch async for ch in c.chat_stream("m", [{"role": "user", "content": "eu-secret s"}])]
            assert chunks
            fakes["paris"].failing = fakes["frankfurt"].failing = True
            try:
                with pytest.raises(sdk.NoAllowedBackendError):
                    await c.chat("m", [{"role": "user", "content": "eu-secret direct down"}])
            finally:
                fakes["paris"].failing = fakes["frankfurt"].failing = False
        async with sdk.AsyncClient(stack["url"], api_key=EU_KEY, residency="DE", mode="direct",
                                   direct_hosts=["127.0.0.1"]) as c:
            assert (await c.chat("m", [{"role": "user", "content": "eu-secret"}])).target \
                == "aws-sagemaker/eu-central-1"
        async with sdk.AsyncClient(stack["url"], api_key=EU_KEY, residency="US", mode="direct",
                                   direct_hosts=["127.0.0.1"]) as c:
            with pytest.raises(sdk.PermissionDeniedError):
                await c.chat("m", [{"role": "user", "content": "eu-secret widen"}])

    asyncio.run(scenario())
    assert len(fakes["virginia"].received) == us_before


def test_sdk_direct_mode_refreshes_its_table_so_a_narrowed_tenant_takes_effect(stack):
    import asyncio

    state = stack["state"]
    wide = state.tenants

    async def scenario():
        async with sdk.AsyncClient(stack["url"], api_key=EU_KEY, mode="direct", direct_hosts=["127.0.0.1"],
                                   routes_ttl_s=0.2) as c:
            first = await c.chat("m", [{"role": "user", "content": "eu-secret before"}])
            eu_bank = next(t for t in wide.tenants if t.name == "eu-bank")
            state.tenants = TenantDirectory.of([*(t for t in wide.tenants if t is not eu_bank),
                                                eu_bank.model_copy(update={"residency": Residency(countries=("DE",))})])
            cached = await c.chat("m", [{"role": "user", "content": "eu-secret cached"}])
            await asyncio.sleep(0.3)
            after = await c.chat("m", [{"role": "user", "content": "eu-secret after"}])
            return first.target, cached.target, after.target

    try:
        first, cached, after = asyncio.run(scenario())
    finally:
        state.tenants = wide
    assert first == cached == "onprem-paris"  # within the TTL the table is reused
    assert after == "aws-sagemaker/eu-central-1"  # the narrowed bound (DE only) applies after it


def test_sdk_direct_mode_names_what_it_cannot_reach():
    import asyncio

    from sovra.core.backends import RoutingTable as Table

    ray_only = RouterState(Dispatcher(Table.of([factories.backend("onprem-paris", Place("EU", "FR", "FR", "self"),
                                                                  kind="ray")])),
                           TenantDirectory.of([]), {}, direct_view=direct_view)
    with ServerThread(create_app(ray_only)) as server:
        async def scenario():
            async with sdk.AsyncClient(server.url, mode="direct", direct_hosts=["127.0.0.1"]) as c:
                with pytest.raises(sdk.NoAllowedBackendError, match="only through the router"):
                    await c.chat("m", [{"role": "user", "content": "hi"}])
                return c.unreachable

        assert asyncio.run(scenario()) == ("m/onprem-paris (ray): reached only through the router",)


def test_sdk_direct_mode_fetches_the_routing_table_once_for_concurrent_first_calls(stack):
    import asyncio

    fetched = []

    async def count(request: httpx.Request) -> None:
        if request.url.path == "/v1/routes":
            fetched.append(request.url)

    async def scenario():
        http = httpx.AsyncClient(event_hooks={"request": [count]})
        async with sdk.AsyncClient(stack["url"], api_key=EU_KEY, mode="direct", direct_hosts=["127.0.0.1"],
                                   http=http) as c:
            answers = await asyncio.gather(*(c.chat("m", [{"role": "user", "content": "eu-secret at once"}])
                                             for _ in range(8)))
        assert {a.zone for a in answers} == {"EU"}

    asyncio.run(scenario())
    assert len(fetched) == 1


# -- a deployment's residency binds its requests (issue 7, item 2) -----------------------------------------------

def test_a_deployment_binds_its_requests_whatever_the_tenant_allows(stack):
    for key in (ANY_KEY, EU_KEY):
        for _ in range(10):
            raw = client(stack, key).chat.completions.with_raw_response.create(
                model="legal", messages=[{"role": "user", "content": "eu-secret contract"}])
            assert raw.headers["X-Sovra-Target"] == "onprem-paris"  # the cheaper German backend is never used


def test_a_bare_model_name_shared_by_different_residencies_is_a_400_naming_the_deployments(stack):
    with pytest.raises(openai.BadRequestError) as exc:
        client(stack, ANY_KEY).chat.completions.create(model="mistral", messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["code"] == "ambiguous_model"
    assert "legal" in exc.value.body["message"] and "support" in exc.value.body["message"]


def test_a_tenant_limited_to_some_deployments_gets_404_for_the_others(stack):
    with pytest.raises(openai.NotFoundError) as exc:
        client(stack, US_KEY).chat.completions.create(model="legal", messages=[{"role": "user", "content": "x"}])
    assert "legal" not in exc.value.body["message"].split(";")[-1]  # the list of callable deployments omits it
    assert [m.id for m in client(stack, US_KEY).models.list()] == ["m"]


# -- bounded everything (item 5) -------------------------------------------------------------------------------

def test_bogus_model_names_add_no_metric_series(stack):
    def series():
        return sum(1 for line in httpx.get(stack["url"] + "/metrics", headers=ADMIN).text.splitlines()
                   if line.startswith("sovra_requests_total{"))

    before = series()
    for i in range(200):
        r = httpx.post(stack["url"] + "/v1/chat/completions", headers={"Authorization": f"Bearer {EU_KEY}"},
                       json={"model": f"bogus-{i}", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 404
    assert series() - before <= 1  # at most one new series: deployment "-", status 404


def test_an_oversized_body_is_refused_while_reading_even_without_a_content_length(stack):
    big = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 4_100_000 + b'"}]}'

    def chunks():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    headers = {"Authorization": f"Bearer {EU_KEY}", "Content-Type": "application/json"}
    declared = httpx.post(stack["url"] + "/v1/chat/completions", content=big, headers=headers)
    streamed = httpx.post(stack["url"] + "/v1/chat/completions", content=chunks(), headers=headers)
    for r in (declared, streamed):
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_an_upstream_error_that_is_not_an_object_is_passed_as_a_message_not_a_500(stack):
    fakes = stack["fakes"]
    fakes["paris"].odd_error = True
    try:
        r = httpx.post(stack["url"] + "/v1/chat/completions", headers={"Authorization": f"Bearer {EU_KEY}"},
                       json={"model": "m", "messages": [{"role": "user", "content": "eu-secret odd"}]})
    finally:
        fakes["paris"].odd_error = False
    assert r.status_code == 400 and r.json()["error"]["message"] == "quota text, not an object"


def test_a_slow_streaming_backend_gets_the_request_once_and_the_client_a_504(stack):
    fakes, d = stack["fakes"], stack["state"].dispatcher
    frankfurt_before = len(fakes["frankfurt"].received)
    fakes["paris"].delay_s, d.timeout_s = 1.0, 0.3
    try:
        with pytest.raises(openai.APIStatusError) as exc:
            list(client(stack).chat.completions.create(
                model="m", stream=True, messages=[{"role": "user", "content": "eu-secret slow stream"}]))
    finally:
        fakes["paris"].delay_s, d.timeout_s = 0.0, 120.0
        d.breaker._states.clear()
    assert exc.value.status_code == 504 and exc.value.body["code"] == "upstream_timeout"
    assert len(fakes["frankfurt"].received) == frankfurt_before  # never resent elsewhere


# -- readiness and the router's own time (item 7) ---------------------------------------------------------------

def test_readyz_is_per_deployment_and_503_when_one_has_no_healthy_backend(stack):
    ok = httpx.get(stack["url"] + "/readyz", headers=ADMIN)
    assert ok.status_code == 200 and ok.json()["deployments"]["legal"] == {
        "ready": True, "healthy": 1, "backends": 1, "down": []}  # legal's own bound allows only Paris
    dispatcher = stack["state"].dispatcher
    dispatcher.breaker.trip("legal@onprem-paris")
    dispatcher.why["legal@onprem-paris"] = "model id needs an inference profile: use eu.x"  # as a verdict leaves it
    try:
        down = httpx.get(stack["url"] + "/readyz", headers=ADMIN)
        tenant = httpx.get(stack["url"] + "/readyz", headers={"Authorization": "Bearer sk-test-eu"})
    finally:
        dispatcher.breaker._states.clear()
        dispatcher.why.clear()
    assert down.status_code == 503 and down.json()["deployments"]["legal"]["ready"] is False
    assert down.json()["deployments"]["legal"]["why"] == {"onprem-paris": "model id needs an inference profile: use eu.x"}
    assert down.json()["deployments"]["m"]["ready"] is True
    assert "why" not in str(tenant.json()), "why a backend is out is for admins (it names account internals)"


def test_every_answer_carries_the_routers_own_time(stack):
    raw = client(stack).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "eu-secret timing"}])
    assert 0 <= float(raw.headers["X-Sovra-Overhead-Ms"]) < 10_000


# -- the audit trail proves where every payload went (item 6) -----------------------------------------------------

def _last_record(stack):
    return list(read(stack["audit"]))[-1]


def test_a_503_after_failed_attempts_records_every_backend_that_received_the_payload(stack):
    fakes = stack["fakes"]
    fakes["paris"].failing = fakes["frankfurt"].failing = True
    try:
        with pytest.raises(openai.InternalServerError):
            client(stack).chat.completions.create(model="m", messages=[{"role": "user", "content": "eu-secret"}])
    finally:
        fakes["paris"].failing = fakes["frankfurt"].failing = False
        stack["state"].dispatcher.breaker._states.clear()
    rec = _last_record(stack)
    assert rec["status"] == 503 and rec["deployment"] == "m"
    assert {(a["target"], a["outcome"]) for a in rec["attempts"]} == {
        ("onprem-paris", "refused"), ("aws-sagemaker/eu-central-1", "refused")}
    assert all(a["zone"] == "EU" for a in rec["attempts"])


def test_a_stream_the_client_aborts_is_recorded(stack):
    import time

    fakes = stack["fakes"]
    fakes["paris"].chunk_gap_s = 0.5
    try:
        with httpx.stream("POST", stack["url"] + "/v1/chat/completions",
                          headers={"Authorization": f"Bearer {EU_KEY}", "X-Request-Id": "abort-me"},
                          json={"model": "m", "stream": True,
                                "messages": [{"role": "user", "content": "eu-secret abort"}]}) as r:
            next(r.iter_raw())
        deadline = time.time() + 5
        # the `send` line is there at once (read shows it as `unfinished`); the request's record once it ends
        while (_last_record(stack)["request_id"], _last_record(stack)["outcome"]) != ("abort-me", "cancelled"):
            assert time.time() < deadline, "the aborted stream was never recorded"
            time.sleep(0.05)
    finally:
        fakes["paris"].chunk_gap_s = 0.0
    rec = _last_record(stack)
    assert rec["status"] == 499 and rec["outcome"] == "cancelled"
    assert [{k: v for k, v in a.items() if k != "send_seq"} for a in rec["attempts"]] == [
        {"target": "onprem-paris", "zone": "EU", "country": "FR", "outcome": "cancelled"}]
    assert isinstance(rec["attempts"][0]["send_seq"], int)  # its line before the payload left
    assert stack["state"].dispatcher.in_flight["m@onprem-paris"] == 0
