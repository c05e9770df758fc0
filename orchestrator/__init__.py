"""Sovra: place model deployments where rules allow and money goes furthest, then route within residency."""

from sovra.core import __version__

__all__ = ["__version__"]
