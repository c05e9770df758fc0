"""AWS Bedrock: managed models priced per token, called in-region or through inference profiles.

Where Bedrock processes a request is decided by the model id the router sends: a plain id (`mistral.mistral-7b-
instruct-v0:2`) runs in the client's region; a geographic profile id (`eu.`, `us.`, `apac.`, ...) may run in any
region of that geography; a `global.` profile anywhere. So `locate` builds the id from the target's scope, and
`live_settings` reads the profile's regions from the account rather than trusting the prefix.

The router speaks OpenAI's chat format; Bedrock's Converse API is translated here (`converse_request`, `answer`,
`stream_chunks`). Embeddings go through InvokeModel for the Titan and Cohere embedding models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from pydantic import Field

from orchestrator.errors import ProviderError
from orchestrator.router.backends import Backend
from orchestrator.router.clients import BackendClient
from orchestrator.router.errors import AttemptFailed, BadRequest, Failed, building
from providers import aws, openai_wire
from providers.base import Connection, LiveSetting, Locator, Provider

log = logging.getLogger("sovra.providers.bedrock")

#: Converse stopReason -> OpenAI finish_reason
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "content_filtered": "content_filter", "guardrail_intervened": "content_filter"}


class BedrockConnection(Connection):
    """How to reach Bedrock: credentials from boto3's standard chain, optionally a named AWS profile. The region is
    the target's own (the source region of its profile), never set here, so the catalog's place stays true."""

    profile: str | None = Field(default=None, min_length=1, pattern=r"^[\w.+=,@/-]+$",
                                description="AWS profile name (in ~/.aws/config) to take credentials from; "
                                "default: boto3's standard credential chain.")


class Bedrock(Provider):
    """Bedrock's cross-region inference profiles route within a geography (`eu.`, `us.`, `apac.`) or anywhere (`global.`)."""

    name = "aws-bedrock"
    extra = "aws"
    sdk_module = "boto3"
    scopes = {"in-region": None, "eu": "EU", "us": "US", "us-gov": "US", "apac": "APAC", "ca": "CA", "jp": "APAC",
              "au": "APAC", "global": "GLOBAL"}
    connection_model = BedrockConnection
    direct_params = frozenset({"region"})  # not `profile`: the router host's own AWS profile

    def describe(self) -> str:
        return "AWS Bedrock managed models (per token; in-region, geographic or global inference profiles)"

    def client(self) -> BackendClient:
        return BedrockClient()

    def direct_url(self, backend: Backend) -> str | None:
        region = backend.params.get("region")  # boto3's endpoint for it (an app's AWS_ENDPOINT_URL is its own)
        return f"https://bedrock-runtime.{region}.amazonaws.com" if region else None

    def locate(self, target, model, connection) -> Locator:
        """The vendor model id, prefixed by the target's inference-profile scope; params: the source region."""
        offered = target.model_price(model)
        if offered is None:
            names = ", ".join(m.name for m in target.models) or "none"
            raise ProviderError(f"{target.id} does not offer {model!r}; it offers: {names}")
        scope = (target.scope or "in-region").strip().lower()
        if scope not in self.scopes:
            raise ProviderError(f"{target.id}: unknown Bedrock scope {scope!r}; valid: {', '.join(self.scopes)}")
        address = model_id(offered.id or offered.name, scope, target.id)
        params = {"region": target.region}
        if isinstance(connection, BedrockConnection) and connection.profile:
            params["profile"] = connection.profile
        return Locator(address, params)

    def live_settings(self, target, connection) -> list[LiveSetting]:
        """For each profile id the target uses, the zone its regions (as the account reports them) amount to."""
        profile = connection.profile if isinstance(connection, BedrockConnection) else None
        control = aws.AwsClients().get("bedrock", target.region, profile)
        out = []
        for m in target.models:
            address = self.locate(target, m.name, connection).address
            if profile_prefix(address) is None and not address.startswith("arn:"):
                continue  # an in-region id: no account setting widens it
            try:
                regions = profile_regions(control.get_inference_profile(inferenceProfileIdentifier=address))
            except Exception as exc:  # any SDK failure, classified once by aws.verdict
                raise ProviderError(f"{target.id}: cannot read inference profile {address}: "
                                    f"{aws.verdict(exc, target.id)}") from exc
            out.append(LiveSetting(
                target.id, "inference profile", address, aws.zone_of_regions(regions),
                fix=f"the profile may process in {', '.join(sorted(regions)) or 'no region'}; to pin processing, "
                    f"give model {m.name} of {target.id} an `id:` with a narrower prefix (e.g. eu.) or a plain "
                    f"in-region id, with the target's `scope` to match"))
        return out


def profile_prefix(model: str) -> str | None:
    """The inference-profile prefix of a Bedrock id (`eu` of `eu.mistral.pixtral-large-2502-v1:0`), else None."""
    head = model.split(".", 1)[0].lower() if "." in model else ""
    return head if head in Bedrock.scopes and head != "in-region" else None


def model_id(vendor_id: str, scope: str, where: str = "") -> str:
    """The id the router sends for a target of `scope`: `eu` -> `eu.<id>`; `in-region` -> the plain id. An id that
    already carries a prefix (or is an ARN) is kept, but must agree with the scope."""
    if vendor_id.startswith("arn:"):
        return vendor_id
    has = profile_prefix(vendor_id)
    want = None if scope == "in-region" else scope
    if has is not None:
        if has != want:
            raise ProviderError(f"{where}: model id {vendor_id!r} is a {has}. inference profile, but the target's "
                                f"scope is {scope}; make them agree")
        return vendor_id
    return vendor_id if want is None else f"{want}.{vendor_id}"


def zone_for_model_id(model: str, region: str) -> str:
    """The zone a request to Bedrock id `model` (a plain id, a profile id or a profile ARN) from `region` may be
    processed in: the profile's geography, GLOBAL for `global.` or an application profile (unknown without reading
    it), else the region's own zone."""
    tail = model.rsplit("/", 1)[-1] if model.startswith("arn:") else model
    prefix = profile_prefix(tail)
    if prefix is not None:
        return Bedrock.scopes[prefix]
    if model.startswith("arn:") and ":inference-profile/" not in model and ":foundation-model/" not in model:
        return "GLOBAL"
    return aws.zone_of_regions([region])


def profile_regions(profile: Mapping[str, Any]) -> list[str]:
    """The regions a `get_inference_profile` answer routes to (from its models' ARNs)."""
    return sorted({aws.region_of_arn(m.get("modelArn", "")) for m in profile.get("models") or ()} - {""})


# -- OpenAI <-> Converse ---------------------------------------------------------------------------------------------


def converse_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat body as Converse arguments: system prompts apart, consecutive turns of one role merged (Converse
    wants them alternating), sampling settings in `inferenceConfig`. Only text is carried: anything else is a 400
    rather than silently dropped."""
    if body.get("tools") or body.get("functions"):
        raise BadRequest("aws-bedrock backends take text chat only here; tools are not translated")
    if int(body.get("n") or 1) != 1:
        raise BadRequest("aws-bedrock answers one choice per request; n must be 1")
    system, turns = openai_wire.split_system(body.get("messages") or [])
    messages: list[dict[str, Any]] = []
    for m in turns:
        role, content = m.get("role"), m.get("content")
        if role not in ("user", "assistant"):
            raise BadRequest(f"aws-bedrock: a message with role {role!r} cannot be sent (system, user, assistant)")
        if isinstance(content, list) and any(not isinstance(p, Mapping) or p.get("type") != "text" for p in content):
            raise BadRequest("aws-bedrock: only text content parts are translated")
        block = {"text": openai_wire.text_of(content)}
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].append(block)
        else:
            messages.append({"role": role, "content": [block]})
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = [{"text": s} for s in system]
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    for key, value in (("maxTokens", max_tokens), ("temperature", body.get("temperature")),
                       ("topP", body.get("top_p"))):
        if value is not None:
            config[key] = value
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if config:
        out["inferenceConfig"] = config
    return out


def openai_messages(request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Converse arguments back as OpenAI messages (system first, one message per text block): the inverse of
    `converse_request` for text chat, used to check the translation and by the Bedrock emulator."""
    out: list[dict[str, Any]] = [{"role": "system", "content": s.get("text", "")} for s in request.get("system") or ()]
    for m in request.get("messages") or ():
        out += [{"role": m["role"], "content": b["text"]} for b in m.get("content") or () if "text" in b]
    return out


def answer(model: str, resp: Mapping[str, Any]) -> dict[str, Any]:
    """A Converse answer as an OpenAI chat.completion, with Converse's token usage."""
    content = resp["output"]["message"]["content"]
    usage = resp.get("usage") or {}
    return openai_wire.completion(model, "".join(b.get("text", "") for b in content),
                                  finish_reason=FINISH.get(resp.get("stopReason"), "stop"),
                                  prompt_tokens=usage.get("inputTokens"), completion_tokens=usage.get("outputTokens"))


def stream_chunks(model: str, events: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """ConverseStream events as OpenAI chunks: the role first, each text delta, then the finish reason with the
    usage (Converse sends `messageStop`, then `metadata` with the usage)."""
    id, finish, ended = openai_wire.new_id(), None, False
    for event in events:
        if "messageStart" in event:
            yield openai_wire.chunk(model, id, role="assistant", content="")
        elif "contentBlockDelta" in event:
            text = (event["contentBlockDelta"].get("delta") or {}).get("text")
            if text:
                yield openai_wire.chunk(model, id, content=text)
        elif "messageStop" in event:
            finish = FINISH.get(event["messageStop"].get("stopReason"), "stop")
        elif "metadata" in event:
            u = event["metadata"].get("usage") or {}
            ended = True
            yield openai_wire.chunk(model, id, finish_reason=finish or "stop",
                                    usage_=openai_wire.usage(u.get("inputTokens"), u.get("outputTokens")))
    if not ended and finish is not None:
        yield openai_wire.chunk(model, id, finish_reason=finish)


def embedding_payloads(body: Mapping[str, Any], *, cohere: bool) -> list[str]:
    """The InvokeModel bodies for an OpenAI embeddings request: one for a Cohere model (every text), else one per
    input for a Titan model (with `dimensions` when asked)."""
    inputs = openai_wire.inputs_of(body)
    if cohere:
        return [json.dumps({"texts": inputs, "input_type": "search_document"})]
    extra = {"dimensions": int(body["dimensions"])} if body.get("dimensions") else {}
    return [json.dumps({"inputText": text, **extra}) for text in inputs]


def _closing(stream: Any, model: str) -> Iterator[dict[str, Any]]:
    try:
        yield from stream_chunks(model, stream)
    finally:
        stream.close()  # release the HTTP connection when the caller stops early


# -- the router's client -------------------------------------------------------------------------------------------


class BedrockClient(BackendClient):
    """Bedrock backends: `address` is the model or profile id, `params` the region (and AWS profile)."""

    def __init__(self, clients: aws.AwsClients | None = None):
        self._clients = clients or aws.AwsClients()

    def _get(self, service: str, backend: Backend) -> Any:
        return self._clients.get(service, backend.params["region"], backend.params.get("profile"))

    async def chat(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        with building(backend.target):
            request = converse_request(body)
        resp = await aws.call(backend.target, lambda: self._get("bedrock-runtime", backend).converse(
            modelId=backend.address, **request))
        try:
            return answer(backend.model, resp)
        except (KeyError, TypeError) as exc:
            raise Failed(f"Converse answered without {exc}") from None

    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        with building(backend.target):
            request = converse_request(body)

        # Bounded without a line cap of ours: botocore's event-stream decoder refuses a message over 24 MB
        # (`botocore.eventstream._MAX_PAYLOAD_LENGTH`), and each message is one event.
        def start() -> Iterator[dict[str, Any]]:
            resp = self._get("bedrock-runtime", backend).converse_stream(modelId=backend.address, **request)
            return _closing(resp["stream"], backend.model)

        return await openai_wire.first_then_rest(aws.events(backend.target, start))

    async def embed(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        """Titan (one InvokeModel per input) or Cohere (one per request) embedding models. Every payload is built
        before the first is sent, so a request Bedrock cannot take never counts against the backend."""
        cohere = ".cohere.embed" in f".{backend.address}"
        with building(backend.target):
            payloads = embedding_payloads(body, cohere=cohere)

        def invoke(payload: str) -> dict[str, Any]:
            resp = self._get("bedrock-runtime", backend).invoke_model(modelId=backend.address, body=payload,
                                     contentType="application/json", accept="application/json")
            return json.loads(resp["body"].read())

        try:
            if cohere:
                data = await aws.call(backend.target, lambda: invoke(payloads[0]))
                return openai_wire.embeddings(backend.model, data["embeddings"])
            vectors, tokens = [], 0
            for i, payload in enumerate(payloads):
                try:
                    data = await aws.call(backend.target, lambda p=payload: invoke(p))
                except AttemptFailed as exc:
                    if i and exc.resend:  # earlier inputs were processed: the request as a whole is not resendable
                        raise Failed(f"{exc} (after {i} of {len(payloads)} inputs were embedded)") from exc
                    raise
                vectors.append(data["embedding"])
                tokens += int(data.get("inputTextTokenCount") or 0)
            return openai_wire.embeddings(backend.model, vectors, tokens)
        except (KeyError, TypeError, ValueError) as exc:  # only the answers are read in here
            raise Failed(f"the embedding answer has an unexpected shape ({exc!r})") from None

    async def _state(self, backend: Backend) -> dict[str, Any]:
        def control() -> Any:
            return self._get("bedrock", backend)

        if profile_prefix(backend.address) or backend.address.startswith("arn:"):
            p = await aws.call(backend.target, lambda: control().get_inference_profile(
                inferenceProfileIdentifier=backend.address))
            return {"status": p.get("status", ""), "profile": backend.address, "regions": profile_regions(p)}
        d = (await aws.call(backend.target, lambda: control().get_foundation_model(
            modelIdentifier=backend.address))).get("modelDetails") or {}
        return {"status": (d.get("modelLifecycle") or {}).get("status", ""), "model": backend.address,
                "streaming": bool(d.get("responseStreamingSupported"))}

    async def health(self, backend: Backend) -> bool:
        """The control plane says the profile or model is ACTIVE (no payload is sent)."""
        try:
            return (await self._state(backend))["status"] == "ACTIVE"
        except (AttemptFailed, BadRequest) as exc:
            log.debug("bedrock health %s: %s", backend.target, exc)
            return False

    async def describe(self, backend: Backend) -> dict[str, Any]:
        return await self._state(backend)
