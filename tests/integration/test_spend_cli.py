"""`sovra spend` over a real SQLite ledger written by the store's own `record`: the table's totals, JSON totals equal
to the entries' sums, CSV rows, a self-contained HTML report, and an unreachable PostgreSQL as one sentence that
never shows the password."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from sovra.infra.ledger.store import CreditCap, Entry, SpendStore
from sovra.orchestrator import spend_report as sr
from sovra.orchestrator.cli import app
from typer.testing import CliRunner

NOW = dt.datetime.now(dt.UTC)
MONTH = NOW.strftime("%Y-%m")
EXPIRES = dt.date(NOW.year + 1, 12, 31)


def entry(n: int, tenant: str, usd: int, cloud: str = "azure", adjust: tuple = ()) -> Entry:
    # the first seconds of this month: inside the default period whenever the test runs
    return Entry(entry_id=f"w.t:{n}", request_id=f"r{n}", time=f"{MONTH}-01T00:00:{n:02d}.000+00:00",
                 tenant=tenant, deployment="chat", target=f"{cloud}-foundry/westeurope", cloud=cloud,
                 provider=f"{cloud}-foundry", outcome="ok", tokens_in=10 * n, tokens_out=n, price_source="list",
                 usd_list_micros=usd, adjust=adjust)


ACME_BUDGET = ("tenant=acme", "usd_micros", MONTH, 3_000_000)  # what the router's reservations left on acme's budget
ENTRIES = [entry(1, "acme", 1_000_000, adjust=(ACME_BUDGET,)), entry(2, "acme", 2_000_000), entry(3, "beta", 500_000),
           entry(4, "beta", 250_000, cloud="aws")]
CAP = 1_500_000  # azure's credits pay at most $1.50 this month: the rest is paid in money


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SOVRA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SOVRA_SPEND_DSN", raising=False)
    store = SpendStore.sqlite(tmp_path / "home" / "spend" / "ledger.db")
    assert store.record(ENTRIES, {"azure": CreditCap("azure", MONTH, CAP)}) == len(ENTRIES)
    store.close()
    org = tmp_path / "org.yaml"
    tenant = "{{name: {}, key_sha256: '{}', residency: {{zones: [GLOBAL]}}}}"
    org.write_text(f"tenants:\n  - {tenant.format('acme', '0' * 64)}\n  - {tenant.format('beta', '1' * 64)}\n"
                   f"credits:\n  - {{cloud: azure, usd: 1000, expires: {EXPIRES}}}\n"
                   "budgets:\n  - {tenant: acme, usd_per_month: 50}\n")
    return tmp_path, org


def run(*args: str):
    return CliRunner().invoke(app, ["spend", *args], catch_exceptions=False)


def test_table_shows_each_group_and_the_totals(env):
    _, org = env
    r = run("--org", str(org))
    assert r.exit_code == 0, r.output
    total = next(line for line in r.output.splitlines() if "total" in line)
    # 4 entries, 100 tokens in, 10 out, $3.75 at list, $1.50 from credits, $2.25 paid
    for cell in ("4", "100", "10", "3.75", "1.50", "2.25"):
        assert cell in total.split(), (cell, total)
    assert "acme" in r.output and "beta" in r.output and "aws" in r.output
    assert "Credits" in r.output and "azure" in r.output and "Budgets" in r.output and "tenant=acme" in r.output


def test_json_totals_equal_the_entries_sums(env):
    _, org = env
    r = run("--org", str(org), "-o", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    t = data["totals"]
    assert t["entries"] == len(ENTRIES)
    assert t["tokens_in"] == sum(e.tokens_in for e in ENTRIES)
    assert t["tokens_out"] == sum(e.tokens_out for e in ENTRIES)
    assert t["usd_list_micros"] == sum(e.usd_list_micros for e in ENTRIES)
    assert t["credit_micros"] == CAP
    assert t["usd_net_micros"] == t["usd_list_micros"] - CAP
    assert sum(row["entries"] for row in data["rows"]) == len(ENTRIES)
    assert data["period"]["since"] == f"{MONTH}-01T00:00:00"
    [credit] = data["credits"]
    assert credit["cloud"] == "azure" and credit["burned_usd"] == pytest.approx(1.5)
    assert data["budgets"] == [{"scope": "tenant=acme", "used_usd": 3.0, "limit_usd": 50.0, "percent": 6.0}]


def test_csv_has_a_header_and_a_row_per_group(env):
    _, org = env
    r = run("--org", str(org), "-o", "csv", "--by", "tenant")
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["tenant", "entries", "tokens_in", "tokens_out", "usd_list", "credit_usd", "usd_net"]
    assert [row[:2] for row in rows[1:]] == [["acme", "2"], ["beta", "2"]]
    assert rows[1][4] == "3.000000"


def test_html_is_one_self_contained_file(env):
    tmp_path, org = env
    page = tmp_path / "spend.html"
    r = run("--org", str(org), "--html", str(page))
    assert r.exit_code == 0, r.output
    text = page.read_text()
    assert "<svg" in text and "azure" in text and "acme" in text and "beta" in text
    assert "<script" not in text and "<link" not in text and "@import" not in text and "url(" not in text


def test_an_unreachable_postgres_is_one_sentence_without_the_password(tmp_path, monkeypatch):
    org = tmp_path / "org.yaml"
    org.write_text("spend: {store: postgres}\n")
    monkeypatch.setenv("SOVRA_SPEND_DSN", "postgresql://u:secretpw@127.0.0.1:1/x")
    r = run("--org", str(org))
    assert r.exit_code == 1
    assert "secretpw" not in r.output and "Traceback" not in r.output
    assert "spend store" in r.output and len(r.output.strip().splitlines()) == 1


def test_a_missing_dsn_variable_and_a_missing_ledger_are_sentences(tmp_path, monkeypatch):
    monkeypatch.setenv("SOVRA_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("SOVRA_SPEND_DSN", raising=False)
    org = tmp_path / "org.yaml"
    org.write_text("spend: {store: postgres}\n")
    r = run("--org", str(org))
    assert r.exit_code == 1 and "$SOVRA_SPEND_DSN is not set" in r.output
    r = run()
    assert r.exit_code == 1 and "no spend ledger at" in r.output
    assert not (tmp_path / "empty" / "spend" / "ledger.db").exists()  # a report never creates the ledger


def test_bad_options_are_located(env):
    _, org = env
    assert run("--org", str(org), "--since", "2026-13-01").exit_code == 2
    r = run("--org", str(org), "--by", "colour")
    assert r.exit_code == 2 and "cannot group by colour" in r.output


def test_forecast_by_hand():
    from sovra.core.spec.org import Org

    org = Org.model_validate({"credits": [{"cloud": "azure", "usd": 1200, "expires": "2027-06-30"}]})
    now = dt.datetime(2027, 1, 10, 12, tzinfo=dt.UTC)  # 10 of 31 days, 6 months left (Jan-Jun)
    [f] = sr.forecast_credits(org, {("credit=azure", "usd_micros", "2027-01"): 100 * sr.MICRO}, now)
    assert f.cap_usd == pytest.approx(200)
    # 100 / 10 × 31 = 310 at this pace, but the router lets the credit pay at most its cap (1,200 / 6) a month
    assert f.monthly_rate_usd == pytest.approx(200)
    assert f.months_left == 6 and f.used_by_expiry
    assert f.expires_unused_usd == 0
    [slow] = sr.forecast_credits(org, {("credit=azure", "usd_micros", "2027-01"): 10 * sr.MICRO}, now)
    assert not slow.used_by_expiry and slow.expires_unused_usd == pytest.approx(1200 - 31 * 6)
    projected, straight = sr.burn_down(f, now.date())
    # at the cap's pace the balance ends within one month's cap of 0 (the cap counts this month whole, the line
    # counts days)
    assert straight[-1][1] == 0 and 0 <= projected[-1][1] <= f.cap_usd
