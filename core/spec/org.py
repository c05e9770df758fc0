"""The organisation file: what the company already has (credits, clusters, tenants, policy)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sovra.core.spec.common import Frozen, Name, Operator, Residency, Usd
from sovra.core.spec.spend import Budget, SpendSettings, check_budgets
from sovra.core.spec.target import Target


class Credit(Frozen):
    """Committed spend held with a cloud."""

    cloud: str = Field(min_length=1, description="Cloud the credits are with (matches targets' `cloud`).")
    usd: Usd = Field(description="Remaining balance in USD.")
    expires: dt.date = Field(description="Last day the credits can be used (YYYY-MM-DD).")
    name: str | None = None


def _check_provision(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """`provision:` fits its provider's component (a ValueError, which pydantic locates in the YAML)."""
    from sovra.core.provision import check

    if "provider" in info.data:  # else the provider's own error is reported
        check(info.data["provider"], value)
    return value


def _a_path_not_a_pem(value: str) -> str:
    # A pasted certificate or key would end up in plans and Serve's config (which Ray logs): say so without echoing it.
    if "-----BEGIN" in value or "\n" in value:
        raise ValueError("give the path of the file on the router's node, not its content (the key must never be "
                         "in org.yaml)")
    if not value.startswith("/"):
        raise ValueError("an absolute path on the router's node (Serve's proxy reads it there, from its own "
                         "working directory)")
    return value


class RouterTls(Frozen):
    """The router's certificate and key: paths on the router's node (the cluster's head), never their content."""

    cert_file: str = Field(min_length=1, description="PEM certificate chain the router serves HTTPS with (absolute "
                           "path on the router's node); it must name the host clients use to reach the router.")
    key_file: str = Field(min_length=1, description="PEM private key of that certificate (absolute path on the "
                          "router's node, readable by Ray's processes there). Only the path is in org.yaml, plans "
                          "and Serve's config; the key stays on that node.")

    _paths = field_validator("cert_file", "key_file")(_a_path_not_a_pem)


class RouterAutoscaling(Frozen):
    """Bounds for Serve's autoscaling of the router replicas."""

    min: int = Field(ge=1, le=64, description="Fewest router replicas (2 or more for no single point of failure).")
    max: int = Field(ge=1, le=64, description="Most router replicas.")

    @model_validator(mode="after")
    def _ordered(self) -> RouterAutoscaling:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class RouterScale(Frozen):
    """How many router replicas a Ray cluster runs: a fixed number, or autoscaling bounds. Each replica keeps its
    own audit chain and its own breakers; a tenant's `max_concurrent` applies per replica."""

    replicas: int | None = Field(default=None, ge=1, le=64, description="A fixed number of router replicas.")
    autoscaling: RouterAutoscaling | None = Field(default=None, description="{min, max}: Serve adds replicas "
                                                  "under load and removes them when idle, within these bounds.")

    @model_validator(mode="after")
    def _one(self) -> RouterScale:
        if (self.replicas is None) == (self.autoscaling is None):
            raise ValueError("give either `replicas: N` or `autoscaling: {min: N, max: M}`")
        return self

    @property
    def floor(self) -> int:
        return self.replicas if self.replicas is not None else self.autoscaling.min  # type: ignore[union-attr]


class Cluster(Target):
    """An on-prem cluster: a target the company operates itself."""

    cloud: str = Field(default="onprem", min_length=1)
    region: str = Field(default="", description="Site name; defaults to the cluster id.")
    operator: Operator = Field(description="Usually {name: self, jurisdiction: <your country>}.")
    auth_token_file: str | None = Field(
        default=None, description="File holding the Ray token of the cluster at `address` (absolute, or relative to "
        "the working directory; ~ expands). Default: $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH. Sovra "
        "never reads ~/.ray; the local Ray's token is Sovra's own, under $SOVRA_HOME.")
    router_host: str = Field(
        default="0.0.0.0", min_length=1, description="Where the router on the cluster at `address` listens (its "
        "head node). A non-loopback host needs tenants in org.yaml: with none the router is open. Clusters sharing "
        "an address share one router, so they must agree.")
    router_port: int = Field(default=8000, ge=1, le=65535, description="The router's port on that cluster.")
    tokens_per_replica_hour: int | None = Field(
        default=None, ge=1, description="Tokens one replica serves in an hour at its usual load: the ledger then "
        "prices each answer here at the replica-hour's price divided by it (price source `amortised`), so `sovra "
        "spend` shows what owned capacity costs per tenant. Omitted: answers here cost 0 USD in the ledger (the "
        "capacity is paid for whatever it serves).")
    router: RouterScale | None = Field(
        default=None, description="Router replicas on this Ray cluster: {replicas: N} or {autoscaling: {min, max}}. "
        "Default: 2, spread over different nodes, on a cluster with several alive nodes; 1 on a single node.")
    tls: RouterTls | None = Field(
        default=None, description="The router serves HTTPS with this certificate and key ({cert_file, key_file}: "
        "paths on the router's node). Required for a router_host that is not loopback, unless insecure_http. "
        "Also allowed on the local Ray (its router on 127.0.0.1 then serves HTTPS).")
    insecure_http: bool = Field(
        default=False, description="Let the router serve plain HTTP on a router_host that is not loopback (a "
        "network the company trusts): requests, answers and tenants' keys then cross it in clear. Without it `up` "
        "refuses such a router unless `tls` is set.")
    insecure_dashboard: bool = Field(
        default=False, description="Send the Ray token to a plain http:// dashboard `address` that is not loopback "
        "(a network the company trusts). Without it Sovra sends the token only over https or to 127.0.0.0/8, ::1 "
        "and localhost.")
    provision: dict[str, Any] = Field(
        default_factory=dict, validate_default=True, description="For provider: kubernetes, the settings of the KubeRay component that "
        "provisions this cluster's Ray (non-secret): image (a Ray image with Sovra installed; required), namespace, "
        "context, gpus_per_worker, url (where the router reaches the Serve service). Unknown keys are refused.")

    _provision_fits_provider = field_validator("provision")(_check_provision)

    @model_validator(mode="before")
    @classmethod
    def _default_region(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("region") and isinstance(data.get("id"), str):
            return {**data, "region": data["id"]}
        return data

    @model_validator(mode="after")
    def _remote_only(self) -> Cluster:
        # The local Ray's router always listens on 127.0.0.1 (port: --port or $SOVRA_ROUTER_PORT) and its token
        # is Sovra's own: these fields would be silently ignored there.
        given = sorted({"auth_token_file", "router_host", "router_port", "insecure_http", "insecure_dashboard"}
                       & self.model_fields_set)
        if given and not self.address:
            raise ValueError(f"{', '.join(given)} apply to a cluster with an `address`; the local Ray's router "
                             "listens on 127.0.0.1 ($SOVRA_ROUTER_PORT) and its token is Sovra's own")
        return self


#: sha256 of the empty string: never a key (an empty `Authorization: Bearer ` would match it).
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_SHA256 = r"^[0-9a-f]{64}$"


def _a_real_key(value: str | None) -> str | None:
    if value == EMPTY_SHA256:
        raise ValueError("this is the sha256 of the empty string, which any empty bearer token would match; "
                         "hash the real key: printf %s \"$KEY\" | sha256sum")
    return value


#: Requests one tenant may have in flight when neither it nor `router:` says: a quarter of a router replica's 256.
DEFAULT_TENANT_MAX_CONCURRENT = 64


class Tenant(Frozen):
    """An API consumer, bound to a residency it can never widen, and optionally to some deployments."""

    name: Name
    key_sha256: str = Field(pattern=_SHA256, description="sha256 hex digest of the tenant's API key.")
    # No default: a tenant that forgot its residency must not silently become unrestricted.
    residency: Residency = Field(
        description="where this tenant's data may be processed, e.g. {zones: [EU]} or {countries: [FR, DE]}; "
        "unrestricted must be spelled out as {zones: [GLOBAL]}")
    deployments: tuple[Name, ...] | None = Field(
        default=None, description="Deployments this tenant may call; others answer 404 as if they did not exist. "
        "Omitted = every deployment.")
    max_concurrent: int | None = Field(
        default=None, ge=1, le=100_000, description="Requests this tenant may have in flight at once (a stream "
        "counts until it ends); beyond it the router answers 429 tenant_concurrency_limit with Retry-After, so one "
        "tenant cannot take the router from the others. Omitted = `router.tenant_max_concurrent`.")

    _real_key = field_validator("key_sha256")(_a_real_key)

    @field_validator("residency")
    @classmethod
    def _stated(cls, value: Residency) -> Residency:
        if not value.zones and not value.countries:
            raise ValueError("a tenant's residency must name zones or countries, e.g. {zones: [EU]}; "
                             "for an unrestricted tenant write {zones: [GLOBAL]}")
        return value


class Admin(Frozen):
    """Someone who may read the audit trail through the router (`sovra audit`); a tenant key never can."""

    name: Name
    key_sha256: str = Field(pattern=_SHA256,
                            description="sha256 hex digest of the admin's key (sent by `sovra audit` from "
                                        "$SOVRA_ADMIN_KEY).")

    _real_key = field_validator("key_sha256")(_a_real_key)


class RouterSettings(Frozen):
    """How the router treats what is not a model request: client-side routing and metrics scrapers."""

    direct_mode: bool = Field(
        default=True, description="May tenants route client-side (the SDK's mode='direct')? false: `/v1/routes` "
        "and `/v1/audit/report` answer 403 direct_mode_disabled, so every payload goes through the router.")
    tenant_max_concurrent: int = Field(
        default=DEFAULT_TENANT_MAX_CONCURRENT, ge=1, le=100_000, description="Requests one tenant may have in "
        "flight at once, unless its own `max_concurrent` says otherwise (a stream counts until it ends).")
    scrape_key_sha256: str | None = Field(
        default=None, pattern=_SHA256, description="sha256 hex digest of the key a metrics scraper sends to "
        "`GET /metrics` (admins' keys work too). A router with tenants or admins answers /metrics to no one else.")

    _real_key = field_validator("scrape_key_sha256")(_a_real_key)


class AuditSettings(Frozen):
    """How the router's audit trail is written, and what happens when it cannot be."""

    fsync: bool = Field(
        default=False, description="Force every line to disk before the payload leaves (survives the node losing "
        "power, at a cost per request that bench/router_cpu.py measures). false: every line is written to the OS "
        "before the payload leaves, which survives the router process being killed.")
    on_failure: Literal["refuse", "continue"] = Field(
        default="refuse", description="When a line cannot be written (disk full, I/O error): `refuse` (the "
        "default) answers 503 audit_unavailable and sends nothing until a write succeeds; `continue` sends "
        "unrecorded payloads (logged and shown by /readyz).")
    unauthenticated_every_s: float = Field(
        default=60.0, gt=0, le=86_400, description="Requests that never authenticated are not written one by "
        "one: one line counts them, at most this often.")


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


class Endpoint(Target):
    """An endpoint the company already runs or has: an OpenAI-compatible server (NIM, vLLM, TGI) or an existing
    vendor endpoint (a SageMaker or Azure ML online endpoint, a Databricks serving endpoint). A target like any
    other for the planner (its `models` priced per token: 0 for capacity already paid for); `up` routes to it
    without provisioning anything, in the first rung of the spillover ladder."""

    connection: dict[str, Any] = Field(
        default_factory=dict, description="How to reach it, as its provider adapter defines (e.g. {url: ..., "
        "api_key_env: NIM_API_KEY} for openai-compatible). Non-secret settings only: secrets come from the SDK's "
        "credential chain or from the environment variable named here.")
    capacity: int | None = Field(default=None, ge=1, description="Requests it may have in flight at once; beyond "
                                 "that the router spills to the next rung.")
    if_unread: Literal["global", "catalog"] = Field(
        default="global", description="What to hold its targets to when their live settings (where the vendor "
        "really processes data) cannot be read: `global` (the default: unverified, so only deployments allowed "
        "anywhere are placed there) or `catalog` (trust the catalog's zone, e.g. when Sovra's credentials may not "
        "read account parameters and the setting is pinned by other means).")


class Account(Frozen):
    """How to reach a provider's managed targets (non-secret settings only): a Snowflake account, a Databricks
    workspace host, an AWS profile. Credentials always come from the SDK's own chain where Sovra runs."""

    provider: str = Field(min_length=1, description="Provider adapter name, e.g. snowflake-cortex.")
    targets: tuple[str, ...] | None = Field(
        default=None, description="Target ids this account serves; default: every target of the provider.")
    connection: dict[str, Any] = Field(default_factory=dict, description="The adapter's connection settings.")
    if_unread: Literal["global", "catalog"] = Field(
        default="global", description="What to hold its targets to when their live settings (where the vendor "
        "really processes data) cannot be read: `global` (the default: unverified, so only deployments allowed "
        "anywhere are placed there) or `catalog` (trust the catalog's zone, e.g. when Sovra's credentials may not "
        "read account parameters and the setting is pinned by other means).")
    provision: dict[str, Any] = Field(
        default_factory=dict, validate_default=True, description="Settings of the Pulumi component that provisions this account's "
        "dedicated endpoints (non-secret; e.g. {workspace: ..., resource_group: ...} for azure-ml). Unknown keys "
        "are refused with the valid ones listed.")

    _provision_fits_provider = field_validator("provision")(_check_provision)

    def serves(self, target: Target) -> bool:
        return target.provider == self.provider and (self.targets is None or target.id in self.targets)


class Org(Frozen):
    """What the company has: credits, on-prem clusters, tenants and policy."""

    api_version: str = Field(default="sovra/v1", alias="apiVersion", pattern=r"^sovra/v1$")
    kind: str = Field(default="Org", pattern=r"^Org$")
    credits: tuple[Credit, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    endpoints: tuple[Endpoint, ...] = Field(
        default=(), description="Endpoints the company already runs or has (NIM/vLLM servers, existing cloud "
        "endpoints); targets the planner may choose, routed to without provisioning.")
    accounts: tuple[Account, ...] = Field(
        default=(), description="Non-secret settings for reaching providers' managed targets (Snowflake account, "
        "Databricks host, ...).")
    tenants: tuple[Tenant, ...] = ()
    admins: tuple[Admin, ...] = Field(
        default=(), description="Who may read the audit trail through the router; their keys are not tenants' keys.")
    router: RouterSettings = Field(default=RouterSettings(), description="Direct mode and the metrics scrape key.")
    audit: AuditSettings = Field(default=AuditSettings(), description="The router's audit trail: durability and "
                                 "what to do when it cannot be written.")
    spend: SpendSettings = Field(default=SpendSettings(), description="The run-time ledger: its store (SQLite by "
                                 "default, PostgreSQL for routers on several nodes) and fail-closed or -open.")
    budgets: tuple[Budget, ...] = Field(
        default=(), description="USD per month, tokens and requests per minute, per tenant, deployment or both; "
        "over a limit the router answers 429 budget_exceeded or rate_limited.")
    policy: OrgPolicy = OrgPolicy()

    @model_validator(mode="after")
    def _budgets_known(self) -> Org:
        check_budgets(self.budgets, {t.name for t in self.tenants})
        return self

    @model_validator(mode="after")
    def _one_router_per_address(self) -> Org:
        by_address: dict[str, list[Cluster]] = {}
        for c in self.clusters:
            if c.address:
                by_address.setdefault(f"address {c.address}", []).append(c)
        for where, cs in sorted(by_address.items()):
            check_one_router(where, cs)
        return self

    @model_validator(mode="after")
    def _unique(self) -> Org:
        for what, names in (("cluster or endpoint id", [c.id for c in (*self.clusters, *self.endpoints)]),
                            ("tenant name", [t.name for t in self.tenants])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {what}: {', '.join(dupes)}")
        keys = [t.key_sha256 for t in self.tenants]
        if len(set(keys)) != len(keys):
            raise ValueError("two tenants share one key_sha256; each tenant needs its own key")
        self._unique_admins(set(keys))
        if self.router.scrape_key_sha256 in keys:
            raise ValueError("router.scrape_key_sha256 is a tenant's key_sha256: a tenant key must not read the "
                             "router's metrics; give the scraper its own key")
        return self

    def _unique_admins(self, tenant_keys: set[str]) -> None:
        names = [a.name for a in self.admins]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate admin name: {', '.join(dupes)}")
        keys = [a.key_sha256 for a in self.admins]
        if len(set(keys)) != len(keys):
            raise ValueError("two admins share one key_sha256; each admin needs its own key")
        shared = sorted(a.name for a in self.admins if a.key_sha256 in tenant_keys)
        if shared:
            raise ValueError(f"admin {', '.join(shared)} uses a tenant's key_sha256: an admin key must not be "
                             "usable to send requests, nor a tenant key to read the audit trail")


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


def check_one_router(where: str, clusters: Sequence[Cluster]) -> None:
    """ValueError when clusters on one Ray cluster (`where`: an address, or the local Ray) differ in the settings of
    the one router it runs."""
    seen = {(c.router_host, c.router_port, c.auth_token_file, c.tls, c.insecure_http, c.insecure_dashboard, c.router)
            for c in clusters}
    if len(seen) > 1:
        raise ValueError(
            f"clusters {', '.join(c.id for c in clusters)} share {where} (one Ray cluster, one router) but differ "
            "in router_host, router_port, router, auth_token_file, tls, insecure_http or insecure_dashboard; give "
            "them the same values")


def connection_for(org: Org, target: Target) -> dict[str, Any]:
    """The non-secret connection settings for `target`: its own (an org endpoint), else its provider account's."""
    if isinstance(target, Endpoint):
        return dict(target.connection)
    account = next((a for a in org.accounts if a.serves(target)), None)
    return dict(account.connection) if account else {}


def provision_for(org: Org, target: Target) -> dict[str, Any]:
    """The settings of the Pulumi component provisioning `target`: its cluster's own, else its account's."""
    if isinstance(target, Cluster):
        return dict(target.provision)
    account = next((a for a in org.accounts if a.serves(target)), None)
    return dict(account.provision) if account else {}


def if_unread_for(org: Org, target: Target) -> str:
    """`global` or `catalog`: what `target` is held to when its live settings cannot be read (see `if_unread`)."""
    if isinstance(target, Endpoint):
        return target.if_unread
    account = next((a for a in org.accounts if a.serves(target)), None)
    return account.if_unread if account else "global"
