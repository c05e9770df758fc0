"""Azure ML: managed online endpoints (GPU instances) and serverless model deployments (per token)."""

from __future__ import annotations

from providers.base import Provider


class AzureML(Provider):
    """Azure's deployment types say where inference may run: Regional (Standard), DataZone (EU or US), Global."""

    name = "azure-ml"
    extra = "azure"
    sdk_module = "azure.ai.ml"
    # A Data Zone is the region's own geography (Microsoft defines EU and US data zones).
    scopes = {"regional": None, "standard": None, "datazone": None, "global": "GLOBAL"}

    def describe(self) -> str:
        return "Azure ML managed online endpoints and serverless deployments (Regional / DataZone / Global)"
