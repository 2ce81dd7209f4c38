"""The Flink job's steps in one process, for the baselines `rscf evaluate` compares RSCF with.

The monolith and the partially containerised front run exactly the functions the job runs
(`jobs.intake.intake_prompt`: validate; `jobs.gate.gate`: moderate, admit, enrich;
`jobs.orchestrate.Orchestrator`: route, dispatch, correlate with retries, timeouts and
fallbacks, output moderation, audit), so that a comparison measures the architecture and not
different code. What differs is only how the model is reached (`call_model`): a function call
into an in-process model host, or an HTTP call to a model service.

Synchronous per request, as such a service is written: the calling thread waits for its model
call, sleeps through a retry's back-off, and returns the final ContentResult.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Callable

from jobs.envelopes import Finished, PromptIn, ResultIn, Slot
from jobs.gate import gate
from jobs.intake import intake_prompt
from jobs.orchestrate import Orchestrator
from operators.admit import TenantPolicy, TokenBucket, default_policy
from operators.correlate import Effects
from rscf.clock import now_ms

#: (inference request, seconds left before its deadline) -> result record; may raise
CallModel = Callable[[dict, float], dict]


class ModelUnavailable(RuntimeError):
    """The model could not be reached (connection refused, process gone): an error result, retryable."""


@dataclass(frozen=True)
class FlowAnswer:
    """What a caller gets: the final ContentResult, or a dead letter's reason for an undecodable prompt."""

    content: dict | None
    dead_letter: str | None = None

    @property
    def status(self) -> str:
        return self.content["status"] if self.content else "DEAD_LETTER"


class InProcessFlow:
    """Validate, gate and orchestrate one prompt at a time, thread-safe, state in memory."""

    def __init__(self, policies: dict[str, TenantPolicy] | None = None, orchestrator: Orchestrator | None = None):
        self.policies = dict(policies or {})
        self.orch = orchestrator or Orchestrator(tombstone_timers=False)
        self.buckets: dict[str, TokenBucket | None] = {}
        self.slots: dict[str, Slot] = {}  # finished requests: a re-sent id gets the job's answer
        self.lock = threading.Lock()  # buckets, breakers and rollouts are shared by every request
        self._offsets = itertools.count()

    def policy(self, tenant_id: str) -> TenantPolicy:
        return self.policies.get(tenant_id) or default_policy(tenant_id)

    def run(self, record: dict, call_model: CallModel) -> FlowAnswer:
        offset = next(self._offsets)
        got = intake_prompt(b"-", lambda _b: dict(record), "http", 0, offset, now_ms())
        if not isinstance(got, (PromptIn, Finished)):
            return FlowAnswer(None, dead_letter=str(got.record.get("reason")))
        key = f"{record.get('tenant_id')}\x1f{record.get('request_id')}"
        with self.lock:
            if isinstance(got, PromptIn):
                policy = self.policy(str(got.record["tenant_id"]))
                passed = gate(got, policy, self.buckets.get(policy.tenant_id), now_ms(), self.orch.moderator)
                self.buckets[policy.tenant_id] = passed.bucket
                got = passed.out
            effects = self.orch.on_input(got, self.slots.get(key), now_ms())
        return FlowAnswer(self._until_final(key, effects, call_model))

    def _until_final(self, key: str, effects: Effects, call_model: CallModel) -> dict:
        while True:
            if effects.final is not None:
                if effects.state is not None and effects.state.finished:
                    with self.lock:
                        self.slots[key] = Slot(effects.state, effects.features)
                return effects.final[0]
            state = effects.state
            if state is None:
                raise RuntimeError(f"request {key!r} ended without a final: {effects.kind}")
            slot = Slot(state, effects.features)
            if effects.request is not None:
                left_s = max(0.001, ((state.deadline_ms or now_ms()) - now_ms()) / 1000.0)
                try:
                    result = call_model(effects.request, left_s)
                except TimeoutError:
                    result = None
                except Exception as exc:  # noqa: BLE001 - any failure to reach the model is an error result
                    result = model_error(effects.request, f"{type(exc).__name__}: {exc}")
                if result is None:  # no answer before the deadline: correlate times the attempt out
                    time.sleep(max(0.0, ((state.deadline_ms or 0) - now_ms()) / 1000.0))  # not under the lock
                with self.lock:
                    effects = (self.orch.on_timer(slot, now_ms()) if result is None
                               else self.orch.on_input(ResultIn(result), slot, now_ms()))
                continue
            due = state.send_at_ms if state.send_at_ms is not None else min(effects.timers, default=now_ms())
            time.sleep(max(0.0, (due - now_ms()) / 1000.0))  # a retry's back-off
            with self.lock:
                effects = self.orch.on_timer(slot, now_ms())


def model_error(request: dict, error: str) -> dict:
    """The result record a worker would write for a request it could not run (retryable)."""
    return {
        "request_id": str(request.get("request_id")), "tenant_id": str(request.get("tenant_id") or ""),
        "attempt": int(request.get("attempt") or 0), "pool": request.get("pool"), "worker_id": "baseline",
        "model_name": request.get("model_name"), "model_version": request.get("model_version"),
        "status": "ERROR", "output_text": None, "artifact_uris": [], "content_type": None,
        "error": f"model_unavailable: {error}"[:1000], "retryable": True, "queue_ms": 0, "inference_ms": 0,
        "batch_size": 0, "tokens_out": None, "completed_at": now_ms(),
    }
