"""Locales as BCP 47 tags (the subset a deployment's variants need): `fr`, `fr-CA`, `de-CH`, `zh-Hant-TW`, `es-419`.

One spelling per tag (language lower case, script title case, region upper case), so `FR-ca` in a header and
`fr-CA` in a deployment are the same variant; `lookup` is RFC 4647's: drop the last subtag until one matches.
"""

from __future__ import annotations

import re

_TAG = re.compile(r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z]{4}))?(?:[-_]([A-Za-z]{2}|[0-9]{3}))?$")


def normalize_locale(value: str) -> str:
    """The canonical spelling of a tag, or ValueError saying what a tag looks like."""
    m = _TAG.match(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{value!r} is not a BCP 47 locale such as fr, fr-CA, de-CH, ar, zh-Hant or es-419 "
                         "(language, then optional script and region)")
    language, script, region = m.groups()
    return "-".join(p for p in (language.lower(), script.title() if script else None,
                                region.upper() if region else None) if p)


def parse_locale(value: str) -> str | None:
    """`normalize_locale` for text from a request: None instead of an error (the caller is told it is malformed)."""
    if len(value) > 40:  # longer than any tag of this form: refused whole, never cut to something that parses
        return None
    try:
        return normalize_locale(value)
    except ValueError:
        return None


def lookup(tag: str, available: dict[str, str]) -> tuple[str, str] | None:
    """The (locale, value) of `available` that best matches `tag`: itself, else its parents (`fr-CA` -> `fr`)."""
    parts = tag.split("-")
    while parts:
        key = "-".join(parts)
        if key in available:
            return key, available[key]
        parts.pop()
    return None


def language(tag: str) -> str:
    """The language subtag (`fr-CA` -> `fr`)."""
    return tag.split("-", 1)[0]
