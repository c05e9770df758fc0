"""The request-side residency gate: the tenant's bound, narrowed (never widened) by `X-Sovra-Residency`, and by
the residency of the deployment the request addresses.

A request may carry the header more than once (a gateway appends its own): every one narrows, so the bound is their
intersection; none is ever ignored, and each one that tries to widen the tenant's bound is refused.

Every send of a payload asks `RequestResidency.permits(place)`, which calls the planner's residency function.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from sovra.core.api_errors import InvalidResidency, ResidencyWidening
from sovra.core.spec.common import Residency
from sovra.core.spec.zones import COUNTRY_ZONE, GLOBAL, ZONES
from sovra.core.place import Place
from sovra.policies.residency import allows

#: The most `X-Sovra-Residency` lines one request may carry (each narrows; more is not a gateway chain).
MAX_HEADERS = 16


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
    """The residency one request is bound by: the tenant's ∩ every header's ∩ the addressed deployment's."""

    tenant: Residency
    header: tuple[Residency, ...] = ()  # one per `X-Sovra-Residency` line, all of which must permit
    deployment: Residency | None = None

    def __post_init__(self) -> None:
        # A cache key on every request (the dispatcher's plans, `bound_by`): hash the three models once, not per use.
        object.__setattr__(self, "_hash", hash((self.tenant, self.header, self.deployment)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined]

    @classmethod
    def build(cls, tenant: Residency, header_value: str | Sequence[str] | None) -> RequestResidency:
        """Parse and check the header (or every one of repeated headers) against the tenant's bound: 400 if one is
        unknown, 403 if one tries to widen."""
        if header_value is None or isinstance(header_value, str):
            return _build(tenant, header_value)
        values = tuple(header_value)
        if len(values) > MAX_HEADERS:
            raise InvalidResidency(f"X-Sovra-Residency is repeated {len(values)} times; at most {MAX_HEADERS}")
        return _build(tenant, values[0] if len(values) == 1 else values or None)

    def permits(self, place: Place) -> bool:
        """May this request's payload be processed at `place`? The one check before every send."""
        return (allows(self.tenant, place) and all(allows(h, place) for h in self.header)
                and (self.deployment is None or allows(self.deployment, place)))

    def bound_by(self, deployment: Residency) -> RequestResidency:
        """This bound intersected with a deployment's residency (cached: few distinct pairs)."""
        return _bound(self, deployment)

    def describe(self) -> str:
        """For error messages and the audit trail: every restricting part, e.g. `zones [EU] ∩ countries [FR]`."""
        return _describe(self)


@functools.lru_cache(maxsize=4096)  # written into every audit record: the same few bounds, over and over
def _describe(request: RequestResidency) -> str:
    parts = [r.describe() for r in (request.tenant, *request.header, request.deployment)
             if r is not None and not r.unrestricted]
    return " ∩ ".join(dict.fromkeys(parts)) or "unrestricted"


@functools.lru_cache(maxsize=4096)
def _bound(request: RequestResidency, deployment: Residency) -> RequestResidency:
    return RequestResidency(request.tenant, request.header, deployment)


# A pure function of two immutable values, asked on every request with the same few (tenant, header) pairs: cached,
# so a request costs a lookup instead of building two Residency models. Refusals raise and are never cached.
@functools.lru_cache(maxsize=1024)
def _build(tenant: Residency, header_value: str | tuple[str, ...] | None) -> RequestResidency:
    if header_value is None:
        return RequestResidency(tenant)
    values = (header_value,) if isinstance(header_value, str) else header_value
    return RequestResidency(tenant, tuple(dict.fromkeys(_narrowing(tenant, v) for v in values)))


def _narrowing(tenant: Residency, value: str) -> Residency:
    """One header's residency, checked to lie inside the tenant's bound (403 naming what is outside it)."""
    header = parse_header(value)
    wider = _within(tenant, header)
    if wider:
        raise ResidencyWidening(
            f"X-Sovra-Residency may only narrow your tenant's residency ({tenant.describe()}); "
            f"{', '.join(wider)} is outside it")
    return Residency(zones=header.zones, countries=header.countries, sovereign=tenant.sovereign)
