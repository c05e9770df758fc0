"""`sovra targets`: filter and show the catalog."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from sovra.core.spec import Target
from sovra.core.spec.zones import normalize_country, normalize_zone, parts


def filter_targets(
    targets: Sequence[Target],
    *,
    zone: str | None = None,
    provider: str | None = None,
    country: str | None = None,
    gpu_memory: float | None = None,
) -> list[Target]:
    """Targets matching every given filter; unknown zone/country/provider names raise with the valid ones."""
    from sovra.core.errors import SpecError, SpecIssue
    from sovra import providers

    try:
        z = normalize_zone(zone) if zone else None
        c = normalize_country(country) if country else None
        if provider:
            providers.get(provider)
    except (ValueError, providers.base.ProviderError) as exc:
        raise SpecError([SpecIssue("command line", None, None, "filter", str(exc))]) from None
    return [
        t for t in targets
        if (z is None or z in parts(t.zone))
        and (provider is None or t.provider == provider)
        and (c is None or t.country == c)
        and (gpu_memory is None or any(a.total_memory_gb >= gpu_memory for a in t.accelerators))
    ]


def targets_json(targets: Sequence[Target]) -> list[dict[str, Any]]:
    """Targets as plain JSON (the catalog format)."""
    return [t.model_dump(mode="json", exclude_none=True) for t in targets]


def print_targets(targets: Sequence[Target], console: Console) -> None:
    """One row per target: where it processes, who operates it, what it offers from what price."""
    table = Table(show_edge=False, header_style="bold")
    for col in ("target", "provider", "zone", "country", "operator", "offers", "from $", "egress $/GB"):
        table.add_column(col, justify="right" if "$" in col else "left")
    for t in targets:
        if t.managed:
            offers = ", ".join(m.name for m in t.models)
            cheapest = min(m.usd_per_1k_tokens for m in t.models)
            price = f"{cheapest:.4f}/1k tok"
        else:
            offers = ", ".join(f"{a.sku} ({a.gpus}×{a.gpu_memory_gb:g}GB)" for a in t.accelerators)
            price = f"{min(a.usd_per_hour for a in t.accelerators):.2f}/h"
        table.add_row(t.id, t.provider, t.zone, t.country or "-", f"{t.operator.name} ({t.operator.jurisdiction})",
                      offers, price, f"{t.egress_usd_per_gb:.3f}")
    console.print(table)
    console.print(f"[dim]{len(targets)} target(s)[/]")
