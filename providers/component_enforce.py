"""The residency guard as a Pulumi resource transformation: it runs on every resource registered under it.

A transformation runs in the program itself, before the resource is sent to the engine, so a program that puts
a resource in another region raises here, during `preview`, before `up` creates anything. It is the in-process
kind (`transformations=` / `register_stack_transformation`), which also runs under `pulumi.runtime.set_mocks`.
"""

from __future__ import annotations

from typing import Any

import pulumi

from sovra.policies.guard import Declared, RegionRule, ResidencyGuardError, check, declared


class Enforcer:
    """Refuses, by raising ResidencyGuardError, any resource that `rule` does not allow.

    It remembers the region of each AWS provider it saw, since AWS resources take their region from it."""

    def __init__(self, rule: RegionRule):
        self.rule = rule
        self._provider_regions: dict[int, tuple[pulumi.Resource, Any]] = {}

    def __call__(self, args: pulumi.ResourceTransformationArgs) -> None:
        resource = self.declared(args)
        refusal = check(resource, self.rule)
        if refusal is not None:
            raise ResidencyGuardError([refusal])

    def declared(self, args: pulumi.ResourceTransformationArgs) -> Declared:
        """What the guard sees of the resource being registered."""
        props = _plain(args.props)
        if args.type_.startswith("pulumi:providers:"):
            # Kept with the provider object itself so the id cannot be reused while we hold it.
            self._provider_regions[id(args.resource)] = (args.resource, props.get("region"))
        provider = _provider_of(args.type_, args.opts)
        region = self._provider_regions.get(id(provider), (None, None))[1] if provider is not None else None
        return declared(args.type_, args.name, props, provider_region=region, has_provider=provider is not None)


def _provider_of(type_: str, opts: pulumi.ResourceOptions | None) -> pulumi.ProviderResource | None:
    """The explicit provider a custom resource will use: its own, or the one its parents hand down."""
    if opts is None:
        return None
    if opts.provider is not None:
        return opts.provider
    providers = opts.providers
    if isinstance(providers, dict):
        found = providers.get(type_.split(":")[0])
        if found is not None:
            return found
    elif providers:
        for p in providers:
            if p.package == type_.split(":")[0]:
                return p
    parent = opts.parent
    return parent.get_provider(type_) if parent is not None else None


def _plain(props: Any) -> dict[str, Any]:
    """The resource's input props (Python names; the guard reads only one-word keys: region, location, spec)."""
    if not isinstance(props, dict):
        return {}
    return dict(props)
