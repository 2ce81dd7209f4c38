"""The request orchestrator as a PyFlink function: the orchestrate step (`jobs.orchestrate`) with its
keyed state, timers, metrics and output records. Why these functions live in importable modules, and
why no record can stop them: `jobs.flink_functions`.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

from pyflink.common import Types
from pyflink.datastream.functions import KeyedBroadcastProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from jobs import intake
from jobs.clients import caching_embedder, payload_store, shared_classifier, topic_serde
from jobs.config import JobConfig
from jobs.embed_batch import EmbedBatches, texts_to_embed
from jobs.encoder import Encoder
from jobs.envelopes import Admitted, Finished, Republish, ResultIn, SinkRecord, Slot, request_key, \
    resolve_retired_state_classes
from jobs.failures import crashed_envelope, failed_effects, failure_dead_letter
from jobs.intake import control_updates
from jobs.metrics import Counters
from jobs.orchestrate import Orchestrator, number_final
from jobs.replay_filter import open_filter
from jobs.state import control_descriptor, slot_descriptor
from operators.correlate import EffectKind, Effects, PendingRequest
from operators.moderate import MODEL_FEATURE, Moderator
from rscf.clock import now_ms  # Flink's processing time is the wall clock: read it here, not over pemja
from rscf.settings import SETTINGS
from schemas.keys import identity_key

log = logging.getLogger(__name__)


class RequestOrchestrator(KeyedBroadcastProcessFunction):
    """Keyed by request identity (tenant_id, U+001F, request_id: `schemas.keys`): the orchestrate step
    (route, dispatch, correlate results and timers, output moderation, audit) with its state, timers
    and output records.

    Emits Kafka rows (topic, key, value) itself through an `Encoder`: encoding here
    instead of in a downstream operator saves a pickled hop per output record.
    Dead letters from upstream pass through to the encoder unchanged.

    The pending request lives in ValueState (checkpointed, survives stop-with-savepoint).
    Circuit breakers' health counts are per-subtask soft state held in this instance
    (`Orchestrator.breakers`), rebuilt from traffic after a restart; rollouts and the last
    manual breaker command per pool are in broadcast state (checkpointed) and re-applied.
    """

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg

    def open(self, ctx: RuntimeContext):
        resolve_retired_state_classes()
        self.serde = topic_serde(self.cfg, self.cfg.results, "result")
        self.slot = ctx.get_state(slot_descriptor())
        # Write-through mirror of in-flight slots (this subtask is the only writer of its keys): a result finds its
        # request here, not by unpickling Java state. Tombstones are not mirrored; a restore starts it empty.
        self.inflight: dict[str, Slot] = {}
        self.counters = Counters(ctx)
        self.logic = Orchestrator(Moderator(classifier_source=shared_classifier()), tombstone_timers=False,
                                  limits=self.cfg.limits())
        self.encoder = Encoder(self.cfg, self.counters, topic_serde, payload_store)
        self._control_loaded = False
        self.awaiting = ctx.get_state(ValueStateDescriptor("awaiting_moderation", Types.PICKLED_BYTE_ARRAY()))
        self.batches = EmbedBatches(caching_embedder(), min(SETTINGS.limits.gate_batch_max, 2),
                                    SETTINGS.limits.gate_batch_wait_ms)
        self.replays = open_filter(self.cfg, now_ms(), self.counters)  # what a restored job already wrote: not again

    def _load_control(self, ctx) -> None:
        """After a restore the broadcast state is back but this instance is new: apply it once."""
        if self._control_loaded:
            return
        self._control_loaded = True
        self.logic.restore_control(ctx.get_broadcast_state(control_descriptor()).items(), now_ms())

    def _current(self, key: str) -> Slot | None:
        slot = self.inflight.get(key)
        return slot if slot is not None else self.slot.value()

    def _apply(self, effects: Effects, ctx, key: str):
        """Keep the state, cancel and set timers, count, emit the records: what `effects` says."""
        final_id = number_final(effects)
        state = effects.state
        if state is None:
            self.slot.clear()
            self.inflight.pop(key, None)
        else:
            slot = Slot(state, effects.features)
            self.slot.update(slot)
            if state.finished:
                self.inflight.pop(key, None)
            else:
                self.inflight[key] = slot
        if effects.timers or effects.cancel_timers:
            timers = ctx.timer_service()
            for ts in effects.cancel_timers:
                if ts != self.counters.flush_timer:  # the same (key, time) may also be the flush timer
                    timers.delete_processing_time_timer(ts)
            for ts in effects.timers:
                timers.register_processing_time_timer(ts)
        if effects.counter is not None:
            self.counters.inc(effects.counter)
        if effects.request is not None:
            self.counters.inc("dispatched")
            yield from self.encoder.encode("request", identity_key(state.tenant_id, state.request_id),
                                           effects.request, state.pool)
        if effects.final is not None:
            content, audit = effects.final  # a duplicate's final is not the state's: key it by its own record
            out_key = identity_key(content["tenant_id"], content["request_id"])
            self.counters.inc("finals", status=content["status"])
            # mean end-to-end latency = rate(final_latency_ms) / rate(finals)
            self.counters.inc("final_latency_ms", int((content.get("latency") or {}).get("total_ms") or 0))
            yield from self.encoder.encode("content", out_key, content, final_id=final_id)
            yield from self.encoder.encode("audit", out_key, audit, final_id=final_id)

    def process_element(self, value, ctx):
        key, data, topic, partition, offset = value  # the record part of a wire row
        try:
            rows = list(self._process(key, data, topic, partition, offset, ctx))
        except Exception as exc:  # noqa: BLE001 - no record can stop the job
            envelope, original = crashed_envelope(data) if topic is None else (None, data)
            if envelope is not None:
                key = request_key(envelope)
            rows = list(self._failed(exc, ctx, key, original, topic or self.cfg.prompts, partition, offset, envelope))
        yield from self.replays.rows(rows, now_ms())
        self.counters.schedule_flush(ctx)

    def _process(self, key, data, topic, partition, offset, ctx):
        if topic is None:  # an envelope from the gate (or a control dead letter)
            out = pickle.loads(data)
            key = request_key(out)
        else:  # a result, straight from Kafka: keyed by its Kafka key, the request's identity key
            out = intake.keyed_result(key, data, self.serde.decode, topic, partition, offset)
            if isinstance(out, SinkRecord):
                self.counters.count_dead_letter(out)
        if isinstance(out, (SinkRecord, Republish)):
            yield from self.encoder.rows(out)
            return
        self._load_control(ctx)
        slot = self._current(key)
        if isinstance(out, ResultIn):
            self.counters.inc("results_in")
            if slot is None:
                onward = intake.to_legacy_key(key, out, data)
                if onward is not None:  # a request kept under its request_id alone may be waiting for it
                    yield from self.encoder.rows(onward)
                    return
            elif self._defer(out, slot, key, ctx):
                return
        yield from self._apply(self.logic.on_input(out, slot, now_ms()), ctx, key)

    def _defer(self, out: ResultIn, slot: Slot, key: str, ctx) -> bool:
        """A success whose output the classifier will check waits for the next micro-batch boundary."""
        text = out.record.get("output_text")
        if (not self.batches.enabled or slot.pending.finished or MODEL_FEATURE not in slot.features
                or out.record.get("status") != "OK" or not text):
            return False
        self.awaiting.update([*(self.awaiting.value() or []), out])
        self.batches.add(key, texts_to_embed(text))
        ctx.timer_service().register_processing_time_timer(self.batches.due(now_ms()))
        return True

    def _moderate_awaiting(self, ctx, key: str):
        """The results waiting for this key's batch: embed every waiting output at once, then go on."""
        waiting = self.awaiting.value()
        if not waiting:
            return
        self.awaiting.clear()
        self.batches.take(key)
        cached, embedded = self.batches.drain_counts()
        self.counters.inc("output_embed_cache_hits", cached)
        self.counters.inc("output_embed_cache_misses", embedded)
        for out in waiting:
            yield from self._apply(self.logic.on_input(out, self._current(key), now_ms()), ctx, key)

    def _failed(self, exc: Exception, ctx, key: str, original: bytes | None, topic: str | None = None,
                partition: int | None = -1, offset: int | None = -1, value: Any = None):
        """A dead letter for what this function crashed on, and a FAILED final for a request that would
        otherwise wait forever: a prompt with no request yet, or a pending request whose timer crashed
        (a result's request keeps its timer: retried or timed out as usual)."""
        dl = failure_dead_letter(exc, "orchestrate", original, topic, partition, offset, key)
        self.counters.count_dead_letter(dl)
        yield from self.encoder.rows(dl)
        try:
            if (isinstance(value, (Admitted, Finished)) and self._current(key) is None) or (
                    isinstance(value, PendingRequest) and not value.finished):
                yield from self._apply(failed_effects(value, now_ms(), self.logic.job_version), ctx, key)
        except Exception:  # noqa: BLE001 - the dead letter is out; nothing more can be done for it
            log.exception("no FAILED final for a request the orchestrator crashed on")

    def process_broadcast_element(self, value: dict, ctx):
        try:  # `ControlIntake` dead-letters events that break these; this guard is for what it cannot foresee
            state = ctx.get_broadcast_state(control_descriptor())
            for key, entry in control_updates(value):
                state.put(key, entry)
            self.logic.on_control(value, now_ms())  # broadcast contexts have no timer service
        except Exception:  # noqa: BLE001 - a broadcast reaches every subtask: log and count, no dead letter each
            log.exception("control event not applied by the orchestrator: %r", value)
            self.counters.inc("control_events_failed")

    def on_timer(self, timestamp: int, ctx):
        self.counters.on_timer(timestamp)  # a flush timer may share the key of a request's timers: run both
        key = ctx.get_current_key()
        slot = None
        try:
            self._load_control(ctx)
            rows = list(self._moderate_awaiting(ctx, key)) if self.batches.enabled else []
            slot = self._current(key)
            effects = self.logic.on_timer(slot, now_ms())
            if not (effects.kind is EffectKind.WAIT and slot is not None and effects.state is slot.pending):
                rows += list(self._apply(effects, ctx, key))  # a timer with nothing to do writes no state
        except Exception as exc:  # noqa: BLE001 - a request whose timer crashes would wait forever: fail it
            pending = slot.pending if slot is not None else None
            rows = list(self._failed(exc, ctx, key, repr(pending).encode("utf-8"), value=pending))
        yield from self.replays.rows(rows, now_ms())
        self.counters.schedule_flush(ctx)
