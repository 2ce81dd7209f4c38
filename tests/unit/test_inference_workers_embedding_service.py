"""The embedding service's batcher: concurrent requests share one forward; the cache answers repeats."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from inference_workers.embedding_service import Batcher


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
