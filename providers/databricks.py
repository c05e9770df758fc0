"""Databricks Model Serving: foundation model APIs per token, or provisioned GPU serving, per workspace region."""

from __future__ import annotations

from providers.base import Provider


class Databricks(Provider):
    """Serving runs in the workspace's region unless cross-geo processing is enabled."""

    name = "databricks"
    extra = "databricks"
    sdk_module = "databricks.sdk"
    scopes = {"in-region": None, "cross-geo": "GLOBAL"}

    def describe(self) -> str:
        return "Databricks Model Serving (pay-per-token foundation models; GPU model serving)"
