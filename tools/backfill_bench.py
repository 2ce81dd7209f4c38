"""`rscf bench backfill`: rows/s of a backfill end to end with the echo pool, its CPU, and what it does to live.

1. For each format: N rows written to s3://rscf-backfill/bench-<id>/<fmt>/ (4 files), a lane of its own
   (the content pipeline on its own topics) and an echo worker on it, `backfills.start` with the budget,
   timed from the start call to the manifest saying FINISHED; CPU seconds per row of every stack process,
   the echo worker and the results writer over that window.
2. Live latency: `rscf bench pipeline` at `live_rate` alone; then, each measured once rows come out of
   the lane, beside a backfill of each arm in turn (`arms`, `--arms`; by default as it ran before: the
   ingest and the lane's Python on the TaskManager's interpreter lock, fixed pace, nothing niced; the
   defaults of 2026-12-03: a yielding pace, thread mode; today's defaults: the ingest's and the lane's
   Python in niced worker processes, a fixed pace); then alone again (a shared machine drifts). Overhead
   p99 side by side and the ratios against both alone runs, in one run. With `rounds` > 1 the beside and
   alone runs repeat, interleaved, and pooled and bracketed ratios come out (`tools.side_by_side`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
import threading
import time
import uuid

from deploy.local import backfill_progress, backfills, flink_jobs
from jobs.backfill_pace import Pace
from operators.backfill import BackfillSpec
from rscf.settings import SETTINGS
from tools import harness
from tools.pipeline_bench import CpuMeter, run_bench
from tools.side_by_side import side_by_side

FILES = 4


def write_input(prefix: str, fmt: str, n: int) -> str:
    """N rows in FILES files under s3://rscf-backfill/<prefix>/ ; returns the URI."""
    from rscf.s3 import s3_client

    client = s3_client()
    bucket = SETTINGS.buckets.backfill
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    per = -(-n // FILES)
    for f in range(FILES):
        rows = [{"prompt": f"Write a product description for item {i}", "id": str(i)}
                for i in range(f * per, min(n, (f + 1) * per))]
        if fmt == "jsonl":
            data = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=5_000)
            data = buf.getvalue()
        client.put_object(bucket, f"{prefix}/part-{f}.{fmt}", io.BytesIO(data), len(data))
    return f"s3://{bucket}/{prefix}"


class Lane:
    """A lane of the benchmark's own: topics, the pipeline job and an echo worker."""

    def __init__(self, yielding: backfills.Yielding):
        self.name = f"{SETTINGS.topics.backfill_lane}-{uuid.uuid4().hex[:6]}"  # a lane: not live to a backfill
        self.yielding = yielding
        self.cfg = backfills.lane_config(self.name, yielding)
        self.worker = harness.EchoWorker(self.cfg)

    def __enter__(self) -> "Lane":
        from inference_workers.backfill_lanes import lower_priority

        backfills.ensure_lane(self.name, self.yielding)
        self.worker.start()
        if self.worker.proc is not None:  # as the pool controller runs a lane replica
            lower_priority(self.worker.proc.pid, self.yielding.nice, self.yielding.sched_idle)
        return self

    def drained(self, timeout_s: float = 120.0, still_s: float = 10.0) -> bool:
        """Wait until the lane's job has read every committed prompt and result (what a stopped backfill left on
        the lane; the echo worker answers in milliseconds), so the next live run is not beside its tail. Flink
        commits the offset after the last record it read, never past what follows it: a partition's last
        transaction marker (so up to one row of lag per partition is drained), nor the rows of a transaction
        the cancelled backfill left open and `backfills.release` aborted (a read_committed reader skips them):
        so a lane whose committed offsets have not moved for `still_s` has read all it will."""
        from confluent_kafka import TopicPartition

        from rscf import kafka_clients

        admin = kafka_clients.admin_client(self.cfg.bootstrap)
        tps = [TopicPartition(topic, p) for topic in (self.cfg.prompts, self.cfg.results)
               for p in admin.list_topics(topic, timeout=10).topics[topic].partitions]
        deadline = time.monotonic() + timeout_s
        moved_at, last = time.monotonic(), None
        while time.monotonic() < deadline:
            lag, latest = kafka_clients.group_lag(admin, self.cfg.group_id, tps, 10, committed_only=True)
            if lag <= len(tps):
                return True
            if (latest - lag) != last:
                moved_at, last = time.monotonic(), latest - lag
            elif time.monotonic() - moved_at >= still_s:
                return True
            time.sleep(1.0)
        return False

    def __exit__(self, *exc) -> None:
        self.worker.stop()
        job = flink_jobs.running(self.cfg.job_name)
        if job is not None:
            flink_jobs.stop(job.job_id, with_savepoint=False)
        harness.delete_topics(self.cfg)


def _stop_if_running(backfill_id: str) -> None:
    try:
        state = backfills.saved_state(backfill_id)
        job = flink_jobs.running(state["job_name"])
        if job is not None:
            flink_jobs.stop(job.job_id, with_savepoint=False)
        backfills.stop_writer(state.get("writer_pid"))
        backfills.release(backfill_id)  # a cancel may leave its transaction open: a standing lane would stall
    except (KeyError, flink_jobs.ClusterError):
        pass


def listener_pid(port: int) -> int | None:
    """The process listening on a loopback port (the shared stack's Kafka and S3 when this data dir has none)."""
    import psutil

    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


class _Stopped(Exception):
    pass


def one_backfill(fmt: str, n: int, budget: float, timeout_s: float = 1800, on_update=None,
                 yielding: backfills.Yielding = backfills.Yielding(), stop: threading.Event | None = None,
                 flowing: threading.Event | None = None, standing: Lane | None = None) -> dict:
    """A backfill of N rows on a lane of its own (or on `standing`, left running), timed to FINISHED (or to
    `stop`), with CPU per row by process."""
    tag = uuid.uuid4().hex[:8]
    uri = write_input(f"bench-{tag}/{fmt}", fmt, n)
    spec = BackfillSpec(uri, "bench-backfill", fmt=fmt)
    with (contextlib.nullcontext(standing) if standing is not None else Lane(yielding)) as lane:
        meter = CpuMeter({"echo-worker": lane.worker.proc.pid if lane.worker.proc else None,
                          "kafka": listener_pid(SETTINGS.ports.kafka), "s3": listener_pid(SETTINGS.ports.s3)})
        meter.begin()
        t0 = time.monotonic()
        state = backfills.start(spec, budget, lane=lane.name, features=["echo"], start_lane=False, yielding=yielding)
        meter.procs["results-writer"] = __import__("psutil").Process(state["writer_pid"])
        samples: list[tuple[float, int]] = []

        last: dict = {}

        def sample(st: dict) -> None:
            samples.append((time.monotonic(), st.get("rows_finished", 0)))
            last.update(st)
            if flowing is not None and st.get("rows_finished", 0) > 0:
                flowing.set()  # rows come out of the lane: the backfill runs end to end
            if on_update is not None:
                on_update(st)
            if stop is not None and stop.is_set():
                raise _Stopped

        try:
            final = backfill_progress.watch(spec.backfill_id, interval_s=2.0, timeout_s=timeout_s, on_update=sample)
        except _Stopped:
            final = {**last, "state": "STOPPED_BY_BENCH"}
        finally:
            _stop_if_running(spec.backfill_id)
        wall = time.monotonic() - t0
        done = final.get("rows_finished", 0) + final.get("rows_dead", 0)
        cpu = meter.end(max(done, 1))
    # steady state: from the first finished row to the last sample still short of the total (no start-up,
    # no wait for the writer's last part)
    moving = [(t, f) for t, f in samples if 0 < f < n]
    steady = (moving[-1][1] - moving[0][1]) / (moving[-1][0] - moving[0][0]) if len(moving) >= 2 else None
    return {"format": fmt, "rows": n, "budget_rows_per_s": budget, "yielding": yielding.__dict__,
            "state": final["state"], "rows_done": done,
            "counts": final.get("counts"), "wall_s": round(wall, 1), "rows_per_s": round(done / wall, 1),
            "steady_rows_per_s": round(steady, 1) if steady else None,
            "cpu_us_per_row": cpu["us_per_prompt"], "cpu_total_us_per_row": cpu["total_us_per_prompt"],
            "cores_busy": cpu["cores_busy"], "uri": uri}


def _live(live_rate: int, duration_s: float) -> dict:
    # the target is the live PREMIUM tenant's p99: the live tenant is PREMIUM (its own features: echo)
    r = run_bench(rate=live_rate, duration_s=duration_s, progress=False, warmup_s=3, tier="PREMIUM",
                  keep_samples=True)
    return {**{q: r["overhead_ms"][q] for q in ("p50", "p95", "p99")}, "throughput_per_s": r["throughput_per_s"],
            "samples": r["overhead_samples_ms"]}


def _beside(live_rate: int, duration_s: float, n: int, budget: float, yielding: backfills.Yielding,
            standing: Lane | None = None) -> dict:
    """Live overhead while a backfill runs on its lane; the backfill is stopped once live is measured (and a
    standing lane drained of what it left)."""
    result: dict = {}
    stop, flowing = threading.Event(), threading.Event()
    t = threading.Thread(target=lambda: result.update(
        one_backfill("jsonl", n, budget, yielding=yielding, stop=stop, flowing=flowing, standing=standing)),
        daemon=True)
    t.start()
    t0 = time.monotonic()
    flowing.wait(600)  # the lane and the ingest job up and rows finishing before live is measured
    waited = time.monotonic() - t0
    live = _live(live_rate, duration_s)
    stop.set()
    t.join()
    if standing is not None and not standing.drained():
        print("warning: the standing lane did not drain in 120 s; the next alone run is beside its tail", file=sys.stderr)
    throughout = ran_throughout(result)
    if not throughout:  # live was measured (partly) without a backfill beside it: say so, do not hide it
        print(f"warning: the backfill ended ({result.get('state')}) before live was measured to the end; "
              "this beside run is not beside a backfill", file=sys.stderr)
    return {"live": live, "backfill": result, "backfill_flowing_after_s": round(waited, 1),
            "backfill_ran_throughout": throughout}


def ran_throughout(backfill: dict) -> bool:
    """Whether the backfill still ran when the bench stopped it, i.e. beside the whole live run (2026-12-05: a
    10 rows/s backfill whose rows showed only at its end had FINISHED before live was measured)."""
    return backfill.get("state") == "STOPPED_BY_BENCH"


def arms() -> dict[str, backfills.Yielding]:
    """What a backfill beside live may look like (all but the first at the backfill niceness, 2 s lane
    checkpoints): as before (NOT_YIELDING); isolated: a process-mode ingest, a thread-mode lane, a fixed
    pace; the defaults of 2026-12-03: thread-mode ingest and lane, a pace that yields while the machine is
    busy; yielding: the same with the lane in process mode; lane_process (the defaults since 2026-12-04):
    ingest and lane in process mode, a fixed pace; lane_process_yielding: the same with the yielding pace;
    live_first (the defaults since 2026-12-05): lane_process, and the pace drops to its floor while live
    prompts arrive, with the lane's lag bounded (jobs/backfill_pace.py); live_first_idle: the same with every
    backfill-only process SCHED_IDLE; live_first_tight: lane checkpoints every 500 ms and a 5 s lag bound;
    live_first_ckpt2: ingest checkpoints (its commits to the lane) every 2 s instead of 1 s; live_first_paused:
    a live floor of 0 (the reader pauses while live flows: what the backfill's jobs cost by being there)."""
    y, busy = backfills.Yielding(), Pace.busy_high
    live_first = y
    y = dataclasses.replace(y, live_busy=0.0, max_lag_s=0.0, sched_idle=False)  # before live first: fixed pace, niced
    return {"not_yielding": backfills.NOT_YIELDING,
            "isolated": dataclasses.replace(y, ingest_mode="process", lane_mode="thread", yield_busy=0.0),
            "yielding_thread_lane": dataclasses.replace(y, ingest_mode="thread", lane_mode="thread", yield_busy=busy),
            "yielding": dataclasses.replace(y, ingest_mode="thread", lane_mode="process", yield_busy=busy),
            "lane_process": dataclasses.replace(y, ingest_mode="process", lane_mode="process", yield_busy=0.0),
            "lane_process_yielding": dataclasses.replace(y, ingest_mode="process", lane_mode="process",
                                                         yield_busy=busy),
            "live_first": dataclasses.replace(live_first, ingest_mode="process", lane_mode="process", yield_busy=0.0),
            "live_first_idle": dataclasses.replace(live_first, ingest_mode="process", lane_mode="process",
                                                   yield_busy=0.0, sched_idle=True),
            "live_first_tight": dataclasses.replace(live_first, ingest_mode="process", lane_mode="process",
                                                    yield_busy=0.0, lane_checkpoint_ms=500, max_lag_s=5.0),
            "live_first_ckpt2": dataclasses.replace(live_first, ingest_mode="process", lane_mode="process",
                                                    yield_busy=0.0, ingest_checkpoint_ms=2_000),
            "live_first_paused": dataclasses.replace(live_first, ingest_mode="process", lane_mode="process",
                                                     yield_busy=0.0, live_floor=0.0)}


DEFAULT_ARMS = ("not_yielding", "yielding_thread_lane", "lane_process")


def _figures(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "samples"}


def check_arms(names: tuple[str, ...], standing_lanes: bool) -> dict[str, backfills.Yielding]:
    """The arms by name; a ValueError, before anything runs, for an unknown one or two standing lanes."""
    known = arms()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown arms {unknown}: choose from {sorted(known)}")
    if standing_lanes and len(names) > 1:  # 2026-12-05: a second standing lane's job found no slot in 180 s
        raise ValueError("--standing-lanes measures one arm a run: each standing lane's job holds a TaskManager "
                         "slot, and the live job, the stack's rscf-backfill-lane and the ingest take the other three")
    return known


def live_side_by_side(live_rate: int, duration_s: float, n: int, budget: float,
                      names: tuple[str, ...] = DEFAULT_ARMS, rounds: int = 1, standing_lanes: bool = False) -> dict:
    """A live warm-up run (not counted), live overhead alone, then `rounds` times: beside a backfill of each arm
    in turn (`arms`), and alone again; pooled and bracketed ratios from every run (`tools.side_by_side`).
    standing_lanes: each arm's lane (its pipeline job and echo worker) started first and left running through
    every run, alone ones included, as `rscf-backfill-lane` stands on a stack once a backfill has run; else
    each beside run starts and stops a lane of its own (its start-up and JIT then count against the backfill).
    A standing lane serves one beside run first, not counted (`lane_warmups`)."""
    # more rows than the backfill reads while live is measured (start-up, warm-up, run, drain): it never ends first
    n = min(n, int(budget * (120 + 3 * duration_s)))
    known = check_arms(names, standing_lanes)
    beside_runs: dict[str, list[dict]] = {name: [] for name in names}
    with contextlib.ExitStack() as lanes:
        standing = {name: lanes.enter_context(Lane(known[name])) for name in names} if standing_lanes else {}
        # not counted: a standing lane's first backfill pays its JIT, as once on a stack (1.23x, then 1.04-1.10x:
        # 2026-12-05); the first live run after a stack change pays JIT and caches
        lane_warmups = {name: _figures(_beside(live_rate, duration_s, n, budget, known[name], lane)["live"])
                        for name, lane in standing.items()}
        warmup = _live(live_rate, duration_s)
        alone_runs = [_live(live_rate, duration_s)]
        for _ in range(max(1, rounds)):
            for name in names:
                beside_runs[name].append(_beside(live_rate, duration_s, n, budget, known[name], standing.get(name)))
            alone_runs.append(_live(live_rate, duration_s))
    alone, alone_again = alone_runs[0], alone_runs[-1]
    beside = {name: runs[0] for name, runs in beside_runs.items()}

    def ratio(r: dict):  # against the first alone run (as before); `alone_again` shows the machine's drift
        return round(r["live"]["p99"] / alone["p99"], 2) if alone["p99"] else None

    figures = side_by_side([run["samples"] for run in alone_runs],
                           {name: [r["live"]["samples"] for r in runs] for name, runs in beside_runs.items()})
    for runs in beside_runs.values():
        for r in runs:
            r["live"] = _figures(r["live"])
    return {"live_rate": live_rate, "duration_s": duration_s, "standing_lanes": standing_lanes,
            "warmup": _figures(warmup), "lane_warmups": lane_warmups, "alone": _figures(alone),
            "alone_again": _figures(alone_again), **beside,
            **{f"p99_ratio_{name}": ratio(r) for name, r in beside.items()},
            **{f"p99_ratio_{name}_vs_alone_again": round(r["live"]["p99"] / alone_again["p99"], 2)
               for name, r in beside.items() if alone_again["p99"]},
            "interleaved": figures,
            "beside_runs_without_a_backfill_throughout": {name: sum(not r["backfill_ran_throughout"] for r in runs)
                                                          for name, runs in beside_runs.items()},
            "later_rounds": {name: runs[1:] for name, runs in beside_runs.items() if runs[1:]},
            "target_p99_ratio": 1.10}


def run(n: int = 100_000, formats: tuple[str, ...] = ("jsonl", "parquet"), budget: float = 5_000.0,
        live_rate: int = 200, live_duration_s: float = 20.0, live_budget: float = 500.0, on_update=None,
        names: tuple[str, ...] = DEFAULT_ARMS, rounds: int = 1, standing_lanes: bool = False) -> dict:
    if live_rate > 0:
        check_arms(names, standing_lanes)
    out: dict = {"rows": n, "formats": {}}
    for fmt in formats:
        # capacity: at the budget whatever the machine's load (the backfill itself makes it busy)
        out["formats"][fmt] = one_backfill(fmt, n, budget, on_update=on_update,
                                           yielding=dataclasses.replace(backfills.Yielding(), yield_busy=0.0))
    if live_rate > 0:
        out["live"] = live_side_by_side(live_rate, live_duration_s, n, live_budget, names, rounds, standing_lanes)
    return out
