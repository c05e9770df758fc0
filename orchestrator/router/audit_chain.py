"""The audit trail's hash chains: how a line is sealed, where each writer's chain lives, and how chains are checked.

A trail is a directory. Each writer (one router replica) keeps its own chain there, in segments named
`<writer>-<first seq>.jsonl` (`chain_segments`): rotation opens a new segment and never renames or deletes one.
Each line carries `seq` (0, 1, 2… per writer), `prev` (the previous line's `hash`, 64 zeros for seq 0) and `hash`,
the sha256 of its canonical JSON without `hash`. Editing, removing or reordering a line breaks the chain there;
a gap in `seq` is named exactly. What a chain alone cannot show (a cut tail, the whole trail rewritten with the
same hashing) a signed checkpoint of the heads shows (`audit_sign`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

GENESIS = "0" * 64
WRITER = re.compile(r"^[A-Za-z0-9._-]{1,80}$")
_SEGMENT = re.compile(r"^(?P<writer>[A-Za-z0-9._-]{1,80})-(?P<seq>\d{12})\.jsonl$")
_REQUEST_ID = re.compile(rb'"request_id":"((?:[^"\\]|\\.)*)"')
DIR_MODE, FILE_MODE = 0o700, 0o600


def canonical(obj: dict[str, Any]) -> bytes:
    """The one byte form of a record: sorted keys, no spaces, ASCII only; a hash is reproducible anywhere."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def seal(body: dict[str, Any], prev: str) -> tuple[bytes, str]:
    """The line (with newline) for `body` chained to `prev`, and its hash.

    The line is `canonical` of the record with its hash, whose bytes are those of the record without it with one
    member added. The record is encoded once, as the members sorting before "hash" and those after, and the
    hash goes in between: this runs for every line.
    """
    if "hash" in body:
        raise ValueError("a record to seal must not carry a hash already")
    unsealed = {**body, "prev": prev}
    low = canonical({k: v for k, v in unsealed.items() if k < "hash"})
    high = canonical({k: v for k, v in unsealed.items() if k > "hash"})
    digest = hashlib.sha256(_members(low, high)).hexdigest()
    return _members(low, b'{"hash":"' + digest.encode() + b'"}', high) + b"\n", digest


def _members(*objects: bytes) -> bytes:
    """One canonical object of several canonical objects whose keys are disjoint and already in order."""
    return b"{" + b",".join(o[1:-1] for o in objects if o != b"{}") + b"}"


def segment_name(writer: str, first_seq: int) -> str:
    return f"{writer}-{first_seq:012d}.jsonl"


def chain_segments(directory: Path) -> dict[str, list[Path]]:
    """writer -> its segments, oldest first (by the seq each starts at)."""
    found: dict[str, list[tuple[int, Path]]] = {}
    if directory.is_dir():
        for path in directory.iterdir():
            m = _SEGMENT.match(path.name)
            if m and path.is_file():
                found.setdefault(m["writer"], []).append((int(m["seq"]), path))
    return {w: [p for _, p in sorted(parts)] for w, parts in sorted(found.items())}


def trail_dir(path: Path) -> Path:
    """The trail a path names: the directory itself, or the directory holding a segment file."""
    return path if path.is_dir() or not path.suffix else path.parent


def private_dir(path: Path) -> None:
    """Create `path` (and parents) readable by its owner only; an existing one is narrowed to 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)


@dataclass(frozen=True)
class Part:
    """One opened segment, read only up to `size`: lines written afterwards are not half-seen."""

    name: str
    fh: IO[bytes]
    size: int

    @property
    def first_seq(self) -> int | None:
        """The seq its first record must carry, from its name (None for a file not named as a segment)."""
        m = _SEGMENT.match(self.name)
        return int(m["seq"]) if m else None

    def lines(self) -> Iterator[bytes]:
        """Raw lines with their newline; a torn last line comes without one."""
        self.fh.seek(0)
        left = self.size
        while left > 0:
            raw = self.fh.readline(left)
            if not raw:
                return
            left -= len(raw)
            yield raw


@contextlib.contextmanager
def opened(directory: Path) -> Iterator[dict[str, list[Part]]]:
    """Every writer's segments, opened at once: a segment added afterwards is simply not in this snapshot."""
    with contextlib.ExitStack() as stack:
        chains: dict[str, list[Part]] = {}
        for writer, paths in chain_segments(directory).items():
            for path in paths:
                try:
                    fh = stack.enter_context(path.open("rb"))
                except FileNotFoundError:  # archived between listing and opening
                    continue
                chains.setdefault(writer, []).append(Part(path.name, fh, os.fstat(fh.fileno()).st_size))
        yield chains


def parse(raw: bytes) -> dict[str, Any] | None:
    """A line's record, or None when the line is torn or not a record at all."""
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def last_sealed(segments: list[Path]) -> dict[str, Any] | None:
    """The newest line of a chain that parses and carries a hash, sought from the end: a writer continues there."""
    for path in reversed(segments):
        for raw in _backwards(path):
            rec = parse(raw)
            if rec is not None and isinstance(rec.get("hash"), str) and isinstance(rec.get("seq"), int):
                return rec
    return None


def _backwards(path: Path, chunk: int = 1 << 16) -> Iterator[bytes]:
    with path.open("rb") as fh:
        end, rest = fh.seek(0, os.SEEK_END), b""
        while end > 0:
            start = max(0, end - chunk)
            fh.seek(start)
            lines = (fh.read(end - start) + rest).split(b"\n")
            end, rest = start, lines[0]
            yield from (line for line in reversed(lines[1:]) if line)
        if rest:
            yield rest


# -- checking --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Break:
    """The first place where a chain does not hold, and what is wrong there."""

    writer: str
    file: str
    line: int
    seq: int | None
    request_id: str | None
    problem: str  # "edited" | "removed_or_reordered" | "seq_gap" | "torn" | "truncated" | "not_extended"
    detail: str

    @property
    def message(self) -> str:
        at = f"seq {self.seq}" if self.seq is not None else f"{self.file} line {self.line}"
        return (f"writer {self.writer}: chain BROKEN at {at} ({self.file} line {self.line}, request "
                f"{self.request_id or '?'}): {self.problem}: {self.detail}")


@dataclass(frozen=True)
class Head:
    """A chain's newest record: what a checkpoint signs and what an auditor remembers."""

    writer: str
    seq: int
    hash: str
    time: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Head:
        writer, seq, digest = data.get("writer"), data.get("seq"), data.get("hash")
        if not (isinstance(writer, str) and WRITER.match(writer) and isinstance(seq, int) and seq >= 0
                and isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ValueError(f"not a chain head (writer, seq, hash): {dict(data)!r:.200}")
        time = data.get("time")
        return cls(writer, seq, digest, time if isinstance(time, str) else None)


@dataclass(frozen=True)
class ChainResult:
    """One writer's chain: how far it holds, which seqs it did not see, whether it was closed."""

    writer: str
    records: int
    files: tuple[str, ...]
    first_seq: int | None
    last: Head | None
    closed: bool  # its newest line is a `close`: its writer stopped cleanly (a restart under its name reopens it)
    torn: int  # lines cut short by a crash that the chain continues across: lost writes, not tampering
    broken: Break | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None

    @property
    def missing(self) -> str | None:
        """The seqs before the first available record, when there are any: rotated segments archived or removed."""
        if not self.first_seq:
            return None
        return f"seq 0–{self.first_seq - 1}" if self.first_seq > 1 else "seq 0"

    def to_json(self) -> dict[str, Any]:
        return {"writer": self.writer, "ok": self.ok, "records": self.records, "files": list(self.files),
                "first_seq": self.first_seq, "last": self.last.to_json() if self.last else None,
                "missing": self.missing, "closed": self.closed, "torn": self.torn,
                "broken": None if self.broken is None else {**dataclasses.asdict(self.broken),
                                                             "message": self.broken.message}}


@dataclass(frozen=True)
class VerifyResult:
    """Every chain of a trail, and what a checkpoint (when given) adds; `message` is for people."""

    chains: tuple[ChainResult, ...]
    checkpoint: bool = False  # checked against signed heads
    problems: tuple[Break, ...] = ()  # checkpoint heads the trail no longer extends

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chains) and not self.problems

    @property
    def records(self) -> int:
        return sum(c.records for c in self.chains)

    @property
    def broken(self) -> Break | None:
        return next((c.broken for c in self.chains if c.broken), None) or next(iter(self.problems), None)

    @property
    def message(self) -> str:
        if self.broken is not None:
            return self.broken.message
        if not self.chains:
            return "no records yet"
        parts = [f"{len(self.chains)} chain(s), {self.records} record(s): every chain intact"]
        gaps = [f"{c.writer}: {c.missing} not in the trail (archived or removed)" for c in self.chains if c.missing]
        parts += gaps
        torn = sum(c.torn for c in self.chains)
        if torn:
            parts.append(f"{torn} torn line(s) from interrupted writes skipped (the chains continue across them)")
        if self.checkpoint:
            parts.append("the trail extends the signed checkpoint")
        else:
            parts.append("without a checkpoint this cannot prove that no records were cut from a chain's end or that "
                         "the trail was not rewritten whole (`sovra audit verify --checkpoint FILE`)")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message, "records": self.records, "checkpoint": self.checkpoint,
                "chains": [c.to_json() for c in self.chains],
                "problems": [{**dataclasses.asdict(p), "message": p.message} for p in self.problems]}


def verify_chains(chains: Mapping[str, list[Part]], *, heads: Mapping[str, str] | None = None,
                  expect: Mapping[str, Head] | None = None) -> VerifyResult:
    """Check every chain. `heads` (writer -> the newest hash a live writer wrote) catches a cut end of that chain;
    `expect` (writer -> a head from a signed checkpoint or an auditor's memory) must still be in the trail."""
    results, problems = [], []
    for writer, parts in chains.items():
        check = _Checker(writer, (heads or {}).get(writer), (expect or {}).get(writer))
        results.append(check.run(parts))
        if check.expected_problem is not None:
            problems.append(check.expected_problem)
    for writer, head in (expect or {}).items():
        if writer not in chains:
            problems.append(Break(writer, "-", 0, head.seq, None, "not_extended",
                                  f"the checkpoint names this writer at seq {head.seq}, but the trail holds no "
                                  "segment of it: its chain was removed"))
    return VerifyResult(tuple(results), checkpoint=expect is not None, problems=tuple(problems))


class _Checker:
    """Walks one chain's lines in order, remembering the last good record and torn lines not yet bridged."""

    def __init__(self, writer: str, head: str | None, expect: Head | None):
        self.writer = writer
        self.head, self.head_seen = head, head is None or head == GENESIS
        self.expect = expect
        self.expect_seen = False
        self.expected_problem: Break | None = None
        self.last: str | None = None
        self.last_rec: dict[str, Any] | None = None
        self.records, self.torn = 0, 0
        self.first_seq: int | None = None
        self.closed = False
        self.pending: tuple[str, int, bytes] | None = None  # first torn line since the last good record
        self.pending_count = 0
        self.where: tuple[str, int] = ("-", 0)
        self.segment_start: int | None = None  # the seq the current segment's first record must carry

    def run(self, parts: list[Part]) -> ChainResult:
        broken = None
        for part in parts:
            self.segment_start = part.first_seq
            for number, raw in enumerate(part.lines(), start=1):
                broken = self.line(part.name, number, raw)
                if broken is not None:
                    break
            if broken is not None:
                break
        else:
            broken = self.end()
        self._check_expected(broken)
        last = None if self.last_rec is None else Head(self.writer, self.last_rec["seq"], self.last_rec["hash"],
                                                       self.last_rec.get("time"))
        return ChainResult(self.writer, self.records, tuple(p.name for p in parts), self.first_seq, last,
                           self.closed, self.torn, broken)

    def _break(self, file: str, number: int, rec: Mapping[str, Any] | None, problem: str, detail: str) -> Break:
        seq = rec.get("seq") if rec is not None and isinstance(rec.get("seq"), int) else None
        rid = rec.get("request_id") if rec is not None and isinstance(rec.get("request_id"), str) else None
        return Break(self.writer, file, number, seq, rid, problem, detail)

    def line(self, file: str, number: int, raw: bytes) -> Break | None:
        body = raw[:-1] if raw.endswith(b"\n") else raw
        self.where = (file, number)
        rec = parse(body)
        if rec is None:
            if self.pending is None:
                self.pending = (file, number, body)
            self.pending_count += 1
            return None
        if "hash" not in rec or "prev" not in rec or not isinstance(rec.get("seq"), int):
            return self._break(file, number, rec, "edited",
                               "the line carries no hash or seq: written before the chain existed, or inserted")
        stored = rec.pop("hash")
        if _canonical_or_none({**rec, "hash": stored}) != body:
            return self._break(file, number, rec, "edited", "the line is not as the router wrote it")
        if not isinstance(stored, str) or hashlib.sha256(canonical(rec)).hexdigest() != stored:
            return self._break(file, number, rec, "edited", "its hash does not match its content")
        if rec.get("writer") != self.writer:
            return self._break(file, number, rec, "edited",
                               f"it names writer {rec.get('writer')!r} but lies in {self.writer}'s chain")
        seq, prev = rec["seq"], rec.get("prev")
        if self.segment_start is not None:
            start, self.segment_start = self.segment_start, None
            if seq != start:  # a segment is named by the seq it starts at: its first lines were removed
                return self._break(file, number, rec, "removed_or_reordered",
                                   f"the segment starts at seq {start} but its first record is seq {seq}: "
                                   "records were removed from its start")
        if self.last is None:
            if self.pending is not None:  # unreadable lines before the first record: no telling what they were
                return self._torn("an unreadable line precedes the first record")
            if (seq == 0) != (prev == GENESIS):
                return self._break(file, number, rec, "edited", "seq 0 and the genesis link must go together")
            self.first_seq = seq
        else:
            expected = self.last_rec["seq"] + 1 if self.last_rec else 0
            if prev != self.last:
                if self.pending is not None:
                    return self._torn("the next record chains to a record that is no longer readable: "
                                      "a record was damaged")
                return self._break(file, number, rec, "removed_or_reordered",
                                   "it does not chain to the record before it: records were removed or reordered")
            if seq != expected:
                return self._break(file, number, rec, "seq_gap", f"seq {expected} was expected here")
        self.torn += self.pending_count
        self.pending, self.pending_count = None, 0
        self.last, self.records = stored, self.records + 1
        rec["hash"] = stored
        self.last_rec = rec
        self.closed = rec.get("kind") == "close"
        self.head_seen = self.head_seen or stored == self.head
        if self.expect is not None and seq == self.expect.seq:
            self.expect_seen = True
            if stored != self.expect.hash:
                self.expected_problem = self._break(
                    file, number, rec, "not_extended",
                    f"the checkpoint's record at seq {seq} had hash {self.expect.hash[:12]}…; the trail's has "
                    f"{stored[:12]}…: the chain was rewritten")
        return None

    def end(self) -> Break | None:
        if self.pending is not None and not (self.head is not None and self.head == self.last):
            return self._torn("the last line is incomplete: a crash mid-write, or damage")
        if not self.head_seen:
            file, number = self.where
            return Break(self.writer, file, number + 1, None, None, "truncated",
                         f"the newest record this writer wrote (hash {self.head[:12]}…) is missing: records were "
                         "removed from the end")
        self.torn += self.pending_count
        return None

    def _check_expected(self, broken: Break | None) -> None:
        e = self.expect
        if e is None or self.expect_seen or self.expected_problem is not None:
            return
        last_seq = self.last_rec["seq"] if self.last_rec else None
        if broken is not None and broken.problem != "truncated":
            detail = f"the checkpoint names seq {e.seq}, which the chain does not reach unbroken"
        elif last_seq is None or last_seq < e.seq:
            have = "no record" if last_seq is None else f"records only up to seq {last_seq}"
            detail = (f"the checkpoint names seq {e.seq} (hash {e.hash[:12]}…) but the chain holds {have}: "
                      f"records from seq {0 if last_seq is None else last_seq + 1} were cut from its end")
        else:
            detail = (f"the checkpoint names seq {e.seq}, which is no longer in the trail (the chain now starts at "
                      f"seq {self.first_seq}): the segment holding it was archived or removed")
        file, number = self.where
        self.expected_problem = Break(self.writer, file, number, e.seq, None, "not_extended", detail)

    def _torn(self, detail: str) -> Break:
        assert self.pending is not None
        file, number, body = self.pending
        return Break(self.writer, file, number, None, _request_id_in(body), "torn", detail)


def _canonical_or_none(obj: dict[str, Any]) -> bytes | None:
    try:
        return canonical(obj)
    except ValueError:  # NaN or Infinity: never written by the router
        return None


def _request_id_in(torn: bytes) -> str | None:
    found = _REQUEST_ID.search(torn)
    try:
        return json.loads(b'"' + found.group(1) + b'"') if found else None
    except ValueError:
        return None
