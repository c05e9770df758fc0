"""A locale's variant that hands its request back to the base deployment (issue 22, found by review): the base's
budgets hold and the trail records the bound that was applied. Over the real path: the router on uvicorn, fake
OpenAI-compatible backends, a SQLite ledger."""
from __future__ import annotations

import hashlib

import httpx
import pytest

from sovra.core.backends import Backend, RoutingTable
from sovra.core.place import Place
from sovra.core.spec import Residency
from sovra.core.spec.org import Tenant
from sovra.core.spec.spend import Budget, SpendSettings
from sovra.infra.ledger.store import SpendStore
from sovra.orchestrator.router.app import RouterState, create_app
from sovra.orchestrator.router.audit import AuditLog, read
from sovra.orchestrator.router.budgets import BudgetIndex
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.orchestrator.router.health import Breaker
from sovra.orchestrator.router.ledger import Ledger
from sovra.orchestrator.router.spend import Spend
from sovra.orchestrator.router.tenants import TenantDirectory
from sovra.providers.clients import HttpClient
from tests.fakes.openai_backend import FakeBackend, ServerThread

pytestmark = pytest.mark.integration
KEY = "sk-locale-spend-eu"
PLACES = {"frankfurt": Place("EU", "DE", "DE", "self"), "paris-fr": Place("EU", "FR", "FR", "self")}
FRENCH = "Bonjour, pouvez-vous m'aider à comprendre ma facture du mois dernier s'il vous plaît ?"
ENGLISH = "Please summarise the attached quarterly report in three bullet points for the board."


def _backend(name: str, url: str) -> Backend:
    if name == "paris-fr":  # the French variant: self-hosted (no per-token price), France only
        return Backend(id="support.fr@paris-fr", deployment="support.fr", model="mistral-fr", target=name,
                       place=PLACES[name], residency=Residency(countries=("FR",)), kind="openai-compatible",
                       address=url, params={"served_model": "mistral-fr"}, cost=0.0,
                       variant_of="support", locale="fr")
    # the base: a managed, per-token endpoint in Germany
    return Backend(id="support@frankfurt", deployment="support", model="mistral", target=name, place=PLACES[name],
                   residency=Residency(zones=("EU",)), kind="openai-compatible", address=url,
                   params={"served_model": "mistral"}, cost=1.0, usd_per_1k_tokens=1.0, tier=1)


@pytest.fixture()
def stack(tmp_path):
    fakes = {n: FakeBackend(n) for n in PLACES}
    servers = {n: ServerThread(f.app()).__enter__() for n, f in fakes.items()}
    table = RoutingTable.of([_backend(n, servers[n].url) for n in PLACES])
    tenants = TenantDirectory.of([Tenant(name="eu", key_sha256=hashlib.sha256(KEY.encode()).hexdigest(),
                                         residency=Residency(zones=("EU",)))])
    store = SpendStore.sqlite(tmp_path / "l.db")
    # the deployment's USD budget is (as good as) spent: every request to its per-token backend is refused
    spend = Spend(store, Ledger(store, tmp_path / "spool", "t"),
                  BudgetIndex((Budget(deployment="support", usd_per_month=0.000001),)), SpendSettings())
    state = RouterState(Dispatcher(table, backoff_s=0.0, breaker=Breaker(cooldown_s=3600)), tenants,
                        {"openai-compatible": HttpClient()}, AuditLog(tmp_path / "audit"), probe=False, spend=spend)
    router = ServerThread(create_app(state)).__enter__()
    with httpx.Client(base_url=router.url, timeout=10) as http:
        yield {"http": http, "fakes": fakes, "state": state, "trail": tmp_path / "audit"}
    router.__exit__()
    for s in servers.values():
        s.__exit__()


def ask(stack, text, **headers):
    return stack["http"].post("/v1/chat/completions", json={
        "model": "support", "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {KEY}", **headers})


def test_a_variants_fallback_to_its_base_keeps_the_bases_usd_budget(stack):
    # the base alone: over its budget, refused, nothing sent
    r = ask(stack, ENGLISH)
    assert r.status_code == 429, r.text
    assert not stack["fakes"]["frankfurt"].received
    # a French request: its variant is paid-for capacity, but it may hand the request to the per-token base, so its
    # reservation is priced at the dearer of both: refused here (and the variant refusing changes nothing)
    stack["fakes"]["paris-fr"].failing = True
    r = ask(stack, FRENCH)
    assert r.status_code == 429, (r.status_code, r.headers.get("x-sovra-target"),
                                  "the per-token base served past its spent USD budget")
    assert not stack["fakes"]["frankfurt"].received


def test_after_a_fallback_the_trail_records_the_bound_applied_to_the_base(stack):
    stack["state"].spend = None  # budgets aside
    stack["fakes"]["paris-fr"].failing = True
    r = ask(stack, FRENCH, **{"X-Request-Id": "fallback-residency-1"})
    assert r.status_code == 200 and r.headers["x-sovra-target"] == "frankfurt", r.text
    trail = read(stack["trail"])
    rec = next(x for x in trail.records if x["request_id"] == "fallback-residency-1")
    # not France's (the variant's): Germany, where it was processed, is inside the bound the record names
    assert rec["residency"] == "zones [EU]" and rec["country"] == "DE" and rec["variant"] is None, rec
