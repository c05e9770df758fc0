"""The bare Ray Serve ingress of `bench/router.py`: the least an ingress can do in front of a Sovra replica.

It forwards every POST's JSON body to the replica's `ModelServer` through a DeploymentHandle (`chat`, or
`chat_stream` as server-sent events when the body says `stream: true`), with no auth, no residency, no routing
choice, no metrics and no audit: what Ray Serve alone costs on the path `up` deploys. Built the way Sovra's router
application is built (`orchestrator.serving.ray_apps.router`: a raw ASGI app behind `serve.ingress`, one
replica, 0.25 CPU, 256 ongoing requests), and deployed declaratively next to it, as
`bench.serve_ingress:bare_ingress` (the repository root is on the cluster's PYTHONPATH).
"""

from __future__ import annotations

import json
from typing import Any


async def request_body(receive) -> bytes:
    """The whole request body from ASGI `receive` messages."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


def bare_ingress(args: dict[str, Any]):
    """Serve application builder: `args["model_app"]` is the Serve application of the replica to forward to. With
    `args["by_value"]` the handle calls go by value, as Sovra's router makes them (`providers.onprem.ray_client`);
    the bench then gives this app the router's Serve settings too (`infra.serve_config.ROUTER_SERVE_ENV`)."""
    from ray import serve

    model_app = args["model_app"]
    by_value = bool(args.get("by_value"))

    def build():  # Serve recognises an app *builder* by a zero-argument function
        handle = serve.get_deployment_handle("ModelServer", app_name=model_app)
        if by_value:
            handle = handle.options(_by_reference=False)
        stream_handle = handle.options(stream=True)

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            body = await request_body(receive)
            request = json.loads(body)
            if request.get("stream"):
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"text/event-stream")]})
                async for c in stream_handle.chat_stream.remote(request):
                    await send({"type": "http.response.body", "body": b"data: " + json.dumps(c).encode() + b"\n\n",
                                "more_body": True})
                await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
                return
            answer = json.dumps(await handle.chat.remote(request)).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": answer})

        return app

    deployment = serve.deployment(name="BareIngress", num_replicas=1, max_ongoing_requests=256,
                                  ray_actor_options={"num_cpus": 0.25})(serve.ingress(build)())
    return deployment.bind()


def handle_caller(args: dict[str, Any]):
    """Serve application builder for the baseline: a replica that calls the same `ModelServer` handle itself, as
    Sovra's router and the bare ingress do, with no HTTP request per call. One POST runs one whole measurement
    (`bench/loadgen.py`'s spec) inside this replica and answers its latencies: the measuring request's own HTTP
    hop is outside the clock."""
    from ray import serve

    model_app = args["model_app"]

    def build():
        from bench.loadgen import measure  # the repository root is on the cluster's PYTHONPATH

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            body = await request_body(receive)
            result = await measure({**json.loads(body), "kind": "handle", "app": model_app})
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": json.dumps(result).encode()})

        return app

    deployment = serve.deployment(name="HandleCaller", num_replicas=1, max_ongoing_requests=4,
                                  ray_actor_options={"num_cpus": 0.25})(serve.ingress(build)())
    return deployment.bind()
