"""A Snowflake account with Cortex on 127.0.0.1: fakesnow's server (the connector's real wire protocol, SQL run by
duckdb) behind a thin ASGI layer that adds what fakesnow cannot take, so the adapter runs unpatched.

What runs where, and why:
- `SNOWFLAKE.CORTEX.COMPLETE` / `EMBED_TEXT_768/1024` are duckdb functions in an attached `SNOWFLAKE` catalog,
  schema `CORTEX` (a macro over a Python UDF), so the adapter's SQL, bind parameters, PARSE_JSON and the result
  fetch go through fakesnow and duckdb for real. The UDFs are pure (an echo model): fakesnow keeps one duckdb for
  the whole process, so nothing per-emulator may live in them.
- `SHOW PARAMETERS ... IN ACCOUNT` raises NotImplementedError in fakesnow 0.12 (only session scope), and duckdb has
  no CURRENT_REGION(): the layer rewrites those two statements into equivalent SELECTs over this emulator's values
  before fakesnow sees them (the answer keeps Snowflake's columns: key, value, default, level, description, type).
- Faults are answered at the wire, as Snowflake answers them: a failed login (390100), Cortex's external-function
  errors (100351, with the remote status 400 "unknown model" or 429), a slow answer, a closed port.
- The Cortex REST API (`POST /api/v2/cortex/inference:complete`, server-sent events) is served on the same host,
  accepting only a live session token of this server (`Authorization: Snowflake Token="..."`). It follows Snowflake's
  OpenAPI description (snowflakedb/snowflake-rest-api-specs `cortex-inference.yaml`): CompleteRequest's message
  rules (a system message only first, user and assistant alternating, a user message last, `content` a string) are
  enforced with a 400; `tools: [{tool_spec}]` with `tool_choice {type: required | tool}` is answered with a
  `tool_use` stream (StreamingToolUse deltas: the first carries `tool_use_id` and `name`, the next `input` text);
  a user turn's `tool_results` are echoed back; `response_format {type: json, schema}` gets a JSON object answer.
  Which models take tools is an account's business: here `claude-*` and `openai-*` do, others answer 400.
- What it cannot show: Cortex's real models, guardrails, the SQL successor `AI_COMPLETE`, Snowflake's exact
  mid-stream error bytes (it sends `data: {"error": ...}` or an `event: error`, `stream_error`), PAT / key-pair
  JWT authentication of the REST API (it takes the connector's session token only).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Self

#: Cortex's answer text for a conversation: deterministic, so tests can assert it.
ECHO = "echo: "
DEFAULT_MODELS = ("mistral-large2", "llama3.1-8b", "claude-3-5-sonnet", "snowflake-arctic-embed-m-v1.5",
                  "snowflake-arctic-embed-l-v2.0")
TOOL_MODELS = ("claude-", "openai-")


def _said(message: dict[str, Any]) -> str:
    """A user turn's text: its content, or the text of the tool results it carries."""
    results = [c["tool_results"] for c in message.get("content_list") or () if c.get("type") == "tool_results"]
    if results:
        return " ".join(f"{r['name']} said {t.get('text', '')}" for r in results for t in r.get("content") or ())
    return str(message.get("content", ""))


def answer(messages: list[dict[str, Any]], max_tokens: int | None = None) -> tuple[str, int, int]:
    """The echo model: the last user turn, prefixed; tokens are words. Returns (text, prompt, completion)."""
    last = next((_said(m) for m in reversed(messages) if m.get("role") == "user"), "")
    words = (ECHO + last).split()
    if max_tokens is not None:
        words = words[:max_tokens]
    prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
    return " ".join(words), prompt, len(words)


def _complete_udf(model: str, messages: str, options: str | None) -> str:
    msgs = json.loads(messages)
    opts = json.loads(options) if options else {}
    text, p, c = answer(msgs, opts.get("max_tokens"))
    return json.dumps({"choices": [{"messages": text}], "created": int(time.time()), "model": model,
                       "usage": {"completion_tokens": c, "prompt_tokens": p, "guardrail_tokens": 0,
                                 "total_tokens": p + c}})


def vector(text: str, dim: int) -> list[float]:
    """A deterministic embedding: the text's length, then its first characters' code points, zero-padded."""
    head = [float(len(text))] + [float(ord(ch)) for ch in text[: dim - 1]]
    return head + [0.0] * (dim - len(head))


_INSTALL_LOCK = threading.Lock()


def _install_cortex() -> None:
    """Define SNOWFLAKE.CORTEX.* in fakesnow's process-wide duckdb (once; later calls find it there)."""
    import fakesnow.server

    duck = fakesnow.server.shared_fs.duck_conn
    with _INSTALL_LOCK:
        with duck.cursor() as probe:
            if probe.execute("SELECT count(*) FROM duckdb_databases() WHERE database_name = 'snowflake'").fetchall()[0][0]:
                return
        duck.create_function("_cortex_complete", _complete_udf, ["VARCHAR", "VARCHAR", "VARCHAR"], "VARCHAR")
        duck.create_function("_cortex_embed_768", lambda m, t: vector(t, 768), ["VARCHAR", "VARCHAR"], "FLOAT[]")
        duck.create_function("_cortex_embed_1024", lambda m, t: vector(t, 1024), ["VARCHAR", "VARCHAR"], "FLOAT[]")
        duck.execute("ATTACH ':memory:' AS snowflake")
        duck.execute("CREATE SCHEMA snowflake.cortex")
        duck.execute("CREATE MACRO snowflake.cortex.complete(m, msgs, opts) AS "
                     "_cortex_complete(m, msgs::VARCHAR, opts::VARCHAR)")
        duck.execute("CREATE MACRO snowflake.cortex.embed_text_768(m, t) AS _cortex_embed_768(m, t)")
        duck.execute("CREATE MACRO snowflake.cortex.embed_text_1024(m, t) AS _cortex_embed_1024(m, t)")


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class SnowflakeEmulator:
    """One emulated account. Flip the fields between calls to change what it answers (they are read per request).

    `cross_region` is the account's CORTEX_ENABLED_CROSS_REGION; `cross_region_level` is SHOW PARAMETERS' `level`
    ("ACCOUNT" when set explicitly, "" when left at Snowflake's default).
    """

    user: str = "sovra_router"
    password: str = "fake-snowflake-password-for-tests"
    region: str = "AWS_EU_CENTRAL_1"
    cross_region: str = "DISABLED"
    cross_region_level: str = "ACCOUNT"
    models: tuple[str, ...] = DEFAULT_MODELS
    # fault switches
    refuse_logins: bool = False
    throttle: bool = False
    retry_after_s: int = 7
    slow_s: float = 0.0
    rest_api: bool = True  # False: the account has no Cortex REST API (HTTP 404), as where it is not enabled
    stream_error: str | None = None  # "data" ({"error": ...} event) or "event" (event: error) after the first delta
    # what arrived: (path, sqlText or REST body) per request, payloads included, for tests to inspect
    seen: list[tuple[str, Any]] = field(default_factory=list)
    _server: Any = None
    _busy: dict[str, asyncio.Lock] = field(default_factory=dict)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        from tests.fakes.openai_backend import ServerThread

        async def app(scope: dict, receive: Any, send: Any) -> None:  # a plain function: uvicorn's ASGI 3 test
            await self._app(scope, receive, send)

        _install_cortex()
        self._server = ServerThread(app).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    @property
    def url(self) -> str:
        """What a Sovra connection's `host` is set to."""
        return self._server.url

    def connection(self, **extra: Any) -> dict[str, Any]:
        """org.yaml `connection:` settings for this account (non-secret: no password here)."""
        return {"account": "sovratest", "host": self.url, "user": self.user, **extra}

    def statements(self) -> list[str]:
        return [body for path, body in self.seen if path == "sql"]

    # -- the ASGI layer ------------------------------------------------------------------------------------------

    async def _app(self, scope: dict, receive: Any, send: Any) -> None:
        import fakesnow.server

        if scope["type"] != "http":
            return await fakesnow.server.app(scope, receive, send)
        path = scope["path"]
        if path == "/api/v2/cortex/inference:complete":
            return await self._rest_complete(scope, receive, send)
        if path not in ("/session/v1/login-request", "/queries/v1/query-request"):
            return await fakesnow.server.app(scope, receive, send)
        raw = await _read(receive)
        zipped = raw[:2] == b"\x1f\x8b"
        body = json.loads(gzip.decompress(raw) if zipped else raw)
        if path == "/session/v1/login-request":
            data = body.get("data", {})
            self.seen.append(("login", {"user": data.get("LOGIN_NAME")}))
            if self.refuse_logins or data.get("LOGIN_NAME") != self.user or data.get("PASSWORD") != self.password:
                return await _json(send, {"data": {"nextAction": "RETRY_LOGIN", "authnMethod": "USERNAME_PASSWORD"},
                                          "code": "390100", "message": "Incorrect username or password was specified.",
                                          "success": False, "headers": None})
        else:
            sql = body.get("sqlText", "")
            self.seen.append(("sql", sql))
            if "CORTEX." in sql.upper():
                fault = await self._cortex_fault(sql, _first_binding(body))
                if fault is not None:
                    return await _json(send, fault)
            body["sqlText"] = self._rewrite(sql)
        out = json.dumps(body).encode()
        # Snowflake runs a session's statements concurrently; fakesnow gives a session one duckdb cursor, which
        # refuses a second statement while one runs, so statements of one session take turns here.
        token = dict(scope["headers"]).get(b"authorization", b"").decode()
        async with self._busy.setdefault(token, asyncio.Lock()):
            await fakesnow.server.app(scope, _replay(gzip.compress(out) if zipped else out), send)

    def _rewrite(self, sql: str) -> str:
        """The statements fakesnow cannot run, as SELECTs it can (same answer shape as Snowflake's)."""
        flat = " ".join(sql.upper().split())
        if flat == "SELECT CURRENT_REGION()":
            return f"SELECT {_sql_literal(self.region)} AS \"CURRENT_REGION()\""
        if flat.startswith("SHOW PARAMETERS LIKE 'CORTEX_ENABLED_CROSS_REGION' IN ACCOUNT"):
            row = ", ".join(_sql_literal(v) for v in (
                "CORTEX_ENABLED_CROSS_REGION", self.cross_region, "DISABLED", self.cross_region_level,
                "Where Cortex may process requests", "STRING"))
            return (f"SELECT * FROM (VALUES ({row})) "
                    'AS parameters("key", "value", "default", "level", "description", "type")')
        return sql

    async def _cortex_fault(self, sql: str, model: str | None) -> dict | None:
        """Snowflake's answer to a Cortex function call that fails, or None to run it."""
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
        if self.throttle:
            remote = "429 '\"too many requests\"'"
        elif model is not None and model not in self.models:
            remote = f"400 '\"unknown model \\\"{model}\\\"\"'"
        else:
            return None
        function = "EMBED_TEXT_768$V1" if "EMBED_TEXT" in sql.upper() else "COMPLETE$V6"
        message = (f"Request failed for external function {function} with remote service error: {remote}; "
                   "requests batch-id: 01b0-emulated:0:0:0:0; request batch size: 1 rows; request retries: 0")
        return {"data": {"errorCode": "100351", "sqlState": "P0000", "queryId": "01b0-emulated"},
                "code": "100351", "message": message, "success": False}

    async def _rest_complete(self, scope: dict, receive: Any, send: Any) -> None:
        import fakesnow.server

        body = json.loads(await _read(receive))
        self.seen.append(("rest", body))
        if not self.rest_api:
            return await _json(send, {"code": "404", "message": "Not found"}, 404)
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        token = auth[len('Snowflake Token="'):-1] if auth.startswith('Snowflake Token="') else ""
        if token not in fakesnow.server.sessions:
            return await _json(send, {"code": "390104", "message": "Session token is invalid or expired."}, 401)
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
        if self.throttle:
            return await _json(send, {"code": "429", "message": "Too many requests"}, 429,
                               [(b"retry-after", str(self.retry_after_s).encode())])
        if body.get("model") not in self.models:
            return await _json(send, {"code": "400", "message": f"unknown model \"{body.get('model')}\""}, 400)
        problem = _invalid(body)
        if problem:
            return await _json(send, {"code": "400", "message": problem}, 400)
        messages = body["messages"]
        text, prompt, _ = answer(messages, body.get("max_tokens"))
        fmt = body.get("response_format")
        if fmt:
            required = (fmt.get("schema") or {}).get("required") or ["answer"]
            text = json.dumps({key: text for key in required})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        choice = body.get("tool_choice") or {}
        if body.get("tools") and choice.get("type") in ("required", "tool"):
            deltas = self._tool_use(body, messages)
        else:
            deltas = [{"type": "text", "content": piece, "content_list": [{"type": "text", "text": piece}]}
                      for piece in ((" " if i else "") + w for i, w in enumerate(text.split(" ")))]
        for i, delta in enumerate(deltas):
            if self.stream_error and i == 1:  # the answer started, then Cortex reports an error and stops
                error = {"code": "500", "message": "inference failed mid-stream"}
                frame = (f"event: error\ndata: {json.dumps(error)}\n\n" if self.stream_error == "event"
                         else f"data: {json.dumps({'error': error})}\n\n")
                await send({"type": "http.response.body", "body": frame.encode(), "more_body": True})
                break
            event = {"id": "emulated-1", "created": int(time.time()), "model": body["model"],
                     "choices": [{"delta": delta}],
                     "usage": {"prompt_tokens": prompt, "completion_tokens": i + 1, "total_tokens": prompt + i + 1}}
            await send({"type": "http.response.body", "body": f"data: {json.dumps(event)}\n\n".encode(),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _tool_use(self, body: dict[str, Any], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A tool_use answer: the chosen (or first) tool, its first required input set to the last user text."""
        choice = body.get("tool_choice") or {}
        specs = [t["tool_spec"] for t in body["tools"]]
        spec = next((t for t in specs if t["name"] in (choice.get("name") or [])), specs[0])
        required = (spec.get("input_schema") or {}).get("required") or ["input"]
        last = next((_said(m) for m in reversed(messages) if m.get("role") == "user"), "")
        args = json.dumps({required[0]: last})
        half = len(args) // 2
        return [{"type": "tool_use", "tool_use_id": "tooluse_emulated_1", "name": spec["name"], "input": ""},
                {"type": "tool_use", "input": args[:half]}, {"type": "tool_use", "input": args[half:]}]


def _invalid(body: dict[str, Any]) -> str | None:
    """What CompleteRequest's rules refuse in `body` (cortex-inference.yaml), as Cortex's 400 says it; else None."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    roles = [m.get("role", "user") for m in messages]
    if any(not isinstance(m.get("content"), str) for m in messages):
        return "every message needs a string content"
    if "system" in roles[1:]:
        return "a system message must be the first message"
    turns = roles[1:] if roles[0] == "system" else roles
    if any(r not in ("user", "assistant") for r in turns):
        return f"unknown role in {roles}"
    if any(a == b for a, b in itertools.pairwise(turns)):
        return "user and assistant messages must alternate"
    if not turns or turns[-1] != "user":
        return "a user message must be the last message"
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return f"temperature {temperature} is out of range"
    if body.get("tools"):
        if not body["model"].startswith(TOOL_MODELS):
            return f"model {body['model']} does not support tool use"
        for tool in body["tools"]:
            spec = tool.get("tool_spec") or {}
            if spec.get("type") != "generic" or not spec.get("name"):
                return "each tool needs a tool_spec with type and name"
    fmt = body.get("response_format")
    if fmt is not None and (fmt.get("type") != "json" or not isinstance(fmt.get("schema"), dict)):
        return "response_format must be {type: json, schema: {...}}"
    return None


def _first_binding(body: dict) -> str | None:
    first = (body.get("bindings") or {}).get("1")
    return first.get("value") if isinstance(first, dict) else None


async def _read(receive: Any) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # a disconnect never comes: the request is complete
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _json(send: Any, payload: dict, status: int = 200, headers: list | None = None) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


@contextlib.contextmanager
def closed_port() -> Iterator[str]:
    """A URL on 127.0.0.1 where nothing listens (the port was bound, then released)."""
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield f"http://127.0.0.1:{port}"
