"""Entry point the Pulumi CLI runs for this policy pack (`runtime: python` in PulumiPolicy.yaml)."""

from pulumi_policy import PolicyPack

from sovra.policies.crossguard.residency_policy import POLICY

PolicyPack(name="sovra-residency", policies=[POLICY])
