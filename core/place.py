"""Where a target or backend processes data: the record the residency rule (`policies.residency`) judges."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Place:
    """Where a target or backend processes data, and whose law its operator answers to."""

    zone: str
    country: str | None
    jurisdiction: str
    operator: str = ""

    @classmethod
    def of(cls, target: object) -> Place:
        """The place of anything shaped like a Target (zone, country, operator)."""
        op = target.operator  # type: ignore[attr-defined]
        return cls(target.zone, target.country, op.jurisdiction, op.name)  # type: ignore[attr-defined]
