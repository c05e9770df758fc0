"""The hash chain over the rotated audit files: how a line is sealed, found again, and checked.

Each line carries `prev` (the previous line's `hash`, or 64 zeros for the first ever) and `hash`, the sha256
of its canonical JSON without `hash`. Editing, removing or reordering a line breaks the chain where it happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

GENESIS = "0" * 64
_REQUEST_ID = re.compile(rb'"request_id":"((?:[^"\\]|\\.)*)"')


def canonical(obj: dict[str, Any]) -> bytes:
    """The one byte form of a record: sorted keys, no spaces, ASCII only; a hash is reproducible anywhere."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def seal(body: dict[str, Any], prev: str) -> tuple[bytes, str]:
    """The line (with newline) for `body` chained to `prev`, and its hash.

    The line is `canonical` of the record with its hash, whose bytes are those of the record without it with one
    member added. The record is encoded once, as the members sorting before "hash" and those after, and the
    hash goes in between: this runs once per request.
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


def chain_files(base: Path) -> list[Path]:
    """`base.N … base.1, base`, oldest first, as a size-rotating writer leaves them."""
    numbered = [(int(p.name[len(base.name) + 1:]), p) for p in base.parent.glob(base.name + ".*")
                if p.name[len(base.name) + 1:].isdigit()]
    files = [p for _, p in sorted(numbered, reverse=True)]
    return [*files, base] if base.exists() else files


@dataclass(frozen=True)
class Part:
    """One opened file of the chain, read only up to `size`: lines written afterwards are not half-seen."""

    name: str
    fh: IO[bytes]
    size: int

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
def opened(base: Path) -> Iterator[list[Part]]:
    """Open every file of the chain at once: a rotation renaming them afterwards cannot make us miss one."""
    with contextlib.ExitStack() as stack:
        parts = []
        for path in chain_files(base):
            try:
                fh = stack.enter_context(path.open("rb"))
            except FileNotFoundError:  # rotated away between listing and opening
                continue
            parts.append(Part(path.name, fh, os.fstat(fh.fileno()).st_size))
        yield parts


def parse(raw: bytes) -> dict[str, Any] | None:
    """A line's record, or None when the line is torn or not a record at all."""
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def last_sealed(base: Path) -> dict[str, Any] | None:
    """The newest line that parses and carries a hash, sought from the end: a writer continues there."""
    for path in reversed(chain_files(base)):
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


@dataclass(frozen=True)
class Break:
    """The first place where the chain does not hold, and what is wrong there."""

    file: str
    line: int
    request_id: str | None
    problem: str  # "edited" | "removed_or_reordered" | "torn" | "truncated"
    detail: str


@dataclass(frozen=True)
class VerifyResult:
    """Whether the trail is intact from its first available record on; `broken` names the first bad record."""

    ok: bool
    records: int
    files: tuple[str, ...]
    first: dict[str, Any] | None  # request_id, time, seq of the first available record
    from_start: bool  # the first available record is the first ever written (nothing rotated away)
    torn: int  # lines cut short by a crash that the chain continues across: lost writes, not tampering
    broken: Break | None = None

    @property
    def message(self) -> str:
        """One sentence for people."""
        if self.broken is not None:
            b = self.broken
            return (f"chain BROKEN at {b.file} line {b.line} (request {b.request_id or '?'}): "
                    f"{b.problem}: {b.detail}")
        if not self.records:
            return "no records yet"
        where = f"{self.records} record(s) in {len(self.files)} file(s)"
        if self.from_start:
            text = f"chain intact: {where}, from the first record ever written"
        else:
            f = self.first or {}
            text = (f"chain verified from {f.get('request_id')} (seq {f.get('seq')}, {f.get('time')}): "
                    f"{where}; earlier records were rotated away")
        if self.torn:
            text += (f"; {self.torn} torn line(s) from interrupted writes skipped "
                     "(the chain continues across them)")
        return text

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message, "records": self.records, "files": list(self.files),
                "first": self.first, "from_start": self.from_start, "torn": self.torn,
                "broken": None if self.broken is None else dataclasses.asdict(self.broken)}


def verify(base: str | Path, *, head: str | None = None) -> VerifyResult:
    """Check the chain over every rotated file, oldest first; `head` (the writer's last hash) catches a cut end."""
    with opened(Path(base)) as parts:
        return verify_parts(parts, head=head)


def verify_parts(parts: list[Part], *, head: str | None = None) -> VerifyResult:
    """`verify` over already opened files (the writer opens them under its lock)."""
    check = _Checker(head)
    for part in parts:
        for number, raw in enumerate(part.lines(), start=1):
            broken = check.line(part.name, number, raw)
            if broken is not None:
                return check.result(parts, broken)
    return check.result(parts, check.end())


class _Checker:
    """Walks lines in order, remembering the last good hash and torn lines not yet bridged."""

    def __init__(self, head: str | None):
        self.head, self.head_seen = head, head is None or head == GENESIS
        self.last: str | None = None  # hash of the last good record
        self.records, self.torn = 0, 0
        self.first: dict[str, Any] | None = None
        self.from_start = False
        self.pending: tuple[str, int, bytes] | None = None  # first torn line since the last good record
        self.pending_count = 0
        self.where: tuple[str, int] = ("-", 0)  # the last line seen

    def line(self, file: str, number: int, raw: bytes) -> Break | None:
        body = raw[:-1] if raw.endswith(b"\n") else raw
        self.where = (file, number)
        rec = parse(body)
        if rec is None:
            if self.pending is None:
                self.pending = (file, number, body)
            self.pending_count += 1
            return None
        rid = rec.get("request_id") if isinstance(rec.get("request_id"), str) else None
        if "hash" not in rec or "prev" not in rec:
            return Break(file, number, rid, "edited",
                         "the line carries no hash: written before the chain existed, or inserted")
        stored = rec.pop("hash")
        if _canonical_or_none({**rec, "hash": stored}) != body:
            return Break(file, number, rid, "edited", "the line is not as the router wrote it")
        if not isinstance(stored, str) or hashlib.sha256(canonical(rec)).hexdigest() != stored:
            return Break(file, number, rid, "edited", "its hash does not match its content")
        prev = rec.get("prev")
        if self.last is None:
            if self.pending is not None:  # unreadable lines before the first record: no telling what they were
                return self._torn("an unreadable line precedes the first record")
            self.first = {"request_id": rid, "time": rec.get("time"), "seq": rec.get("seq")}
            self.from_start = prev == GENESIS
        elif prev != self.last:
            if self.pending is not None:
                return self._torn("the next record chains to a record that is no longer readable: "
                                  "a record was damaged")
            return Break(file, number, rid, "removed_or_reordered",
                         "it does not chain to the record before it: records were removed or reordered")
        self.torn += self.pending_count
        self.pending, self.pending_count = None, 0
        self.last, self.records = stored, self.records + 1
        self.head_seen = self.head_seen or stored == self.head
        return None

    def end(self) -> Break | None:
        if self.pending is not None and not (self.head is not None and self.head == self.last):
            return self._torn("the last line is incomplete: a crash mid-write, or damage")
        if not self.head_seen:
            file, number = self.where
            return Break(file, number + 1, None, "truncated",
                         f"the newest record the router wrote (hash {self.head[:12]}…) is missing: "
                         "records were removed from the end")
        self.torn += self.pending_count
        return None

    def _torn(self, detail: str) -> Break:
        assert self.pending is not None
        file, number, body = self.pending
        return Break(file, number, _request_id_in(body), "torn", detail)

    def result(self, parts: list[Part], broken: Break | None) -> VerifyResult:
        return VerifyResult(ok=broken is None, records=self.records, files=tuple(p.name for p in parts),
                            first=self.first, from_start=self.from_start, torn=self.torn, broken=broken)


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
