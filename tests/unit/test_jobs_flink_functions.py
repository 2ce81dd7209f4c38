"""The Flink glue with fake contexts: a prompt through the tenant gate and the orchestrator, and its result."""

from __future__ import annotations

import collections
import pickle

import pytest

from jobs import flink_functions as ff
from jobs import flink_gate, flink_orchestrator, flink_wire
from jobs.config import ROLE_SCHEMAS, JobConfig
from jobs.replay_filter import IDENTITY_HEADER, ReplayFilter, fingerprint
from tools.harness import policy_event, prompt
from rscf.settings import SETTINGS
from schemas.keys import identity_key
from schemas.serde import LocalRegistry, TopicSerde

REGISTRY = LocalRegistry()
KEY = identity_key("acme", "r1")


class Counter:
    def __init__(self):
        self.count = 0

    def inc(self, n=1):
        self.count += n


class MetricGroup:
    def __init__(self, counters, path=()):
        self.counters, self.path = counters, path

    def add_group(self, *names):
        return MetricGroup(self.counters, self.path + names)

    def counter(self, name):
        return self.counters.setdefault(self.path + (name,), Counter())


class State:
    """A keyed ValueState: pickled per key, as thread mode keeps PICKLED_BYTE_ARRAY state."""

    def __init__(self, ctx):
        self.ctx, self.values = ctx, {}

    def value(self):
        data = self.values.get(self.ctx.key)
        return None if data is None else pickle.loads(data)

    def update(self, value):
        self.values[self.ctx.key] = pickle.dumps(value)

    def clear(self):
        self.values.pop(self.ctx.key, None)


class ListState:
    """A keyed ListState of pickled values."""

    def __init__(self, ctx):
        self.ctx, self.values = ctx, {}

    def add(self, value):
        self.values.setdefault(self.ctx.key, []).append(pickle.dumps(value))

    def get(self):
        return [pickle.loads(v) for v in self.values.get(self.ctx.key, [])]

    def clear(self):
        self.values.pop(self.ctx.key, None)


class BroadcastState(dict):
    def put(self, key, value):
        self[key] = value


class Timers:
    def __init__(self):
        self.registered, self.deleted = set(), set()

    def register_processing_time_timer(self, ts):
        self.registered.add(ts)

    def delete_processing_time_timer(self, ts):
        self.deleted.add(ts)


class Ctx:
    def __init__(self, broadcast):
        self.key, self.states, self.counters, self.timers, self.broadcast = None, {}, {}, Timers(), broadcast

    def get_state(self, descriptor):
        return self.states.setdefault(descriptor.name, State(self))

    def get_list_state(self, descriptor):
        return self.states.setdefault(descriptor.name, ListState(self))

    def get_metrics_group(self):
        return MetricGroup(self.counters)

    def get_broadcast_state(self, descriptor):
        return self.broadcast

    def timer_service(self):
        return self.timers

    def get_current_key(self):
        return self.key

    def count(self, name, *labels):
        return self.counters[("rscf", *labels, name)].count


def _serde(cfg, topic, role):
    return TopicSerde(topic, "http://unused", schema_name=ROLE_SCHEMAS[role], client=REGISTRY)


def _local_serdes(monkeypatch) -> None:
    """No registry and no broker: local serdes, and a control topic the gate finds empty (no start-up wait)."""
    for module in (flink_gate, flink_orchestrator, flink_wire):
        monkeypatch.setattr(module, "topic_serde", _serde)
    monkeypatch.setattr(flink_gate, "control_ends", lambda cfg: {})


def _no_read_back(cfg, now, counters=None):
    return ReplayFilter(collections.Counter(), now, 0, counters)


@pytest.fixture
def functions(monkeypatch):
    _local_serdes(monkeypatch)
    monkeypatch.setattr(flink_orchestrator, "open_filter", _no_read_back)  # no broker to read back from: tests below give one
    cfg = JobConfig(use_redis=False, topic_suffix="t")
    broadcast = BroadcastState()
    gate_ctx, orch_ctx = Ctx(broadcast), Ctx(broadcast)
    gate_fn, orch_fn = ff.TenantGate(cfg), ff.RequestOrchestrator(cfg)
    gate_fn.open(gate_ctx)
    orch_fn.open(orch_ctx)
    event = policy_event("acme", ["echo"])  # the tenant's policy, from the control stream
    gate_fn.process_broadcast_element(event, gate_ctx)
    orch_fn.process_broadcast_element(event, orch_ctx)
    return cfg, gate_fn, gate_ctx, orch_fn, orch_ctx


def _to_orchestrator(orch_fn, orch_ctx, wire_row):
    key, record = wire_row
    orch_ctx.key = key
    return list(orch_fn.process_element(record, orch_ctx))


def test_prompt_dispatch_result_and_final_through_the_glue(functions):
    cfg, gate_fn, gate_ctx, orch_fn, orch_ctx = functions
    assert set(gate_ctx.broadcast) == {"tenant:acme"} and gate_fn._policies(gate_ctx)["acme"].features == {"echo"}
    raw = _serde(cfg, cfg.prompts, "prompt").encode(prompt("r1", "acme", "hello there"))
    gate_ctx.key = "acme"
    (wired,) = list(gate_fn.process_element(("acme", raw, cfg.prompts, 0, 5), gate_ctx))
    assert wired[0] == KEY and gate_ctx.states["token_bucket"].values["acme"]

    (request_row,) = _to_orchestrator(orch_fn, orch_ctx, wired)
    assert (request_row[0], request_row[1]) == (cfg.requests("echo"), KEY.encode())
    request = _serde(cfg, request_row[0], "request").decode(request_row[2])
    assert (request["attempt"], request["pool"], request["tenant_id"]) == (1, "echo", "acme")
    pending = orch_fn.inflight[KEY].pending
    assert orch_fn.inflight[KEY].features == {"echo"} and pending.deadline_ms in orch_ctx.timers.registered

    result = {"request_id": "r1", "tenant_id": "acme", "attempt": 1, "pool": "echo", "worker_id": "w", "model_name": request["model_name"],
              "model_version": request["model_version"], "status": "OK", "output_text": "ereht olleh",
              "artifact_uris": [], "content_type": "text/plain", "error": None, "retryable": True, "queue_ms": 1,
              "inference_ms": 1, "batch_size": 1, "tokens_out": None, "completed_at": pending.sent_at_ms + 5}
    raw_result = _serde(cfg, cfg.results, "result").encode(result)
    orch_ctx.key = KEY
    rows = list(orch_fn.process_element((KEY, raw_result, cfg.results, 0, 9), orch_ctx))
    assert [r[0] for r in rows] == [cfg.content, cfg.audit] and {r[1] for r in rows} == {KEY.encode()}
    content = _serde(cfg, cfg.content, "content").decode(rows[0][2])
    assert (content["status"], content["output_text"]) == ("SUCCEEDED", "ereht olleh")
    assert pending.deadline_ms in orch_ctx.timers.deleted and KEY not in orch_fn.inflight
    assert orch_fn.slot.value().pending.status == "SUCCEEDED"  # the tombstone

    again = list(orch_fn.process_element((KEY, raw_result, cfg.results, 0, 10), orch_ctx))
    assert again == [] and orch_ctx.count("duplicate_results") == 1
    orch_fn.counters.flush()
    assert orch_ctx.count("finals", "status", "SUCCEEDED") == 1 and orch_ctx.count("dispatched") == 1


def test_wrong_key_and_poison_take_their_own_ways(functions):
    cfg, gate_fn, gate_ctx, orch_fn, orch_ctx = functions
    raw = _serde(cfg, cfg.prompts, "prompt").encode(prompt("r2", "acme", "hello"))
    gate_ctx.key = "other"
    (wired,) = list(gate_fn.process_element(("other", raw, cfg.prompts, 0, 6), gate_ctx))
    (row,) = _to_orchestrator(orch_fn, orch_ctx, wired)
    assert (row[0], row[1], row[2]) == (cfg.prompts, b"acme", raw)  # republished under its tenant
    gate_ctx.key = "acme"
    (wired,) = list(gate_fn.process_element(("acme", b"poison", cfg.prompts, 1, 7), gate_ctx))
    (row,) = _to_orchestrator(orch_fn, orch_ctx, wired)
    dead = _serde(cfg, cfg.dlq, "dlq").decode(row[2])
    assert row[0] == cfg.dlq and (dead["stage"], dead["source_offset"]) == ("decode", 7)
    assert gate_ctx.count("dead_letters", "reason", dead["reason"], "stage", "decode") == 1



# ----------------------------------------------------------------------------- issue #13


class FakeStore:
    """Object storage for claim checks; `fail` plays it down."""

    def __init__(self, fail=False):
        self.objects, self.fail = {}, fail

    def put(self, key, data):
        if self.fail:
            raise ConnectionError("connection refused")
        self.objects[key] = bytes(data)
        return f"s3://rscf-audit/{key}"


def _result(rid, tenant, attempt=1, text="done"):
    return {"request_id": rid, "tenant_id": tenant, "attempt": attempt, "pool": "echo", "worker_id": "w",
            "model_name": "echo", "model_version": "1", "status": "OK", "output_text": text, "artifact_uris": [],
            "content_type": "text/plain", "error": None, "retryable": True, "queue_ms": 1, "inference_ms": 1,
            "batch_size": 1, "tokens_out": None, "completed_at": 1}


def _through(cfg, gate_fn, gate_ctx, orch_fn, orch_ctx, rec, offset):
    """A prompt through the gate and the orchestrator: the orchestrator's rows."""
    raw = _serde(cfg, cfg.prompts, "prompt").encode(rec)
    gate_ctx.key = rec["tenant_id"]
    rows = []
    for wired in gate_fn.process_element((rec["tenant_id"], raw, cfg.prompts, 0, offset), gate_ctx):
        rows += _to_orchestrator(orch_fn, orch_ctx, wired)
    return rows


def _decode(cfg, row):
    role = {cfg.content: "content", cfg.audit: "audit", cfg.dlq: "dlq"}.get(row[0], "request")
    return _serde(cfg, row[0], role).decode(row[2])


def test_two_tenants_with_the_same_request_id_each_get_their_own_final(functions):
    cfg, gate_fn, gate_ctx, orch_fn, orch_ctx = functions
    beta = policy_event("beta", ["echo"])
    gate_fn.process_broadcast_element(beta, gate_ctx)
    orch_fn.process_broadcast_element(beta, orch_ctx)
    requests = {}
    for offset, tenant in enumerate(("acme", "beta")):
        (row,) = _through(cfg, gate_fn, gate_ctx, orch_fn, orch_ctx, prompt("same", tenant, f"hi {tenant}"), offset)
        assert row[1] == identity_key(tenant, "same").encode()
        requests[tenant] = _decode(cfg, row)
        assert requests[tenant]["tenant_id"] == tenant
    assert set(orch_fn.inflight) == {identity_key("acme", "same"), identity_key("beta", "same")}
    for tenant in ("acme", "beta"):
        key = identity_key(tenant, "same")
        orch_ctx.key = key
        raw = _serde(cfg, cfg.results, "result").encode(_result("same", tenant, text=f"for {tenant}"))
        content, audit = (_decode(cfg, r) for r in orch_fn.process_element((key, raw, cfg.results, 0, 1), orch_ctx))
        assert (content["tenant_id"], content["status"], content["output_text"]) == (tenant, "SUCCEEDED", f"for {tenant}")
        assert audit["tenant_id"] == tenant


def test_a_tenant_reusing_its_request_id_gets_a_rejected_duplicate_final(functions):
    cfg, gate_fn, gate_ctx, orch_fn, orch_ctx = functions
    (request,) = _through(cfg, gate_fn, gate_ctx, orch_fn, orch_ctx, prompt("r9", "acme", "first"), 1)
    assert request[0] == cfg.requests("echo")
    content, audit = (_decode(cfg, r) for r in _through(cfg, gate_fn, gate_ctx, orch_fn, orch_ctx,
                                                         prompt("r9", "acme", "second"), 2))
    assert (content["status"], content["reason"], audit["reason"]) == ("REJECTED", "duplicate_request_id",
                                                                        "duplicate_request_id")
    assert orch_fn.inflight[identity_key("acme", "r9")].pending.status is None  # the first one goes on
    # the first prompt's record read again (a replay): dropped, its request has its one final coming
    assert _through(cfg, gate_fn, gate_ctx, orch_fn, orch_ctx, prompt("r9", "acme", "first"), 1) == []


def test_results_find_requests_kept_under_the_request_id_alone(functions):
    """An upgrade from a savepoint before identity keys: a request in flight is kept under 'r5'."""
    from jobs.envelopes import Slot

    cfg, gate_fn, gate_ctx, orch_fn, orch_ctx = functions
    key = identity_key("acme", "r5")
    _through(cfg, gate_fn, gate_ctx, orch_fn, orch_ctx, prompt("r5", "acme", "old"), 3)
    orch_ctx.key = key
    slot = orch_fn.slot.value()
    orch_fn.slot.clear()
    orch_fn.inflight.clear()
    orch_ctx.key = "r5"  # as the version before wrote it
    orch_fn.slot.update(Slot(slot.pending, slot.features))
    raw = _serde(cfg, cfg.results, "result").encode(_result("r5", "acme", text="late but fine"))
    orch_ctx.key = key
    (onward,) = orch_fn.process_element((key, raw, cfg.results, 0, 4), orch_ctx)  # a new worker's answer
    assert (onward[0], onward[1], onward[2]) == (cfg.results, b"r5", raw)
    orch_ctx.key = "r5"
    content, audit = (_decode(cfg, r) for r in orch_fn.process_element(("r5", raw, cfg.results, 0, 5), orch_ctx))
    assert (content["status"], content["output_text"]) == ("SUCCEEDED", "late but fine")
    # a result under the request_id alone with nothing there is late: no further trip (nothing loops)
    orch_ctx.key = "nothing"
    raw = _serde(cfg, cfg.results, "result").encode(_result("nothing", "acme"))
    assert list(orch_fn.process_element(("nothing", raw, cfg.results, 0, 6), orch_ctx)) == []
    assert orch_ctx.count("late_results") == 1


@pytest.mark.parametrize("down", [False, True])
def test_a_megabyte_of_poison_is_one_small_dead_letter_with_a_claim_check(functions, down):
    cfg, gate_fn, gate_ctx, orch_fn, orch_ctx = functions
    store = FakeStore(fail=down)
    orch_fn.encoder.payload_store = lambda: store
    poison = b"\x01" + bytes(range(256)) * 4096  # ~1 MB, not Confluent-framed
    gate_ctx.key = "acme"
    (wired,) = gate_fn.process_element(("acme", poison, cfg.prompts, 2, 77), gate_ctx)
    (row,) = _to_orchestrator(orch_fn, orch_ctx, wired)
    assert row[0] == cfg.dlq and len(row[2]) < 10_000
    dead = _decode(cfg, row)
    assert (dead["stage"], dead["reason"], dead["source_offset"]) == ("decode", "not_confluent_framed", 77)
    assert dead["original"] == poison[:4096] and dead["original_size"] == len(poison)
    if down:
        assert dead["payload_status"] == "not_kept" and dead["payload_uri"] is None
        assert "not kept: object storage unavailable" in dead["error"]
    else:
        assert dead["payload_status"] == "claim_check"
        (key, kept), = store.objects.items()
        assert dead["payload_uri"] == f"s3://rscf-audit/{key}" and kept == poison
        assert key.startswith("dead-letters/") and "-2-77-" in key


def test_an_oversize_final_is_cut_down_with_a_reason(functions):
    cfg, gate_fn, gate_ctx, orch_fn, orch_ctx = functions
    orch_fn.encoder.limit = 20_000
    _through(cfg, gate_fn, gate_ctx, orch_fn, orch_ctx, prompt("big", "acme", "a lot"), 8)
    key = identity_key("acme", "big")
    orch_ctx.key = key
    raw = _serde(cfg, cfg.results, "result").encode(_result("big", "acme", text="word " * 10_000))
    content_row, audit_row = orch_fn.process_element((key, raw, cfg.results, 0, 9), orch_ctx)
    content = _decode(cfg, content_row)
    assert len(content_row[1]) + len(content_row[2]) <= 20_000
    assert content["status"] == "SUCCEEDED" and content["reason"] == "record_truncated"
    assert content["output_text"].endswith("...[truncated]") and _decode(cfg, audit_row)["reason"] is None


def test_a_step_that_crashes_makes_a_dead_letter_and_a_failed_final_not_a_job_failure(functions, monkeypatch):
    cfg, gate_fn, gate_ctx, orch_fn, orch_ctx = functions

    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(flink_gate, "gate", boom)
    rows = _through(cfg, gate_fn, gate_ctx, orch_fn, orch_ctx, prompt("crash", "acme", "x"), 11)
    dead, content, audit = (_decode(cfg, r) for r in rows)
    assert (dead["stage"], dead["reason"], dead["source_offset"]) == ("gate", "internal_error", 11)
    assert "RuntimeError: a bug" in dead["error"]
    assert (content["request_id"], content["status"], content["reason"]) == ("crash", "FAILED", "internal_error")
    monkeypatch.undo()
    _local_serdes(monkeypatch)
    _through(cfg, gate_fn, gate_ctx, orch_fn, orch_ctx, prompt("crash3", "acme", "z"), 13)  # dispatched
    monkeypatch.setattr(orch_fn.logic, "on_input", boom)
    rows = _through(cfg, gate_fn, gate_ctx, orch_fn, orch_ctx, prompt("crash2", "acme", "y"), 12)
    dead, content, audit = (_decode(cfg, r) for r in rows)
    assert (dead["stage"], dead["reason"]) == ("orchestrate", "internal_error")
    assert (content["request_id"], content["status"], content["reason"]) == ("crash2", "FAILED", "internal_error")
    raw = _serde(cfg, cfg.results, "result").encode(_result("crash3", "acme"))  # a result: dead letter only
    orch_ctx.key = identity_key("acme", "crash3")
    (row,) = orch_fn.process_element((orch_ctx.key, raw, cfg.results, 1, 14), orch_ctx)
    assert row[0] == cfg.dlq and _decode(cfg, row)["source_offset"] == 14 and _decode(cfg, row)["original"] == raw
    assert orch_fn.inflight[orch_ctx.key].pending.status is None  # still pending: its timer retries it


def test_a_control_event_that_breaks_the_policy_reader_is_a_dead_letter(functions, monkeypatch):
    from jobs import intake

    cfg = functions[0]
    fn = ff.ControlIntake(cfg)
    fn.open(Ctx(BroadcastState()))
    raw = _serde(cfg, cfg.control, "control").encode(policy_event("acme", ["echo"]))
    monkeypatch.setattr(intake, "policy_from_dict", lambda entry: 1 / 0)
    ((tag, dl), (next_tag, position)) = fn.flat_map((raw, cfg.control, 0, 3))
    assert tag == ff.SINK and (dl.record["stage"], dl.record["reason"]) == ("control", "invalid_control_event")
    assert next_tag == ff.NEXT and position == {intake.SOURCE: (0, 3)}  # read all the same: the gate's wait counts it


# ----------------------------------------------------------------------------- the gate's start-up wait


def _waiting_gate(monkeypatch, ends, broadcast=()):
    from jobs import intake

    _local_serdes(monkeypatch)
    monkeypatch.setattr(flink_gate, "control_ends", lambda cfg: ends)
    clock = [NOW]
    monkeypatch.setattr(flink_gate, "now_ms", lambda: clock[0])
    cfg = JobConfig(use_redis=False, topic_suffix="t")
    ctx = Ctx(BroadcastState(broadcast))
    gate_fn = ff.TenantGate(cfg)
    gate_fn.open(ctx)

    def control(tenant, features, offset):
        gate_fn.process_broadcast_element({**policy_event(tenant, features), intake.SOURCE: (0, offset)}, ctx)

    def send(rid, tenant, offset):
        ctx.key = tenant
        raw = _serde(cfg, cfg.prompts, "prompt").encode(prompt(rid, tenant, f"hello {rid}"))
        return [pickle.loads(row[1][1]) for row in gate_fn.process_element((tenant, raw, cfg.prompts, 0, offset), ctx)]

    return gate_fn, ctx, clock, control, send


def test_a_prompt_waits_for_its_policy_until_the_control_topic_is_read_to_its_end(monkeypatch):
    gate_fn, ctx, clock, control, send = _waiting_gate(monkeypatch, {0: 3})  # the control topic ended at offset 2
    control("other", [], 0)
    assert send("a", "late", 10) == [] and send("b", "late", 11) == []  # held, in order
    assert NOW + flink_gate.POLL_MS in ctx.timers.registered
    clock[0] += flink_gate.POLL_MS
    assert list(gate_fn.on_timer(clock[0], ctx)) == []  # not read to the end yet: look again later
    assert NOW + 2 * flink_gate.POLL_MS in ctx.timers.registered
    control("late", ["echo"], 2)
    clock[0] += flink_gate.POLL_MS
    released = [pickle.loads(row[1][1]) for row in gate_fn.on_timer(clock[0], ctx)]
    assert [v.record["request_id"] for v in released] == ["a", "b"]
    assert all(v.features == {"echo"} for v in released)  # the tenant's policy, not the default
    send("c", "new", 12)  # after the wait: gated at once (with the default policy: into the embedding batch)
    assert "new" not in ctx.states["held_prompts"].values and "new" in ctx.states["embed_batch"].values
    gate_fn.counters.flush()
    assert ctx.count("held_for_policy") == 2


def test_a_prompt_of_a_held_tenant_does_not_overtake_the_held_ones(monkeypatch):
    gate_fn, ctx, clock, control, send = _waiting_gate(monkeypatch, {0: 1})
    assert send("a", "late", 10) == []
    control("late", ["echo"], 0)  # read to the end; the held prompt's timer has not fired yet
    assert [v.record["request_id"] for v in send("b", "late", 11)] == ["a", "b"]
    assert list(gate_fn.on_timer(clock[0] + flink_gate.POLL_MS, ctx)) == []  # nothing left to let go twice


def test_without_the_control_topic_ends_a_prompt_waits_the_whole_cap(monkeypatch):
    gate_fn, ctx, clock, control, send = _waiting_gate(monkeypatch, None)  # the broker could not tell
    control("other", [], 0)
    assert send("a", "late", 10) == []
    clock[0] += SETTINGS.limits.policy_wait_ms - 1
    assert list(gate_fn.on_timer(clock[0], ctx)) == []
    clock[0] += 1
    assert [v.record["request_id"] for v in (pickle.loads(r[1][1]) for r in gate_fn.on_timer(clock[0], ctx))] == ["a"]


def test_a_restored_gate_does_not_wait_for_control_events_it_read_before(monkeypatch):
    from jobs import intake

    read = {intake.POSITION + "0": 4}  # checkpointed broadcast state: the control topic read up to offset 4
    _, ctx, _, _, send = _waiting_gate(monkeypatch, {0: 5}, read)
    send("a", "late", 10)
    assert "late" not in ctx.states["held_prompts"].values and "late" in ctx.states["embed_batch"].values
    _, ctx, _, _, send = _waiting_gate(monkeypatch, {0: 5}, {intake.POSITION + "0": 3})  # offset 4 not read yet
    send("a", "late", 10)
    assert "late" in ctx.states["held_prompts"].values


# ----------------------------------------------------------------------------- issue #14


class CountingEmbedder:
    """The embedding service's stand-in: deterministic unit vectors, and every call it got."""

    dim = 384

    def __init__(self):
        self.calls = []

    def embed(self, texts):
        import numpy as np

        self.calls.append(list(texts))
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(384) for t in texts]
        return np.array([r / np.linalg.norm(r) for r in rows], dtype=np.float32)


NOW = 1_000_000  # the micro-batch boundary after it is NOW + GATE_BATCH_WAIT_MS (5)


@pytest.fixture
def model_tenants(monkeypatch):
    """Gate and orchestrator for two tenants with the classifier (and the echo pool), over a counting embedder."""
    import dataclasses

    from jobs import clients
    from operators import moderation_model
    from operators.embedding import CachingEmbedder

    inner = CountingEmbedder()
    caching = CachingEmbedder(inner)
    classifier = dataclasses.replace(moderation_model.load(caching), block_threshold=2.0)  # never blocks
    monkeypatch.setitem(clients._SHARED, "caching", caching)
    monkeypatch.setitem(clients._SHARED, "classifier", (caching, classifier))
    _local_serdes(monkeypatch)
    monkeypatch.setattr(flink_gate, "now_ms", lambda: NOW)
    monkeypatch.setattr(flink_orchestrator, "now_ms", lambda: NOW)
    monkeypatch.setattr(flink_orchestrator, "open_filter", _no_read_back)
    cfg = JobConfig(use_redis=False, topic_suffix="t")
    broadcast = BroadcastState()
    gate_ctx, orch_ctx = Ctx(broadcast), Ctx(broadcast)
    gate_fn, orch_fn = ff.TenantGate(cfg), ff.RequestOrchestrator(cfg)
    gate_fn.open(gate_ctx)
    orch_fn.open(orch_ctx)
    gate_fn.holding = False  # no start-up wait for policies: they are known
    for tenant in ("acme", "beta"):
        event = policy_event(tenant, ["echo", "moderation_model"])
        gate_fn.process_broadcast_element(event, gate_ctx)
        orch_fn.process_broadcast_element(event, orch_ctx)
    return cfg, gate_fn, gate_ctx, orch_fn, orch_ctx, inner


def test_prompts_wait_in_a_micro_batch_and_are_embedded_in_one_call(model_tenants):
    """Issue #14: prompts of two tenants are buffered in keyed state with one timer each at the same
    boundary; the first timer embeds every waiting text in one call (a repeated prompt once), the second
    tenant's timer finds its vectors cached; each prompt is gated in order; nothing is embedded twice."""
    cfg, gate_fn, gate_ctx, orch_fn, orch_ctx, inner = model_tenants
    texts = {"acme": ["tell me about lamps", "and kettles", "tell me about lamps"], "beta": ["the weather"]}
    offset = 0
    for tenant, lines in texts.items():
        gate_ctx.key = tenant
        for i, line in enumerate(lines):
            raw = _serde(cfg, cfg.prompts, "prompt").encode(prompt(f"{tenant}-{i}", tenant, line))
            offset += 1
            assert list(gate_fn.process_element((tenant, raw, cfg.prompts, 0, offset), gate_ctx)) == []
    due = NOW + SETTINGS.limits.gate_batch_wait_ms
    assert inner.calls == [] and {t for t in gate_ctx.timers.registered if t < NOW + 100} == {due}  # one boundary
    assert len(gate_ctx.states["embed_batch"].values["acme"]) == 3  # checkpointed with its timer
    out = {}
    for tenant in ("acme", "beta"):
        gate_ctx.key = tenant
        out[tenant] = list(gate_fn.on_timer(due, gate_ctx))
    assert inner.calls == [["tell me about lamps", "and kettles", "the weather"]]
    assert [row[0] for row in out["acme"]] == [identity_key("acme", f"acme-{i}") for i in range(3)]
    assert len(out["beta"]) == 1 and gate_ctx.states["embed_batch"].values == {}
    admitted = pickle.loads(out["acme"][0][1][1])
    assert [v["check"] for v in admitted.verdicts][-1] == "classifier"  # the classifier ran, from the cache
    gate_fn.counters.flush()
    assert gate_ctx.count("embed_cache_misses") == 4 and gate_ctx.count("embed_cache_hits") == 0


def test_outputs_to_moderate_wait_for_a_batch_then_finish(model_tenants):
    """A success whose output the classifier checks waits in keyed state until the batch boundary; then
    every waiting output is embedded at once and the request finishes as before."""
    cfg, gate_fn, gate_ctx, orch_fn, orch_ctx, inner = model_tenants
    finals = []
    for i in range(2):
        gate_ctx.key = "acme"
        raw = _serde(cfg, cfg.prompts, "prompt").encode(prompt(f"o{i}", "acme", f"question {i}"))
        list(gate_fn.process_element(("acme", raw, cfg.prompts, 0, 20 + i), gate_ctx))
    due = NOW + SETTINGS.limits.gate_batch_wait_ms
    for wired in gate_fn.on_timer(due, gate_ctx):
        _to_orchestrator(orch_fn, orch_ctx, wired)
    inner.calls.clear()
    keys = [identity_key("acme", f"o{i}") for i in range(2)]
    for i, key in enumerate(keys):
        orch_ctx.key = key
        raw = _serde(cfg, cfg.results, "result").encode(_result(f"o{i}", "acme", text=f"answer {i}"))
        assert list(orch_fn.process_element((key, raw, cfg.results, 0, 30 + i), orch_ctx)) == []
    assert inner.calls == [] and orch_fn.awaiting.values
    boundary = NOW + SETTINGS.limits.gate_batch_wait_ms
    assert boundary in orch_ctx.timers.registered
    for key in keys:
        orch_ctx.key = key
        finals += [r for r in orch_fn.on_timer(boundary, orch_ctx) if r[0] == cfg.content]
    assert inner.calls == [["answer 0", "answer 1"]]
    statuses = [_serde(cfg, cfg.content, "content").decode(r[2])["status"] for r in finals]
    assert statuses == ["SUCCEEDED", "SUCCEEDED"] and orch_fn.awaiting.values == {}


# ----------------------------------------------------------------------------- exactly-once by read-back


def test_a_restored_orchestrator_drops_the_finals_it_wrote_and_keeps_new_ones(functions, monkeypatch):
    """Checkpoint after dispatch, final written, crash: the restored function replays the result and
    writes nothing (the read-back holds both records); a re-sent id and another request still get theirs."""
    cfg, gate_fn, gate_ctx, orch_fn, orch_ctx = functions
    (request,) = _through(cfg, gate_fn, gate_ctx, orch_fn, orch_ctx, prompt("r1", "acme", "hello"), 5)
    assert request[3] is None  # requests carry no identity: they are at-least-once by design
    checkpoint = {name: dict(state.values) for name, state in orch_ctx.states.items()}
    orch_ctx.key = KEY
    raw = _serde(cfg, cfg.results, "result").encode(_result("r1", "acme"))
    written = list(orch_fn.process_element((KEY, raw, cfg.results, 0, 1), orch_ctx))
    assert [r[0] for r in written] == [cfg.content, cfg.audit]
    assert [r[3][IDENTITY_HEADER] for r in written] == [b"content/0@0:5", b"audit/0@0:5"]

    held = collections.Counter(fingerprint(r[0], r[1], r[3][IDENTITY_HEADER]) for r in written)
    monkeypatch.setattr(flink_orchestrator, "open_filter", lambda cfg, now, counters=None: ReplayFilter(held.copy(), now, 60_000, counters))
    restored_ctx = ff_ctx = type(orch_ctx)(orch_ctx.broadcast)
    for name, values in checkpoint.items():
        ff_ctx.get_state(type("D", (), {"name": name})()).values.update(values)
    restored = ff.RequestOrchestrator(cfg)
    restored.open(restored_ctx)
    restored_ctx.key = KEY
    assert list(restored.process_element((KEY, raw, cfg.results, 0, 1), restored_ctx)) == []  # replayed: dropped
    assert restored.replays.dropped == 2 and restored_ctx.count("finals_replayed") == 2
    assert restored.slot.value().pending.status == "SUCCEEDED"  # its state moved on as before the crash

    gate_ctx.key = "acme"
    again = _through(cfg, gate_fn, gate_ctx, restored, restored_ctx, prompt("r1", "acme", "hello"), 6)
    assert [(_decode(cfg, r)["reason"], r[3][IDENTITY_HEADER]) for r in again] == [
        ("duplicate_request_id", b"content/1@0:5"), ("duplicate_request_id", b"audit/1@0:5")]  # a re-send: kept
    (other,) = _through(cfg, gate_fn, gate_ctx, restored, restored_ctx, prompt("r2", "acme", "hi"), 7)
    assert other[0] == cfg.requests("echo")


def test_a_job_started_afresh_keeps_a_final_for_an_id_it_no_longer_knows(functions, monkeypatch):
    """No state (a start without a checkpoint) numbers from 0 again, but its prompt is another Kafka record."""
    cfg, gate_fn, gate_ctx, orch_fn, orch_ctx = functions
    held = collections.Counter({fingerprint(cfg.content, KEY.encode(), b"content/0@0:5"): 1,
                                fingerprint(cfg.audit, KEY.encode(), b"audit/0@0:5"): 1})
    orch_fn.replays = ReplayFilter(held, 0, 10**15)
    _through(cfg, gate_fn, gate_ctx, orch_fn, orch_ctx, prompt("r1", "acme", "hello"), 8)
    orch_ctx.key = KEY
    raw = _serde(cfg, cfg.results, "result").encode(_result("r1", "acme"))
    rows = list(orch_fn.process_element((KEY, raw, cfg.results, 0, 1), orch_ctx))
    assert [r[3][IDENTITY_HEADER] for r in rows] == [b"content/0@0:8", b"audit/0@0:8"] and orch_fn.replays.dropped == 0


def test_a_restored_gate_lets_held_prompts_go_at_its_first_timer(monkeypatch):
    from jobs import intake

    gate_fn, ctx, clock, control, send = _waiting_gate(monkeypatch, None)  # held: the ends were unknown
    assert send("a", "late", 10) == []
    restored, ctx2, _, _, _ = _waiting_gate(monkeypatch, {0: 5}, {intake.POSITION + "0": 4})
    ctx2.states["held_prompts"].values.update(ctx.states["held_prompts"].values)  # keyed state and timer come back
    ctx2.key = "late"
    assert [pickle.loads(r[1][1]).record["request_id"] for r in restored.on_timer(NOW, ctx2)] == ["a"]
