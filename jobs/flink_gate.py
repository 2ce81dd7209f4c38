"""The tenant gate as a PyFlink function: intake and the gate step (`jobs.intake`, `jobs.gate`) with
their keyed state, timers and metrics. Why these functions live in importable modules, and why no
record can stop them: `jobs.flink_functions`.
"""

from __future__ import annotations

import logging
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream.functions import KeyedBroadcastProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from jobs import intake
from jobs.clients import caching_embedder, redis_client, shared_classifier, shared_embedder, topic_serde
from jobs.config import JobConfig
from jobs.embed_batch import EmbedBatches, prefetch_retrieval, texts_to_embed
from jobs.envelopes import PromptIn, Republish, SinkRecord, request_key, resolve_retired_state_classes
from jobs.failures import prompt_failure
from jobs.flink_wire import wire
from jobs.gate import EMBEDDING_FEATURES, gate, rag_enricher
from jobs.intake import POSITION, TENANT, control_updates
from jobs.metrics import Counters
from jobs.policy_wait import POLL_MS, PolicyWait, control_ends
from jobs.state import control_descriptor
from operators.admit import TenantPolicy, default_policy, policy_from_dict
from operators.enrich import RAG_FEATURE
from operators.moderate import Moderator
from rscf.clock import now_ms  # Flink's processing time is the wall clock: read it here, not over pemja
from rscf.settings import SETTINGS

log = logging.getLogger(__name__)


class TenantGate(KeyedBroadcastProcessFunction):
    """Keyed by tenant_id (the prompt's Kafka key): intake (decode, validate), then the gate
    (input moderation, token bucket in ValueState, RAG enrichment).

    Its input comes straight from the prompts source, keyed in Java by the Kafka key: a separate
    decode operator ahead of the keyBy was one more Python call and pickled hop per prompt, and one
    more thread taking turns on the interpreter lock (jobs/README.md). A prompt whose key is not its
    tenant_id is written back under the right key (`Republish`). Early finals and dead
    letters go on to the orchestrator.

    After it opens, a prompt whose tenant has no policy yet is held (keyed state) until the control
    topic is read to where it ended then (at most `policy_wait_ms`: `jobs.policy_wait`), and so are
    the tenant's later prompts, in order: a job that starts on a backlog reads the control topic from
    its start alongside the prompts, and without the wait a prompt could overtake its tenant's policy
    and get the default tier, features and quota. Held prompts are checkpointed with their timer.
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
        self.wait = PolicyWait(control_ends(self.cfg) if SETTINGS.limits.policy_wait_ms > 0 else {},
                               SETTINGS.limits.policy_wait_ms)
        self.holding = self.wait.over_at is None  # until the wait is over and every held tenant let go
        self.waiting: set[str] = set()  # tenants with held prompts
        self.batch = ctx.get_list_state(ListStateDescriptor("embed_batch", Types.PICKLED_BYTE_ARRAY()))
        self.batches = EmbedBatches(caching_embedder(), SETTINGS.limits.gate_batch_max,
                                    SETTINGS.limits.gate_batch_wait_ms)

    def _policies(self, ctx) -> dict[str, TenantPolicy]:
        """Tenant policies from broadcast state, read and parsed once after (re)start.

        Reading broadcast state per prompt built a Java state descriptor each time (~18 us).
        """
        if self.policies is None:
            entries = list(ctx.get_broadcast_state(control_descriptor()).items())
            self.policies = {key[len(TENANT):]: policy_from_dict(entry) for key, entry in entries
                             if key.startswith(TENANT)}
            self.wait.restore(entries)
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
                for value in (self._hold(out, key, ctx) if self.holding else [out]):
                    yield from self._batch(value, key, ctx)
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

    def _hold(self, value: PromptIn, tenant: str, ctx) -> list[PromptIn]:
        """What to gate now: nothing while `value` waits for its tenant's policy, else the tenant's held
        prompts (in order) and `value`."""
        now = now_ms()
        held = self.held.value() or []
        if not held and tenant in self._policies(ctx):
            return [value]
        if self.wait.over(now):
            if held:
                self.held.clear()
                self.waiting.discard(tenant)
            # held tenants' timers fire within POLL_MS; a restored instance's are past due at once
            self.holding = bool(self.waiting) or now < self.wait.over_at + 10 * POLL_MS
            return [*held, value]
        self.held.update([*held, value])
        if not held:
            self.waiting.add(tenant)
            ctx.timer_service().register_processing_time_timer(self.wait.next_look(now))
        self.counters.inc("held_for_policy")
        return []

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
        yield from self._admit_each(values, tenant, ctx)
        if self.index is not None:
            self.index.forget()

    def on_timer(self, timestamp: int, ctx):
        self.counters.on_timer(timestamp)
        if self.batches.enabled:
            yield from self._flush(ctx.get_current_key(), ctx)
            self.counters.schedule_flush(ctx)
        held = self.held.value() or []
        if not held:
            return
        self._policies(ctx)  # a restored instance's first call: the positions it had read come back with them
        now, tenant = now_ms(), ctx.get_current_key()
        if not self.wait.over(now):
            ctx.timer_service().register_processing_time_timer(self.wait.next_look(now))
            return
        self.held.clear()
        self.waiting.discard(tenant)
        yield from self._admit_each(held, tenant, ctx)
        self.counters.schedule_flush(ctx)

    def _admit_each(self, values: list[PromptIn], tenant: str, ctx):
        """Gate `values` in order; one that crashes the gate becomes a dead letter and a FAILED final."""
        for value in values:
            try:
                rows = list(self._admit(value, tenant, ctx))
            except Exception as exc:  # noqa: BLE001 - no prompt can stop the job
                rows = self._failed(exc, repr(value.record).encode("utf-8"), None, None, None, value.record,
                                    value.source)
            yield from rows

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
                elif key.startswith(POSITION):
                    self.wait.seen(int(key[len(POSITION):]), entry)
        except Exception:  # noqa: BLE001 - a broadcast reaches every subtask: log and count, no dead letter each
            log.exception("control event not applied by the gate: %r", value)
            self.counters.inc("control_events_failed")
