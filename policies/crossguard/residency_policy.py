"""The CrossGuard policy: every resource's region/location must be one the pack's config allows.

Config (`--policy-pack-config`): `{"sovra-residency": {"allowedRegions": ["eu-west-3", "francecentral"],
"allowedTargets": ["onprem/paris"], "rule": "deployment support-assistant: zones [EU]"}}`. `allowedTargets`
names the Sovra targets Ray worker groups may be pinned to; `rule` is quoted in every violation.
"""

from __future__ import annotations

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from sovra.policies.crossguard.rule import violation

NAME = "sovra-residency"

CONFIG_SCHEMA = PolicyConfigSchema(
    properties={
        "allowedRegions": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                           "description": "Regions/locations resources may be created in (the targets' regions)."},
        "allowedTargets": {"type": "array", "items": {"type": "string"},
                           "description": "Sovra target ids Ray worker groups may be pinned to."},
        "rule": {"type": "string", "description": "Whose rule this is, quoted in violations."},
    },
    required=["allowedRegions"],
)


def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Report the guard's refusal of this resource, if any (the rule itself: `policies.crossguard.rule`)."""
    provider = args.provider
    refusal = violation(args.resource_type, args.name, dict(args.props or {}),
                        (provider.props or {}) if provider is not None else None, args.get_config())
    if refusal is not None:
        report_violation(refusal, None)


POLICY = ResourceValidationPolicy(
    name=NAME,
    description="Resources must be created in the regions (and Ray worker groups pinned to the targets) that "
                "the deployment's Sovra placement allows.",
    validate=validate,
    enforcement_level=EnforcementLevel.MANDATORY,
    config_schema=CONFIG_SCHEMA,
)
