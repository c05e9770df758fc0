"""What the AWS adapters (SageMaker, Bedrock) share: botocore clients from the standard credential chain, made once
per (service, region, profile) and reused; the one mapping of botocore failures to the router's verdicts; and AWS
regions as places (region -> country -> zone), so that live settings can say where an endpoint or profile processes.

boto3 is imported on first use only, with an install hint naming the `aws` extra. Credentials are never read,
stored or logged here: botocore finds them itself (environment, profile, SSO, instance role), where the router runs.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from types import ModuleType
from typing import Any, TypeVar

from sovra.core.errors import ProviderError
from sovra.core.api_errors import AttemptFailed, BadRequest, Failed, NotDelivered, Refused, TimedOut
from sovra.core.spec.zones import GLOBAL, zone_of
from sovra.providers import openai_wire

T = TypeVar("T")

#: AWS region -> the country it is in (commercial and GovCloud regions; China's are run apart but are in CN).
REGION_COUNTRY: dict[str, str] = {
    "us-east-1": "US", "us-east-2": "US", "us-west-1": "US", "us-west-2": "US", "us-gov-east-1": "US",
    "us-gov-west-1": "US", "ca-central-1": "CA", "ca-west-1": "CA", "mx-central-1": "MX", "sa-east-1": "BR",
    "eu-central-1": "DE", "eu-central-2": "CH", "eu-west-1": "IE", "eu-west-2": "GB", "eu-west-3": "FR",
    "eu-north-1": "SE", "eu-south-1": "IT", "eu-south-2": "ES", "il-central-1": "IL", "me-south-1": "BH",
    "me-central-1": "AE", "af-south-1": "ZA", "ap-east-1": "HK", "ap-east-2": "TW", "ap-south-1": "IN",
    "ap-south-2": "IN", "ap-northeast-1": "JP", "ap-northeast-2": "KR", "ap-northeast-3": "JP",
    "ap-southeast-1": "SG", "ap-southeast-2": "AU", "ap-southeast-3": "ID", "ap-southeast-4": "AU",
    "ap-southeast-5": "MY", "ap-southeast-7": "TH", "cn-north-1": "CN", "cn-northwest-1": "CN",
}


def zone_of_regions(regions: Iterable[str]) -> str:
    """The one zone all `regions` are in; GLOBAL when they span zones or one is unknown (the safe reading)."""
    zones = {zone_of(REGION_COUNTRY[r]) if r in REGION_COUNTRY else GLOBAL for r in regions}
    return zones.pop() if len(zones) == 1 else GLOBAL


def region_of_arn(arn: str) -> str:
    """`arn:aws:sagemaker:eu-west-3:123:endpoint/x` -> `eu-west-3` (empty for a region-less ARN)."""
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 else ""


def boto3() -> ModuleType:
    """boto3, or a ProviderError saying which extra installs it."""
    try:
        import boto3 as module
    except ImportError as exc:
        raise ProviderError("the AWS adapters (aws-sagemaker, aws-bedrock) need boto3: pip install 'sovra[aws]'") \
            from exc
    return module


#: botocore loggers whose DEBUG lines carry the signed headers (access key id, session token), the canonical
#: request, and request and response bodies (payloads).
_WIRE_LOGGERS = ("botocore.endpoint", "botocore.auth", "botocore.parsers")


class _DropWireDebug(logging.Filter):
    """Drops botocore's wire-level DEBUG lines, so a router run at DEBUG logs neither credentials nor payloads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_WIRE_FILTER = _DropWireDebug()


def _quiet_wire_logs() -> None:
    for name in _WIRE_LOGGERS:
        logger = logging.getLogger(name)
        if _WIRE_FILTER not in logger.filters:
            logger.addFilter(_WIRE_FILTER)


class AwsClients:
    """botocore clients per (service, region, profile), made on first use and shared by every call of one router
    replica (botocore clients are thread-safe; making one costs milliseconds and reads the credential chain).

    Retries are off (`total_max_attempts=1`): botocore's own retries resend the payload after a read timeout or a
    5xx, which the router must never do, and they would sleep in a pool thread on throttling that the dispatcher
    handles itself (another allowed backend, or the vendor's Retry-After). Connecting is bounded by
    `connect_timeout_s`; `read_timeout_s` bounds each socket read, so a stalled stream fails rather than hangs.
    botocore's wire-level DEBUG lines (signed headers, bodies) are dropped: see `_DropWireDebug`.
    """

    def __init__(self, *, connect_timeout_s: float = 2.0, read_timeout_s: float = 120.0, max_pool: int = 64):
        _quiet_wire_logs()
        self._options = {"connect_timeout": connect_timeout_s, "read_timeout": read_timeout_s,
                         "max_pool_connections": max_pool}
        self._clients: dict[tuple[str, str, str | None], Any] = {}
        self._lock = threading.Lock()  # boto3 sessions are not thread-safe; clients are made under the lock

    def get(self, service: str, region: str, profile: str | None = None) -> Any:
        """The client for `service` in `region`, made with the standard credential chain (or the named profile).
        Endpoint overrides (`AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL`) apply as boto3 reads them."""
        key = (service, region, profile or None)
        client = self._clients.get(key)
        if client is None:
            with self._lock:
                client = self._clients.get(key)
                if client is None:
                    client = self._clients[key] = self._make(*key)
        return client

    def _make(self, service: str, region: str, profile: str | None) -> Any:
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        b3 = boto3()
        config = Config(retries={"mode": "standard", "total_max_attempts": 1}, user_agent_extra="sovra",
                        **self._options)
        try:
            return b3.session.Session(profile_name=profile).client(service, region_name=region, config=config)
        except BotoCoreError as exc:  # an unknown profile, an invalid endpoint URL: nothing can be sent
            raise NotDelivered(f"cannot make the AWS {service} client for {region}: {exc}", down=True) from exc


#: error codes (lower-cased, as botocore reports them from headers or stream exception events)
_THROTTLED = {"throttlingexception", "throttling", "throttledexception", "toomanyrequestsexception",
              "serviceunavailable", "serviceunavailableexception", "modelnotreadyexception", "modelnotready",
              "servicequotaexceededexception", "requestlimitexceeded"}
_AUTH = {"accessdeniedexception", "accessdenied", "unrecognizedclientexception", "expiredtokenexception",
         "expiredtoken", "invalidsignatureexception", "incompletesignature", "missingauthenticationtoken",
         "invalidclienttokenid", "signaturedoesnotmatch", "unauthorizedoperation"}
_NOT_FOUND = {"resourcenotfoundexception", "resourcenotfound", "notfoundexception"}
_INVALID = {"validationexception", "validationerror"}
_TIMED_OUT = {"modeltimeoutexception"}  # Bedrock: "processing time exceeded the model timeout length" (HTTP 408)
_MISSING_ENDPOINT = re.compile(r"endpoint\b.*\bnot found|could not find endpoint", re.IGNORECASE)
#: Bedrock's ValidationExceptions that judge the backend's model id, not the request: "Invocation of model ID X with
#: on-demand throughput isn’t supported. Retry your request with the ID or ARN of an inference profile that contains
#: this model." (profile-only models called by their plain id) and "The provided model identifier is invalid." (an
#: id this region or account does not know). Every request to that id fails alike, so it is taken out.
_MISCONFIGURED = re.compile(r"on-demand throughput is(n[’']t| not) supported|inference profile that contains this "
                            r"model|provided model identifier is invalid", re.IGNORECASE)


def verdict(exc: BaseException, where: str) -> AttemptFailed | BadRequest:
    """botocore failures -> the router's verdicts, in one place. `where` names the backend (a target id).

    Only a failure to connect is undelivered; once a request was written, a timeout or a dropped connection may
    follow its processing, so it is Failed and never resent. AWS error codes that say "not processed" (throttled,
    credentials refused, no such endpoint or model, a model id Bedrock cannot serve) are Refused; any other request
    AWS calls invalid is the client's 400.
    """
    from botocore import exceptions as bx

    if isinstance(exc, (AttemptFailed, BadRequest)):
        return exc
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ProxyConnectionError)):
        return NotDelivered(f"{where}: cannot connect to AWS ({type(exc).__name__})")
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.ProfileNotFound, bx.NoRegionError,
                        bx.TokenRetrievalError)):
        return NotDelivered(f"{where}: no usable AWS credentials where the router runs ({type(exc).__name__}); "
                            "set them as boto3 reads them (environment, profile, SSO or instance role)", down=True)
    if isinstance(exc, bx.ParamValidationError):
        return BadRequest(f"{where}: the request does not fit the AWS API: {str(exc)[:500]}")
    if isinstance(exc, bx.ReadTimeoutError):
        return TimedOut(f"{where}: no answer from AWS in time after the request was sent")
    if isinstance(exc, bx.ClientError):
        return _client_error(exc, where)
    return Failed(f"{where}: {type(exc).__name__} after the request was sent")


def _client_error(exc: Any, where: str) -> AttemptFailed | BadRequest:
    err = exc.response.get("Error") or {}
    meta = exc.response.get("ResponseMetadata") or {}
    code, status = str(err.get("Code") or ""), int(meta.get("HTTPStatusCode") or 0)
    message = str(err.get("Message") or "")[:500]
    said = f"{where}: AWS answered {code or status}: {message}".rstrip(": ")
    key = code.lower()
    if key in _THROTTLED or status == 429:
        return Refused(said, throttled=True, retry_after_s=_retry_after(meta.get("HTTPHeaders") or {}))
    if key in _AUTH or status in (401, 403):
        return Refused(said, status=401, down=True)
    if key in _NOT_FOUND or (key in _INVALID and _MISSING_ENDPOINT.search(message)):
        return Refused(said, status=404, down=True)
    if key in _INVALID and _MISCONFIGURED.search(message):
        return Refused(f"{said} (the backend's model id is misconfigured, not the request: it is taken out; "
                       "`sovra status` says why and `sovra audit settings` names the fix)", down=True)
    if key in _INVALID:
        return BadRequest(said)
    if key == "modelerror":
        return _model_error(exc.response, said)
    if key in _TIMED_OUT or status == 504:
        return TimedOut(said)
    return Failed(said)  # InternalFailure, any other 5xx (a bare 503 too) or unknown code: it may have been processed


def _model_error(response: dict[str, Any], said: str) -> AttemptFailed | BadRequest:
    """SageMaker's ModelError (HTTP 424) is the container's own answer, whose status it carries as
    `OriginalStatusCode` (docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpoint.html). A
    container that rejected the request (4xx) judged the request, not itself: a 400 for the client, no breaker
    count; one that throttled (429) did not process it; anything else may have been processed."""
    try:
        original = int(response.get("OriginalStatusCode") or 0)
    except (TypeError, ValueError):
        original = 0
    if original == 429:
        return Refused(f"{said} (the container throttled)", throttled=True)
    if 400 <= original < 500:
        return BadRequest(f"{said} (the container rejected the request with HTTP {original})")
    if original == 504:
        return TimedOut(said)
    return Failed(said)


def _retry_after(headers: dict[str, str]) -> int | None:
    value = headers.get("retry-after") or headers.get("x-amzn-retry-after")
    try:
        return max(1, round(float(value))) if value else None
    except ValueError:
        return None


async def call(where: str, fn: Callable[[], T]) -> T:
    """One blocking botocore call (`fn`, which also gets its client) off the router's loop; its failure raised as
    a verdict."""
    try:
        return await openai_wire.blocking(fn)
    except Exception as exc:  # every botocore failure is classified by `verdict`
        raise verdict(exc, where) from exc


async def events(where: str, make: Callable[[], Iterable[T]]) -> AsyncIterator[T]:
    """A botocore event stream as an async iterator. Failures before the first event are classified; after it,
    part of the answer has reached the caller, so any failure is Failed (never resent)."""
    started = False
    stream = openai_wire.iterate(make)
    try:
        while True:
            try:
                item = await anext(stream)
            except StopAsyncIteration:
                return
            except Exception as exc:  # classified, then narrowed to Failed once the stream started
                found = verdict(exc, where)
                if started and not isinstance(found, Failed):
                    found = Failed(f"{found} (after the stream had started)")
                raise found from exc
            started = True
            yield item
    finally:
        await stream.aclose()
