"""The router's client for Snowflake Cortex backends: chat through SQL `SNOWFLAKE.CORTEX.COMPLETE`, streams through
the Cortex REST API (server-sent events), embeddings through `EMBED_TEXT_768/1024`, health and state through SQL.

One connector connection per account settings per router replica, opened on first use and shared by every call
(the connector is thread-safe per connection; each call takes its own cursor in the shared SDK pool, `blocking`).
The REST stream rides the same session (`Authorization: Snowflake Token="..."`), so there is one credential.
Every failure becomes a router verdict in one function, `verdict`.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from orchestrator.router.backends import Backend
from orchestrator.router.clients import BackendClient, refused_503, sse_event, sse_lines
from orchestrator.router.errors import (
    AttemptFailed,
    BadRequest,
    Failed,
    NotDelivered,
    Refused,
    RouterError,
    TimedOut,
    building,
)
from providers import openai_wire as wire
from providers.snowflake import SETTING, base_url, connect_kwargs

COMPLETE_SQL = "SELECT SNOWFLAKE.CORTEX.COMPLETE(?, PARSE_JSON(?), PARSE_JSON(?))"
REST_COMPLETE = "/api/v2/cortex/inference:complete"
#: Cortex embedding models whose vectors have 1024 dimensions; the others have 768.
EMBED_1024 = frozenset({"snowflake-arctic-embed-l-v2.0", "snowflake-arctic-embed-l-v2.0-8k", "nv-embed-qa-4",
                        "multilingual-e5-large", "voyage-multilingual-2"})
#: Login refusals: wrong password or key, locked or disabled user, expired or invalid token.
_AUTH_ERRNOS = frozenset({390100, 390101, 390102, 390103, 390104, 390144, 390186, 390190, 390195, 390303, 390318})
_UNKNOWN_MODEL = re.compile(r"unknown model|model .*(does not exist|is unavailable|not available)|does not exist",
                            re.IGNORECASE)
_THROTTLED = re.compile(r"remote service error: 429|too many requests|throttl|rate limit", re.IGNORECASE)
_UNREACHABLE = re.compile(r"connection refused|newconnectionerror|failed to establish|name or service not known|"
                          r"could not connect", re.IGNORECASE)
_TIMEOUT = re.compile(r"timed out|timeout|execution canceled|execution cancelled", re.IGNORECASE)


class _RestStatus(Exception):
    """A Cortex REST answer other than 200, carried to `verdict`."""

    def __init__(self, status: int, text: str, retry_after: str | None):
        super().__init__(f"HTTP {status}: {text[:500]}")
        self.status, self.text, self.retry_after = status, text, retry_after


def verdict(exc: BaseException, *, sent: bool) -> BaseException:
    """The one map from what went wrong talking to Snowflake (connector errors, REST statuses, HTTP failures, our
    own time bound) to the router's verdicts. `sent` is False while connecting (no payload has left)."""
    if isinstance(exc, (AttemptFailed, RouterError)):
        return exc
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return TimedOut("Cortex did not answer in time") if sent else NotDelivered("connecting to Snowflake timed out")
    if isinstance(exc, _RestStatus):
        return _rest_verdict(exc)
    if isinstance(exc, httpx.HTTPError):
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            return NotDelivered(f"Cortex REST: {type(exc).__name__}")
        if isinstance(exc, httpx.TimeoutException):
            return TimedOut(f"Cortex REST: {type(exc).__name__}")
        return Failed(f"Cortex REST: {type(exc).__name__} after the request was sent")
    from snowflake.connector import errors as sf

    if not isinstance(exc, sf.Error):
        return Failed(f"{type(exc).__name__}: {str(exc)[:300]}")
    text = f"{getattr(exc, 'errno', '')} {exc.msg or exc}"
    if isinstance(exc, sf.OperationalError) and not _AUTH_ERRNOS.intersection({exc.errno}):
        if _UNREACHABLE.search(text) or not sent:
            return NotDelivered(f"cannot reach Snowflake: {text[:300]}")
        return TimedOut(text[:300]) if _TIMEOUT.search(text) else Failed(text[:300])
    if exc.errno in _AUTH_ERRNOS or exc.sqlstate == "28000":
        return Refused(f"Snowflake refused the router's credentials: {text[:300]}", status=401, down=True)
    if isinstance(exc, sf.ServiceUnavailableError):
        return Refused(text[:300])
    if _THROTTLED.search(text):
        return Refused(f"Cortex throttled: {text[:300]}", throttled=True)
    if _UNKNOWN_MODEL.search(text):
        return Refused(f"Cortex has no such model here: {text[:300]}", status=404, down=True)
    if exc.errno in (604, 630) or _TIMEOUT.search(text):
        return TimedOut(text[:300])
    if "remote service error: 400" in text:
        return BadRequest(f"Cortex rejected the request: {text[:500]}")
    if not sent:
        return NotDelivered(text[:300])
    return Failed(text[:300])


def _rest_verdict(exc: _RestStatus) -> BaseException:
    if exc.status == 429:
        retry = int(exc.retry_after) if (exc.retry_after or "").isdigit() else None
        return Refused("Cortex REST: HTTP 429", throttled=True, retry_after_s=retry)
    if exc.status in (401, 403):
        return Refused(f"Cortex REST refused the session: {exc}", status=401, down=True)
    if _UNKNOWN_MODEL.search(exc.text):
        return Refused(f"Cortex has no such model here: {exc}", status=404, down=True)
    if exc.status == 400:
        return BadRequest(f"Cortex rejected the request: {exc}")
    # A 503 is a refusal (not processed, so another backend may take it) only with evidence: a Retry-After or a
    # body saying so (`clients.refused_503`); a 504 is a gateway that gave up waiting while Cortex may still run it.
    if exc.status == 503 and refused_503(exc.text.encode(), exc.retry_after):
        retry = int(exc.retry_after) if (exc.retry_after or "").isdigit() else None
        return Refused(f"Cortex REST: {exc}", retry_after_s=retry)
    if exc.status == 504:
        return TimedOut(f"Cortex REST: {exc}")
    return Failed(f"Cortex REST: {exc}")


class _Account:
    """One pooled connector connection for one account's settings; opened on first use, reopened after it broke."""

    def __init__(self, params: Mapping[str, str], connect: Callable[..., Any]):
        self.params, self._connect, self._lock, self._conn = dict(params), connect, threading.Lock(), None

    def get(self) -> Any:
        with self._lock:
            if self._conn is None or self._conn.is_closed():
                try:
                    self._conn = self._connect(**connect_kwargs(self.params))
                except Exception as exc:  # noqa: BLE001  (every login failure is a verdict)
                    raise verdict(exc, sent=False) from None
            return self._conn

    def drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001, S110  (closing a broken session must not mask the outcome)
                pass

    def query(self, sql: str, args: list[Any], timeout_s: float | None = None) -> list[tuple]:
        conn = self.get()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args, timeout=int(timeout_s) if timeout_s and timeout_s >= 1 else None)
                return cur.fetchall()
        except Exception as exc:  # noqa: BLE001
            mapped = verdict(exc, sent=True)
            if isinstance(mapped, Refused) and mapped.status == 401:
                self.drop()
            raise mapped from None


class CortexClient(BackendClient):
    """Snowflake Cortex behind the router's OpenAI operations. `connect` (the connector's) and `http` are injected
    for tests; the defaults are the real ones, made on first use."""

    def __init__(self, *, connect: Callable[..., Any] | None = None, http: httpx.AsyncClient | None = None):
        self._connect, self._http = connect, http
        self._accounts: dict[tuple, _Account] = {}
        self._lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _account(self, backend: Backend) -> _Account:
        key = tuple(sorted(backend.params.items()))
        with self._lock:
            account = self._accounts.get(key)
            if account is None:
                if self._connect is None:
                    from providers import base

                    self._connect = base.get("snowflake-cortex").sdk().connect
                account = self._accounts[key] = _Account(backend.params, self._connect)
        return account

    def _timeout(self, backend: Backend) -> float:
        return float(backend.params.get("timeout_s", 110))

    async def _query(self, backend: Backend, sql: str, args: list[Any]) -> list[tuple]:
        """A statement through the pool, bounded by the backend's timeout (Snowflake cancels it at the same time)."""
        timeout = self._timeout(backend)
        try:
            return await asyncio.wait_for(wire.blocking(self._account(backend).query, sql, args, timeout), timeout)
        except Exception as exc:  # noqa: BLE001
            raise verdict(exc, sent=True) from None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0, pool=5.0))
        return self._http

    # -- operations ----------------------------------------------------------------------------------------------

    async def chat(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        with building(backend.target):
            messages, options = _messages(body), _options(body)
            args = [backend.address, json.dumps(messages), json.dumps(options)]
        rows = await self._query(backend, COMPLETE_SQL, args)
        return _completion(backend.model, rows, options)

    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            return await wire.first_then_rest(self._rest_stream(backend, body))
        except _NoRest:  # the account has no Cortex REST API: the whole answer, faithfully, as one chunk
            return wire.replay(wire.as_chunks(await self.chat(backend, body)))

    async def embed(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        with building(backend.target):
            inputs = wire.inputs_of(body)
            if not inputs:
                raise BadRequest("embeddings need a non-empty `input`")
            fn = "EMBED_TEXT_1024" if backend.address in EMBED_1024 else "EMBED_TEXT_768"
            # VECTOR cast to ARRAY: one JSON shape from the connector; ordered by the input's index
            values = ", ".join("(?, ?)" for _ in inputs)
            sql = (f"SELECT column1, SNOWFLAKE.CORTEX.{fn}(?, column2)::ARRAY FROM VALUES {values} ORDER BY column1")
            args: list[Any] = [backend.address]
            for i, text in enumerate(inputs):
                args += [i, text]
        rows = await self._query(backend, sql, args)
        try:
            vectors = [json.loads(v) if isinstance(v, str) else list(v) for _, v in rows]
        except (TypeError, ValueError):
            raise Failed("Cortex answered an embedding that is not a list of numbers") from None
        return wire.embeddings(backend.model, vectors, sum(len(t.split()) for t in inputs))

    async def health(self, backend: Backend) -> bool:
        """`SELECT 1` on the pooled session: it reaches the account and logs in, carrying no payload."""
        try:
            return bool(await self._query(backend, "SELECT 1", []))
        except Exception:  # noqa: BLE001  (any failure means not healthy)
            return False

    async def describe(self, backend: Backend) -> dict[str, Any]:
        """The account, its region and its cross-region setting, as Snowflake reports them."""
        out: dict[str, Any] = {"account": backend.params.get("account", ""), "model": backend.address}
        try:
            out["region"] = (await self._query(backend, "SELECT CURRENT_REGION()", []))[0][0]
            rows = await self._query(backend, f"SHOW PARAMETERS LIKE '{SETTING}' IN ACCOUNT", [])
            if rows:
                out[SETTING.lower()] = rows[0][1]
        except AttemptFailed as exc:
            out["error"] = str(exc)
        return out

    async def aclose(self) -> None:
        for account in list(self._accounts.values()):
            await wire.blocking(account.drop)
        if self._http is not None:
            await self._http.aclose()

    # -- the REST stream -----------------------------------------------------------------------------------------

    async def _rest_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        account = self._account(backend)
        with building(backend.target):
            payload = {"model": backend.address, "messages": _messages(body), "stream": True, **_options(body)}
        url = base_url(backend.params) + REST_COMPLETE
        for attempt in (1, 2):
            conn = await wire.blocking(account.get)
            headers = {"Authorization": f'Snowflake Token="{conn.rest.token}"',
                       "Accept": "application/json, text/event-stream"}
            try:
                request = self._client().build_request("POST", url, json=payload, headers=headers,
                                                       timeout=httpx.Timeout(self._timeout(backend), connect=5.0))
                resp = await self._client().send(request, stream=True, follow_redirects=False)
            except httpx.HTTPError as exc:
                raise verdict(exc, sent=True) from None
            if resp.status_code == 200:
                break
            text = (await resp.aread()).decode(errors="replace")
            await resp.aclose()
            if resp.status_code in (404, 405):
                raise _NoRest()
            if resp.status_code == 401 and attempt == 1:  # an expired session token: log in again, once
                await wire.blocking(account.drop)
                continue
            raise verdict(_RestStatus(resp.status_code, text, resp.headers.get("retry-after")), sent=True)
        try:
            async for chunk in _chunks(backend.model, resp):
                yield chunk
        finally:
            await resp.aclose()


class _NoRest(Exception):
    """The Cortex REST endpoint is not there for this account (HTTP 404/405): nothing was processed."""


async def _chunks(model: str, resp: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Cortex's server-sent events as OpenAI chunks; its `usage` (cumulative per event) ends the stream. Lines are
    read with the router's bound (`sse_lines`), not httpx's `aiter_lines`, which buffers a line of any length."""
    id_, usage, first = wire.new_id(), None, True
    try:
        async for line in sse_lines(resp.aiter_bytes()):
            if not line.startswith("data:"):
                continue
            event = sse_event(line[5:], "Cortex")
            if event is None:
                break
            usage = event.get("usage") or usage
            choice = (event.get("choices") or [{}])[0]
            text = (choice.get("delta") or {}).get("content")
            if text:
                yield wire.chunk(model, id_, content=text, role="assistant" if first else None)
                first = False
    except httpx.HTTPError as exc:
        raise verdict(exc, sent=True) from None
    if first:
        raise Failed("the Cortex stream ended without any text")
    usage = usage or {}
    yield wire.chunk(model, id_, finish_reason="stop",
                     usage_=wire.usage(usage.get("prompt_tokens"), usage.get("completion_tokens")))


def _messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    """OpenAI messages as Cortex takes them: one system prompt first, then user/assistant turns as text."""
    system, rest = wire.split_system(body.get("messages") or [])
    out = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    for m in rest:
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise BadRequest(f"Cortex takes system, user and assistant messages, not {role!r}")
        out.append({"role": role, "content": wire.text_of(m.get("content"))})
    if not out or out[-1]["role"] != "user":
        raise BadRequest("a Cortex conversation must end with a user message")
    return out


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling options Cortex COMPLETE takes (always an object, so COMPLETE answers JSON with usage)."""
    out: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    for key, value, kind in (("temperature", body.get("temperature"), float), ("top_p", body.get("top_p"), float),
                             ("max_tokens", max_tokens, int)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise BadRequest(f"`{key}` must be a non-negative number")
        out[key] = kind(value)
    return out


def _completion(model: str, rows: list[tuple], options: Mapping[str, Any]) -> dict[str, Any]:
    """COMPLETE's JSON answer (choices[0].messages, usage) as an OpenAI chat.completion."""
    try:
        raw = rows[0][0]
        answer = json.loads(raw) if isinstance(raw, str) else raw
        text = answer["choices"][0]["messages"]
        usage = answer.get("usage") or {}
    except (IndexError, KeyError, TypeError, ValueError):
        raise Failed("Cortex COMPLETE answered in an unexpected shape") from None
    done = usage.get("completion_tokens")
    capped = options.get("max_tokens") is not None and done is not None and done >= options["max_tokens"]
    return wire.completion(model, text, finish_reason="length" if capped else "stop",
                           prompt_tokens=usage.get("prompt_tokens"), completion_tokens=done)
