"""The spend store: the ledger and the budget counters, on SQLite (embedded default) or PostgreSQL, one code path.

Every write that must be exact runs in one transaction holding the store's write lock (SQLite: `BEGIN IMMEDIATE`;
PostgreSQL: row locks taken by the conditional upsert itself), so router replicas on one store can never both take
the last of a budget:

- `reserve` adds each charge with one conditional upsert (`... DO UPDATE SET used = used + n WHERE used + n <=
  limit RETURNING used`): the check and the write are one statement, never a read then a write. A charge that does
  not fit rolls back the others.
- `record` inserts ledger entries (idempotent by `entry_id`, so a replayed batch counts once), applies the
  difference between what was reserved and what was used, and burns committed-spend credits up to their monthly
  cap, in the same transaction as the entries.

Connections are per thread (the router calls from a small pool, the flusher from its thread). Any failure to
reach or write the store is `StoreUnavailable`; the thread's connection is dropped and made again next call.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovra.core.errors import StoreUnavailable
from sovra.infra.ledger import migrations

#: Ledger columns, in table order (`Entry` has the same fields, plus the counter adjustments).
COLUMNS = ("entry_id", "request_id", "time", "tenant", "deployment", "target", "cloud", "provider", "outcome",
           "tokens_in", "tokens_out", "price_source", "usd_list_micros", "credit_micros")
#: What `summary` may group by.
GROUPS = ("tenant", "deployment", "target", "cloud", "provider", "day", "month")
_GROUP_SQL = {"day": "substr(time, 1, 10)", "month": "substr(time, 1, 7)"}


@dataclass(frozen=True, slots=True)
class Charge:
    """An amount to add to one counter (`scope`, `metric`, `window`) only if it stays within `limit`."""

    scope: str
    metric: str  # usd_micros | tokens | requests
    window: str  # `2026-12` (a month) or `2026-12-07T03:41` (a minute), UTC
    amount: int
    limit: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """The charge that did not fit, and what its counter held."""

    charge: Charge
    used: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger entry: what an attempt that may have cost money cost. `adjust` holds (scope, metric, window,
    delta) for the counters its request reserved: usage minus reservation, applied once with the entry."""

    entry_id: str
    request_id: str
    time: str
    tenant: str
    deployment: str
    target: str
    cloud: str
    provider: str
    outcome: str
    tokens_in: int
    tokens_out: int
    price_source: str
    usd_list_micros: int
    credit_micros: int = 0
    adjust: tuple[tuple[str, str, str, int], ...] = ()

    def row(self, credit: int) -> tuple[Any, ...]:
        return (self.entry_id, self.request_id, self.time, self.tenant, self.deployment, self.target, self.cloud,
                self.provider, self.outcome, self.tokens_in, self.tokens_out, self.price_source,
                self.usd_list_micros, credit)

    def to_json(self) -> dict[str, Any]:
        return {"entry_id": self.entry_id, "request_id": self.request_id, "time": self.time,
                "tenant": self.tenant, "deployment": self.deployment, "target": self.target, "cloud": self.cloud,
                "provider": self.provider, "outcome": self.outcome, "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out, "price_source": self.price_source,
                "usd_list_micros": self.usd_list_micros, "adjust": [list(a) for a in self.adjust]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Entry:
        fields = {k: data[k] for k in COLUMNS if k != "credit_micros"}
        return cls(**fields, adjust=tuple((str(s), str(m), str(w), int(d)) for s, m, w, d in data.get("adjust", ())))


@dataclass(frozen=True, slots=True)
class CreditCap:
    """What a cloud's credits may pay this month (micro-USD): `policies.costs.monthly_credit_caps`, per cloud."""

    cloud: str
    month: str
    cap_micros: int

    @property
    def scope(self) -> str:
        return f"credit={self.cloud}"


@dataclass(frozen=True)
class _Dialect:
    name: str
    begin: str
    for_update: str
    convert: Callable[[str], str]
    schema_lock: str  # serialises migrations across connections, inside their transaction


_SQLITE = _Dialect("sqlite", "BEGIN IMMEDIATE", "", lambda sql: sql, "")
#: 0x50E1D6E5: an arbitrary key for Sovra's schema lock (transaction-scoped, released at commit or rollback)
_POSTGRES = _Dialect("postgres", "BEGIN", " FOR UPDATE", lambda sql: sql.replace("?", "%s"),
                     "SELECT pg_advisory_xact_lock(1357977317)")

_RESERVE = ("INSERT INTO spend_counters (scope, metric, window_start, used) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (scope, metric, window_start) DO UPDATE SET used = spend_counters.used + excluded.used "
            "WHERE spend_counters.used + excluded.used <= ? RETURNING used")
_ADD = ("INSERT INTO spend_counters (scope, metric, window_start, used) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (scope, metric, window_start) DO UPDATE SET used = spend_counters.used + excluded.used")
_USED = "SELECT used FROM spend_counters WHERE scope = ? AND metric = ? AND window_start = ?"


def _create_private(path: Path) -> None:
    """Create the database file readable by this user only, before SQLite opens it; never open it when it exists.

    Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's included: another
    process closing its last connection would then believe itself alone, checkpoint and delete the WAL, and this
    process's next commits would go into the deleted file (lost). So an existing file is left to SQLite alone."""
    with _CREATING:  # a thread finding the file made waits until its creator has closed it
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            _check_private(path)
            return
        os.close(fd)  # no connection of this process holds a lock on a file that did not exist


def _check_private(path: Path) -> None:
    """An existing database file (and its WAL files) must be this user's own plain file: a link planted in a shared
    folder, or another user's file, would let them read tenants' spend or move budget counters. Too open a mode is
    narrowed (by name: no descriptor, so no lock is dropped)."""
    import stat

    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise StoreUnavailable(f"refusing the spend store's file {p}: it is "
                                   + ("not a plain file (a link?)" if not stat.S_ISREG(st.st_mode)
                                      else "owned by another user") + "; move it away or set spend.path elsewhere")
        if st.st_mode & 0o077:
            os.chmod(p, 0o600)


_CREATING = threading.Lock()


@dataclass
class SpendStore:
    """One spend store. Build with `SpendStore.sqlite(path)` or `SpendStore.postgres(dsn)`; `migrate()` first."""

    dialect: _Dialect
    _connect: Callable[[], Any]
    where: str  # for messages: the file, or the server without its password
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _all: list[Any] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _migrated: bool = field(default=False, repr=False)

    @classmethod
    def sqlite(cls, path: str | Path) -> SpendStore:
        """A SQLite file (WAL: readers never block the router's writes), private to this user."""
        path = Path(path)

        def connect() -> Any:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _create_private(path)
            conn = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
            for attempt in range(100):  # switching to WAL takes the file's lock without waiting for it
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError:
                    if attempt == 99:
                        conn.close()
                        raise
                    time.sleep(0.02)
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn

        return cls(_SQLITE, connect, str(path))

    @classmethod
    def postgres(cls, dsn: str) -> SpendStore:
        """A PostgreSQL database (psycopg 3; the `postgres` extra)."""
        try:
            import psycopg
        except ImportError:
            raise StoreUnavailable("the spend store is PostgreSQL but psycopg is not installed where the router "
                                   "runs: pip install 'sovra[postgres]'") from None

        def connect() -> Any:
            # Bounded everywhere: a dead server or a held lock is an error in seconds, never a thread hung for good
            return psycopg.connect(dsn, autocommit=True, connect_timeout=5, keepalives=1, keepalives_idle=10,
                                   keepalives_interval=5, keepalives_count=3, tcp_user_timeout=10_000,
                                   options="-c statement_timeout=5000 -c lock_timeout=5000")

        return cls(_POSTGRES, connect, _where_postgres(dsn))

    # -- connections ---------------------------------------------------------------------------------------------

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._connect()
            except Exception as exc:  # noqa: BLE001  (any driver's failure to connect)
                raise StoreUnavailable(f"cannot open the spend store at {self.where}: {_reason(exc)}") from None
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cur = self._conn().execute(self.dialect.convert(sql), tuple(params))
        return list(cur.fetchall()) if cur.description is not None else []

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            conn = self._conn()
            if self.dialect is _SQLITE:
                conn.executemany(sql, rows)
            else:
                with conn.cursor() as cur:
                    cur.executemany(self.dialect.convert(sql), rows)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction under the write lock; any driver error is StoreUnavailable (and rolled back)."""
        try:
            self._run(self.dialect.begin)
        except StoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001
            self._drop()
            raise StoreUnavailable(f"the spend store at {self.where} is unavailable: {_reason(exc)}") from None
        try:
            yield
            self._run("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self._run("ROLLBACK")
            if isinstance(exc, Exception) and not isinstance(exc, StoreUnavailable) and _driver_error(exc):
                self._drop()
                raise StoreUnavailable(f"the spend store at {self.where} is unavailable: {_reason(exc)}") from None
            raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """A read outside a transaction (the schema made first: a reader may come before any router)."""
        self._ready()
        try:
            return self._run(sql, params)
        except Exception as exc:
            if not _driver_error(exc):
                raise
            self._drop()
            raise StoreUnavailable(f"cannot read the spend store at {self.where}: {_reason(exc)}") from None

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()

    # -- schema --------------------------------------------------------------------------------------------------

    def migrate(self, target: int = migrations.LATEST) -> int:
        """Apply pending migrations up to `target`; the version reached."""
        try:
            version = migrations.apply(self._run, self._transaction, _now(), target, self.dialect.schema_lock)
            self._migrated = version == migrations.LATEST
            return version
        except StoreUnavailable:
            raise
        except Exception as exc:
            if not _driver_error(exc):
                raise
            self._drop()
            raise StoreUnavailable(f"cannot prepare the spend store at {self.where}: {_reason(exc)}") from None

    def _ready(self) -> None:
        """Migrate once, on first use: a router may start while its store is down."""
        if not self._migrated:
            self.migrate()

    def version(self) -> int:
        with self._transaction():
            if self.dialect.schema_lock:
                self._run(self.dialect.schema_lock)
            self._run(migrations.VERSION_TABLE)
            return int(self._run("SELECT COALESCE(MAX(version), 0) FROM sovra_schema")[0][0])

    # -- budgets -------------------------------------------------------------------------------------------------

    def reserve(self, charges: Sequence[Charge]) -> Refusal | None:
        """Add every charge, or none: the first that would pass its limit is returned and nothing is kept."""
        for c in charges:
            if c.amount > c.limit:  # more than the whole limit: no window could ever hold it
                return Refusal(c, 0)
        if not charges:
            return None
        self._ready()
        try:
            with self._transaction():
                for c in charges:
                    if not self._run(_RESERVE, (c.scope, c.metric, c.window, c.amount, c.limit)):
                        used = self._run(_USED, (c.scope, c.metric, c.window))
                        raise _Refused(Refusal(c, int(used[0][0]) if used else 0))
        except _Refused as exc:  # rolled back: none of the charges is kept
            return exc.refusal
        return None

    def lease(self, scope: str, metric: str, window: str, need: int, limit: int,
              chunk: Callable[[int], int]) -> tuple[int, int] | Refusal:
        """Grant a router replica a slice of one counter's room: at least `need`, up to `chunk(room)` (room: what
        the limit leaves), as one locked read-and-add; (granted, used after) or the Refusal when `need` does not
        fit. The counter then holds every slice granted, so slices never add up past the limit across replicas."""
        self._ready()
        with self._transaction():
            self._run("INSERT INTO spend_counters (scope, metric, window_start, used) VALUES (?, ?, ?, 0) "
                      "ON CONFLICT (scope, metric, window_start) DO NOTHING", (scope, metric, window))
            used = int(self._run(_USED + self.dialect.for_update, (scope, metric, window))[0][0])
            room = limit - used
            if need > room:
                return Refusal(Charge(scope, metric, window, need, limit), used)
            grant = min(room, max(need, chunk(room)))
            self._run("UPDATE spend_counters SET used = used + ? WHERE scope = ? AND metric = ? AND window_start = ?",
                      (grant, scope, metric, window))
        return grant, used + grant

    def release(self, adjust: Sequence[tuple[str, str, str, int]]) -> None:
        """Add (or give back, with negative amounts) to counters unconditionally: reservations whose payload never
        left, unused slices returned."""
        self._ready()
        with self._transaction():
            self._many(_ADD, [(s, m, w, d) for s, m, w, d in adjust if d])

    def prune(self, before_minute: str) -> int:
        """Delete per-minute counters of windows before `before_minute` (`YYYY-MM-DDTHH:MM`): a quota's minute is
        over, and a row per minute per scope would grow forever. Monthly counters and the ledger are kept."""
        self._ready()
        with self._transaction():
            rows = self._run("DELETE FROM spend_counters WHERE metric IN ('tokens', 'requests') AND window_start < ? "
                             "RETURNING scope", (before_minute,))
        return len(rows)

    def used(self, scope: str, metric: str, window: str) -> int:
        rows = self._read(_USED, (scope, metric, window))
        return int(rows[0][0]) if rows else 0

    # -- the ledger ----------------------------------------------------------------------------------------------

    def record(self, entries: Sequence[Entry], credits: Mapping[str, CreditCap] | None = None) -> int:
        """Write `entries` (those already in the ledger are skipped), their counter adjustments and the credits
        they burn, in one transaction; the number of new entries."""
        if not entries:
            return 0
        self._ready()
        credits = credits or {}
        with self._transaction():
            ids = [e.entry_id for e in entries]
            seen: set[str] = set()
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                marks = ", ".join("?" * len(part))
                seen.update(r[0] for r in self._run(f"SELECT entry_id FROM ledger WHERE entry_id IN ({marks})",
                                                    part))
            fresh = [e for e in {e.entry_id: e for e in entries}.values() if e.entry_id not in seen]
            # Only what this transaction inserted counts: another writer may commit the same ids in between (a
            # replay racing a flush), and its rows then win; adjustments and credits follow the rows.
            new = self._insert_new(fresh)
            covered = self._burn(new, credits)
            self._many("UPDATE ledger SET credit_micros = ? WHERE entry_id = ?",
                       [(n, i) for i, n in sorted(covered.items())])
            sums: dict[tuple[str, str, str], int] = {}
            for e in new:
                for scope, metric, window, delta in e.adjust:
                    sums[(scope, metric, window)] = sums.get((scope, metric, window), 0) + delta
            self._many(_ADD, [(*k, d) for k, d in sorted(sums.items()) if d])
        return len(new)

    def _insert_new(self, fresh: Sequence[Entry]) -> list[Entry]:
        """Insert `fresh` (no credit yet); those this transaction really inserted."""
        if not fresh:
            return []
        sql = (f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
               "ON CONFLICT (entry_id) DO NOTHING RETURNING entry_id")
        conn, inserted = self._conn(), set()
        if self.dialect is _SQLITE:  # BEGIN IMMEDIATE holds the file's write lock: none of `fresh` can appear
            conn.executemany(sql.removesuffix(" RETURNING entry_id"), [e.row(0) for e in fresh])
            return list(fresh)
        else:  # pipelined by psycopg; another transaction may insert the same ids meanwhile
            with conn.cursor() as cur:
                cur.executemany(self.dialect.convert(sql), [e.row(0) for e in fresh], returning=True)
                while True:
                    inserted.update(r[0] for r in cur.fetchall())
                    if not cur.nextset():
                        break
        return [e for e in fresh if e.entry_id in inserted]

    def _burn(self, new: Sequence[Entry], credits: Mapping[str, CreditCap]) -> dict[str, int]:
        """entry_id -> micro-USD its cloud's credits pay, in order, up to each cap (rows locked until commit)."""
        out: dict[str, int] = {}
        room: dict[str, int] = {}
        new = [e for e in new if e.price_source.startswith("list")]  # amortised capacity is billed by the hour
        for cloud in sorted({e.cloud for e in new if e.usd_list_micros > 0 and e.cloud in credits}):
            cap = credits[cloud]
            self._run("INSERT INTO spend_counters (scope, metric, window_start, used) VALUES (?, 'usd_micros', ?, 0) "
                      "ON CONFLICT (scope, metric, window_start) DO NOTHING", (cap.scope, cap.month))
            used = self._run(_USED + self.dialect.for_update, (cap.scope, "usd_micros", cap.month))
            room[cloud] = max(0, cap.cap_micros - int(used[0][0]))
        burned: dict[str, int] = {}
        for e in new:
            left = room.get(e.cloud, 0)
            take = min(left, e.usd_list_micros) if e.usd_list_micros > 0 else 0
            if take:
                out[e.entry_id] = take
                room[e.cloud] = left - take
                burned[e.cloud] = burned.get(e.cloud, 0) + take
        self._many(_ADD, [(credits[c].scope, "usd_micros", credits[c].month, n) for c, n in sorted(burned.items())])
        return out

    # -- reading -------------------------------------------------------------------------------------------------

    def summary(self, since: str, until: str, by: Sequence[str]) -> list[dict[str, Any]]:
        """Totals of entries with `since <= time < until` (ISO UTC), grouped by `by` (of `GROUPS`)."""
        bad = [b for b in by if b not in GROUPS]
        if bad:
            raise ValueError(f"cannot group by {', '.join(bad)}; choose from {', '.join(GROUPS)}")
        keys = [f"{_GROUP_SQL.get(b, b)}" for b in by]
        select = ", ".join([*(f"{k} AS {b}" for k, b in zip(keys, by)),
                            "COUNT(*)", "SUM(tokens_in)", "SUM(tokens_out)", "SUM(usd_list_micros)",
                            "SUM(credit_micros)"])
        group = f" GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}" if keys else ""
        rows = self._read(f"SELECT {select} FROM ledger WHERE time >= ? AND time < ?{group}", (since, until))
        out = []
        for row in rows:
            named = dict(zip(by, row[:len(by)]))
            n, t_in, t_out, usd, credit = (int(x or 0) for x in row[len(by):])
            if n:
                out.append({**named, "entries": n, "tokens_in": t_in, "tokens_out": t_out,
                            "usd_list_micros": usd, "credit_micros": credit})
        return out

    def counters(self, prefix: str = "") -> list[tuple[str, str, str, int]]:
        """(scope, metric, window, used) of counters whose scope starts with `prefix`."""
        rows = self._read("SELECT scope, metric, window_start, used FROM spend_counters WHERE substr(scope, 1, ?) = ? "
                          "ORDER BY scope, metric, window_start", (len(prefix), prefix))
        return [(str(s), str(m), str(w), int(u)) for s, m, w, u in rows]

    def entries(self, since: str = "", until: str = "9999") -> list[Entry]:
        rows = self._read(f"SELECT {', '.join(COLUMNS)} FROM ledger WHERE time >= ? AND time < ? ORDER BY time, "
                         "entry_id", (since, until))
        return [Entry(**dict(zip(COLUMNS, r))) for r in rows]


class _Refused(Exception):
    """Raised inside `reserve`'s transaction to roll it back."""

    def __init__(self, refusal: Refusal):
        self.refusal = refusal


def _driver_error(exc: BaseException) -> bool:
    """An error of the database or its connection (not a bug of ours)."""
    if isinstance(exc, sqlite3.Error):
        return True
    mod = type(exc).__module__
    return mod.startswith("psycopg")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _where_postgres(dsn: str) -> str:
    """Where a PostgreSQL store is, fit for a message: host, port and database, parsed by libpq's rules (URI or
    key=value, quoted or not); never the password or the rest of the string."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001  (a DSN libpq cannot parse: say so without echoing it)
        return "PostgreSQL (an unparsable connection string)"
    host, port, db = parts.get("host", "localhost"), parts.get("port", "5432"), parts.get("dbname", "")
    return f"PostgreSQL at {host}:{port}/{db}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
