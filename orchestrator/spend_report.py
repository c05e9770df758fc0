"""`sovra spend`: what the router's ledger says was spent, and whether the org's credits will be used in time.

Why a module of its own: the numbers (period, totals, credit forecasts, budget use) are small pure functions over
what the store returns, so tests can check them by hand without a terminal, and each output format (table, JSON,
CSV, HTML) is one function over the same `Report`, so the formats can never disagree. The command in `cli.py` only
parses options, opens the store and picks a renderer.

Money is kept in micro-USD (integers, as the ledger stores it) and shown in USD. The forecast is deliberately simple:
a credit's cloud burns at this month's rate (burned so far / days elapsed × days in the month) from now to the
credit's expiry; what that does not reach by then expires unused.
"""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sovra.core.errors import StoreUnavailable
from sovra.core.spec.org import Org
from sovra.policies.costs import monthly_credit_caps, months_left

DEFAULT_BY = ("tenant", "deployment", "target", "cloud")
MICRO = 1_000_000
_SUMS = ("entries", "tokens_in", "tokens_out", "usd_list_micros", "credit_micros", "usd_net_micros")


# -- the numbers -----------------------------------------------------------------------------------------------------

def period(since: str | None, until: str | None, now: dt.datetime) -> tuple[str, str]:
    """(since, until) as ISO UTC bounds for `since <= time < until`: the given days (`until` inclusive), or the
    current calendar month (UTC) up to now. ValueError naming the option for a bad date."""
    def day(option: str, value: str) -> dt.date:
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{option} {value!r} is not a date; expected YYYY-MM-DD, e.g. 2026-11-01") from None

    start = day("--since", since) if since else now.date().replace(day=1)
    lo = f"{start.isoformat()}T00:00:00"
    hi = f"{(day('--until', until) + dt.timedelta(days=1)).isoformat()}T00:00:00" if until else \
        now.astimezone(dt.UTC).isoformat(timespec="microseconds")
    if hi <= lo:
        raise ValueError(f"the period is empty: --until is before --since ({lo[:10]})")
    return lo, hi


def parse_by(value: str | None) -> tuple[str, ...]:
    """`tenant,cloud` -> ("tenant", "cloud"); the default groups when none is given."""
    if not value:
        return DEFAULT_BY
    return tuple(p.strip() for p in value.split(",") if p.strip())


def with_net(row: Mapping[str, Any]) -> dict[str, Any]:
    """A summary row plus what was paid in money: list price less what credits covered."""
    return {**row, "usd_net_micros": int(row["usd_list_micros"]) - int(row["credit_micros"])}


def totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {k: sum(int(r[k]) for r in rows) for k in _SUMS}


@dataclass(frozen=True)
class CreditForecast:
    cloud: str
    name: str | None
    balance_usd: float
    expires: str
    cap_usd: float  # this month's cap: the balance spread over the months left (policies.costs)
    burned_usd: float  # this month so far (this credit's share of its cloud's `credit=<cloud>` counter)
    monthly_rate_usd: float  # burned / days elapsed × days in the month
    months_left: int
    projected_usd: float  # monthly rate × months left, at most the balance
    used_by_expiry: bool
    expires_unused_usd: float  # balance − monthly rate × months left, floored at 0


def forecast_credits(org: Org, counters: Mapping[tuple[str, str, str], int], now: dt.datetime) -> list[CreditForecast]:
    """Each credit in org.yaml against this month's burn of its cloud. Two credits on one cloud share the cloud's
    counter in proportion to their caps."""
    today = now.date()
    month = today.strftime("%Y-%m")
    days_in_month = calendar.monthrange(today.year, today.month)[1]
    elapsed = max(today.day, 1)  # today counted whole: a rate, not a guess, from the first day on
    cloud_caps = monthly_credit_caps(org.credits, today)
    out = []
    for c in org.credits:
        own_cap = monthly_credit_caps([c], today).get(c.cloud, 0.0)
        share = own_cap / cloud_caps[c.cloud] if cloud_caps.get(c.cloud) else 0.0
        burned = counters.get((f"credit={c.cloud}", "usd_micros", month), 0) / MICRO * share
        rate = min(burned / elapsed * days_in_month, own_cap)  # the router never lets it pay more than its cap
        left = months_left(c.expires, today)
        reach = rate * left
        out.append(CreditForecast(
            cloud=c.cloud, name=c.name, balance_usd=float(c.usd), expires=c.expires.isoformat(), cap_usd=own_cap,
            burned_usd=burned, monthly_rate_usd=rate, months_left=left, projected_usd=min(reach, float(c.usd)),
            used_by_expiry=left > 0 and reach >= c.usd, expires_unused_usd=max(0.0, c.usd - reach)))
    return out


@dataclass(frozen=True)
class BudgetUse:
    scope: str
    used_usd: float
    limit_usd: float

    @property
    def percent(self) -> float:
        return 100.0 * self.used_usd / self.limit_usd if self.limit_usd else 0.0


def budget_use(org: Org, month_rows: Sequence[Mapping[str, Any]]) -> list[BudgetUse]:
    """USD at list price spent this month (the ledger, by tenant and deployment) against each monthly USD budget.
    Not the budget's counter: that also holds what running routers have reserved and not yet used."""
    return [BudgetUse(b.scope, sum(r["usd_list_micros"] for r in month_rows
                                   if b.tenant in (None, r["tenant"]) and b.deployment in (None, r["deployment"]))
                      / MICRO, float(b.usd_per_month))
            for b in org.budgets if b.usd_per_month is not None]


@dataclass
class Report:
    since: str
    until: str
    by: tuple[str, ...]
    rows: list[dict[str, Any]]
    totals: dict[str, int]
    credits: list[CreditForecast]
    budgets: list[BudgetUse]
    now: dt.datetime
    daily: list[dict[str, Any]] = field(default_factory=list)  # by day and tenant, for the HTML chart

    def to_json(self) -> dict[str, Any]:
        return {"period": {"since": self.since, "until": self.until}, "by": list(self.by), "rows": self.rows,
                "totals": self.totals, "credits": [asdict(c) for c in self.credits],
                "budgets": [{**asdict(b), "percent": round(b.percent, 2)} for b in self.budgets]}


def open_store(org: Org, environ: Mapping[str, str] | None = None):
    """The org's spend store, read-only in spirit: a missing SQLite file is reported, not created."""
    from sovra.infra.home import sovra_home
    from sovra.infra.ledger.store import SpendStore

    env = os.environ if environ is None else environ
    s = org.spend
    if s.store == "postgres":
        dsn = env.get(s.dsn_env)
        if not dsn:
            raise StoreUnavailable(f"the spend store is PostgreSQL but ${s.dsn_env} is not set here: export it "
                                   "with the connection URI the router uses")
        return SpendStore.postgres(dsn)
    path = Path(s.path) if s.path else sovra_home() / "spend" / "ledger.db"
    if not path.exists():
        raise StoreUnavailable(f"there is no spend ledger at {path} yet: no router has recorded spend there (set "
                               "SOVRA_HOME or org.yaml's spend.path to where the router runs)")
    return SpendStore.sqlite(path)


def build(org: Org, store, since: str, until: str, by: Sequence[str], now: dt.datetime, daily: bool = False) -> Report:
    """Everything `sovra spend` shows, read from `store` in a few queries."""
    rows = [with_net(r) for r in store.summary(since, until, list(by))]
    counters = {(s, m, w): u for s, m, w, u in store.counters("")}
    days = store.summary(since, until, ["day", "tenant"]) if daily else []
    month_start = now.strftime("%Y-%m")
    month = store.summary(month_start, month_start + "-99", ["tenant", "deployment"]) if org.budgets else []
    return Report(since, until, tuple(by), rows, totals(rows), forecast_credits(org, counters, now),
                  budget_use(org, month), now, days)


def report(org: Org, since: str | None, until: str | None, by: str | None, now: dt.datetime,
           daily: bool = False, environ: Mapping[str, str] | None = None) -> Report:
    """Open the org's store, read the report, close it. A store failure never carries the DSN's password."""
    env = os.environ if environ is None else environ
    lo, hi = period(since, until, now)
    groups = parse_by(by)
    try:
        store = open_store(org, env)
        try:
            return build(org, store, lo, hi, groups, now, daily)
        finally:
            store.close()
    except StoreUnavailable as exc:
        raise StoreUnavailable(_scrub(str(exc), env.get(org.spend.dsn_env, ""))) from None


def _scrub(message: str, dsn: str) -> str:
    """`message` without the password of `dsn` (URI or key=value form), however the driver quoted it."""
    import re
    from urllib.parse import unquote, urlsplit

    secrets: set[str] = set()
    try:
        if urlsplit(dsn).password:
            secrets |= {urlsplit(dsn).password, unquote(urlsplit(dsn).password)}
    except ValueError:
        pass
    secrets |= set(re.findall(r"password\s*=\s*(\S+)", dsn))
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


# -- the formats -----------------------------------------------------------------------------------------------------

def _usd(micros: float) -> str:
    return f"{micros / MICRO:,.2f}"


def render_table(report: Report, console) -> None:
    from rich.table import Table

    t = Table(*report.by, "entries", "tokens in", "tokens out", "USD list", "credits", "USD net",
              title=f"Spend {report.since[:10]} to {report.until[:19]} (UTC)")
    for col in t.columns[len(report.by):]:
        col.justify = "right"
    for r in report.rows:
        t.add_row(*(str(r[b]) for b in report.by), *_nums(r))
    tot = report.totals
    t.add_section()
    t.add_row(*(["total"] + [""] * (len(report.by) - 1) if report.by else []), *_nums(tot), style="bold")
    console.print(t)
    if report.credits:
        c = Table("cloud", "balance", "expires", "cap this month", "burned this month", "rate / month",
                  "used by expiry", "expires unused", title="Credits")
        for col in c.columns[1:]:
            col.justify = "right"
        for f in report.credits:
            c.add_row(f.cloud + (f" ({f.name})" if f.name else ""), f"{f.balance_usd:,.2f}", f.expires,
                      f"{f.cap_usd:,.2f}", f"{f.burned_usd:,.2f}", f"{f.monthly_rate_usd:,.2f}",
                      "yes" if f.used_by_expiry else "[yellow]no[/]", f"{f.expires_unused_usd:,.2f}")
        console.print(c)
    if report.budgets:
        b = Table("budget", "USD this month", "limit", "used", title="Budgets")
        for col in b.columns[1:]:
            col.justify = "right"
        for u in report.budgets:
            b.add_row(u.scope, f"{u.used_usd:,.2f}", f"{u.limit_usd:,.2f}", f"{u.percent:.0f}%")
        console.print(b)


def _nums(r: Mapping[str, Any]) -> list[str]:
    return [f"{r['entries']:,}", f"{r['tokens_in']:,}", f"{r['tokens_out']:,}", _usd(r["usd_list_micros"]),
            _usd(r["credit_micros"]), _usd(r["usd_net_micros"])]


def render_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2) + "\n"


def render_csv(report: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*report.by, "entries", "tokens_in", "tokens_out", "usd_list", "credit_usd", "usd_net"])
    for r in report.rows:
        w.writerow([*(r[b] for b in report.by), r["entries"], r["tokens_in"], r["tokens_out"],
                    *(f"{r[k] / MICRO:.6f}" for k in ("usd_list_micros", "credit_micros", "usd_net_micros"))])
    return buf.getvalue()


_COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")


def burn_down(f: CreditForecast, today: dt.date) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(projected, straight) as (days from today, balance USD): at this month's rate, and evenly to 0 at expiry."""
    days = max((dt.date.fromisoformat(f.expires) - today).days, 0) + 1
    daily = f.monthly_rate_usd * 12 / 365
    empty = f.balance_usd / daily if daily > 0 else float("inf")
    projected = [(0.0, f.balance_usd), (min(empty, days), max(0.0, f.balance_usd - daily * days))]
    if empty < days:
        projected.append((float(days), 0.0))
    return projected, [(0.0, f.balance_usd), (float(days), 0.0)]


def _svg_line(points, sx, sy, colour: str, dash: str = "") -> str:
    pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<polyline fill="none" stroke="{colour}" stroke-width="2"{extra} points="{pts}"/>'


def _credit_svg(f: CreditForecast, today: dt.date) -> str:
    w, h, pad = 640, 220, 50
    projected, straight = burn_down(f, today)
    x_max = max(straight[-1][0], 1.0)
    y_max = max(f.balance_usd, 1.0)
    sx = lambda x: pad + (w - 2 * pad) * x / x_max
    sy = lambda y: h - pad - (h - 2 * pad) * y / y_max
    e = html.escape
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
            f'aria-label="burn-down of the {e(f.cloud)} credit">'
            f'<text x="{pad}" y="20" font-weight="bold">{e(f.cloud)}{e(" (" + f.name + ")" if f.name else "")}: '
            f'${f.balance_usd:,.0f}, expires {e(f.expires)}</text>'
            f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#999"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#999"/>'
            f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end" font-size="11">{y_max:,.0f}</text>'
            f'<text x="{pad - 4}" y="{h - pad + 4}" text-anchor="end" font-size="11">0</text>'
            f'<text x="{pad}" y="{h - pad + 16}" font-size="11">{today.isoformat()}</text>'
            f'<text x="{w - pad}" y="{h - pad + 16}" text-anchor="end" font-size="11">{e(f.expires)}</text>'
            + _svg_line(straight, sx, sy, "#999", "6 4") + _svg_line(projected, sx, sy, "#e15759")
            + f'<text x="{w - pad}" y="{pad - 8}" text-anchor="end" font-size="11" fill="#e15759">at this '
            f'month\'s rate: ${f.expires_unused_usd:,.0f} expires unused</text></svg>')


def _daily_svg(daily: Sequence[Mapping[str, Any]], since: str, until: str) -> str:
    start = dt.date.fromisoformat(since[:10])
    end = dt.date.fromisoformat(until[:10])
    if until.endswith("T00:00:00") and end > start:  # --until's exclusive bound: the day after
        end -= dt.timedelta(days=1)
    days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    tenants = sorted({str(r["tenant"]) for r in daily})
    per: dict[tuple[str, str], float] = {(str(r["day"]), str(r["tenant"])): r["usd_list_micros"] / MICRO for r in daily}
    top = max([sum(per.get((d.isoformat(), t), 0.0) for t in tenants) for d in days] + [0.01])
    w, h, pad = 640, 260, 50
    bw = (w - 2 * pad) / max(len(days), 1)
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 20 * len(tenants)}" role="img" '
             'aria-label="daily spend by tenant">'),
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#999"/>',
             f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end" font-size="11">${top:,.2f}</text>',
             f'<text x="{pad - 4}" y="{h - pad + 4}" text-anchor="end" font-size="11">0</text>']
    for i, d in enumerate(days):
        y = h - pad
        for j, t in enumerate(tenants):
            v = per.get((d.isoformat(), t), 0.0)
            bh = (h - 2 * pad) * v / top
            if bh > 0:
                y -= bh
                parts.append(f'<rect x="{pad + i * bw + 1:.1f}" y="{y:.1f}" width="{max(bw - 2, 1):.1f}" '
                             f'height="{bh:.1f}" fill="{_COLOURS[j % len(_COLOURS)]}"><title>{d} '
                             f'{html.escape(t)}: ${v:,.2f}</title></rect>')
        if len(days) <= 16 or i % max(len(days) // 8, 1) == 0:
            parts.append(f'<text x="{pad + (i + 0.5) * bw:.1f}" y="{h - pad + 14}" text-anchor="middle" '
                         f'font-size="10">{d.strftime("%m-%d")}</text>')
    for j, t in enumerate(tenants):
        y = h + 20 * j
        parts.append(f'<rect x="{pad}" y="{y - 10}" width="12" height="12" fill="{_COLOURS[j % len(_COLOURS)]}"/>'
                     f'<text x="{pad + 18}" y="{y}" font-size="12">{html.escape(t)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Report) -> str:
    """One self-contained page: inline SVG and CSS, no scripts, fonts or other files."""
    today = report.now.date()
    t = report.totals
    credits = "".join(_credit_svg(f, today) for f in report.credits) or "<p>No credits in org.yaml.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sovra spend {report.since[:10]} to {report.until[:10]}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em}} svg{{display:block;margin:1em 0}}
td,th{{padding:.2em .8em;text-align:right}} th:first-child,td:first-child{{text-align:left}}</style></head><body>
<h1>Spend {html.escape(report.since[:10])} to {html.escape(report.until[:19])} (UTC)</h1>
<table><tr><th>entries</th><th>tokens in</th><th>tokens out</th><th>USD list</th><th>credits</th><th>USD net</th></tr>
<tr>{"".join(f"<td>{v}</td>" for v in _nums(t))}</tr></table>
<h2>Credits: remaining balance to expiry</h2>
<p>Red: at this month's burn rate. Dashed grey: evenly to zero at expiry.</p>
{credits}
<h2>Daily spend by tenant (USD at list)</h2>
{_daily_svg(report.daily, report.since, report.until)}
</body></html>
"""
