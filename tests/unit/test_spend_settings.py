"""org.yaml's spend settings and budgets are checked where they are read, and `up` refuses budgets that a
node-local store could not hold across router nodes."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from pydantic import ValidationError

from sovra.core.spec.org import Org, RouterScale
from sovra.orchestrator import deploy
from sovra.orchestrator.deploy import DeployError, Inputs

TENANT = {"name": "acme", "key_sha256": hashlib.sha256(b"sk-test-acme").hexdigest(), "residency": {"zones": ["EU"]}}


def org(**fields) -> Org:
    return Org.model_validate({"tenants": [TENANT], **fields})


def test_budgets_name_known_tenants_once_each_with_a_limit():
    assert org(budgets=[{"tenant": "acme", "usd_per_month": 10}]).budgets[0].scope == "tenant=acme"
    assert org(budgets=[{"tenant": "acme", "deployment": "chat", "tokens_per_minute": 5}]).budgets[0].scope == (
        "tenant=acme,deployment=chat")
    with pytest.raises(ValidationError, match="not in `tenants`"):
        org(budgets=[{"tenant": "acmee", "usd_per_month": 10}])
    with pytest.raises(ValidationError, match="two budgets for tenant=acme"):
        org(budgets=[{"tenant": "acme", "usd_per_month": 10}, {"tenant": "acme", "tokens_per_minute": 5}])
    with pytest.raises(ValidationError, match="names a `tenant`, a `deployment`, or both"):
        org(budgets=[{"usd_per_month": 10}])
    with pytest.raises(ValidationError, match="sets usd_per_month, tokens_per_minute or requests_per_minute"):
        org(budgets=[{"tenant": "acme"}])
    with pytest.raises(ValidationError):
        org(budgets=[{"tenant": "acme", "usd_per_month": -1}])


def test_spend_settings_refuse_what_would_be_ignored_or_leak():
    with pytest.raises(ValidationError, match="absolute path"):
        org(spend={"path": "ledger.db"})
    with pytest.raises(ValidationError, match="through `dsn_env`"):
        org(spend={"store": "postgres", "path": "/x/ledger.db"})
    with pytest.raises(ValidationError):
        org(spend={"store": "postgres", "dsn": "postgresql://u:pw@h/db"})  # a DSN holds a password: never here
    assert org().spend.on_unavailable == "closed"


def _inputs(**fields) -> Inputs:
    o = org(**fields)
    return Inputs((), o, (), dt.date(2026, 12, 7))


def test_up_refuses_budgets_on_sqlite_when_router_replicas_span_nodes():
    budgets = [{"tenant": "acme", "usd_per_month": 10}]
    with pytest.raises(DeployError, match="every node would hold the whole budget"):
        deploy.refuse_node_local_budgets("ray://head", _inputs(budgets=budgets), None, nodes=3)
    with pytest.raises(DeployError, match="store: postgres"):
        deploy.refuse_node_local_budgets("ray://head", _inputs(budgets=budgets), RouterScale(replicas=2), nodes=2)
    with pytest.raises(DeployError, match="may run replicas on several nodes"):  # one node now, more later
        deploy.refuse_node_local_budgets("ray://head", _inputs(budgets=budgets), None, nodes=1)
    # the local Ray, one pinned replica, PostgreSQL, or no budgets: nothing to refuse
    deploy.refuse_node_local_budgets(deploy.LOCAL, _inputs(budgets=budgets), None, nodes=1)
    deploy.refuse_node_local_budgets("ray://head", _inputs(budgets=budgets), RouterScale(replicas=1), nodes=3)
    deploy.refuse_node_local_budgets("ray://head", _inputs(budgets=budgets, spend={"store": "postgres"}), None, 3)
    deploy.refuse_node_local_budgets("ray://head", _inputs(), None, nodes=3)


def test_a_deployment_says_whether_it_spills_over_a_usd_budget():
    from sovra.core.spec.deployment import Deployment

    base = {"apiVersion": "sovra/v1", "kind": "Deployment", "metadata": {"name": "chat"},
            "spec": {"model": {"name": "m"}, "residency": {"zones": ["EU"]}}}
    assert Deployment.model_validate(base).spec.routing.over_budget == "refuse"
    spill = {**base, "spec": {**base["spec"], "routing": {"policy": "commitments", "over_budget": "spill"}}}
    assert Deployment.model_validate(spill).spec.routing.over_budget == "spill"
    with pytest.raises(ValidationError):
        Deployment.model_validate({**base, "spec": {**base["spec"], "routing": {"over_budget": "overspend"}}})
