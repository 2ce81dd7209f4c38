"""Stop-with-savepoint keeps pending requests: they finish after a restart from the savepoint."""

from __future__ import annotations

import time

import pytest

from jobs import cluster, harness

pytestmark = pytest.mark.integration

N = 10


def test_pending_requests_survive_stop_with_savepoint(stack):
    with harness.isolated_run("sp") as run:
        run.producer.control(harness.policy_event("sp-t", ["echo"]))
        run.producer.flush()
        run.job.start()
        time.sleep(2)
        ids = [f"sp-{i}" for i in range(N)]
        for rid in ids:
            run.producer.prompt(harness.prompt(rid, "sp-t", f"pending {rid}"))
        run.producer.flush()
        time.sleep(8)  # dispatched to the echo pool, where no worker runs yet
        assert not run.reader.settle(2).content, "nothing can finish without a worker"
        location = run.job.stop_with_savepoint()
        assert location and location.startswith("file:")
        assert cluster.running(run.cfg.job_name) is None
        run.job.start(from_savepoint=location)
        run.worker.start()
        got = run.reader.until(lambda g: all(r in g.content for r in ids), 180)
        got = run.reader.settle(5)
        assert {r: len(got.content.get(r, [])) for r in ids} == {r: 1 for r in ids}
        assert all(got.content[r][0]["status"] == "SUCCEEDED" for r in ids)
