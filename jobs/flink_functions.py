"""PyFlink functions of the content pipeline: state, timers and metrics around the job's steps
(`jobs.intake`, `jobs.gate`, `jobs.orchestrate`).

Kept in an importable module (not the job script, run as __main__) so cloudpickle ships these classes
by reference: a class pickled by value drags in module globals, and any that hold py4j objects fail
with "cannot pickle '_thread.RLock'" (measured). Keyed state holds pickled Python values; their
classes (`jobs.envelopes`, `operators.*`) must be importable where the job restores.

No record can stop the job: every function runs its step for one input inside a guard,
and a record a step crashes on (decode, a step, serialisation) becomes a dead letter with
reason `internal_error` (and, for a prompt, a FAILED final), instead of failing the task
and putting the job in a restart loop (`jobs.failures`). Output size limits: `jobs.encoder`.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream.functions import KeyedBroadcastProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from jobs import intake
from jobs.config import JobConfig
from jobs.encoder import Encoder
from jobs.envelopes import (
    Admitted, Finished, PromptIn, Republish, ResultIn, SinkRecord, Slot, request_key, resolve_retired_state_classes,
)
from jobs.failures import crashed_envelope, failed_effects, failure_dead_letter, prompt_failure
from jobs.embed_batch import EmbedBatches, prefetch_retrieval, texts_to_embed
from jobs.gate import EMBEDDING_FEATURES, gate, rag_enricher
from jobs.intake import TENANT, control_updates
from jobs.metrics import Counters
from jobs.orchestrate import Orchestrator, number_final
from jobs.replay_filter import open_filter
from jobs.state import control_descriptor, slot_descriptor
from jobs.clients import caching_embedder, payload_store, redis_client, shared_classifier, shared_embedder, topic_serde
from operators.admit import TenantPolicy, default_policy, policy_from_dict
from operators.correlate import EffectKind, Effects, PendingRequest
from operators.enrich import RAG_FEATURE
from operators.moderate import MODEL_FEATURE, Moderator
from rscf.clock import now_ms  # Flink's processing time is the wall clock: read it here, not over pemja
from rscf.settings import SETTINGS
from schemas.keys import identity_key

log = logging.getLogger(__name__)

from jobs.flink_wire import (  # noqa: F401 - re-exported: the job wiring and tests use them from here
    NEXT, SINK, ControlIntake, is_next, is_sink, payload, wire, wired_dead_letter,
)

# ----------------------------------------------------------------------------- tenant gate


class TenantGate(KeyedBroadcastProcessFunction):
    """Keyed by tenant_id (the prompt's Kafka key): intake (decode, validate), then the gate
    (input moderation, token bucket in ValueState, RAG enrichment).

    Its input comes straight from the prompts source, keyed in Java by the Kafka key: a separate
    decode operator ahead of the keyBy was one more Python call and pickled hop per prompt, and one
    more thread taking turns on the interpreter lock (jobs/README.md). A prompt whose key is not its
    tenant_id is written back under the right key (`Republish`). Early finals and dead
    letters go on to the orchestrator.

    For `policy_wait_ms` after it opens, a prompt whose tenant has no policy yet is held
    (keyed state) until then, and so are the tenant's later prompts, in order: a job that
    starts on a backlog reads the control topic from its start alongside the prompts, and
    without the wait a prompt could overtake its tenant's policy and get the default tier,
    features and quota. Held prompts are checkpointed with their timer.
    """

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg

    def open(self, ctx: RuntimeContext):
        resolve_retired_state_classes()
        self.serde = topic_serde(self.cfg, self.cfg.prompts, "prompt")
        self.templates, self.enricher, self.index = None, None, None
        if self.cfg.use_redis:
            from operators.templates import RedisTemplateStore
            from operators.vector_index import PrefetchedIndex, RedisVectorSetIndex

            self.templates = RedisTemplateStore(redis_client(self.cfg))
            self.index = PrefetchedIndex(RedisVectorSetIndex(redis_client(self.cfg), ef=SETTINGS.limits.rag_ef or None))
            self.enricher = rag_enricher(shared_embedder(), self.index)
        self.bucket = ctx.get_state(ValueStateDescriptor("token_bucket", Types.PICKLED_BYTE_ARRAY()))
        self.counters = Counters(ctx)
        self.moderator = Moderator(classifier_source=shared_classifier())
        self.policies: dict[str, TenantPolicy] | None = None
        self.buckets: dict[str, Any] = {}  # write-through mirror of the keyed bucket (one per tenant)
        self.held = ctx.get_state(ValueStateDescriptor("held_prompts", Types.PICKLED_BYTE_ARRAY()))
        self.hold_until: int | None = None  # set by the first prompt (_hold)
        self.holding = SETTINGS.limits.policy_wait_ms > 0
        self.batch = ctx.get_list_state(ListStateDescriptor("embed_batch", Types.PICKLED_BYTE_ARRAY()))
        self.batches = EmbedBatches(caching_embedder(), SETTINGS.limits.gate_batch_max,
                                    SETTINGS.limits.gate_batch_wait_ms)

    def _policies(self, ctx) -> dict[str, TenantPolicy]:
        """Tenant policies from broadcast state, read and parsed once after (re)start.

        Reading broadcast state per prompt built a Java state descriptor each time (~18 us).
        """
        if self.policies is None:
            self.policies = {key[len(TENANT):]: policy_from_dict(entry)
                             for key, entry in ctx.get_broadcast_state(control_descriptor()).items()
                             if key.startswith(TENANT)}
        return self.policies

    def process_element(self, value, ctx):
        key, data, topic, partition, offset = value  # the record part of a wire row
        try:
            rows = list(self._process(key, data, topic, partition, offset, ctx))
        except Exception as exc:  # noqa: BLE001 - no prompt can stop the job
            rows = self._failed(exc, data, topic, partition, offset)
        yield from rows
        self.counters.schedule_flush(ctx)

    def _process(self, key, data, topic, partition, offset, ctx):
        out = intake.keyed_prompt(key, data, self.serde.decode, topic, partition, offset, now_ms(), self.templates)
        if isinstance(out, Republish):  # counted where it is written (`Encoder`)
            yield wire(out.key, out)
        else:
            self.counters.inc("prompts_in")  # every prompt record: admitted, rejected early, or dead
            if isinstance(out, PromptIn):
                if not (self.holding and self._hold(out, key, ctx)):
                    yield from self._batch(out, key, ctx)
            else:
                if isinstance(out, SinkRecord):
                    self.counters.count_dead_letter(out)
                else:
                    self.counters.inc("rejected_invalid")
                yield wire(request_key(out), out)

    def _failed(self, exc: Exception, data, topic, partition, offset, record=None, source=None) -> list[Row]:
        """The dead letter of a prompt the gate crashed on, and its FAILED final when it names its request."""
        out = prompt_failure(exc, data, self.serde.decode, topic, partition, offset, now_ms(), record, source)
        self.counters.count_dead_letter(out[0])
        return [wire(request_key(value), value) for value in out]

    def _hold(self, value: PromptIn, tenant: str, ctx) -> bool:
        """Keep `value` back while the start-up wait for its tenant's policy lasts (from the first prompt:
        counted from open(), 25 of 30 backlog prompts overtook their policy on a loaded CI machine)."""
        self.hold_until = self.hold_until or now_ms() + SETTINGS.limits.policy_wait_ms
        if now_ms() >= self.hold_until:
            self.holding = False  # from here on a prompt costs no extra state access
            return False
        held = self.held.value()
        if not held and tenant in self._policies(ctx):
            return False
        self.held.update([*(held or []), value])
        ctx.timer_service().register_processing_time_timer(self.hold_until)
        self.counters.inc("held_for_policy")
        return True

    def _batch(self, value: PromptIn, tenant: str, ctx):
        """Gate `value` now, or, when its tenant's features need an embedding, in the tenant's micro-batch."""
        policy = self._policies(ctx).get(tenant) or default_policy(tenant)
        if not (self.batches.enabled and policy.features & EMBEDDING_FEATURES):
            yield from self._admit(value, tenant, ctx)
            return
        first, full = self.batches.add(tenant, texts_to_embed(value.record["prompt"], RAG_FEATURE in policy.features))
        self.batch.add(value)
        if full:
            yield from self._flush(tenant, ctx)
        elif first:
            ctx.timer_service().register_processing_time_timer(self.batches.due(now_ms()))

    def _flush(self, tenant: str, ctx):
        """Embed every text waiting (all tenants: one call), then gate this tenant's batch in order."""
        self.batches.take(tenant)
        values = list(self.batch.get() or [])
        if not values:
            return
        self.batch.clear()
        cached, embedded = self.batches.drain_counts()
        self.counters.inc("embed_cache_hits", cached)
        self.counters.inc("embed_cache_misses", embedded)
        policy = self._policies(ctx).get(tenant) or default_policy(tenant)
        if self.index is not None and RAG_FEATURE in policy.features:
            prefetch_retrieval(self.index, self.batches.embedder, [v.record for v in values])
        for value in values:
            try:
                rows = list(self._admit(value, tenant, ctx))
            except Exception as exc:  # noqa: BLE001 - no prompt can stop the job
                rows = self._failed(exc, repr(value.record).encode("utf-8"), None, None, None, value.record,
                                    value.source)
            yield from rows
        if self.index is not None:
            self.index.forget()

    def on_timer(self, timestamp: int, ctx):
        self.counters.on_timer(timestamp)
        if self.batches.enabled:
            yield from self._flush(ctx.get_current_key(), ctx)
            self.counters.schedule_flush(ctx)
        held = self.held.value() or []
        if held:
            self.held.clear()
            for value in held:
                try:
                    rows = list(self._admit(value, value.record["tenant_id"], ctx))
                except Exception as exc:  # noqa: BLE001 - no prompt can stop the job
                    rows = self._failed(exc, repr(value.record).encode("utf-8"), None, None, None, value.record,
                                        value.source)
                yield from rows
            self.counters.schedule_flush(ctx)

    def _admit(self, value: PromptIn, tenant: str, ctx):
        policy = self._policies(ctx).get(tenant) or default_policy(tenant)
        bucket = self.buckets.get(tenant)
        if bucket is None:
            bucket = self.bucket.value()
        result = gate(value, policy, bucket, now_ms(), self.moderator, self.enricher, self.cfg.admit_by_created_at)
        if result.bucket is not None:
            self.bucket.update(result.bucket)
            self.buckets[tenant] = result.bucket
        for name in result.counters:
            self.counters.inc(name)
        yield wire(request_key(result.out), result.out)

    def process_broadcast_element(self, value: dict, ctx):
        try:  # `ControlIntake` dead-letters events that break these; this guard is for what it cannot foresee
            state = ctx.get_broadcast_state(control_descriptor())
            for key, entry in control_updates(value):
                state.put(key, entry)
                if self.policies is not None and key.startswith(TENANT):
                    self.policies[key[len(TENANT):]] = policy_from_dict(entry)
        except Exception:  # noqa: BLE001 - a broadcast reaches every subtask: log and count, no dead letter each
            log.exception("control event not applied by the gate: %r", value)
            self.counters.inc("control_events_failed")


# ----------------------------------------------------------------------------- orchestrator


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
