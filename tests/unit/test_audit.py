"""The audit trail: every attempt recorded, a hash chain that catches any edit, removal or reordering, torn lines
survived, and filters that answer "where did this payload go"."""

import hashlib
import itertools
import json
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.router.audit import Attempt, AuditLog, AuditRecord, RequestContext, read, verify
from orchestrator.router.audit_chain import GENESIS
from orchestrator.spec.org import Org

PARIS_FAILED = Attempt("onprem-paris", "EU", "FR", "failed")
LYON_OK = Attempt("onprem-lyon", "EU", "FR", "ok")


def rec(i, tenant="bank", attempts=(LYON_OK,), status=200, deployment="support", model="m"):
    return AuditRecord(time=f"2026-11-22T10:{i // 60:02d}:{i % 60:02d}.000+00:00", request_id=f"r{i}", tenant=tenant,
                       deployment=deployment, model=model, residency="zones [EU]", attempts=attempts, status=status,
                       outcome="ok" if status == 200 else "upstream_error", latency_ms=12.5, prompt_tokens=3,
                       completion_tokens=7)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_bytes().splitlines()]


def write_chain(directory: Path, n: int, *, max_bytes: int = 10**6, backups: int = 50) -> AuditLog:
    log = AuditLog(directory / "audit.jsonl", max_bytes=max_bytes, backups=backups)
    for i in range(n):
        log.write(rec(i, tenant="bank" if i % 2 else "retail"))
    return log


# -- the record ------------------------------------------------------------------------------------------------------

def test_a_record_names_every_attempt_and_where_it_was_served():
    r = rec(1, attempts=(PARIS_FAILED, LYON_OK, Attempt("onprem-x", "EU", None, "not_sent")))
    assert (r.target, r.zone, r.country) == ("onprem-lyon", "EU", "FR")  # the last attempt that answered
    j = r.to_json()
    assert (j["target"], j["zone"], j["country"]) == ("onprem-lyon", "EU", "FR")
    assert [a["outcome"] for a in j["attempts"]] == ["failed", "ok", "not_sent"]
    assert rec(2, attempts=(PARIS_FAILED,)).target is None  # nothing answered: no served target, attempt kept


def test_an_attempt_outcome_outside_the_contract_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        Attempt("onprem-paris", "EU", "FR", "maybe")
    with pytest.raises(ValueError):
        RequestContext("r").attempt("onprem-paris", "EU", "FR", "done")


def test_a_request_the_client_abandoned_is_recorded_as_cancelled_with_the_attempt_in_flight():
    now = iter([100.0, 100.25])
    ctx = RequestContext("r1", clock=lambda: next(now), wall=lambda: "2026-11-22T10:00:00.000+00:00")
    ctx.tenant, ctx.deployment, ctx.model, ctx.residency = "bank", "support", "m", "zones [EU]"
    ctx.attempt("onprem-paris", "EU", "FR", "not_sent")
    ctx.sending("onprem-lyon", "EU", "FR")  # the payload left; then the client went away
    r = ctx.record()  # what the router's `finally` writes
    assert (r.status, r.outcome, r.latency_ms) == (499, "cancelled", 250.0)
    assert [(a.target, a.outcome) for a in r.attempts] == [("onprem-paris", "not_sent"), ("onprem-lyon", "cancelled")]


def test_finish_returns_the_record_with_tokens_and_an_amended_stream_attempt():
    ctx = RequestContext("r1", clock=lambda: 0.0)
    ctx.attempt("onprem-lyon", "EU", "FR", "ok")
    ctx.settle("stream_interrupted")  # the stream broke after its first byte
    ctx.usage({"prompt_tokens": 4, "completion_tokens": "lots"})  # junk is ignored, not trusted
    r = ctx.finish(502, "stream_interrupted", latency_ms=9.5, completion_tokens=2)
    assert (r.status, r.latency_ms, r.prompt_tokens, r.completion_tokens) == (502, 9.5, 4, 2)
    assert r.attempts == (Attempt("onprem-lyon", "EU", "FR", "stream_interrupted"),) and r.target is None


# -- writing: one chain, across rotation, restarts, torn lines and threads ----------------------------------------

def test_each_line_chains_to_the_one_before_across_rotated_files(tmp_path):
    write_chain(tmp_path, 20, max_bytes=1500).close()
    files = [tmp_path / "audit.jsonl"] + sorted(tmp_path.glob("audit.jsonl.*"))
    assert len(files) >= 3  # rotated
    oldest_first = [*sorted(tmp_path.glob("audit.jsonl.*"), key=lambda p: -int(p.suffix[1:])), tmp_path / "audit.jsonl"]
    chain = [line for f in oldest_first for line in lines(f)]
    assert chain[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(chain))  # file boundaries included
    for line in chain:
        body = {k: v for k, v in line.items() if k != "hash"}
        canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        assert hashlib.sha256(canon).hexdigest() == line["hash"]
    assert [r["request_id"] for r in read(tmp_path / "audit.jsonl")] == [f"r{i}" for i in range(20)]
    payload_free = {"time", "request_id", "tenant", "deployment", "model", "residency", "target", "zone", "country",
                    "attempts", "status", "outcome", "latency_ms", "prompt_tokens", "completion_tokens", "seq", "prev",
                    "hash"}
    assert set(chain[-1]) == payload_free  # fixed fields: nowhere for a payload or a key


def test_a_new_writer_continues_the_chain_even_from_a_rotated_file(tmp_path):
    write_chain(tmp_path, 5).close()
    again = AuditLog(tmp_path / "audit.jsonl")
    again.write(rec(5))
    again.close()
    (tmp_path / "audit.jsonl").rename(tmp_path / "audit.jsonl.1")  # as if rotated, then restarted before a write
    third = AuditLog(tmp_path / "audit.jsonl")
    third.write(rec(6))
    assert [r["seq"] for r in read(tmp_path / "audit.jsonl")] == list(range(7))
    result = third.verify()
    assert result.ok and result.from_start and result.records == 7, result.message


def test_a_line_torn_by_a_crash_is_left_alone_skipped_and_counted(tmp_path):
    write_chain(tmp_path, 3).close()
    with (tmp_path / "audit.jsonl").open("ab") as fh:
        fh.write(b'{"attempts":[],"request_id":"r-crash","ti')  # the process died mid-write
    torn_tail = verify(tmp_path / "audit.jsonl")
    assert not torn_tail.ok and torn_tail.broken.problem == "torn" and torn_tail.broken.request_id == "r-crash"
    log = AuditLog(tmp_path / "audit.jsonl")
    assert log.verify().ok  # the writer knows its chain ends before the torn line: a lost write, not tampering
    log.write(rec(3))
    raw = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    assert raw[3] == b'{"attempts":[],"request_id":"r-crash","ti' and json.loads(raw[4])["request_id"] == "r3"
    result = read(tmp_path / "audit.jsonl")
    assert result.torn == 1 and [r["request_id"] for r in result] == ["r0", "r1", "r2", "r3"]
    checked = verify(tmp_path / "audit.jsonl")
    assert checked.ok and checked.torn == 1 and "1 torn line(s)" in checked.message


def test_threads_sharing_one_writer_keep_one_unbroken_chain(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=20_000, backups=100)

    def work(t):
        for i in range(50):
            log.write(rec(t * 50 + i))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = log.verify()
    assert result.ok and result.records == 400, result.message
    assert sorted(r["request_id"] for r in read(tmp_path / "audit.jsonl")) == sorted(f"r{i}" for i in range(400))


# -- verify: names the first broken record -------------------------------------------------------------------------

def test_verify_names_the_edited_record_its_file_and_line(tmp_path):
    write_chain(tmp_path, 20, max_bytes=1500).close()
    f = tmp_path / "audit.jsonl.2"
    text = f.read_text().splitlines(keepends=True)
    victim = json.loads(text[0])
    text[0] = text[0].replace('"zone":"EU"', '"zone":"US"', 1)  # someone rewrites where it was processed
    f.write_text("".join(text))
    result = verify(tmp_path / "audit.jsonl")
    assert not result.ok
    assert (result.broken.file, result.broken.line, result.broken.request_id, result.broken.problem) == (
        "audit.jsonl.2", 1, victim["request_id"], "edited")
    assert f"audit.jsonl.2 line 1 (request {victim['request_id']})" in result.message


def test_verify_names_the_record_after_a_removed_one(tmp_path):
    write_chain(tmp_path, 6).close()
    f = tmp_path / "audit.jsonl"
    kept = f.read_bytes().splitlines(keepends=True)
    f.write_bytes(b"".join(kept[:2] + kept[3:]))
    result = verify(f)
    assert not result.ok and result.broken.problem == "removed_or_reordered"
    assert (result.broken.line, result.broken.request_id) == (3, "r3")


def test_the_writer_catches_records_cut_from_the_end(tmp_path):
    log = write_chain(tmp_path, 6)
    f = tmp_path / "audit.jsonl"
    f.write_bytes(b"".join(f.read_bytes().splitlines(keepends=True)[:-1]))
    assert verify(f).ok  # a file alone cannot tell a cut end from an end...
    cut = log.verify()  # ...but the router remembers the newest hash it wrote
    assert not cut.ok and cut.broken.problem == "truncated" and "removed from the end" in cut.message


def test_records_rotated_away_are_reported_not_an_error(tmp_path):
    write_chain(tmp_path, 30, max_bytes=1500, backups=3).close()
    result = verify(tmp_path / "audit.jsonl")
    assert result.ok and not result.from_start
    first = result.first["request_id"]
    assert first != "r0" and f"chain verified from {first}" in result.message and "rotated away" in result.message


# -- properties: any tampering is caught, an untouched chain always verifies ------------------------------------

def _sample_chain() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        log = write_chain(Path(d), 12, max_bytes=1800)
        head = log.head
        log.close()
        files = {p.name: p.read_bytes() for p in Path(d).iterdir()}
    assert len(files) >= 3
    return {**files, "_head": head.encode()}


SAMPLE = _sample_chain()
HEAD = SAMPLE.pop("_head").decode()
ORDER = sorted(SAMPLE, key=lambda n: -int(n.rsplit(".", 1)[1]) if n[-1].isdigit() else 0)  # oldest first
ALL_LINES = [(name, i) for name in ORDER for i in range(len(SAMPLE[name].splitlines()))]


def _verify_files(files: dict[str, bytes], head: str | None = None):
    with tempfile.TemporaryDirectory() as d:
        for name, data in files.items():
            (Path(d) / name).write_bytes(data)
        return verify(Path(d) / "audit.jsonl", head=head)


@given(st.sampled_from(ORDER), st.data())
@settings(max_examples=400, deadline=None)
def test_any_single_byte_edit_anywhere_is_detected(name, data):
    original = SAMPLE[name]
    at = data.draw(st.integers(0, len(original) - 1), label="offset")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[at]), label="new byte")
    result = _verify_files({**SAMPLE, name: original[:at] + bytes([byte]) + original[at + 1:]})
    assert not result.ok, (name, at, bytes([byte]))


def _without(files: dict[str, bytes], name: str, index: int) -> dict[str, bytes]:
    kept = files[name].splitlines(keepends=True)
    return {**files, name: b"".join(kept[:index] + kept[index + 1:])}


@given(st.sampled_from(ALL_LINES))
@settings(max_examples=100, deadline=None)
def test_removing_any_line_is_detected(where):
    result = _verify_files(_without(SAMPLE, *where), head=HEAD)
    if where == ALL_LINES[0]:  # the oldest line looks like rotation: reported as where the proof starts
        assert result.ok and not result.from_start and result.first["request_id"] == "r1"
    else:
        assert not result.ok, where


@given(st.sampled_from(ALL_LINES), st.sampled_from(ALL_LINES))
@settings(max_examples=100, deadline=None)
def test_swapping_any_two_lines_is_detected(a, b):
    if a == b:
        return
    files = {n: SAMPLE[n].splitlines(keepends=True) for n in ORDER}
    files[a[0]][a[1]], files[b[0]][b[1]] = files[b[0]][b[1]], files[a[0]][a[1]]
    result = _verify_files({n: b"".join(x) for n, x in files.items()})
    assert not result.ok and result.broken.problem in ("removed_or_reordered", "torn", "edited")


text = st.text(min_size=1, max_size=40)  # any unicode: hashing is over canonical ASCII-escaped JSON
attempts = st.lists(st.builds(Attempt, text, st.sampled_from(["EU", "US", "APAC"]), st.none() | text,
                              st.sampled_from(sorted(["ok", "not_sent", "refused", "failed", "timeout", "cancelled",
                                                      "stream_interrupted"]))), max_size=4)
records = st.builds(AuditRecord, time=st.just("2026-11-22T10:00:00.000+00:00"), request_id=text, tenant=text,
                    deployment=st.none() | text, model=st.none() | text, residency=text,
                    attempts=attempts.map(tuple), status=st.integers(100, 599), outcome=text,
                    latency_ms=st.floats(0, 1e7, allow_nan=False), prompt_tokens=st.integers(0, 10**9),
                    completion_tokens=st.integers(0, 10**9))


@given(st.lists(records, min_size=1, max_size=25), st.integers(300, 5000), st.integers(0, 25))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_an_untouched_chain_always_verifies_and_reads_back(recs, max_bytes, restart_at):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "audit.jsonl"
        log = AuditLog(path, max_bytes=max_bytes, backups=1000)
        for i, r in enumerate(recs):
            if i == restart_at:  # a router restart in the middle
                log.close()
                log = AuditLog(path, max_bytes=max_bytes, backups=1000)
            log.write(r)
        result = log.verify()
        assert result.ok and result.from_start and result.records == len(recs), result.message
        back = read(path)
        assert back.torn == 0
        assert [{k: v for k, v in x.items() if k not in ("seq", "prev", "hash")} for x in back] == [
            json.loads(json.dumps(r.to_json())) for r in recs]


# -- reading -------------------------------------------------------------------------------------------------------

def test_filters_and_the_newest_n(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    virginia_ok = Attempt("onprem-virginia", "US", "US", "ok")
    log.write(rec(0, tenant="bank", attempts=(PARIS_FAILED, virginia_ok)))  # payload reached EU and US
    log.write(rec(1, tenant="bank", attempts=(Attempt("tokyo", "APAC", "JP", "not_sent"), LYON_OK)))
    log.write(rec(2, tenant="retail", attempts=(PARIS_FAILED,), status=502, deployment="batch", model="big"))
    log.write(rec(3, tenant="retail"))
    path = tmp_path / "audit.jsonl"

    def ids(**f):
        return [r["request_id"] for r in read(path, **f)]

    assert ids(zone="EU") == ["r0", "r1", "r2", "r3"]  # r0 failed in Paris: the payload may be there
    assert ids(zone="us") == ["r0"]
    assert ids(zone="APAC") == []  # never sent to Tokyo
    assert ids(tenant="retail") == ["r2", "r3"]
    assert ids(deployment="batch") == ids(model="big") == ids(status=502) == ["r2"]
    assert ids(since="2026-11-22T10:00:02Z") == ["r2", "r3"]
    assert ids(since="2026-11-22T11:00:01+01:00") == ["r1", "r2", "r3"]  # any offset, compared in UTC
    assert ids(limit=2) == ["r2", "r3"]
    with pytest.raises(ValueError, match="since: 'yesterday' is not an ISO"):
        read(path, since="yesterday")


# -- who may read it: admins in org.yaml ---------------------------------------------------------------------------

KEY_A, KEY_B = "a" * 64, "b" * 64


def test_admins_are_unique_and_never_share_a_tenant_key():
    tenant = {"name": "bank", "key_sha256": KEY_A, "residency": {"zones": ["EU"]}}
    org = Org.model_validate({"tenants": [tenant], "admins": [{"name": "dpo", "key_sha256": KEY_B}]})
    assert org.admins[0].name == "dpo"
    with pytest.raises(ValidationError, match="duplicate admin name: dpo"):
        Org.model_validate({"admins": [{"name": "dpo", "key_sha256": KEY_A}, {"name": "dpo", "key_sha256": KEY_B}]})
    with pytest.raises(ValidationError, match="two admins share one key_sha256"):
        Org.model_validate({"admins": [{"name": "a", "key_sha256": KEY_A}, {"name": "b", "key_sha256": KEY_A}]})
    with pytest.raises(ValidationError, match="admin dpo uses a tenant's key_sha256"):
        Org.model_validate({"tenants": [tenant], "admins": [{"name": "dpo", "key_sha256": KEY_A}]})
    schema = Org.model_json_schema(by_alias=True)
    assert "audit trail" in schema["properties"]["admins"]["description"]


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("hash", "prev")), _JSON, max_size=8),
       prev=st.sampled_from([GENESIS, "ab" * 32]))
def test_a_sealed_line_is_the_canonical_record_with_its_hash_for_any_keys(body, prev):
    # `seal` encodes the record once, split around where "hash" sorts; whatever the keys (sorting before, after,
    # equal prefixes, non-ASCII), the line must be exactly what the verifier rebuilds.
    from orchestrator.router.audit_chain import canonical, seal

    line, digest = seal(body, prev)
    assert digest == hashlib.sha256(canonical({**body, "prev": prev})).hexdigest()
    assert line == canonical({**body, "prev": prev, "hash": digest}) + b"\n"


def test_sealing_a_record_that_already_carries_a_hash_is_refused():
    from orchestrator.router.audit_chain import seal

    with pytest.raises(ValueError, match="hash"):
        seal({"hash": "x", "a": 1}, GENESIS)
