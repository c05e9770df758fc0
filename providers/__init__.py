"""One adapter per provider, registered by name in `providers.base`; cloud SDKs are imported lazily."""

from sovra.providers.base import Provider, get, names

__all__ = ["Provider", "get", "names"]
