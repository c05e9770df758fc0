"""Typed, frozen models of Sovra's YAML files (they also generate the JSON Schema)."""

from orchestrator.spec.common import Accelerator, ManagedModel, Operator, Residency
from orchestrator.spec.deployment import Deployment
from orchestrator.spec.org import Admin, Catalog, Cluster, Credit, Org, Tenant
from orchestrator.spec.target import Target

__all__ = [
    "Accelerator", "Admin", "Catalog", "Cluster", "Credit", "Deployment", "ManagedModel", "Operator", "Org", "Residency",
    "Target", "Tenant",
]
