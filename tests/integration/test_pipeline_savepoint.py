"""Stop-with-savepoint keeps pending requests: they finish after a restart from the savepoint."""

from __future__ import annotations

import time

import pytest

from jobs import cluster, harness

pytestmark = pytest.mark.integration

N = 10


def test_pending_requests_survive_stop_with_savepoint(stack):
    cfg = harness.isolated_config("sp")
    harness.create_topics(cfg)
    job = harness.PipelineRun(cfg)
    worker = harness.EchoWorker(cfg)
    producer = harness.Producer(cfg)
    reader = harness.Reader(cfg)
    try:
        producer.control(harness.policy_event("sp-t", ["echo"]))
        producer.flush()
        job.start()
        time.sleep(2)
        ids = [f"sp-{i}" for i in range(N)]
        for rid in ids:
            producer.prompt(harness.prompt(rid, "sp-t", f"pending {rid}"))
        producer.flush()
        time.sleep(8)  # dispatched to the echo pool, where no worker runs yet
        assert not reader.settle(2).content, "nothing can finish without a worker"
        location = job.stop_with_savepoint()
        assert location and location.startswith("file:")
        assert cluster.running(cfg.job_name) is None
        job.start(from_savepoint=location)
        worker.start()
        got = reader.until(lambda g: all(r in g.content for r in ids), 180)
        got = reader.settle(5)
        assert {r: len(got.content.get(r, [])) for r in ids} == {r: 1 for r in ids}
        assert all(got.content[r][0]["status"] == "SUCCEEDED" for r in ids)
    finally:
        worker.stop()
        job.stop()
        reader.close()
