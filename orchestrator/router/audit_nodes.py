"""The audit trail of a cluster whose router replicas run on several nodes, read whole through any one of them.

Each replica writes its chain on its own node (`$SOVRA_HOME/audit` there). The replica that answers `GET
/v1/audit`, `/v1/audit/verify` or `/v1/audit/checkpoint` reads its own node's chains itself (its own head from
memory) and every other live node's through a Ray task pinned to that node; chains are merged by writer, so a
directory that several nodes share is counted once. A node that does not answer makes the answer incomplete, and
says so (a verification is then not `ok`): evidence is never silently partial. Checkpoints are signed by the
answering replica's key; one signed by any router of the cluster verifies on every other.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sovra.orchestrator.router.audit import AuditLog, Filter, ReadResult, read_writers
from sovra.orchestrator.router.audit_chain import (
    Break,
    Head,
    VerifyResult,
    chain_segments,
    last_sealed,
    opened,
    verify_chains,
)
from sovra.orchestrator.router.audit_sign import existing_public_key

log = logging.getLogger("sovra.audit")

#: How long the answering replica waits for another node's part.
NODE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class NodePart:
    """What one other node answered: its value, or why it did not."""

    node: str
    value: Any = None
    error: str | None = None


#: Runs `op` with `args` on every live node but this one; one part per node.
FanOut = Callable[[str, tuple[Any, ...]], list[NodePart]]


def _no_other_nodes(_op: str, _args: tuple[Any, ...]) -> list[NodePart]:
    return []


@dataclass
class ClusterTrail:
    """The trail as one, over this replica's `log` and what `fan_out` brings back from the other nodes."""

    log: AuditLog
    public_key: str | None = None  # this replica's checkpoint key
    fan_out: FanOut = field(default=_no_other_nodes)

    def read(self, flt: Filter, limit: int | None) -> tuple[ReadResult, list[str]]:
        """Records of every chain in the cluster, newest `limit`, and the nodes that did not answer."""
        with opened(self.log.path) as chains:
            parts = dict(read_writers(chains, flt, limit))
        missing = []
        for part in self.fan_out("read", (flt, limit)):
            if part.error is not None:
                missing.append(f"{part.node}: {part.error}")
                continue
            for writer, result in part.value.items():
                parts.setdefault(writer, result)  # a directory several nodes share: once
        records = sorted((r for p in parts.values() for r in p.records), key=lambda r: str(r.get("time", "")))
        if limit is not None:
            records = records[-limit:] if limit else []
        return ReadResult(tuple(records), sum(p.torn for p in parts.values()),
                          tuple(f for p in parts.values() for f in p.files),
                          sum(p.unauthenticated for p in parts.values())), missing

    def verify(self, expect: Mapping[str, Head] | None = None) -> VerifyResult:
        """Every chain of the cluster checked where it lies (this replica's own against its live head), each node
        held to the checkpoint's heads of the chains it holds; a checkpoint's chain on no node, or a node that does
        not answer, is a problem."""
        local_writers = set(chain_segments(self.log.path))
        mine = None if expect is None else {w: h for w, h in expect.items() if w in local_writers}
        result = self.log.verify(mine)
        chains = {c.writer: c for c in result.chains}
        problems = list(result.problems)
        for part in self.fan_out("verify", (expect,)):
            if part.error is not None:
                problems.append(Break("-", part.node, 0, None, None, "unread",
                                      f"node {part.node} did not answer ({part.error}): the chains there were not "
                                      "checked"))
                continue
            theirs: VerifyResult = part.value
            for chain in theirs.chains:
                if chain.writer not in chains:
                    chains[chain.writer] = chain
                    problems += [p for p in theirs.problems if p.writer == chain.writer]
        for writer, head in (expect or {}).items():
            if writer not in chains:
                problems.append(Break(writer, "-", 0, head.seq, None, "not_extended",
                                      f"the checkpoint names this writer at seq {head.seq}, but no node of the "
                                      "cluster holds a segment of it: its chain was removed"))
        return replace(result, chains=tuple(chains[w] for w in sorted(chains)), checkpoint=expect is not None,
                       problems=tuple(problems))

    def heads(self) -> tuple[list[Head], list[str]]:
        """Every chain's newest line across the cluster (this replica's from memory), and the nodes that did not
        answer (a checkpoint without them would not name their chains)."""
        heads = {h.writer: h for h in self.log.heads()}
        missing = []
        for part in self.fan_out("heads", ()):
            if part.error is not None:
                missing.append(f"{part.node}: {part.error}")
                continue
            for head in part.value:
                heads.setdefault(head.writer, head)
        return [heads[w] for w in sorted(heads)], missing

    def public_keys(self) -> set[str]:
        """The checkpoint keys of every router of the cluster that has made one."""
        keys = {self.public_key} if self.public_key else set()
        keys |= {part.value for part in self.fan_out("public_key", ()) if part.error is None and part.value}
        return keys


# -- on each other node --------------------------------------------------------------------------------------------


def node_op(trail: str | None, op: str, args: tuple[Any, ...]) -> Any:
    """`op` over this node's trail (`trail`, or `$SOVRA_HOME/audit` of this node): what `ClusterTrail` merges."""
    from sovra.infra.home import sovra_home

    path = Path(trail) if trail else sovra_home() / "audit"
    if op == "public_key":
        return existing_public_key(path.parent / "keys")
    if op == "heads":
        out = []
        for writer, segments in chain_segments(path).items():
            if (last := last_sealed(segments)) is not None:
                with contextlib.suppress(ValueError):
                    out.append(Head.of({**last, "writer": writer}))
        return out
    with opened(path) as chains:
        if op == "read":
            flt, limit = args
            return read_writers(chains, flt, limit)
        if op == "verify":
            (expect,) = args
            return verify_chains(chains, expect=None if expect is None else {
                w: h for w, h in expect.items() if w in chains})
    raise ValueError(f"unknown trail operation {op!r}")


def ray_fan_out(trail: str | None, timeout_s: float = NODE_TIMEOUT_S) -> FanOut:
    """A `FanOut` over Ray: a task with no CPU (it runs however busy a node is) pinned to each live node other than
    this replica's. Outside Ray (a router served directly), or on one node: nothing to ask."""

    def fan_out(op: str, args: tuple[Any, ...]) -> list[NodePart]:
        try:
            import ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        except ImportError:
            return []
        if not ray.is_initialized():
            return []
        task = ray.remote(num_cpus=0, max_retries=0)(node_op)
        here = ray.get_runtime_context().get_node_id()
        others = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
        if not others:
            return []
        refs = {node: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            trail, op, args) for node in others}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        parts = []
        for node, ref in refs.items():
            if ref not in ready:
                ray.cancel(ref, force=True)
                parts.append(NodePart(node[:12], error=f"no answer within {timeout_s:g} s"))
                continue
            try:
                parts.append(NodePart(node[:12], ray.get(ref)))
            except Exception as exc:  # a node's failure is reported in the answer, never raised past it
                parts.append(NodePart(node[:12], error=f"{type(exc).__name__}: {str(exc)[:200]}"))
        return parts

    return fan_out


def other_nodes_missing(missing: Sequence[str]) -> str:
    """The words for an answer that lacks some nodes' chains."""
    return ("incomplete: " + "; ".join(missing) + " (their chains are not in this answer)") if missing else ""
