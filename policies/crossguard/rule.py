"""The CrossGuard pack's check, free of `pulumi_policy` (which lives only in the pack's own environment): one
resource as Pulumi hands it to a validation, and the pack's config -> the guard's refusal, or None."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sovra.policies.guard import RegionRule, check, declared


def rule_from_config(config: Mapping[str, Any]) -> RegionRule:
    """The guard's rule from the pack's config."""
    return RegionRule.allowed(config.get("allowedRegions") or (), config.get("allowedTargets") or (),
                              why=config.get("rule") or "the sovra-residency policy's allowedRegions")


def violation(resource_type: str, name: str, props: Mapping[str, Any], provider_props: Mapping[str, Any] | None,
              config: Mapping[str, Any]) -> str | None:
    """Why this resource breaks the pack's residency rule (None when it does not); `provider_props` is None when the
    resource has no explicit provider."""
    found = declared(resource_type, name, dict(props or {}),
                     provider_region=(provider_props or {}).get("region") if provider_props is not None else None,
                     has_provider=provider_props is not None)
    return check(found, rule_from_config(config))
