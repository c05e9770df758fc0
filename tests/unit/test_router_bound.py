"""A deployment's residency binds its requests: `model` names a deployment, a bare model name only resolves when
unambiguous, tenants may be limited to some deployments, and tenants must state their residency."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sovra.core.backends import RoutingTable
from sovra.orchestrator.router.dispatch import Dispatcher
from sovra.core.api_errors import AmbiguousModel, ModelNotFound, NoAllowedBackend
from sovra.orchestrator.router.gate import RequestResidency
from sovra.orchestrator.router.tenants import TenantDirectory
from sovra.core.spec import Residency
from sovra.core.spec.org import Org, Tenant
from sovra.core.place import Place
from tests import factories

EU, FR, ANY = Residency(zones=("EU",)), Residency(countries=("FR",)), Residency(zones=("GLOBAL",))
PARIS, BERLIN = Place("EU", "FR", "FR", "self"), Place("EU", "DE", "DE", "self")
KEY = "0" * 63 + "1"


def fleet(legal_policy: str = "cost", legal_residency: Residency = FR):
    """`support` (EU) has a cheap Berlin replica and a Paris one; `legal` (FR) shares the model, and its table
    even lists a Berlin backend by mistake (a stale or hand-edited table) — the bound must still keep it out."""
    return RoutingTable.of([
        factories.backend("berlin", BERLIN, cost=0.1, deployment="support", model="mistral", residency=EU),
        factories.backend("paris", PARIS, cost=1.0, deployment="support", model="mistral", residency=EU),
        factories.backend("paris", PARIS, cost=1.0, deployment="legal", model="mistral", residency=legal_residency,
                          policy=legal_policy),
        factories.backend("berlin", BERLIN, cost=0.1, deployment="legal", model="mistral", residency=legal_residency,
                          policy=legal_policy),
    ])


async def _target(b):
    return b.target


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([ANY, EU, Residency(countries=("FR", "DE"))]), st.sampled_from([None, "FR,DE", "DE,FR"]),
       st.integers(0, 2**32))
def test_a_request_to_a_deployment_never_leaves_the_deployments_residency(tenant, header, seed):
    import random

    table = fleet()
    d = Dispatcher(table, rng=random.Random(seed))
    bound = RequestResidency.build(tenant, header)
    served, _ = asyncio.run(d.send(table.resolve("legal"), bound, _target))
    assert served == "paris"  # Berlin is cheaper, allowed to the tenant, listed for `legal` — and never chosen


def test_a_bare_model_name_shared_by_different_residencies_is_a_400_naming_the_deployments():
    with pytest.raises(AmbiguousModel) as exc:
        fleet().resolve("mistral")
    assert exc.value.status == 400 and exc.value.code == "ambiguous_model"
    assert "legal (countries [FR]" in exc.value.message and "support (zones [EU]" in exc.value.message


def test_a_bare_model_name_differing_only_in_policy_is_ambiguous_too():
    with pytest.raises(AmbiguousModel, match="policy latency"):
        fleet(legal_policy="latency", legal_residency=EU).resolve("mistral")


def test_a_bare_model_name_is_the_union_when_every_deployment_shares_residency_and_policy():
    route = fleet(legal_residency=EU).resolve("mistral")
    assert route.deployments == ("legal", "support") and len(route.backends) == 4 and route.residency == EU


def test_a_tenant_limited_to_some_deployments_sees_others_as_missing():
    table = fleet()
    with pytest.raises(ModelNotFound) as exc:
        table.resolve("legal", frozenset({"support"}))
    assert exc.value.status == 404 and "legal" not in exc.value.message.split(":")[-1]
    assert table.resolve("mistral", frozenset({"support"})).deployments == ("support",)  # no longer ambiguous
    assert table.names(frozenset({"support"})) == ("support",)


def test_the_bound_is_the_intersection_and_says_so():
    bound = RequestResidency.build(EU, "FR,DE").bound_by(FR)
    assert bound.permits(PARIS) and not bound.permits(BERLIN)
    assert bound.describe() == "zones [EU] ∩ countries [FR, DE] ∩ countries [FR]"


def test_no_backend_of_the_deployment_inside_the_bound_fails_closed_before_sending():
    table = RoutingTable.of([factories.backend("berlin", BERLIN, deployment="legal", residency=FR)])
    sent = []

    async def call(b):
        sent.append(b)

    with pytest.raises(NoAllowedBackend):
        asyncio.run(Dispatcher(table).send(table.resolve("legal"), RequestResidency(ANY), call))
    assert sent == []


def test_one_deployment_with_two_residencies_is_refused():
    with pytest.raises(ValueError, match="one deployment has one of each"):
        RoutingTable.of([factories.backend("a", PARIS, residency=EU), factories.backend("b", PARIS, residency=FR)])


# -- defaults fail closed ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("residency", [{}, {"sovereign": True}])
def test_a_tenant_must_state_its_residency(residency):  # leaving it out entirely: see the YAML test below
    raw = {"name": "bank", "key_sha256": KEY, "residency": residency}
    with pytest.raises(ValidationError) as exc:
        Tenant.model_validate(raw)
    text = str(exc.value)
    assert "residency" in text and ("GLOBAL" in text or "zones: [EU]" in text)


def test_unrestricted_is_spelled_out_and_tenants_may_name_their_deployments():
    t = Tenant.model_validate({"name": "ops", "key_sha256": KEY, "residency": {"zones": ["GLOBAL"]},
                               "deployments": ["support"]})
    assert t.residency.unrestricted and TenantDirectory.visible(t) == frozenset({"support"})


def test_a_missing_tenant_residency_in_yaml_names_the_file_the_field_and_the_fix(tmp_path):
    from sovra.orchestrator.catalog import load_org
    from sovra.core.errors import SpecError

    org = tmp_path / "org.yaml"
    org.write_text(f"apiVersion: sovra/v1\nkind: Org\ntenants:\n  - {{name: bank, key_sha256: '{KEY}'}}\n")
    with pytest.raises(SpecError) as exc:
        load_org(org)
    [issue] = exc.value.issues
    assert issue.file.endswith("org.yaml") and issue.line == 4 and issue.path == "tenants[0].residency"
    assert "{zones: [GLOBAL]}" in issue.message


def test_org_without_tenants_is_still_valid_and_open():
    assert TenantDirectory.of(Org().tenants).open
