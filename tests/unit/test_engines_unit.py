"""Engines without their libraries: the lazy registry, request parsing, stop handling and vLLM's translations."""

import asyncio
import base64
import subprocess
import sys
import types

import numpy as np
import pytest

from sovra.orchestrator.serving.engines import EchoEngine, EngineError, chunk, completion, get_engine, known_engines
from sovra.orchestrator.serving.engines.llama_cpp import StopScanner
from sovra.orchestrator.serving.engines.request import (
    DEFAULT_PREAMBLE,
    ChatRequest,
    InvalidChatRequest,
    Message,
    transcript,
)
from sovra.orchestrator.serving.engines.sentence import InvalidEmbeddingsRequest, embedding_inputs, encode_vector
from sovra.orchestrator.serving.engines.vllm import VLLMEngine, chat_prompt, finish_reason, sampling_kwargs
from tests.integration.conftest import ROOT

HEAVY = ("llama_cpp", "torch", "sentence_transformers", "transformers", "vllm")
USER = [{"role": "user", "content": "hi"}]


def parse(body, max_tokens=64, temperature=0.0):
    return ChatRequest.from_body(body, default_max_tokens=max_tokens, default_temperature=temperature)


# --- registry -------------------------------------------------------------------------------------------------

def test_importing_engines_and_getting_engine_classes_imports_no_heavy_library():
    code = ("import sys\n"
            "from sovra.orchestrator.serving.engines import get_engine\n"
            "for name in ('echo', 'llama-cpp', 'minilm', 'vllm'):\n"
            "    get_engine(name)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
            "print(sorted(m for m in sys.modules if m.startswith('sovra.orchestrator.serving.engines.')))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
    heavy, loaded = r.stdout.splitlines()
    assert heavy == "[]"
    for module in ("echo", "llama_cpp", "sentence", "vllm"):
        assert f"sovra.orchestrator.serving.engines.{module}" in loaded


def test_engine_modules_are_imported_on_first_use_only():
    code = ("import sys\n"
            "import sovra.orchestrator.serving.engines\n"
            "print('sovra.orchestrator.serving.engines.llama_cpp' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.stdout.split() == ["False"], r.stderr


def test_unknown_engine_names_the_known_ones():
    with pytest.raises(EngineError) as err:
        get_engine("llama")
    assert "unknown engine 'llama'" in str(err.value)
    for name in ("echo", "llama-cpp", "minilm", "vllm"):
        assert name in known_engines() and name in str(err.value)


def test_registry_returns_the_registered_classes():
    assert get_engine("echo") is EchoEngine
    assert get_engine("vllm") is VLLMEngine
    assert get_engine("llama-cpp").name == "llama-cpp"
    assert get_engine("minilm").name == "minilm"


def test_echo_engine_keeps_its_answers():
    e = EchoEngine("m", "paris")
    out = asyncio.run(e.chat({"messages": USER}))
    assert out["choices"][0]["message"]["content"] == "served-by paris"

    async def stream():
        return [c async for c in e.chat_stream({"messages": USER})]

    chunks = asyncio.run(stream())
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "served-by paris"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["total_tokens"] == 3


def test_completion_and_chunk_shapes():
    out = completion("m", "hello", {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}, "length")
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["choices"][0] == {"index": 0, "finish_reason": "length",
                                 "message": {"role": "assistant", "content": "hello"}}
    c = chunk("m", "cid", {"content": "x"})
    assert c["object"] == "chat.completion.chunk" and "usage" not in c and c["choices"][0]["finish_reason"] is None


# --- OpenAI request parsing and the transcript ----------------------------------------------------------------

def test_request_defaults_come_from_the_engine():
    req = parse({"messages": USER}, max_tokens=64, temperature=0.0)
    assert (req.max_tokens, req.temperature, req.top_p, req.stop, req.seed) == (64, 0.0, 1.0, (), None)
    assert req.messages == (Message("user", "hi"),)


def test_request_fields_are_honoured():
    req = parse({"messages": USER, "max_tokens": 9, "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9,
                 "stop": "END", "seed": 11, "presence_penalty": 0.5, "frequency_penalty": -0.5})
    assert (req.max_tokens, req.temperature, req.top_p, req.stop, req.seed) == (7, 0.5, 0.9, ("END",), 11)
    assert (req.presence_penalty, req.frequency_penalty) == (0.5, -0.5)


@pytest.mark.parametrize("body, quoted", [
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "'wizard'"),
    ({"messages": [{"role": "system", "content": "x"}]}, "no user message"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "'image_url'"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens=0"),
    ({"messages": USER, "max_tokens": True}, "max_tokens=True"),
    ({"messages": USER, "temperature": 3}, "temperature=3"),
    ({"messages": USER, "top_p": float("nan")}, "top_p=nan"),
    ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
    ({"messages": USER, "stop": [""]}, "stop=['']"),
    ({"messages": USER, "seed": -1}, "seed=-1"),
    ({"messages": USER, "n": 2}, "n=2"),
])
def test_invalid_requests_are_refused_quoting_the_value(body, quoted):
    with pytest.raises(InvalidChatRequest) as err:
        parse(body)
    assert quoted in str(err.value)


def test_content_parts_are_joined_as_text():
    req = parse({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                            {"type": "text", "text": "b"}]},
                              {"role": "assistant", "content": None}]})
    assert req.messages == (Message("user", "ab"), Message("assistant", ""))


def test_transcript_format():
    msgs = (Message("user", "Hi"), Message("assistant", "Hello."), Message("user", "Capital of France?"))
    assert transcript(msgs) == (f"{DEFAULT_PREAMBLE}\n\nUser: Hi\nAssistant: Hello.\nUser: Capital of France?"
                                "\nAssistant:")


def test_system_messages_replace_the_preamble():
    msgs = (Message("system", "Be terse."), Message("developer", "Answer in French."), Message("user", "Hi"))
    assert transcript(msgs) == "Be terse.\nAnswer in French.\n\nUser: Hi\nAssistant:"


# --- stop sequences in streamed text --------------------------------------------------------------------------

def feed_all(stops, pieces):
    scanner, out = StopScanner(stops), []
    for piece in pieces:
        text, stopped = scanner.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + scanner.flush(), False


def test_stop_split_across_pieces_is_cut_and_never_emitted():
    assert feed_all(["\nUser:"], ["Paris.", "\n", "Us", "er: next"]) == ("Paris.", True)


def test_a_tail_that_only_looks_like_a_stop_is_released():
    scanner = StopScanner(["\nUser:"])
    assert scanner.feed("Paris.\nUs") == ("Paris.", False)  # "\nUs" held back: it may begin a stop
    assert scanner.feed("a is big") == ("\nUsa is big", False)
    assert feed_all(["\nUser:"], ["end\nU"]) == ("end\nU", False)


def test_the_earliest_stop_wins():
    assert feed_all(["\n\n", "STOP"], ["a STOP b\n\nc"]) == ("a ", True)


# --- embeddings request ---------------------------------------------------------------------------------------

def test_embedding_inputs_keep_order_and_refuse_tokens():
    assert embedding_inputs({"input": "one"}) == ["one"]
    assert embedding_inputs({"input": ["b", "a"]}) == ["b", "a"]
    for bad in ([], [[1, 2, 3]], None, 5):
        with pytest.raises(InvalidEmbeddingsRequest):
            embedding_inputs({"input": bad})


def test_base64_vectors_decode_to_the_same_floats():
    vec = [0.25, -1.5, 3.0]
    assert encode_vector(vec, "float") == vec
    decoded = np.frombuffer(base64.b64decode(encode_vector(vec, "base64")), dtype="<f4")
    assert decoded.tolist() == vec


# --- vLLM translations, and the engine over a stand-in vllm module --------------------------------------------

def test_sampling_kwargs_carry_every_openai_field():
    req = parse({"messages": USER, "max_tokens": 5, "temperature": 0.3, "top_p": 0.8, "stop": ["x"], "seed": 7,
                 "presence_penalty": 0.1, "frequency_penalty": 0.2})
    assert sampling_kwargs(req) == {"n": 1, "max_tokens": 5, "temperature": 0.3, "top_p": 0.8, "stop": ["x"],
                                    "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.2}


def test_sampling_kwargs_omit_unset_seed_and_merge_format_stops():
    kw = sampling_kwargs(parse({"messages": USER, "stop": "\n\n"}, max_tokens=256, temperature=1.0),
                         ("\nUser:", "\n\n"))
    assert "seed" not in kw and kw["stop"] == ["\n\n", "\nUser:"]
    assert (kw["max_tokens"], kw["temperature"]) == (256, 1.0)


class TemplateTokenizer:
    chat_template = "{{ messages }}"

    def __init__(self):
        self.calls = []

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        self.calls.append((messages, tokenize, add_generation_prompt))
        return "<prompt>"


def test_chat_prompt_uses_the_models_template_and_maps_developer_to_system():
    tok = TemplateTokenizer()
    msgs = (Message("developer", "Be terse."), Message("user", "Hi"))
    assert chat_prompt(tok, msgs) == ("<prompt>", ())
    assert tok.calls == [([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
                          False, True)]


def test_chat_prompt_without_a_template_falls_back_to_the_transcript():
    msgs = (Message("user", "Hi"),)
    prompt, stops = chat_prompt(types.SimpleNamespace(chat_template=None), msgs)
    assert prompt == transcript(msgs) and "\nUser:" in stops


def test_finish_reasons():
    assert [finish_reason(r) for r in ("length", "stop", None, "abort")] == ["length", "stop", "stop", "stop"]


def test_vllm_engine_without_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` meets where it is not installed
    with pytest.raises(EngineError, match=r"vLLM is not installed; pip install 'sovra\[vllm\]' on a GPU node"):
        VLLMEngine("m", "gpu-node")


class FakeAsyncEngine:
    """Speaks vLLM's AsyncLLMEngine surface: cumulative outputs per step, then finished."""

    def __init__(self, words):
        self.words, self.aborted, self.params = words, [], None

    async def get_tokenizer(self):
        return types.SimpleNamespace(chat_template=None)

    async def generate(self, prompt, params, request_id):
        self.params = params
        for i in range(1, len(self.words) + 1):
            done = i == len(self.words)
            out = types.SimpleNamespace(text="".join(self.words[:i]), token_ids=list(range(i)),
                                        finish_reason="length" if done else None)
            yield types.SimpleNamespace(outputs=[out], finished=done, prompt_token_ids=[1, 2, 3])

    async def abort(self, request_id):
        self.aborted.append(request_id)


@pytest.fixture
def fake_vllm(monkeypatch):
    engine = FakeAsyncEngine(["Par", "is", "."])
    module = types.SimpleNamespace(
        AsyncEngineArgs=lambda **kw: kw,
        AsyncLLMEngine=types.SimpleNamespace(from_engine_args=lambda args: engine),
        SamplingParams=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return engine


def test_vllm_engine_turns_cumulative_outputs_into_an_openai_answer(fake_vllm):
    e = VLLMEngine("m", "gpu-node", max_tokens=3)
    out = asyncio.run(e.chat({"messages": USER}))
    assert out["choices"][0]["message"]["content"] == "Paris."
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert fake_vllm.params["max_tokens"] == 3 and "\nUser:" in fake_vllm.params["stop"]
    assert fake_vllm.aborted == []


def test_vllm_engine_streams_deltas_and_aborts_an_abandoned_request(fake_vllm):
    e = VLLMEngine("m", "gpu-node")

    async def whole():
        return [c async for c in e.chat_stream({"messages": USER})]

    chunks = asyncio.run(whole())
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Par", "is", ".", None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["total_tokens"] == 6

    async def abandon():
        stream = e.chat_stream({"messages": USER})
        await stream.__anext__()
        await stream.__anext__()
        await stream.aclose()
        return list(fake_vllm.aborted)

    assert len(asyncio.run(abandon())) == 1  # aborted when the client left, not at loop shutdown


def test_vllm_stream_refuses_a_bad_request_before_the_first_chunk(fake_vllm):
    e = VLLMEngine("m", "gpu-node")

    async def first():
        return await e.chat_stream({"messages": [], "max_tokens": 5}).__anext__()

    with pytest.raises(InvalidChatRequest, match="non-empty list"):
        asyncio.run(first())
    assert fake_vllm.params is None  # nothing reached the engine
