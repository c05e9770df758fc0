"""Which locale's variant answers a request: the caller's explicit locale, else the prompt's detected language; the
variant only when it has a backend inside the request's bound, else the deployment itself (never a variant outside
the bound: the bound is applied to the variant's own plan like to any route's).

Explicit first (`X-Sovra-Locale`, then the body's `metadata.locale`): a caller that knows its user's locale should
not depend on detection. Detection reads only the last user turn (bounded), on this replica's CPU; nothing of the
text is kept, logged or recorded (the trail records the locale and where it came from).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sovra.core.api_errors import BadRequest
from sovra.core.backends import Backend, Route
from sovra.core.spec.locales import language, lookup, parse_locale

log = logging.getLogger("sovra.router")

#: Detection reads at most this many characters of the prompt: as accurate as 200 or the whole on the shipped set
#: (60 to 200 all miss the same one prompt of 350), and the time grows with it (~45 µs here; py3langid loops per byte).
DETECT_CHARS = 100
#: Below this many characters detection is unreliable (measured: bench/langdetect.py): the deployment serves.
MIN_DETECT_CHARS = 20


@dataclass(frozen=True, slots=True)
class Choice:
    """The route a request goes to and why: `locale` and its `source` (`header`, `metadata`, `detected`), and
    `variant` (the variant's deployment) when one serves."""

    route: Route
    locale: str | None = None
    source: str | None = None
    variant: str | None = None


class Detector:
    """The prompt's language (ISO 639-1) or None when unsure. py3langid over all its 97 languages (chosen over lingua,
    fastText and langdetect in bench/results/langdetect.md: ≥ 96 % per language on prompts of 20+ characters,
    tens of µs, a 4.5 MB wheel holding its model, no download). Below `min_probability` (its normalised score; 0.3
    keeps every right answer of the shipped set but the one it gets wrong) it abstains and the deployment serves.
    Loaded once per replica; `classify` only reads the model, so one object serves every request."""

    def __init__(self, min_probability: float = 0.3):
        self.min_probability = min_probability
        self._identify: Callable[[str], tuple[str, float]] | None = None
        self._lock = threading.Lock()
        self.available = True

    def load(self) -> bool:
        """Load the model (once; at replica start when a deployment has variants). False when not installed."""
        with self._lock:
            if self._identify is None and self.available:
                try:
                    from py3langid.langid import MODEL_FILE, LanguageIdentifier
                except ImportError:
                    self.available = False
                    log.error("a deployment declares locale variants but py3langid is not installed where the "
                              "router runs (it comes with sovra[ray]); only explicit locales select a variant")
                    return False
                self._identify = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True).classify
        return self._identify is not None

    def detect(self, text: str) -> str | None:
        if len(text) < MIN_DETECT_CHARS or (self._identify is None and not self.load()):
            return None
        assert self._identify is not None
        lang, probability = self._identify(text[:DETECT_CHARS])
        return lang if probability >= self.min_probability else None


class Locales:
    """Picks the variant of a route for one request (`choose`)."""

    def __init__(self, detector: Detector | None = None):
        self.detector = detector if detector is not None else Detector()

    def choose(self, route: Route, headers: Mapping[str, str], body: Mapping[str, Any],
               reachable: Callable[[Route], bool], routes: Mapping[str, Route]) -> Choice:
        """The variant of `route` for this request when one matches its locale and `reachable` says it has a
        backend inside the request's bound; else `route` itself. Only routes with variants get here."""
        locale, source = self.locale_of(headers, body)
        if locale is None:
            return Choice(route)
        name = _match(locale, source, route.variants)
        variant = routes.get(name) if name is not None else None
        if variant is None or variant.variant_of != route.name or not reachable(variant):
            return Choice(route, locale, source)
        return Choice(variant, locale, source, variant.name)

    def locale_of(self, headers: Mapping[str, str], body: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """(locale, where it came from); a malformed explicit locale is the caller's error (400)."""
        raw = headers.get("x-sovra-locale")
        if raw is not None:
            return _explicit(raw, "X-Sovra-Locale"), "header"
        meta = body.get("metadata")
        if isinstance(meta, Mapping) and meta.get("locale") is not None:
            value = meta["locale"]
            if not isinstance(value, str):
                raise BadRequest("metadata.locale: must be a string such as 'fr' or 'fr-CA'")
            return _explicit(value, "metadata.locale"), "metadata"
        text = prompt_text(body)
        found = self.detector.detect(text) if text else None
        return (found, "detected") if found else (None, None)


def _explicit(value: str, where: str) -> str:
    locale = parse_locale(value)
    if locale is None:
        raise BadRequest(f"{where}: {value[:40]!r} is not a BCP 47 locale; use e.g. fr, fr-CA, ar, de-CH")
    return locale


def _match(locale: str, source: str | None, variants: Mapping[str, str]) -> str | None:
    """The variant for `locale`: itself or a parent (`fr-CA` -> `fr`); a detected language (no region) also takes
    the one variant of that language when there is exactly one (`fr` -> `fr-CA`)."""
    hit = lookup(locale, dict(variants))
    if hit is not None:
        return hit[1]
    if source == "detected":
        same = [name for loc, name in variants.items() if language(loc) == locale]
        if len(same) == 1:
            return same[0]
    return None


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text whose language decides: the last user turn of a chat (text parts only), or an embedding's first
    input; at most `DETECT_CHARS` characters."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, Mapping) and message.get("role") == "user":
                return _text(message.get("content"))[:DETECT_CHARS]
        return ""
    value = body.get("input")
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = value[0]
    return value[:DETECT_CHARS] if isinstance(value, str) else ""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content
                        if isinstance(p, Mapping) and isinstance(p.get("text"), str))[:DETECT_CHARS]
    return ""


def has_variants(backends: tuple[Backend, ...]) -> bool:
    """Whether a routing table holds any locale variant (the detector is loaded at start only then)."""
    return any(b.variant_of is not None for b in backends)
