"""The embedding service's batcher: concurrent requests share one forward; the cache answers repeats."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from inference_workers.embedding_service import Batcher, choose_backend


class SlowFake:
    dim = 384

    def __init__(self):
        self.calls = []
        self.gate = threading.Event()

    def embed(self, texts):
        self.calls.append(list(texts))
        self.gate.wait(5)
        if "boom" in texts:
            raise RuntimeError("model failed")
        return np.stack([np.full(384, float(len(t)), dtype=np.float32) for t in texts])


def _call(batcher, texts, out, i):
    try:
        out[i] = batcher.embed(texts)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        out[i] = exc


def test_requests_that_arrive_during_a_forward_share_the_next_one_and_repeats_are_cached():
    model = SlowFake()
    batcher = Batcher(model, max_batch=64, threads=1)
    out = {}
    first = threading.Thread(target=_call, args=(batcher, ["one"], out, 0))
    first.start()
    while not model.calls:  # the first forward is running
        time.sleep(0.001)
    others = [threading.Thread(target=_call, args=(batcher, [t, "shared"], out, i))
              for i, t in enumerate(["ab", "abc", "abcd"], 1)]
    for t in others:
        t.start()
    time.sleep(0.05)
    model.gate.set()
    for t in [first, *others]:
        t.join(5)
    assert model.calls[0] == ["one"] and sorted(model.calls[1]) == sorted(["ab", "shared", "abc", "abcd"])
    assert len(model.calls) == 2 and [float(out[i][0, 0]) for i in (1, 2, 3)] == [2.0, 3.0, 4.0]
    assert batcher.embed(["abc", "one"]).shape == (2, 384) and len(model.calls) == 2  # from the cache


def test_a_failed_forward_fails_every_caller_waiting_on_it():
    model = SlowFake()
    model.gate.set()
    batcher = Batcher(model)
    with pytest.raises(RuntimeError, match="model failed"):
        batcher.embed(["boom"])
    assert batcher.embed(["fine"]).shape == (1, 384)


def test_model_threads_run_forwards_of_different_callers_at_once():
    """With two model threads the second caller's forward starts while the first is still running (the
    job's gate and orchestrator each waited behind the other's forward with one: issue #14)."""
    model = SlowFake()
    batcher = Batcher(model, max_batch=64, threads=2)
    out = {}
    callers = [threading.Thread(target=_call, args=(batcher, [t], out, i)) for i, t in enumerate(["ab", "abc"])]
    for t in callers:
        t.start()
        time.sleep(0.02)
    deadline = time.monotonic() + 5
    while len(model.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert sorted(map(tuple, model.calls)) == [("ab",), ("abc",)]  # both forwards running, neither finished
    model.gate.set()
    for t in callers:
        t.join(5)
    assert [float(out[i][0, 0]) for i in (0, 1)] == [2.0, 3.0] and batcher.batches == 2


@pytest.mark.parametrize("name, onnx_exported, gpu, expected", [
    ("auto", True, True, "torch-cuda"),     # a GPU wins over the CPU's int8 model
    ("auto", True, False, "onnx-int8"),
    ("auto", False, False, "torch"),
    ("onnx", True, True, "onnx-int8"),      # an explicit choice is kept even with a GPU present
    ("torch", True, True, "torch"),
    ("cuda", False, True, "torch-cuda"),
])
def test_the_backend_is_a_gpu_when_present_else_the_int8_export_else_torch(name, onnx_exported, gpu, expected):
    assert choose_backend(name, onnx_exported, gpu) == expected


def test_asking_for_cuda_without_a_gpu_or_for_an_unknown_backend_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        choose_backend("cuda", True, False)
    with pytest.raises(ValueError, match="auto, cuda, onnx or torch"):
        choose_backend("tensorrt", True, True)


def test_a_gpu_backend_gets_one_model_thread_and_large_half_precision_forwards(monkeypatch):
    import inference_workers.embedding_service as service

    monkeypatch.setattr(service, "gpu_present", lambda: True)
    embedder, backend, threads, batch = service.make_backend("auto")
    assert (backend, threads, batch) == ("torch-cuda", 1, service.GPU_MAX_BATCH)
    assert (embedder.device, embedder.dtype, embedder._model) == ("cuda", "float16", None)  # loaded on first use
    monkeypatch.setattr(service, "gpu_present", lambda: False)
    _, backend, threads, _ = service.make_backend("torch")
    assert (backend, threads) == ("torch", service.SETTINGS.limits.embed_model_threads)


def test_half_precision_vectors_agree_with_full_precision():
    """The GPU backend's precision, run on this CPU in bfloat16 (float16 matmuls are slow on a CPU): the
    same sentence keeps its vector (cosine > 0.99) and a different one does not."""
    pytest.importorskip("sentence_transformers")
    from operators.embedding import Embedder

    texts = ["how do I reset my Halo lamp", "the kettle will not switch off"]
    full, half = Embedder(threads=1).embed(texts), Embedder(threads=1, dtype="bfloat16").embed(texts)
    assert half.dtype == np.float32 and half.shape == (2, 384)
    assert float(full[0] @ half[0]) > 0.99 and float(full[1] @ half[1]) > 0.99
    assert float(full[0] @ half[1]) < 0.9
