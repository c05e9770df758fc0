"""What the planner returns: frozen records, rendered by the CLI and consumed by `up`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Placement:
    """Replicas (or a managed share) of one deployment on one target, with its monthly cost split."""

    target: str
    provider: str
    zone: str
    country: str | None
    replicas: int
    accelerator: str | None
    compute_usd: float
    credits_usd: float
    egress_usd: float
    managed_share: float = 0.0  # fraction of traffic for managed (per-token) targets

    @property
    def monthly_usd(self) -> float:
        """What the company pays beyond its credits."""
        return self.compute_usd - self.credits_usd + self.egress_usd


@dataclass(frozen=True)
class Rejection:
    """A target that failed hard rules, with every rule it failed."""

    target: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Candidate:
    """A target that passed every hard rule, with its unit prices for this deployment."""

    target: str
    accelerator: str | None
    unit_usd: float          # per replica-month, or the full month of traffic for a managed target
    egress_if_all_usd: float  # egress if this target processed all the data


@dataclass(frozen=True)
class DeploymentPlan:
    """The placement of one deployment, or why there is none."""

    deployment: str
    feasible: bool
    placements: tuple[Placement, ...]
    rejected: tuple[Rejection, ...]
    candidates: tuple[Candidate, ...] = ()
    relax: tuple[str, ...] = ()  # what to relax, and by how much, when infeasible

    @property
    def compute_usd(self) -> float:
        return sum(p.compute_usd for p in self.placements)

    @property
    def credits_usd(self) -> float:
        return sum(p.credits_usd for p in self.placements)

    @property
    def egress_usd(self) -> float:
        return sum(p.egress_usd for p in self.placements)

    @property
    def monthly_usd(self) -> float:
        return self.compute_usd - self.credits_usd + self.egress_usd


@dataclass(frozen=True)
class SolveStats:
    """How the solver did: status, wall time and proven optimality gap."""

    status: str
    seconds: float
    mip_gap: float | None
    variables: int
    constraints: int


@dataclass(frozen=True)
class FleetPlan:
    """Plans for deployments solved jointly (shared capacity and credits)."""

    deployments: tuple[DeploymentPlan, ...]
    credit_caps: dict[str, float] = field(default_factory=dict)
    stats: SolveStats | None = None
    relax: tuple[str, ...] = ()

    @property
    def feasible(self) -> bool:
        return all(d.feasible for d in self.deployments) and not self.relax

    @property
    def monthly_usd(self) -> float:
        return sum(d.monthly_usd for d in self.deployments)
