"""Sovra: place model deployments where rules allow and money goes furthest, then route within residency.

Installed as one namespace: `sovra.core` (the ground: spec, errors, Backend, Place), `sovra.policies`,
`sovra.providers`, `sovra.infra` and `sovra.orchestrator`; the repository keeps those folders at its top level,
mapped here by the build configuration (pyproject.toml `[tool.setuptools] package-dir`). Importing this package
imports none of them, so no cloud SDK, Ray or Pulumi.
"""

__version__ = "0.1.0"
