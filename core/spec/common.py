"""Building blocks shared by every spec file: residency, operators, accelerators, prices."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from sovra.core.spec.zones import COUNTRY_ZONE, GLOBAL, normalize_country, normalize_span, normalize_zone


class Frozen(BaseModel):
    """Base of every spec model: immutable, and unknown keys are errors rather than silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


Zone = Annotated[str, AfterValidator(normalize_zone)]
#: a target's zone: one zone, or a span of zones and countries it may process in ("EU+UK+CH"; see `zones`)
Span = Annotated[str, AfterValidator(normalize_span)]
Country = Annotated[str, AfterValidator(normalize_country)]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")]
TargetId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]*(/[A-Za-z0-9._-]+)*$", max_length=120)]
Usd = Annotated[float, Field(ge=0)]

#: The router's routing policies, by name (`orchestrator.router.balancing` registers one class for each; a test
#: holds the two equal). Named here so a deployment and a routing table can be checked without the router.
ROUTING_POLICIES = ("commitments", "cost", "latency", "least_load", "prefix", "session")


def routing_policy(name: str) -> str:
    """`name` if it is a routing policy, else ValueError with a did-you-mean and the known ones."""
    if name in ROUTING_POLICIES:
        return name
    import difflib

    close = difflib.get_close_matches(name, ROUTING_POLICIES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown routing policy {name!r}{hint}; known: {', '.join(ROUTING_POLICIES)}")


class Residency(Frozen):
    """Where data may be processed. Empty means unrestricted; zones and countries widen each other."""

    zones: tuple[Zone, ...] = Field(default=(), description="Allowed data zones, e.g. [EU]. GLOBAL = anywhere.")
    countries: tuple[Country, ...] = Field(default=(), description="Allowed countries (ISO 3166-1 alpha-2).")
    sovereign: bool = Field(
        default=False,
        description="Require the operator's home jurisdiction to be allowed too (a US-operated EU region fails).",
    )

    @field_validator("zones", "countries")
    @classmethod
    def _dedupe(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _sovereign_needs_a_place(self) -> Residency:
        # `sovereign` narrows an allowed place by its operator's law; with no place named it would silently mean
        # "anywhere", the opposite of what whoever wrote it wanted.
        if self.sovereign and not self.zones and not self.countries:
            raise ValueError("sovereign: true needs the zones or countries to be sovereign to, e.g. "
                             "{zones: [EU], sovereign: true} or {countries: [FR], sovereign: true}")
        return self

    @property
    def unrestricted(self) -> bool:
        """True when any place, GLOBAL offerings included, is allowed."""
        return (not self.zones and not self.countries) or GLOBAL in self.zones

    def wider_than(self, bound: Residency) -> list[str]:
        """The zones and countries of this residency that `bound` does not allow (empty when this one only narrows
        it), and `sovereign` when `bound` asks for it and this one drops it: what a narrower residency must not add."""
        if bound.unrestricted:
            return []
        if self.unrestricted:
            return ["unrestricted"]
        wider = [z for z in self.zones if z == GLOBAL or z not in bound.zones]
        wider += [c for c in self.countries if c not in bound.countries and COUNTRY_ZONE.get(c) not in bound.zones]
        if bound.sovereign and not self.sovereign:
            wider.append("sovereign: false")
        return wider

    def describe(self) -> str:
        """Short human form, e.g. `zones [EU], sovereign`."""
        if self.unrestricted:
            return "unrestricted"
        parts = []
        if self.zones:
            parts.append(f"zones [{', '.join(self.zones)}]")
        if self.countries:
            parts.append(f"countries [{', '.join(self.countries)}]")
        if self.sovereign:
            parts.append("sovereign")
        return ", ".join(parts)


class Operator(Frozen):
    """Who runs the target, and under which country's law that operator ultimately falls."""

    name: str = Field(description="Operator name, e.g. amazon, microsoft, self.")
    jurisdiction: Country = Field(description="Home jurisdiction of the operator (ISO country code).")


class Accelerator(Frozen):
    """An instance type; one replica uses one instance."""

    sku: str = Field(min_length=1, description="Instance type, e.g. ml.g5.12xlarge.")
    gpus: int = Field(ge=1, le=64, description="GPUs per instance.")
    gpu_memory_gb: float = Field(gt=0, description="Memory per GPU in GB.")
    usd_per_hour: Usd = Field(description="List price per instance-hour in USD.")
    available: int | None = Field(
        default=None, ge=0, description="Instances that may be used (shared by a fleet). Omitted = not capped."
    )

    @property
    def total_memory_gb(self) -> float:
        """Memory one replica can use."""
        return self.gpus * self.gpu_memory_gb


class ManagedModel(Frozen):
    """A model a managed service offers, priced per token."""

    name: str = Field(min_length=1, description="Model name as used in deployments.")
    usd_per_1k_tokens: Usd = Field(description="Blended price per 1,000 tokens in USD.")
    id: str | None = Field(default=None, min_length=1, description="The vendor's own id of this model (a Bedrock "
                           "model id, a Cortex model name, a Databricks endpoint name); default: `name`.")
