"""AWS Bedrock: managed models priced per token, called in-region or through inference profiles."""

from __future__ import annotations

from providers.base import Provider


class Bedrock(Provider):
    """Bedrock's cross-region inference profiles route within a geography (`eu.`, `us.`, `apac.`) or anywhere (`global.`)."""

    name = "aws-bedrock"
    extra = "aws"
    sdk_module = "boto3"
    scopes = {"in-region": None, "eu": "EU", "us": "US", "us-gov": "US", "apac": "APAC", "ca": "CA", "jp": "APAC",
              "au": "APAC", "global": "GLOBAL"}

    def describe(self) -> str:
        return "AWS Bedrock managed models (per token; in-region, geographic or global inference profiles)"
