"""Residency drift: after a refresh, the stack's state says where each resource really is. A resource moved or
re-created outside Sovra in a region its placement does not allow is reported with the guard's own sentence.

Pure: it reads Pulumi's exported deployment (`stack.export_stack().deployment`, the documented checkpoint format:
`resources` with `urn`, `type`, `custom`, `inputs`, `outputs`, `provider` as `<provider urn>::<id>`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sovra.policies.guard import RegionRule, check, declared


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def residency_drift(deployment: Mapping[str, Any], rule: RegionRule) -> tuple[str, ...]:
    """Every resource of the refreshed state that now lands outside `rule`, as the guard words it. Live values
    (`outputs`) win over what the program declared (`inputs`): a refresh reads them from the cloud."""
    resources = [r for r in deployment.get("resources") or () if r.get("custom", True)]
    providers = {r["urn"]: {**(r.get("inputs") or {}), **(r.get("outputs") or {})}
                 for r in resources if str(r.get("type", "")).startswith("pulumi:providers:")}
    refusals = []
    for r in resources:
        type_ = str(r.get("type", ""))
        if type_ == "pulumi:pulumi:Stack":
            continue
        ref = r.get("provider") or ""
        provider = providers.get(ref.rsplit("::", 1)[0]) if ref else None
        found = declared(type_, _name(r["urn"]), {**(r.get("inputs") or {}), **(r.get("outputs") or {})},
                         provider_region=(provider or {}).get("region"), has_provider=provider is not None)
        why = check(found, rule)
        if why is not None:
            refusals.append(why)
    return tuple(refusals)
