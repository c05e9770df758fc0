"""The audit trail: a hash-chained line before every payload leaves and one per request with every attempt's
outcome; never the payload nor a key.

A compliance officer reads it to prove where every payload went (`sovra audit`) and that no line was
removed or edited since (`sovra audit verify`). The chains live in `audit_chain`, signed checkpoints in
`audit_sign`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sovra.orchestrator.router.audit_chain import (
    FILE_MODE,
    GENESIS,
    WRITER,
    Head,
    Part,
    VerifyResult,
    chain_segments,
    last_sealed,
    opened,
    parse,
    private_dir,
    seal,
    segment_name,
    trail_dir,
    verify_chains,
)
from sovra.core.api_errors import AuditUnavailable

log = logging.getLogger("sovra.audit")

__all__ = ["OUTCOMES", "Attempt", "AuditLog", "AuditRecord", "Filter", "Head", "ReadResult", "RequestContext",
           "VerifyResult", "now_iso", "read", "read_writers", "verify"]

OUTCOMES = frozenset({"ok", "not_sent", "refused", "rejected", "failed", "timeout", "cancelled",
                      "stream_interrupted"})
#: Attempt outcomes where the backend answered (all of it, or a stream's first part): the request was processed there.
ANSWERED = frozenset({"ok", "stream_interrupted"})
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
    send_seq: int | None = None  # the seq of the line written before the payload left, when one was

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
    #: a deployment with locale variants: the request's locale, where it came from (header, metadata, detected),
    #: and the variant's deployment when one served (never the text the locale was detected in)
    locale: str | None = None
    locale_source: str | None = None
    variant: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "attempts", tuple(self.attempts))

    @property
    def served(self) -> Attempt | None:
        """The last attempt that answered: where the request was processed, also when its stream then broke (the
        client got part of an answer from there, so the record must name it)."""
        return next((a for a in reversed(self.attempts) if a.outcome in ANSWERED), None)

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
        out = {"time": self.time, "request_id": self.request_id, "tenant": self.tenant,
               "deployment": self.deployment, "model": self.model, "residency": self.residency,
               "target": served.target if served else None, "zone": served.zone if served else None,
               "country": served.country if served else None,
               "attempts": [_attempt_json(a) for a in self.attempts],
               "status": self.status, "outcome": self.outcome, "latency_ms": self.latency_ms,
               "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        if self.locale is not None or self.variant is not None:  # only deployments with variants: lines stay short
            out.update(locale=self.locale, locale_source=self.locale_source, variant=self.variant)
        return out


def _attempt_json(a: Attempt) -> dict[str, Any]:
    out = {"target": a.target, "zone": a.zone, "country": a.country, "outcome": a.outcome}
    if a.send_seq is not None:
        out["send_seq"] = a.send_seq
    return out


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
    locale: str | None = None
    locale_source: str | None = None
    variant: str | None = None
    # [target, zone, country, outcome]; outcome None while the send is in flight
    _attempts: list[list[Any]] = field(default_factory=list, init=False, repr=False)
    _started: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._started = self.clock()

    def attempt(self, target: str, zone: str, country: str | None, outcome: str) -> None:
        """Append a finished attempt."""
        Attempt(target, zone, country, outcome)  # rejects an unknown outcome now, not in the `finally`
        self._attempts.append([target, zone, country, outcome, None])

    def sending(self, target: str, zone: str, country: str | None, send_seq: int | None = None) -> None:
        """Mark a send as started, immediately before the payload leaves; `settle` says how it ended."""
        self._attempts.append([target, zone, country, None, send_seq])

    def ended(self, target: str, zone: str, country: str | None, outcome: str) -> None:
        """An attempt ended: settle the send in flight to `target`, or append it when none was marked."""
        last = self._attempts[-1] if self._attempts else None
        if last is not None and last[3] is None and last[0] == target:
            Attempt("-", "-", None, outcome)
            last[3] = outcome
        else:
            self.attempt(target, zone, country, outcome)

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
        return tuple(Attempt(t, z, c, o or "cancelled", n) for t, z, c, o, n in self._attempts)

    def record(self, *, latency_ms: float | None = None) -> AuditRecord:
        """The record as of now (latency from the injected clock unless given); safe in a `finally`."""
        status, outcome = (CLIENT_CLOSED, "cancelled") if self.status is None else (
            self.status, self.outcome or "")
        return AuditRecord(time=self.wall(), request_id=self.request_id, tenant=self.tenant,
                           deployment=self.deployment, model=self.model, residency=self.residency,
                           attempts=self.attempts, status=status, outcome=outcome,
                           latency_ms=latency_ms if latency_ms is not None else round(
                               (self.clock() - self._started) * 1000, 3),
                           prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                           locale=self.locale, locale_source=self.locale_source, variant=self.variant)


def _count(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


class AuditLog:
    """One writer's chain in the trail directory `path`: segments `<writer>-<first seq>.jsonl`, a new one past
    `max_bytes`, none ever renamed or deleted. Files 0600, the directory 0700.

    Lines: `send` (written before a payload leaves, `sending`), `request` (the request's record with every
    attempt's outcome, `write`), `unauthenticated` (a count of requests that never authenticated, at most one line
    per `unauthenticated_every_s`: strangers cannot flush the trail), `close` (the writer stopped cleanly).

    Durability: every line is written to the OS (unbuffered `write`) before `sending` returns, so a payload that
    left is on record even if the router process is killed; `fsync=True` also forces it to disk before the payload
    leaves (survives the node losing power), at the cost `bench/router.py` measures. When a write fails the log is
    unhealthy until one succeeds; `refuse=True` (the default) turns a failed write-ahead into `AuditUnavailable`,
    so nothing is sent unrecorded.

    One writer per chain: threads share it through a lock. A writer restarted under the same name continues its
    chain from the last good line; a line torn by a crash is left alone and the next line starts on a new line.
    """

    def __init__(self, path: str | Path, *, writer: str = "router", max_bytes: int = 50_000_000,
                 fsync: bool = False, refuse: bool = True, unauthenticated_every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], str] | None = None):
        if not WRITER.match(writer):
            raise ValueError(f"audit writer name {writer!r}: use letters, digits, '.', '_' or '-' (at most 80)")
        self.path = Path(path)
        private_dir(self.path)
        self.writer = writer
        self.fsync, self.refuse = fsync, refuse
        self._max_bytes = max_bytes
        self._clock, self._wall = clock, wall or now_iso
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._size = 0  # of the open segment: this writer is its only one
        segments = chain_segments(self.path).get(writer, [])
        last = last_sealed(segments)
        self._segment: Path | None = segments[-1] if segments else None
        self._head: str = last["hash"] if last else GENESIS
        self._seq: int = last["seq"] + 1 if last else 0
        self._last_time: str | None = last.get("time") if last else None
        self.failures = 0  # writes that failed since the process started
        self.healthy = True  # the last write succeeded
        self._strangers, self._strangers_since, self._strangers_at = 0, None, clock()
        self._every_s = unauthenticated_every_s

    @property
    def head(self) -> str:
        """The hash of this writer's newest line (64 zeros before the first)."""
        return self._head

    def own_head(self) -> Head | None:
        """This writer's newest line as a checkpoint names it; None before the first."""
        with self._lock:
            return None if self._seq == 0 else Head(self.writer, self._seq - 1, self._head, self._last_time)

    def heads(self) -> list[Head]:
        """Every chain's newest line: this writer's from memory (what it wrote), the others' from their files."""
        own = self.own_head()
        out = [own] if own else []
        for writer, segments in chain_segments(self.path).items():
            if writer != self.writer and (last := last_sealed(segments)) is not None:
                with contextlib.suppress(ValueError):
                    out.append(Head.of({**last, "writer": writer}))
        return sorted(out, key=lambda h: h.writer)

    def sending(self, ctx: RequestContext, target: str, zone: str, country: str | None) -> int | None:
        """Record that a payload is about to leave for `target`, before it does; returns the line's seq (None when
        the write failed and the org chose to go on). Raises `AuditUnavailable` rather than let it leave unrecorded."""
        body = {"kind": "send", "time": self._wall(), "request_id": ctx.request_id, "tenant": ctx.tenant,
                "deployment": ctx.deployment, "model": ctx.model, "residency": ctx.residency, "target": target,
                "zone": zone, "country": country}
        try:
            return self._append(body)
        except OSError as exc:
            if self.refuse:
                raise AuditUnavailable(
                    "the audit trail cannot be written on this router "
                    f"({exc.strerror or type(exc).__name__}), so no payload is sent; retry later") from None
            log.warning("audit write failed (%s); sending anyway, as org.yaml `audit: {on_failure: continue}` says",
                        exc)
            return None

    def write(self, record: AuditRecord) -> None:
        """Append a request's record, chained to the line before."""
        self._append({"kind": "request", **record.to_json()})

    def unauthenticated(self) -> None:
        """Count a request that never authenticated; a line sums them at most once per interval."""
        with self._lock:
            if self._strangers == 0:
                self._strangers_since = self._wall()
            self._strangers += 1
            due = self._clock() - self._strangers_at >= self._every_s
        if due:
            self._flush_strangers()

    def close(self) -> None:
        """End the chain cleanly: the unauthenticated count, then a `close` line."""
        with contextlib.suppress(OSError):
            self._flush_strangers()
            self._append({"kind": "close", "time": self._wall()})
        with self._lock:
            self._close()

    def read(self, flt: Filter | None = None, *, limit: int | None = None) -> ReadResult:
        """`read` over a consistent snapshot of the trail."""
        with opened(self.path) as chains:
            return _read_chains(chains, flt or Filter(), limit)

    def verify(self, expect: Mapping[str, Head] | None = None) -> VerifyResult:
        """`verify` that also knows the newest hash this writer wrote, so a cut end of its chain is caught."""
        with contextlib.ExitStack() as stack:
            with self._lock:
                chains, head = stack.enter_context(opened(self.path)), self._head
            return verify_chains(chains, heads={self.writer: head}, expect=expect)

    def _flush_strangers(self) -> None:
        with self._lock:
            count, since = self._strangers, self._strangers_since
            self._strangers, self._strangers_at = 0, self._clock()
        if count:
            try:
                self._append({"kind": "unauthenticated", "time": self._wall(), "since": since, "count": count})
            except OSError:
                with self._lock:
                    self._strangers += count

    def _append(self, body: dict[str, Any]) -> int:
        with self._lock:
            body["writer"], body["seq"] = self.writer, self._seq
            line, digest = seal(body, self._head)
            try:
                fh = self._open(len(line))
                rest = memoryview(line)
                while rest:  # unbuffered: a crash tears at most this line; a short write is finished or raises
                    rest = rest[fh.write(rest):]
                self._size += len(line)
                if self.fsync:
                    os.fsync(fh.fileno())
            except BaseException as exc:
                self._close()  # the next write re-checks the segment's end before appending
                if isinstance(exc, OSError):
                    self.failures += 1
                    self.healthy = False
                raise
            self._head, self._seq, self._last_time = digest, self._seq + 1, body.get("time")
            self.healthy = True
            return body["seq"]

    def _open(self, incoming: int) -> IO[bytes]:
        if self._file is None:
            if self._segment is None:
                self._segment = self.path / segment_name(self.writer, self._seq)
            self._file = _open_private(self._segment)
            if _ends_torn(self._segment):
                self._file.write(b"\n")
            self._size = os.fstat(self._file.fileno()).st_size
        if self._size and self._size + incoming > self._max_bytes:
            self._close()  # a new segment, named by the seq it starts at; the full one is kept as it is
            self._segment = self.path / segment_name(self.writer, self._seq)
            self._file = _open_private(self._segment)
            self._size = 0
        return self._file

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _open_private(path: Path) -> IO[bytes]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, "ab", buffering=0)


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
    """Records (oldest first), unreadable lines skipped, and requests that never authenticated (counted only)."""

    records: tuple[dict[str, Any], ...]
    torn: int
    files: tuple[str, ...]
    unauthenticated: int = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


def read(path: str | Path, *, tenant: str | None = None, deployment: str | None = None,
         model: str | None = None, zone: str | None = None, status: int | None = None, since: str | None = None,
         limit: int | None = None) -> ReadResult:
    """Request records of every chain in the trail `path` (a directory, or one of its segment files), oldest first,
    filtered (see `Filter`); the newest `limit` if given. A payload recorded as sent whose request has no record
    (the router stopped mid-request) is shown as an `unfinished` record. Torn lines are skipped and counted."""
    flt = Filter(tenant=tenant, deployment=deployment, model=model, zone=zone, status=status, since=since)
    with opened(trail_dir(Path(path))) as chains:
        return _read_chains(chains, flt, limit)


def verify(path: str | Path, *, expect: Mapping[str, Head] | None = None) -> VerifyResult:
    """Check every chain of the trail `path` (a directory, or one of its segment files)."""
    with opened(trail_dir(Path(path))) as chains:
        return verify_chains(chains, expect=expect)


def read_writers(chains: Mapping[str, list[Part]], flt: Filter, limit: int | None) -> dict[str, ReadResult]:
    """`read`, one result per writer's chain (what several nodes' trails merge by: `audit_nodes`)."""
    return {writer: _read_chains({writer: parts}, flt, limit) for writer, parts in chains.items()}


def _read_chains(chains: Mapping[str, list[Part]], flt: Filter, limit: int | None) -> ReadResult:
    kept: list[dict[str, Any]] = []
    torn = strangers = 0
    for parts in chains.values():
        mine: deque[dict[str, Any]] = deque(maxlen=limit)
        sends: dict[int, dict[str, Any]] = {}  # write-ahead lines not yet answered by their request's record
        for part in parts:
            for raw in part.lines():
                rec = parse(raw)
                if rec is None:
                    torn += 1
                    continue
                kind = rec.get("kind")
                if kind == "send" and isinstance(rec.get("seq"), int):
                    sends[rec["seq"]] = rec
                elif kind == "request":
                    for a in rec.get("attempts") or ():
                        if isinstance(a, dict) and isinstance(a.get("send_seq"), int):
                            sends.pop(a["send_seq"], None)
                    if flt.matches(rec):
                        mine.append(rec)
                elif kind == "unauthenticated" and isinstance(rec.get("count"), int):
                    strangers += rec["count"]
        kept += mine
        kept += (u for u in map(_unfinished, sends.values()) if flt.matches(u))
    kept.sort(key=lambda r: str(r.get("time", "")))
    if limit is not None:
        kept = kept[-limit:] if limit else []
    files = tuple(p.name for parts in chains.values() for p in parts)
    return ReadResult(tuple(kept), torn, files, strangers)


def _unfinished(send: Mapping[str, Any]) -> dict[str, Any]:
    """A request whose payload was recorded as leaving, with no record of how it ended: the router stopped first."""
    return {"kind": "request", "time": send.get("time"), "request_id": send.get("request_id"),
            "tenant": send.get("tenant"), "deployment": send.get("deployment"), "model": send.get("model"),
            "residency": send.get("residency"), "target": None, "zone": None, "country": None,
            "attempts": [{"target": send.get("target"), "zone": send.get("zone"), "country": send.get("country"),
                          "outcome": "unknown", "send_seq": send.get("seq")}],
            "status": None, "outcome": "unfinished", "writer": send.get("writer"), "seq": send.get("seq")}
