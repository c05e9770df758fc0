"""The spend store's schema, as numbered migrations applied in order: the same SQL on SQLite and PostgreSQL.

Money is held in integer micro-USD, so sums are exact in both databases. A migration, once released, is never
edited: a change is a new migration. `apply` runs each pending one in a transaction of its own under the store's
write lock, so router replicas starting together apply each exactly once.
"""

from __future__ import annotations

from collections.abc import Callable

#: version -> statements. 1: the ledger (Sovra 0.1, issue 21 step 1); 2: budget and credit counters.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE ledger (
            entry_id TEXT PRIMARY KEY,
            request_id TEXT NOT NULL,
            time TEXT NOT NULL,
            tenant TEXT NOT NULL,
            deployment TEXT NOT NULL,
            target TEXT NOT NULL,
            cloud TEXT NOT NULL,
            provider TEXT NOT NULL,
            outcome TEXT NOT NULL,
            tokens_in BIGINT NOT NULL,
            tokens_out BIGINT NOT NULL,
            price_source TEXT NOT NULL,
            usd_list_micros BIGINT NOT NULL,
            credit_micros BIGINT NOT NULL
        )""",
        "CREATE INDEX ledger_time ON ledger (time)",
    ),
    2: (
        # One row per (scope, metric, window): a budget's use in a minute or a month, or a credit's burn in a month.
        # A new window is a new row, so a reset is never an update that could race with a reservation.
        """CREATE TABLE spend_counters (
            scope TEXT NOT NULL,
            metric TEXT NOT NULL,
            window_start TEXT NOT NULL,
            used BIGINT NOT NULL,
            PRIMARY KEY (scope, metric, window_start)
        )""",
    ),
}

LATEST = max(MIGRATIONS)

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS sovra_schema (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"


def pending(current: int, target: int = LATEST) -> list[int]:
    """The versions to apply, in order, to go from `current` to `target`."""
    if current > LATEST:
        raise ValueError(f"the spend store is at schema version {current}, newer than this Sovra knows ({LATEST}); "
                         "upgrade Sovra")
    return [v for v in sorted(MIGRATIONS) if current < v <= target]


def apply(run: Callable[[str, tuple], list[tuple]], transaction: Callable[[], object], now: str,
          target: int = LATEST, lock: str = "") -> int:
    """Bring the schema to `target` with `run(sql, params)` inside `transaction()`; return the version reached.

    `lock` is the statement that serialises schema changes where the transaction alone does not (PostgreSQL: an
    advisory lock; there, two `CREATE TABLE IF NOT EXISTS` at once can both try to create the table). SQLite's
    `BEGIN IMMEDIATE` already holds the database's write lock."""
    while True:
        with transaction():  # type: ignore[attr-defined]
            if lock:
                run(lock, ())
            run(VERSION_TABLE, ())
            current = run("SELECT COALESCE(MAX(version), 0) FROM sovra_schema", ())[0][0]
            todo = pending(int(current), target)
            if not todo:
                return int(current)
            version = todo[0]
            for statement in MIGRATIONS[version]:
                run(statement, ())
            run("INSERT INTO sovra_schema (version, applied_at) VALUES (?, ?)", (version, now))
