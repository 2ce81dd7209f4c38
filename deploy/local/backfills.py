"""Backfills on the local stack: plan, the backfill lane, the bounded ingest job, the results writer.

    rscf backfill start s3://B/P --tenant T
      1. plan: list the input files, checksum and count their rows (jobs/backfill_files.py), keep the
         plan under .data/backfills/<id>/plan.json
      2. the backfill lane: the content pipeline job itself (`rscf-backfill-lane`, the same code as the
         live job) on its own topics `genai.*.backfill`, so the tenant's backfill budget is the lane's
         policy for it (not its live quota) and its requests go to `genai.inference.requests.<pool>.backfill`,
         where replicas serving the backfill lane answer them, never in front of live requests
      3. the ingest job (jobs/backfill_ingest.py), bounded: rows -> prompts on the lane
      4. the results writer (jobs/backfill_results.py), a process of its own: finals -> Parquet + manifest
    stop: stop-with-savepoint of the ingest job, and the writer; resume: the job from that savepoint, and
    the writer again (it reads on from its committed offsets and skips request ids already written).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deploy.local import backfill_transactions, flink_jobs
from deploy.local.flink import flink_env, flink_home
from jobs.config import JobConfig, python_executable
from operators.backfill import BackfillSpec, done_ranges, lowered_budget, request_id
from rscf.clock import now_ms
from rscf.pools import POOL_TABLE
from rscf.settings import SETTINGS

LANE = "backfill"
LANE_JOB = "rscf-backfill-lane"
DEFAULT_BUDGET = 200.0  # rows/s a backfill may put on the lane unless told (its token bucket's rate)


@dataclass(frozen=True)
class Yielding:
    """What keeps a backfill off live traffic's cores (README, "Backfills"; `rscf bench backfill` compares): the
    ingest's and the lane's Python in worker processes of their own, a pace that yields to live prompts, every
    backfill-only process niced (those workers, the results writer, the lane's replicas; SCHED_IDLE if asked)."""

    ingest_mode: str = SETTINGS.limits.backfill_ingest_mode
    yield_busy: float = SETTINGS.limits.backfill_yield_busy
    nice: int = SETTINGS.limits.backfill_nice
    lane_checkpoint_ms: int = SETTINGS.limits.backfill_lane_checkpoint_ms  # 0: the delivery mode's default
    lane_mode: str = SETTINGS.limits.backfill_lane_mode  # "process": the lane job's Python niced, off the lock
    live_busy: float = SETTINGS.limits.backfill_live_busy_per_s  # live first (jobs/backfill_pace.py); 0: never
    live_floor: float = SETTINGS.limits.backfill_live_floor_rows_per_s
    max_lag_s: float = SETTINGS.limits.backfill_max_lag_s
    sched_idle: bool = SETTINGS.limits.backfill_sched_idle  # SCHED_IDLE as well (off: no measured gain, README)
    ingest_checkpoint_ms: int = SETTINGS.limits.backfill_ingest_checkpoint_ms


NOT_YIELDING = Yielding("thread", 0.0, 0, 0, "thread", 0.0, 0.0, 0.0, False)  # as before: on the live job's lock


def lane_config(lane: str = LANE, yielding: Yielding | None = None) -> JobConfig:
    """The lane's job: the live job's code on the lane's topics; checkpoints every `lane_checkpoint_ms` (each one
    commits the lane's finals: a backfill row may wait for it, and the shared TaskManager does 10x fewer);
    a row's attempt waits up to `backfill_request_timeout_ms`, and the budget counts rows as the ingest read
    them (`created_at`): queued behind live traffic, a row waits, it is not expired or over quota. In
    process mode (`Yielding.lane_mode`) its Python runs in worker processes at the backfill's niceness."""
    y = yielding or Yielding()
    worker = "" if y.lane_mode != "process" else str(
        niced_python(y.nice, y.sched_idle) if y.nice > 0 else python_executable())
    return JobConfig(job_name=LANE_JOB if lane == LANE else f"{LANE_JOB}-{lane}", topic_suffix=lane,
                     checkpoint_interval_ms=y.lane_checkpoint_ms, admit_by_created_at=True,
                     request_timeout_ms=SETTINGS.limits.backfill_request_timeout_ms, python_worker=worker)


def state_dir(backfill_id: str) -> Path:
    return SETTINGS.paths.data / "backfills" / backfill_id


def job_name(backfill_id: str) -> str:
    return f"rscf-backfill-{backfill_id}"


def saved_state(backfill_id: str) -> dict[str, Any]:
    path = state_dir(backfill_id) / "state.json"
    if not path.exists():
        raise KeyError(f"no backfill {backfill_id} started from this data dir ({path})")
    return json.loads(path.read_text())


def _save_state(backfill_id: str, state: dict[str, Any]) -> None:
    (state_dir(backfill_id) / "state.json").write_text(json.dumps(state, indent=1))


def known() -> list[str]:
    base = SETTINGS.paths.data / "backfills"
    return sorted(p.name for p in base.iterdir() if (p / "state.json").exists()) if base.exists() else []


def release(backfill_id: str, seen_state: str | None = None, lane: str | None = None) -> bool:
    """Abort what the backfill's ended ingest left open on its lane, if not done yet (deploy/local/
    backfill_transactions.py: a cancelled ingest's open transaction blocks the lane for 10 min)."""
    state = saved_state(backfill_id)
    changed = (lane is None or state.get("lane") == lane) and backfill_transactions.release(state, seen_state)
    if changed:
        _save_state(backfill_id, state)
    return changed


def release_lane(lane: str) -> int:
    """`release` every backfill on the lane that has not been: a cancelled one blocks all the others on it."""
    return sum(release(other, lane=lane) for other in known())


# ----------------------------------------------------------------------------- the lane


def ensure_lane(lane: str = LANE, yielding: Yielding | None = None) -> str:
    """The lane's topics and its pipeline job (submitted when not running); returns the job id."""
    from rscf import kafka_clients

    cfg = lane_config(lane, yielding)
    kafka_clients.create_topics(cfg.all_topics(), 2, cfg.bootstrap, single_partition=(cfg.control,))
    job = flink_jobs.running(cfg.job_name)
    return job.job_id if job is not None else flink_jobs.submit(cfg).job_id


def live_policy(tenant: str, bootstrap: str | None = None) -> dict[str, Any] | None:
    """The tenant's last policy on the live control topic (its tier and features), None if it has none."""
    from confluent_kafka import Consumer, TopicPartition

    from jobs.clients import topic_serde
    from rscf.kafka_clients import client_security

    cfg = JobConfig(bootstrap=bootstrap or SETTINGS.kafka_bootstrap)
    serde = topic_serde(cfg, cfg.control, "control")
    c = Consumer({"bootstrap.servers": cfg.bootstrap, **client_security(),
                  "group.id": f"backfill-policy-{uuid.uuid4().hex}", "enable.auto.commit": False})
    found = None
    try:
        parts = c.list_topics(cfg.control, timeout=10).topics[cfg.control].partitions
        for p in parts:
            low, high = c.get_watermark_offsets(TopicPartition(cfg.control, p), timeout=10)
            if high <= low:
                continue
            c.assign([TopicPartition(cfg.control, p, low)])
            pos = low
            while pos < high:
                for msg in c.consume(500, 2.0) or [None]:
                    if msg is None:
                        pos = high
                        break
                    pos = msg.offset() + 1
                    try:
                        event = serde.decode(msg.value())
                    except Exception:  # noqa: BLE001 - the live job dead-letters it; skip here
                        continue
                    pol = event.get("tenant_policy")
                    if pol and pol.get("tenant_id") == tenant:
                        found = dict(pol)
    finally:
        c.close()
    return found


def budget_events(spec: BackfillSpec, rows_per_s: float, live: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The lane's control events for a backfill: the tenant's backfill budget (its live tier and features,
    the budget's rate) and every pool's version on the lane only: --model-version, else the pool's default.
    The lane is shared by backfills: two running at once with different versions get the later one's."""
    issued = datetime.now(timezone.utc)
    rate = float(rows_per_s)
    events = [{"event_id": str(uuid.uuid4()), "issued_at": issued, "rollout": None, "breaker": None,
               "tenant_policy": {"tenant_id": spec.tenant, "tier": (live or {}).get("tier") or "STANDARD",
                                 "rate_per_s": rate, "burst": int(max(rate, 1.0) * 10),
                                 "features": list((live or {}).get("features") or []),
                                 "moderation_fail_closed": (live or {}).get("moderation_fail_closed")}}]
    for pool in POOL_TABLE:  # without --model-version: back to each pool's default (a pin does not outlive its run)
        version = spec.model_version or pool.default_version
        events.append({"event_id": str(uuid.uuid4()), "issued_at": issued, "tenant_policy": None, "breaker": None,
                       "rollout": {"pool": pool.name, "model_name": pool.model, "weights": {version: 1.0}}})
    return events


def send_control(events: list[dict[str, Any]], lane: str = LANE) -> None:
    from confluent_kafka import Producer

    from jobs.clients import topic_serde
    from rscf import kafka_clients

    cfg = lane_config(lane)
    serde = topic_serde(cfg, cfg.control, "control")
    p = Producer(kafka_clients.producer_config(cfg.bootstrap, 1))
    for event in events:
        p.produce(cfg.control, serde.encode(event))
    p.flush(30)


# ----------------------------------------------------------------------------- the ingest job and writer


def require_s3_filesystem() -> None:
    """Refuse early when the cluster was started before the S3 plugin and `s3.*` keys were in its config
    (plugins are loaded when its processes start): the job would fail on `s3://` with a class-path error."""
    keys = {e["key"] for e in flink_jobs._request("GET", "/jobmanager/config") or []}
    if "s3.endpoint" not in keys:
        raise flink_jobs.ClusterError(
            "the Flink cluster runs without the S3 filesystem config (s3.endpoint): run deploy/local/install.sh "
            "(it fetches flink-s3-fs-hadoop), then `rscf down` + `rscf up` so the cluster loads the plugin")


def flink_run(script: str, args: list[str], from_savepoint: str | None = None) -> str:
    """`flink run -d` of a Python job script; returns the job id."""
    flink_jobs.ensure_taskmanager_runs_current_code()  # thread mode keeps modules an earlier job imported
    py = str(SETTINGS.paths.venv / "bin" / "python")
    cmd = ["bash", str(flink_home() / "bin" / "flink"), "run", "-d", "-py", str(SETTINGS.paths.repo / script),
           "-pyexec", py, "-pyclientexec", py]
    if from_savepoint:
        cmd += ["-s", from_savepoint]
    proc = subprocess.run(cmd + args, capture_output=True, text=True, env={**os.environ, **flink_env()},
                          timeout=300, cwd=str(SETTINGS.paths.repo))
    match = flink_jobs.SUBMITTED.search(proc.stdout + proc.stderr)
    if proc.returncode != 0 or match is None:
        raise flink_jobs.ClusterError(f"`flink run` failed (exit {proc.returncode}):\n"
                                      f"{(proc.stdout + proc.stderr).strip()[-3000:]}")
    return match.group(1)


def writer_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of this process counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def start_writer(backfill_id: str, lane: str = LANE, y: Yielding = Yielding()) -> int:
    from inference_workers.backfill_lanes import lower_priority
    from rscf.run_logs import open_run_log

    log = open_run_log(f"backfill-{backfill_id}-results.log")
    proc = subprocess.Popen([str(SETTINGS.paths.venv / "bin" / "python"), "-m", "jobs.backfill_results",
                             "--plan", str(state_dir(backfill_id) / "plan.json"), "--lane", lane],
                            cwd=str(SETTINGS.paths.repo), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lower_priority(proc.pid, y.nice, y.sched_idle)  # backfill-only: live processes first
    return proc.pid


def niced_python(nice: int, idle: bool = False) -> Path:
    """The Python worker interpreter of the ingest and lane jobs in process mode: the venv's Python under
    `nice` (and SCHED_IDLE with `idle`), so a backfill's Python runs after live work whenever both want a core."""
    path = SETTINGS.paths.data / "backfills" / f"python-nice{nice}{'-idle' if idle else ''}"
    text = (f"#!/bin/sh\n# written by deploy/local/backfills.py: the backfill's Flink Python workers, niced\n"
            f"exec {'chrt --idle 0 ' if idle else ''}nice -n {nice} {SETTINGS.paths.venv / 'bin' / 'python'} \"$@\"\n")
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    return path


def stop_writer(pid: int | None) -> None:
    if writer_alive(pid):
        os.kill(pid, signal.SIGTERM)


def _ingest_args(backfill_id: str, lane: str, max_rows_per_s: float, y: Yielding) -> list[str]:
    cfg = lane_config(lane)
    niced = y.ingest_mode == "process" and y.nice > 0
    return ["--plan", str(state_dir(backfill_id) / "plan.json"), "--lane", lane, "--job-name", job_name(backfill_id),
            "--bootstrap", cfg.bootstrap, "--registry-url", cfg.registry_url, "--max-rows-per-s", str(max_rows_per_s),
            "--yield-busy", str(y.yield_busy), "--execution-mode", y.ingest_mode, "--live-busy", str(y.live_busy),
            "--live-floor", str(y.live_floor), "--max-lag-s", str(y.max_lag_s), "--lane-group", cfg.group_id,
            "--checkpoint-interval-ms", str(y.ingest_checkpoint_ms),
            *(["--python-executable", str(niced_python(y.nice, y.sched_idle))] if niced else [])]


def start(spec: BackfillSpec, budget_rows_per_s: float = DEFAULT_BUDGET, lane: str = LANE,
          start_lane: bool = True, features: list[str] | None = None, yielding: Yielding = Yielding()) -> dict[str, Any]:
    """Plan, lane, budget, ingest job, writer; returns the backfill's state (id, job id, rows)."""
    from jobs.backfill_files import plan
    from jobs.backfill_results import ResultsStore

    bid = spec.backfill_id
    require_s3_filesystem()
    current = flink_jobs.running(job_name(bid))
    if current is not None:
        raise flink_jobs.ClusterError(f"backfill {bid} is already {current.state} as {current.job_id}")
    release_lane(lane)  # a cancelled one's open transaction would block this one on its lane (and fool its pace)
    manifest, units = plan(spec)
    store = ResultsStore(spec)
    previous = store.manifest()
    manifest.started_at_ms = previous.started_at_ms if previous and previous.started_at_ms else now_ms()
    d = state_dir(bid)
    d.mkdir(parents=True, exist_ok=True)
    lane_job = ensure_lane(lane, yielding) if start_lane else None
    live = live_policy(spec.tenant)
    if features is not None:
        live = {**(live or {}), "features": list(features)}
    send_control(budget_events(spec, budget_rows_per_s, live), lane)
    # a rerun skips the rows that have a result or a dead letter already
    done = done_ranges([r["request_id"] for r in store.rows()]
                       + [request_id(bid, d["file"], int(d["row"])) for d in store.dead_letters()], bid)
    doc = {"spec": spec.to_dict(), "manifest": json.loads(manifest.to_json()), "units": units, "done": done}
    (d / "plan.json").write_text(json.dumps(doc))
    job_id = flink_run("jobs/backfill_ingest.py", _ingest_args(bid, lane, budget_rows_per_s, yielding))
    manifest.job_id = job_id
    store.write_manifest(manifest)
    doc["manifest"] = json.loads(manifest.to_json())
    (d / "plan.json").write_text(json.dumps(doc))
    state = {"spec": spec.to_dict(), "job_id": job_id, "job_name": job_name(bid), "lane": lane, "lane_job": lane_job,
             "budget_rows_per_s": budget_rows_per_s, "writer_pid": start_writer(bid, lane, yielding),
             "yielding": asdict(yielding), "savepoint": None,
             "rows_total": manifest.rows_total, "files": len(manifest.input_files), "started_at_ms": now_ms()}
    _save_state(bid, state)
    return {"backfill_id": bid, **state}


def stop(backfill_id: str) -> dict[str, Any]:
    """Stop-with-savepoint of the ingest job (if it still runs) and the writer."""
    state = saved_state(backfill_id)
    job = flink_jobs.running(state["job_name"])
    location = flink_jobs.stop(job.job_id, with_savepoint=True) if job is not None else None
    stop_writer(state.get("writer_pid"))
    state.update(savepoint=location, stopped_at_ms=now_ms())
    _save_state(backfill_id, state)
    if job is None:  # it had ended already (cancelled in the Web UI, failed): what it left open
        release(backfill_id)
    return {"backfill_id": backfill_id, **state}


def resume(backfill_id: str, budget_rows_per_s: float | None = None) -> dict[str, Any]:
    """The ingest job from its savepoint (none: it had finished reading), and the writer again.
    ``budget_rows_per_s``: a lower pace from here on (e.g. 10 rows/s while live traffic runs beside it); not
    above the start's budget, which the lane's token bucket for this backfill was set to."""
    state = saved_state(backfill_id)
    if flink_jobs.running(state["job_name"]) is not None:
        raise flink_jobs.ClusterError(f"backfill {backfill_id} is running")
    state["budget_rows_per_s"] = lowered_budget(state, budget_rows_per_s)
    y = Yielding(**state["yielding"]) if state.get("yielding") else Yielding()
    if state.get("savepoint"):
        state["job_id"] = flink_run("jobs/backfill_ingest.py",
                                    _ingest_args(backfill_id, state["lane"], state["budget_rows_per_s"], y),
                                    from_savepoint=state["savepoint"])
    if not writer_alive(state.get("writer_pid")):
        state["writer_pid"] = start_writer(backfill_id, state["lane"], y)
    state.update(savepoint=None, resumed_at_ms=now_ms())
    _save_state(backfill_id, state)
    return {"backfill_id": backfill_id, **state}
