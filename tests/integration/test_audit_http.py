"""The audit trail read through the router over real HTTP, by admins only, and `sovra audit` against a router and
against a file. No Ray: a Starlette app holding only the audit routes, served by uvicorn on 127.0.0.1."""

import hashlib
import json
import stat
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from sovra.infra.ray_cluster import free_port
from sovra.orchestrator.router.audit import Attempt, AuditLog, AuditRecord
from sovra.orchestrator.router.audit_api import audit_routes
from sovra.orchestrator.router.audit_sign import Signer
from sovra.core.spec.common import Residency
from sovra.core.spec.org import Admin, Tenant
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
    log = AuditLog(tmp_path / "audit", writer="router-a")
    log.write(record(0, "bank"))
    log.write(record(1, "retail", attempts=(Attempt("onprem-virginia", "US", "US", "ok"),)))
    log.write(record(2, "bank"))
    yield log
    log._close()


def serve(log, admins=(ADMIN,), *, open_router=False, keys=None, port=0):
    signer = Signer(keys or log.path.parent / "keys")
    return ServerThread(Starlette(routes=audit_routes(log, admins, open_router=open_router, tenants=[TENANT],
                                                      signer=signer)), port=port)


def get(url, path, key=None, **params):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(url + path, params=params, headers=headers, timeout=10)


def error_code(r: httpx.Response) -> str:
    body = r.json()["error"]
    assert set(body) >= {"message", "type", "code"}
    return body["code"]


def segment(log: AuditLog) -> Path:
    return sorted(log.path.glob(f"{log.writer}-*.jsonl"))[-1]


def tamper(log: AuditLog, request_id: str) -> None:
    f = segment(log)
    text = f.read_text().splitlines(keepends=True)
    text = [x.replace('"latency_ms":10.0', '"latency_ms":1.0') if f'"request_id":"{request_id}"' in x else x
            for x in text]
    f.write_text("".join(text))


def cut_last(log: AuditLog) -> None:
    f = segment(log)
    f.write_bytes(b"".join(f.read_bytes().splitlines(keepends=True)[:-1]))


def test_an_admin_reads_the_filtered_trail_and_its_torn_count(trail):
    with segment(trail).open("ab") as fh:
        fh.write(b'{"request_id":"half')  # a crash mid-write; the next record starts a new line
    trail._close()
    log = AuditLog(trail.path, writer="router-a")
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
        for path in ("/v1/audit", "/v1/audit/verify", "/v1/audit/checkpoint"):
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


def test_verify_over_http_names_the_writer_and_first_broken_seq(trail):
    with serve(trail) as server:
        ok = get(server.url, "/v1/audit/verify", ADMIN_KEY).json()
        assert ok["ok"] and ok["records"] == 3 and ok["chains"][0]["first_seq"] == 0
        assert "without a checkpoint this cannot prove" in ok["message"]
        tamper(trail, "r1")
        broken = get(server.url, "/v1/audit/verify", ADMIN_KEY).json()
        assert not broken["ok"]
        b = broken["chains"][0]["broken"]
        assert (b["writer"], b["line"], b["seq"], b["request_id"], b["problem"], b["detail"]) == (
            "router-a", 2, 1, "r1", "edited", "its hash does not match its content")


def test_the_router_notices_records_cut_from_the_end(trail):
    with serve(trail) as server:
        cut_last(trail)
        cut = get(server.url, "/v1/audit/verify", ADMIN_KEY).json()
        assert not cut["ok"] and cut["chains"][0]["broken"]["problem"] == "truncated"


def test_a_signed_checkpoint_over_http_proves_the_trail_still_extends_it(trail, tmp_path):
    with serve(trail) as server:
        cp = get(server.url, "/v1/audit/checkpoint", ADMIN_KEY).json()
        assert cp["public_key"].startswith("ed25519:") and [h["seq"] for h in cp["heads"]] == [2]
        post = lambda body: httpx.post(server.url + "/v1/audit/verify", content=json.dumps(body),  # noqa: E731
                                       headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
        trail.write(record(3, "bank"))
        extended = post(cp).json()
        assert extended["ok"] and extended["checkpoint"], extended
        forged = {**cp, "heads": [{**cp["heads"][0], "seq": 1}]}
        assert post(forged).status_code == 400 and "signature does not hold" in post(forged).text
        trail._close()
        cut_last(trail)
        cut_last(trail)  # back past the checkpoint; a new writer under the same name continues from the cut
        AuditLog(trail.path, writer="router-a").write(record(4, "bank"))
        result = post(cp).json()
        assert not result["ok"] and result["problems"][0]["problem"] == "not_extended"
    with serve(trail, keys=tmp_path / "other-keys") as other:  # another router's key proves nothing here
        r = httpx.post(other.url + "/v1/audit/verify", content=json.dumps(cp),
                       headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
        assert r.status_code == 400 and "not by this trail's router" in r.text


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
        assert intact.returncode == 0, intact.stdout + intact.stderr
        assert "every chain intact" in intact.stdout and "router-a: ok, 3 record(s), seq 0–2" in intact.stdout
        tamper(trail, "r2")
        broken = sovra("audit", "verify", "--router", server.url, "--admin-key-env", "DPO_KEY")
        assert broken.returncode == 1 and "chain BROKEN at seq 2" in broken.stdout and "r2" in broken.stdout


def test_cli_checkpoint_then_verify_catches_a_cut_tail_and_remembers_what_it_verified(trail, sovra, monkeypatch,
                                                                                       tmp_path):
    monkeypatch.setenv("SOVRA_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("SOVRA_HOME", str(tmp_path / "auditor-home"))  # the auditor's own home
    cp_file = tmp_path / "cp.json"
    with serve(trail) as server:
        made = sovra("audit", "checkpoint", "--router", server.url, "-o", cp_file)
        assert made.returncode == 0, made.stderr
        assert "checkpoint of 1 chain(s) signed by ed25519:" in made.stderr
        assert stat.S_IMODE(cp_file.stat().st_mode) == 0o600
        first = sovra("audit", "verify", "--router", server.url, "--checkpoint", cp_file)
        assert first.returncode == 0 and "extends the signed checkpoint" in first.stdout, first.stdout + first.stderr
        trail.write(record(3, "bank"))
        remembered = sovra("audit", "verify", "--router", server.url)  # remembers seq 2, now holds seq 3
        assert remembered.returncode == 0, remembered.stdout + remembered.stderr
    trail._close()
    cut_last(trail)  # seq 3, which the auditor verified, is cut; a router restarted on the cut tail goes on
    restarted = AuditLog(trail.path, writer="router-a")
    restarted.write(record(4, "bank"))
    with serve(restarted) as server:
        assert get(server.url, "/v1/audit/verify", ADMIN_KEY).json()["ok"]  # the chain alone holds
        with_cp = sovra("audit", "verify", "--router", server.url, "--checkpoint", cp_file)
        assert with_cp.returncode == 0  # the older checkpoint (seq 2) is still extended
        cut_last(restarted)
        cut_last(restarted)
        cut_last(restarted)
        gone = sovra("audit", "verify", "--router", server.url, "--checkpoint", cp_file)
        assert gone.returncode == 1 and "writer router-a" in gone.stdout and "seq 2" in gone.stdout


def test_cli_warns_when_a_trail_no_longer_extends_what_it_verified_last(trail, sovra, monkeypatch, tmp_path):
    monkeypatch.setenv("SOVRA_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("SOVRA_HOME", str(tmp_path / "auditor-home"))
    port = free_port()  # the auditor remembers per router address: the restarted router answers at the same one
    with serve(trail, port=port) as server:
        assert sovra("audit", "verify", "--router", server.url).returncode == 0  # remembers seq 2
    trail._close()
    cut_last(trail)  # seq 2 is cut; the router restarts on the cut tail and writes on
    restarted = AuditLog(trail.path, writer="router-a")
    restarted.write(record(4, "bank"))
    with serve(restarted, port=port) as server:
        assert get(server.url, "/v1/audit/verify", ADMIN_KEY).json()["ok"]  # the chain alone cannot tell
        cut = sovra("audit", "verify", "--router", server.url)
        assert cut.returncode == 1 and "no longer extends the heads this auditor verified" in cut.stderr
        assert "seq 2" in cut.stderr and "rewritten" in cut.stderr
        forgot = sovra("audit", "verify", "--router", server.url, "--forget")
        assert forgot.returncode == 0, forgot.stdout + forgot.stderr


def test_cli_reads_and_verifies_a_local_copy(trail, sovra, tmp_path, monkeypatch):
    monkeypatch.setenv("SOVRA_HOME", str(tmp_path / "auditor-home"))
    trail._close()
    with segment(trail).open("ab") as fh:
        fh.write(b'{"request_id":"half')
    AuditLog(trail.path, writer="router-a").write(record(3, "bank"))
    table = sovra("audit", "--file", trail.path, "--deployment", "support", "-n", "3")
    assert table.returncode == 0, table.stderr
    assert "3 record(s) from" in table.stdout and "1 torn line(s) skipped" in table.stdout
    assert "r0" not in table.stdout and "onprem-virginia:ok" in table.stdout
    intact = sovra("audit", "verify", "--file", trail.path, "-o", "json")
    assert intact.returncode == 0 and json.loads(intact.stdout)["chains"][0]["torn"] == 1
    tamper(trail, "r0")
    broken = sovra("audit", "verify", "--file", trail.path)
    assert broken.returncode == 1 and "chain BROKEN at seq 0" in broken.stdout and "request r0): edited" in broken.stdout
    missing = sovra("audit", "verify", "--file", tmp_path / "none")
    assert missing.returncode == 1 and "no audit trail at" in missing.stderr
