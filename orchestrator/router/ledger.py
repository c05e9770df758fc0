"""Ledger entries on their way to the store, off the request path and never lost.

Each entry is appended to this router replica's spool file (one unbuffered write, before the answer is sent) and
a background thread writes the spool to the store in batches. The spool is the queue: when the store is down
the entries wait there (counted in /metrics) and go when it is back; when the process is killed, the next replica
on the node finds the spool no one holds (each live writer holds an exclusive `flock` on its own) and replays it.
The store skips entries it already has (by `entry_id`), so a batch replayed after a crash between the store's
commit and the spool's mark counts once.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO

from sovra.core.errors import StoreUnavailable
from sovra.infra.ledger.store import CreditCap, Entry, SpendStore

log = logging.getLogger("sovra.router")

SPOOL_SUFFIX = ".spool"
#: A fully written spool longer than this is emptied (its mark first, so a crash in between only replays).
ROTATE_BYTES = 4 * 1024 * 1024
BATCH_BYTES = 2 * 1024 * 1024
BATCH_ENTRIES = 2000
ORPHAN_SCAN_EVERY_S = 10.0
PRUNE_EVERY_S = 600.0


class Ledger:
    """One router replica's ledger writer: `add` on the request path, `run` in its own thread."""

    def __init__(self, store: SpendStore, spool_dir: Path, writer: str, *, flush_every_s: float = 0.05,
                 credits: Callable[[], Mapping[str, CreditCap]] = dict) -> None:
        self.store, self.dir, self.flush_every_s, self.credits = store, Path(spool_dir), flush_every_s, credits
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self.prefix = f"{writer}.{secrets.token_hex(4)}"
        self.path = self.dir / (self.prefix + SPOOL_SUFFIX)
        self._n = 0
        self._lock = threading.Lock()  # appends (event loop) against emptying (flusher)
        self._flushing = threading.Lock()
        self.corrupt = 0  # spool lines that could not be read (skipped, logged)
        self._file: IO[bytes] = _open_locked(self.path)
        self._size = 0  # the spool's length: every write and the emptying go through `_lock`
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.healthy = True
        self.failures = 0  # store writes that failed
        self.spool_failures = 0  # entries that could not be spooled (kept in memory until written)
        self.written = 0  # entries the store took
        #: (entries, the spool's length after them; None: they could not be spooled) waiting for the store
        self._queue: collections.deque[tuple[list[Entry], int | None]] = collections.deque()
        self._mark = 0  # the spool's bytes the store has
        self._next_scan = 0.0
        self._next_prune = 0.0
        #: clouds whose credits had room this month at the last flush (all credited clouds until one is read)
        self.credited: frozenset[str] = frozenset(self.credits())

    # -- the request path ----------------------------------------------------------------------------------------

    def next_id(self) -> str:
        """A new entry id, unique across replicas and restarts (writer, a random start token, a counter)."""
        self._n += 1
        return f"{self.prefix}:{self._n}"

    def add(self, entries: Iterable[Entry]) -> None:
        """Spool `entries`: on the node's disk when this returns (one write)."""
        entries = list(entries)
        data = b"".join(json.dumps(e.to_json(), separators=(",", ":")).encode() + b"\n" for e in entries)
        if not data:
            return
        with self._lock:
            try:
                view = memoryview(data)
                while view:
                    view = view[self._file.write(view):]
                self._size += len(data)
                self._queue.append((entries, self._size))  # the flusher writes them from memory; the spool is
                # read back only by whoever finds it orphaned
            except (OSError, ValueError) as exc:  # disk full, or closed: keep them for the flusher, lose none
                self.spool_failures += 1
                log.error("ledger spool %s cannot be written (%s); entries kept in memory until the store has them",
                          self.path, exc)
                with contextlib.suppress(OSError, ValueError):  # no torn line for the next append to glue onto
                    os.ftruncate(self._file.fileno(), self._size)
                self._queue.append((entries, None))
        if len(data) > BATCH_BYTES // 4:
            self._wake.set()

    # -- the flusher ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sovra-ledger", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = self.flush_every_s
        while not self._stop.is_set():  # at once first: spools orphaned by a killed replica go without waiting
            delay = self.flush_every_s if self.flush() else min(max(delay * 2, 0.2), 5.0)
            self._wake.wait(delay)
            self._wake.clear()

    def flush(self) -> bool:
        """Write what is pending (this replica's spool, then orphaned spools); False if the store failed. One
        flush at a time (the thread's, or `close`'s when the thread is slow to stop)."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> bool:
        try:
            self._flush_own()
            self._orphans()
            self._read_credit_room()
            self._prune()
        except StoreUnavailable as exc:
            self.failures += 1
            if self.healthy:
                log.warning("ledger: %s; entries wait in %s", exc, self.path)
            self.healthy = False
            return False
        except Exception:  # (a bug must not stop the thread: the entries stay spooled)
            self.failures += 1
            self.healthy = False
            log.exception("ledger flush failed; entries stay in %s", self.path)
            return False
        self.healthy = True
        return True

    def _flush_own(self) -> None:
        """This replica's entries, from memory in batches; after each, the spool's mark moves past them."""
        while True:
            with self._lock:
                taken = []
                while self._queue and sum(len(es) for es, _ in taken) < BATCH_ENTRIES:
                    taken.append(self._queue.popleft())
            if not taken:
                break
            try:
                self.written += self.store.record([e for es, _ in taken for e in es], self.credits())
            except BaseException:
                with self._lock:
                    self._queue.extendleft(reversed(taken))
                raise
            ends = [end for _, end in taken if end is not None]
            if ends:
                self._mark = ends[-1]
                _write_mark(self.path, self._mark)
        with self._lock:  # everything written: empty a long spool (its mark first, so a crash only replays)
            if not self._queue and self._size >= ROTATE_BYTES and self._mark == self._size:
                _write_mark(self.path, 0)
                os.ftruncate(self._file.fileno(), 0)
                self._size = self._mark = 0

    def _drain(self, path: Path, fh: IO[bytes]) -> None:
        """Replay an orphaned spool from its mark, batch by batch."""
        mark = _read_mark(path)
        while True:
            size = os.fstat(fh.fileno()).st_size
            if mark > size:  # emptied after the mark was written: start over (replays count once)
                mark = 0
            if mark == size:
                break
            with open(path, "rb") as f:
                f.seek(mark)
                chunk = f.read(BATCH_BYTES)
            end = chunk.rfind(b"\n") + 1
            if end == 0:  # a torn last line (a crash mid-write) never completes once its writer is gone
                if len(chunk) < BATCH_BYTES:
                    mark = size
                    _write_mark(path, mark)
                break
            entries = []
            for line in chunk[:end].splitlines():
                if line.strip():
                    try:
                        entries.append(Entry.from_json(json.loads(line)))
                    except (ValueError, KeyError, TypeError):  # one bad line must not stop the ledger for good
                        self.corrupt += 1
                        log.error("ledger spool %s: skipped an unreadable line at byte %d", path, mark)
            self.written += self.store.record(entries, self.credits())
            mark += end
            _write_mark(path, mark)

    def _orphans(self) -> None:
        """Replay spools whose writers are gone (their flock is free), then remove them."""
        import time

        now = time.monotonic()
        if now < self._next_scan:
            return
        self._next_scan = now + ORPHAN_SCAN_EVERY_S
        for path in sorted(self.dir.glob("*" + SPOOL_SUFFIX)):
            if path == self.path:
                continue
            try:
                fh = open(path, "ab")  # noqa: SIM115  (held while replaying)
            except OSError:
                continue
            with fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # its writer is alive
                self._drain(path, fh)
                log.info("ledger: replayed the orphaned spool %s", path.name)
                with contextlib.suppress(OSError):
                    _mark_path(path).unlink()
                path.unlink()

    def _prune(self) -> None:
        """Now and then, drop per-minute quota counters more than an hour old."""
        import datetime as dt
        import time

        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        self.store.prune(hour_ago.strftime("%Y-%m-%dT%H:%M"))

    def _read_credit_room(self) -> None:
        caps = self.credits()
        self.credited = frozenset(cloud for cloud, cap in caps.items()
                                  if self.store.used(cap.scope, "usd_micros", cap.month) < cap.cap_micros)

    @property
    def pending_bytes(self) -> int:
        """Spooled bytes the store does not have yet (this replica's spool)."""
        return max(0, self._size - self._mark)

    @property
    def pending_entries(self) -> int:
        return sum(len(es) for es, _ in list(self._queue))

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and write what is pending (what the store will not take now stays spooled)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.flush()
        self._file.close()  # releases the flock: the next replica may replay what is left


def _open_locked(path: Path) -> IO[bytes]:
    """The spool, created under a name the orphan scan ignores and locked before it takes its own name: another
    replica's scan can never find it unlocked."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.replace(tmp, path)
    return os.fdopen(fd, "ab", buffering=0)


def _mark_path(path: Path) -> Path:
    return path.with_name(path.name + ".done")


def _read_mark(path: Path) -> int:
    try:
        return int(_mark_path(path).read_text() or 0)
    except (OSError, ValueError):
        return 0


def _write_mark(path: Path, offset: int) -> None:
    tmp = _mark_path(path).with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(str(offset))
    os.replace(tmp, _mark_path(path))
