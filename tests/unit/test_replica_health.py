"""A replica's health asks its engine, with no user payload; a failing engine answers ok False and fails Serve's
check. The real llama.cpp and MiniLM engines are checked in tests/integration/test_engines.py."""

import asyncio
import sys
import types

import pytest

from sovra.orchestrator.serving.engines import Engine, EngineError, Heartbeat
from sovra.orchestrator.serving.engines.llama_cpp import _loaded
from sovra.orchestrator.serving.engines.vllm import VLLMEngine
from sovra.orchestrator.serving.ray_apps import ModelServer


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_heartbeat_tells_busy_from_stuck():
    clock = FakeClock()
    beat = Heartbeat(clock)
    assert beat.silent_for() is None and beat.stalled(10) is None  # nothing runs
    beat.beat()
    clock.now += 9
    assert beat.silent_for() == 9 and beat.stalled(10) is None
    beat.beat()  # progress resets the silence
    clock.now += 11
    assert "no progress for 11 s" in beat.stalled(10)
    beat.stop()
    assert beat.stalled(10) is None


def test_every_engine_must_say_how_it_checks_its_health(monkeypatch):
    from sovra.orchestrator.serving import engines

    monkeypatch.setattr(engines, "_ENGINES", dict(engines._ENGINES))  # the test engine registers in a copy

    class NoHealth(Engine, name="test-no-health"):
        async def chat(self, body):
            return {}

        async def chat_stream(self, body):
            yield {}

    with pytest.raises(TypeError, match="health"):
        NoHealth("m", "t")


def test_echo_replica_is_healthy_and_says_what_it_runs():
    report = asyncio.run(ModelServer("m", "onprem-paris", "echo").health())
    assert report == {"ok": True, "engine": "echo", "model": "m", "target": "onprem-paris"}
    asyncio.run(ModelServer("m", "onprem-paris", "echo").check_health())  # Serve's check passes


class SickEngine:
    name = "sick"

    def __init__(self, answer):
        self.answer = answer

    async def health(self):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize("answer, reason", [
    ({"ok": False, "error": "the model is not loaded"}, "the model is not loaded"),
    (RuntimeError("llama_decode returned -1"), "RuntimeError: llama_decode returned -1"),
    ({"ok": "yes"}, None),  # only a real True is healthy
    ({}, None),
])
def test_a_failing_engine_makes_the_replica_unhealthy(answer, reason):
    server = ModelServer("m", "onprem-paris", "echo")
    server.engine = SickEngine(answer)
    report = asyncio.run(server.health())
    assert report["ok"] is False and report["engine"] == "sick" and report.get("error") == reason
    with pytest.raises(EngineError, match="engine 'sick' of m on onprem-paris is unhealthy"):
        asyncio.run(server.check_health())  # Serve replaces the replica


def test_llama_model_that_was_freed_is_not_loaded():
    # llama-cpp-python sets `_model.model` / `_ctx.ctx` to None when it frees them (Llama.close()).
    live = types.SimpleNamespace(_model=types.SimpleNamespace(model=object()), _ctx=types.SimpleNamespace(ctx=object()))
    assert _loaded(live) is None
    assert "model is not loaded" in _loaded(types.SimpleNamespace(_model=types.SimpleNamespace(model=None),
                                                                  _ctx=live._ctx))
    assert "context is gone" in _loaded(types.SimpleNamespace(_model=live._model, _ctx=types.SimpleNamespace(ctx=None)))
    assert "model is not loaded" in _loaded(None)


class FakeVLLM:
    def __init__(self):
        self.dead: Exception | None = None
        self.checks = 0

    async def check_health(self):
        self.checks += 1
        if self.dead is not None:
            raise self.dead


@pytest.fixture
def vllm_engine(monkeypatch):
    fake = FakeVLLM()
    module = types.SimpleNamespace(AsyncEngineArgs=lambda **kw: kw,
                                   AsyncLLMEngine=types.SimpleNamespace(from_engine_args=lambda args: fake),
                                   SamplingParams=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return VLLMEngine("m", "gpu-node"), fake


def test_vllm_health_is_vllms_own_check(vllm_engine):
    engine, fake = vllm_engine
    assert asyncio.run(engine.health()) == {"ok": True} and fake.checks == 1
    fake.dead = RuntimeError("Background loop is stopped.")  # what AsyncEngineDeadError says
    report = asyncio.run(engine.health())
    assert report["ok"] is False and "Background loop is stopped." in report["error"]
