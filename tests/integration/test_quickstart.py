"""The README's first command, on the session's local Ray: `sovra up` plans, deploys a real model (gemma3-270m on
llama.cpp, CPU), starts the router and prints a real answer with the target that served it. Then the official
openai client talks to real models: chat, streaming chat and MiniLM embeddings."""

from __future__ import annotations

import math
from pathlib import Path

import llama_cpp  # noqa: F401  (the 'local' extra: scripts/test installs it, so its absence fails)
import openai
import pytest
import ray  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
QS = ROOT / "examples" / "quickstart"
EMB = Path(__file__).parent / "specs" / "embeddings.yaml"


@pytest.fixture(scope="module")
def quickstart(sovra_ray, sovra):
    first = sovra("up", QS / "deployment.yaml", "--org", QS / "org.yaml")
    yield first, sovra_ray
    down = sovra("down", QS / "deployment.yaml", EMB, "--org", QS / "org.yaml")
    assert down.returncode == 0, down.stderr


def test_first_command_ends_with_a_real_answer_and_its_target(quickstart):
    first, _ = quickstart
    assert first.returncode == 0, first.stderr
    assert "answered via target local (zone EU)" in first.stdout
    answer = first.stdout.split("(zone EU):", 1)[1].strip()
    assert len(answer) > 3 and "served-by" not in answer  # a model's words, not the test engine's
    assert "plan: quickstart → local" in first.stderr


def test_openai_client_against_real_models(quickstart, sovra):
    _, settings = quickstart
    both = sovra("up", QS / "deployment.yaml", EMB, "--org", QS / "org.yaml", "--no-check")
    assert both.returncode == 0, both.stderr
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{settings.router_port}/v1", api_key="unused", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="gemma3-270m", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0)
    reply = raw.parse()
    assert raw.headers["X-Sovra-Target"] == "local" and raw.headers["X-Sovra-Zone"] == "EU"
    assert "Paris" in reply.choices[0].message.content and reply.usage.completion_tokens > 0
    stream = list(c.chat.completions.create(model="gemma3-270m", stream=True, max_tokens=16,
                                            messages=[{"role": "user", "content": "Name a colour."}]))
    pieces = [s.choices[0].delta.content or "" for s in stream if s.choices]
    assert len(pieces) > 2 and "".join(pieces).strip()
    emb = c.embeddings.create(model="all-minilm-l6-v2",
                              input=["a cat sits on the mat", "a kitten rests on a rug", "quarterly tax filing"])
    vecs = [d.embedding for d in emb.data]
    assert [len(v) for v in vecs] == [384, 384, 384]

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])
    with pytest.raises(openai.BadRequestError):  # a chat model asked for embeddings, or the reverse, is a 400
        c.embeddings.create(model="gemma3-270m", input="x")
