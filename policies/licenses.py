"""Model licences: which allow self-hosting. The pack is data; the org may extend or restrict it."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Mapping

import yaml

from sovra.core.spec.org import OrgPolicy


@dataclass(frozen=True)
class LicensePack:
    """Licence id -> may be self-hosted; plus the org's allow-list, if any."""

    self_hosting: Mapping[str, bool]
    allowed: frozenset[str] | None = None

    def reasons(self, license_id: str, *, self_hosted: bool) -> tuple[str, ...]:
        """Why a model under `license_id` may not be placed on such a target; empty when it may."""
        lic = license_id.lower()
        if self.allowed is not None and lic not in self.allowed:
            return (f"licence: {license_id} is not in the org's allowed licences [{', '.join(sorted(self.allowed))}]",)
        if not self_hosted:
            return ()
        if lic not in self.self_hosting:
            return (f"licence: {license_id} is unknown, so self-hosting is not known to be allowed; "
                    f"declare it in org.yaml policy.licenses",)
        if not self.self_hosting[lic]:
            return (f"licence: {license_id} does not allow self-hosting in production; use a managed offering",)
        return ()


def shipped_pack() -> dict[str, bool]:
    """The licence pack that ships with Sovra (reads package data)."""
    text = (resources.files("sovra.policies") / "packs" / "licenses.yaml").read_text(encoding="utf-8")
    return {row["id"].lower(): bool(row["self_hosting"]) for row in yaml.safe_load(text)["licenses"]}


def license_pack(policy: OrgPolicy, base: Mapping[str, bool] | None = None) -> LicensePack:
    """The shipped pack, extended by the org's licences and narrowed by its allow-list."""
    table = dict(shipped_pack() if base is None else base)
    table.update({rule.id.lower(): rule.self_hosting for rule in policy.licenses})
    allowed = None if policy.allowed_licenses is None else frozenset(x.lower() for x in policy.allowed_licenses)
    return LicensePack(MappingProxyType(table), allowed)
