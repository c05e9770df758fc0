"""Snowflake Cortex as a router backend, against the emulated account (fakesnow's server + Cortex functions + the
Cortex REST API) on 127.0.0.1: the adapter and the connector run unpatched."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sovra.orchestrator.catalog import load_catalog, shipped_catalog_files
from sovra.core.errors import ProviderError
from sovra.core.backends import Backend
from sovra.core.api_errors import BadRequest, Failed, NotDelivered, Refused, TimedOut, Untranslatable
from sovra.core.spec.common import Residency
from sovra.core.spec.zones import GLOBAL
from sovra.policies.residency import location_allowed
from sovra.providers import base
from sovra.providers.snowflake.provider import CROSS_REGION_ZONES, zone_for_cross_region
from sovra.providers.snowflake.client import CortexClient
from tests.emulators.snowflake import SnowflakeEmulator, closed_port

pytestmark = pytest.mark.integration

PROVIDER = base.get("snowflake-cortex")
ASK = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "where is my data"}]}


def _targets() -> dict:
    path = next(p for p in shipped_catalog_files() if p.name == "snowflake_cortex.yaml")
    return {t.id: t for t in load_catalog(path).targets}


TARGETS = _targets()
IN_REGION_EU = TARGETS["snowflake-cortex/aws-eu-central-1"]
CROSS_EU = TARGETS["snowflake-cortex/aws-eu-central-1-cross-eu"]


@pytest.fixture
def emu(tmp_path, monkeypatch):
    """An emulated account; the router's password comes from the environment, and no real ~/.snowflake is read."""
    monkeypatch.setenv("SNOWFLAKE_HOME", str(tmp_path))
    for name in ("PASSWORD", "PRIVATE_KEY_FILE", "PRIVATE_KEY_FILE_PWD", "AUTHENTICATOR", "TOKEN", "USER"):
        monkeypatch.delenv(f"SNOWFLAKE_{name}", raising=False)
    with SnowflakeEmulator() as account:
        monkeypatch.setenv("SNOWFLAKE_PASSWORD", account.password)
        yield account


def backend(connection: dict, model: str = "mistral-large-2", target=IN_REGION_EU) -> Backend:
    """The Backend record `up` would write for `model` at `target`, through the adapter's own `locate`."""
    where = PROVIDER.locate(target, model, PROVIDER.connection(connection))
    return Backend(id=f"d@{target.id}", deployment="d", model=model, target=target.id,
                   place={"zone": target.zone, "country": target.country, "jurisdiction": "US"},
                   residency=Residency(zones=("EU",)), kind=PROVIDER.name, address=where.address,
                   params=dict(where.params), tier=1)


def run(coro_fn):
    """Run one scenario with a fresh client (one router replica), closing it after."""

    async def main():
        client = CortexClient()
        try:
            return await coro_fn(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


# -- invoke ----------------------------------------------------------------------------------------------------


def rest_bodies(emu) -> list[dict]:
    return [body for path, body in emu.seen if path == "rest"]


def test_chat_goes_over_the_rest_api_and_answers_openai_with_usage(emu):
    b = backend(emu.connection())
    answer = run(lambda c: c.chat(b, {**ASK, "temperature": 0.2, "max_tokens": 50}))
    assert answer["object"] == "chat.completion" and answer["model"] == "mistral-large-2"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "echo: where is my data"}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11}
    # the vendor's model name (catalog `id`); the deprecated SQL COMPLETE is never used
    assert b.address == "mistral-large2"
    [body] = rest_bodies(emu)
    assert body == {"model": "mistral-large2", "stream": True, "temperature": 0.2, "max_tokens": 50,
                    "messages": [{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": "where is my data"}]}
    assert not any("COMPLETE" in s for s in emu.statements())


def test_max_tokens_caps_the_answer_and_says_length(emu):
    answer = run(lambda c: c.chat(backend(emu.connection()), {**ASK, "max_tokens": 2}))
    assert answer["choices"][0]["message"]["content"] == "echo: where"
    assert answer["choices"][0]["finish_reason"] == "length"


def test_stream_comes_over_the_rest_api_as_server_sent_events(emu):
    b = backend(emu.connection())

    async def scenario(c):
        return [chunk async for chunk in await c.chat_stream(b, ASK)]

    chunks = run(scenario)
    assert len(chunks) == 6  # five words, then the finish with usage
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks) == "echo: where is my data"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    rest = rest_bodies(emu)
    assert rest and rest[0]["model"] == "mistral-large2" and rest[0]["stream"] is True
    assert rest[0]["messages"][0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize("stream", [False, True])
def test_an_account_without_the_rest_api_is_refused_not_served_by_sql_complete(emu, stream):
    emu.rest_api = False
    exc = verdict_of(backend(emu.connection()), stream=stream)
    assert isinstance(exc, Refused) and exc.status == 404 and exc.down and "Cortex REST API" in str(exc)
    assert not any("COMPLETE" in s for s in emu.statements())


@pytest.mark.parametrize("form", ["data", "event"])
@pytest.mark.parametrize("stream", [False, True])
def test_an_error_inside_the_stream_fails_the_answer_never_a_truncated_stop(emu, form, stream):
    emu.stream_error = form
    b = backend(emu.connection())
    got: list = []

    async def scenario(c):
        if not stream:
            return await c.chat(b, ASK)
        async for chunk in await c.chat_stream(b, ASK):
            got.append(chunk)
        return got

    with pytest.raises(Failed, match="error mid-stream"):
        run(scenario)
    assert all(ch["choices"][0]["finish_reason"] is None for ch in got)  # no "stop" was ever sent
    if stream:
        assert got and got[0]["choices"][0]["delta"]["content"] == "echo:"


def test_consecutive_turns_of_one_role_are_merged_as_cortex_requires(emu):
    body = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
                         {"role": "user", "content": "second"}, {"role": "assistant", "content": "a"},
                         {"role": "assistant", "content": "b"}, {"role": "developer", "content": "and terse"},
                         {"role": "user", "content": "third"}]}
    answer = run(lambda c: c.chat(backend(emu.connection()), body))
    assert answer["choices"][0]["message"]["content"] == "echo: third"
    [sent] = rest_bodies(emu)
    assert sent["messages"] == [{"role": "system", "content": "be brief\n\nand terse"},
                                {"role": "user", "content": "first\n\nsecond"},
                                {"role": "assistant", "content": "a\n\nb"}, {"role": "user", "content": "third"}]


# -- tools, structured output, and what Cortex cannot carry ------------------------------------------------------

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather at a place",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}
ASK_TOOL = {"messages": [{"role": "user", "content": "Paris"}], "tools": [WEATHER], "tool_choice": "required"}


def test_tools_are_cortex_tool_specs_and_the_answer_is_openai_tool_calls(emu):
    b = backend(emu.connection(), model="claude-3-5-sonnet")
    answer = run(lambda c: c.chat(b, ASK_TOOL))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [{"id": "tooluse_emulated_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"location": "Paris"}'}}]
    [sent] = rest_bodies(emu)
    assert sent["tools"] == [{"tool_spec": {"type": "generic", "name": "get_weather",
                                            "description": "The weather at a place",
                                            "input_schema": WEATHER["function"]["parameters"]}}]
    assert sent["tool_choice"] == {"type": "required"}


def test_tool_results_go_back_as_cortex_tool_results(emu):
    b = backend(emu.connection(), model="claude-3-5-sonnet")
    call = {"id": "tooluse_emulated_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}}
    body = {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Paris"}, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "tooluse_emulated_1", "content": "sunny"}]}
    answer = run(lambda c: c.chat(b, body))
    assert answer["choices"][0]["message"]["content"] == "echo: get_weather said sunny"
    [sent] = rest_bodies(emu)
    assert sent["tool_choice"] == {"type": "auto"}
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": "", "content_list": [{"type": "tool_use", "tool_use": {
            "tool_use_id": "tooluse_emulated_1", "name": "get_weather", "input": {"location": "Paris"}}}]},
        {"role": "user", "content": "", "content_list": [{"type": "tool_results", "tool_results": {
            "tool_use_id": "tooluse_emulated_1", "name": "get_weather", "content": [{"type": "text", "text": "sunny"}]}}]}]


def test_a_streamed_tool_call_comes_as_openai_deltas(emu):
    b = backend(emu.connection(), model="claude-3-5-sonnet")
    body = {**ASK_TOOL, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "stream": True,
            "stream_options": {"include_usage": True}}

    async def scenario(c):
        return [chunk async for chunk in await c.chat_stream(b, body)]

    chunks = run(scenario)
    deltas = [d for ch in chunks for d in ch["choices"][0]["delta"].get("tool_calls", ())]
    assert deltas[0] == {"index": 0, "id": "tooluse_emulated_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}
    assert "".join(d["function"].get("arguments", "") for d in deltas) == '{"location": "Paris"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and chunks[-1]["usage"]["total_tokens"]
    assert rest_bodies(emu)[0]["tool_choice"] == {"type": "tool", "name": ["get_weather"]}


def test_a_model_without_tool_use_is_cortex_own_400(emu):
    exc = verdict_of_body(backend(emu.connection()), ASK_TOOL)
    assert isinstance(exc, BadRequest) and "does not support tool use" in str(exc)


@pytest.mark.parametrize(("fmt", "schema"), [
    ({"type": "json_schema", "json_schema": {"name": "where", "schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
     {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    ({"type": "json_object"}, {"type": "object"}),
])
def test_response_format_is_cortex_structured_output(emu, fmt, schema):
    answer = run(lambda c: c.chat(backend(emu.connection()), {**ASK, "response_format": fmt}))
    assert isinstance(json.loads(answer["choices"][0]["message"]["content"]), dict)
    assert rest_bodies(emu)[0]["response_format"] == {"type": "json", "schema": schema}


@pytest.mark.parametrize(("extra", "says"), [
    ({"seed": 7}, "`seed`"), ({"stop": ["\n"]}, "`stop`"), ({"logprobs": True}, "`logprobs`"),
    ({"n": 2}, "`n`"), ({"presence_penalty": 0.5}, "`presence_penalty`"),
    ({"temperature": 1.5}, r"`temperature` 1.5 is outside .*range \[0, 1\]"),
    ({"top_p": 1.2}, "`top_p`"),
    ({"tools": [WEATHER], "parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"response_format": {"type": "grammar"}}, "response_format"),
])
def test_what_cortex_cannot_carry_is_a_400_naming_it_and_nothing_is_sent(emu, extra, says):
    exc = verdict_of_body(backend(emu.connection(), model="claude-3-5-sonnet"), {**ASK, **extra})
    assert isinstance(exc, Untranslatable) and exc.status == 400
    assert "Snowflake Cortex" in str(exc) and re.search(says, str(exc))
    assert not rest_bodies(emu)


def test_temperature_at_cortex_bounds_is_sent(emu):
    run(lambda c: c.chat(backend(emu.connection()), {**ASK, "temperature": 1, "top_p": 0}))
    assert rest_bodies(emu)[0]["temperature"] == 1.0 and rest_bodies(emu)[0]["top_p"] == 0.0


def test_embeddings_keep_input_order_and_pick_the_dimension(emu):
    async def scenario(c):
        m = await c.embed(backend(emu.connection(), "snowflake-arctic-embed-m-v1.5"), {"input": ["abc", "de", "f"]})
        l_ = await c.embed(backend(emu.connection(), "snowflake-arctic-embed-l-v2.0"), {"input": "xyz"})
        return m, l_

    m, l_ = run(scenario)
    assert [d["embedding"][0] for d in m["data"]] == [3.0, 2.0, 1.0]  # the emulator puts the length first
    assert {len(d["embedding"]) for d in m["data"]} == {768} and len(l_["data"][0]["embedding"]) == 1024


def test_health_and_describe(emu):
    emu.cross_region = "AWS_EU"
    b = backend(emu.connection())
    ok, state = run(lambda c: asyncio.gather(c.health(b), c.describe(b)))
    assert ok is True
    assert state == {"account": "sovratest", "model": "mistral-large2", "region": "AWS_EU_CENTRAL_1",
                     "cortex_enabled_cross_region": "AWS_EU"}
    assert not any("COMPLETE" in s for s in emu.statements())  # payload-free
    with closed_port() as url:
        assert run(lambda c: c.health(backend({**emu.connection(), "host": url}))) is False


def test_one_pooled_session_per_account_settings(emu):
    b = backend(emu.connection())

    async def scenario(c):
        await asyncio.gather(*(c.chat(b, ASK) for _ in range(4)), c.health(b))

    run(scenario)
    assert [p for p, _ in emu.seen].count("login") == 1


def test_a_named_connection_from_connections_toml(emu, tmp_path, monkeypatch):
    monkeypatch.delenv("SNOWFLAKE_PASSWORD")
    toml = tmp_path / "connections.toml"
    toml.write_text(f'[router]\npassword = "{emu.password}"\n')
    toml.chmod(0o600)
    b = backend(emu.connection(connection_name="router"))
    assert run(lambda c: c.chat(b, ASK))["choices"][0]["message"]["content"].startswith("echo:")


# -- faults -> verdicts ----------------------------------------------------------------------------------------


def verdict_of(b: Backend, *, stream: bool = False) -> Exception:
    return verdict_of_body(b, ASK, stream=stream)


def verdict_of_body(b: Backend, body: dict, *, stream: bool = False) -> Exception:
    async def scenario(c):
        if stream:
            return [chunk async for chunk in await c.chat_stream(b, body)]
        return await c.chat(b, body)

    with pytest.raises(Exception) as caught:
        run(scenario)
    return caught.value


@pytest.mark.parametrize("stream", [False, True])
def test_wrong_credentials_are_refused_401_and_down(emu, monkeypatch, stream):
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "not-the-password")
    exc = verdict_of(backend(emu.connection()), stream=stream)
    assert isinstance(exc, Refused) and exc.status == 401 and exc.down
    emu.refuse_logins = True
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", emu.password)
    exc = verdict_of(backend(emu.connection()), stream=stream)
    assert isinstance(exc, Refused) and exc.status == 401


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_refused_404_and_down(emu, stream):
    exc = verdict_of(backend(emu.connection(), model="no-such-model"), stream=stream)
    assert isinstance(exc, Refused) and exc.status == 404 and exc.down


@pytest.mark.parametrize("stream", [False, True])
def test_throttling_is_a_throttled_refusal(emu, stream):
    emu.throttle = True
    exc = verdict_of(backend(emu.connection()), stream=stream)
    assert isinstance(exc, Refused) and exc.throttled and exc.status == 429 and not exc.down
    if stream:  # the REST API's Retry-After is kept
        assert exc.retry_after_s == emu.retry_after_s


@pytest.mark.parametrize("stream", [False, True])
def test_slow_answer_after_send_is_timed_out(emu, stream):
    emu.slow_s = 2.5
    exc = verdict_of(backend(emu.connection(timeout_s=1)), stream=stream)
    assert isinstance(exc, TimedOut) and not exc.resend


def test_closed_port_is_not_delivered():
    with closed_port() as url:
        exc = verdict_of(backend({"account": "sovratest", "host": url, "user": "u"}))
    assert isinstance(exc, NotDelivered) and exc.resend


def test_invalid_arguments_are_bad_requests(emu):
    b = backend(emu.connection())
    for body in ({**ASK, "temperature": "hot"}, {"messages": [{"role": "tool", "content": "x"}]},
                 {"messages": [{"role": "assistant", "content": "x"}]}):
        with pytest.raises(BadRequest):
            run(lambda c, body=body: c.chat(b, body))
    assert not rest_bodies(emu)  # refused before anything was sent


def test_credentials_never_in_logs_nor_in_the_backend_record(emu, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    b = backend(emu.connection())
    run(lambda c: c.chat(b, ASK))
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "wrong-" + emu.password)
    exc = verdict_of(backend(emu.connection(role="OTHER")))
    text = caplog.text + json.dumps(b.to_wire()) + str(exc)
    assert emu.password not in text
    assert "password" not in json.dumps(b.to_wire()).lower()


# -- locate and live settings ----------------------------------------------------------------------------------


def test_locate_names_the_cortex_model_and_the_account():
    where = PROVIDER.locate(CROSS_EU, "llama-3.1-8b", PROVIDER.connection(
        {"account": "myorg-acct", "role": "CORTEX", "warehouse": "WH"}))
    assert where.address == "llama3.1-8b"
    assert where.params == {"account": "myorg-acct", "role": "CORTEX", "warehouse": "WH", "timeout_s": "110.0"}
    assert PROVIDER.locate(CROSS_EU, "mixtral-8x7b", PROVIDER.connection({"account": "a"})).address == "mixtral-8x7b"


def test_locate_without_an_account_says_what_to_add():
    with pytest.raises(ProviderError, match=r"accounts: \[\{provider: snowflake-cortex, connection: \{account:"):
        PROVIDER.locate(IN_REGION_EU, "mistral-large-2", PROVIDER.connection({}))


def test_org_connection_rejects_secrets():
    with pytest.raises(ProviderError, match="valid fields"):
        PROVIDER.connection({"account": "a", "password": "x"})


@pytest.mark.parametrize(("target", "value", "zone"), [
    (IN_REGION_EU, "DISABLED", "EU"),
    (CROSS_EU, "AWS_EU", "EU"),
    (IN_REGION_EU, "ANY_REGION", GLOBAL),
    (IN_REGION_EU, "AWS_US", "EU+US"),  # EU home region plus US regions: a span, allowed only where both are
    (IN_REGION_EU, "AWS_GLOBAL", GLOBAL),  # one cloud, any region of it
    (IN_REGION_EU, "AWS_EU,AZURE_EU", "EU"),
])
def test_live_settings_read_the_account(emu, target, value, zone):
    emu.cross_region = value
    [live] = PROVIDER.live_settings(target, PROVIDER.connection(emu.connection()))
    assert (live.target, live.setting, live.value, live.zone) == (target.id, "CORTEX_ENABLED_CROSS_REGION", value, zone)
    wanted = (target.scope or "disabled").upper()
    assert f"ALTER ACCOUNT SET CORTEX_ENABLED_CROSS_REGION = '{wanted}'" in live.fix and "explicitly" in live.fix


def test_an_any_region_account_is_refused_for_eu_data(emu):
    emu.cross_region = "ANY_REGION"
    [live] = PROVIDER.live_settings(IN_REGION_EU, PROVIDER.connection(emu.connection()))
    assert live.zone == GLOBAL
    assert location_allowed(Residency(zones=("EU",)), IN_REGION_EU.zone, IN_REGION_EU.country)  # the catalog says EU
    assert not location_allowed(Residency(zones=("EU",)), live.zone, None)  # the account says anywhere


def test_an_unset_parameter_is_flagged_for_pinning(emu):
    emu.cross_region_level = ""
    [live] = PROVIDER.live_settings(IN_REGION_EU, PROVIDER.connection(emu.connection()))
    assert live.zone == "EU" and "not set on the account" in live.fix


def test_live_settings_without_credentials_say_so(emu, monkeypatch):
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "wrong")
    with pytest.raises(ProviderError, match="cannot read CORTEX_ENABLED_CROSS_REGION") as caught:
        PROVIDER.live_settings(IN_REGION_EU, PROVIDER.connection(emu.connection()))
    assert "wrong" not in str(caught.value)


# -- zone translation ------------------------------------------------------------------------------------------

LABELS = st.sampled_from(sorted(CROSS_REGION_ZONES) + ["SOME_FUTURE_REGION"])
HOMES = st.sampled_from(["EU", "US", "APAC", "UK", "CH", "CA", None])


def places(zone: str) -> set[str]:
    return set(zone.split("+"))


@given(st.lists(LABELS, min_size=1, max_size=4), HOMES, st.booleans())
def test_zone_is_every_place_the_labels_and_the_home_region_may_use(labels, home, lower):
    value = ", ".join(label.lower() if lower else label for label in labels)
    zone = zone_for_cross_region(value, home)
    covered = {home} | {CROSS_REGION_ZONES.get(label, GLOBAL) for label in labels}
    covered.discard(None)
    if GLOBAL in covered or not covered:
        assert zone == GLOBAL  # anywhere, an unknown label, or nothing known: fail closed
    else:
        assert places(zone) == covered and zone == "+".join(sorted(covered))


@given(st.lists(LABELS, min_size=1, max_size=3), st.lists(LABELS, min_size=1, max_size=3),
       st.sampled_from(["EU", "US", "APAC", "UK"]))
def test_more_labels_never_narrow_the_zone(a, b, home):  # for a known home region (live settings always know it)
    narrow, wide = zone_for_cross_region(",".join(a), home), zone_for_cross_region(",".join(a + b), home)
    assert wide == GLOBAL or places(narrow) <= places(wide)


@given(st.permutations(["AWS_EU", "AZURE_EU", "DISABLED"]))
def test_order_does_not_matter(labels):
    assert zone_for_cross_region(",".join(labels), "EU") == "EU"
    assert PROVIDER.zone_for_scope(",".join(labels).lower(), "DE") == "EU"


@pytest.mark.parametrize(("value", "country", "zone"), [
    # AWS_EU is Snowflake's default for London and Zurich accounts (BCR 2026_06): their own region is not in the EU
    ("AWS_EU", "GB", "EU+UK"),
    ("AWS_EU", "CH", "CH+EU"),
    ("AWS_EU", "DE", "EU"),
    ("AWS_US", "CA", "CA+US"),  # ca-central-1's default
    ("AWS_US,AWS_EU", "GB", "EU+UK+US"),
    ("AWS_GLOBAL", "DE", GLOBAL), ("AZURE_GLOBAL", "NL", GLOBAL), ("GCP_GLOBAL", "US", GLOBAL),
    ("AWS_EU,GCP_GLOBAL", "DE", GLOBAL),
])
def test_a_geography_is_held_to_every_place_it_may_use(value, country, zone):
    assert PROVIDER.zone_for_scope(value.lower(), country) == zone


def test_a_london_account_on_aws_eu_is_not_eu_only():
    zone = PROVIDER.zone_for_scope("aws_eu", "GB")
    assert not location_allowed(Residency(zones=("EU",)), zone, None)  # the UK is a processing place too
    assert location_allowed(Residency(zones=("EU", "UK")), zone, None)
    assert not location_allowed(Residency(countries=("GB",)), zone, None)


def test_london_live_setting_reads_as_eu_and_uk(emu):
    london = IN_REGION_EU.model_copy(update={"id": "snowflake-cortex/aws-eu-west-2", "region": "eu-west-2",
                                             "country": "GB", "zone": "UK"})
    emu.cross_region, emu.cross_region_level = "AWS_EU", ""  # left at the default Snowflake sets for London
    [live] = PROVIDER.live_settings(london, PROVIDER.connection(emu.connection()))
    assert live.zone == "EU+UK" and "not set on the account" in live.fix


def test_catalog_scopes_translate_here():
    assert PROVIDER.zone_for_scope("disabled", "JP") == "APAC"
    assert PROVIDER.zone_for_scope("aws_apj", None) == "APAC"
    assert PROVIDER.zone_for_scope("any_region", None) == GLOBAL
    assert PROVIDER.zone_for_scope("aws_global", None) == GLOBAL
    assert PROVIDER.zone_for_scope("aws_us", "DE") == "EU+US"
    with pytest.raises(ValueError, match="valid"):
        PROVIDER.zone_for_scope("aws_mars", None)


def test_no_connector_import_until_used():
    import subprocess
    import sys

    code = ("import sys, sovra.providers.base as b; b.get('snowflake-cortex').describe(); "
            "assert 'snowflake.connector' not in sys.modules, 'connector imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())
