"""The inline Pulumi program for one deployment's plan: one guarded component per cloud or Kubernetes placement.

The program also installs the residency guard on the whole stack, so a resource added outside the components
(a hand-edited program) must land in one of the plan's targets' regions, and a resource inside a component in
that component's own target region.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pulumi

from sovra.providers.component import PlacementInput
from sovra.infra.pulumi.components import component_for
from sovra.providers.component_enforce import Enforcer
from sovra.infra.serve_config import RayPlacement, http_model_app
from sovra.core.spec import Deployment, Target
from sovra.policies.plan import Placement


def placement_inputs(placements: Iterable[Placement], deployment: Deployment,
                     targets: Mapping[str, Target] | Iterable[Target],
                     settings: Mapping[str, Mapping[str, Any]] | None = None,
                     service_keys: Mapping[str, str] | None = None) -> list[PlacementInput]:
    """The inputs of every placement that a Pulumi component provisions (Ray and endpoint placements excluded),
    with the component settings given per target id, and the derived key of each Ray-hosting one whose org
    names no `api_key_env` (`service_keys`, by target id)."""
    by_id = targets if isinstance(targets, Mapping) else {t.id: t for t in targets}
    made = [(p, by_id[p.target], component_for(by_id[p.target].provider)) for p in placements]
    made = [(p, t, c) for p, t, c in made if c is not None]
    # Replicas over the placements that run Sovra's model server on Ray: each one's share of the autoscaling ceiling.
    on_ray = sum(p.replicas for p, _, c in made if c.hosts_ray)
    return [_input(p, deployment, t, (settings or {}).get(t.id, {}),
                   http_model_app(RayPlacement(deployment, p, t, on_ray)) if c.hosts_ray else None,
                   (service_keys or {}).get(t.id) if c.hosts_ray else None)
            for p, t, c in made]


def _input(p: Placement, deployment: Deployment, target: Target, settings: Mapping[str, Any],
           app: Mapping[str, Any] | None, service_key: str | None = None) -> PlacementInput:
    return PlacementInput(deployment=deployment.name, target=target, residency=deployment.spec.residency,
                          model=deployment.spec.model.name, instance_type=p.accelerator,
                          instance_count=p.replicas, settings=dict(settings), app=app, service_key=service_key)


def program(placements: Iterable[Placement], deployment: Deployment, targets: Mapping[str, Target] | Iterable[Target],
            settings: Mapping[str, Mapping[str, Any]] | None = None,
            service_keys: Mapping[str, str] | None = None) -> Callable[[], None]:
    """The inline program `pulumi up` runs for `deployment`: its placements' components, guarded, with each
    one's endpoint name, scoring URI and key (secret) exported under `<target id>`, and every endpoint's adapter
    connection settings (non-secret) under `endpoints`, which `up` turns into routing-table backends."""
    inputs = placement_inputs(tuple(placements), deployment, targets, settings, service_keys)

    def run() -> None:
        rules = [i.rule for i in inputs]
        if rules:
            whole = rules[0]
            for r in rules[1:]:
                whole = whole.union(r)
            pulumi.runtime.register_stack_transformation(Enforcer(whole))
        endpoints = {}
        for i in inputs:
            component = component_for(i.target.provider)
            assert component is not None  # placement_inputs kept only placements with a component
            made = component(component_name(i), i)
            pulumi.export(i.target.id, {"endpoint_name": made.endpoint_name, "scoring_uri": made.scoring_uri,
                                        "key": made.key})
            endpoints[i.target.id] = made.connection()
        pulumi.export("endpoints", endpoints)

    return run


def component_name(i: PlacementInput) -> str:
    """The component's Pulumi name: `<deployment>.<target id>` (stable, so `up` twice changes nothing)."""
    return f"{i.deployment}.{i.target.id}"
