"""AWS emulators on 127.0.0.1, reached exactly as boto3 reaches an account: through `AWS_ENDPOINT_URL_<SERVICE>`
and test credentials (`aws_env`), so the adapters under test run their real botocore code over real HTTP.

- `moto_server()`: moto in server mode, for SageMaker's control plane (create/describe endpoints) and
  `invoke_endpoint`, whose answers are queued through moto's `/moto-api/static/sagemaker/endpoint-results`.
- `fake_aws()`: a small server speaking what moto lacks: bedrock-runtime (`/model/{id}/converse`,
  `/converse-stream`, `/invoke`), the bedrock control-plane paths Sovra reads (`/inference-profiles/{id}`,
  `/foundation-models/{id}`), sagemaker-runtime (`/endpoints/{name}/invocations`, `/invocations-response-stream`)
  and SageMaker's DescribeEndpoint for the endpoints it serves (the live-settings audit's one call),
  streams in AWS's binary event-stream encoding (`event_message`, written here; botocore's decoder parses it), and
  fault switches (`with fake.failing("throttle"): ...`).
- `closed_port_url()`: an address where nothing listens (a connection that is never made).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import socket
import struct
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Test credentials: distinctive, so a test can prove they appear in no log line and no record.
TEST_ACCESS_KEY_ID = "fake-access-key-id-for-tests"
TEST_SECRET_ACCESS_KEY = "fake-secret-access-key-for-tests"
ACCOUNT = "123456789012"
#: Variables that would make boto3 read a developer's own AWS set-up; `aws_environ` removes them.
_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
          "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
          "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SAGEMAKER", "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
          "AWS_ENDPOINT_URL_BEDROCK", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port_url() -> str:
    """A 127.0.0.1 URL on a port nobody listens on: connecting is refused, so nothing is ever delivered."""
    return f"http://127.0.0.1:{free_port()}"


def aws_env(*, sagemaker_runtime: str | None = None, sagemaker: str | None = None,
            bedrock_runtime: str | None = None, bedrock: str | None = None) -> dict[str, str]:
    """What a process sets to send boto3 to the emulators: test credentials, no shared config files, no instance
    metadata, and one endpoint URL per service (the variables boto3 itself reads)."""
    env = {"AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": TEST_SECRET_ACCESS_KEY,
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "AWS_EC2_METADATA_DISABLED": "true"}
    for name, url in (("SAGEMAKER_RUNTIME", sagemaker_runtime), ("SAGEMAKER", sagemaker),
                      ("BEDROCK_RUNTIME", bedrock_runtime), ("BEDROCK", bedrock)):
        if url:
            env[f"AWS_ENDPOINT_URL_{name}"] = url
    return env


@contextlib.contextmanager
def aws_environ(env: Mapping[str, str], *, unset: tuple[str, ...] = ()) -> Iterator[None]:
    """This process's environment with `env` set and a developer's own AWS variables (and `unset`) removed;
    restored after."""
    keys = set(env) | set(_UNSET) | set(unset)
    saved = {k: os.environ.get(k) for k in keys}
    for k in (*_UNSET, *unset):
        os.environ.pop(k, None)
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- moto --------------------------------------------------------------------------------------------------------


@dataclass
class MotoServer:
    """A running moto server: `url` for AWS_ENDPOINT_URL_SAGEMAKER(_RUNTIME)."""

    url: str

    def _post(self, path: str, body: Mapping[str, Any] | None = None) -> None:
        req = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(), method="POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status in (200, 201), resp.status

    def queue_results(self, region: str, *answers: Any, content_type: str = "application/json") -> None:
        """Queue `invoke_endpoint` answers (JSON-encoded unless bytes/str), taken in order by new request bodies."""
        results = [{"Body": a if isinstance(a, str) else a.decode() if isinstance(a, bytes) else json.dumps(a),
                    "ContentType": content_type} for a in answers]
        self._post("/moto-api/static/sagemaker/endpoint-results",
                   {"account_id": ACCOUNT, "region": region, "results": results})

    def create_endpoint(self, name: str, region: str) -> str:
        """Create a model, endpoint config and endpoint (moto marks it InService at once); returns its ARN."""
        import boto3

        sm = boto3.client("sagemaker", region_name=region, endpoint_url=self.url,
                          aws_access_key_id=TEST_ACCESS_KEY_ID, aws_secret_access_key=TEST_SECRET_ACCESS_KEY)
        sm.create_model(ModelName=f"{name}-model", ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/sovra-test",
                        PrimaryContainer={"Image": f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/tgi:latest"})
        sm.create_endpoint_config(EndpointConfigName=f"{name}-config", ProductionVariants=[
            {"VariantName": "main", "ModelName": f"{name}-model", "InitialInstanceCount": 1,
             "InstanceType": "ml.g4dn.xlarge"}])
        return sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-config")["EndpointArn"]

    def reset(self) -> None:
        self._post("/moto-api/reset")


@contextlib.contextmanager
def moto_server() -> Iterator[MotoServer]:
    """moto in server mode on a free 127.0.0.1 port, stopped on exit."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield MotoServer(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


# -- the AWS event-stream encoding ---------------------------------------------------------------------------------


def event_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One `application/vnd.amazon.eventstream` message: prelude (total length, headers length, CRC32 of both),
    string-typed headers, payload, CRC32 of everything before it."""
    encoded = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        encoded += struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(event_type: str, body: Mapping[str, Any] | bytes) -> bytes:
    """An event whose payload is JSON members (bedrock) or a raw blob (sagemaker's PayloadPart)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    kind = "application/octet-stream" if isinstance(body, bytes) else "application/json"
    return event_message({":event-type": event_type, ":content-type": kind, ":message-type": "event"}, raw)


def exception_event(exception_type: str, message: str) -> bytes:
    """A modeled exception sent inside a stream (botocore raises it as EventStreamError)."""
    return event_message({":exception-type": exception_type, ":content-type": "application/json",
                          ":message-type": "exception"}, json.dumps({"message": message}).encode())


# -- the fake server -----------------------------------------------------------------------------------------------

#: fault -> (HTTP status, AWS error type, message) answered instead of the real answer
FAULTS: dict[str, tuple[int, str, str]] = {
    "throttle": (429, "ThrottlingException", "Too many requests, please wait before trying again."),
    "unavailable": (503, "ServiceUnavailableException", "The service is unavailable; try again later."),
    "model-not-ready": (429, "ModelNotReadyException", "The model is not ready to serve requests."),
    "server-error": (500, "InternalServerException", "An internal server error occurred."),
    "access-denied": (403, "AccessDeniedException", "You don't have access to the model with the specified id."),
    "expired-token": (403, "ExpiredTokenException", "The security token included in the request is expired"),
    "unrecognized-client": (403, "UnrecognizedClientException", "The security token in the request is invalid."),
    "not-found": (404, "ResourceNotFoundException", "The requested resource could not be found."),
    "invalid": (400, "ValidationException", "Malformed input request: temperature must be at most 1."),
    "endpoint-missing": (400, "ValidationError", f"Endpoint sovra-missing of account {ACCOUNT} not found."),
    "model-error": (424, "ModelError", "Received server error (500) from primary with message \"CUDA OOM\"."),
    "model-rejected": (424, "ModelError", "Received client error (422) from primary with message \"max_tokens must "
                       "be at most 4096\"."),
}
#: modeled fields a fault's error body carries besides its message (SageMaker's ModelError: the container's status).
#: botocore's sagemaker-runtime service model: ModelError is httpStatusCode 424 with members Message,
#: OriginalStatusCode, OriginalMessage, LogStreamArn (`get_service_model("sagemaker-runtime").shape_for("ModelError")`)
FAULT_FIELDS: dict[str, dict[str, Any]] = {
    "model-error": {"OriginalStatusCode": 500, "OriginalMessage": "CUDA OOM"},
    "model-rejected": {"OriginalStatusCode": 422, "OriginalMessage": "max_tokens must be at most 4096"},
}
#: other switches: "slow" (answer after `slow_s`), "malformed" (200 with a body that is not JSON), "stream-break"
#: (a stream that fails after its first events: bedrock sends a throttlingException event, which must still not be
#: resent, sagemaker a ModelStreamError), "closed" (drop the connection after reading the request)
SWITCHES = ("slow", "malformed", "stream-break", "closed")
#: regions a system-defined profile of each prefix routes to (as Bedrock's docs list them for recent models)
PROFILE_REGIONS = {"eu": ["eu-central-1", "eu-north-1", "eu-south-1", "eu-south-2", "eu-west-1", "eu-west-3"],
                   "us": ["us-east-1", "us-east-2", "us-west-2"],
                   "apac": ["ap-northeast-1", "ap-northeast-2", "ap-south-1", "ap-southeast-1", "ap-southeast-2"],
                   "global": ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1"]}
_SIGNED = re.compile(r"^AWS4-HMAC-SHA256 Credential=[^/]+/\d{8}/(?P<region>[a-z0-9-]+)/(?P<service>[a-z-]+)/")


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    region: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeAws:
    """The fake's state: what it answers and what it saw. Thread-safe enough for tests (one writer per switch)."""

    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    fault: str | None = None
    slow_s: float = 2.0
    reply: str | None = None           # the text answered; default "echo: <last user text>"
    part_size: int = 7                 # sagemaker stream payload parts are cut every `part_size` bytes
    profiles: dict[str, list[str]] = field(default_factory=dict)  # profile id -> regions (else by prefix)
    lifecycle: str = "ACTIVE"          # foundation model / profile status
    profile_only: set[str] = field(default_factory=set)    # base model ids Bedrock serves only through profiles
    unknown_models: set[str] = field(default_factory=set)  # model ids this region does not know
    tool_use: dict[str, Any] | None = None  # {"name", "input"}: answer a call of that tool when the request offers it
    endpoint_status: str = "InService"  # SageMaker DescribeEndpoint's EndpointStatus
    stop_reason: str | None = None     # a Converse stopReason (botocore `StopReason`) to answer instead of end_turn
    connections: list[Any] = field(default_factory=list, repr=False)

    def reset(self) -> None:
        """Back to a plain account: nothing seen, no switch set (the server keeps running)."""
        self.requests.clear()
        self.fault, self.reply, self.profiles, self.lifecycle, self.part_size = None, None, {}, "ACTIVE", 7
        self.profile_only, self.unknown_models, self.tool_use = set(), set(), None
        self.endpoint_status, self.stop_reason = "InService", None

    @contextlib.contextmanager
    def failing(self, fault: str) -> Iterator[None]:
        """Answer every request with `fault` (a FAULTS key or a SWITCHES name) inside the block."""
        assert fault in FAULTS or fault in SWITCHES, f"unknown fault {fault!r}"
        self.fault = fault
        try:
            yield
        finally:
            self.fault = None

    def calls(self, suffix: str) -> list[Seen]:
        return [r for r in self.requests if r.path.endswith(suffix)]

    def text_for(self, messages: list[dict[str, Any]]) -> str:
        if self.reply is not None:
            return self.reply
        last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        content = last.get("content")
        if isinstance(content, list):  # Converse blocks or OpenAI parts
            content = "".join(b.get("text", "") for b in content)
        return f"echo: {content or ''}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeAws

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.fake.connections.append(self.connection)  # so stopping the fake drops its kept-alive connections

    def _read(self) -> Seen:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        signed = _SIGNED.match(self.headers.get("authorization", ""))
        seen = Seen(self.command, urllib.parse.unquote(urllib.parse.urlsplit(self.path).path),
                    {k.lower(): v for k, v in self.headers.items()}, body, signed["region"] if signed else "")
        self.fake.requests.append(seen)
        return seen

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in {"content-type": "application/json", **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode())

    def _error(self, fault: str) -> None:
        status, kind, message = FAULTS[fault]
        headers = {"x-amzn-errortype": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"}
        if status == 429:
            headers["retry-after"] = "7"
        self._send(status, json.dumps({"message": message, **FAULT_FIELDS.get(fault, {})}).encode(), headers)

    def _stream(self, messages: list[bytes]) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/vnd.amazon.eventstream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for m in messages:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(m), m))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        seen, fake = self._read(), self.fake
        fault = fake.fault
        try:
            if fault == "closed":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault in FAULTS:
                return self._error(fault)
            if fault == "slow":
                time.sleep(fake.slow_s)
            if fault == "malformed":
                return self._send(200, b'{"output": {"message": ')
            self._route(seen)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the client gave up (a read timeout): nothing to answer

    def _route(self, seen: Seen) -> None:
        parts = seen.path.strip("/").split("/")
        if seen.method == "POST" and parts[0] == "model" and len(parts) == 3:
            return {"converse": self._converse, "converse-stream": self._converse_stream,
                    "invoke": self._invoke}[parts[2]](parts[1], seen)
        if seen.method == "POST" and parts[0] == "endpoints" and len(parts) == 3:
            return {"invocations": self._sm_invoke, "invocations-response-stream": self._sm_stream}[parts[2]](seen)
        if seen.method == "POST" and seen.headers.get("x-amz-target") == "SageMaker.DescribeEndpoint":
            return self._sm_describe(seen)
        if seen.method == "GET" and parts == ["inference-profiles"]:
            return self._profiles(seen.region)
        if seen.method == "GET" and parts[0] == "inference-profiles":
            return self._profile(parts[1], seen.region)
        if seen.method == "GET" and parts[0] == "foundation-models":
            return self._model(parts[1], seen.region)
        self._send(404, json.dumps({"message": f"no route {seen.method} {seen.path}"}).encode(),
                   {"x-amzn-errortype": "UnknownOperationException"})

    # bedrock-runtime: Converse and ConverseStream as botocore's bedrock-runtime model (2023-09-30) defines them
    # (Message, ContentBlock: text | toolUse (ToolUseBlock) | toolResult (ToolResultBlock); ToolConfiguration;
    # OutputConfig; ConverseStreamOutput: messageStart, contentBlockStart (ContentBlockStart.toolUse =
    # ToolUseBlockStart), contentBlockDelta (ContentBlockDelta.text | .toolUse = ToolUseBlockDelta{input: str}),
    # contentBlockStop, messageStop, metadata), with the ValidationExceptions Bedrock answers.
    def _invalid(self, message: str) -> None:
        self._send(400, json.dumps({"message": message}).encode(),
                   {"x-amzn-errortype": "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"})

    def _refusal(self, model_id: str, req: dict[str, Any]) -> str | None:
        """Bedrock's ValidationException message for this request, if it has one."""
        base = model_id.split(".", 1)[1] if model_id.split(".", 1)[0] in PROFILE_REGIONS else model_id
        if model_id in self.fake.unknown_models or base in self.fake.unknown_models:
            return "The provided model identifier is invalid."  # e.g. github.com/Kilo-Org/kilocode/issues/586
        if model_id in self.fake.profile_only:  # the plain id; the profile ids (eu.<id>, ...) serve
            return (f"Invocation of model ID {model_id} with on-demand throughput isn\u2019t supported. Retry your "
                    "request with the ID or ARN of an inference profile that contains this model.")
        if any(not s.get("text") for s in req.get("system") or () if "text" in s):
            return "1 validation error detected: Value at 'system.1.member.text' failed to satisfy constraint: " \
                   "Member must have length greater than or equal to 1"
        messages = req.get("messages") or []
        if not messages or messages[0]["role"] != "user":
            return "A conversation must start with a user message. Try again with a conversation that starts " \
                   "with a user message."
        if any(a["role"] == b["role"] for a, b in itertools.pairwise(messages)):
            return "A conversation must alternate between user and assistant roles. Make sure the conversation " \
                   "alternates between user and assistant roles and try again."
        blocks = [b for m in messages for b in m["content"]]
        if any("toolUse" in b or "toolResult" in b for b in blocks) and not req.get("toolConfig"):
            return "The toolConfig field must be defined when using toolUse and toolResult content blocks."
        for before, m in itertools.pairwise(messages):
            used = {b["toolUse"]["toolUseId"] for b in before["content"] if "toolUse" in b}
            answered = {b["toolResult"]["toolUseId"] for b in m["content"] if "toolResult" in b}
            if answered - used:
                return "The toolUse blocks of the previous turn do not match the toolResult blocks of this turn."
        fmt = (req.get("outputConfig") or {}).get("textFormat")
        if fmt is not None:
            try:
                json.loads(fmt["structure"]["jsonSchema"]["schema"])
            except (KeyError, TypeError, ValueError):
                return "The JSON schema in outputConfig.textFormat is not valid JSON."
        temperature = (req.get("inferenceConfig") or {}).get("temperature")
        if temperature is not None and not 0 <= temperature <= 1:
            return "Malformed input request: temperature must be at most 1."
        return None

    def _answer(self, req: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        """The content blocks and stopReason answered: a toolUse when `tool_use` names an offered tool and the last
        turn is not its result; JSON when structured output is asked; else the text."""
        messages = req.get("messages") or []
        offered = {t["toolSpec"]["name"] for t in (req.get("toolConfig") or {}).get("tools") or ()}
        answered = any("toolResult" in b for b in messages[-1]["content"]) if messages else False
        use = self.fake.tool_use
        if use and use["name"] in offered and not answered:
            return [{"text": "Let me look."},
                    {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": use["name"],
                                 "input": use.get("input", {})}}], "tool_use"
        text = self.fake.text_for(messages)
        if req.get("outputConfig") and self.fake.reply is None:
            text = json.dumps({"echo": text})
        return [{"text": text}], self.fake.stop_reason or "end_turn"

    def _converse(self, model_id: str, seen: Seen) -> None:
        req = seen.json()
        refusal = self._refusal(model_id, req)
        if refusal:
            return self._invalid(refusal)
        content, stop = self._answer(req)
        out = " ".join(b.get("text", "") for b in content)
        prompt = sum(len(b.get("text", "").split()) for m in req.get("messages") or () for b in m["content"])
        self._json({"output": {"message": {"role": "assistant", "content": content}},
                    "stopReason": stop, "metrics": {"latencyMs": 3},
                    "usage": {"inputTokens": prompt, "outputTokens": len(out.split()),
                              "totalTokens": prompt + len(out.split())}})

    def _converse_stream(self, model_id: str, seen: Seen) -> None:
        req = seen.json()
        refusal = self._refusal(model_id, req)
        if refusal:
            return self._invalid(refusal)
        content, stop = self._answer(req)
        events = [event("messageStart", {"role": "assistant"})]
        n = 0
        for i, block in enumerate(content):
            if "text" in block:
                words = re.findall(r"\S+\s*", block["text"])
                n += len(words)
                events += [event("contentBlockDelta", {"contentBlockIndex": i, "delta": {"text": w}}) for w in words]
            else:
                use = block["toolUse"]
                raw = json.dumps(use["input"])
                events.append(event("contentBlockStart", {"contentBlockIndex": i, "start": {"toolUse": {
                    "toolUseId": use["toolUseId"], "name": use["name"]}}}))
                events += [event("contentBlockDelta", {"contentBlockIndex": i, "delta": {"toolUse": {
                    "input": raw[j:j + 5]}}}) for j in range(0, len(raw), 5)]
            events.append(event("contentBlockStop", {"contentBlockIndex": i}))
        if self.fake.fault == "stream-break":
            events = events[:2] + [exception_event("throttlingException", "Too many tokens, please wait.")]
        else:
            events += [event("messageStop", {"stopReason": stop}),
                       event("metadata", {"usage": {"inputTokens": 5, "outputTokens": n, "totalTokens": 5 + n},
                                          "metrics": {"latencyMs": 3}})]
        self._stream(events)

    def _invoke(self, model_id: str, seen: Seen) -> None:
        req = seen.json()
        if "cohere.embed" in model_id:
            # docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-embed-v3.html and -embed-v4.html: at most
            # 96 texts a call; `embeddings` is a list of floats, or an object keyed by embedding type when
            # `embedding_types` is given (v4 always answers by type, `response_type: embeddings_by_type`)
            texts = req["texts"]
            if len(texts) > 96:
                return self._invalid(f"Malformed input request: #/texts: expected maxItems: 96, actual: "
                                     f"{len(texts)}, please reformat your input and try again.")
            dims = req.get("output_dimension", 4)
            vectors = [_vector(t, dims) for t in texts]
            if "cohere.embed-v4" in model_id or req.get("embedding_types"):
                return self._json({"id": "e", "texts": texts, "response_type": "embeddings_by_type",
                                   "embeddings": {t: vectors for t in req.get("embedding_types") or ["float"]}})
            return self._json({"embeddings": vectors, "id": "e", "texts": texts,
                               "response_type": "embeddings_floats"})
        self._json({"embedding": _vector(req["inputText"], req.get("dimensions", 4)),
                    "inputTextTokenCount": len(req["inputText"].split())})

    # bedrock control plane
    def _profile(self, profile_id: str, region: str) -> None:
        regions = self.fake.profiles.get(profile_id) or PROFILE_REGIONS.get(profile_id.split(".", 1)[0])
        if not regions:
            return self._error("not-found")
        base = profile_id.split(".", 1)[1]
        self._json({"inferenceProfileName": profile_id, "inferenceProfileId": profile_id, "type": "SYSTEM_DEFINED",
                    "inferenceProfileArn": f"arn:aws:bedrock:{region}:{ACCOUNT}:inference-profile/{profile_id}",
                    "status": self.fake.lifecycle,
                    "models": [{"modelArn": f"arn:aws:bedrock:{r}::foundation-model/{base}"} for r in regions]})

    def _model(self, model_id: str, region: str) -> None:
        """GetFoundationModel. A profile-only model lists `inferenceTypesSupported: ["INFERENCE_PROFILE"]` (what
        Bedrock answers for newer models, beyond botocore's `InferenceType` enum of ON_DEMAND | PROVISIONED)."""
        if model_id in self.fake.unknown_models:
            return self._invalid("The provided model identifier is invalid.")
        kinds = ["INFERENCE_PROFILE"] if model_id in self.fake.profile_only else ["ON_DEMAND"]
        self._json({"modelDetails": {
            "modelArn": f"arn:aws:bedrock:{region}::foundation-model/{model_id}", "modelId": model_id,
            "responseStreamingSupported": True, "inferenceTypesSupported": kinds,
            "modelLifecycle": {"status": self.fake.lifecycle}}})

    def _profiles(self, region: str) -> None:
        """ListInferenceProfiles (SYSTEM_DEFINED): the geographic and global profiles of every profile-only model
        whose regions include the caller's."""
        summaries = []
        for base in sorted(self.fake.profile_only):
            for prefix, regions in PROFILE_REGIONS.items():
                if region in regions or prefix == "global":
                    pid = f"{prefix}.{base}"
                    summaries.append({"inferenceProfileId": pid, "inferenceProfileName": pid, "status": "ACTIVE",
                                      "type": "SYSTEM_DEFINED", "inferenceProfileArn":
                                      f"arn:aws:bedrock:{region}:{ACCOUNT}:inference-profile/{pid}",
                                      "models": [{"modelArn": f"arn:aws:bedrock:{r}::foundation-model/{base}"}
                                                 for r in regions]})
        self._json({"inferenceProfileSummaries": summaries})

    # sagemaker control plane: the one call Sovra's live-settings audit makes, for endpoints served here
    def _sm_describe(self, seen: Seen) -> None:
        name = seen.json()["EndpointName"]
        self._json({"EndpointName": name, "EndpointStatus": self.fake.endpoint_status, "EndpointConfigName": name,
                    "EndpointArn": f"arn:aws:sagemaker:{seen.region}:{ACCOUNT}:endpoint/{name.lower()}",
                    "CreationTime": 0, "LastModifiedTime": 0})

    # sagemaker-runtime (what moto does not serve)
    def _sm_invoke(self, seen: Seen) -> None:
        req = seen.json()
        text = self.fake.text_for(req.get("messages") or [])
        self._json({"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": req.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})

    def _sm_stream(self, seen: Seen) -> None:
        req = seen.json()
        text, model = self.fake.text_for(req.get("messages") or []), req.get("model")
        chunks = [{"role": "assistant", "content": ""}] + [{"content": w} for w in re.findall(r"\S+\s*", text)]
        sse = b"".join(b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": model,
                                               "choices": [{"index": 0, "delta": d, "finish_reason": None}]},
                                              ensure_ascii=False).encode() + b"\n\n" for d in chunks)
        done = {"id": "c", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": len(chunks) - 1, "total_tokens": len(chunks) + 2}}
        sse += b"data: " + json.dumps(done).encode()
        sse += b"\n\ndata: [DONE]\n\n"
        n = max(1, self.fake.part_size)
        events = [event("PayloadPart", sse[i:i + n]) for i in range(0, len(sse), n)]
        if self.fake.fault == "stream-break":
            events = events[:3] + [exception_event("ModelStreamError", "StreamBroken")]
        self._stream(events)


def _vector(text: str, dims: int = 4) -> list[float]:
    h = zlib.crc32(text.encode())
    return [((h >> (8 * i)) & 0xFF) / 255 for i in range(dims)]


@contextlib.contextmanager
def fake_aws(*, secret: str = TEST_SECRET_ACCESS_KEY) -> Iterator[FakeAws]:
    """The fake on a free 127.0.0.1 port. At exit it checks its invariants: every request was SigV4-signed (boto3's
    credential chain was used) and no request carried the secret key."""
    fake = FakeAws()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-aws", daemon=True)
    thread.start()
    try:
        yield fake
    finally:  # stopped like a real server: listener closed and kept-alive connections dropped
        server.shutdown()
        server.server_close()
        for conn in fake.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
    unsigned = [r.path for r in fake.requests if not r.region]
    assert not unsigned, f"requests without a SigV4 signature: {unsigned}"
    leaked = [r.path for r in fake.requests if secret.encode() in r.body or secret in json.dumps(r.headers)]
    assert not leaked, f"the secret key was sent in the clear to: {leaked}"
