"""Which Pulumi component provisions a provider's placements: the one its adapter names.

Components are imported on first use, so importing this module pulls no cloud SDK; a missing one is reported
with the extra that installs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from sovra.core.errors import SovraError

if TYPE_CHECKING:
    from sovra.providers.component import PlacementComponent

class NoComponentError(SovraError):
    """A placement's provider has no Pulumi component, or its SDK is not installed."""


def component_for(provider: str) -> type[PlacementComponent] | None:
    """The component class for `provider`'s placements, as its adapter names it (`Provider.component`); None when
    nothing needs creating there (a managed, per-token model the account can already call)."""
    from sovra.providers import base

    path = base.get(provider).component
    if path is None:
        return None
    module, _, cls = path.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise NoComponentError(f"provisioning {provider} needs the Pulumi provider SDKs ({exc.name} is missing): "
                               "pip install 'sovra[pulumi]'") from exc
