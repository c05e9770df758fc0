"""`sovra up` as one sequence, readable top to bottom:

    live settings → plan → provision (Pulumi) → routing table and deploy (Ray Serve) → first request

Each step is a call into the module that owns it; what is said to or asked of a person (spinners, warnings, the
Pulumi preview's confirmation, the first answer) comes in through `Hooks`, so the sequence has no UI of its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sovra.orchestrator import deploy, planning
from sovra.orchestrator.planning import Inputs

#: The first request `up` sends through the router, to prove the whole path answers.
FIRST_PROMPT = "What is the capital of France?"


@dataclass(frozen=True)
class Hooks:
    """How `up` talks to the person running it."""

    say: Callable[[str], None]
    warn: Callable[[str], None]
    live: Callable[[Inputs], Inputs]  # re-read where accounts really process; widened targets held there
    engine: Any  # provisioning.Engine: Pulumi's events, shown as they come
    confirm: Callable[[], bool] | None = None  # after the Pulumi preview; None: not interactive, do not apply
    status: Callable[[str], AbstractContextManager[Any]] = lambda _: contextlib.nullcontext()
    deployed: Callable[[list[deploy.Result]], None] = lambda _: None  # each cluster's router, once deployed
    answered: Callable[[str, str, Any], None] = lambda *_: None  # (model, deployment, sdk Answer)


def run(inputs: Inputs, settings: deploy.Settings, hooks: Hooks, *, ray_only: bool = False, check: bool = True,
        backend: str | None = None, env: str = "dev") -> list[deploy.Result]:
    """Deploy `inputs` end to end; raises a SovraError (a sentence) at the first step that fails."""
    inputs = hooks.live(inputs)
    with hooks.status("planning…"):
        plan = planning.plan(inputs)
    for dp in plan.deployments:
        for p in dp.placements:
            hooks.say(f"plan: {dp.deployment} → {p.target} ({p.provider}, zone {p.zone}): {p.replicas} replica(s), "
                      f"${p.monthly_usd:,.2f}/month")
    if not ray_only and plan.feasible:
        from sovra.orchestrator.provisioning import provision

        inputs = provision(inputs, plan, backend, env, hooks.engine, confirm=hooks.confirm)
    results = deploy.up(inputs, plan, settings, hooks.say, ray_only=ray_only)
    hooks.deployed(results)
    if results and not inputs.org.tenants:
        hooks.warn("no tenants in the org file: the router is OPEN — any caller is accepted with no residency "
                   "bound beyond each deployment's placement. Add tenants with key_sha256.")
    if check and results:
        first_request(results[0].router_url or "", inputs, hooks)
    return results


def first_request(url: str, inputs: Inputs, hooks: Hooks) -> None:
    """Prove the slice works end to end: one chat through the router to the first chat deployment."""
    from sovra.infra.serve_config import resolve_engine
    from sovra.orchestrator.sdk import Client, SovraAPIError

    key = os.environ.get("SOVRA_API_KEY")
    if inputs.org.tenants and not key:
        hooks.say("tenants are configured: set SOVRA_API_KEY to have `up` send a first request")
        return
    chat = [d for d in inputs.deployments if resolve_engine(d, 0)[0] != "minilm"]
    for d in chat[:1]:  # `model` names the deployment
        try:
            client = Client(url, api_key=key, timeout_s=300)
        except ValueError as exc:  # the key would cross a network in clear: the SDK refuses, and so does `up`
            hooks.say(f"no first request: {exc}")
            return
        try:
            with client:
                answer = client.chat(d.name, [{"role": "user", "content": FIRST_PROMPT}], max_tokens=32,
                                     temperature=0)
        except SovraAPIError as exc:
            raise deploy.DeployError(f"the first request to {d.spec.model.name} failed: {exc}") from exc
        hooks.answered(d.spec.model.name, d.name, answer)
