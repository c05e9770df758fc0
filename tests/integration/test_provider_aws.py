"""The AWS adapters over real HTTP: SageMaker against moto in server mode (plus the local fake for what moto lacks:
response streams and faults), Bedrock against the local fake speaking bedrock-runtime's real paths and AWS's
event-stream encoding. boto3 is pointed at them as at an account: AWS_ENDPOINT_URL_<SERVICE> and test keys."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovra.core.errors import ProviderError
from sovra.core.backends import Backend
from sovra.core.api_errors import BadRequest, Failed, NotDelivered, Refused, TimedOut
from sovra.core.spec import Residency, Target
from sovra.core.place import Place
from sovra.providers import base
from sovra.providers.aws import common as aws
from sovra.providers.aws.bedrock import (
    BedrockClient,
    converse_request,
    openai_messages,
    zone_for_model_id,
)
from sovra.providers.aws.sagemaker import SageMakerClient, sse_chunks
from tests.emulators.aws import (
    TEST_ACCESS_KEY_ID,
    TEST_SECRET_ACCESS_KEY,
    aws_env,
    aws_environ,
    closed_port_url,
    fake_aws,
    moto_server,
)

BEDROCK, SAGEMAKER = base.get("aws-bedrock"), base.get("aws-sagemaker")
PIXTRAL = "mistral.pixtral-large-2502-v1:0"
KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
CHAT = {"model": "pixtral-large", "messages": [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Bonjour, ça va ?"}],
        "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "stop": "END"}


def run(coro):
    return asyncio.run(coro)


def target(tid: str, *, region: str, zone: str, scope: str | None = None, country: str | None = None,
           models=(("pixtral-large", PIXTRAL),), provider: str = "aws-bedrock") -> Target:
    fields = {"id": tid, "provider": provider, "cloud": "aws", "region": region, "zone": zone, "scope": scope,
              "country": country, "operator": {"name": "amazon", "jurisdiction": "US"}}
    if provider == "aws-bedrock":
        fields["models"] = [{"name": n, "id": i, "usd_per_1k_tokens": 0.003} for n, i in models]
    else:
        fields["accelerators"] = [{"sku": "ml.g5.xlarge", "gpus": 1, "gpu_memory_gb": 24, "usd_per_hour": 1.4,
                                   "available": 2}]
    return Target.model_validate(fields)


EU = target("aws-bedrock/eu", region="eu-central-1", zone="EU", scope="eu")
PARIS = target("aws-sagemaker/eu-west-3", region="eu-west-3", zone="EU", country="FR", provider="aws-sagemaker")


def backend(t: Target, model: str, connection: dict | None = None) -> Backend:
    """The routing-table record `up` would write: located by the adapter itself."""
    adapter = base.get(t.provider)
    loc = adapter.locate(t, model, adapter.connection(connection))
    return Backend(id=f"d@{t.id}", deployment="d", model=model, target=t.id, place=Place.of(t),
                   residency=Residency(zones=("EU",)), kind=t.provider, address=loc.address, params=dict(loc.params))


# -- fixtures: one emulator per module, reset and pointed at per test ---------------------------------------------


@pytest.fixture(scope="module")
def fake_server():
    with fake_aws() as fake:
        yield fake


@pytest.fixture(scope="module")
def moto():
    with moto_server() as server:
        server.create_endpoint("sovra-paris", "eu-west-3")
        yield server


@pytest.fixture
def fake(fake_server):
    """The fake, reset, with boto3 sent to it for every AWS service Sovra calls."""
    fake_server.reset()
    url = fake_server.url
    with aws_environ(aws_env(bedrock_runtime=url, bedrock=url, sagemaker_runtime=url, sagemaker=url)):
        yield fake_server


@pytest.fixture
def on_moto(moto):
    """boto3 sent to moto for SageMaker (runtime and control plane)."""
    with aws_environ(aws_env(sagemaker_runtime=moto.url, sagemaker=moto.url)):
        yield moto


def quick() -> aws.AwsClients:
    return aws.AwsClients(connect_timeout_s=1.0, read_timeout_s=0.5)


async def collect(stream) -> list[dict]:
    return [c async for c in stream]


# -- Bedrock ---------------------------------------------------------------------------------------------------------


def test_bedrock_chat_translates_to_converse_and_back(fake):
    b = backend(EU, "pixtral-large")
    out = run(BedrockClient().chat(b, CHAT))

    (seen,) = fake.requests
    assert seen.path == f"/model/eu.{PIXTRAL}/converse" and seen.region == "eu-central-1"
    assert seen.json() == {"messages": [{"role": "user", "content": [{"text": "Bonjour, ça va ?"}]}],
                           "system": [{"text": "Be brief."}],
                           "inferenceConfig": {"maxTokens": 64, "temperature": 0.2, "topP": 0.9,
                                               "stopSequences": ["END"]}}
    assert out["object"] == "chat.completion" and out["model"] == "pixtral-large"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "echo: Bonjour, ça va ?"}
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}


def test_bedrock_stream_is_openai_chunks_with_a_usage_chunk_only_when_asked(fake):
    fake.reply = "Ceci est une réponse en flux."
    chunks = run(_stream(BedrockClient(), backend(EU, "pixtral-large")))

    assert fake.requests[0].path == f"/model/eu.{PIXTRAL}/converse-stream"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == fake.reply
    assert len(chunks) == 2 + len(fake.reply.split())
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # not asked: no chunk without choices (a client may index choices[0]); the finish chunk carries the usage for
    # the audit trail, in OpenAI's nullable `usage` field
    assert all(c["choices"] for c in chunks) and [c for c in chunks if "usage" in c] == [chunks[-1]]
    assert len({c["id"] for c in chunks}) == 1 and {c["object"] for c in chunks} == {"chat.completion.chunk"}
    # stream_options.include_usage: as OpenAI, one more chunk with no choices carries the usage (ConverseStream's
    # `metadata.usage`), after the finish reason
    asked = run(_stream(BedrockClient(), backend(EU, "pixtral-large"),
                        {**CHAT, "stream_options": {"include_usage": True}}))
    assert asked[-2]["choices"][0]["finish_reason"] == "stop"
    assert asked[-1]["choices"] == [] and asked[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 6,
                                                                 "total_tokens": 11}


async def _stream(client, b, body=CHAT):
    return await collect(await client.chat_stream(b, body))


@pytest.mark.parametrize("vendor_id", ["amazon.titan-embed-text-v2:0", "cohere.embed-multilingual-v3"])
def test_bedrock_embeddings(fake, vendor_id):
    t = target("aws-bedrock/eu-central-1", region="eu-central-1", zone="EU", country="DE", scope="in-region",
               models=(("embedder", vendor_id),))
    out = run(BedrockClient().embed(backend(t, "embedder"), {"model": "embedder", "input": ["a b", "c"]}))
    assert [d["index"] for d in out["data"]] == [0, 1] and all(len(d["embedding"]) == 4 for d in out["data"])
    assert {r.path for r in fake.requests} == {f"/model/{vendor_id}/invoke"}
    assert len(fake.requests) == (2 if "titan" in vendor_id else 1)


def test_bedrock_health_and_describe_read_the_control_plane(fake):
    client, profile = BedrockClient(), backend(EU, "pixtral-large")
    assert run(client.health(profile)) is True
    described = run(client.describe(profile))
    assert described["status"] == "ACTIVE" and described["profile"] == f"eu.{PIXTRAL}"
    assert set(described["regions"]) >= {"eu-central-1", "eu-west-3"}

    plain = backend(target("aws-bedrock/eu-west-3", region="eu-west-3", zone="EU", country="FR",
                           scope="in-region", models=(("mistral-7b", "mistral.mistral-7b-instruct-v0:2"),)),
                    "mistral-7b")
    assert run(client.describe(plain)) == {"status": "ACTIVE", "model": "mistral.mistral-7b-instruct-v0:2",
                                           "streaming": True}
    fake.lifecycle = "LEGACY"  # deprecated, still invocable: it serves (botocore FoundationModelLifecycleStatus)
    assert run(client.health(plain)) is True
    assert [r.method for r in fake.requests] == ["GET"] * 4, "health and describe never send a payload"
    with fake.failing("access-denied"):
        assert run(client.health(profile)) is False
        with pytest.raises(Refused) as err:
            run(client.describe(profile))
    assert err.value.status == 401 and err.value.down


# every fault the fake can answer -> the verdict the dispatcher acts on
FAULT_VERDICTS = [
    ("throttle", Refused, {"throttled": True, "status": 429, "retry_after_s": 7, "down": False}),
    ("unavailable", Refused, {"throttled": True, "status": 429}),
    ("model-not-ready", Refused, {"throttled": True}),
    ("access-denied", Refused, {"status": 401, "down": True, "throttled": False}),
    ("expired-token", Refused, {"status": 401, "down": True}),
    ("unrecognized-client", Refused, {"status": 401, "down": True}),
    ("not-found", Refused, {"status": 404, "down": True}),
    ("endpoint-missing", Refused, {"status": 404, "down": True}),
    ("invalid", BadRequest, {"status": 400}),
    ("model-error", Failed, {"resend": False}),
    ("server-error", Failed, {"resend": False}),
    ("malformed", Failed, {"resend": False}),
    ("closed", Failed, {"resend": False}),
    ("slow", TimedOut, {"resend": False, "outcome": "timeout"}),
]


def _check(exc: BaseException, kind: type, attrs: dict) -> None:
    assert type(exc) is kind, f"{type(exc).__name__}: {exc}"
    for k, v in attrs.items():
        assert getattr(exc, k) == v, (k, getattr(exc, k), str(exc))


@pytest.mark.parametrize(("fault", "kind", "attrs"), FAULT_VERDICTS, ids=[f for f, *_ in FAULT_VERDICTS])
def test_bedrock_faults_become_verdicts_and_are_sent_once(fake, fault, kind, attrs):
    fake.slow_s = 1.5
    with fake.failing(fault), pytest.raises(Exception) as err:
        run(BedrockClient(quick()).chat(backend(EU, "pixtral-large"), CHAT))
    _check(err.value, kind, attrs)
    assert len(fake.requests) == 1, "botocore must not resend a payload on its own"


@pytest.mark.parametrize(("fault", "kind", "attrs"), [FAULT_VERDICTS[0], FAULT_VERDICTS[3], FAULT_VERDICTS[8]],
                         ids=["throttle", "access-denied", "invalid"])
def test_bedrock_stream_refusals_come_before_the_stream(fake, fault, kind, attrs):
    with fake.failing(fault), pytest.raises(Exception) as err:
        run(BedrockClient(quick()).chat_stream(backend(EU, "pixtral-large"), CHAT))
    _check(err.value, kind, attrs)


def test_a_stream_that_breaks_after_it_started_is_failed(fake):
    async def go():
        stream = await BedrockClient(quick()).chat_stream(backend(EU, "pixtral-large"), CHAT)
        got = [await anext(stream)]
        with pytest.raises(Failed) as err:
            async for c in stream:
                got.append(c)
        return got, err.value

    with fake.failing("stream-break"):
        got, exc = run(go())
    assert got[0]["choices"][0]["delta"]["role"] == "assistant" and type(exc) is Failed
    assert "after the stream had started" in str(exc)


def test_a_closed_port_is_not_delivered():
    url = closed_port_url()
    with aws_environ(aws_env(bedrock_runtime=url, sagemaker_runtime=url)):
        with pytest.raises(NotDelivered) as err:
            run(BedrockClient(quick()).chat(backend(EU, "pixtral-large"), CHAT))
        assert err.value.resend
        with pytest.raises(NotDelivered):
            run(SageMakerClient(quick()).chat(backend(PARIS, "m", {"endpoint": "sovra-paris"}), CHAT))


def test_missing_credentials_are_not_delivered_and_down(fake):
    env = aws_env(bedrock_runtime=fake.url)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    with aws_environ(env, unset=KEYS), pytest.raises(NotDelivered) as err:
        run(BedrockClient().chat(backend(EU, "pixtral-large"), CHAT))
    assert err.value.down and "credentials" in str(err.value)
    assert fake.requests == []


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
    {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
    {"messages": [{"role": "user", "content": "hi"}], "n": 2},
    {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "lots"},
])
def test_requests_bedrock_cannot_take_are_400_and_never_sent(fake, body):
    with pytest.raises(BadRequest):
        run(BedrockClient().chat(backend(EU, "pixtral-large"), body))
    assert fake.requests == []


def test_bedrock_locate_prefixes_the_profile_scope():
    for scope, zone, region, want in [("eu", "EU", "eu-central-1", f"eu.{PIXTRAL}"),
                                      ("us", "US", "us-east-1", f"us.{PIXTRAL}"),
                                      ("apac", "APAC", "ap-northeast-1", f"apac.{PIXTRAL}"),
                                      ("global", "GLOBAL", "us-east-1", f"global.{PIXTRAL}"),
                                      ("in-region", "EU", "eu-west-3", PIXTRAL), (None, "EU", "eu-west-3", PIXTRAL)]:
        t = target(f"aws-bedrock/{scope}", region=region, zone=zone, scope=scope,
                   country="FR" if scope in ("in-region", None) else None)
        loc = BEDROCK.locate(t, "pixtral-large", BEDROCK.connection({}))
        assert (loc.address, dict(loc.params)) == (want, {"region": region})
    # an id that already names its profile is kept, and must agree with the scope
    prefixed = target("aws-bedrock/eu", region="eu-central-1", zone="EU", scope="eu",
                      models=(("pixtral-large", f"eu.{PIXTRAL}"),))
    assert BEDROCK.locate(prefixed, "pixtral-large", BEDROCK.connection({})).address == f"eu.{PIXTRAL}"
    wrong = target("aws-bedrock/eu", region="eu-central-1", zone="EU", scope="eu",
                   models=(("pixtral-large", f"us.{PIXTRAL}"),))
    with pytest.raises(ProviderError, match="make them agree"):
        BEDROCK.locate(wrong, "pixtral-large", BEDROCK.connection({}))
    with pytest.raises(ProviderError, match="does not offer 'llama'"):
        BEDROCK.locate(EU, "llama", BEDROCK.connection({}))
    # the name is the id when the catalog gives none; a named AWS profile travels in params
    bare = target("aws-bedrock/eu", region="eu-central-1", zone="EU", scope="eu", models=(("x.y-v1:0", None),))
    loc = BEDROCK.locate(bare, "x.y-v1:0", BEDROCK.connection({"profile": "prod"}))
    assert (loc.address, dict(loc.params)) == ("eu.x.y-v1:0", {"region": "eu-central-1", "profile": "prod"})


def test_zone_translation_stays_in_the_adapter():
    assert [BEDROCK.zone_for_scope(s, None) for s in ("eu", "us", "apac", "global")] == ["EU", "US", "APAC", "GLOBAL"]
    assert BEDROCK.zone_for_scope("in-region", "FR") == "EU"
    assert zone_for_model_id(f"eu.{PIXTRAL}", "eu-central-1") == "EU"
    assert zone_for_model_id(f"global.{PIXTRAL}", "eu-central-1") == "GLOBAL"
    assert zone_for_model_id(f"apac.{PIXTRAL}", "ap-south-1") == "APAC"
    assert zone_for_model_id(PIXTRAL, "eu-west-3") == "EU"
    assert zone_for_model_id(PIXTRAL, "us-west-2") == "US"
    assert zone_for_model_id(PIXTRAL, "eu-west-2") == "UK"
    assert zone_for_model_id(PIXTRAL, "xx-nowhere-1") == "GLOBAL", "an unknown region is not assumed to be safe"
    assert zone_for_model_id(f"arn:aws:bedrock:eu-west-1:1:inference-profile/eu.{PIXTRAL}", "eu-west-1") == "EU"
    assert zone_for_model_id("arn:aws:bedrock:eu-west-1:1:application-inference-profile/abc", "eu-west-1") == "GLOBAL"
    assert aws.zone_of_regions(["eu-west-3", "eu-central-1"]) == "EU"
    assert aws.zone_of_regions(["eu-west-3", "us-east-1"]) == "GLOBAL"
    assert SAGEMAKER.zone_for_scope("regional", "DE") == "EU"


def test_bedrock_live_settings_read_the_profile_regions(fake):
    (setting,) = BEDROCK.live_settings(EU, BEDROCK.connection({}))
    assert (setting.target, setting.setting, setting.value, setting.zone) == (
        "aws-bedrock/eu", "inference profile", f"eu.{PIXTRAL}", "EU")
    assert "pin" in setting.fix
    # the account's profile reaches outside the EU: the live zone says so, whatever the prefix promised
    fake.profiles[f"eu.{PIXTRAL}"] = ["eu-west-1", "us-east-1"]
    assert BEDROCK.live_settings(EU, BEDROCK.connection({}))[0].zone == "GLOBAL"
    glob = target("aws-bedrock/global", region="us-east-1", zone="GLOBAL", scope="global")
    assert BEDROCK.live_settings(glob, BEDROCK.connection({}))[0].zone == "GLOBAL"
    paris = target("aws-bedrock/eu-west-3", region="eu-west-3", zone="EU", country="FR", scope="in-region")
    assert BEDROCK.live_settings(paris, BEDROCK.connection({})) == [], "an in-region id has no setting to read"
    with fake.failing("access-denied"), pytest.raises(ProviderError, match="cannot read inference profile"):
        BEDROCK.live_settings(EU, BEDROCK.connection({}))


# -- SageMaker -------------------------------------------------------------------------------------------------------


def test_sagemaker_chat_sends_the_openai_body_and_takes_either_answer(on_moto):
    b = backend(PARIS, "mistral-small-24b", {"endpoint": "sovra-paris"})
    completion = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "tgi",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Oui."},
                               "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}
    on_moto.queue_results("eu-west-3", completion, [{"generated_text": "Non.", "details": {"generated_tokens": 2}}])
    client = SageMakerClient()
    assert run(client.chat(b, CHAT)) == completion
    other = run(client.chat(b, {**CHAT, "messages": [{"role": "user", "content": "encore"}]}))
    assert other["choices"][0]["message"]["content"] == "Non." and other["usage"]["completion_tokens"] == 2
    # without a streaming container, a stream is the whole answer replayed faithfully
    on_moto.queue_results("eu-west-3", completion)
    nostream = backend(PARIS, "mistral-small-24b", {"endpoint": "sovra-paris", "streaming": False})
    chunks = run(_stream(client, nostream, {**CHAT, "messages": [{"role": "user", "content": "flux"}]}))
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["Oui.", None]
    assert chunks[-1]["usage"]["total_tokens"] == 11


def test_sagemaker_embeddings(on_moto):
    on_moto.queue_results("eu-west-3", [[0.1, 0.2], [0.3, 0.4]])
    out = run(SageMakerClient().embed(backend(PARIS, "e5", {"endpoint": "sovra-paris"}),
                                      {"model": "e5", "input": ["x", "y"]}))
    assert [d["embedding"] for d in out["data"]] == [[0.1, 0.2], [0.3, 0.4]]


def test_sagemaker_health_describe_and_a_missing_endpoint(on_moto):
    client = SageMakerClient()
    b = backend(PARIS, "m", {"endpoint": "sovra-paris"})
    assert run(client.health(b)) is True
    assert run(client.describe(b)) == {"status": "InService", "endpoint": "sovra-paris", "region": "eu-west-3"}
    gone = backend(PARIS, "m", {"endpoint": "sovra-gone"})
    assert run(client.health(gone)) is False
    with pytest.raises(Refused) as err:  # moto: ValidationException "Could not find endpoint ..."
        run(client.describe(gone))
    assert err.value.status == 404 and err.value.down


def test_sagemaker_stream_reassembles_payload_parts(fake):
    fake.reply = "Réponse découpée — «ok» 🚀 fin."
    b = backend(PARIS, "m", {"endpoint": "sovra-paris"})
    for size in (1, 5, 64):
        fake.part_size = size
        chunks = run(_stream(SageMakerClient(), b))
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == fake.reply
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["prompt_tokens"] == 3
    assert {r.path for r in fake.requests} == {"/endpoints/sovra-paris/invocations-response-stream"}
    assert all(r.json()["stream"] is True and r.json()["model"] == "m" for r in fake.requests)


@pytest.mark.parametrize(("fault", "kind", "attrs"),
                         [f for f in FAULT_VERDICTS if f[0] in ("endpoint-missing", "model-error", "model-not-ready",
                                                                "throttle", "slow", "malformed", "access-denied")],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_sagemaker_faults_become_verdicts(fake, fault, kind, attrs):
    fake.slow_s = 1.5
    b = backend(PARIS, "m", {"endpoint": "sovra-paris"})
    with fake.failing(fault), pytest.raises(Exception) as err:
        run(SageMakerClient(quick()).chat(b, CHAT))
    _check(err.value, kind, attrs)
    assert len(fake.requests) == 1


def test_sagemaker_stream_break_is_failed(fake):
    async def go():
        stream = await SageMakerClient(quick()).chat_stream(backend(PARIS, "m", {"endpoint": "sovra-paris"}), CHAT)
        return await collect(stream)

    with fake.failing("stream-break"), pytest.raises(Failed, match="ModelStreamError") as err:
        run(go())
    assert type(err.value) is Failed and not err.value.resend


def test_sagemaker_locate_needs_an_org_endpoint():
    with pytest.raises(ProviderError, match="under `endpoints:` in org.yaml"):
        SAGEMAKER.locate(PARIS, "m", SAGEMAKER.connection({}))
    loc = SAGEMAKER.locate(PARIS, "m", SAGEMAKER.connection({"endpoint": "sovra-paris"}))
    assert (loc.address, dict(loc.params)) == ("sovra-paris", {"region": "eu-west-3"})
    loc = SAGEMAKER.locate(PARIS, "m", SAGEMAKER.connection(
        {"endpoint": "e", "region": "eu-central-1", "profile": "prod", "streaming": False}))
    assert dict(loc.params) == {"region": "eu-central-1", "profile": "prod", "streaming": "false"}
    with pytest.raises(ProviderError, match="valid fields"):
        SAGEMAKER.connection({"endpoint": "e", "aws_secret_access_key": "x"})


def test_sagemaker_live_settings_report_the_endpoint_region(on_moto):
    (s,) = SAGEMAKER.live_settings(PARIS, SAGEMAKER.connection({"endpoint": "sovra-paris"}))
    assert (s.setting, s.value, s.zone) == ("endpoint region", "eu-west-3", "EU")
    on_moto.create_endpoint("sovra-virginia", "us-east-1")
    (s,) = SAGEMAKER.live_settings(PARIS, SAGEMAKER.connection({"endpoint": "sovra-virginia",
                                                                  "region": "us-east-1"}))
    assert (s.value, s.zone) == ("us-east-1", "US") and "eu-west-3" in s.fix
    with pytest.raises(ProviderError, match="cannot describe endpoint"):
        SAGEMAKER.live_settings(PARIS, SAGEMAKER.connection({"endpoint": "sovra-gone"}))


# -- credentials, clients, laziness ----------------------------------------------------------------------------------


def test_credentials_and_payloads_never_reach_logs_or_the_backend_record(fake, caplog):
    token = "sovra-test-session-token-Kd93Lw"
    caplog.set_level(logging.DEBUG)  # every logger, botocore's included
    u = fake.url
    with aws_environ({**aws_env(bedrock_runtime=u, bedrock=u, sagemaker_runtime=u, sagemaker=u),
                      "AWS_SESSION_TOKEN": token}):
        b_eu, b_sm = backend(EU, "pixtral-large"), backend(PARIS, "m", {"endpoint": "sovra-paris"})
        bedrock, sagemaker = BedrockClient(), SageMakerClient()
        body = {**CHAT, "messages": [{"role": "user", "content": "PAYLOAD-7731"}]}
        run(bedrock.chat(b_eu, body))
        run(_stream(bedrock, b_eu, body))
        run(_stream(sagemaker, b_sm, body))
        run(bedrock.health(b_eu))
        with fake.failing("access-denied"):
            run(sagemaker.health(b_sm))
    assert all(r.headers.get("x-amz-security-token") == token for r in fake.requests), "the token was used"
    assert "botocore" in {r.name.split(".")[0] for r in caplog.records}, "botocore's DEBUG logging was captured"
    text = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    for secret in (TEST_SECRET_ACCESS_KEY, TEST_ACCESS_KEY_ID, token, "PAYLOAD-7731"):
        assert secret not in text
    for b in (b_eu, b_sm):
        wire = json.dumps(b.to_wire())
        assert TEST_SECRET_ACCESS_KEY not in wire and TEST_ACCESS_KEY_ID not in wire and token not in wire


def test_one_botocore_client_per_service_region_and_profile(fake):
    clients = aws.AwsClients()
    a = clients.get("bedrock-runtime", "eu-central-1")
    assert clients.get("bedrock-runtime", "eu-central-1") is a
    assert clients.get("bedrock-runtime", "eu-west-3") is not a
    assert a.meta.config.retries["total_max_attempts"] == 1
    assert a.meta.endpoint_url == fake.url, "AWS_ENDPOINT_URL_BEDROCK_RUNTIME is honoured"


def test_a_named_profile_comes_from_the_aws_config(fake, tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text(f"[sovra-prod]\naws_access_key_id = {TEST_ACCESS_KEY_ID}\n"
                     f"aws_secret_access_key = {TEST_SECRET_ACCESS_KEY}\n")
    env = {**aws_env(bedrock_runtime=fake.url), "AWS_SHARED_CREDENTIALS_FILE": str(creds)}
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    with aws_environ(env, unset=KEYS):
        b = backend(EU, "pixtral-large", {"profile": "sovra-prod"})
        assert run(BedrockClient().chat(b, CHAT))["choices"]
        with pytest.raises(NotDelivered, match="sovra-other"):
            run(BedrockClient().chat(backend(EU, "pixtral-large", {"profile": "sovra-other"}), CHAT))


def test_importing_the_adapters_does_not_import_boto3():
    import subprocess
    import sys

    code = "import sys; from sovra.providers import base; base.names(); assert 'boto3' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False, capture_output=True).returncode == 0


# -- properties ------------------------------------------------------------------------------------------------------

_text = st.text(min_size=1, max_size=20)
_turn = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": _text})


@settings(max_examples=200, deadline=None)
@given(system=st.lists(_text, max_size=2), turns=st.lists(_turn, min_size=1, max_size=8))
def test_openai_messages_round_trip_through_converse(system, turns):
    messages = [{"role": "system", "content": s} for s in system] + turns
    request = converse_request({"messages": messages})
    roles = [m["role"] for m in request["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles)), "Converse turns alternate"
    assert openai_messages(request) == messages


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(st.text(max_size=12), min_size=1, max_size=6), cuts=st.lists(st.integers(1, 9), max_size=40))
def test_sse_chunks_survive_any_cut_of_the_payload(texts, cuts):
    sse = b"".join(b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": t}}]}).encode() + b"\n\n"
                   for t in texts) + b"data: [DONE]\n\n"
    parts, i = [], 0
    for n in cuts:
        parts.append(sse[i:i + n])
        i += n
    parts.append(sse[i:])
    got = list(sse_chunks("m", parts))
    assert [c["choices"][0]["delta"]["content"] for c in got] == texts


def test_every_shipped_bedrock_offering_locates_to_an_id_of_its_zone():
    from sovra.orchestrator.catalog import load_catalog

    catalog = load_catalog(base.__file__.replace("base.py", "aws/catalogs/aws_bedrock.yaml"))
    for t in catalog.targets:
        for m in t.models:
            loc = BEDROCK.locate(t, m.name, BEDROCK.connection({}))
            assert m.id and loc.address.endswith(m.id) and loc.params["region"] == t.region
            assert zone_for_model_id(loc.address, t.region) == t.zone, (t.id, loc.address)
