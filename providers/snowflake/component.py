"""Snowflake Cortex access (pulumi-snowflake): an account role granted SNOWFLAKE.CORTEX_USER, and, when the
placement asks for dedicated capacity, a Snowpark Container Services compute pool and service."""

from __future__ import annotations

import json

import pulumi
import pulumi_snowflake as snowflake

from sovra.providers.component import PlacementComponent, PlacementInput
from sovra.core.provision import SnowflakeSettings

CORTEX_USER = '"SNOWFLAKE"."CORTEX_USER"'


class SnowflakeCortexAccess(PlacementComponent):
    """The role apps use to call Cortex `COMPLETE` in the target's account; with instances in the plan, an SPCS
    GPU compute pool (the plan's instance family) running the model as a service.

    Snowflake objects carry no tags without a tag schema, so the deployment and target are in their comments.
    Callers authenticate as Snowflake users holding the role, so `key` is a secret None."""

    type_token = "sovra:snowflake:SnowflakeCortexAccess"

    def build(self, name: str, inputs: PlacementInput) -> None:
        s = inputs.parse_settings(SnowflakeSettings)
        comment = "; ".join(f"{k}={v}" for k, v in sorted(inputs.tags.items()))
        ident = inputs.slug().upper().replace("-", "_")
        role = snowflake.AccountRole(f"{name}-role", name=ident, comment=comment, opts=self.child())
        snowflake.GrantDatabaseRole(f"{name}-cortex-user", database_role_name=CORTEX_USER,
                                    parent_role_name=role.name, opts=self.child())
        endpoint: pulumi.Output[str] = role.name
        if inputs.instance_count > 0:
            pool = snowflake.ComputePool(
                f"{name}-pool", name=f"{ident}_POOL", instance_family=inputs.instance_type or "GPU_NV_M",
                min_nodes=inputs.instance_count, max_nodes=inputs.instance_count, comment=comment,
                opts=self.child())
            service = snowflake.Service(
                f"{name}-service", name=f"{ident}_SERVICE", database=s.database, schema=s.schema,
                compute_pool=pool.name, comment=comment, min_instances=inputs.instance_count,
                max_instances=inputs.instance_count,
                from_specification={"text": _service_spec(inputs.model, s.image)}, opts=self.child())
            endpoint = service.fully_qualified_name
        self.endpoint_name = endpoint
        base = s.account_url.rstrip("/")
        self.scoring_uri = pulumi.Output.from_input(f"{base}/api/v2/cortex/inference:complete")
        self.key = pulumi.Output.secret(None)


def _service_spec(model: str, image: str) -> str:
    """An SPCS service specification serving `model` on one GPU (YAML; JSON is valid YAML)."""
    return json.dumps({"spec": {
        "containers": [{"name": "model", "image": image, "env": {"MODEL": model},
                        "resources": {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}}}],
        "endpoints": [{"name": "api", "port": 8000, "public": False}]}}, sort_keys=True)
