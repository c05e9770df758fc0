"""Azure ML: managed online endpoints (GPU instances in one region) and serverless API endpoints (per token, hosted in
their region). Both are regional: a serverless endpoint's SKU is always `Consumption` (azure-ai-ml creates it so).
Global and DataZone deployment types belong to Azure AI Foundry deployments, the `azure-foundry` adapter.
The router's client is in `ml_client`, the ARM calls in `ml_arm`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sovra.core.errors import ProviderError
from sovra.core.spec.zones import GLOBAL
from sovra.providers.azure.regions import country_of
from sovra.providers.base import Connection, LiveSetting, Locator, Provider

#: Azure's names for endpoints and deployments; they go into ARM URL paths and a header, so nothing else passes.
NAME = r"^[A-Za-z][A-Za-z0-9-]{1,63}$"
#: What an Azure ML endpoint can be: in its region. `Consumption` is the SKU of a serverless API endpoint made in
#: an Azure ML / AI Foundry hub workspace, hosted in the endpoint's region; `Regional` is the catalog's label.
REGIONAL_TYPES = ("Regional", "Consumption")
FOUNDRY_HINT = ("Global and DataZone deployment types are Azure AI Foundry deployments: use provider "
                "`azure-foundry` (a deployment in an Azure AI services resource), not an Azure ML endpoint")

ORG_HINT = ("name the existing endpoint under `endpoints:` in org.yaml, with `connection: {subscription_id: ..., "
            "resource_group: ..., workspace: ..., endpoint: <name>, kind: online|serverless}`, or let `sovra up` create "
            "an online endpoint with Pulumi: `accounts: [{provider: azure-ml, provision: {workspace: ..., "
            "resource_group: ...}}]`")


class AzureMLConnection(Connection):
    """An Azure ML workspace (or AI Foundry hub/project) and, to route to it, one of its endpoints. Credentials come
    from DefaultAzureCredential where Sovra runs; the endpoint's key is read from ARM at run time, never written."""

    subscription_id: str = Field(min_length=1, description="Azure subscription id of the workspace.")
    resource_group: str = Field(min_length=1, description="Resource group of the workspace.")
    workspace: str = Field(min_length=1, description="Azure ML workspace, or AI Foundry hub/project, name.")
    endpoint: str | None = Field(default=None, pattern=NAME,
                                 description="Name of an existing online or serverless endpoint in the workspace.")
    kind: Literal["online", "serverless"] = Field(
        default="online", description="online: a managed online endpoint (your GPU instances); serverless: a "
        "serverless endpoint (Models-as-a-Service, per token).")
    deployment: str | None = Field(
        default=None, pattern=NAME, description="An online endpoint's deployment to call (sent as the "
        "`azureml-model-deployment` header); default: the endpoint's traffic split.")
    deployment_type: str | None = Field(
        default=None, description="A serverless endpoint's SKU as created (Consumption), used when ARM does not "
        "report it; `live_settings` reads the real one. Global / DataZone types are azure-foundry deployments.")
    served_model: str | None = Field(
        default=None, min_length=1, description="The model name the endpoint's server expects in `model` (e.g. "
        "vLLM's --served-model-name); default: the deployment's model.")
    stream: bool = Field(
        default=True, description="The endpoint answers `stream: true` with server-sent events; false: Sovra asks "
        "for the whole answer and streams it on in one piece.")
    cloud: str | None = Field(
        default=None, min_length=1, description="Azure cloud as azure-ai-ml names it: AzureCloud (default), "
        "AzureUSGovernment, AzureChinaCloud, or a private cloud named in the document at ARM_CLOUD_METADATA_URL.")

    @model_validator(mode="after")
    def _fits_kind(self) -> AzureMLConnection:
        if self.kind == "serverless" and self.deployment:
            raise ValueError("a serverless endpoint has no deployments to choose; remove `deployment`")
        if self.kind == "online" and self.deployment_type:
            raise ValueError("a managed online endpoint runs on your instances in its region; `deployment_type` "
                             "applies to serverless endpoints only")
        if self.deployment_type and self.deployment_type.lower() not in _SCOPES_LOWER:
            raise ValueError(f"unknown deployment_type {self.deployment_type!r} for a serverless endpoint; valid: "
                             f"{', '.join(REGIONAL_TYPES)}{_foundry_hint(self.deployment_type)}")
        return self


_SCOPES: dict[str, str | None] = {t: None for t in REGIONAL_TYPES}
_SCOPES_LOWER = {k.lower() for k in _SCOPES}


def _foundry_hint(label: str) -> str:
    """`; <hint>` when `label` is a Foundry deployment type (Global*, DataZone*, ...), else ''."""
    from sovra.providers.azure.foundry import _SCOPES as FOUNDRY

    return f"; {FOUNDRY_HINT}" if label.strip().lower() in {k.lower() for k in FOUNDRY} else ""


class AzureML(Provider):
    """Managed online and serverless endpoints, each in its own region."""

    name = "azure-ml"
    component = "sovra.providers.azure.component_ml:AzureMLOnlineEndpoint"
    extra = "azure"
    sdk_module = "azure.ai.ml"
    scopes = _SCOPES  # type: ignore[assignment]  (None: the region's own zone)
    connection_model = AzureMLConnection
    # Its client finds the scoring URI and key through the workspace (subscription, resource group), which
    # tenants are not shown: only the router calls it.
    direct = False

    def describe(self) -> str:
        return "Azure ML managed online endpoints and serverless API endpoints (regional)"

    def zone_for_scope(self, scope: str, country: str | None) -> str:
        """As the base; a Foundry deployment type is refused with the adapter to use instead."""
        try:
            return super().zone_for_scope(scope, country)
        except ValueError as exc:
            raise ValueError(f"{exc}{_foundry_hint(scope)}") from None

    def zone_for_deployment(self, deployment_type: str, region: str) -> str:
        """The zone of an endpoint of `deployment_type` (its SKU) in Azure `region`; ValueError for an unknown
        type or region (never a guess)."""
        return self.zone_for_scope(deployment_type, country_of(region))

    def client(self):
        self.sdk()  # the install hint, before the router first needs credentials
        from sovra.providers.azure.ml_client import AzureMLClient

        return AzureMLClient()

    def locate(self, target, model, connection) -> Locator:
        """The endpoint's name is the address: it is stable and known without calling Azure (so `up` writes the
        routing table offline), while the scoring URI and key are read by the router on first use and re-read when
        refused. The workspace and kind travel as params."""
        conn = self._endpoint_connection(target, connection)
        params = {"subscription_id": conn.subscription_id, "resource_group": conn.resource_group,
                  "workspace": conn.workspace, "kind": conn.kind, "region": target.region}
        optional = {"deployment": conn.deployment, "deployment_type": conn.deployment_type,
                    "served_model": conn.served_model, "cloud": conn.cloud,
                    "stream": None if conn.stream else "false"}
        params.update({k: v for k, v in optional.items() if v})
        return Locator(str(conn.endpoint), params)

    def live_settings(self, target, connection) -> list[LiveSetting]:
        """The deployment type the endpoint really has, read from ARM, and the zone it implies."""
        from sovra.providers.azure import ml_arm as arm

        conn = self._endpoint_connection(target, connection)
        self.sdk()
        ws = arm.Workspace(conn.subscription_id, conn.resource_group, conn.workspace, conn.cloud)
        cred = arm.credential()
        try:
            facts = arm.read_endpoint(arm.ml_client(ws, cred), conn.kind, str(conn.endpoint))
        except Exception as exc:  # every SDK failure is mapped in one place: arm.verdict
            raise ProviderError(f"{target.id}: cannot read Azure ML endpoint {conn.endpoint!r}: "
                                f"{arm.verdict(exc, 'reading the endpoint')}") from exc
        finally:
            cred.close()
        return [self._deployment_setting(target, conn, facts)]

    def _deployment_setting(self, target, conn: AzureMLConnection, facts) -> LiveSetting:
        region = facts.location or target.region
        if facts.kind == "online":
            kind, value = "Regional", f"Regional (managed online endpoint in {region})"
        else:
            kind = facts.sku or conn.deployment_type or "unknown"
            value = kind if facts.sku else f"{kind} (as declared in org.yaml; ARM reported no SKU)"
        try:
            zone = self.zone_for_deployment(kind, region)
        except ValueError as exc:  # an unknown type or region cannot be placed: treat it as processing anywhere
            zone, value = GLOBAL, f"{value} ({exc})"
        fix = "" if zone == target.zone else (
            f"recreate {conn.endpoint!r} as a serverless endpoint in {region} (SKU Consumption) or a managed "
            f"online endpoint there, so that it processes in {target.zone}, or, for a Global or DataZone "
            f"deployment type, route to it as an azure-foundry deployment; until then Sovra places it in {zone}")
        return LiveSetting(target=target.id, setting="deployment type", value=value, zone=zone, fix=fix)

    def _endpoint_connection(self, target, connection) -> AzureMLConnection:
        if not isinstance(connection, AzureMLConnection) or not connection.endpoint:
            raise ProviderError(f"{target.id}: azure-ml needs an existing endpoint: {ORG_HINT}")
        return connection


