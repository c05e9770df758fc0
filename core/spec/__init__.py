"""Typed, frozen models of Sovra's YAML files (they also generate the JSON Schema)."""

from sovra.core.spec.common import Accelerator, ManagedModel, Operator, Residency
from sovra.core.spec.deployment import Deployment
from sovra.core.spec.org import Admin, Catalog, Cluster, Credit, Org, Tenant
from sovra.core.spec.target import Target

__all__ = [
    "Accelerator", "Admin", "Catalog", "Cluster", "Credit", "Deployment", "ManagedModel", "Operator", "Org", "Residency",
    "Target", "Tenant",
]
