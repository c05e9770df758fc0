"""The residency guard (pure, no I/O, no Pulumi import): may a declared resource land where it says it lands?

A resource passes when its region/location is its placement's target's region, a Ray worker group is pinned to
its placement's target, and the target itself satisfies the deployment's residency. Anything the guard cannot
place (a computed region, an AWS resource with no explicit provider, a cloud it does not know) is refused: it
fails closed. Sovra's programs call it on every resource they register (`providers.component_enforce`), and the
CrossGuard pack in `policies/crossguard` calls the same `check` for teams running Pulumi themselves.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sovra.core.errors import SovraError
from sovra.core.spec import Residency, Target
from sovra.core.place import Place
from sovra.policies.residency import violations

#: Ray's custom resource that pins replicas to a target (the same name `infra.serve_config.target_resource` uses).
TARGET_RESOURCE_PREFIX = "sovra.target/"
RAY_SERVICE = "kubernetes:ray.io/v1:RayService"
RAY_CLUSTER = "kubernetes:ray.io/v1:RayCluster"

# Where each kind of resource lands. AWS resources take their region from their provider; IAM is global.
# Databricks, Snowflake and Kubernetes resources land in the workspace, account or cluster their provider
# connects to, which is the target's own (from org.yaml), so they carry no region of their own.
_GLOBAL_PREFIXES = ("aws:iam/",)
# A Foundry model deployment has no location: it lands in its resource (whose location is checked), and processes
# where its type says, which its component checks through the azure-foundry adapter (providers.azure.component_foundry).
_ACCOUNT_PLACED = ("azure-native:cognitiveservices:Deployment",)
_CONNECTION_PLACED = ("databricks:", "snowflake:", "kubernetes:", "pulumi:providers:databricks",
                      "pulumi:providers:snowflake", "pulumi:providers:kubernetes", "sovra:", "pulumi:pulumi:Stack")


class ResidencyGuardError(SovraError):
    """Resources that would land outside their placement's place; nothing was created."""

    def __init__(self, refusals: Iterable[str]):
        self.refusals = tuple(refusals)
        super().__init__("residency guard refused the program before any change:\n" +
                         "\n".join(f"  - {r}" for r in self.refusals))


@dataclass(frozen=True)
class Declared:
    """One resource as a program declares it: its Pulumi type, name, and where it says it lands.

    `region` is None for resources placed by their provider's connection (or global, as IAM is); `computed`
    marks a region that is not a literal, which the guard cannot check before `up`."""

    type: str
    name: str
    region: str | None = None
    pinned: tuple[str, ...] = ()  # targets a Ray worker group is pinned to (sovra.target/<id>)
    computed: bool = False
    unplaced: str | None = None  # why the guard cannot tell where it lands, when it cannot


@dataclass(frozen=True)
class RegionRule:
    """Where resources may land: `regions` (and, for Ray worker groups, `targets`); `why` says whose rule it is.
    `refusals` are the residency rules the place itself fails, so every resource is refused."""

    regions: frozenset[str]
    targets: frozenset[str]
    why: str
    refusals: tuple[str, ...] = ()

    @classmethod
    def for_placement(cls, deployment: str, target: Target, residency: Residency) -> RegionRule:
        """The rule for one placement: the target's region only, and only if the residency allows the target."""
        place = Place.of(target)
        where = ", ".join(x for x in (target.zone, target.country) if x)
        return cls(regions=frozenset({normalize_region(target.region)}), targets=frozenset({target.id}),
                   why=(f"deployment {deployment} is placed on {target.id} in {target.region} ({where}); "
                        f"its residency is {residency.describe()}"),
                   refusals=violations(residency, place))

    @classmethod
    def allowed(cls, regions: Iterable[str], targets: Iterable[str] = (), *, why: str) -> RegionRule:
        """A rule from a list of allowed regions (and targets), as the CrossGuard pack reads from its config."""
        return cls(regions=frozenset(normalize_region(r) for r in regions), targets=frozenset(targets), why=why)

    def union(self, other: RegionRule) -> RegionRule:
        """Resources may land where either rule allows (a program with several placements)."""
        return RegionRule(self.regions | other.regions, self.targets | other.targets,
                          f"{self.why}; or {other.why}", (*self.refusals, *other.refusals))


def normalize_region(region: str) -> str:
    """Case and spaces do not matter: Azure's `France Central` is `francecentral`."""
    return "".join(region.split()).lower()


def declared(type_: str, name: str, props: Mapping[str, Any], provider_region: Any = None,
             has_provider: bool = True) -> Declared:
    """Where a resource of `type_` with input `props` lands. `provider_region` is its explicit provider's region
    (AWS), `has_provider` whether it has an explicit provider at all."""
    if type_.startswith("pulumi:providers:aws"):
        return _with_region(type_, name, props.get("region"), "an AWS provider without `region` takes it from "
                            "the stack config or AWS_REGION")
    if type_.startswith("pulumi:providers:azure-native"):
        value = props.get("location")
        return Declared(type_, name) if value is None else _with_region(type_, name, value, "")
    if type_.startswith(_GLOBAL_PREFIXES):
        return Declared(type_, name)
    if type_.startswith("aws:"):
        if props.get("region") is not None:  # pulumi-aws 7: a resource's own `region` overrides its provider's
            return _with_region(type_, name, props["region"], "")
        if not has_provider:
            return Declared(type_, name, unplaced="it has no explicit AWS provider, so its region would come from "
                            "the stack config or AWS_REGION; give it the placement's provider")
        return _with_region(type_, name, provider_region, "its AWS provider has no region")
    if type_ in _ACCOUNT_PLACED:
        return Declared(type_, name)
    if type_.startswith("azure-native:"):
        return _with_region(type_, name, props.get("location"), "it has no `location`, so Azure would pick one")
    if type_ in (RAY_SERVICE, RAY_CLUSTER):
        return Declared(type_, name, pinned=tuple(_pinned_targets(props)))
    if type_.startswith(_CONNECTION_PLACED):
        return Declared(type_, name)
    return Declared(type_, name, unplaced="Sovra cannot tell where resources of this provider land")


def _with_region(type_: str, name: str, value: Any, missing: str) -> Declared:
    if value is None:
        return Declared(type_, name, unplaced=missing)
    if not isinstance(value, str):
        return Declared(type_, name, computed=True)
    return Declared(type_, name, region=value)


def _pinned_targets(props: Mapping[str, Any]) -> list[str]:
    """The targets every worker group of a RayService/RayCluster spec is pinned to, and every Serve deployment of
    a RayService's `serveConfigV2` asks for; '' for an unpinned group or deployment."""
    spec = props.get("spec") or {}
    cluster = spec.get("rayClusterConfig", spec) if isinstance(spec, Mapping) else {}
    groups = cluster.get("workerGroupSpecs") or [] if isinstance(cluster, Mapping) else []
    pinned: list[str] = []
    for group in groups:
        resources = ((group or {}).get("rayStartParams") or {}).get("resources") or ""
        pinned.extend(_targets_in(_resource_names(resources)))
    if isinstance(spec, Mapping) and "serveConfigV2" in spec:
        pinned.extend(_serve_pins(spec["serveConfigV2"]))
    return pinned or [""]


def _targets_in(names: Iterable[str]) -> list[str]:
    return [n[len(TARGET_RESOURCE_PREFIX):] for n in names if n.startswith(TARGET_RESOURCE_PREFIX)] or [""]


def _serve_pins(config: Any) -> list[str]:
    """The targets each Serve deployment in a `serveConfigV2` (YAML; Sovra writes JSON) asks for. A deployment
    the config leaves to its builder's defaults, or a config the guard cannot read, counts as unpinned."""
    import yaml

    try:
        value = yaml.safe_load(config) if isinstance(config, str) else config
    except yaml.YAMLError:
        return [""]
    apps = value.get("applications") if isinstance(value, Mapping) else None
    if not isinstance(apps, list):
        return [""]
    pins: list[str] = []
    for app in apps:
        deployments = (app or {}).get("deployments") if isinstance(app, Mapping) else None
        if not deployments:
            pins.append("")
            continue
        for d in deployments:
            resources = ((d or {}).get("ray_actor_options") or {}).get("resources") if isinstance(d, Mapping) else None
            pins.extend(_targets_in(_resource_names(resources or {})))
    return pins


def _resource_names(resources: Any) -> list[str]:
    # KubeRay's rayStartParams are strings: resources is the JSON that `ray start --resources` takes.
    if isinstance(resources, Mapping):
        return [str(k) for k in resources]
    try:
        value = json.loads(resources) if isinstance(resources, str) and resources else {}
    except ValueError:
        return []
    return [str(k) for k in value] if isinstance(value, dict) else []


def check(resource: Declared, rule: RegionRule) -> str | None:
    """Why `resource` may not land where it says under `rule`, as a sentence naming it, its region and the rule;
    None when it may."""
    label = f"{resource.type} {resource.name!r}"
    if rule.refusals:
        return f"{label}: {rule.why}, which the target fails: {'; '.join(rule.refusals)}"
    if resource.unplaced:
        return f"{label}: cannot be placed: {resource.unplaced} (rule: {rule.why})"
    if resource.computed:
        return (f"{label}: its region is computed at run time, so the guard cannot check it before `up`; "
                f"give it a literal region (rule: {rule.why})")
    if resource.region is not None and normalize_region(resource.region) not in rule.regions:
        return (f"{label}: would land in {resource.region}, outside {_names(rule.regions)} "
                f"(rule: {rule.why}); set it back to {_names(rule.regions)} or re-plan")
    stray = [t for t in resource.pinned if t not in rule.targets]
    if stray:
        where = ", ".join(repr(t) if t else "no target (unpinned)" for t in stray)
        return (f"{label}: a worker group or Serve deployment is pinned to {where}, not to {_names(rule.targets)} "
                f"(rule: {rule.why}); a worker group's rayStartParams.resources, and each serveConfigV2 deployment's "
                f"ray_actor_options.resources, must name {TARGET_RESOURCE_PREFIX}<target>")
    return None


def check_all(resources: Iterable[Declared], rule: RegionRule) -> tuple[str, ...]:
    """Every refusal among `resources`."""
    return tuple(r for r in (check(x, rule) for x in resources) if r is not None)


def _names(values: frozenset[str]) -> str:
    return "[" + ", ".join(sorted(values)) + "]"
