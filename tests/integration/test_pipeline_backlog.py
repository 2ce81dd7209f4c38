"""A job that starts on a backlog: prompts do not overtake their tenant's policy."""

from __future__ import annotations

import pytest

from tools import harness

pytestmark = pytest.mark.integration

N = 30
FILLER_POLICIES = 300  # control events ahead of the one that matters, so it is read late


def test_backlog_prompts_wait_for_their_tenant_policy(stack):
    with harness.isolated_run("bl") as run:
        ids = [f"bl-{i}" for i in range(N)]
        for rid in ids:  # the backlog: prompts first ...
            run.producer.prompt(harness.prompt(rid, "bl-t", f"backlog {rid}"))
        for i in range(FILLER_POLICIES):  # ... then a long control topic, this tenant's policy last
            run.producer.control(harness.policy_event(f"other-{i}", []))
        run.producer.control(harness.policy_event("bl-t", ["echo"]))
        run.producer.flush()
        run.job.start()
        run.worker.start()  # only the echo pool has a worker: the policy's `echo` feature routes there
        got = run.reader.until(lambda g: all(r in g.content for r in ids), 90)
        finals = {r: got.content[r][0] for r in ids if r in got.content}
        # Without the wait, early prompts get the default policy (no `echo` feature), go to the
        # text-small pool where no worker runs, and are still pending here.
        assert sorted(finals) == sorted(ids), f"{N - len(finals)} prompts overtook their tenant's policy"
        assert {f["pool"] for f in finals.values()} == {"echo"}
        assert all(f["status"] == "SUCCEEDED" for f in finals.values())
