"""The spend store on a real SQLite file and a real PostgreSQL server, the same tests on both: migrations, atomic
reservations, idempotent ledger writes, credits burned up to their monthly cap, and failures as StoreUnavailable."""

from __future__ import annotations

import sqlite3
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sovra.core.errors import StoreUnavailable
from sovra.infra.ledger import migrations
from sovra.infra.ledger.store import Charge, CreditCap, Entry, SpendStore

MINUTE = "2026-12-07T03:41"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SpendStore.sqlite(tmp_path / "spend" / "ledger.db")
    else:
        s = SpendStore.postgres(request.getfixturevalue("postgres_dsn"))
    yield s
    s.close()


def entry(n: int, *, cloud: str = "azure", usd: int = 1_000, tokens: tuple[int, int] = (3, 2),
          adjust: tuple = ()) -> Entry:
    return Entry(entry_id=f"w.t:{n}", request_id=f"r{n}", time=f"2026-12-07T03:41:{n % 60:02d}.000+00:00",
                 tenant="acme", deployment="chat", target="azure-foundry/westeurope", cloud=cloud,
                 provider="azure-foundry", outcome="ok", tokens_in=tokens[0], tokens_out=tokens[1],
                 price_source="list", usd_list_micros=usd, adjust=adjust)


def test_migrates_from_empty_to_latest_once(store):
    assert store.migrate() == migrations.LATEST
    assert store.migrate() == migrations.LATEST  # idempotent: a second replica starting finds nothing to do
    assert store.version() == migrations.LATEST


def test_replicas_starting_together_migrate_once_without_tripping_over_each_other(store, request):
    """Eight connections migrate an empty store at once (router replicas starting together); on PostgreSQL two
    concurrent `CREATE TABLE IF NOT EXISTS` used to fail one of them with a duplicate pg_type key."""
    import concurrent.futures
    import threading

    start = threading.Barrier(8)

    def one(_: int) -> int:
        own = SpendStore(store.dialect, store._connect, store.where)  # a replica of its own: its own connection
        start.wait()
        try:
            return own.migrate()
        finally:
            own.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == [migrations.LATEST] * 8
    assert store._run("SELECT COUNT(*) FROM sovra_schema")[0][0] == migrations.LATEST


def test_migrates_from_the_previous_version_keeping_its_ledger(store):
    assert store.migrate(target=migrations.LATEST - 1) == migrations.LATEST - 1
    with pytest.raises(Exception):  # the previous schema has no counters yet
        store._run("SELECT used FROM spend_counters")
    store._drop()
    store._run("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               entry(1).row(0))
    assert store.migrate() == migrations.LATEST
    assert [e.entry_id for e in store.entries()] == ["w.t:1"]
    assert store.reserve([Charge("tenant=acme", "tokens", MINUTE, 5, 10)]) is None


def test_a_store_newer_than_this_sovra_is_refused_with_a_sentence(store):
    store.migrate()
    store._run("INSERT INTO sovra_schema (version, applied_at) VALUES (?, ?)", (migrations.LATEST + 1, "x"))
    with pytest.raises(ValueError, match="newer than this Sovra knows"):
        store.migrate()


def test_reserve_is_all_or_nothing(store):
    fits = Charge("tenant=acme", "tokens", MINUTE, 60, 100)
    other = Charge("deployment=chat", "requests", MINUTE, 1, 1)
    assert store.reserve([fits, other]) is None
    refusal = store.reserve([fits, other])  # tokens 120 > 100: refused, and the requests charge not kept either
    assert refusal is not None and refusal.charge == fits and refusal.used == 60
    assert store.used("tenant=acme", "tokens", MINUTE) == 60
    assert store.used("deployment=chat", "requests", MINUTE) == 1
    # a later window is a new row: the limit holds per window, with no reset to race
    assert store.reserve([Charge("tenant=acme", "tokens", "2026-12-07T03:42", 100, 100)]) is None
    # more than the whole limit can never fit
    assert store.reserve([Charge("tenant=acme", "tokens", "2026-12-07T03:43", 101, 100)]).used == 0


def test_record_counts_each_entry_once_and_reconciles_the_reservation(store):
    assert store.reserve([Charge("tenant=acme", "tokens", MINUTE, 100, 1000)]) is None
    e = entry(1, adjust=(("tenant=acme", "tokens", MINUTE, -95),))  # reserved 100, used 5
    assert store.record([e, e]) == 1
    assert store.record([e]) == 0  # a replayed batch
    assert store.used("tenant=acme", "tokens", MINUTE) == 5
    assert len(store.entries()) == 1


def test_credits_pay_up_to_their_monthly_cap_then_list_price(store):
    caps = {"azure": CreditCap("azure", "2026-12", 2_500)}
    store.record([entry(i, usd=1_000) for i in range(1, 4)], caps)
    store.record([entry(4, usd=1_000), entry(5, usd=1_000, cloud="aws")], caps)
    paid = {e.entry_id: e.credit_micros for e in store.entries()}
    assert paid == {"w.t:1": 1_000, "w.t:2": 1_000, "w.t:3": 500, "w.t:4": 0, "w.t:5": 0}
    assert store.used("credit=azure", "usd_micros", "2026-12") == 2_500
    totals = store.summary("2026-12", "2027", ["cloud"])
    assert totals == [
        {"cloud": "aws", "entries": 1, "tokens_in": 3, "tokens_out": 2, "usd_list_micros": 1_000, "credit_micros": 0},
        {"cloud": "azure", "entries": 4, "tokens_in": 12, "tokens_out": 8, "usd_list_micros": 4_000,
         "credit_micros": 2_500}]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amounts=st.lists(st.integers(1, 40), min_size=1, max_size=30), limit=st.integers(1, 200))
def test_reservations_never_pass_the_limit(store, amounts, limit):
    window = uuid.uuid4().hex
    kept = [a for a in amounts if store.reserve([Charge("s", "tokens", window, a, limit)]) is None]
    assert sum(kept) == store.used("s", "tokens", window) <= limit
    # greedy in order: each refused amount did not fit what was kept before it
    running = 0
    for a in amounts:
        if running + a <= limit:
            running += a
    assert running == sum(kept)


def test_an_unreachable_store_is_store_unavailable_naming_it_without_its_password(tmp_path):
    bad = SpendStore.postgres("postgresql://sovra:hunter2@127.0.0.1:1/x")
    with pytest.raises(StoreUnavailable) as e:
        bad.reserve([Charge("s", "tokens", MINUTE, 1, 2)])
    assert "127.0.0.1:1" in str(e.value) and "hunter2" not in str(e.value)
    (tmp_path / "ro").mkdir(mode=0o500)
    unwritable = SpendStore.sqlite(tmp_path / "ro" / "sub" / "ledger.db")
    if not _is_root():  # root writes anywhere: the mode proves nothing then
        with pytest.raises(StoreUnavailable):
            unwritable.record([entry(1)])


def test_the_sqlite_file_is_private(tmp_path):
    s = SpendStore.sqlite(tmp_path / "spend" / "ledger.db")
    s.migrate()
    assert (tmp_path / "spend" / "ledger.db").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "spend").stat().st_mode & 0o777 == 0o700
    assert sqlite3.connect(tmp_path / "spend" / "ledger.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


_OTHER_REPLICA = """
import sys
from sovra.infra.ledger.store import SpendStore
s = SpendStore.sqlite(sys.argv[1])
s.release([("tenant=acme", "tokens", sys.argv[2], 1)])
s.close()
"""


def test_a_replica_opening_a_connection_never_loses_another_process_s_writes(tmp_path):
    """Two router processes on one SQLite file, one of them opening a connection per thread as its pool grows.
    Opening the database file outside SQLite (to create it private) and closing it dropped every POSIX lock this
    process held on it; the other process, closing its last connection, then thought itself alone, checkpointed
    and deleted the WAL, and this process's next commits went into the deleted file: lost (seen as a minute's
    counter 10 tokens over what was served, the slice given back at shutdown gone)."""
    import subprocess
    import sys
    import threading
    from pathlib import Path

    path = tmp_path / "spend" / "ledger.db"
    s = SpendStore.sqlite(path)
    s.migrate()
    root = Path(__file__).resolve().parents[2]
    for _ in range(5):
        s.release([("tenant=acme", "tokens", MINUTE, 10)])  # this thread's connection, held open
        seen: list[int] = []
        other = threading.Thread(target=lambda: seen.append(s.used("tenant=acme", "tokens", MINUTE)))  # a new
        other.start()  # thread: a connection of its own, opened while the first one holds its locks
        other.join()
        assert seen, "the other thread's read failed"
        subprocess.run([sys.executable, "-c", _OTHER_REPLICA, str(path), MINUTE], cwd=root, check=True)
        s.release([("tenant=acme", "tokens", MINUTE, 10)])
    s.close()
    again = SpendStore.sqlite(path)
    assert again.used("tenant=acme", "tokens", MINUTE) == 5 * 21
    again.close()


def test_a_link_in_place_of_the_database_is_refused_and_a_too_open_file_narrowed(tmp_path):
    """In a shared folder another user could plant a link where the store will be, to read tenants' spend or move
    budget counters: refused with a sentence. A file of ours readable by others is made private."""
    import os

    target = tmp_path / "elsewhere.db"
    sqlite3.connect(target).close()
    (tmp_path / "spend").mkdir()
    (tmp_path / "spend" / "ledger.db").symlink_to(target)
    linked = SpendStore.sqlite(tmp_path / "spend" / "ledger.db")
    with pytest.raises(StoreUnavailable, match="not a plain file"):
        linked.migrate()
    linked.close()
    (tmp_path / "open").mkdir()
    path = tmp_path / "open" / "ledger.db"
    sqlite3.connect(path).close()
    os.chmod(path, 0o644)
    s = SpendStore.sqlite(path)
    s.migrate()
    s.close()
    assert path.stat().st_mode & 0o777 == 0o600


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(needs=st.lists(st.integers(1, 40), min_size=1, max_size=30), limit=st.integers(1, 300),
       eighth=st.booleans())
def test_slices_granted_never_add_up_past_the_limit(store, needs, limit, eighth):
    window = uuid.uuid4().hex  # hypothesis replays examples on the same store: each gets its own counter
    chunk = (lambda room: room // 8) if eighth else (lambda room: 0)
    granted = 0
    for need in needs:
        got = store.lease("s", "tokens", window, need, limit, chunk)
        if isinstance(got, tuple):
            grant, used = got
            assert need <= grant and used == granted + grant
            granted += grant
        else:  # refused only when the need did not fit what was left
            assert got.used == granted and need > limit - granted
    assert granted == store.used("s", "tokens", window) <= limit


def test_minute_counters_of_past_hours_are_pruned_months_kept(store):
    for window in ("2026-12-07T01:00", "2026-12-07T03:41"):
        assert store.reserve([Charge("s", "tokens", window, 1, 10), Charge("s", "requests", window, 1, 10)]) is None
    assert store.reserve([Charge("s", "usd_micros", "2026-11", 1, 10)]) is None
    assert store.prune("2026-12-07T02:41") == 2
    assert [c[1:3] for c in store.counters("s")] == [("requests", "2026-12-07T03:41"), ("tokens", "2026-12-07T03:41"),
                                                    ("usd_micros", "2026-11")]
