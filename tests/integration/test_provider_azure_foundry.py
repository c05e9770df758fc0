"""The azure-foundry adapter against a local Azure over TLS (tests/emulators/azure.py): DefaultAzureCredential,
azure-core's ARM pipeline and the router's HTTP client run unpatched, pointed at the emulator as at a private cloud
(`arm_endpoint`, AZURE_AUTHORITY_HOST, a trusted CA). Deployment types become zones here; a provisioned (PTU)
deployment is the company's own rung; no key or token reaches a log line or the routing table."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sovra import providers
from sovra.orchestrator.routing_table import routed_entry
from sovra.orchestrator import live_settings as ls
from sovra.orchestrator.catalog import load_catalog
from sovra.core.errors import ProviderError
from sovra.core.backends import Backend
from sovra.core.api_errors import NotDelivered, Refused
from sovra.core.spec import Residency
from sovra.core.spec.org import Org
from sovra.core.spec.zones import COUNTRY_ZONE, GLOBAL
from sovra.core.place import Place
from sovra.providers.azure.foundry import DATA_ZONE_TYPES, GLOBAL_TYPES, NO_PROMISE_TYPES, REGIONAL_TYPES
from sovra.providers.azure.foundry_client import AzureFoundryClient
from sovra.providers.azure.regions import REGION_COUNTRY
from tests import factories
from tests.emulators.azure import AzureEmulator, Fault

pytestmark = pytest.mark.integration
CHAT = {"model": "support", "messages": [{"role": "user", "content": "bonjour"}]}
ADAPTER = providers.get("azure-foundry")
CATALOG = Path(providers.__file__).parent / "azure" / "catalogs"


@pytest.fixture(scope="module")
def az():
    with AzureEmulator() as emu, pytest.MonkeyPatch.context() as mp:
        for k, v in emu.env().items():
            mp.setenv(k, v)
        emu.add_foundry("ai-se", "mistral-dz", sku="DataZoneStandard", capacity=50)
        emu.add_foundry("ai-se", "mistral-global", sku="GlobalStandard")
        emu.add_foundry("ai-se", "mistral-ptu", sku="ProvisionedManaged", capacity=100)
        emu.add_foundry("ai-se", "mistral-dev", sku="DeveloperTier")
        emu.add_foundry("ai-se", "mistral-odd", sku="SomeFutureSku")
        emu.add_foundry("ai-se", "mistral-new", provisioning_state="Creating")
        emu.add_foundry("ai-fr", "mistral-fr", location="francecentral", sku="Standard")
        emu.add_foundry("ai-us", "mistral-us", location="eastus2", sku="DataZoneStandard")
        emu.add_foundry("ai-entra", "mistral-entra")
        emu.accounts["ai-entra"].disable_local_auth = True  # Entra ID only
        yield emu
        assert not emu.faults, f"a test left faults switched on: {emu.faults}"


def target(tid: str = "azure-foundry/datazone-eu", region: str = "swedencentral", zone: str = "EU",
           country: str | None = None):
    return factories.target(tid, cloud="azure", country=country, zone=zone, region=region,
                            provider="azure-foundry", models={"mistral-large-2": 0.0033})


def backend(az: AzureEmulator, account: str, deployment: str, t=None, **conn) -> Backend:
    """A routing-table record, as `up` writes it: through the adapter's `locate`."""
    t = t or target()
    loc = ADAPTER.locate(t, "mistral-large-2", ADAPTER.connection(az.foundry_connection(account, deployment, **conn)))
    return Backend(id=f"support@{t.id}", deployment="support", model="mistral-large-2", target=t.id,
                   place=Place.of(t), residency=Residency(), kind="azure-foundry", address=loc.address,
                   params=dict(loc.params), tier=1)


def run(scenario, **client_kw):
    async def main():
        client = AzureFoundryClient(**client_kw)
        try:
            return await scenario(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


async def drain(stream):
    return [c async for c in stream]


def text(chunks) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


def scored(az, since):
    return [s for s in az.seen[since:] if s.surface == "scoring"]


# -- invoke ------------------------------------------------------------------------------------------------------


def test_chat_stream_and_embeddings_go_to_the_model_inference_endpoint_with_the_resource_key(az):
    b = backend(az, "ai-se", "mistral-dz")
    before = len(az.seen)

    async def scenario(c):
        return (await c.chat(b, CHAT), await drain(await c.chat_stream(b, CHAT)),
                await c.embed(b, {"model": "support", "input": ["abc", "de"]}))

    answer, chunks, emb = run(scenario)
    assert answer["choices"][0]["message"]["content"] == "mistral-dz says: bonjour"
    assert text(chunks) == "mistral-dz says: bonjour" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert [d["embedding"][0] for d in emb["data"]] == [3.0, 2.0]
    calls = scored(az, before)
    assert [s.path for s in calls] == ["/foundry/ai-se/models/chat/completions"] * 2 + ["/foundry/ai-se/models/embeddings"]
    assert {s.body["model"] for s in calls} == {"mistral-dz"}  # the deployment's name routes the request
    assert sum(1 for s in az.seen[before:] if s.surface == "keys") == 1


def test_a_tool_call_round_trip_and_openai_fields_pass_through(az):
    b = backend(az, "ai-se", "mistral-dz")
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    ask = {**CHAT, "tools": tools, "tool_choice": "auto", "seed": 7, "stop": ["\n\n"],
           "response_format": {"type": "text"}}
    before = len(az.seen)

    async def scenario(c):
        first = await c.chat(b, ask)
        call = first["choices"][0]["message"]["tool_calls"][0]
        follow = {**ask, "messages": [*CHAT["messages"], first["choices"][0]["message"],
                                      {"role": "tool", "tool_call_id": call["id"], "content": "42"}]}
        streamed = await drain(await c.chat_stream(b, {**ask, "stream_options": {"include_usage": True}}))
        return first, await c.chat(b, follow), streamed

    first, second, streamed = run(scenario)
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert first["choices"][0]["message"]["tool_calls"][0]["function"] == {"name": "lookup",
                                                                          "arguments": '{"q": "bonjour"}'}
    assert second["choices"][0]["message"]["content"] == "mistral-dz read the tool: 42"
    assert streamed[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "lookup"
    sent = scored(az, before)[0].body
    assert {k: sent[k] for k in ("tools", "tool_choice", "seed", "stop", "response_format")} == {
        k: ask[k] for k in ("tools", "tool_choice", "seed", "stop", "response_format")}
    assert scored(az, before)[1].body["stream_options"] == {"include_usage": True}


def test_entra_auth_sends_a_bearer_token_and_never_lists_keys(az):
    b = backend(az, "ai-entra", "mistral-entra", auth="entra")
    before = len(az.seen)
    answer = run(lambda c: c.chat(b, CHAT))
    assert answer["choices"][0]["message"]["content"] == "mistral-entra says: bonjour"
    assert not [s for s in az.seen[before:] if s.surface == "keys"]


def test_key_auth_on_a_resource_without_local_auth_is_refused_with_the_fix(az):
    b = backend(az, "ai-entra", "mistral-entra")
    before = len(az.seen)
    with pytest.raises(Refused) as exc:
        run(lambda c: c.chat(b, CHAT))
    assert (exc.value.status, exc.value.down) == (401, True) and "auth: entra" in str(exc.value)
    assert not scored(az, before)


def test_a_rotated_key_is_read_again_once(az):
    b = backend(az, "ai-fr", "mistral-fr", t=target("azure-foundry/francecentral", "francecentral", "EU", "FR"))

    async def scenario(c):
        await c.chat(b, CHAT)
        az.rotate_foundry_key("ai-fr")
        keys = az.count("keys")
        answer = await c.chat(b, CHAT)
        return answer, az.count("keys") - keys

    answer, reads = run(scenario)
    assert answer["choices"][0]["message"]["content"] == "mistral-fr says: bonjour" and reads == 1


@pytest.mark.parametrize(("surface", "fault", "fields"), [
    ("scoring", Fault(status=429, retry_after_s=9), {"throttled": True, "retry_after_s": 9, "status": 429}),
    ("arm", Fault(status=429, retry_after_s=4), {"throttled": True, "retry_after_s": 4}),
    ("keys", Fault(status=403), {"status": 401, "down": True}),
])
def test_throttling_and_refusals_keep_their_retry_after(az, surface, fault, fields):
    b = backend(az, "ai-se", "mistral-dz")
    with az.fault(surface, fault), pytest.raises(Refused) as exc:
        run(lambda c: c.chat(b, CHAT))
    for name, value in fields.items():
        assert getattr(exc.value, name) == value, name


def test_a_missing_or_unready_deployment_is_refused_down_without_sending(az):
    before = len(az.seen)
    with pytest.raises(Refused) as missing:
        run(lambda c: c.chat(backend(az, "ai-se", "no-such"), CHAT))
    with pytest.raises(Refused) as creating:
        run(lambda c: c.chat(backend(az, "ai-se", "mistral-new"), CHAT))
    assert (missing.value.status, missing.value.down) == (404, True) and "deployment" in str(missing.value)
    assert creating.value.down and "Creating" in str(creating.value)
    assert not scored(az, before)


def test_arm_unreachable_is_not_delivered(az):
    b = backend(az, "ai-se", "mistral-dz", arm_endpoint=f"https://127.0.0.1:{az.closed_port}")
    with pytest.raises(NotDelivered):
        run(lambda c: c.chat(b, CHAT))


def test_health_and_describe_read_arm_only(az):
    ok, new = backend(az, "ai-se", "mistral-ptu", t=_ptu_endpoint(az)), backend(az, "ai-se", "mistral-new")
    before = len(az.seen)

    async def scenario(c):
        return [await c.health(ok), await c.health(new)], await c.describe(ok)

    health, described = run(scenario)
    assert health == [True, False] and not scored(az, before)
    assert (described["status"], described["deployment_type"], described["capacity"]) == (
        "Succeeded", "ProvisionedManaged", 100)


# -- locate, PTU as own capacity ---------------------------------------------------------------------------------


def _ptu_endpoint(az, **conn):
    org = Org.model_validate({"endpoints": [{
        "id": "azure-foundry/ptu-se", "provider": "azure-foundry", "cloud": "azure", "region": "swedencentral",
        "country": "SE", "zone": "EU", "operator": {"name": "microsoft", "jurisdiction": "US"}, "capacity": 24,
        "models": [{"name": "mistral-large-2", "usd_per_1k_tokens": 0}],
        "connection": az.foundry_connection("ai-se", "mistral-ptu", deployment_type="ProvisionedManaged", **conn)}]})
    return org.endpoints[0]


def test_a_provisioned_deployment_is_the_companys_own_rung_with_its_capacity_priced_as_committed(az):
    t = _ptu_endpoint(az)
    d = factories.deployment("support", model="mistral-large-2", residency={"zones": ["EU"]}, rps=1, tokens=100)
    p = factories.solve([d], [t]).deployments[0].placements[0]
    b = routed_entry(d, p, t, dict(t.connection))
    assert (b.tier, b.capacity, b.cost, b.kind, b.address) == (0, 24, 0.0, "azure-foundry", "mistral-ptu")
    assert b.params["deployment_type"] == "ProvisionedManaged"
    answer = run(lambda c: c.chat(b, CHAT))
    assert answer["choices"][0]["message"]["content"] == "mistral-ptu says: bonjour"


def test_a_provisioned_deployment_on_a_per_token_target_says_to_declare_it_as_an_endpoint(az):
    conn = ADAPTER.connection(az.foundry_connection("ai-se", "mistral-ptu", deployment_type="ProvisionedManaged"))
    with pytest.raises(ProviderError, match="under `endpoints:`.*capacity"):
        ADAPTER.locate(target("azure-foundry/swedencentral", "swedencentral", "EU", "SE"), "m", conn)


def test_a_declared_type_wider_than_the_target_is_refused(az):
    conn = ADAPTER.connection(az.foundry_connection("ai-se", "mistral-global", deployment_type="GlobalStandard"))
    with pytest.raises(ProviderError, match="processes in GLOBAL, not in the target's EU"):
        ADAPTER.locate(target(), "m", conn)


def test_locate_carries_only_non_secret_params_and_errors_name_the_fix(az):
    b = backend(az, "ai-se", "mistral-dz", deployment_type="datazonestandard")
    assert b.address == "mistral-dz"
    assert b.params == {"subscription_id": az.subscription_id, "resource_group": az.resource_group,
                        "account": "ai-se", "region": "swedencentral", "auth": "key", "arm_endpoint": az.url,
                        "api_version": "2024-05-01-preview", "deployment_type": "DataZoneStandard"}
    with pytest.raises(ProviderError, match="existing deployment"):
        ADAPTER.locate(target(), "m", ADAPTER.connection(az.foundry_connection("ai-se", None)))
    for bad, words in (({"deployment_type": "Planetary"}, "unknown deployment_type"), ({"auth": "x"}, "auth"),
                       ({"account": "a/b"}, "account"), ({"api_key": "k"}, "valid fields")):
        with pytest.raises(ProviderError, match=words):
            ADAPTER.connection({**az.foundry_connection("ai-se", "dep"), **bad})


# -- live settings: the deployment type, read from ARM -----------------------------------------------------------


@pytest.mark.parametrize(("account", "deployment", "region", "catalog_zone", "sku", "zone"), [
    ("ai-se", "mistral-dz", "swedencentral", "EU", "DataZoneStandard", "EU"),
    ("ai-us", "mistral-us", "eastus2", "US", "DataZoneStandard", "US"),
    ("ai-fr", "mistral-fr", "francecentral", "EU", "Standard", "EU"),
    ("ai-se", "mistral-ptu", "swedencentral", "EU", "ProvisionedManaged", "EU"),
    ("ai-se", "mistral-global", "swedencentral", "EU", "GlobalStandard", GLOBAL),
    ("ai-se", "mistral-dev", "swedencentral", "EU", "DeveloperTier", GLOBAL),
    ("ai-se", "mistral-odd", "swedencentral", "EU", "SomeFutureSku", GLOBAL),
])
def test_live_settings_read_the_deployment_type(az, account, deployment, region, catalog_zone, sku, zone):
    t = target(region=region, zone=catalog_zone)
    [s] = ADAPTER.live_settings(t, ADAPTER.connection(az.foundry_connection(account, deployment)))
    assert s.setting == "deployment type" and s.value.startswith(sku) and s.zone == zone
    assert bool(s.fix) is (zone != catalog_zone)
    if s.fix:
        assert "DataZoneStandard" in s.fix and f"Sovra places it in {zone}" in s.fix
    if sku == "DeveloperTier":
        assert "no residency promise" in s.fix


def test_a_deployment_changed_to_a_wider_type_is_held_to_its_real_zone(az):
    t = target()
    org = Org.model_validate({"accounts": [{"provider": "azure-foundry", "targets": [t.id],
                                            "connection": az.foundry_connection("ai-se", "mistral-dz")}]})
    assert ls.check(org, [t]).widened == ()
    az.accounts["ai-se"].deployments["mistral-dz"].sku = "GlobalStandard"  # someone redeployed it wider
    try:
        report = ls.check(org, [t])
    finally:
        az.accounts["ai-se"].deployments["mistral-dz"].sku = "DataZoneStandard"
    [f] = report.widened
    [held] = ls.apply([t], report.findings)
    assert (f.zone, held.zone) == (GLOBAL, GLOBAL)
    d = factories.deployment("eu", residency={"zones": ["EU"]}, rps=1, tokens=100)
    assert not factories.solve([d], [held]).deployments[0].placements


def test_live_settings_of_a_missing_deployment_say_what_failed(az):
    with pytest.raises(ProviderError, match="not found"):
        ADAPTER.live_settings(target(), ADAPTER.connection(az.foundry_connection("ai-se", "no-such")))


# -- zones and the shipped catalog -------------------------------------------------------------------------------


@given(region=st.sampled_from(sorted(REGION_COUNTRY)),
       deployment_type=st.sampled_from((*GLOBAL_TYPES, *NO_PROMISE_TYPES, *DATA_ZONE_TYPES, *REGIONAL_TYPES)),
       spelling=st.sampled_from((str, str.lower, str.upper)))
def test_zone_translation_over_regions_and_deployment_types(region, deployment_type, spelling):
    home = COUNTRY_ZONE[REGION_COUNTRY[region]]
    name = spelling(deployment_type)
    if deployment_type in (*GLOBAL_TYPES, *NO_PROMISE_TYPES):
        assert ADAPTER.zone_for_deployment(name, region) == GLOBAL
    elif deployment_type in REGIONAL_TYPES or home in ("EU", "US"):
        assert ADAPTER.zone_for_deployment(name, region) == home
    else:  # Microsoft defines data zones for the EU and the US only
        with pytest.raises(ValueError, match="data zone"):
            ADAPTER.zone_for_deployment(name, region)


def test_the_catalogs_azure_targets_where_the_type_matters_are_foundry_deployments():
    foundry = {t.id: t for t in load_catalog(CATALOG / "azure_foundry.yaml").targets}
    assert {i: (t.zone, t.country) for i, t in foundry.items() if i in (
        "azure-foundry/global", "azure-foundry/datazone-eu", "azure-foundry/datazone-us",
        "azure-foundry/swedencentral")} == {
        "azure-foundry/global": (GLOBAL, None), "azure-foundry/datazone-eu": ("EU", None),
        "azure-foundry/datazone-us": ("US", None), "azure-foundry/swedencentral": ("EU", "SE")}
    serverless = load_catalog(CATALOG / "azure_serverless.yaml").targets
    assert serverless and all(t.provider == "azure-ml" and t.country for t in serverless)  # regional only


# -- secrets -----------------------------------------------------------------------------------------------------


def test_no_key_or_token_reaches_logs_records_or_errors(az, caplog):
    caplog.set_level(logging.DEBUG)
    keyed, entra = backend(az, "ai-se", "mistral-dz"), backend(az, "ai-entra", "mistral-entra", auth="entra")
    errors: list[str] = []

    async def scenario(c):
        for b in (keyed, entra):
            await c.chat(b, CHAT)
            await drain(await c.chat_stream(b, CHAT))
            errors.append(json.dumps(await c.describe(b)))
        return c

    client = run(scenario)
    with az.fault("scoring", Fault(status=401)), pytest.raises(Refused) as exc:
        run(lambda c: c.chat(keyed, CHAT))
    errors.append(str(exc.value))
    haystack = "\n".join([caplog.text, json.dumps(keyed.to_wire()), json.dumps(entra.to_wire()), *errors,
                          repr(vars(client))])
    leaked = [s[:6] + "…" for s in az.all_secrets() if s in haystack]
    assert not leaked, f"credentials found in logs or records: {leaked}"
