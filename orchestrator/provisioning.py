"""The Pulumi step of `sovra preview/up/refresh/down`: which placements need a stack, one stack per deployment (the
Pulumi CLI checked before anything is written), engine runs shown as progress, and a stack's outputs turned into
endpoints that `deploy.up` routes to like org endpoints. The CLI only wires these to its consoles."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console

from sovra.core.errors import ProvisionError, PulumiMissingError
from sovra.core.spec import Deployment, Org, Target
from sovra.policies.plan import FleetPlan, Placement

if TYPE_CHECKING:  # Pulumi's SDK and the planning glue are imported where they are used
    from pulumi.automation import Stack

    from sovra.infra.pulumi_stack import StackResult
    from sovra.orchestrator.planning import Inputs

#: Per deployment, its placements that need Pulumi, each with its target.
Found = list[tuple[Deployment, list[tuple[Placement, Target]]]]
#: (deployment, its (placement, target) pairs, the opened stack)
Stacks = list[tuple[Deployment, list[tuple[Placement, Target]], "Stack"]]


def provisioned(inputs: Inputs, result: FleetPlan) -> Found:
    """Per deployment, the placements that need Pulumi (a dedicated cloud endpoint or a Kubernetes cluster), with
    their targets. Pure: Ray targets, managed offerings and org endpoints need none."""
    from sovra.providers.base import needs_provisioning

    targets = {t.id: t for t in inputs.targets}
    by_name = {d.name: d for d in inputs.deployments}
    found = []
    for dp in result.deployments:
        pairs = [(p, targets[p.target]) for p in dp.placements if needs_provisioning(targets[p.target])]
        if pairs:
            found.append((by_name[dp.deployment], pairs))
    return found


def service_keys(inputs: Inputs, result: FleetPlan) -> dict[str, str]:
    """Per KubeRay target whose org names no `api_key_env`, by target id: the key its model server requires,
    derived from the Ray token of the cluster whose router reaches it (the local Ray's, Sovra's own, when the
    deployment has no Ray placement; else the cluster of its Ray placements). That router derives the same key
    when it starts (`ray_apps.build_router_state_app`), so the key is in no config, table or log."""
    from sovra import providers
    from sovra.infra.ray_cluster import cluster_token, ensure_local_token
    from sovra.orchestrator.deploy import LOCAL, cluster_key, is_ray
    from sovra.orchestrator.serving.model_http import SERVICE_PURPOSE, derive_key
    from sovra.core.spec.org import Cluster, provision_for

    targets = {t.id: t for t in inputs.targets}
    keys: dict[str, str] = {}
    for dp in result.deployments:
        kuberay = [targets[p.target] for p in dp.placements if providers.get(p.provider).derives_service_key
                   and not provision_for(inputs.org, targets[p.target]).get("api_key_env")]
        if not kuberay:
            continue
        routers = sorted({cluster_key(targets[p.target]) for p in dp.placements if is_ray(p.provider)}) or [LOCAL]
        ids = ", ".join(t.id for t in kuberay)
        if len(routers) > 1:
            raise ProvisionError(
                f"{dp.deployment}: the KubeRay service on {ids} would be reached by the routers of several Ray "
                f"clusters ({', '.join(routers)}), which hold different Ray tokens to derive its key from; name "
                "its key with `provision: {api_key_env: VAR}` in org.yaml (set where `up` and each router run)")
        [router] = routers
        if router == LOCAL:
            ensure_local_token()  # the token `up` starts the local Ray with: the router derives from it
            token = cluster_token(None)
        else:
            c = next((t for t in inputs.targets if isinstance(t, Cluster) and t.address == router), None)
            token = cluster_token(router, token_file=c.auth_token_file if c else None)
        if not token:
            raise ProvisionError(
                f"{dp.deployment}: the KubeRay service on {ids} needs a key, derived from the Ray token of the "
                f"cluster whose router reaches it ({router}), and Sovra knows no token for it; give that cluster "
                "`auth_token_file` (or set RAY_AUTH_TOKEN), or name the key with `provision: {api_key_env: VAR}`")
        for t in kuberay:
            keys[t.id] = derive_key(token, SERVICE_PURPOSE)
    return keys


def open_stacks(found: Found, backend: str | None, env: str, org: Org,
                keys: Callable[[], dict[str, str]] | None = None) -> Stacks:
    """One stack per deployment, the Pulumi CLI checked first so that nothing is written without it; each
    component gets its target's `provision:` settings from org.yaml, and a KubeRay one its derived key (`keys`:
    `service_keys`, called after that check, since it may create the local Ray's token)."""
    from sovra.infra import pulumi_stack as ps
    from sovra.core.spec.org import provision_for

    try:
        ps.require_cli()
    except PulumiMissingError as exc:
        needs = "; ".join(f"{d.name} on {t.id} ({t.provider})" for d, pairs in found for _, t in pairs)
        raise PulumiMissingError(f"`sovra` cannot provision yet what this plan needs ({needs}): {exc.fix}") from None
    s = ps.settings(backend, env)
    derived = keys() if keys is not None else {}
    return [(d, pairs, ps.open_stack(d.name, ps.build_program(d, [p for p, _ in pairs], {t.id: t for _, t in pairs},
                                                              {t.id: provision_for(org, t) for _, t in pairs},
                                                              derived), s))
            for d, pairs in found]


@dataclasses.dataclass(frozen=True)
class Engine:
    """Runs one engine operation over stacks, its events shown on `console`: a live progress list on a terminal,
    one line per resource change otherwise."""

    console: Console
    say: Callable[[str], None]

    def __call__(self, op: str, stacks: Stacks) -> list[StackResult]:
        from sovra.infra import pulumi_stack as ps

        results = []
        for _, pairs, stack in stacks:
            self.say(f"pulumi {op}: stack {stack.name} ({', '.join(t.id for _, t in pairs)})")
            display, live = self._display()
            with live:
                results.append(getattr(ps, op)(stack, display))
        return results

    def _display(self) -> tuple[Any, Any]:
        from sovra.infra.pulumi_stack import EventDisplay

        if self.console.is_terminal:
            from rich.progress import Progress, SpinnerColumn, TextColumn

            progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), console=self.console,
                                transient=False)
            return EventDisplay(self.say, progress=progress), progress
        return (EventDisplay(lambda line: self.console.print(line, highlight=False, markup=False)),
                contextlib.nullcontext())


def provision(inputs: Inputs, result: FleetPlan, backend: str | None, env: str, engine: Engine, *,
              confirm: Callable[[], bool] | None) -> Inputs:
    """preview → confirm → up, for the placements that need Pulumi; returns the inputs with each provisioned target
    replaced by the endpoint its stack made, so `deploy.up` routes to it like an org endpoint. `confirm` asks
    whether to apply a preview with changes; None when there is no one to ask (then only --yes applies)."""
    from sovra.infra import pulumi_stack as ps

    found = provisioned(inputs, result)
    if not found:
        return inputs
    stacks = open_stacks(found, backend, env, inputs.org, lambda: service_keys(inputs, result))
    previews = engine("preview", stacks)
    if any(r.changed for r in previews):
        if confirm is None:
            raise ProvisionError("the preview above shows changes; re-run with --yes to apply them (no terminal to ask)")
        if not confirm():
            raise ProvisionError("nothing applied (answered no)")
    endpoints = []
    for (_, pairs, _), r in zip(stacks, engine("up", stacks), strict=True):
        made = ps.outputs_to_endpoints(r.outputs, [t for _, t in pairs])
        missing = sorted({t.id for _, t in pairs} - {e.id for e in made})
        if missing:
            raise ProvisionError(f"stack {r.stack} was applied but exports no endpoint for {', '.join(missing)}; "
                                 "`sovra refresh` shows its state, `sovra down` removes it")
        endpoints += made
    swapped = {e.id: e for e in endpoints}
    return dataclasses.replace(inputs, targets=tuple(swapped.get(t.id, t) for t in inputs.targets))


def refresh(found: Found, backend: str | None, env: str, org: Org, engine: Engine
            ) -> list[tuple[str, dict[str, int], Sequence[str]]]:
    """Per stack: its name, the resources changed outside Sovra (by operation), and why any resource's live region
    no longer satisfies the deployment's residency."""
    from sovra.infra import pulumi_stack as ps

    stacks = open_stacks(found, backend, env, org)  # a refresh reads state, it runs no program: no keys
    return [(r.stack, ps.drift(r), ps.residency_drift(stack, d, [t for _, t in pairs]))
            for (d, pairs, stack), r in zip(stacks, engine("refresh", stacks), strict=True)]


def destroy(inputs: Inputs, result: FleetPlan, backend: str | None, env: str, engine: Engine,
            note: Callable[[str], None]) -> None:
    """Destroy the Pulumi stacks of the deployments whose plan needs Pulumi (the plan says which); `note` gets one
    line per stack."""
    from sovra.infra import pulumi_stack as ps

    found = provisioned(inputs, result) if result.feasible else []
    s = ps.settings(backend, env)
    if s.local and found and ps.which_cli() is None:  # no CLI, so no stack was made here: nothing to destroy
        for d, _ in found:
            if not ps.has_local_stack(s, d.name):
                note(f"down: no Pulumi stack {s.stack_name(d.name)} in {s.backend_url}: nothing to destroy")
        found = [(d, pairs) for d, pairs in found if ps.has_local_stack(s, d.name)]
    for r in engine("destroy", open_stacks(found, backend, env, inputs.org)) if found else ():
        n = sum(v for op, v in r.changes.items() if op == "delete")
        note(f"[green]down[/]: stack {r.stack}: {n} resource(s) deleted")
