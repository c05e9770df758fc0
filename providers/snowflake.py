"""Snowflake Cortex: managed LLM functions inside a Snowflake account, priced per token (credits)."""

from __future__ import annotations

from providers.base import Provider


class SnowflakeCortex(Provider):
    """CORTEX_ENABLED_CROSS_REGION decides where Cortex may process: in-region, a cloud's geography, or ANY_REGION."""

    name = "snowflake-cortex"
    extra = "snowflake"
    sdk_module = "snowflake.connector"
    scopes = {"disabled": None, "aws_eu": "EU", "azure_eu": "EU", "aws_us": "US", "azure_us": "US",
              "aws_apj": "APAC", "azure_apac": "APAC", "any_region": "GLOBAL"}

    def describe(self) -> str:
        return "Snowflake Cortex AI functions (per token; cross-region setting decides the zone)"
