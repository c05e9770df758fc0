"""An Azure ML managed online endpoint and its deployment (pulumi-azure-native machinelearningservices)."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi_azure_native import machinelearningservices as ml

from sovra.providers.component import PlacementComponent, PlacementInput
from sovra.core.provision import AzureMLSettings


class AzureMLOnlineEndpoint(PlacementComponent):
    """A key-authenticated online endpoint in the target's location, with one managed deployment taking all
    traffic on the plan's instance type and count. The endpoint's primary key is exported as a secret."""

    type_token = "sovra:azure:AzureMLOnlineEndpoint"

    @property
    def location(self) -> str:
        """Where every resource is created: the target's region."""
        return self.inputs.target.region

    def build(self, name: str, inputs: PlacementInput) -> None:
        s = inputs.parse_settings(AzureMLSettings)
        tags = inputs.tags
        endpoint_name = inputs.slug(limit=32)  # Azure ML endpoint names: 3-32 characters
        deployment_name = "primary"
        endpoint = ml.OnlineEndpoint(
            f"{name}-endpoint", resource_group_name=s.resource_group, workspace_name=s.workspace,
            endpoint_name=endpoint_name, location=self.location, tags=tags,
            identity={"type": "SystemAssigned"},
            properties={"auth_mode": "Key", "traffic": {deployment_name: 100}},
            opts=self.child())
        ml.OnlineDeployment(
            f"{name}-deployment", resource_group_name=s.resource_group, workspace_name=s.workspace,
            endpoint_name=endpoint.name, deployment_name=deployment_name, location=self.location, tags=tags,
            sku={"name": "Default", "capacity": max(inputs.instance_count, 1)},
            # Typed args: `properties` is a union (managed or Kubernetes), so a plain dict is not translated.
            properties=ml.ManagedOnlineDeploymentArgs(
                endpoint_compute_type="Managed", model=s.model_asset.format(model=inputs.model),
                instance_type=inputs.instance_type, scale_settings=ml.DefaultScaleSettingsArgs(scale_type="Default")),
            opts=self.child())
        keys = ml.list_online_endpoint_keys_output(
            resource_group_name=s.resource_group, workspace_name=s.workspace, endpoint_name=endpoint.name,
            opts=pulumi.InvokeOutputOptions(parent=self))
        self.endpoint_name = endpoint.name
        # the subscription is the one the endpoint was created in: its ARM id says so
        self._where = {"subscription_id": endpoint.id.apply(lambda i: i.split("/")[2] if i.count("/") > 2 else ""),
                       "resource_group": s.resource_group, "workspace": s.workspace, "kind": "online",
                       "deployment": deployment_name}
        self.scoring_uri = endpoint.properties.apply(lambda p: p.scoring_uri)
        self.key = pulumi.Output.secret(keys.apply(lambda k: k.primary_key))

    def connection(self) -> dict[str, Any]:
        return {**self._where, "endpoint": self.endpoint_name}
