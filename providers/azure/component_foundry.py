"""An Azure AI Foundry model deployment: an Azure AI services resource (`Microsoft.CognitiveServices/accounts`, kind
AIServices) in the target's region and one deployment in it, whose type (`sku.name`) and capacity decide where and
how much it serves (pulumi-azure-native cognitiveservices `Account`, `Deployment`, `list_account_keys`).

A deployment has no `location` of its own: it processes where its type says, around its resource's region. So the
type is checked here, through the adapter's one translation of types into zones, before anything is declared: a
type whose zone is not the target's is refused like a resource in a foreign region. The resource itself carries the
target's region, which the residency guard checks as for every Azure resource.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi_azure_native import cognitiveservices as cs

from sovra.providers.component import PlacementComponent, PlacementInput
from sovra.policies.guard import ResidencyGuardError
from sovra.core.provision import AzureFoundrySettings
from sovra.providers.azure.foundry import AzureFoundry, sku_name

INFERENCE_ENDPOINT = "Azure AI Model Inference API"


class AzureFoundryDeployment(PlacementComponent):
    """A key-enabled AI services resource and one model deployment of the target's type (or the one `provision:`
    names) with the capacity asked. The resource's first key is exported as a secret (none with Entra ID only)."""

    type_token = "sovra:azure:AzureFoundryDeployment"

    def build(self, name: str, inputs: PlacementInput) -> None:
        s = inputs.parse_settings(AzureFoundrySettings)
        t, tags = inputs.target, inputs.tags
        sku = self.deployment_type(s)
        self._check_type(sku)
        account_name = s.account or inputs.slug(limit=64)
        account = cs.Account(
            f"{name}-account", resource_group_name=s.resource_group, account_name=account_name,
            location=t.region, kind="AIServices", sku={"name": "S0"}, tags=tags,
            properties={"custom_sub_domain_name": account_name, "public_network_access": "Enabled",
                        "disable_local_auth": s.disable_local_auth},
            opts=self.child())
        deployment = cs.Deployment(
            f"{name}-deployment", resource_group_name=s.resource_group, account_name=account.name,
            deployment_name=s.deployment or inputs.slug(limit=64), tags=tags,
            sku={"name": sku, "capacity": s.capacity},
            properties={"model": {"format": s.model_format, "name": s.model_name.format(model=inputs.model),
                                  "version": s.model_version}},
            opts=self.child())
        self.endpoint_name = deployment.name
        self.scoring_uri = account.properties.apply(lambda p: (p.endpoints or {}).get(INFERENCE_ENDPOINT) or "")
        if s.disable_local_auth:
            self.key = pulumi.Output.from_input(None)
        else:
            keys = cs.list_account_keys_output(resource_group_name=s.resource_group, account_name=account.name,
                                               opts=pulumi.InvokeOutputOptions(parent=self))
            self.key = pulumi.Output.secret(keys.apply(lambda k: k.key1))
        self._where = {"subscription_id": account.id.apply(lambda i: i.split("/")[2] if i.count("/") > 2 else ""),
                       "resource_group": s.resource_group, "account": account.name, "deployment_type": sku,
                       "auth": "entra" if s.disable_local_auth else "key"}

    def deployment_type(self, s: AzureFoundrySettings) -> str:
        """The deployment's `sku.name`: `provision: {deployment_type}`, else the target's scope."""
        label = s.deployment_type or self.inputs.target.scope
        if not label:
            raise ResidencyGuardError([(f"{self.inputs.target.id}: a Foundry deployment needs a deployment type; "
                                        "give the target a `scope` or `provision: {deployment_type: ...}`")])
        return sku_name(label)

    def _check_type(self, sku: str) -> None:
        t, rule = self.inputs.target, self.inputs.rule
        label = f"azure-native:cognitiveservices:Deployment ({sku})"
        if rule.refusals:
            raise ResidencyGuardError([f"{label}: {rule.why}, which the target fails: {'; '.join(rule.refusals)}"])
        try:
            zone = AzureFoundry().zone_for_deployment(sku, t.region)
        except ValueError as exc:
            raise ResidencyGuardError([f"{label}: {exc} (rule: {rule.why})"]) from None
        if zone != t.zone:
            raise ResidencyGuardError([(f"{label}: would process in {zone}, outside the target's {t.zone} "
                                        f"(rule: {rule.why}); deploy a type that processes in {t.zone} or re-plan")])

    def connection(self) -> dict[str, Any]:
        return {**self._where, "deployment": self.endpoint_name}
