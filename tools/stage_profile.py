"""`python -m tools.stage_profile [N] [--profile]`: per-record Python cost of the job's steps, without Kafka or Flink.

Pushes N synthetic prompts and their echo results through the job's steps
(`jobs.intake`, `jobs.gate`, `jobs.orchestrate`) the way `jobs.flink_functions`
calls them (decode -> validate -> moderate -> gate -> orchestrator dispatch ->
encode; result decode -> orchestrator -> audit -> encode), with an in-process schema registry, and times each step. It also
times what the Flink glue adds around them: the pickling of envelopes each time
a record crosses between Python operators (thread mode passes
PICKLED_BYTE_ARRAY values to Java as `pickle.dumps` bytes) and the pickling of
keyed state (`ValueState.value()` / `update()`). `--profile` adds a cProfile
of the whole loop. The numbers say how many records per second one core can
push through the Python part of the job, before Flink, Kafka and the JVM.
"""

from __future__ import annotations

import cProfile
import io
import pickle
import pstats
import time
from collections import defaultdict
from typing import Any, Callable

from jobs import intake
from jobs.envelopes import SinkRecord, Slot
from jobs.gate import gate
from tools.harness import policy_event, prompt
from jobs.orchestrate import Orchestrator
from operators.admit import policy_from_dict
from operators.moderate import Moderator
from schemas.serde import LocalRegistry, TopicSerde


def _serdes() -> dict[str, TopicSerde]:
    reg = LocalRegistry()
    names = {"prompt": "prompt_request", "result": "inference_result", "request": "inference_request",
             "content": "content_result", "audit": "audit_record"}
    return {role: TopicSerde(f"bench.{role}", "http://unused", schema_name=name, client=reg)
            for role, name in names.items()}


def _result(req: dict, now_ms: int) -> dict:
    """What the echo worker answers to an InferenceRequest."""
    return {"request_id": req["request_id"], "attempt": req["attempt"], "pool": req["pool"], "worker_id": "w0",
            "model_name": req["model_name"], "model_version": req["model_version"], "status": "OK",
            "output_text": req["prompt"][::-1], "artifact_uris": [], "content_type": "text/plain", "error": None,
            "retryable": True, "queue_ms": 2, "inference_ms": 1, "batch_size": 8, "tokens_out": None,
            "completed_at": now_ms}


class _Clock:
    """Accumulates wall time per step name."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        t = time.perf_counter()
        out = fn(*args)
        self.total[name] += time.perf_counter() - t
        return out


def _crossing(value: Any) -> Any:
    """One hop between Python operators in thread mode: pickled out, unpickled in."""
    return pickle.loads(pickle.dumps(value))


def run(n: int = 2000, crossings: dict[str, int] | None = None) -> dict:
    """Per-record microseconds of each step over `n` prompts (and n results).

    `crossings` says how many operator hops each envelope kind makes in the job
    as wired (see content_pipeline.build); the hop cost is measured per kind and
    multiplied, so the summary shows what the wiring costs on top of the logic.
    """
    crossings = crossings or {}
    serdes = _serdes()
    tenant = "bench-tenant"
    policy = policy_from_dict(policy_event(tenant, ["echo"], rate_per_s=1e6, burst=1_000_000)["tenant_policy"])
    moderation = Moderator()
    orch = Orchestrator(Moderator())
    clock = _Clock()
    bucket = None
    raw_prompts = [serdes["prompt"].encode(prompt(f"b-{i}", tenant, f"benchmark prompt {i}")) for i in range(n)]
    slots: dict[str, bytes] = {}
    requests: list[dict] = []
    now = int(time.time() * 1000)
    t_all = time.perf_counter()
    for i, raw in enumerate(raw_prompts):
        decoded = clock("prompt.decode", serdes["prompt"].decode, raw)
        env = clock("prompt.validate", intake.intake_prompt, raw, lambda _b, d=decoded: d, "p", 0, i, now)
        for _ in range(crossings.get("prompt_in", 0)):
            env = clock("hop.PromptIn", _crossing, env)
        b = clock("state.bucket.get", lambda: pickle.loads(bucket) if bucket is not None else None)
        res = clock("gate", gate, env, policy, b, now, moderation, None)
        bucket = clock("state.bucket.put", pickle.dumps, res.bucket)
        adm = res.out
        for _ in range(crossings.get("admitted", 0)):
            adm = clock("hop.Admitted", _crossing, adm)
        eff = clock("orchestrator.dispatch", orch.on_input, adm, None, now)
        slots[adm.record["request_id"]] = clock("state.slot.put", lambda: pickle.dumps(Slot(eff.state, eff.features)))
        sink = SinkRecord("request", eff.state.request_id, eff.request, eff.state.pool)
        for _ in range(crossings.get("sink", 0)):
            sink = clock("hop.SinkRecord", _crossing, sink)
        clock("request.encode", serdes["request"].encode, sink.record)
        requests.append(sink.record)
    for req in requests:
        raw = serdes["result"].encode(_result(req, now + 5))
        rec = clock("result.decode", serdes["result"].decode, raw)
        env = clock("result.intake", intake.intake_result, raw, lambda _b, r=rec: r, "r", 0, 0)
        for _ in range(crossings.get("result_in", 0)):
            env = clock("hop.ResultIn", _crossing, env)
        slot = clock("state.slot.get", pickle.loads, slots[req["request_id"]])
        eff = clock("orchestrator.result+final", orch.on_input, env, slot, now + 10)
        clock("state.slot.put", lambda: pickle.dumps(Slot(eff.state, eff.features)))
        for sink in (SinkRecord(role, eff.state.request_id, record) for role, record in zip(("content", "audit"), eff.final)):
            for _ in range(crossings.get("sink", 0)):
                sink = clock("hop.SinkRecord", _crossing, sink)
            clock(f"{sink.role}.encode", serdes[sink.role].encode, sink.record)
    elapsed = time.perf_counter() - t_all
    steps = {k: round(v / n * 1e6, 1) for k, v in sorted(clock.total.items(), key=lambda kv: -kv[1])}
    timed = sum(clock.total.values())
    return {"prompts": n, "us_per_prompt_timed": round(timed / n * 1e6, 1),
            "us_per_prompt_loop": round(elapsed / n * 1e6, 1),
            "prompts_per_core_s": round(n / timed), "steps_us": steps, "crossings": crossings}


# Pickled hops per envelope kind between Python operators, counted from the job graph
# (`env.get_execution_plan()`; PyFlink fuses one-input Python operators that follow each other,
# so a hop is a boundary between fused groups; a fan-out to k filters costs k unpickles).
# Before: intake fanned out to 3 filter chains, the gate to 2, sinks went filter -> map+Encode.
HOPS_FILTER_WIRING = {"prompt_in": 3, "admitted": 4, "sink": 2, "result_in": 4}
# First pass: intake -> key_by -> gate -> key_by (union) -> orchestrator+encode; results: intake -> key_by -> orchestrator.
HOPS_LINEAR_WIRING = {"prompt_in": 1, "admitted": 2, "sink": 0, "result_in": 2}
# Second pass: the functions emit Row(key, value) themselves, so no key_by operator (one hop less each).
HOPS_KEY_ROW_WIRING = {"prompt_in": 1, "admitted": 1, "sink": 0, "result_in": 1}
# Now: prompts and results keyed in Java by their Kafka key; the gate and the orchestrator decode
# them, so only the gate's Admitted crosses between Python operators.
HOPS_KAFKA_KEY_WIRING = {"prompt_in": 0, "admitted": 1, "sink": 0, "result_in": 0}
WIRINGS = {"filter wiring": HOPS_FILTER_WIRING, "linear wiring": HOPS_LINEAR_WIRING,
           "key-row wiring": HOPS_KEY_ROW_WIRING, "kafka-key wiring (now)": HOPS_KAFKA_KEY_WIRING}


def run_full(n: int = 1000, batch: int = 64, repeat_share: float = 0.3) -> dict:
    """Per-prompt microseconds of each step of the full path (issue #14): classifier on input and
    output and RAG, against the stack's embedding service and Redis, in micro-batches of `batch`
    as the job runs them (embed and retrieve once per batch; the rest per prompt).

    Embedding time is wall time of the calls to the service (its model's work included)."""
    from jobs.embed_batch import prefetch_retrieval, texts_to_embed
    from jobs.clients import redis_client
    from jobs.config import JobConfig
    from jobs.gate import rag_enricher
    from operators import moderation_model
    from operators.embedding import CachingEmbedder, RemoteEmbedder
    from operators.vector_index import PrefetchedIndex, RedisVectorSetIndex
    from tools.prompt_mix import prompt_mix

    serdes = _serdes()
    tenant = "bench-tenant"
    features = ["echo", "moderation_model", "rag"]
    policy = policy_from_dict(policy_event(tenant, features, rate_per_s=1e6, burst=1_000_000)["tenant_policy"])
    caching = CachingEmbedder(RemoteEmbedder())
    classifier = moderation_model.load(caching)
    moderator = Moderator(classifier_source=lambda: classifier)
    index = PrefetchedIndex(RedisVectorSetIndex(redis_client(JobConfig())))
    enricher = rag_enricher(lambda: caching, index)
    orch = Orchestrator(Moderator(classifier_source=lambda: classifier))
    clock, bucket, now = _Clock(), None, int(time.time() * 1000)
    cached = lookups = 0  # texts a batch found in the job's cache / texts it asked for
    texts = prompt_mix(n, repeat_share, seed=11, salt=f"{time.time_ns()}-")
    raws = [serdes["prompt"].encode(prompt(f"f-{i}", tenant, t)) for i, t in enumerate(texts)]
    t_all = time.perf_counter()
    for start in range(0, n, batch):
        envs = []
        for i in range(start, min(n, start + batch)):
            decoded = clock("decode", serdes["prompt"].decode, raws[i])
            envs.append(clock("validate", intake.intake_prompt, raws[i], lambda _b, d=decoded: d, "p", 0, i, now))
        asked = [t for e in envs for t in clock("embed.texts", texts_to_embed, e.record["prompt"], True)]
        cached += clock("embed.input (batched)", caching.prefetch, asked)
        lookups += len(asked)
        clock("retrieve (pipelined)", prefetch_retrieval, index, caching, [e.record for e in envs])
        effects = []
        for env in envs:
            res = clock("gate: moderate+admit+enrich", gate, env, policy, bucket, now, moderator, enricher)
            bucket = res.bucket
            adm = clock("hop.Admitted", _crossing, res.out)
            eff = clock("route+dispatch", orch.on_input, adm, None, now)
            if eff.request is not None:
                clock("request.encode", serdes["request"].encode, eff.request)
                effects.append(eff)
        index.forget()
        results = [serdes["result"].encode(dict(_result(e.request, now + 5), output_text="echo: " + e.request["prompt"]))
                   for e in effects]
        decoded = [clock("result.decode", serdes["result"].decode, raw) for raw in results]
        asked = [t for r in decoded for t in texts_to_embed(r["output_text"])]
        cached += clock("embed.output (batched)", caching.prefetch, asked)
        lookups += len(asked)
        for raw, rec, eff in zip(results, decoded, effects):
            env = clock("result.intake", intake.intake_result, raw, lambda _b, r=rec: r, "r", 0, 0)
            fin = clock("correlate+moderate output+audit", orch.on_input, env, Slot(eff.state, eff.features), now + 10)
            for role, record in zip(("content", "audit"), fin.final):
                clock(f"{role}.encode", serdes[role].encode, record)
    elapsed = time.perf_counter() - t_all
    steps = {k: round(v / n * 1e6, 1) for k, v in sorted(clock.total.items(), key=lambda kv: -kv[1])}
    return {"prompts": n, "batch": batch, "repeat_share": repeat_share, "us_per_prompt": round(elapsed / n * 1e6, 1),
            "prompts_per_core_s": round(n / elapsed), "steps_us": steps,
            "embedding_cache_hit_rate": round(cached / max(lookups, 1), 3), "texts_per_prompt": round(lookups / n, 2)}


def profile(n: int = 2000, top: int = 30) -> str:
    prof = cProfile.Profile()
    prof.enable()
    run(n, HOPS_KAFKA_KEY_WIRING)
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
    return s.getvalue()


if __name__ == "__main__":  # python -m tools.stage_profile [N] [--profile]
    import json
    import sys

    n = int(next((a for a in sys.argv[1:] if a.isdigit()), 3000))
    if "--full" in sys.argv:  # python -m tools.stage_profile --full [N]: classifier + RAG (needs the stack)
        print(json.dumps(run_full(n)))
        raise SystemExit(0)
    run(300, HOPS_KAFKA_KEY_WIRING)  # warm up
    for name, hops in WIRINGS.items():
        print(name, json.dumps(run(n, hops)))
    if "--profile" in sys.argv:
        print(profile(n))
