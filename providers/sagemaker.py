"""AWS SageMaker real-time endpoints: self-hosted replicas on GPU instances in one region."""

from __future__ import annotations

from providers.base import Provider


class SageMaker(Provider):
    """Each replica is one endpoint instance; data stays in the endpoint's region."""

    name = "aws-sagemaker"
    extra = "aws"
    sdk_module = "boto3"
    scopes = {"regional": None}

    def describe(self) -> str:
        return "AWS SageMaker real-time inference endpoints (GPU instances, per instance-hour)"
