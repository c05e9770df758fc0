"""Placement engine (pure) and policy packs: residency, filters, costs and the MILP optimiser."""
