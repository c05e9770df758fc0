"""Azure AI Foundry Models: model deployments in an Azure AI services (or Azure OpenAI) resource,
`Microsoft.CognitiveServices/accounts/{account}/deployments/{name}`, whose *deployment type* (the deployment's
`sku.name`) decides where inference runs. Microsoft's "Deployment types" page (learn.microsoft.com/azure/ai-foundry/
foundry-models/concepts/deployment-types): Global* may process in any region, DataZone* within the EU or US data
zone of the resource's region, Standard / ProvisionedManaged in the resource's region; DeveloperTier makes no
residency promise. Those labels are translated into Sovra zones here and nowhere else.

ARM reads are in `foundry_arm`, the router's client in `azure_foundry_client`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sovra.core.errors import ProviderError
from sovra.core.spec.zones import GLOBAL
from sovra.providers.azure.regions import country_of
from sovra.providers.base import Connection, LiveSetting, Locator, Provider

#: Deployment and account names go into ARM URL paths and the request's `model`: nothing else passes.
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$"
#: Deployment types that may process anywhere. `Global` is the catalog's short label for GlobalStandard.
GLOBAL_TYPES = ("Global", "GlobalStandard", "GlobalProvisionedManaged", "GlobalBatch")
#: No residency promise at all (Microsoft: "may process data in any geography"): held to GLOBAL, so only an
#: unrestricted residency may use it.
NO_PROMISE_TYPES = ("DeveloperTier",)
#: Deployment types that process within a Microsoft data zone: EU or US, by the resource region's geography.
DATA_ZONE_TYPES = ("DataZone", "DataZoneStandard", "DataZoneProvisionedManaged", "DataZoneBatch")
#: Deployment types that process in the resource's region. `Regional` is the catalog's short label for Standard.
REGIONAL_TYPES = ("Regional", "Standard", "ProvisionedManaged")
#: Provisioned throughput (PTU): capacity the company has already bought, the ladder's own-capacity rung.
PROVISIONED_TYPES = ("ProvisionedManaged", "GlobalProvisionedManaged", "DataZoneProvisionedManaged")
#: The zones Microsoft defines data zones for.
DATA_ZONES = ("EU", "US")
#: The inference API Sovra speaks: Azure AI model inference (learn.microsoft.com/azure/ai-foundry/foundry-models/
#: how-to/inference), `POST {endpoint}/models/chat/completions?api-version=...`, the deployment named in `model`.
API_VERSION = "2024-05-01-preview"
#: Entra ID scope of the inference endpoint (AzureCloud); sovereign clouds name theirs in `token_scope`.
COGNITIVE_SCOPE = "https://cognitiveservices.azure.com/.default"
PUBLIC_ARM = "https://management.azure.com"

ORG_HINT = ("name the deployment in org.yaml: an account `{provider: azure-foundry, targets: [<target id>], "
            "connection: {subscription_id: ..., resource_group: ..., account: <AI services resource>, deployment: "
            "<name>}}`, or, for a provisioned (PTU) deployment, an entry under `endpoints:` with that connection")


class AzureFoundryConnection(Connection):
    """One deployment in an Azure AI services / Azure OpenAI resource. ARM is read with DefaultAzureCredential
    where Sovra runs; the resource key (auth: key) is read from ARM at run time and never written."""

    subscription_id: str = Field(min_length=1, description="Azure subscription id of the resource.")
    resource_group: str = Field(min_length=1, description="Resource group of the resource.")
    account: str = Field(pattern=NAME, description="The Azure AI services (or Azure OpenAI) resource's name.")
    deployment: str | None = Field(default=None, pattern=NAME, description="The model deployment to call.")
    deployment_type: str | None = Field(
        default=None, description="The deployment's type as created (GlobalStandard, DataZoneStandard, Standard, "
        "ProvisionedManaged, ...); checked against the target when `up` routes, and read for real by "
        "`live_settings`.")
    auth: Literal["key", "entra"] = Field(
        default="key", description="key: the resource's key, read from ARM (listKeys); entra: an Entra ID token "
        "from DefaultAzureCredential (needed where the resource disables local auth).")
    arm_endpoint: str = Field(default=PUBLIC_ARM, pattern=r"^https://",
                              description="Azure Resource Manager of the resource's cloud.")
    token_scope: str = Field(default=COGNITIVE_SCOPE, min_length=1,
                             description="Entra ID scope of the inference endpoint (auth: entra).")
    api_version: str = Field(default=API_VERSION, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$",
                             description="Azure AI model inference api-version.")

    @model_validator(mode="after")
    def _known_type(self) -> AzureFoundryConnection:
        if self.deployment_type and _canonical(self.deployment_type) not in _SCOPES:
            raise ValueError(f"unknown deployment_type {self.deployment_type!r}; valid: {', '.join(_SCOPES)}")
        return self


_SCOPES: dict[str, str | None] = {**{t: GLOBAL for t in (*GLOBAL_TYPES, *NO_PROMISE_TYPES)},
                                  **{t: None for t in (*DATA_ZONE_TYPES, *REGIONAL_TYPES)}}


def _canonical(deployment_type: str) -> str:
    key = deployment_type.strip().lower()
    return next((k for k in _SCOPES if k.lower() == key), deployment_type)


#: The catalog's short labels -> the deployment type (`sku.name`) they stand for.
_SHORT = {"global": "GlobalStandard", "datazone": "DataZoneStandard", "regional": "Standard"}


def sku_name(label: str) -> str:
    """The deployment type as ARM names it (`sku.name`) for a catalog scope or a declared type."""
    return _SHORT.get(label.strip().lower()) or _canonical(label)


def is_provisioned(deployment_type: str | None) -> bool:
    """Is this a provisioned-throughput (PTU) type: capacity bought in advance, not billed per token?"""
    return bool(deployment_type) and _canonical(str(deployment_type)) in PROVISIONED_TYPES


class AzureFoundry(Provider):
    """Foundry deployments: the deployment type says where inference may run (see the module's docstring)."""

    name = "azure-foundry"
    component = "sovra.providers.azure.component_foundry:AzureFoundryDeployment"
    extra = "azure"
    sdk_module = "azure.identity"
    scopes = _SCOPES  # type: ignore[assignment]  (None: the region's own zone, narrowed for DataZone below)
    connection_model = AzureFoundryConnection
    # The router finds the inference URL and key through ARM (subscription, resource group): tenants are not
    # shown those, so only the router calls it.
    direct = False

    def describe(self) -> str:
        return "Azure AI Foundry Models deployments (Global / DataZone / Standard / Provisioned)"

    def zone_for_scope(self, scope: str, country: str | None) -> str:
        """As the base, except that a DataZone type is EU or US by the region's geography, and nothing else."""
        zone = super().zone_for_scope(scope, country)
        if _canonical(scope) in DATA_ZONE_TYPES and zone not in DATA_ZONES:
            raise ValueError(f"{self.name}: {scope} processes within a Microsoft data zone, and those exist only "
                             f"for EU and US regions; {country} is in {zone}")
        return zone

    def zone_for_deployment(self, deployment_type: str, region: str) -> str:
        """The zone of a deployment of `deployment_type` in a resource in Azure `region`; ValueError for an
        unknown type or region (never a guess)."""
        if self.scopes.get(_canonical(deployment_type)) == GLOBAL:
            return GLOBAL
        return self.zone_for_scope(deployment_type, country_of(region))

    def client(self):
        self.sdk()  # the install hint, before the router first needs credentials
        from sovra.providers.azure.foundry_client import AzureFoundryClient

        return AzureFoundryClient()

    def locate(self, target, model, connection) -> Locator:
        """The deployment's name is the address (known offline, so `up` writes the table without Azure); the
        resource's inference URL and key are read by the router on first use. A declared type whose zone is not
        the target's, or a provisioned deployment on a per-token target, is refused with the fix."""
        conn = self._deployment_connection(target, connection)
        if conn.deployment_type:
            zone = self.zone_for_deployment(conn.deployment_type, target.region)
            if zone != target.zone:
                raise ProviderError(f"{target.id}: deployment {conn.deployment!r} is {conn.deployment_type}, which "
                                    f"processes in {zone}, not in the target's {target.zone}; name a deployment "
                                    "of a type that processes there")
            if is_provisioned(conn.deployment_type) and not _is_org_endpoint(target):
                raise ProviderError(
                    f"{target.id}: deployment {conn.deployment!r} is provisioned ({conn.deployment_type}): capacity "
                    "already bought, not priced per token. Declare it under `endpoints:` in org.yaml with this "
                    "connection, its `capacity` and its models at usd_per_1k_tokens: 0, so that it is the "
                    "company's own rung of the ladder")
        params = {"subscription_id": conn.subscription_id, "resource_group": conn.resource_group,
                  "account": conn.account, "region": target.region, "auth": conn.auth,
                  "arm_endpoint": conn.arm_endpoint, "api_version": conn.api_version}
        if conn.auth == "entra":
            params["token_scope"] = conn.token_scope
        if conn.deployment_type:
            params["deployment_type"] = _canonical(conn.deployment_type)
        return Locator(str(conn.deployment), params)

    def live_settings(self, target, connection) -> list[LiveSetting]:
        """The deployment type the deployment really has (its `sku.name`, read from ARM), and the zone it
        implies in the resource's region: a deployment changed to a wider type is held to that zone."""
        from sovra.providers.azure import foundry_arm as farm

        conn = self._deployment_connection(target, connection)
        self.sdk()
        ref = farm.Ref(farm.Account(conn.subscription_id, conn.resource_group, conn.account, conn.arm_endpoint),
                       str(conn.deployment))
        arm = farm.Arm()
        try:
            facts = arm.read_deployment(ref)
        except Exception as exc:  # every failure is mapped in one place: farm.verdict
            raise ProviderError(f"{target.id}: cannot read Foundry deployment {conn.deployment!r}: "
                                f"{farm.verdict(exc, 'reading the deployment')}") from exc
        finally:
            arm.close()
        return [self._type_setting(target, conn, facts)]

    def _type_setting(self, target, conn: AzureFoundryConnection, facts) -> LiveSetting:
        region = facts.location or target.region
        value = f"{facts.sku or 'unknown'} (capacity {facts.capacity}) in {region}"
        try:
            zone = self.zone_for_deployment(facts.sku or "unknown", region)
        except ValueError as exc:  # an unknown type or region cannot be placed: treat it as processing anywhere
            zone, value = GLOBAL, f"{value} ({exc})"
        fix = ""
        if zone != target.zone:
            why = ("DeveloperTier makes no residency promise; " if _canonical(facts.sku or "") in NO_PROMISE_TYPES
                   else "")
            fix = (f"{why}redeploy {conn.deployment!r} in {conn.account!r} as DataZoneStandard (the EU/US data "
                   f"zone of {region}) or Standard / ProvisionedManaged (in {region} itself), so that it processes "
                   f"in {target.zone}; until then Sovra places it in {zone}")
        return LiveSetting(target=target.id, setting="deployment type", value=value, zone=zone, fix=fix)

    def _deployment_connection(self, target, connection) -> AzureFoundryConnection:
        if not isinstance(connection, AzureFoundryConnection) or not connection.deployment:
            raise ProviderError(f"{target.id}: azure-foundry needs an existing deployment: {ORG_HINT}")
        return connection


def _is_org_endpoint(target) -> bool:
    from sovra.core.spec.org import Endpoint

    return isinstance(target, Endpoint)
