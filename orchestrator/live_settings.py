"""What accounts really do: read the settings that decide where a managed target processes data (Snowflake's
CORTEX_ENABLED_CROSS_REGION, the Bedrock profile in use, the Azure deployment type, Databricks cross-geo
processing) and hold every target to the wider of its catalog zone and its live one.

Vendors change these defaults (Snowflake announced switching unset accounts to cross-region), so a catalog entry
saying "EU" proves nothing about an account. `sovra audit settings` reads them and records what it found under
$SOVRA_HOME; planning then treats a widened target at its real zone, so EU data is never planned onto an account
that may process it anywhere, and `up` re-reads the accounts it is about to route to. An account whose settings
cannot be read fails closed: its targets are held to GLOBAL (unverified) unless the org says `if_unread: catalog`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sovra.core.errors import ProviderError, SovraError
from sovra.core.spec import Target
from sovra.core.spec.org import Endpoint, Org, connection_for, if_unread_for
from sovra.core.spec.zones import GLOBAL, zone_of
from sovra.providers import base
from sovra.providers.base import LiveSetting


@dataclass(frozen=True)
class Finding:
    """One target's live setting next to its catalog zone. `widened` when the account may process outside it."""

    target: str
    provider: str
    catalog_zone: str
    setting: str
    value: str
    zone: str
    fix: str

    @property
    def widened(self) -> bool:
        return self.zone != self.catalog_zone


@dataclass(frozen=True)
class Unread:
    """A target whose settings could not be read (no credentials, unreachable, no permission). Nothing is known of
    where it processes data, so it is held to `zone`: GLOBAL, unless its account says `if_unread: catalog`, when it
    keeps its catalog zone. Either way the report says so rather than calling it verified."""

    target: str
    provider: str
    reason: str
    catalog_zone: str = GLOBAL
    zone: str = GLOBAL

    @property
    def widened(self) -> bool:
        return self.zone != self.catalog_zone


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    unread: tuple[Unread, ...]
    checked_at: str

    @property
    def widened(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.widened)


def checkable(org: Org, targets: Iterable[Target]) -> list[Target]:
    """Targets Sovra can reach an account for: org endpoints, and managed targets an org account serves."""
    return [t for t in targets
            if isinstance(t, Endpoint) or (t.managed and any(a.serves(t) for a in org.accounts))]


def check(org: Org, targets: Iterable[Target],
          read: Callable[[Target, dict], list[LiveSetting]] | None = None) -> Report:
    """Read every checkable target's live settings through its provider adapter."""
    findings: list[Finding] = []
    unread: list[Unread] = []
    for t in checkable(org, targets):
        adapter = base.get(t.provider)
        try:
            settings = (read(t, connection_for(org, t)) if read is not None
                        else adapter.live_settings(t, adapter.connection(connection_for(org, t))))
        except (ProviderError, SovraError, OSError) as exc:
            unread.append(_unread(org, t, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001  (an SDK's own error: reported per target, never fatal to the rest)
            unread.append(_unread(org, t, f"{type(exc).__name__}: {exc}"))
            continue
        findings += [Finding(t.id, t.provider, t.zone, s.setting, s.value, widest(t.zone, s.zone), s.fix)
                     for s in settings]
    return Report(tuple(findings), tuple(unread), dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))


def _unread(org: Org, t: Target, reason: str) -> Unread:
    held = t.zone if if_unread_for(org, t) == "catalog" else GLOBAL
    return Unread(t.id, t.provider, reason, t.zone, held)


def widest(catalog: str, live: str) -> str:
    """The zone a target must be held to: its catalog zone if the live one agrees, else the live one if it is
    a different zone (data may go there), GLOBAL when they differ and neither contains the other."""
    if live == catalog:
        return catalog
    return live if live == GLOBAL else GLOBAL if catalog == GLOBAL else live


def apply(targets: Sequence[Target], findings: Iterable[Finding | Unread]) -> tuple[Target, ...]:
    """Targets with every widened one (an unread one held to GLOBAL included) moved to its live zone, and off its
    country when that is no longer where it processes: the planner and the router then see where data may go."""
    wider: dict[str, str] = {}
    for f in findings:
        if f.widened:
            wider[f.target] = f.zone if f.target not in wider else widest(wider[f.target], f.zone)
    out = []
    for t in targets:
        zone = wider.get(t.id)
        if zone is None:
            out.append(t)
            continue
        keep_country = t.country is not None and zone != GLOBAL and zone_of(t.country) == zone
        out.append(t.model_copy(update={"zone": zone, "country": t.country if keep_country else None}))
    return tuple(out)


def record_path() -> Path:
    from sovra.infra.home import sovra_home

    return sovra_home() / "live-settings.json"


def save(report: Report, path: Path | None = None) -> Path:
    """Record the findings (not credentials: none are read into them) for later plans."""
    path = path or record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"checked_at": report.checked_at, "findings": [asdict(f) for f in report.findings],
                               "unread": [asdict(u) for u in report.unread]}, indent=2))
    os.replace(tmp, path)
    return path


def recorded(path: Path | None = None) -> tuple[Finding | Unread, ...]:
    """The findings and unread targets last recorded by `sovra audit settings` or `up` (none when never checked).

    A record Sovra cannot read is an error, not "nothing found": it may hold a widened account."""
    path = path or record_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as exc:
        raise SovraError(f"{path}: the live-settings record cannot be read ({exc}); run `sovra audit settings` to "
                         "record it again") from None
    return (*(Finding(**f) for f in data.get("findings", [])), *(Unread(**u) for u in data.get("unread", [])))
