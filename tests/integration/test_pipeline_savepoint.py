"""Stop-with-savepoint keeps pending requests and operator commands across a restart from the savepoint."""

from __future__ import annotations

import time

import pytest

from deploy.local import flink_jobs
from tools import harness

pytestmark = pytest.mark.integration

N = 10


def test_pending_requests_survive_stop_with_savepoint(stack):
    with harness.isolated_run("sp") as run:
        run.producer.control(harness.policy_event("sp-t", ["echo"]))
        run.producer.control(harness.policy_event("sp-img", []))
        run.producer.control(harness.breaker_event("image", "FORCE_OPEN"))  # no image worker runs here
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
        assert flink_jobs.running(run.cfg.job_name) is None
        run.job.start(from_savepoint=location)
        run.worker.start()
        got = run.reader.until(lambda g: all(r in g.content for r in ids), 180)
        got = run.reader.settle(5)
        assert {r: len(got.content.get(r, [])) for r in ids} == {r: 1 for r in ids}
        assert all(got.content[r][0]["status"] == "SUCCEEDED" for r in ids)
        # The forced-open image breaker came back from the savepoint (the control topic is not
        # replayed on a restore): an image prompt fails at once instead of waiting for a worker.
        run.producer.prompt(harness.prompt("sp-image", "sp-img", "a red circle", modality="IMAGE"))
        run.producer.flush()
        got = run.reader.until(lambda g: "sp-image" in g.content, 60)
        final = got.content.get("sp-image", [None])[0]
        assert final is not None, "the image prompt was dispatched: the FORCE_OPEN command was lost"
        assert (final["status"], final["reason"]) == ("FAILED", "no_healthy_pool")
