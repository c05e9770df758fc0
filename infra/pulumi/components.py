"""The one place that says which component provisions a provider's placements.

Components are imported on first use, so importing this module pulls no cloud SDK; a missing one is reported
with the extra that installs it.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import TYPE_CHECKING

from sovra.core.errors import SovraError

if TYPE_CHECKING:
    from sovra.providers.component import PlacementComponent

#: provider name -> "module:Class" of its component; None where a placement needs nothing created (a managed,
#: per-token model the account can already call).
COMPONENTS = MappingProxyType({
    "aws-sagemaker": "sovra.providers.aws.component:SageMakerEndpoint",
    "azure-ml": "sovra.providers.azure.component_ml:AzureMLOnlineEndpoint",
    "azure-foundry": "sovra.providers.azure.component_foundry:AzureFoundryDeployment",
    "databricks": "sovra.providers.databricks.component:DatabricksServingEndpoint",
    "snowflake-cortex": "sovra.providers.snowflake.component:SnowflakeCortexAccess",
    "kubernetes": "sovra.providers.onprem.component:KubeRayCluster",
    "aws-bedrock": None,
})


class NoComponentError(SovraError):
    """A placement's provider has no Pulumi component, or its SDK is not installed."""


def component_for(provider: str) -> type[PlacementComponent] | None:
    """The component class for `provider`'s placements; None when nothing needs creating there."""
    if provider not in COMPONENTS:
        raise NoComponentError(f"no Pulumi component provisions {provider!r} placements; components exist for "
                               f"{', '.join(sorted(p for p, c in COMPONENTS.items() if c))}")
    path = COMPONENTS[provider]
    if path is None:
        return None
    module, _, cls = path.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise NoComponentError(f"provisioning {provider} needs the Pulumi provider SDKs ({exc.name} is missing): "
                               "pip install 'sovra[pulumi]'") from exc
