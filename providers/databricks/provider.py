"""Databricks Model Serving: foundation model APIs per token, or provisioned / custom serving endpoints, per
workspace region. How the router calls an endpoint is in `client`; what the account says about where
it processes (cross-Geo processing) is in `geo`."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from sovra.core.errors import ProviderError
from sovra.providers.base import Connection, LiveSetting, Locator, Provider

#: Databricks' own rule for serving endpoint names; the name goes into a URL path, so nothing else is accepted.
ENDPOINT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"

ORG_HINT = ("add `accounts: [{provider: databricks, connection: {host: https://<workspace>.cloud.databricks.com}}]` "
            "to org.yaml (or set DATABRICKS_HOST where `sovra up` runs)")


class DatabricksConnection(Connection):
    """A workspace: its URL and, optionally, a ~/.databrickscfg profile and an existing endpoint. Credentials come
    from databricks-sdk's chain where Sovra runs (DATABRICKS_TOKEN, the profile, OAuth M2M, Azure CLI...)."""

    host: str | None = Field(default=None, pattern=r"^https?://[^\s/]+/?$",
                             description="Workspace URL, e.g. https://dbc-1234.cloud.databricks.com; default: "
                                         "DATABRICKS_HOST where Sovra runs.")
    profile: str | None = Field(default=None, min_length=1,
                                description="Name of a ~/.databrickscfg profile holding the credentials.")
    endpoint: str | None = Field(default=None, pattern=ENDPOINT_NAME,
                                 description="Name of an existing serving endpoint (provisioned throughput or a "
                                             "custom model); default: the pay-per-token endpoint of the model.")
    cross_geo: Literal["enabled", "disabled"] | None = Field(
        default=None,
        description="What the account console shows for the workspace's cross-Geo processing ('disabled' = "
                    "'Enforce data processing within workspace Geography for Designated Services' is on). No "
                    "Databricks API exposes it, so Sovra takes it from here; unset, Sovra assumes it may be "
                    "enabled and treats the workspace's serving as GLOBAL.")


class Databricks(Provider):
    """Serving runs in the workspace's Geo unless cross-Geo processing is enabled (then anywhere: GLOBAL)."""

    name = "databricks"
    component = "sovra.providers.databricks.component:DatabricksServingEndpoint"
    extra = "databricks"
    sdk_module = "databricks.sdk"
    #: `in-geo`: cross-Geo processing disabled, so serving processes in the workspace's Geo (`geo.geo_of`);
    #: `in-region` is read the same way (no Designated Service promises one region or country).
    scopes = {"in-geo": None, "in-region": None, "cross-geo": "GLOBAL"}
    connection_model = DatabricksConnection
    direct_params = frozenset({"host"})  # not `profile`: the router host's own ~/.databrickscfg

    def zone_for_target(self, scope: str, country: str | None, region: str) -> str:
        zone = self.zone_for_scope(scope, country)
        if zone == "GLOBAL":
            return zone
        from sovra.providers.databricks.geo import geo_of

        return geo_of(region, country)

    def describe(self) -> str:
        return "Databricks Model Serving (pay-per-token foundation models; GPU model serving)"

    def direct_url(self, backend) -> str | None:
        return backend.params.get("host")

    def client(self):
        self.sdk()  # the install hint, before the router first needs credentials
        from sovra.providers.databricks.client import DatabricksClient

        return DatabricksClient()

    def locate(self, target, model, connection) -> Locator:
        """The endpoint is the connection's `endpoint`, else the model's pay-per-token endpoint (`id` in the
        catalog, default its name); `host`/`profile` travel as params so the router finds the same workspace."""
        if not isinstance(connection, DatabricksConnection):
            connection = self.connection(None)
        host = connection.host or os.environ.get("DATABRICKS_HOST")
        if not host:
            raise ProviderError(f"{target.id}: Databricks needs the workspace URL: {ORG_HINT}")
        offered = target.model_price(model)
        if connection.endpoint:
            address = connection.endpoint
        elif offered is not None:
            address = offered.id or offered.name
        else:
            raise ProviderError(f"{target.id}: {model!r} has no pay-per-token endpoint here; name the serving "
                                "endpoint that serves it: `connection: {endpoint: <name>}` in org.yaml")
        params = {"host": host.rstrip("/")}
        if connection.profile:
            params["profile"] = connection.profile
        return Locator(address, params)

    def live_settings(self, target, connection) -> list[LiveSetting]:
        """Cross-Geo processing of the workspace serving `target` (see `geo` for what can be read)."""
        from sovra.providers.databricks.geo import cross_geo_setting

        if not isinstance(connection, DatabricksConnection):
            connection = self.connection(None)
        host = connection.host or os.environ.get("DATABRICKS_HOST")
        if not host:
            raise ProviderError(f"{target.id}: cannot read the workspace's settings without its URL: {ORG_HINT}")
        self.sdk()
        return [cross_geo_setting(target, connection, host.rstrip("/"))]
