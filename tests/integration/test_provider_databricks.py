"""The databricks adapter against a Databricks workspace emulator over real HTTP on 127.0.0.1, with databricks-sdk
configured as a user configures it (DATABRICKS_HOST / DATABRICKS_TOKEN, or a ~/.databrickscfg profile): chat,
streaming, embeddings, probe, describe, locate, live settings and zones, and every fault given its verdict, with
each payload sent at most once and the token in no log line and no Backend record."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sovra.orchestrator.catalog import load_catalog
from sovra.core.errors import ProviderError
from sovra.core.backends import Backend
from sovra.providers.clients import refused_503
from sovra.core.api_errors import BadRequest, Failed, NotDelivered, Refused, RouterError, TimedOut
from sovra.core.spec import Residency
from sovra.core.place import Place
from sovra.providers import base
from sovra.providers.databricks.client import DatabricksClient, verdict
from sovra.providers.base import direct_view
from tests.emulators.databricks import DatabricksEmulator, closed_url, reply, vector

pytestmark = pytest.mark.integration

CATALOG = Path(__file__).resolve().parents[2] / "providers" / "databricks" / "catalogs" / "databricks.yaml"
TARGETS = {t.id: t for t in load_catalog(CATALOG).targets}
EU = TARGETS["databricks/aws-eu-central-1"]
JP = TARGETS["databricks/aws-ap-northeast-1"]
CROSS = TARGETS["databricks/aws-eu-central-1-cross-geo"]
CHAT = {"model": "support-assistant", "messages": [{"role": "system", "content": "be brief"},
                                                   {"role": "user", "content": "hello"}], "max_tokens": 20}
PROVIDER = base.get("databricks")


@pytest.fixture
def sdk_env(monkeypatch, tmp_path):
    """No DATABRICKS_* variable and no ~/.databrickscfg of the machine running the tests leaks in."""
    import os

    for key in [k for k in os.environ if k.startswith(("DATABRICKS_", "ARM_", "AZURE_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "databrickscfg"))
    return monkeypatch


@pytest.fixture
def workspace(sdk_env):
    """The emulator, and the SDK pointed at it the way a user would: DATABRICKS_HOST and DATABRICKS_TOKEN."""
    with DatabricksEmulator() as emu:
        sdk_env.setenv("DATABRICKS_HOST", emu.host)
        sdk_env.setenv("DATABRICKS_TOKEN", emu.token)
        yield emu
        # the adapter never names a model in the body: the endpoint in the URL is the model
        assert all("model" not in body for _, body in emu.received)


def backend(target=EU, model="llama-3.3-70b", connection=None) -> Backend:
    """The routing-table record `up` writes for `model` at `target`, from the adapter's own `locate`."""
    where = PROVIDER.locate(target, model, PROVIDER.connection(connection))
    return Backend(id=f"d@{target.id}", deployment="d", model=model, target=target.id, place=Place.of(target),
                   residency=Residency(), kind="databricks", address=where.address, params=dict(where.params), tier=1)


def run(coro_fn, **client_kw):
    """Run `coro_fn(client)` with a fresh client, closed afterwards."""
    async def main():
        client = DatabricksClient(**client_kw)
        try:
            return await coro_fn(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


async def collect(client, b, body):
    stream = await client.chat_stream(b, body)
    return [c async for c in stream]


# -- invoke --------------------------------------------------------------------------------------------------------


def test_chat_goes_to_the_pay_per_token_endpoint_without_a_model_field(workspace):
    b = backend()
    answer = run(lambda c: c.chat(b, CHAT))
    assert answer["choices"][0]["message"]["content"] == "echo: hello"
    assert answer["usage"]["total_tokens"] > 0
    [sent] = workspace.invocations("databricks-meta-llama-3-3-70b-instruct")
    assert "model" not in sent and sent["stream"] is False and sent["max_tokens"] == 20
    assert sent["messages"] == CHAT["messages"]


@pytest.mark.parametrize("done", [True, False], ids=["with-DONE", "ends-at-EOF"])
def test_stream_yields_the_chunks_as_sent(workspace, done):
    workspace.sse_done = done
    chunks = run(lambda c: collect(c, backend(), CHAT))
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
    assert text == "echo: hello"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["total_tokens"] > 0
    [sent] = workspace.received
    assert sent[1]["stream"] is True


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather at a place",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}
TOOLS = {**CHAT, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
         "parallel_tool_calls": True}


def test_tools_reach_the_endpoint_as_sent_and_tool_calls_come_back(workspace):
    """databricks-sdk's `serving_endpoints.query()` has no tools / tool_choice / response_format / top_p
    parameters: the adapter posts the OpenAI body itself, so none of them is dropped."""
    answer = run(lambda c: c.chat(backend(), {**TOOLS, "top_p": 0.9}))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [{"id": "call_emulated_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"location": "hello"}'}}]
    [sent] = workspace.received
    assert {k: sent[1][k] for k in ("tools", "tool_choice", "parallel_tool_calls", "top_p")} == {
        "tools": [WEATHER], "tool_choice": TOOLS["tool_choice"], "parallel_tool_calls": True, "top_p": 0.9}


def test_a_streamed_tool_call_and_its_result(workspace):
    chunks = run(lambda c: collect(c, backend(), {**TOOLS, "stream_options": {"include_usage": True}}))
    deltas = [d for ch in chunks for d in ch["choices"][0]["delta"].get("tool_calls", ())]
    assert deltas[0]["id"] == "call_emulated_1" and deltas[0]["function"]["name"] == "get_weather"
    assert "".join(d["function"].get("arguments", "") for d in deltas) == '{"location": "hello"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert workspace.received[0][1]["stream_options"] == {"include_usage": True}
    call = {"id": "call_emulated_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location": "hello"}'}}
    follow = {**CHAT, "tools": [WEATHER], "messages": [
        *CHAT["messages"], {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_emulated_1", "content": "sunny"}]}
    answer = run(lambda c: c.chat(backend(), follow))
    assert answer["choices"][0]["message"]["content"] == "echo: tool said sunny"
    assert workspace.received[-1][1]["messages"] == follow["messages"]


@pytest.mark.parametrize("fmt", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object", "required": ["city"]}}}])
def test_response_format_reaches_the_endpoint_as_sent(workspace, fmt):
    answer = run(lambda c: c.chat(backend(), {**CHAT, "response_format": fmt}))
    assert isinstance(json.loads(answer["choices"][0]["message"]["content"]), dict)
    assert workspace.received[0][1]["response_format"] == fmt


def test_a_tool_the_endpoint_cannot_take_is_its_400(workspace):
    with pytest.raises(BadRequest, match="Each tool must be"):
        run(lambda c: c.chat(backend(), {**CHAT, "tools": [{"type": "code_interpreter"}]}))


def test_embeddings(workspace):
    b = backend(connection={"endpoint": "databricks-gte-large-en"}, model="gte-large")
    answer = run(lambda c: c.embed(b, {"model": "gte-large", "input": ["a b", "héllo"]}))
    assert [d["embedding"] for d in answer["data"]] == [vector("a b"), vector("héllo")]
    assert workspace.invocations("databricks-gte-large-en") == [{"input": ["a b", "héllo"]}]


def test_health_and_describe_read_the_endpoint_state_without_a_payload(workspace):
    b = backend()
    assert run(lambda c: c.health(b)) is True
    described = run(lambda c: c.describe(b))
    assert described == {"status": "READY", "config_update": "NOT_UPDATING", "task": "llm/v1/chat",
                         "served": ["databricks-meta-llama-3-3-70b-instruct"]}
    workspace.not_ready.add("databricks-meta-llama-3-3-70b-instruct")
    assert run(lambda c: c.health(b)) is False
    assert run(lambda c: c.describe(b))["status"] == "NOT_READY"
    missing = backend(connection={"endpoint": "no-such-endpoint"})
    assert run(lambda c: c.health(missing)) is False
    assert "RESOURCE_DOES_NOT_EXIST" in run(lambda c: c.describe(missing))["error"]
    assert workspace.received == []  # probes and describe never carry a payload


def test_a_profile_from_databrickscfg_is_used_when_org_yaml_names_it(sdk_env, tmp_path):
    with DatabricksEmulator(token="dapi-profile-token") as emu:
        cfg = tmp_path / "databrickscfg"
        cfg.write_text(f"[sovra-eu]\nhost = {emu.host}\ntoken = dapi-profile-token\n")
        b = backend(connection={"host": emu.host, "profile": "sovra-eu"})
        assert b.params == {"host": emu.host, "profile": "sovra-eu"}
        assert run(lambda c: c.chat(b, CHAT))["choices"][0]["message"]["content"] == "echo: hello"


def test_no_credentials_is_not_delivered_and_down(workspace, sdk_env):
    sdk_env.delenv("DATABRICKS_TOKEN")
    with pytest.raises(NotDelivered) as err:
        run(lambda c: c.chat(backend(), CHAT))
    assert err.value.down and err.value.resend and "DATABRICKS_TOKEN" in str(err.value)
    assert workspace.received == []


# -- faults -> verdicts: one send each, never repeated by the SDK or the client -----------------------------------


@pytest.mark.parametrize("fault, expected, attrs", [
    ("throttle", Refused, {"throttled": True, "status": 429, "retry_after_s": 7, "down": False}),
    ("unavailable", Refused, {"throttled": False, "status": 503, "retry_after_s": 7}),
    ("unauthorized", Refused, {"status": 401, "down": True}),
    ("server_error", Failed, {"resend": False}),
    ("malformed", Failed, {"resend": False}),
    ("bad_request", BadRequest, {"status": 400}),
])
@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
def test_fault_verdicts(workspace, fault, expected, attrs, streamed):
    workspace.fault = fault
    call = (lambda c: collect(c, backend(), CHAT)) if streamed else (lambda c: c.chat(backend(), CHAT))
    with pytest.raises(expected) as err:
        run(call)
    for name, value in attrs.items():
        assert getattr(err.value, name) == value, name
    # received once (none when the token was refused at the door): neither the SDK nor the client resent it
    assert len(workspace.received) == (0 if fault == "unauthorized" else 1)


def test_missing_endpoint_is_refused_404_and_down(workspace):
    with pytest.raises(Refused) as err:
        run(lambda c: c.chat(backend(connection={"endpoint": "gone-endpoint"}), CHAT))
    assert (err.value.status, err.value.down) == (404, True) and "RESOURCE_DOES_NOT_EXIST" in str(err.value)


def test_a_slow_answer_times_out_and_is_not_resent(workspace):
    workspace.fault, workspace.delay_s = "slow", 1.5
    with pytest.raises(TimedOut) as err:
        run(lambda c: c.chat(backend(), CHAT), read_timeout_s=0.3)
    assert not err.value.resend
    assert len(workspace.received) == 1


def test_a_closed_port_is_not_delivered(sdk_env):
    sdk_env.setenv("DATABRICKS_TOKEN", "dapi-x")
    url = closed_url()
    b = backend(connection={"host": url})
    with pytest.raises(NotDelivered) as err:
        run(lambda c: c.chat(b, CHAT))
    assert err.value.resend
    assert run(lambda c: c.health(b)) is False


@given(status=st.integers(400, 599), retry_after=st.one_of(st.none(), st.text(max_size=8),
                                                            st.integers(0, 10**6).map(str)),
       body=st.one_of(st.binary(max_size=64), st.dictionaries(st.sampled_from(["error_code", "message", "error"]),
                                                              st.text(max_size=20)).map(lambda d: repr(d).encode())))
def test_every_error_answer_has_one_verdict(status, retry_after, body):
    """Only what Databricks says it did not process (429; 503 with TEMPORARILY_UNAVAILABLE, a Retry-After or a body
    saying so) or could not take (401/403/404) may go elsewhere; 4xx are the request's own fault; every other 5xx
    may have been processed (a 504 is a timeout after delivery)."""
    v = verdict(status, body, retry_after)
    if status in (429, 401, 403, 404) or (status == 503 and refused_503(body, retry_after)):
        assert isinstance(v, Refused) and v.resend
        assert v.retry_after_s is None or v.retry_after_s >= 1
        assert v.down == (status in (401, 403, 404))
    elif status < 500:
        assert isinstance(v, RouterError) and v.status in (400, 413)
    else:
        assert isinstance(v, Failed) and not v.resend
        assert isinstance(v, TimedOut) == (status == 504)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=200),
       streamed=st.booleans())
def test_any_text_round_trips_json_and_sse(workspace, text, streamed):
    body = {"messages": [{"role": "user", "content": text}]}
    b = backend()
    if streamed:
        chunks = run(lambda c: collect(c, b, body))
        got = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
    else:
        got = run(lambda c: c.chat(b, body))["choices"][0]["message"]["content"]
    assert got == reply(body["messages"])
    assert workspace.received[-1][1]["messages"] == body["messages"]


# -- locate, connection, zones, live settings ---------------------------------------------------------------------


def test_locate(sdk_env):
    where = PROVIDER.locate(EU, "llama-3.1-8b", PROVIDER.connection({"host": "https://dbc-1.cloud.databricks.com/"}))
    assert (where.address, dict(where.params)) == ("databricks-meta-llama-3-1-8b-instruct",
                                                   {"host": "https://dbc-1.cloud.databricks.com"})
    own = PROVIDER.locate(EU, "llama-3.1-8b", PROVIDER.connection({"host": "https://h.example", "profile": "p",
                                                                   "endpoint": "my-pt-endpoint"}))
    assert (own.address, dict(own.params)) == ("my-pt-endpoint", {"host": "https://h.example", "profile": "p"})
    sdk_env.setenv("DATABRICKS_HOST", "https://from-env.example")
    assert PROVIDER.locate(JP, "llama-3.3-70b", PROVIDER.connection({})).params["host"] == "https://from-env.example"
    with pytest.raises(ProviderError, match="has no pay-per-token endpoint"):
        PROVIDER.locate(EU, "llama-4-maverick", PROVIDER.connection({}))
    sdk_env.delenv("DATABRICKS_HOST")
    with pytest.raises(ProviderError, match=r"accounts: \[\{provider: databricks, connection: \{host"):
        PROVIDER.locate(EU, "llama-3.3-70b", PROVIDER.connection({}))


@pytest.mark.parametrize("raw, field", [({"endpoint": "../admin"}, "endpoint"), ({"host": "dbc-1.example"}, "host"),
                                        ({"token": "dapi-x"}, "token"), ({"cross_geo": "maybe"}, "cross_geo")])
def test_connection_rejects_what_it_cannot_take(raw, field):
    with pytest.raises(ProviderError, match=field):
        PROVIDER.connection(raw)


def test_catalog_scopes_translate_to_zones():
    assert PROVIDER.zone_for_scope("in-region", "DE") == "EU"
    assert PROVIDER.zone_for_scope("cross-geo", None) == "GLOBAL"
    # a workspace's serving processes in its Geo (tests/unit/test_databricks_geo.py), not its region's country
    assert (EU.zone, EU.country, JP.zone, CROSS.zone, CROSS.country) == ("EU+UK+CH", None, "HK+JP+KR+SG", "GLOBAL",
                                                                        None)
    with pytest.raises(ValueError, match="valid: cross-geo, in-geo, in-region"):
        PROVIDER.zone_for_scope("geo-only", "DE")


@pytest.mark.parametrize("target, declared, csp, zone, value", [
    (EU, "disabled", False, "EU+UK+CH", "disabled (declared in org.yaml)"),
    (EU, "enabled", False, "GLOBAL", "enabled (declared in org.yaml)"),
    (EU, None, False, "GLOBAL", "unverified"),
    (JP, None, False, "GLOBAL", "enabled (Databricks' default"),
    (JP, None, True, "GLOBAL", "unverified"),
    (JP, "disabled", True, "HK+JP+KR+SG", "disabled"),
    (CROSS, "disabled", False, "GLOBAL", "disabled"),
])
def test_live_settings_cross_geo(workspace, target, declared, csp, zone, value):
    workspace.compliance_profile = csp
    conn = PROVIDER.connection({"host": workspace.host, **({"cross_geo": declared} if declared else {})})
    [setting] = PROVIDER.live_settings(target, conn)
    assert (setting.target, setting.zone) == (target.id, zone)
    assert setting.value.startswith(value)
    assert f"compliance security profile {'on' if csp else 'off'}" in setting.value
    assert "Enforce data processing within workspace Geography for Designated Services" in setting.fix
    assert workspace.received == []


def test_live_settings_failures_say_what_to_do(workspace, sdk_env):
    workspace.fault = "unauthorized"  # a 403 on the profile: unreadable, so nothing is proven -> GLOBAL
    [setting] = PROVIDER.live_settings(EU, PROVIDER.connection({}))
    assert setting.zone == "GLOBAL" and "unreadable" in setting.value
    sdk_env.delenv("DATABRICKS_TOKEN")
    with pytest.raises(ProviderError, match="DATABRICKS_TOKEN"):
        PROVIDER.live_settings(EU, PROVIDER.connection({}))
    sdk_env.delenv("DATABRICKS_HOST")
    with pytest.raises(ProviderError, match="connection: {host"):
        PROVIDER.live_settings(EU, PROVIDER.connection({}))


# -- the token stays secret ---------------------------------------------------------------------------------------


def test_the_token_is_in_no_log_line_and_no_backend_record(workspace, caplog):
    caplog.set_level(logging.DEBUG)
    b = backend()
    assert workspace.token not in str(b.to_wire())

    async def everything(c):
        await c.chat(b, CHAT)
        await collect(c, b, CHAT)
        await c.health(b)
        await c.describe(b)
        workspace.fault = "unauthorized"
        with pytest.raises(Refused) as err:
            await c.chat(b, CHAT)
        workspace.fault = None
        return str(err.value)

    refused = run(everything)
    PROVIDER.live_settings(EU, PROVIDER.connection({}))
    assert workspace.token not in refused
    assert caplog.records, "the SDK logged nothing at DEBUG: the check would prove nothing"
    assert all(workspace.token not in r.getMessage() for r in caplog.records)
    assert workspace.token not in caplog.text


def test_client_comes_from_the_registry_with_its_sdk():
    client = PROVIDER.client()
    assert isinstance(client, DatabricksClient)
    asyncio.run(client.aclose())


def test_sdk_direct_mode_calls_a_databricks_backend_itself_with_the_apps_own_credentials(workspace):
    """Direct mode: the app fetches its table from the router, then calls Databricks with its own credentials
    (here DATABRICKS_HOST/TOKEN of the test process) — the router never sees the payload."""
    import hashlib

    from sovra.orchestrator import sdk
    from sovra.orchestrator.router.app import RouterState, create_app
    from sovra.core.backends import RoutingTable
    from sovra.orchestrator.router.dispatch import Dispatcher
    from sovra.orchestrator.router.tenants import TenantDirectory
    from sovra.core.spec.org import Tenant
    from tests.fakes.openai_backend import ServerThread

    key = "sk-direct-eu"
    tenant = Tenant(name="eu", key_sha256=hashlib.sha256(key.encode()).hexdigest(),
                    residency=Residency(zones=("EU", "UK", "CH")))  # the workspace's Geo: Europe
    state = RouterState(Dispatcher(RoutingTable.of([backend()])), TenantDirectory.of([tenant]), {}, direct_view=direct_view)
    with ServerThread(create_app(state)) as router:
        async def scenario():
            async with sdk.AsyncClient(router.url, api_key=key, mode="direct", direct_hosts=["127.0.0.1"]) as c:
                answer = await c.chat("d", [{"role": "user", "content": "direct hello"}])
                return answer, c.unreachable

        answer, unreachable = asyncio.run(scenario())
    assert answer.target == EU.id and "direct hello" in answer.text and unreachable == ()
    assert len(workspace.invocations("databricks-meta-llama-3-3-70b-instruct")) == 1
