"""How the router reaches a backend: one client per backend kind (HTTP here; Ray Serve handles in `ray_client`).

Every failure is classified once, by the transport that saw it (`_aiohttp_verdict`, `_httpx_verdict`), into the
router's verdicts: never delivered (connect failed) may be resent elsewhere in the bound; anything after the
connection carried the payload (dropped connection, timeout, 5xx) is never resent.
"""

from __future__ import annotations

import abc
import asyncio
import json
import os
import re
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `sovra plan` loads the provider registry, which must stay light
    import httpx

from sovra.core.backends import Backend
from sovra.core.trace_context import outgoing
from sovra.core.api_errors import (
    AttemptFailed,
    Failed,
    NotDelivered,
    Refused,
    RouterError,
    TimedOut,
    building,
    upstream_words,
)

#: The longest server-sent-events line a backend may send (a chunk is one line); longer is a broken backend.
MAX_SSE_LINE = 1_048_576
#: The largest non-streamed answer read from a backend.
MAX_ANSWER_BYTES = 64 * 1_048_576


class BackendClient(abc.ABC):
    """Invoke a backend's OpenAI-compatible operations; failures are `errors.AttemptFailed` verdicts."""

    #: the OpenTelemetry GenAI `gen_ai.system` of what this client calls (a well-known value where there is one)
    gen_ai_system: ClassVar[str] = "openai"

    @abc.abstractmethod
    async def chat(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming chat completion."""

    @abc.abstractmethod
    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Chat completion chunks; the first is fetched before this returns, so a refusal (4xx) is still an HTTP
        error to the client rather than a broken stream."""

    @abc.abstractmethod
    async def embed(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        """Embeddings."""

    def known_down(self, backend: Backend) -> bool:
        """True when this client knows, without sending anything, that the backend has no live replica."""
        return False

    async def refresh(self) -> None:
        """Bring what `known_down` knows up to date (asked by /readyz); nothing by default."""

    async def health(self, backend: Backend) -> bool | None:
        """A payload-free liveness check for the prober; None when this kind of backend cannot be probed (then the
        breaker's half-open trial brings it back)."""
        return None

    async def describe(self, backend: Backend) -> dict[str, Any]:
        """The endpoint's state as its vendor reports it, for `sovra status` (e.g. {"status": "InService"}); no
        payload. Empty when the vendor has nothing to say."""
        return {}

    async def aclose(self) -> None:
        """Release pooled connections."""


class _Upstream4xx(RouterError):
    """A backend rejected the request itself: passed through, never retried elsewhere; its type and code only from
    the router's fixed vocabulary (`errors.upstream_words`), since they reach the audit trail."""

    def __init__(self, status: int, body: Any):
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            message, kind, code = err.get("message"), err.get("type"), err.get("code")
        else:  # `{"error": "text"}` and other shapes servers send
            message, kind, code = err, None, None
        self.type, self.code, text = upstream_words(kind, code, message)
        super().__init__(text)
        self.status = status


# -- transports: one pooled HTTP/1.1 keep-alive client library behind the same operations ---------------------------


class _Streamed(abc.ABC):
    """A response whose body is read as it arrives."""

    status: int
    retry_after: str | None = None  # the backend's own hint, when it refuses for now

    @abc.abstractmethod
    async def read(self, limit: int) -> bytes:
        """The whole body, at most `limit` bytes (longer is a Failed verdict)."""

    @abc.abstractmethod
    def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; transport failures are verdicts."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class _Transport(abc.ABC):
    @abc.abstractmethod
    async def post(self, url: str, content: bytes, *, stream: bool, headers: dict[str, str] | None = None
                   ) -> _Streamed:
        """A JSON POST; raises a verdict (`AttemptFailed`) when no response arrives."""

    @abc.abstractmethod
    async def get_status(self, url: str, timeout_s: float, headers: dict[str, str] | None = None) -> int:
        """The status of a GET (payload-free probes)."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...


_JSON = {"content-type": "application/json"}


def _httpx_verdict(exc: httpx.HTTPError) -> AttemptFailed:
    import httpx

    """httpx failures -> verdicts. Only failures before the request was written are undelivered."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return NotDelivered(type(exc).__name__)
    if isinstance(exc, httpx.TimeoutException):
        return TimedOut(type(exc).__name__)
    return Failed(f"{type(exc).__name__} after the request was sent")


class _HttpxTransport(_Transport):
    def __init__(self, client: httpx.AsyncClient):
        import httpx

        self._client = client
        self._errors = httpx.HTTPError

    async def post(self, url: str, content: bytes, *, stream: bool, headers: dict[str, str] | None = None
                   ) -> _Streamed:
        try:
            resp = await self._client.send(self._client.build_request(
                "POST", url, content=content, headers={**_JSON, **headers} if headers else _JSON), stream=True,
                follow_redirects=False)  # only the gate decides where a payload goes (whatever the client passed)
        except self._errors as exc:
            raise _httpx_verdict(exc) from exc
        return _HttpxStreamed(resp)

    async def get_status(self, url: str, timeout_s: float, headers: dict[str, str] | None = None) -> int:
        return (await self._client.get(url, timeout=timeout_s, headers=headers, follow_redirects=False)).status_code

    async def aclose(self) -> None:
        await self._client.aclose()


class _HttpxStreamed(_Streamed):
    def __init__(self, resp: httpx.Response):
        self._resp, self.status = resp, resp.status_code
        self.retry_after = resp.headers.get("retry-after")

    async def read(self, limit: int) -> bytes:
        return await _read_limited(self.chunks(), limit)

    async def chunks(self) -> AsyncIterator[bytes]:
        import httpx

        try:
            async for chunk in self._resp.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise _httpx_verdict(exc) from exc

    async def aclose(self) -> None:
        await self._resp.aclose()


def _aiohttp_verdict(exc: BaseException) -> AttemptFailed:
    """aiohttp failures -> verdicts. Connecting (DNS, refused, TLS handshake, connect timeout) happens before the
    payload is written; anything later (a read timeout included) may follow its delivery."""
    import aiohttp

    if isinstance(exc, (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError)):
        return NotDelivered(type(exc).__name__)
    if isinstance(exc, TimeoutError):
        return TimedOut(type(exc).__name__)
    return Failed(f"{type(exc).__name__} after the request was sent")


class _AiohttpTransport(_Transport):
    """aiohttp spends several times less CPU per call than httpx (whose pool scans every connection on each
    request); on a router replica that is most of the per-request cost. The session is made on first use, on the
    event loop that serves requests. Only connecting is timed here; the dispatcher bounds answers and chunks."""

    def __init__(self, connect_timeout_s: float = 2.0):
        self._connect_timeout_s = connect_timeout_s
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxies: dict[str, str] = {}

    def _get(self):
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._loop = loop
            # 512 connections; keep-alive expiry 4 s, below uvicorn's 5 s, so the router never writes a request into
            # a connection the backend is closing (that failure comes after the payload left, so it is not resent);
            # httpx's TLS trust (certifi or SSL_CERT_FILE/DIR); proxy variables read once (aiohttp's own trust_env
            # would re-read them, and ~/.netrc, on every request).
            self._proxies = urllib.request.getproxies_environment()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512, limit_per_host=0, keepalive_timeout=4.0,
                                               ssl=_ssl_context()),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s),
                cookie_jar=aiohttp.DummyCookieJar(),  # a backend's cookies must not follow another tenant's call
                read_bufsize=2 ** 16, max_line_size=MAX_SSE_LINE, max_field_size=65536)
        return self._session

    def _proxy(self, url: str) -> str | None:
        if not self._proxies:
            return None
        parts = urllib.parse.urlsplit(url)
        if urllib.request.proxy_bypass_environment(parts.hostname or "", self._proxies):
            return None
        return self._proxies.get(parts.scheme) or self._proxies.get("all")

    async def post(self, url: str, content: bytes, *, stream: bool, headers: dict[str, str] | None = None
                   ) -> _Streamed:
        import aiohttp

        try:
            # aiohttp follows redirects by default, re-sending the body to wherever `Location` says: never
            resp = await self._get().post(url, data=content, headers={**_JSON, **headers} if headers else _JSON,
                                          proxy=self._proxy(url), allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _aiohttp_verdict(exc) from exc
        return _AiohttpStreamed(resp)

    async def get_status(self, url: str, timeout_s: float, headers: dict[str, str] | None = None) -> int:
        import aiohttp

        async with self._get().get(url, proxy=self._proxy(url), headers=headers, allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return resp.status

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _AiohttpStreamed(_Streamed):
    def __init__(self, resp: Any):
        self._resp, self.status = resp, resp.status
        self.retry_after = resp.headers.get("Retry-After")

    async def read(self, limit: int) -> bytes:
        return await _read_limited(self.chunks(), limit)

    async def chunks(self) -> AsyncIterator[bytes]:
        import aiohttp

        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _aiohttp_verdict(exc) from exc

    async def aclose(self) -> None:
        self._resp.release()


async def _read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise Failed(f"answer is over {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def sse_lines(chunks: AsyncIterator[bytes], limit: int = MAX_SSE_LINE) -> AsyncIterator[str]:
    """Whole lines, split before decoding so no UTF-8 sequence is cut; a line over `limit` bytes is a Failed. Bytes
    without a newline are appended, not re-joined, so a line trickled a byte at a time costs no more to read. Every
    adapter reading server-sent events over HTTP reads its lines here."""
    pending = bytearray()
    async for chunk in chunks:
        pending += chunk
        if b"\n" in chunk:
            *complete, rest = bytes(pending).split(b"\n")
            pending = bytearray(rest)
            for line in complete:
                if len(line) > limit:
                    raise Failed(f"a server-sent-events line is over {limit} bytes")
                yield line.decode(errors="replace").rstrip("\r")
        if len(pending) > limit:
            raise Failed(f"a server-sent-events line is over {limit} bytes")
    if pending:
        yield pending.decode(errors="replace").rstrip("\r")


def _ssl_context() -> Any:
    """The TLS context for backend calls, as httpx builds its default (SSL_CERT_FILE or SSL_CERT_DIR where set, else
    certifi's bundle), without importing httpx: its package imports its command line and with it rich and pygments,
    about 4 MB and 90 modules in every router replica that calls no backend through httpx."""
    import ssl

    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def _default_transport() -> _Transport:
    try:
        import aiohttp  # noqa: F401  (installed with ray[serve])
    except ImportError:
        import httpx

        return _HttpxTransport(httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=2.0, pool=2.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=4.0)))
    return _AiohttpTransport()


def _encode(body: dict[str, Any]) -> bytes:
    # exactly what httpx's `json=` sends (NaN refused), whichever transport carries it
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _seconds(value: str | None) -> int | None:
    """A Retry-After in seconds (an HTTP date is not worth parsing here: the default hint applies)."""
    try:
        return max(1, int(float(value))) if value else None
    except ValueError:
        return None


#: What servers say in a 503 when they did not take the request on: OpenAI documents "The engine is currently
#: overloaded, please try again later" and "Slow Down" for its 503s (platform.openai.com/docs/guides/error-codes),
#: and answers "The server is overloaded or not ready yet."; vLLM, NIM and TGI servers speak OpenAI's API; Ray
#: Serve's proxy says "Request dropped due to backpressure"; HAProxy's own 503 page "No server is available to
#: handle this request".
_REFUSAL_503 = re.compile(rb"overloaded|not ready yet|slow down|dropped due to backpressure|"
                          rb"no server is available", re.IGNORECASE)


def refused_503(content: bytes, retry_after: str | None) -> bool:
    """Is a 503 a refusal (the request was not processed, so another backend may take it)? Only with evidence: a
    Retry-After, or a body that says so. A bare 503 may come from a proxy that lost the backend mid-request."""
    return bool(retry_after) or _REFUSAL_503.search(content[:4096]) is not None


#: In the 503 page of Serve's HAProxy ingress as Sovra's local Ray runs it (`infra.haproxy_bind.NO_LIVE_REPLICA`):
#: HAProxy connected to no replica of the app, so nothing was sent, and none is live right now.
NO_LIVE_REPLICA = b"sovra-no-live-replica"


def _answer(target: str, status: int, content: bytes, retry_after: str | None = None, *, ingress: bool = False
            ) -> dict[str, Any]:
    """A backend's HTTP answer -> its JSON object, or the verdict / client error it amounts to. `ingress`: the
    backend is behind Serve's HAProxy as Sovra's local Ray runs it, the only place its no-live-replica page comes
    from (any other backend could write the marker into a 503 and have itself taken out for every tenant)."""
    if ingress and status == 503 and NO_LIVE_REPLICA in content[:4096]:
        # The ingress took the request and forwarded it to no replica: a refusal (nothing processed), and the
        # backend is out until a replica is back (its breaker, so /readyz says so at once).
        raise Refused("HTTP 503: no live replica behind Serve's ingress; no replica got the request", down=True)
    if status == 429:  # throttled: the backend says it did not process it, another allowed backend may
        raise Refused("HTTP 429", throttled=True, retry_after_s=_seconds(retry_after))
    if status == 503 and refused_503(content, retry_after):
        raise Refused("HTTP 503", retry_after_s=_seconds(retry_after))
    if status == 504:  # a gateway gave up waiting on the backend, which may still be processing it
        raise TimedOut("HTTP 504: a gateway timed out waiting for the backend")
    if status in (401, 403):  # the router's own credentials for this backend were refused: nothing was processed
        raise Refused(f"HTTP {status}: the backend refused the router's credentials", status=401, down=True)
    if status >= 500:  # a 503 without evidence of a refusal included: it may have been received
        raise Failed(f"HTTP {status}")
    if 300 <= status < 400:  # the backend received the payload and pointed elsewhere: an answer, never followed
        raise Failed(f"HTTP {status}: the backend answered with a redirect, which Sovra never follows (only the "
                     "residency gate decides where a payload goes)")
    try:
        data = json.loads(content)
    except ValueError:
        if 400 <= status < 500:  # e.g. a front proxy's HTML 413: the request was refused as sent, not the backend's
            # failure (counted, one tenant's odd request would eject a backend every tenant shares)
            raise _Upstream4xx(status, None) from None
        raise Failed(f"HTTP {status} with a body that is not JSON") from None
    if status >= 400:
        raise _Upstream4xx(status, data)
    if not isinstance(data, dict):
        raise Failed(f"answered a JSON {type(data).__name__}, not an object")
    return data


def _traced(headers: dict[str, str] | None) -> dict[str, str] | None:
    """The call's headers with the W3C trace context of the send in progress (none when tracing is off)."""
    trace = outgoing()
    if not trace:
        return headers
    return {**trace, **headers} if headers else dict(trace)


class HttpClient(BackendClient):
    """OpenAI-compatible HTTP backends over one pooled keep-alive client: the `httpx.AsyncClient` passed in (the
    SDK shares its own), else aiohttp where installed (it comes with ray[serve]), else a new httpx client.

    Adapters whose vendor speaks OpenAI's wire format over HTTP (Azure ML, Databricks) subclass it and override
    `url` and `headers` only: the verdicts and the stream handling stay in one place."""

    #: operation -> path under the backend's address
    paths = {"chat": "/v1/chat/completions", "embed": "/v1/embeddings", "health": "/v1/models"}
    #: Whether its backends sit behind Serve's HAProxy ingress as Sovra runs it (`infra.haproxy_bind`), so that the
    #: ingress's no-live-replica page may be believed (`_answer`)
    behind_ingress: ClassVar[bool] = False

    def __init__(self, client: httpx.AsyncClient | None = None):
        self._transport = _HttpxTransport(client) if client is not None else _default_transport()

    def url(self, backend: Backend, op: str) -> str:
        return backend.address + self.paths[op]

    async def headers(self, backend: Backend) -> dict[str, str] | None:
        """Credentials for `backend`, from where the router runs: the environment variable that org.yaml names in
        `api_key_env` (never the key itself). A missing one means nothing can be sent: not delivered, down."""
        env = backend.params.get("api_key_env")
        if not env:
            return None
        key = os.environ.get(env)
        if not key:
            raise NotDelivered(f"{backend.target}: environment variable {env} (its API key) is not set where the "
                               "router runs", down=True)
        return {"Authorization": f"Bearer {key}"}

    def body(self, backend: Backend, body: dict[str, Any], *, stream: bool | None) -> dict[str, Any]:
        """The request as the backend expects it: `model` is the name the server knows (`served_model`, else the
        deployment's model), not the deployment name the client addressed."""
        out = {**body, "model": backend.params.get("served_model", backend.model)}
        if stream is not None:
            out["stream"] = stream
        return out

    def _request(self, backend: Backend, op: str, body: dict[str, Any], *, stream: bool | None) -> tuple[str, bytes]:
        """The URL and the encoded body of one call, built before anything is sent: what cannot be built is
        `NotSent` (`errors.building`), never the backend's failure."""
        with building(backend.target):
            return self.url(backend, op), _encode(self.body(backend, body, stream=stream))

    async def _post(self, backend: Backend, op: str, body: dict[str, Any], *, stream: bool | None) -> dict[str, Any]:
        url, payload = self._request(backend, op, body, stream=stream)
        resp = await self._transport.post(url, payload, stream=False, headers=_traced(await self.headers(backend)))
        try:
            content = await resp.read(MAX_ANSWER_BYTES)
        finally:
            await resp.aclose()
        return _answer(backend.target, resp.status, content, resp.retry_after, ingress=self.behind_ingress)

    async def chat(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post(backend, "chat", body, stream=False)

    async def health(self, backend: Backend) -> bool:
        """`GET /v1/models` (or the adapter's own path): it carries no payload."""
        return await self._transport.get_status(self.url(backend, "health"), 2.0, await self.headers(backend)) == 200

    async def embed(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post(backend, "embed", body, stream=None)

    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        url, payload = self._request(backend, "chat", body, stream=True)
        resp = await self._transport.post(url, payload, stream=True, headers=_traced(await self.headers(backend)))
        if resp.status >= 300:
            try:
                content = await resp.read(MAX_ANSWER_BYTES)
            finally:
                await resp.aclose()
            _answer(backend.target, resp.status, content, resp.retry_after, ingress=self.behind_ingress)
        events = _events(sse_lines(resp.chunks()))
        try:
            first = await anext(events, None)
        except BaseException:
            await resp.aclose()
            raise
        return _rest(first, events, resp)

    async def aclose(self) -> None:
        await self._transport.aclose()


def sse_event(data: str | bytes, who: str = "the backend") -> dict[str, Any] | None:
    """One server-sent event's `data:` payload (prefix removed) as an OpenAI stream event: the JSON object, or
    None at `[DONE]`. Anything else breaks the stream (`Failed`: it started, so nothing may be resent), and so
    does an error the backend reports mid-stream. Every adapter reading OpenAI-style events parses them here."""
    data = data.strip()
    if data in ("[DONE]", b"[DONE]"):
        return None
    try:
        event = json.loads(data)
    except ValueError:
        raise Failed(f"a stream event from {who} is not JSON") from None
    if not isinstance(event, dict):
        raise Failed(f"a stream event from {who} is not a JSON object")
    if "error" in event:
        raise Failed(f"{who} reported an error mid-stream: {str(event['error'])[:500]}")
    return event


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of `data:` lines, until `[DONE]`; a body with neither is not an event stream."""
    seen = False
    async for line in lines:
        if not line.startswith("data:"):
            continue
        seen = True
        event = sse_event(line[5:])
        if event is None:
            return
        yield event
    if not seen:
        raise Failed("the answer to a streamed request held no server-sent events")


async def _rest(first: dict[str, Any] | None, events: AsyncIterator[dict[str, Any]], resp: _Streamed
                ) -> AsyncIterator[dict[str, Any]]:
    try:
        if first is None:
            return
        yield first
        async for event in events:
            yield event
    finally:
        await resp.aclose()


class ClientSet(Mapping[str, BackendClient]):
    """The router replica's clients, one per backend kind, each made by its provider adapter on first use (so a
    router that never calls Snowflake never imports its SDK). Iterating yields only the clients made so far."""

    def __init__(self, given: Mapping[str, BackendClient] | None = None):
        self._clients: dict[str, BackendClient] = dict(given or {})

    def __getitem__(self, kind: str) -> BackendClient:
        client = self._clients.get(kind)
        if client is None:
            from sovra.providers import base

            client = self._clients[kind] = base.get(kind).client()
        return client

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._clients))

    def __len__(self) -> int:
        return len(self._clients)
