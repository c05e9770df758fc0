"""Data zones and the countries that belong to them.

A zone is a legal processing area (the EU, the US, ...), so each country belongs to exactly one zone.
`GLOBAL` is not a place: it marks offerings that may process anywhere.
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


def normalize_country(value: str) -> str:
    """Upper-cased ISO 3166-1 alpha-2 code, or ValueError saying what is known."""
    country = value.strip().upper()
    if country not in COUNTRY_ZONE:
        hint = " (use GB for the United Kingdom)" if country == "UK" else ""
        raise ValueError(
            f"unknown country {value!r}{hint}; expected an ISO 3166-1 alpha-2 code such as FR, DE, US, JP"
        )
    return country
