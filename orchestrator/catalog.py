"""Load target catalogs (the shipped one or user files) and the org file, via the provider adapters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from sovra.core.errors import ProviderError, SpecError, SpecIssue
from sovra.core.spec import Catalog, Org, Target
from sovra.core.spec.loader import Document, load, parse_documents, validate
from sovra.core.spec.zones import COUNTRY_ZONE


def _prepare_targets(targets: Any, doc: Document, loc: tuple, defaults: dict[str, Any]) -> list[SpecIssue]:
    """Fill `zone` from the provider's own scope label (via its adapter) and file-level defaults."""
    from sovra import providers

    issues: list[SpecIssue] = []
    if not isinstance(targets, list):
        return issues
    for i, raw in enumerate(targets):
        if not isinstance(raw, dict):
            continue
        for key, value in defaults.items():
            if value is not None:
                raw.setdefault(key, value)
        name = raw.get("provider")
        if not isinstance(name, str):
            continue
        try:
            adapter = providers.get(name)
        except ProviderError as exc:
            issues.append(doc.issue((*loc, i, "provider"), str(exc)))
            continue
        if "zone" in raw:
            continue
        country = raw.get("country")
        country = country.upper() if isinstance(country, str) else None
        if isinstance(raw.get("scope"), str):
            try:
                known = country if country in COUNTRY_ZONE else None
                raw["zone"] = adapter.zone_for_target(raw["scope"], known, str(raw.get("region") or ""))
            except ValueError as exc:
                issues.append(doc.issue((*loc, i, "scope"), str(exc)))
                continue
            if known is not None and raw["zone"] != COUNTRY_ZONE[known]:
                raw.pop("country", None)  # a span or GLOBAL: the scope says it processes beyond one country
        elif country in COUNTRY_ZONE:
            raw["zone"] = COUNTRY_ZONE[country]
    return issues


def _prepare_catalog(data: Any, doc: Document) -> list[SpecIssue]:
    if not isinstance(data, dict):
        return []
    defaults = {"prices_as_of": data.get("prices_as_of"), "source": data.get("source")}
    return _prepare_targets(data.get("targets"), doc, ("targets",), defaults)


def _prepare_org(data: Any, doc: Document) -> list[SpecIssue]:
    if not isinstance(data, dict):
        return []
    return [*_prepare_targets(data.get("clusters"), doc, ("clusters",), {}), *_connections(data, doc)]


def _connections(data: dict[str, Any], doc: Document) -> list[SpecIssue]:
    """Each endpoint's and account's `connection:` fits its provider's adapter (the spec models cannot ask the
    providers: they sit below them); an unknown provider is reported once, with a did-you-mean."""
    from sovra import providers

    issues: list[SpecIssue] = []
    for key in ("endpoints", "accounts"):
        entries = data.get(key)
        for i, raw in enumerate(entries if isinstance(entries, list) else ()):
            if not isinstance(raw, dict) or not isinstance(raw.get("provider"), str):
                continue
            try:
                adapter = providers.get(raw["provider"])
            except ProviderError as exc:
                issues.append(doc.issue((key, i, "provider"), str(exc)))
                continue
            connection = raw.get("connection")
            if connection is not None and not isinstance(connection, dict):
                continue  # the model reports the wrong type
            try:
                adapter.connection(connection or {})
            except ProviderError as exc:
                issues.append(doc.issue((key, i, "connection"), str(exc)))
    return issues


def _one_local_router(org: Org, path: str | Path) -> None:
    """Address-less clusters of a Serve-deployed provider are all the embedded local Ray: one router, one set of
    its settings (clusters sharing an address are checked by the model itself)."""
    from sovra.core.spec.org import check_one_router
    from sovra.providers.base import serve_deployed

    local = [c for c in org.clusters if not c.address and serve_deployed(c.provider)]
    try:
        check_one_router("the local Ray", local)
    except ValueError as exc:
        raise SpecError([SpecIssue(str(path), None, None, "clusters", str(exc))]) from None


def load_catalog(path: str | Path) -> Catalog:
    """One catalog file, validated."""
    return load(Catalog, path, prepare=_prepare_catalog)


def load_org(path: str | Path | None) -> Org:
    """The org file, or an empty org (no credits, clusters or tenants) when none is given."""
    if path is None:
        return Org()
    org = load(Org, path, prepare=_prepare_org)
    _one_local_router(org, path)
    return org


def shipped_catalog_files() -> list[Path]:
    """The catalog files that ship inside the `providers` package: each vendor's folder holds its own."""
    root = Path(str(resources.files("sovra.providers")))
    return sorted(root.glob("*/catalogs/*.yaml"), key=lambda p: p.name)


def load_targets(catalog_files: Sequence[str | Path] | None, org: Org) -> tuple[Target, ...]:
    """All targets a plan may use: the catalog files (shipped ones by default) plus the org's clusters.

    Errors from every file are collected and raised together.
    """
    files = list(catalog_files) if catalog_files else shipped_catalog_files()
    targets: list[Target] = []
    issues: list[SpecIssue] = []
    for path in files:
        try:
            targets.extend(load_catalog(path).targets)
        except SpecError as exc:
            issues.extend(exc.issues)
    if issues:
        raise SpecError(issues)
    targets.extend(org.clusters)
    targets.extend(org.endpoints)
    _check_unique(targets, files)
    return tuple(sorted(targets, key=lambda t: t.id))


def _check_unique(targets: Iterable[Target], files: Sequence[str | Path]) -> None:
    counts: dict[str, int] = {}
    for t in targets:
        counts[t.id] = counts.get(t.id, 0) + 1
    dupes = sorted(tid for tid, n in counts.items() if n > 1)
    if dupes:
        raise SpecError([SpecIssue(", ".join(map(str, files)), None, None, "targets",
                                   f"target id defined twice (catalog, org clusters and endpoints must not clash): {', '.join(dupes)}")])


def parse_catalog_text(text: str, name: str = "<catalog>") -> Catalog:
    """Validate catalog YAML given as text (used by tests and tools)."""
    (doc,) = parse_documents(text, name)
    return validate(Catalog, doc, prepare=_prepare_catalog)
