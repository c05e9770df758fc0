"""One tenant cannot hurt the others (issue 17, section 4), over the real path: the router served by uvicorn on
127.0.0.1, its real clients reaching fake OpenAI-compatible servers and the AWS emulator over HTTP.

- A client's mistake is a 400 at the router, before any attempt: never an adapter's exception taken for the
  backend's failure, which would open the breaker every tenant shares.
- A tenant has a limit of requests in flight, freed however a request ends; a stream has an overall deadline;
  breakers count only what the backend did wrong.
- Bounds: embeddings inputs, JSON nesting, what a backend's 4xx may tell the client and the trail, SSE lines,
  and /readyz when Serve's controller is slow.
- Verdicts: a 504 is a timeout after delivery; a 503 is a refusal only with evidence.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import hashlib
import json
import threading
import time

import httpx
import pytest

from sovra.orchestrator.router.app import RouterState, create_app
from sovra.orchestrator.router.audit import AuditLog, read
from sovra.core.backends import Backend, RoutingTable
from sovra.providers.clients import MAX_SSE_LINE, HttpClient
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.core.api_errors import BadRequest, Failed, Refused, TimedOut
from sovra.orchestrator.router.tenants import TenantDirectory
from sovra.providers.onprem.ray_client import RayClient, ReplicaWatch
from sovra.core.spec import Residency
from sovra.core.spec.org import Tenant
from sovra.core.place import Place
from sovra.providers.aws import common as aws
from sovra.providers.aws.bedrock import BedrockClient
from sovra.providers.aws.sagemaker import SageMakerClient
from tests import factories
from tests.emulators.aws import aws_env, aws_environ, fake_aws
from tests.emulators.databricks import DatabricksEmulator
from tests.fakes.openai_backend import FakeBackend, ServerThread

pytestmark = pytest.mark.integration
NOISY_KEY, QUIET_KEY = "sk-isolation-noisy", "sk-isolation-quiet"
EU = Residency(zones=("EU",))
CHAT = {"model": "m", "messages": [{"role": "user", "content": "eu-secret hello"}]}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def tenants() -> TenantDirectory:
    """`noisy` may have 2 requests in flight; `quiet` has the router's default."""
    return TenantDirectory.of([Tenant(name="noisy", key_sha256=sha(NOISY_KEY), residency=EU, max_concurrent=2),
                               Tenant(name="quiet", key_sha256=sha(QUIET_KEY), residency=EU)])


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Deployment `m`: Paris (cheapest, so first) and Frankfurt, both OpenAI-compatible fakes."""
    fakes = {"paris": FakeBackend("paris"), "frankfurt": FakeBackend("frankfurt")}
    places = {"paris": Place("EU", "FR", "FR", "self"), "frankfurt": Place("EU", "DE", "DE", "self")}
    servers = {k: ServerThread(f.app()).__enter__() for k, f in fakes.items()}
    backends = [factories.backend(k, places[k], cost={"paris": 0.1, "frankfurt": 1.0}[k], kind="openai-compatible",
                                  address=servers[k].url) for k in fakes]
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    state = RouterState(Dispatcher(RoutingTable.of(backends), backoff_s=0.0), tenants(),
                        {"openai-compatible": HttpClient()}, AuditLog(audit), probe=False)
    router = ServerThread(create_app(state)).__enter__()
    yield {"url": router.url, "fakes": fakes, "state": state, "audit": audit}
    router.__exit__()
    for s in servers.values():
        s.__exit__()


@pytest.fixture
def fresh(stack):
    """The stack as new: fakes answering at once, no breaker state, nothing in flight."""
    for f in stack["fakes"].values():
        f.received.clear()
        f.failing, f.status, f.error_body, f.retry_after, f.delay_s, f.chunk_gap_s = False, None, None, None, 0, 0
        f.error_html = None
    d = stack["state"].dispatcher
    d.breaker._states.clear()
    yield stack
    d.breaker._states.clear()
    d.timeout_s, d.stream_deadline_s = 120.0, 600.0


def post(stack, body, *, path="/v1/chat/completions", key=NOISY_KEY, rid=None, timeout=10.0) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if rid:
        headers["X-Request-Id"] = rid
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(stack["url"] + path, content=content, headers={**headers, "Content-Type": "application/json"},
                      timeout=timeout)


def record(audit, rid: str, wait_s: float = 5.0) -> dict:
    """The trail's record of request `rid` (waiting for it: a stream's is written when it ends)."""
    deadline = time.time() + wait_s
    while True:
        found = [r for r in read(audit) if r.get("request_id") == rid and r.get("status") is not None]
        if found:
            return found[-1]
        assert time.time() < deadline, f"no audit record for {rid}"
        time.sleep(0.05)


def attempts(rec: dict) -> list[tuple[str, str]]:
    return [(a["target"], a["outcome"]) for a in rec["attempts"]]


def received(stack) -> int:
    return sum(len(f.received) for f in stack["fakes"].values())


def wait_until(check, wait_s: float = 5.0) -> None:
    deadline = time.time() + wait_s
    while not check():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.02)


# -- 1. a client's mistake is never the backend's failure ---------------------------------------------------------

CHAT_MISTAKES = [{"n": "two"}, {"n": [2]}, {"max_tokens": "5"}, {"max_completion_tokens": 0.5},
                 {"temperature": "hot"}, {"top_p": 7}, {"stop": {"a": 1}}, {"seed": "x"}, {"stream": "yes"},
                 {"presence_penalty": "x"}, {"logprobs": "yes"}]
EMBED_MISTAKES = [{"dimensions": "x"}, {"dimensions": [2]}, {"encoding_format": "hex"}]


@pytest.mark.parametrize(("path", "mistake"), [("/v1/chat/completions", m) for m in CHAT_MISTAKES]
                         + [("/v1/embeddings", m) for m in EMBED_MISTAKES], ids=lambda v: str(v))
def test_a_field_of_the_wrong_type_is_a_400_at_the_router_before_any_attempt(fresh, path, mistake):
    base = CHAT if path.endswith("completions") else {"model": "m", "input": ["abc"]}
    rid = "mistake-" + hashlib.sha1(json.dumps(mistake).encode()).hexdigest()[:12]
    r = post(fresh, {**base, **mistake}, path=path, rid=rid)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    assert next(iter(mistake)) in r.json()["error"]["message"]  # it names the field
    assert received(fresh) == 0 and not fresh["state"].dispatcher.breaker._states
    assert record(fresh["audit"], rid)["attempts"] == []


@pytest.fixture(scope="module")
def aws_fake():
    with fake_aws() as fake:
        yield fake


@pytest.fixture
def bedrock_stack(aws_fake, tmp_path):
    """A router whose deployment `emb` is a Bedrock Titan embeddings model and `chat` a Bedrock chat model, both
    reached through the AWS emulator by the real adapter."""
    aws_fake.requests.clear()
    place = Place("EU", "DE", "US", "amazon")
    backends = [Backend(id=f"{d}@aws-bedrock/eu-central-1", deployment=d, model=d, target="aws-bedrock/eu-central-1",
                        place=place, residency=EU, kind="aws-bedrock", address=address,
                        params={"region": "eu-central-1"})
                for d, address in (("emb", "amazon.titan-embed-text-v2:0"),
                                   ("chat", "mistral.mistral-7b-instruct-v0:2"))]
    state = RouterState(Dispatcher(RoutingTable.of(backends), backoff_s=0.0), tenants(),
                        {"aws-bedrock": BedrockClient(aws.AwsClients(connect_timeout_s=1.0, read_timeout_s=2.0))},
                        AuditLog(tmp_path / "audit.jsonl"), probe=False)
    url = aws_fake.url
    with aws_environ(aws_env(bedrock_runtime=url, bedrock=url)), ServerThread(create_app(state)) as router:
        yield {"url": router.url, "state": state, "fake": aws_fake, "audit": tmp_path / "audit.jsonl"}


def test_bad_bedrock_embeddings_never_open_the_breaker_every_tenant_shares(bedrock_stack):
    """Seen: three `dimensions: "x"` requests opened the shared breaker and every tenant got 503 for the cooldown."""
    for i in range(4):
        r = post(bedrock_stack, {"model": "emb", "input": ["a b"], "dimensions": "x"}, path="/v1/embeddings")
        assert r.status_code == 400, r.text
    assert bedrock_stack["fake"].requests == [] and not bedrock_stack["state"].dispatcher.breaker._states
    ok = post(bedrock_stack, {"model": "emb", "input": ["a b"], "dimensions": 4}, path="/v1/embeddings",
              key=QUIET_KEY)
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 4


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": [{"type": "text", "text": 5}]}],  # a text part that is not text: a TypeError
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],  # Bedrock's 400
], ids=["type-error", "untranslatable"])
def test_a_request_the_adapter_cannot_build_is_not_sent_and_not_the_backends_fault(bedrock_stack, messages):
    """Seen: an adapter's exception while building the request was a 500 with the attempt audited `cancelled`, as
    if the backend might hold the payload. Nothing left: the attempt is `not_sent`, the breaker untouched."""
    rid = "unbuildable-" + str(len(json.dumps(messages)))
    r = post(bedrock_stack, {"model": "chat", "messages": messages}, rid=rid)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    assert bedrock_stack["fake"].requests == [] and not bedrock_stack["state"].dispatcher.breaker._states
    assert attempts(record(bedrock_stack["audit"], rid)) == [("aws-bedrock/eu-central-1", "not_sent")]


# -- 2. per-tenant limits -------------------------------------------------------------------------------------------


def test_a_tenant_over_its_concurrency_limit_gets_429_and_the_others_are_still_served(fresh):
    fresh["fakes"]["paris"].delay_s = 1.0
    with cf.ThreadPoolExecutor(4) as pool:
        noisy = [pool.submit(post, fresh, CHAT) for _ in range(3)]
        time.sleep(0.3)  # the three are in flight (two at the backend, one refused at once)
        quiet = post(fresh, CHAT, key=QUIET_KEY)
        answers = [f.result() for f in noisy]
    assert quiet.status_code == 200
    assert sorted(a.status_code for a in answers) == [200, 200, 429]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "tenant_concurrency_limit"
    assert refused.json()["error"]["type"] == "rate_limit_error" and int(refused.headers["Retry-After"]) >= 1
    assert fresh["state"].limits.in_flight == {}


def _stream(stack, *, key=NOISY_KEY, rid=None, read_all=True) -> list[str]:
    headers = {"Authorization": f"Bearer {key}", **({"X-Request-Id": rid} if rid else {})}
    with httpx.stream("POST", stack["url"] + "/v1/chat/completions", headers=headers, timeout=10,
                      json={**CHAT, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        lines = []
        for line in r.iter_lines():
            if line:
                lines.append(line)
                if not read_all:
                    break
        return lines


def test_a_tenants_slot_is_freed_however_its_request_ends(fresh):
    """Answered, refused by the router, failed at every backend, a stream read whole, a stream the client left:
    after each the tenant is back to nothing in flight (its limit is 2, so one leak shows within two requests)."""
    state, fakes = fresh["state"], fresh["fakes"]

    def settled() -> bool:
        return state.limits.in_flight == {} and all(n == 0 for n in state.dispatcher.in_flight.values())

    endings = [
        lambda: post(fresh, CHAT),
        lambda: post(fresh, {**CHAT, "n": "two"}),
        lambda: post(fresh, {**CHAT, "model": "nope"}),
        lambda: _stream(fresh),
    ]
    for end in endings * 2:
        end()
        wait_until(settled)
    fakes["paris"].failing = fakes["frankfurt"].failing = True
    for _ in range(3):
        assert post(fresh, CHAT).status_code == 503
        wait_until(settled)
    fakes["paris"].failing = fakes["frankfurt"].failing = False
    state.dispatcher.breaker._states.clear()
    fakes["paris"].chunk_gap_s = 0.3
    for _ in range(3):  # the client reads the first event and leaves
        _stream(fresh, read_all=False)
        wait_until(settled)
    assert post(fresh, CHAT).status_code == 200


def test_a_tenants_slot_is_freed_when_the_streamed_response_cannot_start(stack, tmp_path):
    """The client is gone by the time the stream's response starts (the server's send raises): the body never
    runs, yet the tenant's slot, the backend's slot and the record are all settled."""
    state = RouterState(Dispatcher(stack["state"].dispatcher.table, backoff_s=0.0), tenants(),
                        {"openai-compatible": HttpClient()}, AuditLog(tmp_path / "audit.jsonl"), probe=False)
    app = create_app(state)
    body = json.dumps({**CHAT, "stream": True}).encode()

    async def one(rid: str) -> None:
        async def receive():
            return {"type": "http.request", "body": body}

        async def send(message):
            if message["type"] == "http.response.start":
                raise OSError("the client went away")

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
                 "raw_path": b"/v1/chat/completions", "root_path": "", "query_string": b"",
                 "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
                 "headers": [(b"content-type", b"application/json"), (b"x-request-id", rid.encode()),
                             (b"authorization", f"Bearer {NOISY_KEY}".encode())]}
        with contextlib.suppress(Exception):
            await app(scope, receive, send)

    async def scenario() -> None:
        client = state.clients["openai-compatible"]
        try:
            for i in range(3):  # more than the tenant's limit of 2: a leaked slot would refuse the third
                await one(f"no-start-{i}")
        finally:
            await client.aclose()

    asyncio.run(scenario())
    assert state.limits.in_flight == {} and set(state.dispatcher.in_flight.values()) == {0}
    for i in range(3):
        rec = record(tmp_path / "audit.jsonl", f"no-start-{i}")
        assert rec["status"] == 499 and attempts(rec) == [("paris", "cancelled")]


def test_a_stream_past_its_deadline_ends_with_an_error_event_and_a_timeout_attempt(fresh):
    d = fresh["state"].dispatcher
    d.stream_deadline_s = 0.5
    fresh["fakes"]["paris"].chunk_gap_s = 0.3  # three events: about 0.9 s in all
    lines = _stream(fresh, rid="deadline")
    last = json.loads(lines[-1][len("data: "):])
    assert last["error"]["code"] == "upstream_timeout" and "limit" in last["error"]["message"]
    assert "data: [DONE]" not in lines
    rec = record(fresh["audit"], "deadline")
    assert rec["status"] == 504 and attempts(rec) == [("paris", "timeout")]
    assert not d.breaker._states  # the router's own limit, not the backend's failure
    assert d.in_flight["m@paris"] == 0 and fresh["state"].limits.in_flight == {}


@pytest.fixture(scope="module")
def sagemaker_stack(aws_fake, tmp_path_factory):
    """Deployment `sm`: two SageMaker endpoints (Paris cheaper), reached through the AWS emulator."""
    backends = [Backend(id=f"sm@{t}", deployment="sm", model="sm", target=t, place=Place("EU", c, "US", "amazon"),
                        residency=EU, kind="aws-sagemaker", address=name, cost=cost, params={"region": region})
                for t, c, name, region, cost in (("sagemaker-paris", "FR", "sovra-paris", "eu-west-3", 0.1),
                                                 ("sagemaker-frankfurt", "DE", "sovra-fra", "eu-central-1", 1.0))]
    audit = tmp_path_factory.mktemp("sm") / "audit.jsonl"
    state = RouterState(Dispatcher(RoutingTable.of(backends), backoff_s=0.0), tenants(),
                        {"aws-sagemaker": SageMakerClient(aws.AwsClients(connect_timeout_s=1.0, read_timeout_s=2.0))},
                        AuditLog(audit), probe=False)
    url = aws_fake.url
    with aws_environ(aws_env(sagemaker_runtime=url, sagemaker=url)), ServerThread(create_app(state)) as router:
        yield {"url": router.url, "state": state, "fake": aws_fake, "audit": audit}


def test_requests_the_container_rejects_never_open_a_breaker(sagemaker_stack):
    """SageMaker's ModelError (424) carrying the container's 4xx is the request's fault: a 400 for the client, the
    breaker untouched. Seen as Failed: three such requests opened the breaker for every tenant."""
    fake, state = sagemaker_stack["fake"], sagemaker_stack["state"]
    fake.requests.clear()
    with fake.failing("model-rejected"):
        for _ in range(4):
            r = post(sagemaker_stack, {**CHAT, "model": "sm"})
            assert r.status_code == 400 and "422" in r.json()["error"]["message"], r.text
    assert len(fake.requests) == 4  # sent once each, never elsewhere
    assert not state.dispatcher.breaker._states
    assert post(sagemaker_stack, {**CHAT, "model": "sm"}, key=QUIET_KEY).headers["X-Sovra-Target"] == "sagemaker-paris"


def test_clients_that_leave_never_open_a_breaker(fresh):
    """Clients giving up on slow answers and streams: no verdict on the backend, whose circuit stays closed."""
    fresh["fakes"]["paris"].delay_s = 0.5
    for _ in range(4):
        with pytest.raises(httpx.TimeoutException):
            post(fresh, CHAT, key=QUIET_KEY, timeout=0.1)
    fresh["fakes"]["paris"].delay_s, fresh["fakes"]["paris"].chunk_gap_s = 0, 0.3
    for _ in range(4):
        _stream(fresh, key=QUIET_KEY, read_all=False)
    wait_until(lambda: fresh["state"].dispatcher.in_flight.get("m@paris") == 0 and not fresh["state"].limits.in_flight)
    assert not any(s.opened_at for s in fresh["state"].dispatcher.breaker._states.values())
    assert post(fresh, CHAT).headers["X-Sovra-Target"] == "paris"


# -- 3. bounds ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("inputs", "cap"), [(["a"] * 2049, "2048"), (["x" * 600_000] * 3, "1200000")],
                         ids=["count", "characters"])
def test_embeddings_input_is_capped_at_the_router(fresh, inputs, cap):
    r = post(fresh, {"model": "m", "input": inputs}, path="/v1/embeddings")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert cap in r.json()["error"]["message"] and received(fresh) == 0


@pytest.mark.parametrize("raw", [
    b"[" * 100_000,
    json.dumps({**CHAT, "tools": [{"type": "function", "parameters": {}}]}).encode().replace(
        b"{}", b"[" * 70 + b"]" * 70),
    b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
], ids=["100k-brackets", "70-deep", "nan"])
def test_a_body_too_deep_or_not_json_is_a_400_not_a_500(fresh, raw):
    r = post(fresh, raw)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    assert received(fresh) == 0


def test_an_upstream_4xx_says_only_fixed_words_to_the_client_and_the_trail(fresh):
    """Seen: a 200 kB `code` quoting the prompt was written into the audit's `outcome`."""
    quoted = "eu-secret-quoted " * 12_000
    for f in fresh["fakes"].values():
        f.status, f.error_body = 400, {"error": {"message": "bad\n" + quoted, "type": quoted, "code": quoted}}
    r = post(fresh, CHAT, rid="quoting")
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "upstream_rejected" and err["type"] == "invalid_request_error"
    assert len(err["message"]) <= 1000 and "\n" not in err["message"]
    rec = record(fresh["audit"], "quoting")
    assert rec["outcome"] == "upstream_rejected"
    assert "eu-secret-quoted" not in json.dumps(rec)
    known = {"error": {"message": "too long", "type": "invalid_request_error", "code": "context_length_exceeded"}}
    fresh["fakes"]["paris"].error_body = known
    assert post(fresh, CHAT).json()["error"]["code"] == "context_length_exceeded"  # OpenAI's own words pass


def test_a_sagemaker_stream_line_over_the_cap_breaks_the_stream(aws_fake):
    """SageMaker's response stream is read line by line like every other SSE source: a line over MAX_SSE_LINE is
    a broken container, not a buffer without end."""
    aws_fake.requests.clear()
    aws_fake.reply, aws_fake.part_size = "x" * (MAX_SSE_LINE + 10), 65_536
    b = Backend(id="sm@p", deployment="sm", model="sm", target="sagemaker-paris", place=Place("EU", "FR", "US", "a"),
                residency=EU, kind="aws-sagemaker", address="sovra-paris", params={"region": "eu-west-3"})

    async def go():
        stream = await SageMakerClient(aws.AwsClients(read_timeout_s=5.0)).chat_stream(b, CHAT)
        return [c async for c in stream]

    try:
        with aws_environ(aws_env(sagemaker_runtime=aws_fake.url)), pytest.raises(Failed, match="over"):
            asyncio.run(go())
    finally:
        aws_fake.reply, aws_fake.part_size = None, 7


def test_readyz_answers_from_its_last_view_while_serves_controller_is_slow(tmp_path):
    """Serve's controller answering in 30 s must not hold /readyz (a load balancer's probe times out long before)."""
    release = threading.Event()

    def slow_controller() -> dict[str, int]:
        release.wait(30)
        return {"sovra-m-paris": 1}

    table = RoutingTable.of([factories.backend("paris", Place("EU", "FR", "FR", "self"), address="sovra-m-paris")])
    state = RouterState(Dispatcher(table), TenantDirectory.of([]), {"ray": RayClient(ReplicaWatch(slow_controller))},
                        probe=False, ready_wait_s=0.3)
    try:
        with ServerThread(create_app(state)) as router:
            t0 = time.perf_counter()
            r = httpx.get(router.url + "/readyz", timeout=5)
            assert time.perf_counter() - t0 < 2
            assert r.status_code in (200, 503) and "status" in r.json()
    finally:
        release.set()


# -- 4. verdicts ----------------------------------------------------------------------------------------------------


def test_a_504_is_a_timeout_after_delivery_and_never_resent(fresh):
    fresh["fakes"]["paris"].status = 504
    r = post(fresh, CHAT, rid="gateway-timeout")
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout", r.text
    assert fresh["fakes"]["frankfurt"].received == []
    assert attempts(record(fresh["audit"], "gateway-timeout")) == [("paris", "timeout")]


def test_a_503_without_evidence_may_have_been_received_and_is_not_resent(fresh):
    fresh["fakes"]["paris"].status = 503
    r = post(fresh, CHAT, rid="bare-503")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error", r.text
    assert fresh["fakes"]["frankfurt"].received == []
    assert attempts(record(fresh["audit"], "bare-503")) == [("paris", "failed")]


@pytest.mark.parametrize("evidence", ["retry-after", "overloaded"])
def test_a_503_with_evidence_is_a_refusal_and_goes_to_another_backend(fresh, evidence):
    paris = fresh["fakes"]["paris"]
    if evidence == "retry-after":
        paris.status, paris.retry_after = 503, "2"
    else:
        paris.failing = True  # OpenAI's "The server is overloaded or not ready yet."
    r = post(fresh, CHAT, rid=f"refused-{evidence}")
    assert r.status_code == 200 and r.headers["X-Sovra-Target"] == "frankfurt"
    assert attempts(record(fresh["audit"], f"refused-{evidence}")) == [("paris", "refused"), ("frankfurt", "ok")]


@pytest.mark.parametrize(("fault", "verdict"), [("gateway_timeout", TimedOut), ("bare_unavailable", Failed),
                                                ("unavailable", Refused)])
def test_databricks_verdicts_need_evidence_for_a_refusal(fault, verdict, monkeypatch):
    """Databricks' own 503 (TEMPORARILY_UNAVAILABLE, with Retry-After) is a refusal; a gateway's bare 503 may have
    been received; a 504 is a timeout after delivery."""
    from sovra.providers.databricks.client import DatabricksClient

    with DatabricksEmulator() as workspace:
        monkeypatch.setenv("DATABRICKS_TOKEN", workspace.token)
        monkeypatch.setenv("DATABRICKS_CONFIG_FILE", "/nonexistent")
        name = next(iter(workspace.endpoints))
        b = Backend(id="d@dbx", deployment="d", model="d", target="dbx", place=Place("EU", "IE", "US", "databricks"),
                    residency=EU, kind="databricks", address=name, params={"host": workspace.host})
        workspace.fault = fault

        async def go():
            client = DatabricksClient()
            try:
                return await client.chat(b, CHAT)
            finally:
                await client.aclose()

        with pytest.raises(verdict) as err:
            asyncio.run(go())
    assert type(err.value) is verdict and err.value.resend is (verdict is Refused)
    assert len(workspace.received) == 1


def test_sagemaker_container_statuses_become_verdicts(aws_fake):
    """ModelError's OriginalStatusCode: a container's 4xx is the request's 400; its 5xx may have been processed."""
    b = Backend(id="sm@p", deployment="sm", model="sm", target="sagemaker-paris", place=Place("EU", "FR", "US", "a"),
                residency=EU, kind="aws-sagemaker", address="sovra-paris", params={"region": "eu-west-3"})
    with aws_environ(aws_env(sagemaker_runtime=aws_fake.url)):
        for fault, kind in (("model-rejected", BadRequest), ("model-error", Failed)):
            with aws_fake.failing(fault), pytest.raises(kind):
                asyncio.run(SageMakerClient(aws.AwsClients()).chat(b, CHAT))



def test_a_proxys_html_4xx_is_the_requests_refusal_not_the_backends_failure(fresh):
    """A front proxy refusing one tenant's request with an HTML page (nginx's 413 for a body over its limit) is that
    request's answer; counted against the breaker, three of them would eject the backend for every tenant."""
    paris = fresh["fakes"]["paris"]
    paris.status, paris.error_html = 413, "<html><body><h1>413 Request Entity Too Large</h1></body></html>"
    for i in range(4):
        r = post(fresh, CHAT, rid=f"html-413-{i}")
        assert r.status_code == 413 and r.json()["error"]["code"] == "upstream_rejected", r.text
        assert not fresh["fakes"]["frankfurt"].received  # the backend refused the request itself: not resent
    assert not fresh["state"].dispatcher.breaker.any_open()
    paris.status, paris.error_html = None, None
    r = post(fresh, CHAT, key=QUIET_KEY)
    assert r.status_code == 200 and r.headers["x-sovra-target"] == "paris"  # still in service for everyone
