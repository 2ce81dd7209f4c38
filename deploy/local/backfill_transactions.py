"""A backfill's ingest that ended without committing: its open Kafka transaction aborted, so its lane reads on.

The ingest writes the lane's prompts in one Kafka transaction per checkpoint (Flink's Kafka sink, POOLING ids
`<job>-<lane>-<subtask>-<i>`). Cancelled (the Web UI's Cancel, a benchmark) or failed for good, it can leave
its current transaction open: 17 of 18 cancels here on 2026-12-05 did (seen with ListTransactions, then by the
broker's answer to the abort), one with 500 rows in it. Until the broker times it out (the sink's
transaction.timeout.ms, 10 min) the partition's last stable offset stays before those rows, so

- the lane's pipeline job (read_committed) reads nothing written after them: every other backfill on the shared,
  standing lane `rscf-backfill-lane` stalls for up to 10 minutes;
- the next backfill's pace sees no lag (it counts up to the last stable offset, jobs/backfill_load.py) and reads
  at its whole budget: 90,000 rows in 182 s onto a blocked lane (`rscf bench backfill --standing-lanes`).

Flink aborts such transactions itself only when the same job starts again (same prefix). So once a backfill's
ingest is known to have ended CANCELED or FAILED, with nothing of that name running, its ids are fenced
(`rscf.kafka_clients.abort_transactions`): by `rscf backfill start` and `status` (and `watch`) for every
backfill on the lane that ended since the last look, and by `stop`. The pool controller does not: it sits
below the stack's deploy code and knows lanes, not backfills.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from confluent_kafka import KafkaException

from deploy.local import flink_jobs
from jobs.config import JobConfig
from operators.backfill import INGEST_PARALLELISM
from rscf import kafka_clients

ENDED_OPEN = ("CANCELED", "FAILED")  # ended without the final commit: a transaction may be open
ENDED_CLEAN = ("FINISHED",)  # every transaction committed (a stop-with-savepoint's too)
# POOLING hands a subtask's ids out from a pool that grows to the transactions in flight at once: 3 at most
# in every listing of this stack's transactions (ListTransactions, 2026-12-05); 8 leaves room
PROBED_IDS_PER_SUBTASK = 8

log = logging.getLogger(__name__)


def ingest_transactional_ids(ingest_job: str, lane: str, subtasks: int = INGEST_PARALLELISM,
                             probed: int = PROBED_IDS_PER_SUBTASK) -> list[str]:
    """The ids the ingest's prompts sink may have used: its job config's prefix (jobs/backfill_ingest.lane_config),
    then `-<subtask>-<i>` as the connector's POOLING strategy names them."""
    prefix = JobConfig(job_name=ingest_job, topic_suffix=lane).transactional_id_prefix
    return [f"{prefix}-{s}-{i}" for s in range(subtasks) for i in range(probed)]


def job_state(job_id: str) -> str | None:
    """The job's state as Flink's REST gives it; None when Flink cannot say (down, or the job unknown)."""
    try:
        return flink_jobs._request("GET", f"/jobs/{job_id}")["state"]
    except flink_jobs.ClusterError:
        return None


def release(state: dict[str, Any], seen_state: str | None = None,
            abort: Callable[[list[str]], int] = kafka_clients.abort_transactions) -> bool:
    """Abort what a backfill's ended ingest (`state`: its saved state) may have left open, once per ingest job;
    `seen_state`: its job state when the caller has just read it. Returns whether `state` changed (then save
    it): `released_job_id` is set once the job is known to have ended (and its ids are fenced if it ended
    without its final commit)."""
    job_id = state.get("job_id")
    if not job_id or state.get("released_job_id") == job_id:
        return False
    ended = seen_state or job_state(job_id)
    if ended not in ENDED_OPEN + ENDED_CLEAN:
        return False  # still running, or not known: nothing is decided
    if ended in ENDED_OPEN:
        if flink_jobs.running(state["job_name"]) is not None:
            return False  # started again under the same name: its ids are live again, never fence them
        try:
            abort(ingest_transactional_ids(state["job_name"], state["lane"]))
        except KafkaException as exc:  # the broker busy or away: not released, the next look tries again
            log.warning("backfill %s: cannot abort its ingest's transactions yet (%s)", state["job_name"], exc)
            return False
    state["released_job_id"] = job_id
    return True
