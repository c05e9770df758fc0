"""The floor of any router built on Ray Serve, for `bench/gateway.py --floor`: a Serve app that forwards each POST to
an OpenAI-compatible server with the same pooled aiohttp client settings Sovra's router uses
(`providers.clients`), and nothing else — no tenant, residency, choice, breaker, metrics, audit or spend.

It runs on the Ray that README command 1's `sovra up` started, behind the same HAProxy ingress, as the router is
built (`orchestrator.serving.ray_apps.router`: a raw ASGI app behind `serve.ingress`, 0.25 CPU, 256 ongoing
requests, the router's Serve settings `infra.serve_config.ROUTER_SERVE_ENV`). What Sovra adds over this floor is
Sovra's own cost; what this floor adds over the servers called directly is the platform's.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from bench.serve_ingress import request_body


def floor_app(args: dict[str, Any]):
    """Serve application builder: `args["models"]` maps a model name to its servers' URLs (round-robin);
    `args["key"]` is the servers' bearer key."""
    from ray import serve

    models = {m: itertools.cycle(urls) for m, urls in args["models"].items()}
    auth = f"Bearer {args['key']}"

    def build():
        session = None

        async def app(scope, receive, send):
            nonlocal session
            if scope["type"] != "http":
                return
            import aiohttp

            if session is None:
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=512, limit_per_host=0, keepalive_timeout=4.0),
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=5), cookie_jar=aiohttp.DummyCookieJar())
            body = await request_body(receive)
            url = next(models[json.loads(body)["model"]]) + "/v1/chat/completions"
            async with session.post(url, data=body, allow_redirects=False, headers={
                    "Authorization": auth, "Content-Type": "application/json"}) as resp:
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": [(b"content-type", resp.headers.get("Content-Type", "").encode())]})
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})

        return app

    deployment = serve.deployment(name="Floor", max_ongoing_requests=256,
                                  ray_actor_options={"num_cpus": 0.25})(serve.ingress(build)())
    return deployment.bind()
