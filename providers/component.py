"""What every Sovra Pulumi component takes and gives: one placement in, an endpoint's name, URI and key out.

Each component installs the residency guard (`providers.component_enforce`) as a transformation on itself, so every
resource registered under it, now or after someone edits its code, is checked before it reaches the engine.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import pulumi

from sovra.providers.component_enforce import Enforcer
from sovra.policies.guard import RegionRule
from sovra.core.errors import SovraError
from sovra.core.spec import Residency, Target

DEPLOYMENT_TAG = "sovra:deployment"
TARGET_TAG = "sovra:target"

_S = TypeVar("_S")


class ComponentSettingsError(SovraError):
    """A component's settings name a field it does not have."""


@dataclass(frozen=True)
class PlacementInput:
    """One placement to provision: the deployment, its target and residency, the model, and the instances the
    plan chose (`instance_type` None and `instance_count` 0 for a managed, per-token target). `settings` are the
    component's own (a workspace, an image), as its `Settings` dataclass names them."""

    deployment: str
    target: Target
    residency: Residency
    model: str
    instance_type: str | None = None
    instance_count: int = 0
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: the Serve application that runs the model, for components that host Ray themselves (`hosts_ray`: KubeRay);
    #: built by `infra.serve_config`, the same builder as the Ray path's, so replicas are pinned the same way.
    app: Mapping[str, Any] | None = None
    extra_tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: the key a `hosts_ray` component's model server requires when the org names no `api_key_env`: derived from
    #: the Ray token of the cluster whose router reaches it (`orchestrator.provisioning.service_keys`), which
    #: derives the same. Kept out of repr, and only ever handed to Pulumi as a secret.
    service_key: str | None = field(default=None, repr=False)

    @property
    def tags(self) -> dict[str, str]:
        """Tags every resource carries: the deployment and target it belongs to."""
        return {**self.extra_tags, DEPLOYMENT_TAG: self.deployment, TARGET_TAG: self.target.id}

    @property
    def rule(self) -> RegionRule:
        """The residency guard's rule for this placement."""
        return RegionRule.for_placement(self.deployment, self.target, self.residency)

    def slug(self, limit: int = 63) -> str:
        """`sovra-<deployment>-<region>`, safe as a cloud resource name (letters, digits, '-')."""
        raw = f"sovra-{self.deployment}-{self.target.region}"
        return re.sub(r"[^A-Za-z0-9-]+", "-", raw)[:limit].strip("-")

    def parse_settings(self, cls: type[_S]) -> _S:
        """The component's settings dataclass from `settings`; an unknown key, or a required one missing, is an
        error naming the target and what is valid."""
        from sovra.core.provision import parse

        try:
            return parse(cls, self.target.provider, self.settings)
        except ValueError as exc:
            raise ComponentSettingsError(f"{self.target.id}: {exc} (org.yaml `provision:`)") from None


class PlacementComponent(pulumi.ComponentResource, abc.ABC):
    """A placement's resources, guarded: every child is checked against the placement's residency rule.

    Subclasses build their resources in `build` and set `endpoint_name`, `scoring_uri` and `key` (always a
    Pulumi secret, None where the endpoint authenticates with cloud identity instead of a key)."""

    type_token: ClassVar[str]
    #: does this component run Sovra's model server on a Ray cluster it makes (so it needs `PlacementInput.app`)?
    hosts_ray: ClassVar[bool] = False
    endpoint_name: pulumi.Output[str]
    scoring_uri: pulumi.Output[str]
    key: pulumi.Output[str | None]

    def __init__(self, name: str, inputs: PlacementInput, opts: pulumi.ResourceOptions | None = None):
        guard = pulumi.ResourceOptions(transformations=[Enforcer(inputs.rule)])
        super().__init__(self.type_token, name, None, pulumi.ResourceOptions.merge(opts, guard))
        self.inputs = inputs
        self.build(name, inputs)
        self.register_outputs({"endpoint_name": self.endpoint_name, "scoring_uri": self.scoring_uri,
                               "key": self.key})

    @abc.abstractmethod
    def build(self, name: str, inputs: PlacementInput) -> None:
        """Declare the resources (children of `self`) and set the three outputs."""

    def connection(self) -> dict[str, Any]:
        """The router adapter's non-secret connection settings for the endpoint made here (exported in clear under
        the stack's `endpoints` output; keys stay separate secrets). Components add what their adapter needs."""
        return {"endpoint": self.endpoint_name}

    def child(self, **kw: Any) -> pulumi.ResourceOptions:
        """Options for a child resource: parented here, so the guard and the provider pass down."""
        return pulumi.ResourceOptions(parent=self, **kw)
