"""OpenTelemetry traces over the real path (issue 22): the router on uvicorn, its HTTP client reaching fake
OpenAI-compatible servers, spans to the SDK's in-memory exporter, and once through the OTLP/HTTP exporter to a local
collector stand-in that decodes the protobuf with OpenTelemetry's own `opentelemetry-proto` messages.

Checked: the span tree (one SERVER span per request, one CLIENT span per attempt under it), GenAI and Sovra attributes
for a chat, a stream, a failover and a 503; the W3C context each backend received is its attempt's span; a caller's
`traceparent` is continued; no prompt canary or key in anything exported.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sovra.core.backends import RoutingTable
from sovra.core.place import Place
from sovra.core.spec import Residency
from sovra.core.spec.org import Tenant
from sovra.orchestrator.router.app import RouterState, create_app
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.orchestrator.router.health import Breaker
from sovra.orchestrator.router.tenants import TenantDirectory
from sovra.orchestrator.router.tracing import Tracing
from sovra.providers.clients import HttpClient
from tests import factories
from tests.fakes.openai_backend import FakeBackend, ServerThread

pytestmark = pytest.mark.integration
KEY = "sk-trace-tenant-key"
CANARY = "canary-3b1f0e-never-in-a-span"


def _backends(servers):
    places = {"paris": Place("EU", "FR", "FR", "self"), "frankfurt": Place("EU", "DE", "DE", "self")}
    out = []
    for name, cost in (("paris", 1.0), ("frankfurt", 2.0)):
        b = factories.backend(name, places[name], cost=cost, kind="openai-compatible", address=servers[name].url)
        out.append(b.model_copy(update={"params": {"served_model": "mistral-small"}, "usd_per_1k_tokens": 0.5}))
    return out


@pytest.fixture(scope="module")
def stack():
    fakes = {"paris": FakeBackend("paris"), "frankfurt": FakeBackend("frankfurt")}
    servers = {n: ServerThread(f.app()).__enter__() for n, f in fakes.items()}
    exporter = InMemorySpanExporter()
    tenants = TenantDirectory.of([Tenant(name="bank", key_sha256=hashlib.sha256(KEY.encode()).hexdigest(),
                                         residency=Residency(zones=("EU",)))])
    state = RouterState(Dispatcher(RoutingTable.of(_backends(servers)), backoff_s=0.0), tenants,
                        {"openai-compatible": HttpClient()}, probe=False,
                        tracing=Tracing.with_exporter(exporter, batch=False))
    router = ServerThread(create_app(state)).__enter__()
    with httpx.Client(base_url=router.url, timeout=10) as http:
        yield {"http": http, "fakes": fakes, "exporter": exporter, "state": state}
    router.__exit__()
    for s in servers.values():
        s.__exit__()


@pytest.fixture(autouse=True)
def fresh(stack):
    for f in stack["fakes"].values():
        f.failing, f.model_name = False, None
    stack["state"].dispatcher.breaker = Breaker()
    stack["exporter"].clear()
    yield


def chat(stack, *, stream: bool = False, **headers: str) -> httpx.Response:
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": f"hello {CANARY}"}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return stack["http"].post("/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {KEY}", **headers})


def tree(stack):
    spans = stack["exporter"].get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    assert len(servers) == 1, [s.name for s in spans]
    root = servers[0]
    attempts = sorted((s for s in spans if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time)
    assert len(spans) == 1 + len(attempts)
    for a in attempts:
        assert a.parent.span_id == root.context.span_id and a.context.trace_id == root.context.trace_id
    return root, attempts


def _no_secrets(stack):
    dump = json.dumps([json.loads(s.to_json()) for s in stack["exporter"].get_finished_spans()])
    assert CANARY not in dump and KEY not in dump and "hello" not in dump


def test_a_chat_is_one_server_span_with_its_attempt_under_it(stack):
    r = chat(stack)
    assert r.status_code == 200
    root, (attempt,) = tree(stack)
    assert root.name == "chat m"
    a = root.attributes
    assert (a["gen_ai.operation.name"], a["gen_ai.request.model"], a["gen_ai.response.model"]) == (
        "chat", "m", "mistral-small")
    assert (a["sovra.tenant"], a["sovra.deployment"], a["sovra.target"], a["sovra.zone"], a["sovra.country"]) == (
        "bank", "m", "paris", "EU", "FR")
    assert (a["sovra.outcome"], a["http.response.status_code"]) == ("ok", 200)
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (3, 2)
    assert a["sovra.cost_usd"] == pytest.approx(5 * 0.5 / 1000)
    b = attempt.attributes
    assert attempt.name == "chat m" and b["gen_ai.system"] == "openai" and b["sovra.target"] == "paris"
    assert b["sovra.outcome"] == "ok" and b["gen_ai.usage.output_tokens"] == 2
    # the backend got this attempt's W3C context: same trace, this span as parent
    tp = stack["fakes"]["paris"].traceparent[-1]
    assert tp.startswith(f"00-{attempt.context.trace_id:032x}-{attempt.context.span_id:016x}-")  # then its flags
    _no_secrets(stack)


def test_a_stream_ends_its_spans_with_the_streams_usage(stack):
    r = chat(stack, stream=True)
    assert r.status_code == 200 and "[DONE]" in r.text
    root, (attempt,) = tree(stack)
    assert root.attributes["sovra.outcome"] == "ok" and attempt.attributes["sovra.outcome"] == "ok"
    assert root.attributes["gen_ai.usage.output_tokens"] == 2
    _no_secrets(stack)


def test_a_failover_is_two_attempt_spans(stack):
    stack["fakes"]["paris"].failing = True  # refuses (503 overloaded): resent to the next allowed backend
    r = chat(stack)
    assert r.status_code == 200 and r.headers["x-sovra-target"] == "frankfurt"
    root, attempts = tree(stack)
    assert [(s.attributes["sovra.target"], s.attributes["sovra.outcome"]) for s in attempts] == [
        ("paris", "refused"), ("frankfurt", "ok")]
    assert attempts[0].status.status_code == StatusCode.ERROR and attempts[0].attributes["error.type"] == "refused"
    assert root.attributes["sovra.target"] == "frankfurt" and root.status.status_code != StatusCode.ERROR
    _no_secrets(stack)


def test_a_503_is_an_error_span_naming_why(stack):
    for f in stack["fakes"].values():
        f.failing = True
    r = chat(stack)
    assert r.status_code == 503
    root, attempts = tree(stack)
    assert attempts and all(s.attributes["sovra.outcome"] == "refused" for s in attempts)
    assert root.status.status_code == StatusCode.ERROR
    assert root.attributes["http.response.status_code"] == 503
    assert root.attributes["error.type"] == root.attributes["sovra.outcome"] != "ok"
    _no_secrets(stack)


def test_a_callers_trace_is_continued(stack):
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert chat(stack, traceparent=parent).status_code == 200
    root, _ = tree(stack)
    assert f"{root.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{root.parent.span_id:016x}" == "b7ad6b7169203331"


def test_the_caller_neither_forwards_its_tracestate_nor_decides_the_sampling(stack):
    """A caller's `tracestate` is its own free text (up to 32 members): forwarded, it would reach every backend (and
    could make a shared one refuse the router's requests); its sampling flag would switch the operator's traces off."""
    unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    r = chat(stack, traceparent=unsampled, tracestate="acme=" + "x" * 240 + ",other=caller-data")
    assert r.status_code == 200
    root, (attempt,) = tree(stack)  # recorded all the same
    assert f"{root.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"  # still the caller's trace
    assert stack["fakes"]["paris"].tracestate[-1] is None
    assert stack["fakes"]["paris"].traceparent[-1].endswith("-01")


def test_strangers_make_no_spans_and_a_backends_model_text_is_not_shipped(stack):
    r = stack["http"].post("/v1/chat/completions", json={"model": "m", "messages": []},
                           headers={"Authorization": "Bearer sk-nobody"})
    assert r.status_code == 401 and not stack["exporter"].get_finished_spans()
    stack["fakes"]["paris"].model_name = f"a model, then the answer's text: {CANARY} " * 100
    assert chat(stack).status_code == 200
    root, (attempt,) = tree(stack)
    assert "gen_ai.response.model" not in root.attributes and "gen_ai.response.model" not in attempt.attributes
    _no_secrets(stack)


def test_tracing_is_off_unless_the_environment_says_where_spans_go():
    assert Tracing.from_env({}) is None
    assert Tracing.from_env({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}) is None
    assert Tracing.from_env({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) is None
    assert Tracing.from_env({"OTEL_TRACES_EXPORTER": "zipkin"}) is None  # not one Sovra builds: logged, off
    assert isinstance(Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"}), Tracing)


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: `POST /v1/traces` with an ExportTraceServiceRequest (protobuf), as the OTLP
    specification defines it (opentelemetry-proto's collector/trace/v1 service)."""

    received: list[tuple[str, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_spans_reach_an_otlp_collector_over_http(stack, monkeypatch):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    server = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "sovra-router-test")
        tracing = Tracing.from_env()
        assert tracing is not None
        state = stack["state"]
        previous, state.tracing = state.tracing, tracing
        try:
            assert chat(stack).status_code == 200
        finally:
            state.tracing = previous
        tracing.close()  # flushes the batch
    finally:
        server.shutdown()
    assert _Collector.received and all(path == "/v1/traces" for path, _ in _Collector.received)
    names, raw = [], b"".join(body for _, body in _Collector.received)
    for _, body in _Collector.received:
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
            assert service == "sovra-router-test"
            names += [s.name for scope in resource.scope_spans for s in scope.spans]
    assert sorted(names) == ["chat m", "chat m"]
    assert CANARY.encode() not in raw and KEY.encode() not in raw
