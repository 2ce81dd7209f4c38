"""Which transactions of an ended backfill get aborted, and when (deploy/local/backfill_transactions.py). The
abort on a real broker, and a real cancelled ingest: tests/integration/test_backfill_transactions.py and
test_backfill_s3_flink.py."""

from __future__ import annotations

import re

import pytest
from confluent_kafka import KafkaError, KafkaException

from deploy.local import backfill_transactions as bt
from deploy.local import backfills


def _sink_prefix(backfill_id: str, lane: str) -> str:
    """The transactional-id prefix the ingest's prompts sink declares, from the job's own DDL."""
    from jobs.backfill_ingest import _prompts_ddl, lane_config, parse

    ddl = _prompts_ddl(lane_config(parse(backfills._ingest_args(backfill_id, lane, 100, backfills.Yielding()))))
    assert "'sink.transaction-naming-strategy' = 'POOLING'" in ddl, "the ids below are POOLING's names"
    return re.search(r"'sink.transactional-id-prefix' = '([^']+)'", ddl).group(1)


def test_the_ids_are_those_the_ingest_sink_names_and_another_lane_gets_other_ids():
    ids = bt.ingest_transactional_ids(backfills.job_name("b1"), "backfill")
    prefix = _sink_prefix("b1", "backfill")
    assert ids == [f"{prefix}-0-{i}" for i in range(bt.PROBED_IDS_PER_SUBTASK)]
    assert not set(ids) & set(bt.ingest_transactional_ids(backfills.job_name("b1"), "backfill-x1"))
    assert not set(ids) & set(bt.ingest_transactional_ids(backfills.job_name("b2"), "backfill"))


@pytest.fixture
def cluster(monkeypatch):
    """Flink as `release` sees it: a job state per id, and which names run now."""
    seen: dict = {"states": {}, "running": set()}
    monkeypatch.setattr(bt, "job_state", lambda job_id: seen["states"].get(job_id))
    monkeypatch.setattr(bt.flink_jobs, "running", lambda name: object() if name in seen["running"] else None)
    return seen


def _state(job_id: str = "j1") -> dict:
    return {"job_id": job_id, "job_name": backfills.job_name("b1"), "lane": "backfill"}


@pytest.mark.parametrize("ended", ["CANCELED", "FAILED"])
def test_an_ingest_that_ended_without_its_commit_has_its_ids_aborted_once(cluster, ended):
    aborted: list[list[str]] = []
    state = _state()
    cluster["states"]["j1"] = ended
    assert bt.release(state, abort=aborted.append) is True
    assert aborted == [bt.ingest_transactional_ids(state["job_name"], "backfill")]
    assert state["released_job_id"] == "j1"
    assert bt.release(state, abort=aborted.append) is False, "once per ingest job"
    assert len(aborted) == 1
    state["job_id"] = "j2"  # resumed, and that job cancelled too: its ids again
    cluster["states"]["j2"] = ended
    assert bt.release(state, abort=aborted.append) is True and len(aborted) == 2


def test_a_finished_ingest_is_marked_without_an_abort_and_a_running_one_is_left_alone(cluster):
    aborted: list = []
    running, finished = _state("j1"), _state("j2")
    cluster["states"].update(j1="RUNNING", j2="FINISHED")
    assert bt.release(running, abort=aborted.append) is False and "released_job_id" not in running
    assert bt.release(finished, abort=aborted.append) is True and finished["released_job_id"] == "j2"
    assert aborted == [], "a finished ingest (a stop-with-savepoint too) committed everything"
    assert bt.release(_state("j3"), abort=aborted.append) is False, "a job Flink cannot tell about: nothing decided"
    assert bt.release(_state("j3"), seen_state="CANCELED", abort=aborted.append) is True, "the caller's look counts"


def test_ids_live_again_under_a_restarted_job_of_that_name_are_never_fenced(cluster):
    aborted: list = []
    state = _state()
    cluster["states"]["j1"] = "CANCELED"
    cluster["running"].add(state["job_name"])
    assert bt.release(state, abort=aborted.append) is False
    assert aborted == [] and "released_job_id" not in state


def test_a_broker_that_cannot_abort_now_leaves_it_for_the_next_look(cluster):
    state = _state()
    cluster["states"]["j1"] = "CANCELED"

    def unavailable(ids):
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    assert bt.release(state, abort=unavailable) is False and "released_job_id" not in state
    assert bt.release(state, abort=lambda ids: len(ids)) is True
