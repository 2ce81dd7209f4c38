"""The pool controller with real worker processes and the real broker: zero -> a request wakes the
pool and is answered; a lag spike adds a replica that consumes; idle -> zero; a killed replica is
restarted; a killed controller is replaced without orphaned or doubled replicas; SIGTERM drains.
Priority lanes: under a LOW backlog a HIGH request is answered before the backlog drains.

Each test has private lane topics, group, results topic, data dir (PID files) and ports.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from rscf.kafka_clients import client_security, credentials_env
from rscf.settings import SETTINGS

pytestmark = pytest.mark.integration


def free_port_base(span: int = 8) -> int:
    """A port with `span` free ports after it (replica i serves health on base + i)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + span < 65000 and all(_free(base + i) for i in range(span)):
            return base
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class PrivatePool:
    """Lane topics, group, results topic and a data dir of one test's echo pool."""

    def __init__(self, tmp: Path, partitions: int = 2) -> None:
        from rscf.kafka_clients import create_topics

        run = uuid.uuid4().hex[:10]
        self.requests = f"{SETTINGS.topics.request_prefix}pc-{run}"
        self.results = f"rscf.it.pc-results.{run}"
        self.group = f"rscf-it-pc-{run}"
        self.data = tmp / "data"
        self.port_base = free_port_base()
        self.lanes = SETTINGS.topics.lanes(self.requests)
        create_topics([*self.lanes, self.results], partitions)
        self.procs: list[subprocess.Popen] = []

    def env(self) -> dict[str, str]:
        return {**os.environ, "RSCF_DATA_DIR": str(self.data), "PYTHONPATH": str(SETTINGS.paths.repo),
                **credentials_env()}

    def controller(self, *extra: str) -> subprocess.Popen:
        self.data.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "inference_workers.pool_controller", "--pool", "echo",
               "--requests-topic", self.requests, "--group", self.group, "--metrics-port-base", str(self.port_base),
               "--port", "-1", "--interval", "1", "--no-predictive", "--cpu-budget", "4",
               "--worker-arg=--results-topic", f"--worker-arg={self.results}", *extra]
        log = open(self.data / f"controller-{len(self.procs)}.log", "ab")
        proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=SETTINGS.paths.repo)
        self.procs.append(proc)
        return proc

    def worker_pids(self) -> dict[int, int]:
        """Live replicas by index, from the PID files, checked against the running processes."""
        out = {}
        for pf in (self.data / "pids").glob("worker-echo-*.pid"):
            pid = int(pf.read_text().strip())
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out[int(pf.stem.rsplit("-", 1)[1])] = pid
        return out

    def every_worker_process(self) -> list[int]:
        """Every `worker run` process on this machine serving this test's topic (orphans included)."""
        found = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = p.info["cmdline"] or []
            if "worker" in cmd and self.requests in cmd and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.info["pid"])
        return found

    def log(self, tail: int | None = 3000) -> str:
        """The controllers' logs, the last `tail` characters of each (all of it with None)."""
        return "\n".join(f.read_text(errors="replace")[-tail if tail else 0:]
                         for f in sorted(self.data.glob("controller-*.log")))

    def cleanup(self) -> None:
        from rscf.kafka_clients import delete_topics

        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for pid in self.every_worker_process():  # only this test's replicas (its private topic)
            os.kill(pid, signal.SIGKILL)
        delete_topics([*self.lanes, self.results])


@pytest.fixture()
def pool(stack, tmp_path):
    p = PrivatePool(tmp_path)
    yield p
    p.cleanup()


def requests(prefix: str, n: int, priority: str = "NORMAL") -> list[dict]:
    from tools.workers_bench import make_request

    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        r = make_request("echo", i, prefix, now)
        r.update(request_id=f"{prefix}-{i}", prompt=f"{prefix} {i}", priority=priority, deadline=now + 600_000, attempt=1)
        out.append(r)
    return out


def produce(topic: str, reqs: list[dict]) -> None:
    from confluent_kafka import Producer

    from schemas.serde import serde_for

    serde = serde_for(SETTINGS.topics.requests("echo"))
    p = Producer({"bootstrap.servers": SETTINGS.kafka_bootstrap, **client_security(), "enable.idempotence": True, "linger.ms": 5})
    for r in reqs:
        p.produce(topic, key=r["request_id"].encode(), value=serde.encode(r))
    assert p.flush(30) == 0


class Results:
    def __init__(self, topic: str) -> None:
        from confluent_kafka import Consumer

        from schemas.serde import serde_for

        self.serde = serde_for(SETTINGS.topics.results)
        self.seen: list[tuple[float, dict]] = []
        self.c = Consumer({"bootstrap.servers": SETTINGS.kafka_bootstrap, **client_security(), "group.id": f"r-{uuid.uuid4().hex}",
                           "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self.c.subscribe([topic])

    def ids(self) -> set[str]:
        return {r["request_id"] for _, r in self.seen}

    def until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            for m in self.c.consume(200, 0.3):
                if m.error() is None:
                    self.seen.append((time.monotonic(), self.serde.decode(m.value())))
        return predicate(self)


def wait_for(cond, timeout: float, step: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def test_zero_wake_spike_scale_down_to_zero_and_wake_again(pool):
    res = Results(pool.results)
    ctl = pool.controller("--min", "0", "--max", "2", "--lag-threshold", "20", "--cooldown", "4",
                          "--stabilization", "2", "--scale-down-period", "1",
                          "--worker-arg=--echo-latency-ms", "--worker-arg=40", "--worker-arg=--max-batch", "--worker-arg=1")
    time.sleep(3)
    assert pool.worker_pids() == {}, "an idle min-0 pool runs no replica"
    t0 = time.monotonic()
    produce(pool.requests, requests("wake", 1))
    assert res.until(lambda r: "wake-0" in r.ids(), 60), pool.log()
    woke_s = time.monotonic() - t0  # cold start + answer: reported, not asserted on time
    # a spike: 400 requests at ~25/s per replica (16 s for one) -> lag 400 / 20 -> the max of 2 replicas;
    # the second joins within seconds and takes a partition that still holds a backlog
    produce(pool.requests, requests("spike", 400))
    assert wait_for(lambda: len(pool.worker_pids()) == 2, 30), pool.log()
    assert res.until(lambda r: {f"spike-{i}" for i in range(400)} <= r.ids(), 120), pool.log()
    workers = {r["worker_id"] for _, r in res.seen if r["request_id"].startswith("spike")}
    assert len(workers) == 2, f"both replicas answered: {workers}"
    spike = [r["request_id"] for _, r in res.seen if r["request_id"].startswith("spike")]
    assert len(spike) == len(set(spike)) == 400  # none lost, none doubled (clean scale-up rebalance)
    # idle: back to zero after the cooldown, one step at a time, drained by SIGTERM
    assert wait_for(lambda: pool.worker_pids() == {}, 60), pool.log()
    assert "scale to zero" in pool.log() and "drained and stopped" in pool.log()
    assert pool.every_worker_process() == []
    produce(SETTINGS.topics.lane(pool.requests, "HIGH"), requests("again", 1, priority="HIGH"))  # HIGH lane wakes it too
    assert res.until(lambda r: "again-0" in r.ids(), 60), pool.log()
    print(f"cold start + first answer from zero: {woke_s:.1f} s")
    ctl.send_signal(signal.SIGTERM)
    assert ctl.wait(60) == 0
    assert pool.every_worker_process() == [], "SIGTERM drains every replica"


def test_crashed_replica_restarts_and_a_killed_controller_adopts_its_replicas(pool):
    res = Results(pool.results)
    first = pool.controller("--min", "1", "--max", "2")
    assert wait_for(lambda: len(pool.worker_pids()) == 1, 30), pool.log()
    [(index, pid)] = pool.worker_pids().items()
    os.kill(pid, signal.SIGKILL)  # a crash
    assert wait_for(lambda: pool.worker_pids().get(index) not in (None, pid), 30), pool.log()
    assert "exited on its own" in pool.log()
    produce(pool.requests, requests("after-crash", 5))
    assert res.until(lambda r: {f"after-crash-{i}" for i in range(5)} <= r.ids(), 60), pool.log()
    # the controller is SIGKILLed (as supervisord would see a crash) and a new one starts
    survivor = pool.worker_pids()
    first.kill()
    first.wait(10)
    assert pool.worker_pids() == survivor, "replicas outlive a killed controller"
    second = pool.controller("--min", "1", "--max", "2")
    time.sleep(4)
    assert pool.worker_pids() == survivor, "adopted from the PID files: no second start"
    assert sorted(pool.every_worker_process()) == sorted(survivor.values()), "no orphan, no double"
    assert "adopted" in pool.log()
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0
    assert pool.every_worker_process() == []


def test_crash_loop_backs_off_instead_of_forking(pool):
    # a replica that cannot start (max batch 0 is refused) exits at once, again and again
    ctl = pool.controller("--min", "1", "--max", "1", "--worker-arg=--max-batch", "--worker-arg=0")
    t0 = time.monotonic()
    assert wait_for(lambda: "CRASH LOOP" in pool.log(), 90), pool.log()  # the third quick exit in a row
    elapsed = time.monotonic() - t0
    full = pool.log(tail=None)  # a tick's decision line each second: the first start leaves the last 3,000 chars
    starts = full.count("replica=0 started")
    assert starts == 3, f"{starts} starts in {elapsed:.0f} s: one per back-off, not a fork bomb"
    delays = [line.split("restart not before ")[1].split(" s")[0] for line in full.splitlines()
              if "restart not before" in line]
    assert [float(d) for d in delays[:3]] == [1.0, 2.0, 4.0], delays  # growing back-off
    ctl.send_signal(signal.SIGTERM)
    ctl.wait(60)


def test_high_request_is_answered_before_a_low_backlog_drains(pool):
    res = Results(pool.results)
    ctl = pool.controller("--min", "1", "--max", "1",
                          "--worker-arg=--echo-latency-ms", "--worker-arg=50", "--worker-arg=--max-batch", "--worker-arg=1")
    produce(pool.requests, requests("warm", 1))
    assert res.until(lambda r: "warm-0" in r.ids(), 60), pool.log()
    low_topic = SETTINGS.topics.lane(pool.requests, "LOW")
    produce(low_topic, requests("low", 120, priority="LOW"))  # a 6 s backlog at 20/s
    time.sleep(1.0)
    produce(SETTINGS.topics.lane(pool.requests, "HIGH"), requests("high", 1, priority="HIGH"))
    sent = time.monotonic()
    assert res.until(lambda r: "high-0" in r.ids(), 30), pool.log()
    at = {r["request_id"]: t for t, r in res.seen}
    assert res.until(lambda r: {f"low-{i}" for i in range(120)} <= r.ids(), 60), pool.log()
    at = {r["request_id"]: t for t, r in res.seen}
    lows_after = sum(1 for i in range(120) if at[f"low-{i}"] > at["high-0"])
    assert lows_after >= 60, f"HIGH overtook the LOW backlog: only {lows_after} LOW answers came after it"
    print(f"HIGH answered {at['high-0'] - sent:.2f} s after it was sent, ahead of {lows_after} LOW requests")
    ctl.send_signal(signal.SIGTERM)
    ctl.wait(60)


def test_kafka_unreachable_holds_the_current_size_and_says_so(tmp_path):
    env = {**os.environ, "RSCF_DATA_DIR": str(tmp_path), "PYTHONPATH": str(SETTINGS.paths.repo),
           "RSCF_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port_base(1)}"}  # nothing listens there
    log = tmp_path / "controller.log"
    proc = subprocess.Popen([sys.executable, "-m", "inference_workers.pool_controller", "--pool", "echo", "--port", "-1",
                             "--interval", "1", "--no-predictive", "--min", "1"],
                            env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=SETTINGS.paths.repo)
    try:
        assert wait_for(lambda: "hold: kafka admin" in log.read_text(), 30), log.read_text()
        assert "started" not in log.read_text()  # below its min, but nothing is started blind
        assert not list((tmp_path / "pids").glob("worker-*.pid"))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
