"""Data zones and the countries that belong to them.

A zone is a legal processing area (the EU, the US, ...), so each country belongs to exactly one zone.
`GLOBAL` is not a place: it marks offerings that may process anywhere.

A target may also process in several places at once, none of them chosen by the caller: a Databricks Geo (Europe:
the EU, the UK and Switzerland), an Azure geography of two countries. Its zone is then a *span*: the zones and
countries it may use, joined by `+` ("EU+UK+CH", "IE+NL", "US+CA+BR"). Data may be processed at a span only where
it may be processed at every part of it (`policies.residency`).
"""

from __future__ import annotations

from types import MappingProxyType

GLOBAL = "GLOBAL"

_ZONE_COUNTRIES: dict[str, tuple[str, ...]] = {
    "EU": ("AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
           "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"),
    "EEA": ("NO", "IS", "LI"),
    "CH": ("CH",),
    "UK": ("GB",),
    "US": ("US",),
    "CA": ("CA",),
    "LATAM": ("BR", "MX", "CL", "AR", "CO", "PE"),
    "APAC": ("JP", "KR", "SG", "AU", "NZ", "IN", "ID", "MY", "TH", "PH", "HK", "TW", "VN"),
    "CN": ("CN",),
    "MEA": ("AE", "SA", "QA", "IL", "ZA", "BH", "EG", "KE", "NG"),
}

#: zone name -> the countries in it (read-only).
ZONE_COUNTRIES = MappingProxyType(_ZONE_COUNTRIES)
#: country code (ISO 3166-1 alpha-2) -> its zone (read-only).
COUNTRY_ZONE = MappingProxyType({c: z for z, cs in _ZONE_COUNTRIES.items() for c in cs})
#: every zone a residency may name.
ZONES = frozenset((*_ZONE_COUNTRIES, GLOBAL))


def zone_of(country: str) -> str:
    """The zone a known country belongs to."""
    return COUNTRY_ZONE[country]


def normalize_zone(value: str) -> str:
    """Upper-cased zone name, or ValueError naming the valid ones."""
    zone = value.strip().upper()
    if zone not in ZONES:
        raise ValueError(f"unknown zone {value!r}; valid zones: {', '.join(sorted(ZONES))}")
    return zone


#: what joins the parts of a span
SPAN_JOIN = "+"


def parts(zone: str) -> tuple[str, ...]:
    """The places a zone stands for: itself, or each part of a span."""
    return tuple(zone.split(SPAN_JOIN)) if SPAN_JOIN in zone else (zone,)


def normalize_span(value: str) -> str:
    """A target's zone: one zone (GLOBAL included), or a span of zones and countries joined by `+` (e.g.
    "EU+UK+CH"); upper-cased, each part once. ValueError names what a part may be."""
    if SPAN_JOIN not in value:
        return normalize_zone(value)
    out: list[str] = []
    for raw in value.split(SPAN_JOIN):
        part = raw.strip().upper()
        if part == GLOBAL:
            raise ValueError(f"{value!r}: GLOBAL cannot be part of a span (a target that may process anywhere is "
                             "just GLOBAL)")
        if part not in _ZONE_COUNTRIES and part not in COUNTRY_ZONE:
            raise ValueError(f"{value!r}: {raw.strip()!r} is neither a zone ({', '.join(sorted(_ZONE_COUNTRIES))}) "
                             "nor an ISO 3166-1 alpha-2 country code")
        if part not in out:
            out.append(part)
    return SPAN_JOIN.join(out) if len(out) > 1 else normalize_zone(out[0]) if out[0] in ZONES else \
        COUNTRY_ZONE[out[0]]


def normalize_country(value: str) -> str:
    """Upper-cased ISO 3166-1 alpha-2 code, or ValueError saying what is known."""
    country = value.strip().upper()
    if country not in COUNTRY_ZONE:
        hint = " (use GB for the United Kingdom)" if country == "UK" else ""
        raise ValueError(
            f"unknown country {value!r}{hint}; expected an ISO 3166-1 alpha-2 code such as FR, DE, US, JP"
        )
    return country
