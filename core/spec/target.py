"""A target: one place replicas can run or a managed model can be called."""

from __future__ import annotations

import datetime as dt

from pydantic import Field, model_validator

from sovra.core.spec.common import Accelerator, Country, Frozen, ManagedModel, Operator, Span, TargetId, Usd
from sovra.core.spec.zones import GLOBAL, SPAN_JOIN, zone_of


class Target(Frozen):
    """A provider in a region or site, with where it processes data, who operates it and what it costs."""

    id: TargetId = Field(description="Unique id, conventionally provider/region.")
    provider: str = Field(description="Provider adapter name, e.g. aws-sagemaker, azure-ml, ray.")
    cloud: str = Field(min_length=1, description="Billing account family; credits are per cloud (aws, azure, ...).")
    region: str = Field(min_length=1, description="Provider region or site name.")
    country: Country | None = Field(
        default=None, description="Country of processing; omit for offerings that may process anywhere in a zone."
    )
    zone: Span = Field(description="Data zone of processing (EU, US, APAC, ... or GLOBAL), or the span of zones and "
                       "countries it may process in, joined by `+` (a Databricks Geo: EU+UK+CH).")
    scope: str | None = Field(
        default=None,
        description="The provider's own label for where it processes (Azure DataZone, Bedrock `eu` profile, "
        "Snowflake AWS_EU); the provider adapter translates it into `zone` when `zone` is omitted.",
    )
    operator: Operator
    certifications: tuple[str, ...] = Field(default=(), description="Certifications held, e.g. iso27001, hds, c5.")
    accelerators: tuple[Accelerator, ...] = Field(default=(), description="Instance types for self-hosted replicas.")
    models: tuple[ManagedModel, ...] = Field(default=(), description="Managed models priced per token.")
    egress_usd_per_gb: Usd = Field(default=0.0, description="Price of data leaving this location, per GB.")
    prices_as_of: dt.date | None = Field(default=None, description="When the prices were read.")
    source: str | None = Field(default=None, description="Where the prices and facts were read.")
    address: str | None = Field(default=None, description="Cluster address (Ray or Kubernetes context), on-prem only.")

    @model_validator(mode="after")
    def _consistent(self) -> Target:
        if self.accelerators and self.models:
            raise ValueError(
                "a target offers either accelerators (self-hosted replicas) or managed models, not both; "
                "split it into two targets with distinct ids"
            )
        if not self.accelerators and not self.models:
            raise ValueError("a target needs accelerators (self-hosted) or models (managed)")
        if self.country is not None and SPAN_JOIN in self.zone:
            raise ValueError(f"zone {self.zone} is a span of places the target may process in, so it has no one "
                             "country; remove `country`")
        if self.country is not None and self.zone != GLOBAL and zone_of(self.country) != self.zone:
            raise ValueError(
                f"country {self.country} belongs to zone {zone_of(self.country)}, not {self.zone}"
            )
        if self.zone == GLOBAL and self.country is not None:
            raise ValueError("a GLOBAL target may process anywhere, so it has no country; remove `country`")
        return self

    @property
    def managed(self) -> bool:
        """True for per-token managed offerings, which need no replicas."""
        return bool(self.models)

    @property
    def location(self) -> str:
        """`cloud/region`, the key data sources use."""
        return f"{self.cloud}/{self.region}"

    def model_price(self, name: str) -> ManagedModel | None:
        """The managed offering of `name`, if any."""
        return next((m for m in self.models if m.name == name), None)
