"""PyFlink functions of the content pipeline: state, timers and metrics around `jobs.stages`.

Kept in an importable module (not in the job script, which runs as __main__)
so cloudpickle ships these classes by reference: a class pickled by value drags
in module globals, and any that hold py4j objects fail with "cannot pickle
'_thread.RLock'" (measured). Keyed state holds pickled Python values; their
classes (operators.*, jobs.stages) must be importable where the job restores.
"""

from __future__ import annotations

import logging
import pickle
import time
from typing import Any, Callable

from pyflink.common import Row, Types
from pyflink.datastream.functions import FlatMapFunction, KeyedBroadcastProcessFunction, RuntimeContext
from pyflink.common.time import Time
from pyflink.datastream.state import MapStateDescriptor, StateTtlConfig, ValueStateDescriptor

from jobs import stages
from jobs.config import JobConfig, ROLE_SCHEMAS
from operators import routing
from operators.dead_letters import dead_letter
from rscf.settings import SETTINGS

log = logging.getLogger(__name__)

NEXT, SINK = "next", "sink"  # tags of the control stream only (its events and its dead letters part ways)
CONTROL_STATE = "control"  # broadcast MapState: "tenant:<id>" -> TenantPolicy dict, "rollout:<pool>" -> ModelRollout dict


def control_descriptor() -> MapStateDescriptor:
    return MapStateDescriptor(CONTROL_STATE, Types.STRING(), Types.PICKLED_BYTE_ARRAY())


def slot_descriptor() -> ValueStateDescriptor:
    """The orchestrator's per-request state; a finished request's tombstone expires by state TTL.

    TTL (dedup_ttl_ms, refreshed on every write) replaces a cleanup timer per request:
    in-flight slots are written at every attempt and their own timers fire long before.

    The default background cleanup cannot be used in thread mode: PyFlink builds its RocksDB
    compaction-filter default with a py4j `Duration` and the TaskManager has no gateway
    (measured: FileNotFoundError launching one, the job never starts). The heap backend's
    incremental cleanup is named explicitly instead.
    """
    desc = ValueStateDescriptor("pending_request", Types.PICKLED_BYTE_ARRAY())
    desc.enable_time_to_live(
        StateTtlConfig.new_builder(Time.milliseconds(SETTINGS.limits.dedup_ttl_ms))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        .disable_cleanup_in_background()
        .cleanup_incrementally(2, False)  # 3 state accesses per request: keeps pace with 1 tombstone each
        .build())
    return desc


def now_ms() -> int:
    """Flink's processing time is the wall clock (System.currentTimeMillis): read it here, not over pemja."""
    return time.time_ns() // 1_000_000


def untag(out: stages.Out) -> Any:
    """What a function emits: the envelope of a `Next`, or the SinkRecord / Republish itself.

    The prompt and result paths are linear (gate -> orchestrator + encode):
    each keyed function handles its own envelope kind and forwards the others untouched,
    so no record is split by filters (each filter is one more Python operator that
    unpickles every record it sees, measured in jobs/README.md).
    """
    return out.value if isinstance(out, stages.Next) else out


class Counters:
    """Flink metric counters under group `rscf`, with label groups (shown as Prometheus labels).

    The success path's per-prompt counters (`BATCHED`, name and labels) add up in Python
    and reach the Java counters at most every `FLUSH_S`: each Java counter call is a pemja
    crossing, and per-record `inc()` was ~40 us per prompt at 1000/s (py-spy). They are
    only counted in keyed functions, which call `schedule_flush` after each input, so the
    tail of a burst is flushed by a processing-time timer `FLUSH_S` later (the function's
    `on_timer` calls `on_timer`). Everything else (dead letters, rejections, duplicates,
    retries) counts at once. (A gauge read by Flink's reporter thread could flush the tail
    too, but registering a new counter while that thread waits on the interpreter lock can
    deadlock.)
    """

    FLUSH_S = 0.5
    BATCHED = frozenset({("prompts_in",), ("results_in",), ("dispatched",), ("rag_enriched",), ("final_latency_ms",),
                         ("finals", ("status", "SUCCEEDED")), ("records_out", ("role", "request")),
                         ("records_out", ("role", "content")), ("records_out", ("role", "audit"))})

    def __init__(self, ctx: RuntimeContext):
        self._group = ctx.get_metrics_group().add_group("rscf")
        self._counters: dict[tuple, Any] = {}
        self._pending: dict[tuple, int] = {}
        self._flush_at = 0.0
        self._flush_timer: int | None = None

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        key = (name, *sorted(labels.items())) if labels else (name,)
        if key not in self.BATCHED:
            self._counter(key).inc(n)
            return
        self._pending[key] = self._pending.get(key, 0) + n
        now = time.monotonic()
        if now >= self._flush_at:
            self.flush(now)

    def schedule_flush(self, ctx) -> None:
        """Make sure a timer will flush what is pending if no further input does."""
        if self._pending and self._flush_timer is None:
            self._flush_timer = now_ms() + int(self.FLUSH_S * 1000)
            ctx.timer_service().register_processing_time_timer(self._flush_timer)

    @property
    def flush_timer(self) -> int | None:
        return self._flush_timer

    def on_timer(self, timestamp: int) -> None:
        if self._flush_timer is not None and timestamp >= self._flush_timer:
            self._flush_timer = None
        if self._pending:
            self.flush()

    def flush(self, now: float | None = None) -> None:
        self._flush_at = (now if now is not None else time.monotonic()) + self.FLUSH_S
        pending, self._pending = self._pending, {}
        for key, n in pending.items():
            self._counter(key).inc(n)

    def _counter(self, key: tuple):
        counter = self._counters.get(key)
        if counter is None:
            group = self._group
            for k, v in key[1:]:
                group = group.add_group(k, str(v))
            counter = self._counters[key] = group.counter(key[0])
        return counter

    def count_sinks(self, outs) -> None:
        for value in outs:
            if isinstance(value, stages.SinkRecord) and value.role == "dlq":
                self.inc("dead_letters", stage=value.record["stage"], reason=value.record["reason"])


def _serde(cfg: JobConfig, topic: str, role: str):
    from schemas.serde import TopicSerde

    return TopicSerde(topic, cfg.registry_url, schema_name=ROLE_SCHEMAS[role])


def _redis(cfg: JobConfig):
    import redis

    return redis.Redis.from_url(cfg.redis_url, socket_timeout=2, socket_connect_timeout=2)


_SHARED: dict[str, Any] = {}


def shared_embedder() -> Callable[[], Any]:
    """The embedding service client, or None while the service is marked down.

    The model runs in its own process (inference_workers/embedding_service.py):
    torch inside a thread-mode operator stalled it and its checkpoints (measured).
    """
    if "embedder" not in _SHARED:
        from operators.embedding import RemoteEmbedder

        _SHARED["embedder"] = RemoteEmbedder()
    embedder = _SHARED["embedder"]
    return lambda: embedder if embedder.available() else None


def shared_classifier() -> Callable[[], Any]:
    """The moderation classifier: remote embeddings + the small logistic regression, loaded here."""
    if "classifier" not in _SHARED:
        from operators import moderation_model
        from operators.embedding import RemoteEmbedder

        embedder = RemoteEmbedder()
        _SHARED["classifier"] = (embedder, moderation_model.load(embedder))
    embedder, classifier = _SHARED["classifier"]
    return lambda: classifier if embedder.available() else None


# ----------------------------------------------------------------------------- wire rows


def wire(key: str, envelope: Any) -> Row:
    """An envelope for the orchestrator, in the row type of the results source (`content_pipeline.WIRE`).

    Row(key, Row(kafka key, value, topic, partition, offset)): results arrive in this shape
    straight from Kafka (topic set), envelopes from the gate pickled in `value` (topic None).
    Both inputs share one type so they can be unioned ahead of the Java keyBy.
    """
    return Row(key, Row(None, pickle.dumps(envelope, protocol=pickle.HIGHEST_PROTOCOL), None, None, None))


def is_next(value) -> bool:
    return value[0] == NEXT


def is_sink(value) -> bool:
    return value[0] == SINK


def payload(value):
    return value[1]


def wired_dead_letter(value) -> Row:
    return wire(stages.request_key(value[1]), value[1])


# ----------------------------------------------------------------------------- intake


class ControlIntake(FlatMapFunction):
    """Control events; undecodable ones go to the dead-letter topic like any other input."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg

    def open(self, ctx: RuntimeContext):
        self.serde = _serde(self.cfg, self.cfg.control, "control")
        self.counters = Counters(ctx)

    def flat_map(self, row):
        record, dl = stages.decode_or_dead_letter(row[0], self.serde.decode, row[1], row[2], row[3])
        if dl is not None:
            self.counters.count_sinks([dl])
            yield SINK, dl
        else:
            self.counters.inc("control_events")
            yield NEXT, record


def control_updates(event: dict) -> list[tuple[str, Any]]:
    """Broadcast-state entries a control event sets.

    A breaker command is kept as the pool's last command, so a FORCE_OPEN survives a
    restore (the control source resumes from its checkpointed offset and does not replay it).
    """
    updates = []
    if event.get("tenant_policy"):
        updates.append(("tenant:" + event["tenant_policy"]["tenant_id"], dict(event["tenant_policy"])))
    if event.get("rollout"):
        updates.append(("rollout:" + event["rollout"]["pool"], dict(event["rollout"])))
    if event.get("breaker"):
        updates.append(("breaker:" + event["breaker"]["pool"], dict(event["breaker"])))
    return updates


# ----------------------------------------------------------------------------- tenant gate


class TenantGate(KeyedBroadcastProcessFunction):
    """Keyed by tenant_id (the prompt's Kafka key): decode and validate, input moderation, token
    bucket (ValueState), RAG enrichment.

    Its input comes straight from the prompts source, keyed in Java by the Kafka key: a separate
    decode operator ahead of the keyBy was one more Python call and pickled hop per prompt, and one
    more thread taking turns on the interpreter lock (jobs/README.md). A prompt whose key is not its
    tenant_id is written back under the right key (`stages.Republish`). Early finals and dead
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
        self.serde = _serde(self.cfg, self.cfg.prompts, "prompt")
        self.templates = None
        if self.cfg.use_redis:
            from operators.templates import RedisTemplateStore

            self.templates = RedisTemplateStore(_redis(self.cfg))
        self.bucket = ctx.get_state(ValueStateDescriptor("token_bucket", Types.PICKLED_BYTE_ARRAY()))
        self.counters = Counters(ctx)
        self.moderation = stages.Moderation(classifier_source=shared_classifier())
        self.enricher = None
        if self.cfg.use_redis:
            from operators.vector_index import RedisVectorSetIndex

            self.enricher = stages.rag_enricher(shared_embedder(), RedisVectorSetIndex(_redis(self.cfg)))
        self.policies: dict[str, dict] | None = None
        self.buckets: dict[str, Any] = {}  # write-through mirror of the keyed bucket (one per tenant)
        self.held = ctx.get_state(ValueStateDescriptor("held_prompts", Types.PICKLED_BYTE_ARRAY()))
        self.hold_until = now_ms() + SETTINGS.limits.policy_wait_ms
        self.holding = SETTINGS.limits.policy_wait_ms > 0

    def _policies(self, ctx) -> dict[str, dict]:
        """Tenant policies mirrored from broadcast state, loaded once after (re)start.

        Reading broadcast state per prompt built a Java state descriptor each time (~18 us).
        """
        if self.policies is None:
            self.policies = {key[len("tenant:"):]: entry
                             for key, entry in ctx.get_broadcast_state(control_descriptor()).items()
                             if key.startswith("tenant:")}
        return self.policies

    def process_element(self, value, ctx):
        key, data, topic, partition, offset = value  # the record part of a wire row
        outs = [untag(o) for o in stages.keyed_prompt(key, data, self.serde.decode, topic, partition, offset,
                                                    now_ms(), self.templates)]
        self.counters.count_sinks(outs)
        for out in outs:
            if isinstance(out, stages.Republish):  # counted where it is written (`Encoder`)
                yield wire(out.key, out)
                continue
            self.counters.inc("prompts_in")  # every prompt record: admitted, rejected early, or dead
            if isinstance(out, stages.PromptIn):
                if not (self.holding and self._hold(out, key, ctx)):
                    yield from self._admit(out, key, ctx)
            else:
                if isinstance(out, stages.Finished):
                    self.counters.inc("rejected_invalid")
                yield wire(stages.request_key(out), out)
        self.counters.schedule_flush(ctx)

    def _hold(self, value: stages.PromptIn, tenant: str, ctx) -> bool:
        """Keep `value` back while the start-up wait for its tenant's policy lasts."""
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

    def on_timer(self, timestamp: int, ctx):
        self.counters.on_timer(timestamp)
        held = self.held.value() or []
        if held:
            self.held.clear()
            for value in held:
                yield from self._admit(value, value.record["tenant_id"], ctx)
            self.counters.schedule_flush(ctx)

    def _admit(self, value: stages.PromptIn, tenant: str, ctx):
        raw = self._policies(ctx).get(tenant)
        policy = stages.policy_for(tenant, {tenant: raw} if raw else {})
        bucket = self.buckets.get(tenant)
        if bucket is None:
            bucket = self.bucket.value()
        result = stages.gate(value, policy, bucket, now_ms(), self.moderation, self.enricher)
        if result.bucket is not None:
            self.bucket.update(result.bucket)
            self.buckets[tenant] = result.bucket
        for name in result.counters:
            self.counters.inc(name)
        out = untag(result.out)
        yield wire(stages.request_key(out), out)

    def process_broadcast_element(self, value: dict, ctx):
        state = ctx.get_broadcast_state(control_descriptor())
        for key, entry in control_updates(value):
            state.put(key, entry)
            if self.policies is not None and key.startswith("tenant:"):
                self.policies[key[len("tenant:"):]] = entry


# ----------------------------------------------------------------------------- orchestrator


class RequestOrchestrator(KeyedBroadcastProcessFunction):
    """Keyed by request_id: route, dispatch, correlate results, retry/fallback/timeout, final records.

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
        self.serde = _serde(self.cfg, self.cfg.results, "result")
        self.slot = ctx.get_state(slot_descriptor())
        # Write-through mirror of in-flight slots (this subtask is the only writer of its keys):
        # a result finds its request here instead of crossing into Java state and unpickling it.
        # Finished slots (tombstones) are not mirrored; after a restore the mirror starts empty.
        self.inflight: dict[str, stages.Slot] = {}
        self.counters = Counters(ctx)
        self.logic = stages.Orchestrator(stages.Moderation(classifier_source=shared_classifier()),
                                         tombstone_timers=False)
        self.encoder = Encoder(self.cfg, self.counters)
        self._control_loaded = False

    def _load_control(self, ctx) -> None:
        """After a restore the broadcast state is back but this instance is new: apply it once."""
        if self._control_loaded:
            return
        self._control_loaded = True
        self.logic.restore_control(ctx.get_broadcast_state(control_descriptor()).items(), now_ms())

    def _current(self, key: str) -> stages.Slot | None:
        slot = self.inflight.get(key)
        return slot if slot is not None else self.slot.value()

    def _run(self, effects: stages.Effects, ctx, key: str):
        slot = effects.slot
        if slot is None:
            self.slot.clear()
            self.inflight.pop(key, None)
        else:
            self.slot.update(slot)
            if slot.pending.finished:
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
        for name in effects.counters:
            if name.startswith("final_"):
                self.counters.inc("finals", status=name[len("final_"):])
            else:
                self.counters.inc(name)
        for sink in effects.sinks:
            if sink.role == "content":  # mean end-to-end latency = rate(final_latency_ms) / rate(finals)
                self.counters.inc("final_latency_ms", int((sink.record.get("latency") or {}).get("total_ms") or 0))
            yield from self.encoder.rows(sink)

    def process_element(self, value, ctx):
        key, data, topic, partition, offset = value  # the record part of a wire row
        if topic is None:  # an envelope from the gate (or a control dead letter)
            outs = [pickle.loads(data)]
        else:  # a result, straight from Kafka: keyed by its Kafka key, the request_id
            outs = [untag(o) for o in stages.keyed_result(key, data, self.serde.decode, topic, partition, offset)]
            self.counters.count_sinks(outs)
        for out in outs:
            if isinstance(out, (stages.SinkRecord, stages.Republish)):
                yield from self.encoder.rows(out)
                continue
            self._load_control(ctx)
            if isinstance(out, stages.ResultIn):
                self.counters.inc("results_in")
            key = stages.request_key(out)
            effects = self.logic.on_input(out, self._current(key), now_ms())
            yield from self._run(effects, ctx, key)
        self.counters.schedule_flush(ctx)

    def process_broadcast_element(self, value: dict, ctx):
        state = ctx.get_broadcast_state(control_descriptor())
        for key, entry in control_updates(value):
            state.put(key, entry)
        self.logic.on_control(value, now_ms())  # broadcast contexts have no timer service

    def on_timer(self, timestamp: int, ctx):
        self.counters.on_timer(timestamp)  # a flush timer may share the key of a request's timers: run both
        self._load_control(ctx)
        key = ctx.get_current_key()
        effects = self.logic.on_timer(self._current(key), now_ms())
        yield from self._run(effects, ctx, key)
        self.counters.schedule_flush(ctx)


# ----------------------------------------------------------------------------- encode


class Encoder:
    """SinkRecord -> Row(topic, key, value) in the Confluent wire format; unencodable -> dead letter."""

    def __init__(self, cfg: JobConfig, counters: Counters):
        self.cfg = cfg
        self.counters = counters
        self.serdes: dict[str, Any] = {}

    def _topic(self, rec: stages.SinkRecord | stages.Republish) -> str:
        if isinstance(rec, stages.Republish):
            return self.cfg.prompts if rec.role == "prompt" else self.cfg.results
        if rec.role == "request":
            return self.cfg.requests(rec.pool or routing.ECHO)
        return {"content": self.cfg.content, "audit": self.cfg.audit, "dlq": self.cfg.dlq}[rec.role]

    def rows(self, rec: stages.SinkRecord | stages.Republish):
        topic = self._topic(rec)
        if isinstance(rec, stages.Republish):
            self.counters.inc("republished", role=rec.role)
            yield Row(topic, rec.key.encode("utf-8"), rec.data)
            return
        serde = self.serdes.get(topic)
        if serde is None:
            serde = self.serdes[topic] = _serde(self.cfg, topic, rec.role)
        key = rec.key.encode("utf-8") if rec.key else None
        try:
            value = serde.encode(rec.record)
        except (ValueError, TypeError, KeyError) as exc:
            if rec.role == "dlq":
                raise  # a dead letter that cannot be written is a bug: fail loudly, Flink restarts
            dl = dead_letter(repr(rec.record).encode("utf-8")[:100_000], stage="serialize", reason="encode_failed",
                             error=f"{type(exc).__name__}: {exc}", source_topic=topic, source_partition=-1,
                             source_offset=-1, request_id=rec.key)
            self.counters.inc("dead_letters", stage="serialize", reason="encode_failed")
            yield from self.rows(stages.SinkRecord("dlq", rec.key, dl))
            return
        self.counters.inc("records_out", role=rec.role)
        yield Row(topic, key, value)
