"""The request router: residency gate, tenants, backend choice, dispatch with failover inside the allowed set."""
