"""Sovra: place model deployments where rules allow and money goes furthest, then route within residency."""

__version__ = "0.1.0"
