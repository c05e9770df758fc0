"""The azure-ml adapter against a local Azure over TLS (tests/emulators/azure.py): MLClient, DefaultAzureCredential
and the router's HTTP client all run unpatched, pointed at the emulator the way a user points them at a private
cloud (ARM_CLOUD_METADATA_URL + `cloud:`, AZURE_AUTHORITY_HOST, a trusted CA). Every fault gets its verdict; no
key, token or client secret reaches a log line or the routing table."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sovra import providers
from sovra.core.errors import ProviderError
from sovra.core.backends import Backend, RoutingTable
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.core.api_errors import Failed, NotDelivered, Refused, TimedOut, UpstreamTimeout
from sovra.orchestrator.router.gate import RequestResidency
from sovra.core.spec import Residency
from sovra.core.spec.zones import COUNTRY_ZONE, GLOBAL
from sovra.core.place import Place
from sovra.providers.azure import ml_arm as arm
from sovra.providers.azure.foundry import DATA_ZONE_TYPES, GLOBAL_TYPES
from sovra.providers.azure.ml import REGIONAL_TYPES
from sovra.providers.azure.ml_client import AzureMLClient
from sovra.providers.azure.regions import REGION_COUNTRY
from tests import factories
from tests.emulators.azure import AzureEmulator, Fault

pytestmark = pytest.mark.integration
CHAT = {"model": "support", "messages": [{"role": "user", "content": "bonjour"}]}
ADAPTER = providers.get("azure-ml")


@pytest.fixture(scope="module")
def az():
    """One emulator for the module, with the environment a user would set; the SDK's own process-wide setting
    (AZUREML_CURRENT_CLOUD, which MLClient writes) is put back afterwards."""
    with AzureEmulator() as emu, pytest.MonkeyPatch.context() as mp:
        for k, v in emu.env().items():
            mp.setenv(k, v)
        mp.delenv("AZUREML_CURRENT_CLOUD", raising=False)
        emu.add_online("chat-fr", deployments=("blue", "green"))
        emu.add_online("chat-creating", provisioning_state="Creating")
        emu.add_online("chat-updating", provisioning_state="Updating")  # e.g. a new deployment or traffic split
        emu.add_online("chat-closed", scoring_closed=True)
        emu.add_serverless("mistral-se", location="swedencentral")
        emu.add_serverless("mistral-global", location="swedencentral", sku="GlobalStandard")  # ARM never says so
        emu.add_serverless("mistral-aad", location="swedencentral", auth_mode="AAD")
        emu.add_serverless("mistral-us", location="eastus2", sku="Consumption")
        emu.add_serverless("mistral-odd", location="eastus2", sku="SomeFutureSku")
        emu.add_serverless("mistral-nostream", streams=False)
        yield emu
        assert not emu.faults, f"a test left faults switched on: {emu.faults}"


def target(region: str = "francecentral", country: str | None = "FR", zone: str | None = None):
    return factories.target(f"azure-ml/{region}", cloud="azure", country=country, zone=zone, region=region,
                            provider="azure-ml")


def backend(az: AzureEmulator, endpoint: str, kind: str = "online", region: str = "francecentral",
            **conn) -> Backend:
    """A routing-table record, as `up` writes it: through the adapter's `locate`."""
    t = target(region, REGION_COUNTRY[region])
    loc = ADAPTER.locate(t, "mistral-small-24b", ADAPTER.connection(az.connection(endpoint, kind, **conn)))
    return Backend(id=f"support@{t.id}/{endpoint}", deployment="support", model="mistral-small-24b", target=t.id,
                   place=Place.of(t), residency=Residency(), kind="azure-ml", address=loc.address,
                   params=dict(loc.params))


def run(scenario, **client_kw):
    """Run `scenario(client)` with a fresh client (its own credential and MLClients), closed afterwards."""
    async def main():
        client = AzureMLClient(**client_kw)
        try:
            return await scenario(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


async def drain(stream):
    return [c async for c in stream]


def text(chunks) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


# -- invoke ------------------------------------------------------------------------------------------------------


def test_online_endpoint_chat_stream_and_embeddings_with_the_named_deployment(az):
    b = backend(az, "chat-fr", deployment="green", served_model="mistral-small")
    before = len(az.seen)

    async def scenario(c):
        return (await c.chat(b, CHAT), await drain(await c.chat_stream(b, CHAT)),
                await c.embed(b, {"model": "support", "input": ["abc", "de"]}))

    answer, chunks, emb = run(scenario)
    assert answer["choices"][0]["message"]["content"] == "chat-fr says: bonjour"
    assert text(chunks) == "chat-fr says: bonjour" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert [d["embedding"][0] for d in emb["data"]] == [3.0, 2.0]
    scored = [s for s in az.seen[before:] if s.surface == "scoring"]
    assert {s.path for s in scored} == {"/online/chat-fr/score"}  # the scoring URI itself, for every operation
    assert {s.deployment_header for s in scored} == {"green"}
    assert {s.body["model"] for s in scored} == {"mistral-small"}
    assert sum(1 for s in az.seen[before:] if s.surface == "keys") == 1  # the key is read once per client


def test_serverless_endpoint_speaks_the_model_inference_paths(az):
    b = backend(az, "mistral-se", "serverless", "swedencentral")
    before = len(az.seen)

    async def scenario(c):
        return (await c.chat(b, CHAT), await drain(await c.chat_stream(b, CHAT)),
                await c.embed(b, {"model": "support", "input": "abc"}))

    answer, chunks, emb = run(scenario)
    assert answer["choices"][0]["message"]["content"] == "mistral-se says: bonjour"
    assert text(chunks) == "mistral-se says: bonjour"
    assert emb["data"][0]["embedding"][0] == 3.0
    paths = [s.path for s in az.seen[before:] if s.surface == "scoring"]
    assert paths == ["/serverless/mistral-se/chat/completions"] * 2 + ["/serverless/mistral-se/embeddings"]
    assert all(s.deployment_header is None for s in az.seen[before:])


def test_an_endpoint_that_does_not_stream_is_streamed_on_in_one_piece(az):
    b = backend(az, "mistral-nostream", "serverless", stream=False)
    chunks = run(lambda c: _stream_all(c, b))
    assert text(chunks) == "mistral-nostream says: bonjour"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def _stream_all(c, b):
    return await drain(await c.chat_stream(b, CHAT))


def test_a_serverless_endpoint_with_aad_auth_takes_a_token_from_the_credential_not_list_keys(az):
    b = backend(az, "mistral-aad", "serverless", "swedencentral")
    keys = az.count("keys")

    async def scenario(c):
        return await c.chat(b, CHAT), await _stream_all(c, b)

    answer, chunks = run(scenario)
    assert answer["choices"][0]["message"]["content"] == "mistral-aad says: bonjour"
    assert text(chunks) == "mistral-aad says: bonjour"
    assert az.count("keys") == keys  # an AAD endpoint has no keys: none were asked for


def test_concurrent_first_calls_read_arm_once(az):
    b = backend(az, "mistral-us", "serverless", "eastus2")
    keys_before = az.count("keys")

    async def scenario(c):
        return await asyncio.gather(*(c.chat(b, CHAT) for _ in range(6)))

    answers = run(scenario)
    assert {a["choices"][0]["message"]["content"] for a in answers} == {"mistral-us says: bonjour"}
    assert az.count("keys") - keys_before == 1


def test_a_rotated_key_is_read_again_once_and_the_request_resent_to_the_same_endpoint(az):
    b = backend(az, "chat-fr")

    async def scenario(c):
        first = await c.chat(b, CHAT)
        az.rotate_key("chat-fr")
        keys_before = az.count("keys")
        second = await c.chat(b, CHAT)
        return first, second, az.count("keys") - keys_before

    first, second, reads = run(scenario)
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
    assert reads == 1


def test_a_key_refused_again_after_the_re_read_is_refused_down(az):
    b = backend(az, "chat-fr")
    keys_before = az.count("keys")
    with az.fault("scoring", Fault(status=401)), pytest.raises(Refused) as exc:
        run(lambda c: c.chat(b, CHAT))
    assert (exc.value.status, exc.value.down, exc.value.resend) == (401, True, True)
    assert az.count("keys") - keys_before == 2  # first read, then the one re-read


# -- health and describe: ARM only, never the scoring URI ---------------------------------------------------------


def test_health_and_describe_read_arm_and_send_no_payload(az):
    online, dz = backend(az, "chat-fr"), backend(az, "mistral-se", "serverless", "swedencentral")
    creating, missing = backend(az, "chat-creating"), backend(az, "no-such-endpoint")
    scored = az.count("scoring")

    async def scenario(c):
        return ([await c.health(b) for b in (online, dz, creating, missing)],
                [await c.describe(b) for b in (online, dz, missing)])

    health, (d_online, d_dz, d_missing) = run(scenario)
    assert health == [True, True, False, False]
    assert az.count("scoring") == scored
    assert d_online["status"] == "Succeeded" and d_online["location"] == "francecentral"
    assert (d_dz["status"], d_dz["deployment_type"], d_dz["kind"]) == ("Online", "Consumption", "serverless")
    assert d_missing["status"] == "unknown" and "not found" in d_missing["error"]


def test_an_endpoint_being_updated_still_serves(az):
    """azure-ai-ml's EndpointProvisioningState: Creating, Deleting, Succeeded, Failed, Updating, Canceled. Updating
    (a deployment added, traffic moved) keeps serving the deployments it has, so it is healthy and called."""
    updating = backend(az, "chat-updating")
    assert run(lambda c: c.health(updating)) is True
    answer = run(lambda c: c.chat(updating, CHAT))
    assert answer["choices"][0]["message"]["content"]


def test_an_endpoint_still_provisioning_is_refused_without_sending(az):
    scored = az.count("scoring")
    with pytest.raises(Refused) as exc:
        run(lambda c: c.chat(backend(az, "chat-creating"), CHAT))
    assert exc.value.down and "Creating" in str(exc.value)
    assert az.count("scoring") == scored


# -- every fault, its verdict ------------------------------------------------------------------------------------

ARM_FAULTS = [
    ("arm", Fault(status=429, retry_after_s=7), Refused, {"throttled": True, "retry_after_s": 7, "status": 429}),
    ("arm", Fault(status=500), NotDelivered, {"resend": True}),  # ARM answers before any payload leaves
    ("arm", Fault(status=401), Refused, {"status": 401, "down": True}),
    ("arm", Fault(status=403), Refused, {"status": 401, "down": True}),
    ("arm", Fault(malformed=True), NotDelivered, {"resend": True}),
    ("keys", Fault(status=429, retry_after_s=3), Refused, {"throttled": True, "retry_after_s": 3}),
    ("keys", Fault(status=403), Refused, {"status": 401, "down": True}),
    ("token", Fault(status=401), Refused, {"status": 401, "down": True}),
]


@pytest.mark.parametrize(("surface", "fault", "verdict", "fields"), ARM_FAULTS,
                         ids=[f"{s}-{f.status or 'malformed'}" for s, f, _, _ in ARM_FAULTS])
def test_arm_and_token_faults_on_first_use_get_their_verdicts(az, surface, fault, verdict, fields):
    scored = az.count("scoring")
    with az.fault(surface, fault), pytest.raises(verdict) as exc:
        run(lambda c: c.chat(backend(az, "chat-fr"), CHAT))
    assert type(exc.value) is verdict
    for name, value in fields.items():
        assert getattr(exc.value, name) == value, name
    assert az.count("scoring") == scored  # nothing was sent to the endpoint


def test_a_missing_endpoint_is_refused_404_down(az):
    with pytest.raises(Refused) as exc:
        run(lambda c: c.chat(backend(az, "no-such-endpoint"), CHAT))
    assert (exc.value.status, exc.value.down) == (404, True)
    assert "endpoints:" in str(exc.value)


def test_a_wrong_client_secret_is_refused_401_down(az, monkeypatch):
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "not-the-secret")
    with pytest.raises(Refused) as exc:
        run(lambda c: c.chat(backend(az, "chat-fr"), CHAT))
    assert (exc.value.status, exc.value.down) == (401, True)


def test_arm_unreachable_is_not_delivered(az):
    az.arm_closed = True
    try:
        with pytest.raises(NotDelivered) as exc:
            run(lambda c: c.chat(backend(az, "chat-fr"), CHAT))
    finally:
        az.arm_closed = False
    assert exc.value.resend


def test_a_slow_arm_answer_is_not_delivered(az):
    def impatient(ws, cred):
        return arm.ml_client(ws, cred, read_timeout_s=0.5)

    scored = az.count("scoring")
    with az.fault("arm", Fault(delay_s=2.0, times=1)), pytest.raises(NotDelivered):
        run(lambda c: c.chat(backend(az, "chat-fr"), CHAT), ml_client=impatient)
    assert az.count("scoring") == scored  # the URI was never learnt: the payload never left


# a 503 is a refusal only with evidence (here a Retry-After); a bare one may have been received, a 504 too
SCORING_FAULTS = [(Fault(status=429, retry_after_s=5), Refused), (Fault(status=503, retry_after_s=2), Refused),
                  (Fault(status=503), Failed), (Fault(status=504), TimedOut), (Fault(status=500), Failed),
                  (Fault(malformed=True), Failed)]


@pytest.mark.parametrize(("fault", "verdict"), SCORING_FAULTS,
                         ids=[f"{f.status or 'malformed'}{'-retry-after' if f.retry_after_s else ''}"
                              for f, _ in SCORING_FAULTS])
def test_scoring_faults_get_their_verdicts(az, fault, verdict):
    b = backend(az, "chat-fr")
    for op in ("chat", "chat_stream"):
        with az.fault("scoring", fault), pytest.raises(verdict) as exc:
            run(lambda c, op=op: getattr(c, op)(b, CHAT))
        assert exc.value.resend is (verdict is Refused)
        if fault.status == 429:
            assert exc.value.throttled


def test_a_closed_scoring_port_is_not_delivered(az):
    with pytest.raises(NotDelivered):
        run(lambda c: c.chat(backend(az, "chat-closed"), CHAT))


def test_a_slow_endpoint_times_out_in_the_dispatcher_and_is_not_resent(az):
    b = backend(az, "chat-fr")
    table = RoutingTable.of([b])
    outcomes: list[str] = []

    async def scenario(c):
        d = Dispatcher(table, timeout_s=0.5)
        await c.chat(b, CHAT)  # resolved: the timeout below is the scoring call's alone
        with az.fault("scoring", Fault(delay_s=2.0, times=1)):
            await d.send(table.resolve("support"), RequestResidency(Residency()), lambda x: c.chat(x, CHAT),
                         lambda _b, outcome: outcomes.append(outcome))

    with pytest.raises(UpstreamTimeout):
        run(scenario)
    assert outcomes == ["timeout"]


# -- locate, connection ------------------------------------------------------------------------------------------


def test_locate_names_the_endpoint_and_carries_only_non_secret_params(az):
    b = backend(az, "chat-fr", deployment="blue")
    assert b.address == "chat-fr"
    assert b.params == {"subscription_id": az.subscription_id, "resource_group": az.resource_group,
                        "workspace": az.workspace, "kind": "online", "region": "francecentral",
                        "deployment": "blue", "cloud": "SovraEmulatorCloud"}
    assert Backend.from_wire(json.loads(json.dumps(b.to_wire()))) == b


def test_locate_without_an_endpoint_says_to_name_it_in_org_yaml(az):
    conn = ADAPTER.connection(az.connection(None))
    with pytest.raises(ProviderError, match="under `endpoints:` in org.yaml"):
        ADAPTER.locate(target(), "m", conn)
    with pytest.raises(ProviderError, match="under `endpoints:` in org.yaml"):
        ADAPTER.live_settings(target(), conn)


@pytest.mark.parametrize(("extra", "message"), [
    ({"kind": "serverless", "deployment": "blue"}, "no deployments"),
    ({"deployment_type": "Consumption"}, "serverless endpoints only"),
    ({"kind": "serverless", "deployment_type": "Planetary"}, "unknown deployment_type"),
    ({"kind": "serverless", "deployment_type": "GlobalStandard"}, "azure-foundry"),
    ({"kind": "serverless", "deployment_type": "DataZoneStandard"}, "azure-foundry"),
    ({"endpoint": "bad/name"}, "endpoint"),
    ({"api_key": "x"}, "valid fields"),
])
def test_connection_errors_name_the_fix(az, extra, message):
    raw = {**az.connection("chat-fr"), **extra}
    with pytest.raises(ProviderError, match=message):
        ADAPTER.connection(raw)


# -- live settings and zone translation --------------------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "kind", "region", "value", "zone"), [
    ("chat-fr", "online", "francecentral", "Regional (managed online endpoint in francecentral)", "EU"),
    ("mistral-se", "serverless", "swedencentral", "Consumption", "EU"),
    ("mistral-global", "serverless", "swedencentral", "GlobalStandard", GLOBAL),
    ("mistral-us", "serverless", "eastus2", "Consumption", "US"),
])
def test_live_settings_read_the_deployment_type_from_arm(az, endpoint, kind, region, value, zone):
    t = target(region, REGION_COUNTRY[region])
    [setting] = ADAPTER.live_settings(t, ADAPTER.connection(az.connection(endpoint, kind)))
    assert (setting.setting, setting.zone) == ("deployment type", zone) and setting.value.startswith(value)
    assert bool(setting.fix) is (zone != t.zone)
    if setting.fix:  # a serverless endpoint is regional: the fix never names a type it cannot have
        assert "serverless endpoint in swedencentral" in setting.fix and "azure-foundry" in setting.fix
        assert "DataZoneStandard" not in setting.fix


def test_an_unknown_sku_is_treated_as_processing_anywhere(az):
    [setting] = ADAPTER.live_settings(target("eastus2", "US"),
                                      ADAPTER.connection(az.connection("mistral-odd", "serverless")))
    assert setting.zone == GLOBAL and "SomeFutureSku" in setting.value and setting.fix


def test_live_settings_of_a_missing_endpoint_say_what_failed(az):
    with pytest.raises(ProviderError, match="not found"):
        ADAPTER.live_settings(target(), ADAPTER.connection(az.connection("no-such-endpoint")))


@given(region=st.sampled_from(sorted(REGION_COUNTRY)),
       deployment_type=st.sampled_from((*GLOBAL_TYPES, *DATA_ZONE_TYPES, *REGIONAL_TYPES)),
       spelling=st.sampled_from((str, str.lower, str.upper)))
def test_azure_ml_endpoints_are_regional_and_wider_types_point_at_azure_foundry(region, deployment_type, spelling):
    home = COUNTRY_ZONE[REGION_COUNTRY[region]]
    name = spelling(deployment_type)
    if deployment_type in REGIONAL_TYPES:
        assert ADAPTER.zone_for_deployment(name, region) == home
    else:  # Global / DataZone types are Foundry deployments', never an Azure ML endpoint's
        with pytest.raises(ValueError, match="azure-foundry"):
            ADAPTER.zone_for_deployment(name, region)


def test_an_unknown_region_or_type_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="unknown Azure region"):
        ADAPTER.zone_for_deployment("Standard", "atlantis")
    with pytest.raises(ValueError, match="unknown scope"):
        ADAPTER.zone_for_deployment("Planetary", "francecentral")
    with pytest.raises(ValueError, match="azure-foundry"):  # not an Azure ML endpoint's type at all
        ADAPTER.zone_for_deployment("GlobalStandard", "francecentral")


def test_every_region_country_is_a_known_country():
    assert set(REGION_COUNTRY.values()) <= set(COUNTRY_ZONE)


# -- secrets -----------------------------------------------------------------------------------------------------


def test_no_key_token_or_client_secret_reaches_logs_records_or_errors(az, caplog):
    caplog.set_level(logging.DEBUG)
    b = backend(az, "chat-fr", deployment="blue")
    errors: list[str] = []

    async def scenario(c):
        await c.chat(b, CHAT)
        await drain(await c.chat_stream(b, CHAT))
        await c.health(b)
        errors.append(json.dumps(await c.describe(b)))
        az.rotate_key("chat-fr")  # a refusal and a re-read, logged or not
        await c.chat(b, CHAT)
        return c

    client = run(scenario)
    for surface in ("keys", "arm"):  # refusals on first use: their messages are shown to people
        with az.fault(surface, Fault(status=401, times=1)), pytest.raises(Refused) as exc:
            run(lambda c: c.chat(b, CHAT))
        errors.append(str(exc.value))
    ADAPTER.live_settings(target(), ADAPTER.connection(az.connection("chat-fr")))
    haystack = "\n".join([caplog.text, json.dumps(b.to_wire()), repr(b), *errors, repr(vars(client))])
    secrets = az.all_secrets()
    assert len(secrets) >= 4 and len(az.issued_tokens) >= 2
    leaked = [s[:6] + "…" for s in secrets if s in haystack]
    assert not leaked, f"credentials found in logs or records: {leaked}"
    assert "Secret(***)" in repr(vars(client))  # the cached key is there, masked
    assert "listKeys" in caplog.text and "oauth2/v2.0/token" in caplog.text  # the SDKs' own logging was captured
