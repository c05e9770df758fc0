"""What runs on Ray: model servers (one Serve app per deployment) and the router ingress."""
