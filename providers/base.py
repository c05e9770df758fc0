"""The one interface every provider adapter implements, and the registry that finds them by name."""

from __future__ import annotations

import abc
import difflib
import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from sovra.core.errors import ProviderError
from sovra.core.spec.zones import zone_of

if TYPE_CHECKING:
    from sovra.core.backends import Backend
    from sovra.providers.clients import BackendClient
    from sovra.core.spec import Target

_REGISTRY: dict[str, type[Provider]] = {}


class Connection(BaseModel):
    """An adapter's non-secret settings for reaching an account or endpoint (org.yaml `connection:`); each adapter
    subclasses it with its own fields. Secrets have no field here: they come from the SDK's credential chain, or
    from an environment variable whose *name* is given (e.g. `api_key_env`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class Locator:
    """Where a backend is: what the adapter's client calls (`address`) and its other non-secret settings."""

    address: str
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LiveSetting:
    """One account setting that decides where a target really processes data, as read from the account.

    `zone` is the zone it implies; when it is wider than the catalog's, Sovra treats the target at `zone`.
    `fix` names the setting to pin and how."""

    target: str
    setting: str
    value: str
    zone: str
    fix: str = ""


class Provider(abc.ABC):
    """A cloud or cluster kind: how its own labels map to data zones, how the router reaches its backends
    (`client`), where a placement's backend is (`locate`), and what its account settings say (`live_settings`).

    Adapters are stateless and cheap to construct; their SDK is imported only on first use.
    """

    name: ClassVar[str]
    #: pip extra that installs this adapter's SDK, e.g. "aws".
    extra: ClassVar[str | None] = None
    #: top-level module of the SDK, imported lazily.
    sdk_module: ClassVar[str | None] = None
    #: how `sovra up` provisions placements here: "ray-serve" (a declarative Serve deploy on the cluster) or
    #: "pulumi" (a Pulumi stack).
    provisioner: ClassVar[str] = "pulumi"
    #: provider label -> zone; labels absent here are rejected with the valid ones listed.
    scopes: ClassVar[dict[str, str]] = {}
    #: the adapter's non-secret connection settings (org.yaml `connection:`).
    connection_model: ClassVar[type[Connection]] = Connection
    #: can an app call these backends itself (the SDK's direct mode, with its own credentials), from outside the
    #: cluster? Ray replicas cannot: they are reached only through the router.
    direct: ClassVar[bool] = True
    #: the backend params a tenant's direct-mode client is given (`/v1/routes`): what its client needs to reach the
    #: backend, never account internals (users, roles, subscription ids, the router host's profiles, the names of
    #: its key variables). The SDK keeps only these of whatever a table says.
    direct_params: ClassVar[frozenset[str]] = frozenset()
    #: do the model servers Sovra provisions here require a key, which `up` derives from the Ray token of the
    #: cluster whose router reaches them when org.yaml names none (`provision: {api_key_env: ...}`)?
    derives_service_key: ClassVar[bool] = False
    #: "module:Class" of the Pulumi component (a `providers.component.PlacementComponent`, in the vendor's folder)
    #: that creates this provider's dedicated endpoints or clusters; None: nothing is ever created here.
    component: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__abstractmethods__", None) and "name" in cls.__dict__:
            if cls.name in _REGISTRY:
                raise ValueError(f"provider {cls.name!r} registered twice")
            _REGISTRY[cls.name] = cls

    def zone_for_scope(self, scope: str, country: str | None) -> str:
        """Translate the provider's own processing label into a Sovra zone.

        `None` in `scopes` means "the region's own zone", for in-region deployment types.
        """
        key = scope.strip().lower()
        table = {k.lower(): v for k, v in self.scopes.items()}
        if key not in table:
            raise ValueError(
                f"{self.name}: unknown scope {scope!r}; valid: {', '.join(sorted(self.scopes)) or '(none)'}"
            )
        zone = table[key]
        if zone is None:
            if country is None:
                raise ValueError(f"{self.name}: scope {scope!r} is in-region, so the target needs a country")
            return zone_of(country)
        return zone

    def zone_for_target(self, scope: str, country: str | None, region: str) -> str:
        """A catalog target's zone from its scope, country and region; the scope alone, unless an adapter needs
        the region too (a Databricks workspace's Geo follows its cloud's region). A zone that is a span of places
        (`EU+UK+CH`) or GLOBAL drops the target's country: no one country is where it processes."""
        return self.zone_for_scope(scope, country)

    def sdk(self) -> ModuleType:
        """Import the provider's SDK, or say which extra installs it."""
        if self.sdk_module is None:
            raise ProviderError(f"provider {self.name} has no SDK")
        try:
            return importlib.import_module(self.sdk_module)
        except ImportError as exc:
            raise ProviderError(
                f"provider {self.name} needs {self.sdk_module}: pip install 'sovra[{self.extra}]'"
            ) from exc

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for `sovra targets` and docs: what this provider is."""

    def connection(self, raw: Mapping[str, object] | None) -> Connection:
        """Validate org.yaml `connection:` settings for this provider; errors name the valid fields."""
        try:
            return self.connection_model.model_validate(dict(raw or {}))
        except ValidationError as exc:
            fields = ", ".join(self.connection_model.model_fields) or "(none)"
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ProviderError(f"{self.name} connection: {where}: {first['msg']}; valid fields: {fields}") from None

    def client(self) -> BackendClient:
        """The router's client for this provider's backends (one per router replica; SDK imported lazily)."""
        raise ProviderError(f"the router cannot send requests to {self.name} backends")

    def direct_url(self, backend: Backend) -> str | None:
        """Where a direct-mode client sends `backend`'s payloads (and the app's credentials): scheme and host,
        which the app must have allowed; None when it cannot be told (then direct mode skips the backend)."""
        return None

    def locate(self, target: Target, model: str, connection: Connection) -> Locator:
        """The backend serving `model` at `target`, reached with `connection` (validated by `connection()`).
        Raises ProviderError, with the fix, when the placement needs an endpoint the org must name."""
        raise ProviderError(f"{self.name}: `up` cannot route to {target.id} yet; name an existing endpoint for it "
                            "under `endpoints:` in org.yaml")

    def live_settings(self, target: Target, connection: Connection) -> list[LiveSetting]:
        """Read, from the account, the settings that decide where `target` really processes data. Empty when the
        provider has none (the catalog's zone is all there is)."""
        return []


def get(name: str) -> Provider:
    """The adapter registered as `name`; unknown names get a did-you-mean."""
    _load_adapters()
    try:
        return _REGISTRY[name]()
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ProviderError(f"unknown provider {name!r}{hint} Known: {', '.join(sorted(_REGISTRY))}") from None


def needs_provisioning(target: Target) -> bool:
    """A placement on `target` needs something created first (a dedicated endpoint or cluster, by Pulumi): its
    provider provisions with Pulumi, it offers instances rather than per-token models, and it is not an endpoint the
    org already has. The one statement of that rule, for `up`'s routing and its Pulumi step alike."""
    from sovra.core.spec.org import Endpoint

    return (get(target.provider).provisioner == "pulumi" and bool(target.accelerators)
            and not isinstance(target, Endpoint))


def serve_deployed(provider: str) -> bool:
    """Placements on this provider's clusters are deployed on Ray Serve (its adapter says), so an address-less
    cluster of it is the embedded local Ray."""
    return get(provider).provisioner == "ray-serve"


def for_tenant(backend: Backend) -> Backend:
    """The narrowed form of `backend` that `/v1/routes` gives a tenant for direct mode (and all the SDK keeps of a
    table): only the params its kind's direct client needs (`Provider.direct_params`); a kind only the router can
    call keeps none. The full record stays in the router's config. Unknown kinds raise, naming the known ones."""
    provider = get(backend.kind)
    return backend.keeping(provider.direct_params if provider.direct else frozenset())


def direct_view(backend: Backend) -> Backend | None:
    """What a tenant's direct-mode client may see of `backend` (`for_tenant`), or None when only the router can call
    it. The router is handed this function by its composition root; it imports no provider."""
    return for_tenant(backend) if get(backend.kind).direct else None


def check_kinds(backends: Iterable[Backend]) -> None:
    """Every backend's `kind` names a registered adapter (ProviderError with a did-you-mean otherwise): a routing
    table is checked once, where it is loaded, not at its first request."""
    for kind in {b.kind for b in backends}:
        get(kind)


def names() -> tuple[str, ...]:
    """Every registered provider name, sorted."""
    _load_adapters()
    return tuple(sorted(_REGISTRY))


def _load_adapters() -> None:
    # The one place adapters are listed: importing them registers them (no SDK is imported). One vendor, one folder.
    import sovra.providers.aws.bedrock  # noqa: F401
    import sovra.providers.aws.sagemaker  # noqa: F401
    import sovra.providers.azure.foundry  # noqa: F401
    import sovra.providers.azure.ml  # noqa: F401
    import sovra.providers.databricks.provider  # noqa: F401
    import sovra.providers.onprem.provider  # noqa: F401
    import sovra.providers.openai_compatible.provider  # noqa: F401
    import sovra.providers.snowflake.provider  # noqa: F401
