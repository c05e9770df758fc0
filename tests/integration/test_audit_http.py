"""The audit trail read through the router over real HTTP, by admins only, and `sovra audit` against a router and
against a file. No Ray: a Starlette app holding only the audit routes, served by uvicorn on 127.0.0.1."""

import hashlib
import json

import httpx
import pytest
from starlette.applications import Starlette

from orchestrator.router.audit import Attempt, AuditLog, AuditRecord
from orchestrator.router.audit_api import audit_routes
from orchestrator.spec.common import Residency
from orchestrator.spec.org import Admin, Tenant
from tests.fakes.openai_backend import ServerThread

ADMIN_KEY, TENANT_KEY = "sk-admin-dpo", "sk-tenant-bank"
ADMIN = Admin(name="dpo", key_sha256=hashlib.sha256(ADMIN_KEY.encode()).hexdigest())
TENANT = Tenant(name="bank", key_sha256=hashlib.sha256(TENANT_KEY.encode()).hexdigest(),
                residency=Residency(zones=("EU",)))
FAILOVER = (Attempt("onprem-paris", "EU", "FR", "failed"), Attempt("onprem-lyon", "EU", "FR", "ok"))


def record(i: int, tenant: str, attempts=FAILOVER, status=200) -> AuditRecord:
    return AuditRecord(time=f"2026-11-22T10:00:{i:02d}.000+00:00", request_id=f"r{i}", tenant=tenant,
                       deployment="support", model="m", residency="zones [EU]", attempts=attempts,
                       status=status, outcome="ok", latency_ms=10.0)


@pytest.fixture
def trail(tmp_path):
    log = AuditLog(tmp_path / "router.jsonl")
    log.write(record(0, "bank"))
    log.write(record(1, "retail", attempts=(Attempt("onprem-virginia", "US", "US", "ok"),)))
    log.write(record(2, "bank"))
    yield log
    log.close()


def serve(log, admins=(ADMIN,), *, open_router=False):
    return ServerThread(Starlette(routes=audit_routes(log, admins, open_router=open_router, tenants=[TENANT])))


def get(url, path, key=None, **params):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(url + path, params=params, headers=headers, timeout=10)


def error_code(r: httpx.Response) -> str:
    body = r.json()["error"]
    assert set(body) >= {"message", "type", "code"}
    return body["code"]


def tamper(log: AuditLog, request_id: str) -> None:
    text = log.path.read_text().splitlines(keepends=True)
    text = [x.replace('"latency_ms":10.0', '"latency_ms":1.0') if f'"request_id":"{request_id}"' in x else x
            for x in text]
    log.path.write_text("".join(text))


def test_an_admin_reads_the_filtered_trail_and_its_torn_count(trail):
    with trail.path.open("ab") as fh:
        fh.write(b'{"request_id":"half')  # a crash mid-write; the next record starts a new line
    trail.close()
    log = AuditLog(trail.path)
    log.write(record(3, "bank"))
    with serve(log) as server:
        r = get(server.url, "/v1/audit", ADMIN_KEY, tenant="bank", limit=2)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["torn"] == 1 and data["file"] == str(log.path)
        assert [x["request_id"] for x in data["records"]] == ["r2", "r3"]  # the newest two, oldest first
        assert [a["outcome"] for a in data["records"][0]["attempts"]] == ["failed", "ok"]
        us = get(server.url, "/v1/audit", ADMIN_KEY, zone="US").json()["records"]
        assert [x["request_id"] for x in us] == ["r1"]
        assert error_code(get(server.url, "/v1/audit", ADMIN_KEY, tennant="bank")) == "invalid_request"
        bad = get(server.url, "/v1/audit", ADMIN_KEY, since="last tuesday")
        assert bad.status_code == 400 and "since" in bad.json()["error"]["message"]


def test_a_tenant_key_cannot_read_the_trail_and_no_key_is_401(trail):
    with serve(trail) as server:
        for path in ("/v1/audit", "/v1/audit/verify"):
            tenant = get(server.url, path, TENANT_KEY)
            assert tenant.status_code == 403 and error_code(tenant) == "admin_key_required"
            assert "r0" not in tenant.text
            nobody = get(server.url, path)
            assert nobody.status_code == 401 and error_code(nobody) == "invalid_api_key"
            wrong = get(server.url, path, "sk-guess")
            assert wrong.status_code == 401


def test_without_admins_the_trail_is_closed_unless_the_router_is_open(trail):
    with serve(trail, admins=()) as server:
        r = get(server.url, "/v1/audit", TENANT_KEY)
        assert r.status_code == 403 and error_code(r) == "no_admins_configured"
        assert "add `admins" in r.json()["error"]["message"] and "org.yaml" in r.json()["error"]["message"]
    with serve(trail, admins=(), open_router=True) as server:  # no tenants, loopback only by design
        assert get(server.url, "/v1/audit").status_code == 200


def test_verify_over_http_names_the_first_broken_record(trail):
    with serve(trail) as server:
        ok = get(server.url, "/v1/audit/verify", ADMIN_KEY).json()
        assert ok["ok"] and ok["records"] == 3 and ok["from_start"]
        tamper(trail, "r1")
        broken = get(server.url, "/v1/audit/verify", ADMIN_KEY).json()
        assert not broken["ok"]
        assert broken["broken"] == {"file": "router.jsonl", "line": 2, "request_id": "r1", "problem": "edited",
                                    "detail": "its hash does not match its content"}


def test_the_router_notices_records_cut_from_the_end(trail):
    with serve(trail) as server:
        kept = trail.path.read_bytes().splitlines(keepends=True)[:-1]
        trail.path.write_bytes(b"".join(kept))
        cut = get(server.url, "/v1/audit/verify", ADMIN_KEY).json()
        assert not cut["ok"] and cut["broken"]["problem"] == "truncated"


# -- `sovra audit` over the console script ------------------------------------------------------------------------

def test_cli_reads_the_trail_from_the_router_with_the_admin_key_from_the_environment(trail, sovra, monkeypatch):
    monkeypatch.delenv("SOVRA_ADMIN_KEY", raising=False)
    with serve(trail) as server:
        refused = sovra("audit", "--router", server.url)
        assert refused.returncode == 1 and "$SOVRA_ADMIN_KEY, which is not set" in refused.stderr
        monkeypatch.setenv("SOVRA_ADMIN_KEY", TENANT_KEY)
        tenant = sovra("audit", "--router", server.url)
        assert tenant.returncode == 1 and "a tenant key cannot read the audit trail" in tenant.stderr
        monkeypatch.setenv("SOVRA_ADMIN_KEY", ADMIN_KEY)
        table = sovra("audit", "--router", server.url, "--tenant", "bank")
        assert table.returncode == 0, table.stderr
        assert "onprem-paris:failed → onprem-lyon:ok" in table.stdout and "r1" not in table.stdout
        assert f"2 record(s) from {server.url}" in table.stdout
        monkeypatch.delenv("SOVRA_ADMIN_KEY")
        monkeypatch.setenv("DPO_KEY", ADMIN_KEY)
        as_json = sovra("audit", "--router", server.url, "--admin-key-env", "DPO_KEY", "--zone", "US", "-o", "json")
        assert as_json.returncode == 0, as_json.stderr
        assert [r["request_id"] for r in json.loads(as_json.stdout)] == ["r1"]
        intact = sovra("audit", "verify", "--router", server.url, "--admin-key-env", "DPO_KEY")
        assert intact.returncode == 0 and "chain intact: 3 record(s)" in intact.stdout
        tamper(trail, "r2")
        broken = sovra("audit", "verify", "--router", server.url, "--admin-key-env", "DPO_KEY")
        assert broken.returncode == 1 and "line 3 (request r2): edited" in broken.stdout


def test_cli_reads_and_verifies_a_local_file(trail, sovra):
    trail.close()
    with trail.path.open("ab") as fh:
        fh.write(b'{"request_id":"half')
    AuditLog(trail.path).write(record(3, "bank"))
    table = sovra("audit", "--file", trail.path, "--deployment", "support", "-n", "3")
    assert table.returncode == 0, table.stderr
    assert "3 record(s) from" in table.stdout and "1 torn line(s) skipped" in table.stdout
    assert "r0" not in table.stdout and "onprem-virginia:ok" in table.stdout
    intact = sovra("audit", "verify", "--file", trail.path, "-o", "json")
    assert intact.returncode == 0 and json.loads(intact.stdout)["torn"] == 1
    tamper(trail, "r0")
    broken = sovra("audit", "verify", "--file", trail.path)
    assert broken.returncode == 1 and "router.jsonl line 1 (request r0): edited" in broken.stdout
    missing = sovra("audit", "verify", "--file", trail.path.with_name("none.jsonl"))
    assert missing.returncode == 1 and "no audit trail at" in missing.stderr
