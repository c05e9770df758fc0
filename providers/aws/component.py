"""A SageMaker real-time endpoint (pulumi-aws): the execution role, the model, its configuration, the endpoint."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from sovra.providers.component import PlacementComponent, PlacementInput
from sovra.core.provision import SageMakerSettings

SAGEMAKER_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}


class SageMakerEndpoint(PlacementComponent):
    """One SageMaker endpoint serving the placement's replicas on its instance type, in the target's region.

    SageMaker authenticates callers with IAM (SigV4), so `key` is a secret None."""

    type_token = "sovra:aws:SageMakerEndpoint"

    @property
    def region(self) -> str:
        """Where the explicit AWS provider puts every resource: the target's region."""
        return self.inputs.target.region

    def build(self, name: str, inputs: PlacementInput) -> None:
        s = inputs.parse_settings(SageMakerSettings)
        tags = inputs.tags
        slug = inputs.slug()
        provider = aws.Provider(f"{name}-aws", region=self.region, opts=self.child())
        opts = self.child(provider=provider)
        role = aws.iam.Role(f"{name}-role", assume_role_policy=json.dumps(SAGEMAKER_TRUST), tags=tags, opts=opts)
        aws.iam.RolePolicyAttachment(f"{name}-role-policy", role=role.name, policy_arn=s.policy_arn, opts=opts)
        container: dict[str, object] = {
            "image": s.image.format(region=self.region),
            "environment": {"HF_MODEL_ID": inputs.model, "SM_NUM_GPUS": "1"},
        }
        if s.model_data_url:
            container["model_data_url"] = s.model_data_url
        model = aws.sagemaker.Model(f"{name}-model", name=slug, execution_role_arn=role.arn,
                                    primary_container=container, tags=tags, opts=opts)
        config = aws.sagemaker.EndpointConfiguration(
            f"{name}-config", name=slug, tags=tags, opts=opts,
            production_variants=[{"variant_name": "primary", "model_name": model.name,
                                  "instance_type": inputs.instance_type,
                                  "initial_instance_count": max(inputs.instance_count, 1)}])
        endpoint = aws.sagemaker.Endpoint(f"{name}-endpoint", name=slug, endpoint_config_name=config.name,
                                          tags=tags, opts=opts)
        self.endpoint_name = endpoint.name
        self._region = inputs.target.region
        self.scoring_uri = endpoint.name.apply(
            lambda n: f"https://runtime.sagemaker.{self.region}.amazonaws.com/endpoints/{n}/invocations")
        self.key = pulumi.Output.secret(None)

    def connection(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint_name, "region": self._region}
