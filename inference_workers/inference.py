"""Inference: one batch through a handler, one result per request whatever happens.

Pure like ``batching.py``: no Kafka, no threads, no metrics. The worker hands in the artifact
store and records what the run reports. A request past its deadline, or one the handler's
``validate`` rejects, never reaches the model; a batch that raises is bisected until the
culprit stands alone (``batching.bisect_failures``), so every healthy request still gets its answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from inference_workers.batching import DEADLINE_EXCEEDED, Batch, Pending, bisect_failures
from inference_workers.handlers.base import InferenceOutput, ModelHandler, RequestRejected
from inference_workers.results import ResultBuilder, output_units
from rscf.clock import now_ms

# Exceptions that say "this input is bad", as opposed to "the worker or hardware is unwell".
INPUT_FAULTS = (RequestRejected, ValueError, TypeError, KeyError, IndexError, UnicodeError)

#: Stores one output's artifact for its request and returns the artifact's URI.
ArtifactSink = Callable[[dict, InferenceOutput], str]


@dataclass
class BatchRun:
    """What one batch produced: an answer per request in batch order, and what the metrics count."""

    answers: list[tuple[Pending, dict]]
    inference_ms: int = 0  # model time of the batch, bisection runs included
    units: dict[str, float] = field(default_factory=dict)  # generated units by kind (tokens, images...)
    model_requests: int = 0  # requests that reached the model (not the expired or rejected ones)


def split_runnable(batch: Batch, handler: ModelHandler, results: ResultBuilder,
                   started: int) -> tuple[list[Pending], list[tuple[Pending, dict]]]:
    """The requests that may reach the model, and the answers of those that may not (expired, rejected)."""
    runnable: list[Pending] = []
    answers: list[tuple[Pending, dict]] = []
    for p in batch.items:
        if p.deadline_ms is not None and p.deadline_ms <= started:
            # Expired while queued: nobody waits for this answer, don't spend the model on it.
            answers.append((p, results.error(p.request, DEADLINE_EXCEEDED, retryable=False)))
            continue
        try:
            handler.validate(p.request)
            runnable.append(p)
        except Exception as exc:  # noqa: BLE001 - RequestRejected or a validator bug
            answers.append((p, results.error(p.request, f"rejected: {exc}", retryable=False)))
    return runnable, answers


def run_batch(
    batch: Batch,
    handler: ModelHandler,
    model: Any,
    results: ResultBuilder,
    *,
    store_artifact: ArtifactSink | None = None,
    on_start: Callable[[Batch, int], None] | None = None,
    clock: Callable[[], int] = now_ms,
) -> BatchRun:
    """Run ``batch``; returns one result per request, whatever happens.

    ``on_start(batch, started_ms)`` is called once the batch is admitted, before the model runs
    (the worker observes batch size and queue time there, so a batch in hand shows in /metrics).
    """
    started = clock()
    runnable, answers = split_runnable(batch, handler, results, started)
    if on_start is not None:
        on_start(batch, started)
    t0 = time.perf_counter()
    outcomes = (
        bisect_failures(runnable, lambda items: handler.run_inference([i.request for i in items], model))
        if runnable
        else []
    )
    inference_ms = int((time.perf_counter() - t0) * 1000)
    any_ok = any(exc is None for _, _, exc in outcomes)
    units: dict[str, float] = {}
    for p, output, exc in outcomes:
        if exc is not None:
            # Alone it failed while its batch-mates ran fine, or the input itself is bad: its own fault.
            own_fault = isinstance(exc, INPUT_FAULTS) or (any_ok and len(runnable) > 1)
            err = f"inference_failed: {type(exc).__name__}: {exc}"[:1000]
            answers.append((p, results.error(p.request, err, retryable=not own_fault)))
            continue
        result = results.ok(p.request, output, started, inference_ms, len(batch))
        if result["status"] == "OK" and output.artifact is not None:
            _store(result, p.request, output, store_artifact)
        answers.append((p, result))
        unit, amount = output_units(output)
        units[unit] = units.get(unit, 0) + amount
    order = {id(p): i for i, p in enumerate(batch.items)}
    answers.sort(key=lambda a: order[id(a[0])])
    return BatchRun(answers, inference_ms, units, model_requests=len(runnable))


def _store(result: dict, request: dict, output: InferenceOutput, store_artifact: ArtifactSink | None) -> None:
    """Store the artifact and name it in the result; S3 down for too long: let the pipeline retry."""
    try:
        if store_artifact is None:
            raise RuntimeError("no artifact store")
        result["artifact_uris"] = [store_artifact(request, output)]
    except Exception as exc:  # noqa: BLE001 - S3 down for too long: let the pipeline retry
        result.update(status="ERROR", error=f"artifact_upload_failed: {exc}"[:1000], retryable=True)
