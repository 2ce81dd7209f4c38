"""A model handler behind a dynamic batcher on one thread: how a competent model server runs a model
(Triton's dynamic batcher, TorchServe's batch_size/max_batch_delay), used in-process by the monolith
and behind HTTP by the partially containerised model services.

It runs the workers' own code for a batch (`inference_workers.batching.MicroBatcher`,
`inference_workers.inference.run_batch`: deadlines, bisection of a poison batch, artifacts stored
with the same back-off), so that a comparison with RSCF's Kafka workers measures transport and
architecture, not a different batching policy. Batch limits are the pool table's.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from inference_workers.artifacts import ArtifactStore
from inference_workers.batching import MicroBatcher, batch_wait_ms
from inference_workers.handlers.base import InferenceOutput, ModelHandler
from inference_workers.inference import run_batch
from inference_workers.metrics import WorkerMetrics
from inference_workers.results import ResultBuilder
from rscf.settings import SETTINGS


class ModelHost:
    """`infer(request, timeout_s)` from any thread; one model thread forms batches and runs them."""

    def __init__(self, pool: str, handler: ModelHandler, max_batch: int | None = None,
                 max_wait_ms: float | None = None, worker_id: str = "baseline", s3_retry_max_s: float = 30.0):
        self.pool = pool
        self.handler = handler
        self.model = handler.load_model()
        self.results = ResultBuilder(pool, worker_id, handler)
        self.batcher = MicroBatcher(max_batch or SETTINGS.limits.worker_max_batch, batch_wait_ms(pool, max_wait_ms),
                                    handler.batch_key)  # the same wait as the pool's workers
        self.store = ArtifactStore(SETTINGS.buckets.artifacts, WorkerMetrics(pool, worker_id), s3_retry_max_s)
        self.ready = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name=f"model-{pool}", daemon=True)
        self.thread.start()

    def infer(self, request: dict, timeout_s: float) -> dict:
        """The result record for `request`; TimeoutError when none comes within `timeout_s`."""
        answer: Future = Future()
        with self.ready:
            self.batcher.add(request, meta=answer)
            self.ready.notify()
        return answer.result(timeout=timeout_s)

    def stop(self) -> None:
        with self.ready:
            self.stopped = True
            self.ready.notify()
        self.thread.join(5)

    def _loop(self) -> None:
        while True:
            with self.ready:
                batch = None
                while not self.stopped:
                    batch = self.batcher.next_batch()
                    if batch is not None:
                        break
                    wait = self.batcher.time_until_ready()
                    self.ready.wait(0.5 if wait is None else max(wait, 0.0005))
                if self.stopped:
                    return
            run = run_batch(batch, self.handler, self.model, self.results, store_artifact=self._store)
            for pending, result in run.answers:
                if not pending.meta.done():
                    pending.meta.set_result(result)

    def _store(self, request: dict, output: InferenceOutput) -> str:
        return self.store.put_artifact(self.pool, request, output.artifact, output.content_type)
