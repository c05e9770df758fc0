"""Locale variants in the deployment spec and the routing table (issue 22): BCP 47 tags in one spelling, variants
planned as deployments of their own whose residency may only narrow, errors that name the file and the field, the
table linking each variant to its base (and only reachable through it), and a redeploy that drops a removed locale."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sovra.core.api_errors import ModelNotFound
from sovra.core.backends import RoutingTable
from sovra.core.errors import SpecError
from sovra.core.place import Place
from sovra.core.spec.locales import lookup, normalize_locale, parse_locale
from sovra.core.spec.org import Endpoint, Org, connection_for
from sovra.orchestrator import routing_table as rt
from sovra.orchestrator.planning import load_deployments
from sovra.orchestrator.router.locales import Detector, Locales, prompt_text
from sovra.policies.plan import Placement
from tests import factories

SPEC = """\
apiVersion: sovra/v1
kind: Deployment
metadata: {name: support}
spec:
  model: {name: mistral-small}
  residency: {zones: [EU, MEA]}
  locales:
    - locale: FR
      model: {name: mistral-small-fr}
      residency: {countries: [FR]}
    - locale: ar
      adapter: gulf-arabic-lora
      residency: {countries: [AE, SA]}
"""


def write(tmp_path, text: str):
    path = tmp_path / "deployment.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("raw, tag", [("fr", "fr"), ("FR-ca", "fr-CA"), ("zh_hant_tw", "zh-Hant-TW"),
                                      ("es-419", "es-419"), (" de-CH ", "de-CH"), ("ara", "ara")])
def test_a_tag_has_one_spelling(raw, tag):
    assert normalize_locale(raw) == tag


@pytest.mark.parametrize("raw", ["", "f", "french", "fr-", "fr-CAN1", "fr!!CA", "12"])
def test_a_malformed_tag_is_refused_with_examples(raw):
    with pytest.raises(ValueError, match="BCP 47"):
        normalize_locale(raw)
    assert parse_locale(raw) is None


@given(st.from_regex(r"\A[a-zA-Z]{2,3}([-_][a-zA-Z]{4})?([-_]([a-zA-Z]{2}|[0-9]{3}))?\Z"))
def test_normalising_is_idempotent_and_lookup_falls_back_to_parents(raw):
    tag = normalize_locale(raw)
    assert normalize_locale(tag) == tag
    language = tag.split("-")[0]
    assert lookup(tag, {language: "base-language"}) == (language, "base-language")
    assert lookup(tag, {"xx-YY": "other"}) is None or tag == "xx-YY"


def test_variants_are_planned_as_deployments_of_their_own(tmp_path):
    base, fr, ar = load_deployments([write(tmp_path, SPEC)])
    assert [d.name for d in (base, fr, ar)] == ["support", "support.fr", "support.ar"]
    assert (fr.spec.model.name, fr.spec.served_model, fr.spec.residency.countries) == (
        "mistral-small-fr", "mistral-small-fr", ("FR",))
    assert (ar.spec.model.name, ar.spec.served_model, ar.spec.residency.countries) == (
        "mistral-small", "gulf-arabic-lora", ("AE", "SA"))  # placed as the base model, asked for by adapter
    assert fr.spec.variant_of.base == "support" and ar.spec.variant_of.locale == "ar"
    assert not fr.spec.locales and base.spec.variant_of is None


def test_a_variant_may_not_widen_the_residency_and_the_error_names_the_file_and_field(tmp_path):
    path = write(tmp_path, SPEC.replace("countries: [AE, SA]", "countries: [AE, US]"))
    with pytest.raises(SpecError) as err:
        load_deployments([path])
    text = str(err.value)
    assert str(path) in text and "locales[1] (ar)" in text and "adds US" in text


@pytest.mark.parametrize("change, words", [
    (("adapter: gulf-arabic-lora", "replicas: {min: 1}"), "give the variant's `model` or its LoRA `adapter`"),
    (("locale: ar", "locale: fr"), "declared twice"),
    (("locale: ar", "locale: not a tag"), "BCP 47"),
    (("  locales:", "  variant_of: {base: x, locale: fr}\n  locales:"), "set by Sovra"),
])
def test_what_a_file_may_not_say_about_variants(tmp_path, change, words):
    with pytest.raises(SpecError, match=words.replace("`", ".").replace("'", ".")):
        load_deployments([write(tmp_path, SPEC.replace(*change))])


def _endpoint(tid: str, country: str, zone: str, *models: str) -> Endpoint:
    return Endpoint.model_validate({
        "id": tid, "provider": "openai-compatible", "cloud": "onprem", "region": tid, "country": country,
        "zone": zone, "operator": {"name": "self", "jurisdiction": country},
        "models": [{"name": m, "usd_per_1k_tokens": 0.0} for m in models],
        "connection": {"url": f"http://127.0.0.1/{tid}"}})


def _table(tmp_path) -> RoutingTable:
    base, fr, ar = load_deployments([write(tmp_path, SPEC)])
    entries = []
    for d, t in ((base, _endpoint("berlin", "DE", "EU", "mistral-small")),
                 (fr, _endpoint("paris", "FR", "EU", "mistral-small-fr")),
                 (ar, _endpoint("dubai", "AE", "MEA", "mistral-small", "gulf-arabic-lora"))):
        p = Placement(t.id, t.provider, t.zone, t.country, 0, None, 0.0, 0.0, 0.0, 1.0)
        entries.append(rt.routed_entry(d, p, t, connection_for(Org(endpoints=(t,)), t)))
    return RoutingTable.of(entries)


def test_the_table_links_each_variant_to_its_base_and_hides_it(tmp_path):
    table = _table(tmp_path)
    assert dict(table.routes["support"].variants) == {"ar": "support.ar", "fr": "support.fr"}
    ar = table.routes["support.ar"]
    assert (ar.variant_of, ar.locale, ar.deployments) == ("support", "ar", ("support.ar", "support"))
    assert ar.backends[0].model == "gulf-arabic-lora"  # what requests name: the engine selects the adapter by it
    assert table.names() == ("support",)
    with pytest.raises(ModelNotFound):
        table.resolve("support.fr")
    with pytest.raises(ModelNotFound):
        table.resolve("mistral-small-fr")  # a variant's model is not a way in either
    assert table.resolve("mistral-small").name == "support"


def test_a_redeploy_drops_the_variants_of_what_it_redeploys(tmp_path):
    table = _table(tmp_path)
    current = {"args": {"backends": [b.to_wire() for b in table.backends]}}
    kept = rt.router_backends(current, {"support"}, [b for b in table.backends if b.variant_of is None])
    assert {b.deployment for b in kept} == {"support"}
    other = rt.router_backends(current, {"another"}, [])
    assert {b.deployment for b in other} == {"support", "support.fr", "support.ar"}


def test_a_variant_without_its_base_in_the_table_is_unreachable_and_dropped():
    lone = factories.backend("paris", Place("EU", "FR", "FR", "self"), deployment="support.fr").model_copy(
        update={"variant_of": "support", "locale": "fr"})
    assert dict(RoutingTable.of([lone]).routes) == {}


def test_detection_reads_the_last_user_turn_only_and_not_short_text():
    body = {"messages": [{"role": "system", "content": "Réponds toujours en français, avec précision."},
                         {"role": "user", "content": [{"type": "text", "text": "What is the capital of Australia?"}]},
                         {"role": "assistant", "content": "Canberra."}]}
    assert prompt_text(body) == "What is the capital of Australia?"
    assert Locales().locale_of({}, body) == ("en", "detected")
    assert Detector().detect("Bonjour") is None  # under 20 characters: the deployment serves


def test_the_routers_detector_meets_the_goal_on_the_shipped_set_per_language():
    """≥ 95 % per language on prompts of 20+ characters (issue 22's goal; bench/locales.py reports the same)."""
    import json
    from collections import Counter
    from pathlib import Path

    prompts = [json.loads(line) for line in (Path(__file__).parents[1] / "data" / "multilingual_prompts.jsonl")
               .read_text("utf-8").splitlines() if line]
    detector, right, seen = Detector(), Counter(), Counter()
    for p in prompts:
        if len(p["text"]) >= 20:
            seen[p["lang"]] += 1
            right[p["lang"]] += detector.detect(p["text"]) == p["lang"]
    assert len(seen) >= 14 and all(n >= 25 for n in seen.values())
    assert {lang: right[lang] / n for lang, n in seen.items() if right[lang] / n < 0.95} == {}


def test_a_deployments_budget_covers_its_variants(tmp_path):
    from sovra.core.spec.spend import Budget
    from sovra.orchestrator.router.budgets import BudgetIndex

    table = _table(tmp_path)
    index = BudgetIndex((Budget(deployment="support", tokens_per_minute=1000),
                         Budget(deployment="support.fr", tokens_per_minute=10)))
    assert {b.tokens_per_minute for b in index.applying("t", table.routes["support.fr"].deployments)} == {1000, 10}
    assert {b.tokens_per_minute for b in index.applying("t", table.routes["support.ar"].deployments)} == {1000}


def test_an_adapter_variant_is_placed_only_where_an_endpoint_lists_the_adapter(tmp_path):
    """The planner's hard rules, explained: a Ray target (Sovra's engines load no adapters) and an endpoint that
    does not list the adapter are rejected with reasons; an endpoint listing it is a candidate."""
    from sovra.core.spec import Target
    from sovra.policies.filters import evaluate
    from sovra.policies.licenses import license_pack
    from sovra.policies.plan import Candidate, Rejection

    ar = load_deployments([write(tmp_path, SPEC.replace("model: {name: mistral-small}",
                                                         "model: {name: mistral-small, gpu_memory_gb: 40}"))])[2]
    ray = Target.model_validate({
        "id": "onprem/dubai", "provider": "onprem-ray", "cloud": "onprem", "region": "dubai", "country": "AE",
        "zone": "MEA", "operator": {"name": "self", "jurisdiction": "AE"},
        "accelerators": [{"sku": "h100", "gpus": 1, "gpu_memory_gb": 80, "usd_per_hour": 2.0}]})
    pack = license_pack(Org().policy)
    rejected = evaluate(ar, ray, pack, {})
    assert isinstance(rejected, Rejection) and "needs an endpoint that loads it" in " ".join(rejected.reasons)
    plain = evaluate(ar, _endpoint("dubai", "AE", "MEA", "mistral-small"), pack, {})
    assert isinstance(plain, Rejection) and "the LoRA adapter gulf-arabic-lora (on mistral-small) is not offered" in (
        " ".join(plain.reasons))
    assert isinstance(evaluate(ar, _endpoint("dubai", "AE", "MEA", "mistral-small", "gulf-arabic-lora"), pack, {}),
                      Candidate)


def test_a_variant_places_on_one_target_and_prices_its_own_traffic_unless_told(tmp_path):
    spec = SPEC.replace("  residency: {zones: [EU, MEA]}\n", "  residency: {zones: [EU, MEA]}\n"
                        "  placement: {min_targets: 2}\n  traffic: {requests_per_second: 5, tokens_per_request: 100}\n")
    spec = spec.replace("      residency: {countries: [FR]}\n", "      residency: {countries: [FR]}\n"
                        "      traffic: {requests_per_second: 1, tokens_per_request: 100}\n")
    base, fr, ar = load_deployments([write(tmp_path, spec)])
    assert base.spec.placement.min_targets == 2 and fr.spec.placement.min_targets == ar.spec.placement.min_targets == 1
    assert (fr.spec.traffic.requests_per_second, ar.spec.traffic.requests_per_second) == (1, 5)


def test_a_deployment_named_like_a_live_variant_is_refused_both_ways(tmp_path):
    """`Name` allows dots, so a deployment may be called `support.fr`: its `up` would take the variant's routes."""
    table = _table(tmp_path)
    live = {"args": {"backends": [b.to_wire() for b in table.backends]}}
    plain = factories.backend("lyon", Place("EU", "FR", "FR", "self"), deployment="support.fr")
    with pytest.raises(rt.StaleRouterError, match="'support.fr' on this router is the fr variant of 'support'"):
        rt.router_backends(live, {"support.fr"}, [plain])
    theirs = {"args": {"backends": [plain.to_wire(), *(b.to_wire() for b in table.backends
                                                       if b.deployment != "support.fr")]}}
    with pytest.raises(rt.StaleRouterError, match="is a deployment of its own"):
        rt.router_backends(theirs, {"support", "support.fr", "support.ar"}, list(table.backends))


def test_a_request_locale_is_never_cut_to_something_that_parses():
    assert parse_locale("fr" + " " * 30 + "garbage") is None and parse_locale("fr-" + "x" * 60) is None
    assert parse_locale("fr-ca") == "fr-CA"


def test_sovra_plan_says_whose_locale_each_variant_is():
    from typer.testing import CliRunner

    from sovra.orchestrator.cli import app

    example = Path(__file__).parents[2] / "examples" / "localised"
    result = CliRunner().invoke(app, ["plan", str(example / "deployment.yaml"), "--org", str(example / "org.yaml")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "support.fr (locale fr of support): feasible" in result.output
    assert "support.ar (locale ar of support): feasible" in result.output
