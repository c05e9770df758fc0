"""The router's client for Snowflake Cortex backends: chat, streamed or not, through the Cortex REST API
(`POST /api/v2/cortex/inference:complete`, server-sent events), embeddings through `EMBED_TEXT_768/1024`, health and
state through SQL.

Why REST for chat: Snowflake is deprecating the SQL function `SNOWFLAKE.CORTEX.COMPLETE`; its SQL successor
`AI_COMPLETE` takes one prompt string (no conversation, no tools), while the REST API takes the conversation, tools
and structured output. An account without the REST API is refused (404, marked down) rather than served through a
function that cannot carry the request.

One connector connection per account settings per router replica, opened on first use and shared by every call
(the connector is thread-safe per connection; each call takes its own cursor in the shared SDK pool, `blocking`).
The REST calls ride the same session (`Authorization: Snowflake Token="..."`), so there is one credential.
Every failure becomes a router verdict in one function, `verdict`.

The request and answer shapes follow Snowflake's OpenAPI description of the Cortex REST API
(snowflakedb/snowflake-rest-api-specs, `cortex-inference.yaml`: CompleteRequest, Tool/tool_spec, ToolChoice,
ToolUse, ToolResults, StreamingCompleteResponseDelta).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from sovra.core.backends import Backend
from sovra.providers.clients import BackendClient, refused_503, sse_event, sse_lines
from sovra.core.api_errors import (
    AttemptFailed,
    BadRequest,
    Failed,
    NotDelivered,
    Refused,
    RouterError,
    TimedOut,
    building,
)
from sovra.providers import openai_wire as wire
from sovra.providers.snowflake.provider import SETTING, base_url, connect_kwargs

REST_COMPLETE = "/api/v2/cortex/inference:complete"
#: Cortex's sampling ranges: temperature and top_p are 0..1 inclusive (AI_COMPLETE / COMPLETE "model_parameters",
#: docs.snowflake.com/en/sql-reference/functions/ai_complete-single-string); OpenAI's temperature goes to 2.
TEMPERATURE_RANGE = TOP_P_RANGE = (0.0, 1.0)
#: The OpenAI behaviour fields Cortex has a place for (`request` translates them); the rest are refused.
SUPPORTED = ("tools", "tool_choice", "response_format", "stream_options", "parallel_tool_calls")
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

    gen_ai_system = "snowflake.cortex"

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
                    from sovra.providers import base

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
        """The REST stream read to its end and returned whole; an error inside it fails the call (never a
        truncated answer reported complete)."""
        try:
            return await asyncio.wait_for(_collect(self._rest_stream(backend, body)), self._timeout(backend))
        except Exception as exc:  # noqa: BLE001
            raise verdict(exc, sent=True) from None

    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return await wire.first_then_rest(self._rest_stream(backend, body))

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
        where = f"Snowflake Cortex ({backend.target})"
        with building(where):
            payload = cortex_request(backend.address, body, where)
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
            if resp.status_code in (404, 405) and not _UNKNOWN_MODEL.search(text):
                raise Refused(f"{backend.target}: this Snowflake account has no Cortex REST API (HTTP "
                              f"{resp.status_code} from {REST_COMPLETE}); Sovra sends chat only there, since the SQL "
                              "COMPLETE function is deprecated: use an account in a region with the REST API, or "
                              "ask Snowflake to enable it", status=404, down=True)
            if resp.status_code == 401 and attempt == 1:  # an expired session token: log in again, once
                await wire.blocking(account.drop)
                continue
            raise verdict(_RestStatus(resp.status_code, text, resp.headers.get("retry-after")), sent=True)
        try:
            async for chunk in _chunks(backend.model, resp, payload.get("max_tokens")):
                yield chunk
        finally:
            await resp.aclose()


async def _chunks(model: str, resp: httpx.Response, max_tokens: int | None) -> AsyncIterator[dict[str, Any]]:
    """Cortex's server-sent events as OpenAI chunks: text deltas as content, tool_use deltas as tool calls (the
    first names the call, the next carry its input's JSON text); `usage` (cumulative per event) ends the stream.
    An error reported inside the stream (`{"error": ...}` data, or an `event: error`) breaks it: `Failed`, which
    the router turns into a `stream_interrupted` error event. Lines are read with the router's bound (`sse_lines`),
    not httpx's `aiter_lines`, which buffers a line of any length."""
    id_, usage, first, calls, finish, event = wire.new_id(), None, True, -1, None, ""
    try:
        async for line in sse_lines(resp.aiter_bytes()):
            if line.startswith("event:"):
                event = line[6:].strip()
                continue
            if not line.startswith("data:"):
                event = "" if not line else event  # a blank line ends the event
                continue
            if event == "error":
                raise Failed(f"Cortex reported an error mid-stream: {line[5:].strip()[:500]}")
            data = sse_event(line[5:], "Cortex")
            if data is None:
                break
            usage = data.get("usage") or usage
            choice = (data.get("choices") or [{}])[0]
            finish = choice.get("finish_reason") or finish
            delta = choice.get("delta") or {}
            kind = delta.get("type", "text")
            role = "assistant" if first else None
            if kind == "text" and delta.get("content"):
                yield wire.chunk(model, id_, content=delta["content"], role=role)
            elif kind == "tool_use" and delta.get("tool_use_id"):
                calls += 1
                yield wire.chunk(model, id_, role=role, tool_calls=[wire.tool_call_delta(
                    calls, id=delta["tool_use_id"], name=delta.get("name") or "", arguments=delta.get("input") or "")])
            elif kind == "tool_use" and calls >= 0 and delta.get("input"):
                yield wire.chunk(model, id_, tool_calls=[wire.tool_call_delta(calls, arguments=delta["input"])])
            else:
                continue  # thinking / reasoning deltas are not part of an OpenAI answer
            first = False
    except httpx.HTTPError as exc:
        raise verdict(exc, sent=True) from None
    if first:
        raise Failed("the Cortex stream ended without any answer")
    usage = usage or {}
    done = usage.get("completion_tokens")
    capped = max_tokens is not None and done is not None and done >= max_tokens
    finish = finish or ("tool_calls" if calls >= 0 else "length" if capped else "stop")
    yield wire.chunk(model, id_, finish_reason=finish,
                     usage_=wire.usage(usage.get("prompt_tokens"), usage.get("completion_tokens")))


async def _collect(chunks: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """A whole `chat.completion` from this adapter's own chunks: text joined, tool calls assembled by index."""
    model, id_, text, calls, finish, usage = "", None, [], {}, "stop", None
    async for c in chunks:
        model, id_, usage = c.get("model", model), c.get("id", id_), c.get("usage") or usage
        choice = c["choices"][0]
        finish = choice.get("finish_reason") or finish
        delta = choice.get("delta") or {}
        if delta.get("content"):
            text.append(delta["content"])
        for d in delta.get("tool_calls") or ():
            call = calls.setdefault(d["index"], {"id": d.get("id", ""), "name": "", "arguments": ""})
            call["name"] += (d.get("function") or {}).get("name") or ""
            call["arguments"] += (d.get("function") or {}).get("arguments") or ""
    usage = usage or {}
    tool_calls = [wire.tool_call(c["id"], c["name"], c["arguments"] or "{}") for _, c in sorted(calls.items())]
    return wire.completion(model, "".join(text) or (None if tool_calls else ""), finish_reason=finish, id=id_,
                           prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                           tool_calls=tool_calls)


# -- the request ---------------------------------------------------------------------------------------------------


def cortex_request(model: str, body: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An OpenAI chat request as Cortex's CompleteRequest. What Cortex has no place for is refused (ValueError,
    which `building` makes a 400 naming the backend), never dropped."""
    wire.refuse_unsupported(body, where, SUPPORTED)
    out: dict[str, Any] = {"model": model, "messages": _messages(body.get("messages") or [], where), "stream": True}
    for key, (low, high) in (("temperature", TEMPERATURE_RANGE), ("top_p", TOP_P_RANGE)):
        value = wire.within(body, key, low, high, where)
        if value is not None:
            out[key] = float(value)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError("`max_tokens` must be a positive integer")
        out["max_tokens"] = max_tokens
    out.update(_tools(body, where))
    fmt = _response_format(body.get("response_format"), where)
    if fmt is not None:
        out["response_format"] = fmt
    return out


def _tools(body: Mapping[str, Any], where: str) -> dict[str, Any]:
    """OpenAI `tools` / `tool_choice` as Cortex's `tools: [{tool_spec}]` / `tool_choice: {type, name}`."""
    tools, choice = body.get("tools") or [], body.get("tool_choice")
    if body.get("parallel_tool_calls") is False and tools:
        raise ValueError(f"{where} cannot do `parallel_tool_calls: false` (Cortex has no way to limit an answer to "
                         "one tool call); send the request without it")
    if not tools:
        if choice not in (None, "none", "auto"):
            raise ValueError("`tool_choice` names a tool, but the request has no `tools`")
        return {}
    if choice == "none":  # Cortex's ToolChoice has no "none": a model offered no tools calls none
        return {}
    specs = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(tool, Mapping) or tool.get("type") != "function" or not isinstance(fn, Mapping) \
                or not fn.get("name"):
            raise ValueError(f"{where} takes function tools only ({{type: function, function: {{name, ...}}}})")
        spec: dict[str, Any] = {"type": "generic", "name": fn["name"],
                                "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description"):
            spec["description"] = fn["description"]
        specs.append({"tool_spec": spec})
    out: dict[str, Any] = {"tools": specs}
    if choice in (None, "auto"):
        out["tool_choice"] = {"type": "auto"}
    elif choice == "required":
        out["tool_choice"] = {"type": "required"}
    elif isinstance(choice, Mapping) and choice.get("type") == "function" and (choice.get("function") or {}).get(
            "name"):
        out["tool_choice"] = {"type": "tool", "name": [choice["function"]["name"]]}
    else:
        raise ValueError(f"`tool_choice` {choice!r} is not one {where} can take (auto, required, none, or a "
                         "function by name)")
    return out


def _response_format(fmt: Any, where: str) -> dict[str, Any] | None:
    """OpenAI `response_format` as Cortex's structured output `{type: json, schema}`. JSON mode (`json_object`)
    is the schema of any object; a JSON schema is passed as given. Which models honour it is Cortex's to say (a
    model that cannot answers 400, which stays a 400)."""
    if fmt is None or (isinstance(fmt, Mapping) and fmt.get("type") == "text"):
        return None
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_object":
        return {"type": "json", "schema": {"type": "object"}}
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if isinstance(schema, Mapping):
            return {"type": "json", "schema": dict(schema)}
        raise ValueError("`response_format.json_schema.schema` must be a JSON schema object")
    raise ValueError(f"{where} cannot do `response_format` {fmt!r} (it takes text, json_object or json_schema)")


def _messages(messages: list[Mapping[str, Any]], where: str) -> list[dict[str, Any]]:
    """OpenAI messages as Cortex takes them: one system prompt first, then user and assistant turns alternating,
    ending with a user turn (CompleteRequest's rules), so consecutive turns of one role are merged. An assistant's
    tool calls become its `tool_use` contents and each `tool` message a user turn's `tool_results`."""
    system, rest = wire.split_system(messages)
    out: list[dict[str, Any]] = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    names: dict[str, str] = {}  # tool call id -> function name (Cortex's tool_results name the tool)
    for m in rest:
        role, text = m.get("role"), wire.text_of(m.get("content"))
        turn: dict[str, Any]
        if role == "user":
            turn = {"role": "user", "content": text}
        elif role == "assistant":
            turn = {"role": "assistant", "content": text}
            uses = [_tool_use(call, names) for call in m.get("tool_calls") or ()]
            if uses:
                turn["content_list"] = uses
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in names:
                raise ValueError(f"a tool message answers tool call {call_id!r}, which no earlier assistant turn made")
            turn = {"role": "user", "content": "", "content_list": [{"type": "tool_results", "tool_results": {
                "tool_use_id": call_id, "name": names[call_id], "content": [{"type": "text", "text": text}]}}]}
        else:
            raise ValueError(f"{where} takes system, user, assistant and tool messages, not {role!r}")
        _merge(out, turn)
    if not out or out[-1]["role"] != "user":
        raise ValueError("a Cortex conversation must end with a user (or tool) message")
    return out


def _tool_use(call: Mapping[str, Any], names: dict[str, str]) -> dict[str, Any]:
    fn = call.get("function") or {}
    if not call.get("id") or not fn.get("name"):
        raise ValueError("an assistant tool call needs an `id` and a `function.name`")
    try:
        args = json.loads(fn.get("arguments") or "{}")
    except ValueError:
        raise ValueError(f"tool call {call['id']}: `arguments` is not JSON") from None
    if not isinstance(args, dict):
        raise TypeError(f"tool call {call['id']}: `arguments` must be a JSON object")
    names[call["id"]] = fn["name"]
    return {"type": "tool_use", "tool_use": {"tool_use_id": call["id"], "name": fn["name"], "input": args}}


def _merge(out: list[dict[str, Any]], turn: dict[str, Any]) -> None:
    """Append `turn`, or fold it into the previous turn of the same role (Cortex requires alternation)."""
    last = out[-1] if out else None
    if last is None or last["role"] != turn["role"] or last["role"] == "system":
        out.append(turn)
        return
    last["content"] = "\n\n".join(t for t in (last["content"], turn["content"]) if t)
    if turn.get("content_list"):
        last["content_list"] = [*last.get("content_list", ()), *turn["content_list"]]
