"""The one residency rule: may data bound by a residency be processed at a place?

The planner calls it for every target and the router for every send, so it has a fast boolean form
(`allows`) and a form that explains every failed rule (`violations`).
"""

from __future__ import annotations

from sovra.core.place import Place
from sovra.core.spec.common import Residency
from sovra.core.spec.zones import COUNTRY_ZONE, GLOBAL, SPAN_JOIN


def location_allowed(residency: Residency, zone: str, country: str | None) -> bool:
    """The location rule alone (zone or country), without sovereignty. A span (`EU+UK+CH`) is allowed only when
    every place in it is: the vendor, not the caller, picks where in it a request is processed."""
    if zone == GLOBAL:
        return False
    if SPAN_JOIN in zone:
        return all(_part_allowed(residency, part) for part in zone.split(SPAN_JOIN))
    if country is not None and country in residency.countries:
        return True
    return zone in residency.zones


def _part_allowed(residency: Residency, part: str) -> bool:
    """One place of a span: a country (allowed by name or by its zone) or a zone (allowed by name only: a zone
    is wider than any country in it)."""
    if part in COUNTRY_ZONE:
        return part in residency.countries or COUNTRY_ZONE[part] in residency.zones
    return part in residency.zones


def _jurisdiction_ok(residency: Residency, jurisdiction: str) -> bool:
    return jurisdiction in residency.countries or COUNTRY_ZONE.get(jurisdiction) in residency.zones


def allows(residency: Residency, place: Place) -> bool:
    """True when `place` satisfies every rule of `residency`. No allocation: safe on the request path."""
    if residency.unrestricted:
        return True
    if not location_allowed(residency, place.zone, place.country):
        return False
    return not residency.sovereign or _jurisdiction_ok(residency, place.jurisdiction)


def violations(residency: Residency, place: Place) -> tuple[str, ...]:
    """Every rule `place` fails, as sentences a person can act on; empty when allowed."""
    if residency.unrestricted:
        return ()
    reasons: list[str] = []
    if not location_allowed(residency, place.zone, place.country):
        reasons.append(_location_reason(residency, place))
    if residency.sovereign and not _jurisdiction_ok(residency, place.jurisdiction):
        who = f"operator {place.operator} is" if place.operator else "the operator is"
        reasons.append(f"sovereignty: {who} under {place.jurisdiction} jurisdiction, which is not in "
                       f"{_allowed(residency)}")
    return tuple(reasons)


def _location_reason(residency: Residency, place: Place) -> str:
    if place.zone == GLOBAL:
        return f"residency: may process anywhere (GLOBAL), but only {_allowed(residency)} is allowed"
    if SPAN_JOIN in place.zone:
        outside = [p for p in place.zone.split(SPAN_JOIN) if not _part_allowed(residency, p)]
        return (f"residency: may process anywhere in {', '.join(place.zone.split(SPAN_JOIN))} (the vendor picks "
                f"where), and {', '.join(outside)} {'is' if len(outside) == 1 else 'are'} not in "
                f"{_allowed(residency)}")
    parts = []
    if residency.zones:
        parts.append(f"zone {place.zone} is not in [{', '.join(residency.zones)}]")
    if residency.countries:
        if place.country is None:
            parts.append(f"it may process anywhere in {place.zone}, not only in [{', '.join(residency.countries)}]")
        else:
            parts.append(f"country {place.country} is not in [{', '.join(residency.countries)}]")
    return "residency: " + " and ".join(parts)


def _allowed(residency: Residency) -> str:
    return "[" + ", ".join((*residency.zones, *residency.countries)) + "]"
