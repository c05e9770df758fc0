"""Sovra's residency rule as a Pulumi CrossGuard policy pack, for teams that run Pulumi themselves.

`pulumi preview --policy-pack <this directory> --policy-pack-config config.json` refuses any resource outside the
allowed regions. The rule is `policies.guard.check`, the same function Sovra's own programs run.
"""
