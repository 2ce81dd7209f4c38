"""Warm standby replicas with the real broker: the controller parks one (model loaded, niced, not in the
group); the first request to a pool at zero activates that same process (no cold start), which is then
reniced to the pool's priority; a new standby is parked behind it; SIGTERM drains parked ones too."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.test_pool_controller import Results, pool, produce, requests, wait_for  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def _parked(p) -> dict[int, int]:
    pids = p.worker_pids()
    return {i: pid for i, pid in pids.items() if (p.data / "pids" / f"worker-echo-{i}.standby").exists()}


def _group_members(group: str) -> int:
    from confluent_kafka.admin import AdminClient

    from rscf.kafka_clients import client_security
    from rscf.settings import SETTINGS

    admin = AdminClient({"bootstrap.servers": SETTINGS.kafka_bootstrap, **client_security()})
    [desc] = [f.result(15) for f in admin.describe_consumer_groups([group]).values()]
    return len(desc.members)


def test_parked_standby_is_activated_on_demand_and_replaced(pool):
    res = Results(pool.results)
    ctl = pool.controller("--min", "0", "--max", "2", "--standby", "1", "--lag-threshold", "20",
                          "--worker-arg=--echo-latency-ms", "--worker-arg=20")
    assert wait_for(lambda: len(_parked(pool)) == 1, 60), pool.log()
    [(index, parked_pid)] = _parked(pool).items()
    worker_log = pool.data / "logs" / f"worker-echo-{index}.log"
    assert wait_for(lambda: worker_log.exists() and "parked (model loaded" in worker_log.read_text(), 60), pool.log()
    assert os.getpriority(os.PRIO_PROCESS, parked_pid) == 10, "a parked replica loads niced"
    assert _group_members(pool.group) == 0, "a parked replica is not in the consumer group"
    time.sleep(3)
    assert list(pool.worker_pids()) == [index], "a min-0 pool runs nothing but its standby"

    t0 = time.monotonic()
    produce(pool.requests, requests("wake", 1))
    assert res.until(lambda r: "wake-0" in r.ids(), 60), pool.log()
    woke_s = time.monotonic() - t0
    [answer] = [r for _, r in res.seen if r["request_id"] == "wake-0"]
    assert answer["worker_id"].endswith(f"-{parked_pid}"), "the parked process itself answered: no cold start"
    assert os.getpriority(os.PRIO_PROCESS, parked_pid) == 0, "activation renices it to the pool's priority"
    assert "activated from standby" in pool.log()
    # a new standby is parked behind the activated one
    assert wait_for(lambda: any(pid != parked_pid for pid in _parked(pool).values()), 60), pool.log()
    assert wait_for(lambda: "after activation of a parked standby" in pool.log(), 30), pool.log()
    print(f"first answer from zero through a parked standby: {woke_s:.1f} s")

    ctl.send_signal(signal.SIGTERM)
    assert ctl.wait(60) == 0
    assert pool.every_worker_process() == [], "SIGTERM drains the parked standby too"
    assert not list((pool.data / "pids").glob("worker-echo-*.standby")), "no marker left behind"
