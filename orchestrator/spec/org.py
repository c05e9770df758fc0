"""The organisation file: what the company already has (credits, clusters, tenants, policy)."""

from __future__ import annotations

import datetime as dt

from pydantic import Field, model_validator

from orchestrator.spec.common import Frozen, Name, Operator, Residency, Usd
from orchestrator.spec.target import Target


class Credit(Frozen):
    """Committed spend held with a cloud."""

    cloud: str = Field(min_length=1, description="Cloud the credits are with (matches targets' `cloud`).")
    usd: Usd = Field(description="Remaining balance in USD.")
    expires: dt.date = Field(description="Last day the credits can be used (YYYY-MM-DD).")
    name: str | None = None


class Cluster(Target):
    """An on-prem cluster: a target the company operates itself."""

    cloud: str = Field(default="onprem", min_length=1)
    region: str = Field(default="", description="Site name; defaults to the cluster id.")
    operator: Operator = Field(description="Usually {name: self, jurisdiction: <your country>}.")

    @model_validator(mode="before")
    @classmethod
    def _default_region(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("region") and isinstance(data.get("id"), str):
            return {**data, "region": data["id"]}
        return data


class Tenant(Frozen):
    """An API consumer, bound to a residency it can never widen."""

    name: Name
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 hex digest of the tenant's API key.")
    residency: Residency = Residency()


class LicenseRule(Frozen):
    """Extends the licence pack: whether a licence allows self-hosting."""

    id: str = Field(min_length=1)
    self_hosting: bool = Field(description="May the weights be run on infrastructure we operate or rent?")


class OrgPolicy(Frozen):
    """Company-wide placement rules."""

    allowed_licenses: tuple[str, ...] | None = Field(
        default=None, description="If set, only models under these licences may be placed."
    )
    licenses: tuple[LicenseRule, ...] = Field(default=(), description="Extra licences beyond the shipped pack.")


class Org(Frozen):
    """What the company has: credits, on-prem clusters, tenants and policy."""

    api_version: str = Field(default="sovra/v1", alias="apiVersion", pattern=r"^sovra/v1$")
    kind: str = Field(default="Org", pattern=r"^Org$")
    credits: tuple[Credit, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    tenants: tuple[Tenant, ...] = ()
    policy: OrgPolicy = OrgPolicy()

    @model_validator(mode="after")
    def _unique(self) -> Org:
        for what, names in (("cluster id", [c.id for c in self.clusters]), ("tenant name", [t.name for t in self.tenants])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {what}: {', '.join(dupes)}")
        keys = [t.key_sha256 for t in self.tenants]
        if len(set(keys)) != len(keys):
            raise ValueError("two tenants share one key_sha256; each tenant needs its own key")
        return self


class Catalog(Frozen):
    """A set of targets with list prices."""

    api_version: str = Field(default="sovra/v1", alias="apiVersion", pattern=r"^sovra/v1$")
    kind: str = Field(default="Catalog", pattern=r"^Catalog$")
    source: str | None = Field(default=None, description="Where the prices were read.")
    prices_as_of: dt.date | None = None
    targets: tuple[Target, ...]

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        ids = [t.id for t in self.targets]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate target id: {', '.join(dupes)}")
        return self
