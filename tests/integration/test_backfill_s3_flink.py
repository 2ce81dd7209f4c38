"""Backfills on real S3 and real Flink: the bounded ingest job reads s3:// through the S3 plugin, the lane
(the content pipeline on its own topics) and an echo worker answer, the writer puts results next to the input.

The tests share a lane of their own (topic suffix), torn down afterwards; each has its own input prefix.
"""

from __future__ import annotations

import io
import json
import uuid

import pytest

from deploy.local import backfill_progress, backfills, flink_jobs
from jobs.backfill_results import ResultsStore
from operators.backfill import BackfillSpec, parse_request_id
from rscf.kafka_clients import client_security
from rscf.s3 import s3_client
from rscf.settings import SETTINGS
from tools import harness

pytestmark = pytest.mark.integration

BUCKET = SETTINGS.buckets.backfill
GOOD = 12
BAD = {3: "unparseable", 6: "missing_field", 9: "schema_mismatch", 14: "oversize"}  # line -> reason


def _jsonl(n_good: int, bad: dict[int, str]) -> tuple[bytes, int]:
    lines, good, line_no = [], 0, 0
    while good < n_good or line_no < max(bad, default=0):
        line_no += 1
        reason = bad.get(line_no)
        if reason == "unparseable":
            lines.append('{"prompt": "broken')
        elif reason == "missing_field":
            lines.append('{"text": "no prompt here"}')
        elif reason == "schema_mismatch":
            lines.append('{"prompt": ["not", "a", "string"]}')
        elif reason == "oversize":
            lines.append(json.dumps({"prompt": "x" * 5000}))
        else:
            good += 1
            lines.append(json.dumps({"prompt": f"describe product {good}", "id": f"sku-{good}"}))
    return ("\n".join(lines) + "\n").encode(), good


def _put(key: str, data: bytes) -> None:
    client = s3_client()
    if not client.bucket_exists(BUCKET):
        client.make_bucket(BUCKET)
    client.put_object(BUCKET, key, io.BytesIO(data), len(data))


@pytest.fixture(scope="module")
def lane(stack):
    """A lane of these tests' own (topics, pipeline job, echo worker), torn down afterwards. The tests share
    it (each has its own input, so its own backfill id and request ids): one lane start-up, not three."""
    name = f"bft{uuid.uuid4().hex[:6]}"
    cfg = backfills.lane_config(name)
    worker = harness.EchoWorker(cfg)
    backfills.ensure_lane(name)
    worker.start()
    yield name
    worker.stop()
    job = flink_jobs.running(cfg.job_name)
    if job is not None:
        flink_jobs.stop(job.job_id, with_savepoint=False)
    harness.delete_topics(cfg)


def _prompts_on_lane(lane: str) -> dict[str, int]:
    """request id -> how many times a read_committed reader sees it on the lane's prompts topic."""
    from confluent_kafka import Consumer

    cfg = backfills.lane_config(lane)
    serde = harness.serde(cfg, cfg.prompts, "prompt")
    c = Consumer({"bootstrap.servers": cfg.bootstrap, **client_security(), "group.id": f"t-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed", "enable.auto.commit": False})
    c.subscribe([cfg.prompts])
    counts: dict[str, int] = {}
    idle = 0
    while idle < 6:
        msgs = c.consume(500, 0.5)
        idle = 0 if msgs else idle + 1
        for m in msgs:
            if not m.error():
                rid = serde.decode(m.value())["request_id"]
                counts[rid] = counts.get(rid, 0) + 1
    c.close()
    return counts


def _finish(bid: str, timeout_s: float = 240) -> dict:
    s = backfill_progress.watch(bid, interval_s=1.0, timeout_s=timeout_s)
    assert s["state"] == "FINISHED", s
    return s


def test_jsonl_backfill_results_dead_letters_and_rerun(lane):
    prefix = f"it-{uuid.uuid4().hex[:8]}/jsonl"
    data, good = _jsonl(GOOD, BAD)
    _put(f"{prefix}/part-a.jsonl", data)
    spec = BackfillSpec(f"s3://{BUCKET}/{prefix}", "bf-tenant", fmt="jsonl")
    backfills.start(spec, 500, lane=lane, features=["echo"])
    s = _finish(spec.backfill_id)
    store = ResultsStore(spec)
    rows = store.rows()
    ids = [r["request_id"] for r in rows]
    assert len(ids) == len(set(ids)) == good, "one result row per good input row"
    assert {r["status"] for r in rows} == {"SUCCEEDED"}
    assert all(r["file"] == f"s3://{BUCKET}/{prefix}/part-a.jsonl" for r in rows)
    dead = {d["row"]: d["reason"] for d in store.dead_letters()}
    assert dead == BAD, "each bad row with its line number and reason"
    manifest = store.manifest()
    assert manifest.counts == {"SUCCEEDED": good, "DEAD_LETTER": len(BAD)}
    assert manifest.input_files[0]["sha256"] and manifest.job_id == s["job_id"]
    assert manifest.finished_at_ms >= manifest.started_at_ms
    # Rerun: the same backfill asks for nothing again and writes no second result.
    backfills.start(spec, 500, lane=lane, features=["echo"], start_lane=False)
    _finish(spec.backfill_id)
    again = [r["request_id"] for r in store.rows()]
    assert sorted(again) == sorted(ids)
    assert sorted(d["row"] for d in store.dead_letters()) == sorted(BAD), "no dead letter written twice"
    assert set(_prompts_on_lane(lane).values()) == {1}


def test_parquet_backfill_and_stop_with_savepoint_resume_exactly_once(lane):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 1500
    prefix = f"it-{uuid.uuid4().hex[:8]}/parquet"
    table = pa.table({"prompt": [f"regenerate {i}" for i in range(n)], "id": [str(i) for i in range(n)]})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=100)  # 15 read units
    _put(f"{prefix}/catalogue.parquet", buf.getvalue())
    spec = BackfillSpec(f"s3://{BUCKET}/{prefix}", "bf-tenant", fmt="parquet")
    started = backfills.start(spec, 250, lane=lane, features=["echo"])  # ~6 s of reading at 250 rows/s
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not flink_jobs.all_tasks_running(started["job_id"]):
        time.sleep(0.5)
    time.sleep(2)  # part of the input read, most of it not
    stopped = backfills.stop(spec.backfill_id)
    assert stopped["savepoint"], "the job was still reading when stopped"
    assert backfill_progress.status(spec.backfill_id)["state"] == "STOPPED"
    before = _prompts_on_lane(lane)
    assert 0 < len(before) < n, f"stopped mid-read: {len(before)} of {n} rows on the lane"
    backfills.resume(spec.backfill_id)
    _finish(spec.backfill_id)
    rows = ResultsStore(spec).rows()
    got = sorted(parse_request_id(r["request_id"])[2] for r in rows)
    assert got == list(range(1, n + 1)), "every row exactly once in the results"
    assert set(_prompts_on_lane(lane).values()) == {1}, "no row read twice across stop and resume"


def test_taskmanager_killed_mid_backfill_recovers_each_row_once(lane):
    """SIGKILL of the TaskManager while the ingest job reads: it restores from its last checkpoint (supervisord
    brings the TaskManager back) and every row still reaches the lane once and has one result."""
    import signal
    import time

    from deploy.local.processes import recorded_process
    from deploy.local.services import SERVICE_BY_NAME

    prefix = f"it-{uuid.uuid4().hex[:8]}/tm"
    n = 1500
    _put(f"{prefix}/rows.jsonl", ("\n".join(json.dumps({"prompt": f"row {i}"}) for i in range(n)) + "\n").encode())
    spec = BackfillSpec(f"s3://{BUCKET}/{prefix}", "bf-tenant", fmt="jsonl")
    started = backfills.start(spec, 250, lane=lane, features=["echo"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not flink_jobs.all_tasks_running(started["job_id"]):
        time.sleep(0.5)
    time.sleep(2.5)  # a few checkpoints in, most rows not read yet
    tm = recorded_process(SERVICE_BY_NAME["flink-taskmanager"].pid_file)
    assert tm is not None
    for p in [tm, *tm.children(recursive=True)]:
        p.send_signal(signal.SIGKILL)
    _finish(spec.backfill_id, timeout_s=300)
    got = sorted(parse_request_id(r["request_id"])[2] for r in ResultsStore(spec).rows())
    assert got == list(range(1, n + 1)), "every row exactly once in the results"
    assert set(_prompts_on_lane(lane).values()) == {1}, "no row written twice across the restore"


def test_a_backfill_yields_to_live_prompts_then_reads_at_its_budget_again(lane):
    """Live first (jobs/backfill_pace.py): while prompts arrive on a live prompts topic (here a private copy,
    `genai.prompts.<suffix>`, 40 records/s), the backfill reads at its floor (5 rows/s) instead of its budget
    (200 rows/s); once live is quiet it climbs back and finishes, every row once."""
    import threading
    import time

    from confluent_kafka import Producer

    from rscf.kafka_clients import create_topics, delete_topics, producer_config

    n = 1200
    prefix = f"it-{uuid.uuid4().hex[:8]}/live-first"
    _put(f"{prefix}/rows.jsonl", ("\n".join(json.dumps({"prompt": f"row {i}"}) for i in range(n)) + "\n").encode())
    live_topic = f"{SETTINGS.topics.prompts}.it{uuid.uuid4().hex[:6]}"
    create_topics([live_topic], partitions=1)
    stop = threading.Event()

    def live_traffic() -> None:  # arrivals are what the pace counts: the records need no job behind them
        p = Producer(producer_config(linger_ms=0))
        while not stop.is_set():
            p.produce(live_topic, b"live")
            p.poll(0)
            time.sleep(0.025)
        p.flush(10)

    producer = threading.Thread(target=live_traffic, daemon=True)
    producer.start()
    try:
        time.sleep(3)
        spec = BackfillSpec(f"s3://{BUCKET}/{prefix}", "bf-tenant", fmt="jsonl")
        started = backfills.start(spec, 200, lane=lane, features=["echo"])  # 6 s of reading at its budget
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not flink_jobs.all_tasks_running(started["job_id"]):
            time.sleep(0.5)
        time.sleep(15)
        during = sum(1 for rid in _prompts_on_lane(lane) if (parse_request_id(rid) or ("",))[0] == spec.backfill_id)
    finally:
        stop.set()
        producer.join(30)
        delete_topics([live_topic])
    # at the budget all 1,200 rows are read in 6 s; at the floor ~5 rows/s (+ up to one period at the budget)
    assert during < 500, f"{during} of {n} rows read in ~20 s beside live prompts: the backfill did not yield"
    _finish(spec.backfill_id, timeout_s=240)
    got = sorted(parse_request_id(r["request_id"])[2] for r in ResultsStore(spec).rows())
    assert got == list(range(1, n + 1)), "every row exactly once in the results, live first or not"


def test_a_backfill_cancelled_mid_read_leaves_its_lane_open_to_the_next_one(lane):
    """Cancelled (the Web UI's Cancel) mid-read, the ingest may leave its Kafka transaction open, which holds the
    lane's last stable offset for 10 min: the lane reads nothing after it and the next backfill's pace sees no
    lag. `status` sees the cancel and aborts it; the next backfill on the lane then finishes, every row once."""
    import time

    from confluent_kafka import TopicPartition

    from rscf.kafka_clients import admin_client, end_offsets

    prefix = f"it-{uuid.uuid4().hex[:8]}/cancelled"
    _put(f"{prefix}/rows.jsonl", ("\n".join(json.dumps({"prompt": f"row {i}"}) for i in range(3000)) + "\n").encode())
    spec = BackfillSpec(f"s3://{BUCKET}/{prefix}", "bf-tenant", fmt="jsonl")
    started = backfills.start(spec, 200, lane=lane, features=["echo"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not flink_jobs.all_tasks_running(started["job_id"]):
        time.sleep(0.5)
    time.sleep(3)  # mid-read: rows in the current transaction
    flink_jobs.stop(started["job_id"], with_savepoint=False)
    backfills.stop_writer(started["writer_pid"])  # it would wait for the rows never read
    assert backfill_progress.status(spec.backfill_id)["job_state"] == "CANCELED"
    assert backfills.saved_state(spec.backfill_id)["released_job_id"] == started["job_id"]
    topic = backfills.lane_config(lane).prompts
    admin = admin_client()
    tps = [TopicPartition(topic, p) for p in admin.list_topics(topic, timeout=10).topics[topic].partitions]
    def nothing_open() -> bool:  # the last stable offsets are the high watermarks
        return end_offsets(admin, tps, 10, committed_only=True) == end_offsets(admin, tps, 10)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not nothing_open():
        time.sleep(0.2)
    assert nothing_open(), "no transaction of the cancelled ingest left open on the lane"

    nxt = f"it-{uuid.uuid4().hex[:8]}/after-cancel"
    _put(f"{nxt}/rows.jsonl", ("\n".join(json.dumps({"prompt": f"next {i}"}) for i in range(50)) + "\n").encode())
    after = BackfillSpec(f"s3://{BUCKET}/{nxt}", "bf-tenant", fmt="jsonl")
    backfills.start(after, 200, lane=lane, features=["echo"])
    _finish(after.backfill_id, timeout_s=180)  # an open transaction would hold it for 10 min
    got = sorted(parse_request_id(r["request_id"])[2] for r in ResultsStore(after).rows())
    assert got == list(range(1, 51))
