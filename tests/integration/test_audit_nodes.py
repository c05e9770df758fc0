"""The trail of router replicas on several nodes, read whole through any one of them (issue 20): two nodes' trails
as two directories (each with its own checkpoint key), the other node reached by the real per-node operation
(`audit_nodes.node_op`, what the Ray task runs there), the audit routes served over HTTP. The Ray transport itself
is covered on a real two-node Ray in test_router_ha.py."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from starlette.applications import Starlette

from sovra.core.spec.org import Admin
from sovra.orchestrator.router.audit import Attempt, AuditLog, AuditRecord
from sovra.orchestrator.router.audit_api import audit_routes
from sovra.orchestrator.router.audit_nodes import NodePart, node_op
from sovra.orchestrator.router.audit_sign import Signer
from tests.fakes.openai_backend import ServerThread

pytestmark = pytest.mark.integration
ADMIN_KEY = "sk-audit-nodes-admin"
ADMIN = Admin(name="auditor", key_sha256=hashlib.sha256(ADMIN_KEY.encode()).hexdigest())


def record(i: int, target: str) -> AuditRecord:
    return AuditRecord(time=f"2026-12-07T10:00:{i:02d}.000+00:00", request_id=f"r{i}", tenant="bank",
                       deployment="support", model="m", residency="zones [EU]",
                       attempts=(Attempt(target, "EU", "FR", "ok"),), status=200, outcome="ok", latency_ms=1.0)


@pytest.fixture
def nodes(tmp_path):
    """Node A (this replica: `router-a`) and node B (`router-b`), each with its own home: trail and key."""
    a, b = AuditLog(tmp_path / "a" / "audit", writer="router-a"), AuditLog(tmp_path / "b" / "audit", writer="router-b")
    for i in range(0, 10, 2):
        a.write(record(i, "paris"))
        b.write(record(i + 1, "lyon"))
    signers = {"a": Signer(tmp_path / "a" / "keys"), "b": Signer(tmp_path / "b" / "keys")}
    yield {"a": a, "b": b, "signers": signers, "dir": tmp_path, "down": set()}
    a._close()
    b._close()


def serve(nodes, here: str = "a", other: str = "b"):
    """The audit routes of the replica on node `here`, whose fan-out reaches node `other`."""

    def fan_out(op, args):
        if other in nodes["down"]:
            return [NodePart(other, error="no answer within 20 s")]
        return [NodePart(other, node_op(str(nodes["dir"] / other / "audit"), op, args))]

    log = nodes[here]
    return ServerThread(Starlette(routes=audit_routes(log, [ADMIN], open_router=False, signer=nodes["signers"][here],
                                                      fan_out=fan_out)))


def call(server, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, server.url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10, **kw)


def test_records_come_from_every_nodes_chain_in_time_order(nodes):
    with serve(nodes) as a, serve(nodes, "b", "a") as b:
        for server in (a, b):  # whichever replica answers
            body = call(server, "GET", "/v1/audit", params={"limit": 6}).json()
            assert [r["request_id"] for r in body["records"]] == ["r4", "r5", "r6", "r7", "r8", "r9"]
            assert {r["writer"] for r in body["records"]} == {"router-a", "router-b"} and not body["incomplete"]


def test_a_directory_two_nodes_share_is_counted_once(nodes):
    with ServerThread(Starlette(routes=audit_routes(nodes["a"], [ADMIN], open_router=False, fan_out=lambda op, args: [
            NodePart("twin", node_op(str(nodes["a"].path), op, args))]))) as server:
        body = call(server, "GET", "/v1/audit", params={"limit": 100}).json()
    assert [r["request_id"] for r in body["records"]] == ["r0", "r2", "r4", "r6", "r8"]


def test_verify_checks_every_nodes_chains_and_a_checkpoint_from_either_router(nodes):
    with serve(nodes) as a, serve(nodes, "b", "a") as b:
        result = call(a, "GET", "/v1/audit/verify").json()
        assert result["ok"] and [c["writer"] for c in result["chains"]] == ["router-a", "router-b"]
        checkpoint = call(b, "GET", "/v1/audit/checkpoint").json()  # signed by node B's key
        assert {h["writer"] for h in checkpoint["heads"]} == {"router-a", "router-b"}
        for server in (a, b):  # verifies on node A's router too
            result = call(server, "POST", "/v1/audit/verify", content=json.dumps(checkpoint)).json()
            assert result["ok"] and result["checkpoint"], result


def test_an_edit_on_the_other_node_and_its_removed_chain_are_caught(nodes):
    with serve(nodes) as a:
        checkpoint = call(a, "GET", "/v1/audit/checkpoint").json()
        segment = next((nodes["dir"] / "b" / "audit").glob("router-b-*.jsonl"))
        edited = segment.read_text().replace('"target":"lyon"', '"target":"tokyo"', 1)
        segment.write_text(edited)
        result = call(a, "GET", "/v1/audit/verify").json()
        assert not result["ok"] and "router-b" in result["message"] and "edited" in json.dumps(result)
        segment.unlink()
        result = call(a, "POST", "/v1/audit/verify", content=json.dumps(checkpoint)).json()
        assert not result["ok"] and "no node of the cluster holds a segment of it" in json.dumps(result)


def test_a_node_that_does_not_answer_makes_every_answer_say_so(nodes):
    nodes["down"].add("b")
    with serve(nodes) as a:
        body = call(a, "GET", "/v1/audit").json()
        assert body["incomplete"].startswith("incomplete: b: no answer") and len(body["records"]) == 5
        result = call(a, "GET", "/v1/audit/verify").json()
        assert not result["ok"] and "node b did not answer" in result["message"]
        r = call(a, "GET", "/v1/audit/checkpoint")
        assert r.status_code == 503 and r.json()["error"]["code"] == "audit_incomplete"


def test_a_checkpoint_signed_by_a_key_of_no_router_of_the_cluster_is_refused(nodes, tmp_path):
    stranger = Signer(tmp_path / "stranger")
    with serve(nodes) as a:
        heads = call(a, "GET", "/v1/audit/checkpoint").json()["heads"]
        from sovra.orchestrator.router.audit_chain import Head

        forged = stranger.sign([Head.of(h) for h in heads], time="2026-12-07T10:00:00Z")
        r = call(a, "POST", "/v1/audit/verify", content=json.dumps(forged))
        assert r.status_code == 400 and "no router of this cluster holds it" in r.text
