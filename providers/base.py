"""The one interface every provider adapter implements, and the registry that finds them by name."""

from __future__ import annotations

import abc
import difflib
import importlib
from types import ModuleType
from typing import ClassVar

from orchestrator.errors import ProviderError
from orchestrator.spec.zones import zone_of

_REGISTRY: dict[str, type[Provider]] = {}


class Provider(abc.ABC):
    """A cloud or cluster kind: how its own labels map to data zones, and (later) how to reach it.

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


def get(name: str) -> Provider:
    """The adapter registered as `name`; unknown names get a did-you-mean."""
    _load_adapters()
    try:
        return _REGISTRY[name]()
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ProviderError(f"unknown provider {name!r}{hint} Known: {', '.join(sorted(_REGISTRY))}") from None


def names() -> tuple[str, ...]:
    """Every registered provider name, sorted."""
    _load_adapters()
    return tuple(sorted(_REGISTRY))


def _load_adapters() -> None:
    # The one place adapters are listed: importing them registers them (no SDK is imported).
    from providers import azure_ml, bedrock, databricks, onprem, sagemaker, snowflake  # noqa: F401
