"""The keys that guard Sovra's own model servers: where a server reads its key, and how a key is derived from a
Ray cluster's token (so the token cannot be recovered from it). Shared by the servers, the router, `up` and the
KubeRay component."""

from __future__ import annotations

import hmac

#: Where the server's required key comes from (a Kubernetes Secret on a KubeRay cluster, or `install_replica_key`).
#: The server refuses to start without one (`require_key`).
KEY_VARIABLE = "SOVRA_SERVE_API_KEY"
#: What a Serve config says (app args `replica_key`) for a key derived from the cluster's Ray token.
FROM_RAY_TOKEN = "ray-token"
#: What each key derived from a Ray token is for: the replicas behind Serve's HAProxy ingress, and the KubeRay
#: services whose org names no `api_key_env` (one key per router cluster; the router derives it when it starts).
REPLICA_PURPOSE = b"sovra replica key v1"
SERVICE_PURPOSE = b"sovra kuberay service key v1"
#: The variable a router holds its derived KubeRay service key in; a KubeRay backend's `api_key_env` names it.
SERVICE_KEY_ENV = "SOVRA_KUBERAY_KEY"


def derive_key(token: str, purpose: bytes) -> str:
    """A key for `purpose` from a Ray cluster's token: an HMAC of it, so the token cannot be recovered from it."""
    return hmac.new(token.encode(), purpose, "sha256").hexdigest()
