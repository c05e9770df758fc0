"""AWS Bedrock: managed models priced per token, called in-region or through inference profiles.

Where Bedrock processes a request is decided by the model id the router sends: a plain id (`mistral.mistral-7b-
instruct-v0:2`) runs in the client's region; a geographic profile id (`eu.`, `us.`, `apac.`, ...) may run in any
region of that geography; a `global.` profile anywhere. So `locate` builds the id from the target's scope, and
`live_settings` reads the profile's regions from the account rather than trusting the prefix.

The router speaks OpenAI's chat format; Bedrock's Converse API is translated in `bedrock_converse` (tools
included). Embeddings go through InvokeModel for the Titan and Cohere embedding models.

A target whose id Bedrock cannot serve (a plain id of a profile-only model, an id that does not exist) is the
backend's fault, not the client's: the attempt is refused with the backend taken out (`aws.verdict`), its health
stays false while the account says so, `describe` (`sovra status`) says why, and `live_settings` (`sovra audit
settings`) names the inference profile to use.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from pydantic import Field

from sovra.core.errors import ProviderError
from sovra.core.backends import Backend
from sovra.providers.clients import BackendClient
from sovra.core.api_errors import AttemptFailed, BadRequest, Failed, building
from sovra.providers import openai_wire
from sovra.providers.aws import common as aws
from sovra.providers.base import Connection, LiveSetting, Locator, Provider
from sovra.providers.aws.bedrock_converse import FINISH, answer, converse_request, openai_messages, stream_chunks

log = logging.getLogger("sovra.providers.aws.bedrock")
__all__ = ["FINISH", "Bedrock", "BedrockClient", "answer", "converse_request", "openai_messages", "stream_chunks"]

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
        """For each profile id the target uses, the zone its regions (as the account reports them) amount to. A
        plain id that Bedrock serves only through inference profiles is no setting but a target that cannot
        serve: a ProviderError naming the profile to use (the report lists the target as unread, held out)."""
        profile = connection.profile if isinstance(connection, BedrockConnection) else None
        control = aws.AwsClients().get("bedrock", target.region, profile)
        out = []
        for m in target.models:
            address = self.locate(target, m.name, connection).address
            if profile_prefix(address) is None and not address.startswith("arn:"):
                self._check_on_demand(target, control, address)  # an in-region id: no account setting widens it
                continue
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

    @staticmethod
    def _check_on_demand(target, control: Any, address: str) -> None:
        try:
            details = control.get_foundation_model(modelIdentifier=address).get("modelDetails") or {}
            if on_demand(details):
                return
            profiles = profiles_for(control, address)
        except Exception as exc:  # any SDK failure, classified once by aws.verdict
            raise ProviderError(f"{target.id}: cannot read model {address}: {aws.verdict(exc, target.id)}") from exc
        raise ProviderError(needs_profile(address, profiles, target.id, target.zone) + "; until then this target "
                            "cannot serve")


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


# -- embeddings (InvokeModel) ---------------------------------------------------------------------------------------


#: Cohere Embed on Bedrock takes at most 96 texts per InvokeModel call
#: (docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-embed.html, ...-embed-v4.html).
COHERE_BATCH = 96
#: Embed v4's `output_dimension` values (model-parameters-embed-v4.html).
COHERE_V4_DIMENSIONS = (256, 512, 1024, 1536)


def is_cohere(model: str) -> bool:
    return ".cohere.embed" in f".{model}"


def embedding_payloads(body: Mapping[str, Any], model: str, where: str = "aws-bedrock") -> list[str]:
    """The InvokeModel bodies for an OpenAI embeddings request: for a Cohere model, one per batch of 96 texts (Embed
    v4 asked for `float` embeddings, with `dimensions` as its `output_dimension`); for a Titan model one per input
    (with `dimensions` when asked)."""
    inputs = openai_wire.inputs_of(body)
    dims = body.get("dimensions")
    if not is_cohere(model):
        extra = {"dimensions": int(dims)} if dims else {}
        return [json.dumps({"inputText": text, **extra}) for text in inputs]
    extra: dict[str, Any] = {}
    if "cohere.embed-v4" in model:
        extra["embedding_types"] = ["float"]
        if dims:
            if int(dims) not in COHERE_V4_DIMENSIONS:
                raise ValueError(f"{where}: Cohere Embed v4 takes `dimensions` "
                                 f"{', '.join(map(str, COHERE_V4_DIMENSIONS))}, not {dims}")
            extra["output_dimension"] = int(dims)
    elif dims:
        raise ValueError(f"{where}: Cohere Embed v3 answers its own size only; send the request without `dimensions`")
    return [json.dumps({"texts": inputs[i:i + COHERE_BATCH], "input_type": "search_document", **extra})
            for i in range(0, len(inputs), COHERE_BATCH)]


def embedding_vectors(data: Mapping[str, Any], *, cohere: bool) -> list[list[float]]:
    """The vectors of one InvokeModel answer: Titan's `embedding`; Cohere's `embeddings`, a list (v3's float
    answer) or an object keyed by embedding type (`{"float": [...]}`: v4, or v3 given `embedding_types`)."""
    if not cohere:
        return [list(data["embedding"])]
    found = data["embeddings"]
    if isinstance(found, Mapping):
        found = found["float"]
    return [list(v) for v in found]


def base64_vectors(answer: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's `encoding_format: base64`: each vector as little-endian float32 bytes, base64-encoded."""
    for item in answer["data"]:
        v = item["embedding"]
        item["embedding"] = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
    return answer


def _closing(stream: Any, model: str, include_usage: bool) -> Iterator[dict[str, Any]]:
    try:
        yield from stream_chunks(model, stream, include_usage=include_usage)
    finally:
        stream.close()  # release the HTTP connection when the caller stops early


# -- the backend's own state: lifecycle, and whether its id can be called at all ------------------------------------

#: Lifecycle states that serve (botocore `FoundationModelLifecycleStatus`: ACTIVE, or LEGACY = deprecated but
#: still invocable until its end-of-life date; `InferenceProfileStatus` has only ACTIVE).
SERVING = frozenset({"ACTIVE", "LEGACY"})


def on_demand(details: Mapping[str, Any]) -> bool:
    """Whether a plain model id can be invoked on demand: `inferenceTypesSupported` lists ON_DEMAND. Newer models
    list only INFERENCE_PROFILE (a value Bedrock answers beyond botocore's `InferenceType` enum)."""
    kinds = details.get("inferenceTypesSupported")
    return kinds is None or "ON_DEMAND" in kinds


def profiles_for(control: Any, vendor_id: str) -> list[str]:
    """The system-defined inference profiles of this account and region that contain `vendor_id`
    (ListInferenceProfiles, every page)."""
    found, token = [], None
    while True:
        page = control.list_inference_profiles(typeEquals="SYSTEM_DEFINED", **({"nextToken": token} if token else {}))
        for p in page.get("inferenceProfileSummaries") or ():
            if any(m.get("modelArn", "").endswith(f"foundation-model/{vendor_id}") for m in p.get("models") or ()):
                found.append(p["inferenceProfileId"])
        token = page.get("nextToken")
        if not token:
            return sorted(found)


def needs_profile(address: str, profiles: list[str], where: str, zone: str | None = None) -> str:
    """What to tell an operator whose target calls a profile-only model by its plain id: the profile to use (one of
    the target's own zone first)."""
    fitting = [p for p in profiles if zone is not None and Bedrock.scopes.get(profile_prefix(p) or "") == zone]
    offer = fitting or profiles
    if not offer:
        return (f"{where}: Bedrock offers {address} only through an inference profile, and this account has none "
                "that contains it in this region")
    best = offer[0]
    return (f"{where}: Bedrock offers {address} only through an inference profile, not on demand by its plain id; "
            f"use `{best}`" + (f" (or {', '.join(offer[1:])})" if offer[1:] else "") +
            f": give the model `id: {best}` and the target `scope: {profile_prefix(best)}`, and check that zone is "
            "allowed where it is used")


# -- the router's client -------------------------------------------------------------------------------------------


class BedrockClient(BackendClient):
    """Bedrock backends: `address` is the model or profile id, `params` the region (and AWS profile)."""

    gen_ai_system = "aws.bedrock"

    def __init__(self, clients: aws.AwsClients | None = None):
        self._clients = clients or aws.AwsClients()

    def _get(self, service: str, backend: Backend) -> Any:
        return self._clients.get(service, backend.params["region"], backend.params.get("profile"))

    async def chat(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        with building(backend.target):
            request = converse_request(body, backend.target)
        resp = await aws.call(backend.target, lambda: self._get("bedrock-runtime", backend).converse(
            modelId=backend.address, **request))
        try:
            return answer(backend.model, resp)
        except (KeyError, TypeError) as exc:
            raise Failed(f"Converse answered without {exc}") from None

    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        with building(backend.target):
            request = converse_request(body, backend.target)
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        # Bounded without a line cap of ours: botocore's event-stream decoder refuses a message over 24 MB
        # (`botocore.eventstream._MAX_PAYLOAD_LENGTH`), and each message is one event.
        def start() -> Iterator[dict[str, Any]]:
            resp = self._get("bedrock-runtime", backend).converse_stream(modelId=backend.address, **request)
            return _closing(resp["stream"], backend.model, include_usage)

        return await openai_wire.first_then_rest(aws.events(backend.target, start))

    async def embed(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        """Titan (one InvokeModel per input) or Cohere (one per 96 inputs) embedding models, answers joined in
        order. Every payload is built before the first is sent, so a request Bedrock cannot take never counts
        against the backend; once one call was processed, a later failure is never resent elsewhere."""
        cohere = is_cohere(backend.address)
        with building(backend.target):
            payloads = embedding_payloads(body, backend.address, backend.target)
            if body.get("encoding_format") not in (None, "float", "base64"):
                raise ValueError(f"unknown encoding_format {body['encoding_format']!r} (float or base64)")

        def invoke(payload: str) -> dict[str, Any]:
            resp = self._get("bedrock-runtime", backend).invoke_model(modelId=backend.address, body=payload,
                                     contentType="application/json", accept="application/json")
            return json.loads(resp["body"].read())

        vectors, tokens = [], 0
        for i, payload in enumerate(payloads):
            try:
                data = await aws.call(backend.target, lambda p=payload: invoke(p))
            except AttemptFailed as exc:
                if i and exc.resend:  # earlier inputs were processed: the request as a whole is not resendable
                    raise Failed(f"{exc} (after {i} of {len(payloads)} calls had answered)") from exc
                raise
            try:
                got = embedding_vectors(data, cohere=cohere)
                tokens += int(data.get("inputTextTokenCount") or 0)
            except (KeyError, TypeError, ValueError) as exc:
                raise Failed(f"{backend.target}: the embedding answer has an unexpected shape ({exc!r})") from None
            if cohere and len(got) != len(json.loads(payload)["texts"]):
                raise Failed(f"{backend.target}: Cohere answered {len(got)} embeddings for "
                             f"{len(json.loads(payload)['texts'])} texts")
            vectors += got
        out = openai_wire.embeddings(backend.model, vectors, tokens)
        return base64_vectors(out) if body.get("encoding_format") == "base64" else out

    async def _state(self, backend: Backend) -> dict[str, Any]:
        def control() -> Any:
            return self._get("bedrock", backend)

        if profile_prefix(backend.address) or backend.address.startswith("arn:"):
            p = await aws.call(backend.target, lambda: control().get_inference_profile(
                inferenceProfileIdentifier=backend.address))
            return {"status": p.get("status", ""), "profile": backend.address, "regions": profile_regions(p)}
        d = (await aws.call(backend.target, lambda: control().get_foundation_model(
            modelIdentifier=backend.address))).get("modelDetails") or {}
        out = {"status": (d.get("modelLifecycle") or {}).get("status", ""), "model": backend.address,
               "streaming": bool(d.get("responseStreamingSupported"))}
        if not on_demand(d):  # it can never answer by this id: say why, and what to use (payload-free calls)
            profiles = await aws.call(backend.target, lambda: profiles_for(control(), backend.address))
            out["problem"] = needs_profile(backend.address, profiles, backend.target, backend.place.zone)
            out["status"] = f"{out['status']}, but not callable: {out['problem']}"
        return out

    async def health(self, backend: Backend) -> bool:
        """The control plane says the profile or model serves (ACTIVE, or LEGACY: deprecated, still invocable) and,
        for a plain model id, that it can be invoked on demand (no payload is sent). A backend taken out for a
        configuration error thus stays out until its configuration is fixed."""
        try:
            state = await self._state(backend)
        except (AttemptFailed, BadRequest) as exc:
            log.debug("bedrock health %s: %s", backend.target, exc)
            return False
        return "problem" not in state and state["status"] in SERVING

    async def describe(self, backend: Backend) -> dict[str, Any]:
        return await self._state(backend)
