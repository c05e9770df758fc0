import json

from orchestrator.router.audit import AuditLog, AuditRecord, read


def rec(i, tenant="bank", zone="EU"):
    return AuditRecord(time=f"2026-11-22T10:00:{i:02d}.000+00:00", request_id=f"r{i}", tenant=tenant, model="m",
                       target="onprem-paris", zone=zone, country="FR", residency="zones [EU]", status=200,
                       outcome="ok", latency_ms=12.5, prompt_tokens=3, completion_tokens=7)


def test_one_json_line_per_request_rotated_by_size_and_read_back_in_order(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=600, backups=50)
    for i in range(20):
        log.write(rec(i, tenant="bank" if i % 2 else "retail"))
    log.close()
    assert len(list(tmp_path.glob("audit.jsonl.*"))) >= 2  # rotated
    got = list(read(tmp_path / "audit.jsonl"))
    assert [r["request_id"] for r in got] == [f"r{i}" for i in range(20)]
    assert [r["request_id"] for r in read(tmp_path / "audit.jsonl", tenant="bank")] == [f"r{i}" for i in range(1, 20, 2)]
    line = (tmp_path / "audit.jsonl").read_text().splitlines()[-1]
    assert set(json.loads(line)) == set(AuditRecord.__dataclass_fields__)  # fixed fields: nowhere for a payload
