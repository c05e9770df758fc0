"""The router app at the ASGI level, as Ray Serve calls it (no HTTP server): the payload routes' own path, a client
that leaves before its body is read, a mount point, and the routes that stay on Starlette."""

import asyncio
import hashlib
import json

from sovra.orchestrator.router.app import RouterState, create_app
from sovra.orchestrator.router.audit import AuditLog, read
from sovra.core.backends import RoutingTable
from sovra.providers.clients import BackendClient
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.orchestrator.router.tenants import TenantDirectory
from sovra.core.spec import Residency
from sovra.core.spec.org import Tenant
from sovra.core.place import Place
from tests import factories

KEY = "sk-test-asgi"
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "héllo"}]}).encode()


class Echo(BackendClient):
    """Answers at once, naming the backend; counts what it received."""

    def __init__(self):
        self.received = []

    async def chat(self, backend, body):
        self.received.append(body)
        return {"choices": [{"message": {"role": "assistant", "content": f"from {backend.target} ✓"}}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 3}}

    async def chat_stream(self, backend, body):
        raise NotImplementedError

    async def embed(self, backend, body):
        self.received.append(body)
        return {"data": [{"embedding": [0.0]}], "usage": {"prompt_tokens": 1}}


def make(tmp_path):
    client = Echo()
    table = RoutingTable.of([factories.backend("paris", Place("EU", "FR", "FR", "self"))])
    tenants = TenantDirectory.of([Tenant(name="eu", key_sha256=hashlib.sha256(KEY.encode()).hexdigest(),
                                         residency=Residency(zones=("EU",)))])
    state = RouterState(Dispatcher(table), tenants, {"ray": client}, AuditLog(tmp_path / "audit.jsonl"), probe=False)
    return create_app(state), client


def call(app, path="/v1/chat/completions", method="POST", messages=None, root_path="", headers=None):
    """One ASGI request; returns (status or None, headers, body) of what the app sent."""
    messages = list(messages if messages is not None else [{"type": "http.request", "body": BODY}])
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # as a server does: nothing more until the client acts

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": root_path, "query_string": b"",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
             "headers": headers if headers is not None else [(b"content-type", b"application/json"),
                                                             (b"authorization", f"Bearer {KEY}".encode())]}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return (start["status"] if start else None), dict(start["headers"]) if start else {}, body


def test_a_chat_answer_is_json_with_its_length_type_and_where_it_was_served(tmp_path):
    app, client = make(tmp_path)
    status, headers, body = call(app)
    assert status == 200
    assert json.loads(body)["choices"][0]["message"]["content"] == "from paris ✓"
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body)
    assert headers[b"x-sovra-target"] == b"paris" and headers[b"x-sovra-zone"] == b"EU"
    assert float(headers[b"x-sovra-overhead-ms"]) >= 0
    [rec] = read(tmp_path / "audit.jsonl")
    assert (rec["status"], rec["target"], rec["tenant"], rec["completion_tokens"]) == (200, "paris", "eu", 3)


def test_a_body_in_several_parts_is_joined(tmp_path):
    app, client = make(tmp_path)
    parts = [{"type": "http.request", "body": BODY[:10], "more_body": True},
             {"type": "http.request", "body": BODY[10:], "more_body": False}]
    assert call(app, messages=parts)[0] == 200
    assert client.received[0]["messages"][0]["content"] == "héllo"


def test_a_client_gone_before_its_body_arrived_gets_no_answer_and_a_cancelled_record(tmp_path):
    app, client = make(tmp_path)
    parts = [{"type": "http.request", "body": BODY[:10], "more_body": True}, {"type": "http.disconnect"}]
    status, _, _ = call(app, messages=parts)
    assert status is None and client.received == []  # nothing was sent anywhere
    [rec] = read(tmp_path / "audit.jsonl")
    assert rec["status"] == 499 and rec["outcome"] == "cancelled" and rec["attempts"] == []


def test_the_payload_routes_answer_below_a_mount_point(tmp_path):
    app, _ = make(tmp_path)
    status, _, body = call(app, path="/sovra/v1/chat/completions", root_path="/sovra")
    assert status == 200 and json.loads(body)["choices"]
    status, _, body = call(app, path="/sovra/v1/embeddings", root_path="/sovra",
                           messages=[{"type": "http.request", "body": b'{"model": "m", "input": "x"}'}])
    assert status == 200 and json.loads(body)["data"]


def test_other_methods_paths_and_a_missing_key_keep_their_openai_errors(tmp_path):
    app, client = make(tmp_path)
    status, _, body = call(app, method="GET")
    assert status == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"
    status, _, body = call(app, path="/v1/images/generations")  # a surface Sovra does not serve
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    status, _, body = call(app, headers=[(b"content-type", b"application/json")])
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    assert client.received == []


def test_the_first_of_repeated_headers_counts_as_starlette_reads_it(tmp_path):
    app, _ = make(tmp_path)
    good, bad = f"Bearer {KEY}".encode(), b"Bearer sk-wrong"
    assert call(app, headers=[(b"authorization", good), (b"authorization", bad)])[0] == 200
    assert call(app, headers=[(b"authorization", bad), (b"authorization", good)])[0] == 401
