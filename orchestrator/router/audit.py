"""The audit trail: one hash-chained JSON line per request with every attempt; never the payload nor a key.

A compliance officer reads it to prove where every payload went (`sovra audit`) and that no line was
removed or edited since (`sovra audit verify`). The chain itself lives in `audit_chain`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from orchestrator.router.audit_chain import (
    GENESIS,
    Part,
    VerifyResult,
    last_sealed,
    opened,
    parse,
    seal,
    verify,
    verify_parts,
)

__all__ = ["OUTCOMES", "Attempt", "AuditLog", "AuditRecord", "Filter", "ReadResult", "RequestContext",
           "VerifyResult", "now_iso", "read", "verify"]

OUTCOMES = frozenset({"ok", "not_sent", "refused", "rejected", "failed", "timeout", "cancelled",
                      "stream_interrupted"})
CLIENT_CLOSED = 499  # nginx's "client closed request": the client went away before an answer was written


def now_iso() -> str:
    """UTC now, as every record's `time` is written (string order is time order)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Attempt:
    """One send decision: where the payload was (or was not) sent, and how it ended.

    `not_sent`: failed before the payload left; `refused`: the backend said it did not process it (503, 429);
    `rejected`: the backend refused the request itself as invalid (4xx), which the client gets;
    `failed`/`timeout`: the backend may have received it; `cancelled`: the client went away.
    """

    target: str
    zone: str
    country: str | None
    outcome: str

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"attempt outcome {self.outcome!r} is not one of {sorted(OUTCOMES)}")

    @property
    def payload_left(self) -> bool:
        """Whether the backend may have seen the payload."""
        return self.outcome != "not_sent"


@dataclass(frozen=True)
class AuditRecord:
    """What one request did. Only metadata: the fields are fixed, so a payload cannot slip in."""

    time: str
    request_id: str
    tenant: str
    deployment: str | None
    model: str | None
    residency: str
    attempts: tuple[Attempt, ...]
    status: int
    outcome: str
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "attempts", tuple(self.attempts))

    @property
    def served(self) -> Attempt | None:
        """The last attempt that answered: where the request was processed."""
        return next((a for a in reversed(self.attempts) if a.outcome == "ok"), None)

    @property
    def target(self) -> str | None:
        return self.served.target if self.served else None

    @property
    def zone(self) -> str | None:
        return self.served.zone if self.served else None

    @property
    def country(self) -> str | None:
        return self.served.country if self.served else None

    def to_json(self) -> dict[str, Any]:
        """The line's fields: flat `target`/`zone`/`country` (the served attempt) for filters, all attempts."""
        served = self.served  # once: this runs for every request
        return {"time": self.time, "request_id": self.request_id, "tenant": self.tenant,
                "deployment": self.deployment, "model": self.model, "residency": self.residency,
                "target": served.target if served else None, "zone": served.zone if served else None,
                "country": served.country if served else None,
                "attempts": [{"target": a.target, "zone": a.zone, "country": a.country, "outcome": a.outcome}
                             for a in self.attempts],
                "status": self.status, "outcome": self.outcome, "latency_ms": self.latency_ms,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


@dataclass
class RequestContext:
    """A request's audit facts, filled as it goes and turned into one record in the router's `finally`.

    A request that never reached `finish` ended because the client went away: it is recorded as `cancelled`
    (499), and an attempt still in flight then is `cancelled` too, since its backend may have the payload.
    """

    request_id: str
    clock: Callable[[], float] = time.perf_counter
    wall: Callable[[], str] = now_iso
    tenant: str = "-"
    deployment: str | None = None
    model: str | None = None
    residency: str = "-"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int | None = None
    outcome: str | None = None
    # [target, zone, country, outcome]; outcome None while the send is in flight
    _attempts: list[list[Any]] = field(default_factory=list, init=False, repr=False)
    _started: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._started = self.clock()

    def attempt(self, target: str, zone: str, country: str | None, outcome: str) -> None:
        """Append a finished attempt."""
        Attempt(target, zone, country, outcome)  # rejects an unknown outcome now, not in the `finally`
        self._attempts.append([target, zone, country, outcome])

    def sending(self, target: str, zone: str, country: str | None) -> None:
        """Mark a send as started, immediately before the payload leaves; `settle` says how it ended."""
        self._attempts.append([target, zone, country, None])

    def settle(self, outcome: str) -> None:
        """Set the outcome of the latest attempt (also to amend one, e.g. `ok` -> `stream_interrupted`)."""
        if not self._attempts:
            raise ValueError("settle() before any attempt")
        Attempt("-", "-", None, outcome)
        self._attempts[-1][3] = outcome

    def usage(self, usage: object) -> None:
        """Token counts from an OpenAI `usage` object; anything else is ignored."""
        if isinstance(usage, Mapping):
            self.prompt_tokens = _count(usage.get("prompt_tokens"), self.prompt_tokens)
            self.completion_tokens = _count(usage.get("completion_tokens"), self.completion_tokens)

    def finish(self, status: int, outcome: str, *, latency_ms: float | None = None,
               prompt_tokens: int | None = None, completion_tokens: int | None = None) -> AuditRecord:
        """Set the answer the client got (HTTP status, `ok` or the error code) and return the record to write."""
        self.status, self.outcome = status, outcome
        self.prompt_tokens = _count(prompt_tokens, self.prompt_tokens)
        self.completion_tokens = _count(completion_tokens, self.completion_tokens)
        return self.record(latency_ms=latency_ms)

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        return tuple(Attempt(t, z, c, o or "cancelled") for t, z, c, o in self._attempts)

    def record(self, *, latency_ms: float | None = None) -> AuditRecord:
        """The record as of now (latency from the injected clock unless given); safe in a `finally`."""
        status, outcome = (CLIENT_CLOSED, "cancelled") if self.status is None else (
            self.status, self.outcome or "")
        return AuditRecord(time=self.wall(), request_id=self.request_id, tenant=self.tenant,
                           deployment=self.deployment, model=self.model, residency=self.residency,
                           attempts=self.attempts, status=status, outcome=outcome,
                           latency_ms=latency_ms if latency_ms is not None else round(
                               (self.clock() - self._started) * 1000, 3),
                           prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)


def _count(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


class AuditLog:
    """Appends chained lines to `path`, rotating at `max_bytes` into `path.1` … `path.<backups>`, oldest highest.

    One writer per file: threads share it through a lock. A new writer continues the chain from the last good
    line; a line torn by a crash is left alone and the next record starts on a new line.
    """

    def __init__(self, path: str | Path, *, max_bytes: int = 50_000_000, backups: int = 10,
                 fsync: bool = False):
        if backups < 1:
            raise ValueError("backups must be at least 1: rotation needs somewhere to put the full file")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._max_bytes, self._backups, self._fsync = max_bytes, backups, fsync
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._size = 0  # of the open file: this writer is its only one
        last = last_sealed(self.path)
        self._head: str = last["hash"] if last else GENESIS
        self._seq: int = last["seq"] + 1 if last else 0

    @property
    def head(self) -> str:
        """The hash of the newest record in the chain (64 zeros before the first)."""
        return self._head

    def write(self, record: AuditRecord) -> None:
        """Append one record, chained to the one before."""
        body = record.to_json()
        with self._lock:
            body["seq"] = self._seq
            line, digest = seal(body, self._head)
            try:
                fh = self._open(len(line))
                rest = memoryview(line)
                while rest:  # unbuffered: a crash tears at most this line; a short write is finished or raises
                    rest = rest[fh.write(rest):]
                self._size += len(line)
                if self._fsync:
                    os.fsync(fh.fileno())
            except BaseException:
                self._close()  # the next write re-checks the file's end before appending
                raise
            self._head, self._seq = digest, self._seq + 1

    def read(self, flt: Filter | None = None, *, limit: int | None = None) -> ReadResult:
        """`read` over a consistent snapshot of the files (no rotation can slip between them)."""
        with self._snapshot() as (parts, _):
            return _read_parts(parts, flt or Filter(), limit)

    def verify(self) -> VerifyResult:
        """`verify` that also knows the newest hash this writer wrote, so a cut end of the trail is caught."""
        with self._snapshot() as (parts, head):
            return verify_parts(parts, head=head)

    def close(self) -> None:
        with self._lock:
            self._close()

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[tuple[list[Part], str]]:
        with contextlib.ExitStack() as stack:
            with self._lock:
                parts, head = stack.enter_context(opened(self.path)), self._head
            yield parts, head

    def _open(self, incoming: int) -> IO[bytes]:
        if self._file is None:
            self._file = self.path.open("ab", buffering=0)
            if _ends_torn(self.path):
                self._file.write(b"\n")
            self._size = os.fstat(self._file.fileno()).st_size
        if self._size and self._size + incoming > self._max_bytes:
            self._rotate()
            self._file = self.path.open("ab", buffering=0)
            self._size = 0
        return self._file

    def _rotate(self) -> None:
        self._close()
        for i in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _ends_torn(path: Path) -> bool:
    with path.open("rb") as fh:
        if fh.seek(0, os.SEEK_END) == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


@dataclass(frozen=True)
class Filter:
    """Which records to show. `zone` matches a request whose payload reached that zone in any attempt, served
    or not: the compliance question is where a payload went, and a failed attempt may have delivered it too."""

    tenant: str | None = None
    deployment: str | None = None
    model: str | None = None
    zone: str | None = None
    status: int | None = None
    since: str | None = None  # any ISO time; compared in UTC

    def __post_init__(self) -> None:
        if self.since is not None:
            object.__setattr__(self, "since", utc_key(self.since))
        if self.zone is not None:
            object.__setattr__(self, "zone", self.zone.upper())

    def matches(self, rec: Mapping[str, Any]) -> bool:
        return ((self.tenant is None or rec.get("tenant") == self.tenant)
                and (self.deployment is None or rec.get("deployment") == self.deployment)
                and (self.model is None or rec.get("model") == self.model)
                and (self.status is None or rec.get("status") == self.status)
                and (self.since is None or str(rec.get("time", "")) >= self.since)
                and (self.zone is None or self.zone in _payload_zones(rec)))


def _payload_zones(rec: Mapping[str, Any]) -> set[str]:
    attempts = rec.get("attempts") if isinstance(rec.get("attempts"), list) else []
    zones = {a.get("zone") for a in attempts if isinstance(a, dict) and a.get("outcome") != "not_sent"}
    return zones | {rec.get("zone")}


def utc_key(value: str) -> str:
    """An ISO date or time as records write it (UTC, milliseconds), so that strings compare as times."""
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"since: {value!r} is not an ISO date or time, e.g. 2026-11-22 or 2026-11-22T10:00:00Z"
                         ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class ReadResult:
    """Records (oldest first) and how many unreadable lines were skipped; iterating it yields the records."""

    records: tuple[dict[str, Any], ...]
    torn: int
    files: tuple[str, ...]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


def read(path: str | Path, *, tenant: str | None = None, deployment: str | None = None,
         model: str | None = None, zone: str | None = None, status: int | None = None, since: str | None = None,
         limit: int | None = None) -> ReadResult:
    """Records from the rotated files, oldest first, filtered (see `Filter`); the newest `limit` if given.

    Torn or unparseable lines are skipped and counted, never fatal.
    """
    flt = Filter(tenant=tenant, deployment=deployment, model=model, zone=zone, status=status, since=since)
    with opened(Path(path)) as parts:
        return _read_parts(parts, flt, limit)


def _read_parts(parts: list[Part], flt: Filter, limit: int | None) -> ReadResult:
    kept: deque[dict[str, Any]] = deque(maxlen=limit)
    torn = 0
    for part in parts:
        for raw in part.lines():
            rec = parse(raw)
            if rec is None:
                torn += 1
            elif flt.matches(rec):
                kept.append(rec)
    return ReadResult(tuple(kept), torn, tuple(p.name for p in parts))
