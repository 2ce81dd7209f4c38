"""The Flink glue with fake contexts: a prompt through the tenant gate and the orchestrator, and its result."""

from __future__ import annotations

import pickle

import pytest

from jobs import flink_functions as ff
from jobs.config import ROLE_SCHEMAS, JobConfig
from tools.harness import policy_event, prompt
from schemas.serde import LocalRegistry, TopicSerde

REGISTRY = LocalRegistry()


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


@pytest.fixture
def functions(monkeypatch):
    monkeypatch.setattr(ff, "topic_serde", _serde)
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
    assert wired[0] == "r1" and gate_ctx.states["token_bucket"].values["acme"]

    (request_row,) = _to_orchestrator(orch_fn, orch_ctx, wired)
    assert (request_row[0], request_row[1]) == (cfg.requests("echo"), b"r1")
    request = _serde(cfg, request_row[0], "request").decode(request_row[2])
    assert (request["attempt"], request["pool"]) == (1, "echo")
    pending = orch_fn.inflight["r1"].pending
    assert orch_fn.inflight["r1"].features == {"echo"} and pending.deadline_ms in orch_ctx.timers.registered

    result = {"request_id": "r1", "attempt": 1, "pool": "echo", "worker_id": "w", "model_name": request["model_name"],
              "model_version": request["model_version"], "status": "OK", "output_text": "ereht olleh",
              "artifact_uris": [], "content_type": "text/plain", "error": None, "retryable": True, "queue_ms": 1,
              "inference_ms": 1, "batch_size": 1, "tokens_out": None, "completed_at": pending.sent_at_ms + 5}
    raw_result = _serde(cfg, cfg.results, "result").encode(result)
    orch_ctx.key = "r1"
    rows = list(orch_fn.process_element(("r1", raw_result, cfg.results, 0, 9), orch_ctx))
    assert [r[0] for r in rows] == [cfg.content, cfg.audit]
    content = _serde(cfg, cfg.content, "content").decode(rows[0][2])
    assert (content["status"], content["output_text"]) == ("SUCCEEDED", "ereht olleh")
    assert pending.deadline_ms in orch_ctx.timers.deleted and "r1" not in orch_fn.inflight
    assert orch_fn.slot.value().pending.status == "SUCCEEDED"  # the tombstone

    again = list(orch_fn.process_element(("r1", raw_result, cfg.results, 0, 10), orch_ctx))
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

