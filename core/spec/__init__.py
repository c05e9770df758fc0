"""Typed, frozen models of Sovra's YAML files (they also generate the JSON Schema)."""

from core.spec.common import Accelerator, ManagedModel, Operator, Residency
from core.spec.deployment import Deployment
from core.spec.org import Admin, Catalog, Cluster, Credit, Org, Tenant
from core.spec.target import Target

__all__ = [
    "Accelerator", "Admin", "Catalog", "Cluster", "Credit", "Deployment", "ManagedModel", "Operator", "Org", "Residency",
    "Target", "Tenant",
]
