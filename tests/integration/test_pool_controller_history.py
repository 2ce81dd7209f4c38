"""The pool controller's request-rate history survives a controller restart (issue #15, item 3).

Real processes: the stack's Kafka and Redis, a controller process on a private pool (lanes, group,
data dir, /metrics port), requests arriving at a steady rate. The first controller builds two seasons
of history (season 4 s, so its forecast starts ~8 s after its start) and is SIGKILLed; the second one
must forecast on its FIRST tick, which it can only do from the history the first one left in Redis
(its own readings give it a rate from the second tick on, and two seasons of them after ~8 s). The
control: with the history deleted, a third controller's first ticks have no forecast.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from rscf.kafka_clients import credentials_env, producer_config
from rscf.settings import SETTINGS

pytestmark = pytest.mark.integration

SEASON_S, STEP_S, TICK_S = 4.0, 0.5, 0.5
RATE = 20.0  # requests/s written to the pool's NORMAL lane


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((SETTINGS.host, port)) == 0


@pytest.fixture()
def services(request):
    """The stack's Kafka and Redis: the running ones, else the stack brought up by the suite's fixture."""
    if not (_reachable(SETTINGS.ports.kafka) and _reachable(SETTINGS.ports.redis)):
        request.getfixturevalue("stack")
    return SETTINGS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((SETTINGS.host, 0))
        return s.getsockname()[1]


class Pool:
    def __init__(self, tmp: Path) -> None:
        from rscf.kafka_clients import create_topics

        run = uuid.uuid4().hex[:10]
        self.requests = f"{SETTINGS.topics.request_prefix}hist-{run}"
        self.group = f"rscf-it-hist-{run}"
        self.lanes = SETTINGS.topics.lanes(self.requests)
        self.data = tmp / "data"
        self.data.mkdir(parents=True)
        create_topics(self.lanes, 1)
        self.procs: list[subprocess.Popen] = []
        self.stop = threading.Event()

    def feed(self) -> threading.Thread:
        """Requests at RATE/s on the NORMAL lane until stopped (the controller reads end offsets only)."""
        from confluent_kafka import Producer

        def loop() -> None:
            p = Producer(producer_config(linger_ms=5))
            i = 0
            while not self.stop.is_set():
                p.produce(self.requests, key=str(i).encode(), value=b"x")
                p.poll(0)
                i += 1
                time.sleep(1.0 / RATE)
            p.flush(10)

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        return t

    def controller(self) -> tuple[subprocess.Popen, int]:
        """A controller of this pool only; `--cpu-budget 0`: it decides and forecasts but starts no replica."""
        port = _free_port()
        cmd = [sys.executable, "-m", "inference_workers.pool_controller", "--pool", "echo",
               "--requests-topic", self.requests, "--group", self.group, "--port", str(port),
               "--interval", str(TICK_S), "--season", str(SEASON_S), "--step", str(STEP_S),
               "--replica-rps", "10", "--cpu-budget", "0"]
        env = {**os.environ, "RSCF_DATA_DIR": str(self.data), "PYTHONPATH": str(SETTINGS.paths.repo), **credentials_env()}
        log = open(self.data / f"controller-{len(self.procs)}.log", "ab")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=SETTINGS.paths.repo)
        self.procs.append(proc)
        return proc, port

    def history_len(self) -> int:
        from rscf import redis_security

        return redis_security.client(redis_security.ADMIN).llen(f"{redis_security.POOL_RATE_PREFIX}{self.group}")

    def forget_history(self) -> None:
        from rscf import redis_security

        redis_security.client(redis_security.ADMIN).delete(f"{redis_security.POOL_RATE_PREFIX}{self.group}")

    def log(self) -> str:
        return "\n".join(f.read_text(errors="replace")[-2000:] for f in sorted(self.data.glob("controller-*.log")))

    def cleanup(self) -> None:
        from rscf.kafka_clients import delete_topics

        self.stop.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.forget_history()
        delete_topics(self.lanes)


def read_tick(port: int) -> tuple[float, float] | None:
    """(decisions so far, `rscf_pool_forecast_rate{pool="echo"}`) from the controller's /metrics
    (-1: no forecast); None before its first tick."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        text = opener.open(f"http://{SETTINGS.host}:{port}/metrics", timeout=1).read().decode()
    except OSError:
        return None
    fc = re.search(r'^rscf_pool_forecast_rate\{pool="echo"\} (\S+)$', text, re.M)
    ticks = sum(float(v) for v in re.findall(
        r'^rscf_pool_scaling_decisions_total\{[^}]*pool="echo"[^}]*\} (\S+)$', text, re.M))
    return (ticks, float(fc.group(1))) if fc and ticks else None


def forecasts(port: int, proc: subprocess.Popen, n: int, timeout_s: float = 40.0) -> list[float]:
    """The forecasts of the controller's first `n` ticks seen from now (read every 0.1 s)."""
    seen: dict[float, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < n and time.monotonic() < deadline:
        assert proc.poll() is None, "the controller exited"
        tick = read_tick(port)
        if tick is not None:
            seen.setdefault(*tick)
        time.sleep(0.1)
    return [seen[k] for k in sorted(seen)]


def test_a_restarted_controller_forecasts_from_the_history_its_predecessor_left(services, tmp_path):
    pool = Pool(tmp_path)
    try:
        pool.feed()
        first, port = pool.controller()
        # the first controller: no forecast until it has two seasons of its own history
        early = forecasts(port, first, 3)
        assert early and early[0] == -1, f"a fresh controller cannot forecast yet: {early}\n{pool.log()}"
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and (read_tick(port) or (0, -1.0))[1] < 0:
            time.sleep(0.2)
        assert (read_tick(port) or (0, -1.0))[1] >= 0, f"no forecast after two seasons:\n{pool.log()}"
        time.sleep(1.0)  # a few more samples written
        kept = pool.history_len()
        assert kept >= 2 * SEASON_S / TICK_S - 2, kept

        first.send_signal(signal.SIGKILL)  # killed mid-run, as a crash would
        first.wait(10)

        second, port = pool.controller()
        fc = forecasts(port, second, 2)
        assert fc, f"the restarted controller published no tick:\n{pool.log()}"
        # its first tick forecasts: from the predecessor's history (its own would take ~8 s)
        assert fc[0] >= 0, f"restarted controller lost the history: {fc}\n{pool.log()}"
        assert 0.5 * RATE <= fc[0] <= 2.0 * RATE, f"forecast {fc[0]}/s for a steady {RATE}/s"
        assert pool.history_len() >= kept  # it appends to the old history, never starts a new one
        second.send_signal(signal.SIGKILL)
        second.wait(10)

        # control: the same restart with the history gone has no forecast on its first ticks
        pool.forget_history()
        third, port = pool.controller()
        fc = forecasts(port, third, 3)
        assert fc and all(v == -1 for v in fc), f"forecast without history: {fc}\n{pool.log()}"
    finally:
        pool.cleanup()
