"""Snowflake Cortex as a router backend, against the emulated account (fakesnow's server + Cortex functions + the
Cortex REST API) on 127.0.0.1: the adapter and the connector run unpatched."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.catalog import load_catalog, shipped_catalog_files
from orchestrator.errors import ProviderError
from orchestrator.router.backends import Backend
from orchestrator.router.errors import BadRequest, NotDelivered, Refused, TimedOut
from orchestrator.spec.common import Residency
from orchestrator.spec.zones import GLOBAL
from policies.residency import location_allowed
from providers import base
from providers.snowflake import CROSS_REGION_ZONES, zone_for_cross_region
from providers.snowflake_client import CortexClient
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


def test_chat_binds_the_payload_and_answers_openai_with_usage(emu):
    b = backend(emu.connection())
    answer = run(lambda c: c.chat(b, {**ASK, "temperature": 0.2, "max_tokens": 50}))
    assert answer["object"] == "chat.completion" and answer["model"] == "mistral-large-2"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "echo: where is my data"}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11}
    # the vendor's model name (catalog `id`), and the payload only in bind parameters, never in the SQL text
    assert b.address == "mistral-large2"
    sql = [s for s in emu.statements() if "COMPLETE" in s]
    assert sql == ["SELECT SNOWFLAKE.CORTEX.COMPLETE(?, PARSE_JSON(?), PARSE_JSON(?))"]


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
    rest = [body for path, body in emu.seen if path == "rest"]
    assert rest and rest[0]["model"] == "mistral-large2" and rest[0]["stream"] is True
    assert rest[0]["messages"][0] == {"role": "system", "content": "be brief"}


def test_stream_without_the_rest_api_is_one_faithful_chunk(emu):
    emu.rest_api = False
    b = backend(emu.connection())

    async def scenario(c):
        return [chunk async for chunk in await c.chat_stream(b, ASK)]

    chunks = run(scenario)
    assert [ch["choices"][0]["delta"].get("content") for ch in chunks] == ["echo: where is my data", None]
    assert chunks[-1]["usage"]["total_tokens"] == 11


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
    async def scenario(c):
        if stream:
            return [chunk async for chunk in await c.chat_stream(b, ASK)]
        return await c.chat(b, ASK)

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
    assert not any("COMPLETE" in s for s in emu.statements())  # refused before anything was sent


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
    (IN_REGION_EU, "AWS_US", GLOBAL),  # EU home region plus US: spans zones
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
HOMES = st.sampled_from(["EU", "US", "APAC", None])


@given(st.lists(LABELS, min_size=1, max_size=4), HOMES, st.booleans())
def test_zone_is_the_narrowest_that_covers_every_label_and_home(labels, home, lower):
    value = ", ".join(label.lower() if lower else label for label in labels)
    zone = zone_for_cross_region(value, home)
    covered = {home} | {CROSS_REGION_ZONES.get(label, GLOBAL) for label in labels}
    covered.discard(None)
    if len(covered) == 1:
        assert zone == covered.pop()
    else:
        assert zone == GLOBAL  # spanning zones, ANY_REGION, or an unknown label: fail closed


@given(st.lists(LABELS, min_size=1, max_size=3), st.lists(LABELS, min_size=1, max_size=3),
       st.sampled_from(["EU", "US", "APAC"]))
def test_more_labels_never_narrow_the_zone(a, b, home):  # for a known home region (live settings always know it)
    narrow, wide = zone_for_cross_region(",".join(a), home), zone_for_cross_region(",".join(a + b), home)
    assert wide == narrow or wide == GLOBAL


@given(st.permutations(["AWS_EU", "AZURE_EU", "DISABLED"]))
def test_order_does_not_matter(labels):
    assert zone_for_cross_region(",".join(labels), "EU") == "EU"
    assert PROVIDER.zone_for_scope(",".join(labels).lower(), "DE") == "EU"


def test_catalog_scopes_translate_here():
    assert PROVIDER.zone_for_scope("disabled", "JP") == "APAC"
    assert PROVIDER.zone_for_scope("aws_apj", None) == "APAC"
    assert PROVIDER.zone_for_scope("any_region", None) == GLOBAL
    assert PROVIDER.zone_for_scope("aws_us", "DE") == GLOBAL
    with pytest.raises(ValueError, match="valid"):
        PROVIDER.zone_for_scope("aws_mars", None)


def test_no_connector_import_until_used():
    import subprocess
    import sys

    code = ("import sys, providers.base as b; b.get('snowflake-cortex').describe(); "
            "assert 'snowflake.connector' not in sys.modules, 'connector imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())
