"""AWS SageMaker real-time endpoints: self-hosted replicas on GPU instances in one region.

The router calls an endpoint (named in org.yaml `endpoints:`, or created by `sovra up`'s Pulumi stack: its outputs
name it) through `sagemaker-runtime`. The body is OpenAI's chat request as JSON, which the Messages API of the TGI and LMI
(vLLM) containers takes; their answer is an OpenAI chat.completion, or TGI's `[{"generated_text": ...}]`. Streams
come through `invoke_endpoint_with_response_stream` as payload parts carrying server-sent events.

The body goes to the container as the client sent it (only `model` and `stream` set), so `tools`, `tool_choice`,
`response_format`, `stream_options`, `seed`, `stop`, `logprobs` reach a Messages-API container untouched and its
answer (tool calls included) comes back as it gave it; a container that cannot do one answers its own 4xx, which
the client gets as a 400 (`aws._model_error`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from pydantic import Field

from sovra.core.errors import ProviderError
from sovra.core.backends import Backend
from sovra.providers.clients import MAX_SSE_LINE, BackendClient, sse_event
from sovra.core.api_errors import AttemptFailed, BadRequest, Failed, building
from sovra.providers import openai_wire
from sovra.providers.aws import common as aws
from sovra.providers.base import Connection, LiveSetting, Locator, Provider

log = logging.getLogger("sovra.providers.aws.sagemaker")
_JSON = "application/json"
#: EndpointStatus values (botocore's sagemaker model, DescribeEndpoint) in which the endpoint still takes requests:
#: InService; Updating and SystemUpdating (an update or maintenance runs while the current variants serve);
#: RollingBack (back to its previous configuration, then InService); UpdateRollbackFailed ("in service with a mix
#: of the old and new endpoint configurations"). Creating, OutOfService, Deleting, Failed do not serve.
SERVING = frozenset({"InService", "Updating", "SystemUpdating", "RollingBack", "UpdateRollbackFailed"})


class SageMakerConnection(Connection):
    """An existing SageMaker endpoint and how to reach it; credentials come from boto3's standard chain."""

    endpoint: str | None = Field(default=None, pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$",
                                 description="Name of an existing real-time endpoint serving the model.")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$",
                               description="Region of the endpoint; default: the target's region.")
    profile: str | None = Field(default=None, min_length=1, pattern=r"^[\w.+=,@/-]+$",
                                description="AWS profile name to take credentials from; default: the standard chain.")
    streaming: bool = Field(default=True, description="The container streams (invoke_endpoint_with_response_stream: "
                            "TGI, LMI); false sends streamed requests whole and replays the answer as one chunk.")


class SageMaker(Provider):
    """Each replica is one endpoint instance; data stays in the endpoint's region."""

    name = "aws-sagemaker"
    component = "sovra.providers.aws.component:SageMakerEndpoint"
    extra = "aws"
    sdk_module = "boto3"
    scopes = {"regional": None}
    connection_model = SageMakerConnection
    direct_params = frozenset({"region", "streaming"})  # not `profile`: the router host's own AWS profile

    def describe(self) -> str:
        return "AWS SageMaker real-time inference endpoints (GPU instances, per instance-hour)"

    def client(self) -> BackendClient:
        return SageMakerClient()

    def direct_url(self, backend: Backend) -> str | None:
        region = backend.params.get("region")  # boto3's endpoint for it (an app's AWS_ENDPOINT_URL is its own)
        return f"https://runtime.sagemaker.{region}.amazonaws.com" if region else None

    def locate(self, target, model, connection) -> Locator:
        """The org-declared endpoint; Sovra does not create SageMaker endpoints yet."""
        if not isinstance(connection, SageMakerConnection) or not connection.endpoint:
            raise ProviderError(f"{target.id}: Sovra cannot create SageMaker endpoints yet; name an existing endpoint "
                                f"serving {model} under `endpoints:` in org.yaml (provider: aws-sagemaker, "
                                "connection: {endpoint: NAME, region: REGION})")
        params = {"region": connection.region or target.region}
        if connection.profile:
            params["profile"] = connection.profile
        if not connection.streaming:
            params["streaming"] = "false"
        return Locator(connection.endpoint, params)

    def live_settings(self, target, connection) -> list[LiveSetting]:
        """The region the endpoint really is in, from its ARN (the catalog says the target's region)."""
        loc = self.locate(target, "", connection)
        control = aws.AwsClients().get("sagemaker", loc.params["region"], loc.params.get("profile"))
        try:
            arn = control.describe_endpoint(EndpointName=loc.address)["EndpointArn"]
        except Exception as exc:  # any SDK failure, classified once by aws.verdict
            raise ProviderError(f"{target.id}: cannot describe endpoint {loc.address}: "
                                f"{aws.verdict(exc, target.id)}") from exc
        region = aws.region_of_arn(arn)
        return [LiveSetting(target.id, "endpoint region", region, aws.zone_of_regions([region]),
                            fix=f"the endpoint {loc.address} runs in {region}; the target says {target.region}: "
                                "set the target's region (and country) to the endpoint's, or name an endpoint in "
                                f"{target.region}")]


# -- answers -----------------------------------------------------------------------------------------------------


def answer(model: str, data: Any) -> dict[str, Any]:
    """A container's answer as an OpenAI chat.completion: passed through when it is one, else TGI's
    `[{"generated_text": ...}]` (or the object alone)."""
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("choices"), list):
        return data
    if isinstance(data, dict) and isinstance(data.get("generated_text"), str):
        details = data.get("details") or {}
        return openai_wire.completion(model, data["generated_text"], prompt_tokens=None,
                                      completion_tokens=details.get("generated_tokens"),
                                      finish_reason=_tgi_finish(details.get("finish_reason")))
    raise Failed(f"the endpoint answered neither an OpenAI chat.completion nor TGI's generated_text: {str(data)[:200]}")


def _tgi_finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


_DONE = object()


def sse_chunks(model: str, parts: Iterable[bytes], limit: int = MAX_SSE_LINE) -> Iterator[dict[str, Any]]:
    """Payload parts (bytes cut anywhere, even inside a UTF-8 sequence) as OpenAI chunks. Each line is an event:
    `data: {chat.completion.chunk}` (the Messages API), TGI's `data: {"token": ...}`, or a bare JSON line (LMI);
    `data: [DONE]` ends the stream. A line over `limit` bytes is a broken container (`Failed`), as for every
    backend; parts without a newline are appended, not re-joined, so a line cut small costs no more to read."""
    id, pending = openai_wire.new_id(), bytearray()
    for part in parts:
        pending += part
        if b"\n" in part:
            *lines, rest = bytes(pending).split(b"\n")
            pending = bytearray(rest)
            for line in lines:
                out = _event(model, id, _bounded(line, limit))
                if out is _DONE:
                    return
                if out is not None:
                    yield out
        _bounded(pending, limit)
    out = _event(model, id, bytes(pending))
    if out is not None and out is not _DONE:
        yield out


def _bounded(line: bytes | bytearray, limit: int) -> bytes | bytearray:
    if len(line) > limit:
        raise Failed(f"a server-sent-events line from the endpoint is over {limit} bytes")
    return line


def _event(model: str, id: str, raw: bytes) -> Any:
    line = raw.strip()
    if line.startswith(b"data:"):
        line = line[5:].strip()
    if line == b"[DONE]":
        return _DONE
    if not line.startswith(b"{"):
        return None  # blank lines, `event:`/`id:` fields, comments
    event = sse_event(line, "the endpoint")
    if "choices" in event:
        return event
    if "token" in event:  # TGI's own stream format
        details = event.get("details") or {}
        token = event["token"] or {}
        return openai_wire.chunk(model, id, content="" if token.get("special") else token.get("text", ""),
                                 finish_reason=_tgi_finish(details["finish_reason"]) if details else None)
    return None


def _parts(stream: Any) -> Iterator[bytes]:
    try:
        for event in stream:
            part = event.get("PayloadPart")
            if part:
                yield part.get("Bytes") or b""
    finally:
        stream.close()


def _embeddings(model: str, data: Any) -> dict[str, Any]:
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return data
    if isinstance(data, list) and all(isinstance(v, list) for v in data):  # TEI: one vector per input
        return openai_wire.embeddings(model, data)
    raise Failed(f"the endpoint's embedding answer has an unexpected shape: {str(data)[:200]}")


# -- the router's client -------------------------------------------------------------------------------------------


class SageMakerClient(BackendClient):
    """SageMaker backends: `address` is the endpoint name, `params` its region (and AWS profile, streaming)."""

    gen_ai_system = "aws.sagemaker"

    def __init__(self, clients: aws.AwsClients | None = None):
        self._clients = clients or aws.AwsClients()

    def _get(self, service: str, backend: Backend) -> Any:
        return self._clients.get(service, backend.params["region"], backend.params.get("profile"))

    def _body(self, backend: Backend, body: Mapping[str, Any], stream: bool) -> bytes:
        try:
            return json.dumps({**body, "model": backend.model, "stream": stream}, allow_nan=False).encode()
        except ValueError as exc:
            raise BadRequest(f"the request cannot be sent as JSON: {exc}") from None

    async def _invoke(self, backend: Backend, payload: bytes) -> Any:
        def run() -> bytes:
            resp = self._get("sagemaker-runtime", backend).invoke_endpoint(
                EndpointName=backend.address, Body=payload, ContentType=_JSON, Accept=_JSON)
            return resp["Body"].read()

        content = await aws.call(backend.target, run)
        try:
            return json.loads(content)
        except ValueError:
            raise Failed(f"{backend.target}: the endpoint answered with a body that is not JSON") from None

    async def chat(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        with building(backend.target):
            payload = self._body(backend, body, False)
        return answer(backend.model, await self._invoke(backend, payload))

    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        if backend.params.get("streaming") == "false":
            return openai_wire.replay(openai_wire.as_chunks(await self.chat(backend, body)))
        with building(backend.target):
            payload = self._body(backend, body, True)

        def start() -> Iterator[dict[str, Any]]:
            resp = self._get("sagemaker-runtime", backend).invoke_endpoint_with_response_stream(
                EndpointName=backend.address, Body=payload, ContentType=_JSON, Accept="text/event-stream")
            return sse_chunks(backend.model, _parts(resp["Body"]))

        return await openai_wire.first_then_rest(aws.events(backend.target, start))

    async def embed(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        """Text-embeddings-inference containers: `{"inputs": [...]}` -> one vector per input."""
        with building(backend.target):
            payload = json.dumps({"inputs": openai_wire.inputs_of(body)}).encode()
        return _embeddings(backend.model, await self._invoke(backend, payload))

    async def _state(self, backend: Backend) -> dict[str, Any]:
        d = await aws.call(backend.target, lambda: self._get("sagemaker", backend).describe_endpoint(
            EndpointName=backend.address))
        return {"status": d.get("EndpointStatus", ""), "endpoint": backend.address,
                "region": aws.region_of_arn(d.get("EndpointArn", ""))}

    async def health(self, backend: Backend) -> bool:
        """describe_endpoint says the endpoint serves (no payload is sent): see SERVING."""
        try:
            return (await self._state(backend))["status"] in SERVING
        except (AttemptFailed, BadRequest) as exc:
            log.debug("sagemaker health %s: %s", backend.target, exc)
            return False

    async def describe(self, backend: Backend) -> dict[str, Any]:
        return await self._state(backend)
