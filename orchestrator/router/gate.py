"""The request-side residency gate: the tenant's bound, narrowed (never widened) by `X-Sovra-Residency`, and by
the residency of the deployment the request addresses.

Every send of a payload asks `RequestResidency.permits(place)`, which calls the planner's residency function.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from orchestrator.router.errors import InvalidResidency, ResidencyWidening
from orchestrator.spec.common import Residency
from orchestrator.spec.zones import COUNTRY_ZONE, GLOBAL, ZONES
from policies.residency import Place, allows


def parse_header(value: str) -> Residency:
    """`EU`, `FR,DE` or `EU,CH` -> a Residency; unknown names are a 400 that lists what is valid."""
    zones: list[str] = []
    countries: list[str] = []
    for raw in value.split(","):
        token = raw.strip().upper()
        if not token:
            continue
        if token in ZONES:
            zones.append(token)
        elif token in COUNTRY_ZONE:
            countries.append(token)
        else:
            raise InvalidResidency(
                f"X-Sovra-Residency: unknown zone or country {raw.strip()!r}; use zones "
                f"({', '.join(sorted(ZONES))}) or ISO country codes such as FR, DE")
    if not zones and not countries:
        raise InvalidResidency("X-Sovra-Residency is empty; give zones or countries, e.g. 'EU' or 'FR,DE'")
    return Residency(zones=tuple(zones), countries=tuple(countries))


def _within(bound: Residency, narrow: Residency) -> list[str]:
    """Names in `narrow` that `bound` does not allow (empty when `narrow` only narrows)."""
    if bound.unrestricted:
        return []
    wider = [z for z in narrow.zones if z == GLOBAL or z not in bound.zones]
    wider += [c for c in narrow.countries if c not in bound.countries and COUNTRY_ZONE[c] not in bound.zones]
    return wider


@dataclass(frozen=True)
class RequestResidency:
    """The residency one request is bound by: the tenant's ∩ the header's ∩ the addressed deployment's."""

    tenant: Residency
    header: Residency | None = None
    deployment: Residency | None = None

    def __post_init__(self) -> None:
        # A cache key on every request (the dispatcher's plans, `bound_by`): hash the three models once, not per use.
        object.__setattr__(self, "_hash", hash((self.tenant, self.header, self.deployment)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined]

    @classmethod
    def build(cls, tenant: Residency, header_value: str | None) -> RequestResidency:
        """Parse and check the header against the tenant's bound: 400 if unknown, 403 if it tries to widen."""
        return _build(tenant, header_value)

    def permits(self, place: Place) -> bool:
        """May this request's payload be processed at `place`? The one check before every send."""
        return (allows(self.tenant, place) and (self.header is None or allows(self.header, place))
                and (self.deployment is None or allows(self.deployment, place)))

    def bound_by(self, deployment: Residency) -> RequestResidency:
        """This bound intersected with a deployment's residency (cached: few distinct pairs)."""
        return _bound(self, deployment)

    def describe(self) -> str:
        """For error messages and the audit trail: every restricting part, e.g. `zones [EU] ∩ countries [FR]`."""
        return _describe(self)


@functools.lru_cache(maxsize=4096)  # written into every audit record: the same few bounds, over and over
def _describe(request: RequestResidency) -> str:
    parts = [r.describe() for r in (request.tenant, request.header, request.deployment)
             if r is not None and not r.unrestricted]
    return " ∩ ".join(dict.fromkeys(parts)) or "unrestricted"


@functools.lru_cache(maxsize=4096)
def _bound(request: RequestResidency, deployment: Residency) -> RequestResidency:
    return RequestResidency(request.tenant, request.header, deployment)


# A pure function of two immutable values, asked on every request with the same few (tenant, header) pairs: cached,
# so a request costs a lookup instead of building two Residency models. Refusals raise and are never cached.
@functools.lru_cache(maxsize=1024)
def _build(tenant: Residency, header_value: str | None) -> RequestResidency:
    if header_value is None:
        return RequestResidency(tenant)
    header = parse_header(header_value)
    wider = _within(tenant, header)
    if wider:
        raise ResidencyWidening(
            f"X-Sovra-Residency may only narrow your tenant's residency ({tenant.describe()}); "
            f"{', '.join(wider)} is outside it")
    return RequestResidency(tenant, Residency(zones=header.zones, countries=header.countries,
                                              sovereign=tenant.sovereign))
