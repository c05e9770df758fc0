"""A Databricks model serving endpoint (pulumi-databricks `ModelServing`) in the target's workspace."""

from __future__ import annotations

import pulumi
import pulumi_databricks as databricks

from sovra.providers.component import PlacementComponent, PlacementInput
from sovra.core.provision import DatabricksSettings


class DatabricksServingEndpoint(PlacementComponent):
    """One serving endpoint with the model as its served entity, tagged with the deployment and target.

    Callers authenticate with the workspace's own tokens, so `key` is a secret None."""

    type_token = "sovra:databricks:DatabricksServingEndpoint"

    def build(self, name: str, inputs: PlacementInput) -> None:
        s = inputs.parse_settings(DatabricksSettings)
        opts = self.child()
        if s.host:
            opts = self.child(provider=databricks.Provider(f"{name}-databricks", host=s.host, opts=self.child()))
        dedicated = inputs.instance_count > 0
        entity = {"name": "primary", "entity_name": s.entity_name.format(model=inputs.model),
                  "entity_version": s.entity_version, "workload_type": s.workload_type,
                  "workload_size": s.workload_size, "scale_to_zero_enabled": not dedicated}
        endpoint = databricks.ModelServing(
            f"{name}-serving", name=inputs.slug(), opts=opts,
            config={"served_entities": [entity]},
            tags=[{"key": k, "value": v} for k, v in sorted(inputs.tags.items())])
        self.endpoint_name = endpoint.name
        self.scoring_uri = endpoint.endpoint_url
        self.key = pulumi.Output.secret(None)
