"""What Kafka authentication costs: the same client work against two private brokers started in the same
run, one without authentication (``RSCF_KAFKA_AUTH=none``) and one with SASL/SCRAM-SHA-512 + the
StandardAuthorizer and the stack's ACLs (``scram``), rounds interleaved so that the machine's other load
falls on both alike.

Per broker: the time a new client takes to get metadata (the SCRAM handshake is per connection), the
producer's and a consumer's throughput on one topic (idempotent, acks=all, the hot path's linger), the
broker's CPU per record, and produce -> consume latency at a paced rate. Each broker is started with
the project's own `rscf up --only kafka` in a data dir of its own, on free loopback ports.

    flock /tmp/rscf-load.lock .venv/bin/python -m tools.kafka_auth_bench --records 100000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from rscf.kafka_clients import client_security
from rscf.settings import SETTINGS
from tools import harness

MODES = ("none", "scram")


class PrivateBroker:
    """One Kafka of its own, started and stopped through the project's CLI."""

    def __init__(self, mode: str, root: Path, start_port: int) -> None:
        self.mode, self.data = mode, root / mode
        port = harness.free_port_block(2, start=start_port, span=2000)
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RSCF_KAFKA")}
        self.env.update({"PYTHONPATH": str(SETTINGS.paths.repo), "RSCF_DATA_DIR": str(self.data),
                         "RSCF_KAFKA_AUTH": mode, "RSCF_KAFKA_PORT": str(port),
                         "RSCF_KAFKA_CONTROLLER_PORT": str(port + 1), "RSCF_POOL_CONTROLLER": "off"})

    def _rscf(self, *args: str) -> None:
        out = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=SETTINGS.paths.repo, env=self.env,
                             capture_output=True, text=True, timeout=240)
        if out.returncode != 0:
            raise RuntimeError(f"rscf {' '.join(args)} ({self.mode}) failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")

    def up(self) -> None:
        self._rscf("up", "--only", "kafka")

    def down(self) -> None:
        from deploy.local.processes import stop_recorded

        try:
            self._rscf("down")
        finally:
            for pid_file in (self.data / "pids").glob("*.pid"):
                stop_recorded(pid_file)

    def cpu_s(self) -> float:
        from deploy.local.processes import recorded_process

        proc = recorded_process(self.data / "pids" / "kafka.pid")
        t = proc.cpu_times() if proc is not None else None
        return (t.user + t.system) if t is not None else float("nan")

    def conf(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, **client_security("admin", data=self.data), **extra}


def connect_ms(b: PrivateBroker, n: int) -> float:
    """Median time for a new client to get the cluster's metadata (TCP + SASL handshake + metadata)."""
    from confluent_kafka.admin import AdminClient

    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        AdminClient(b.conf()).list_topics(timeout=10)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def throughput(b: PrivateBroker, topic: str, records: int, size: int) -> dict[str, float]:
    from confluent_kafka import Consumer, Producer

    value = b"x" * size
    p = Producer(b.conf(**{"enable.idempotence": True, "acks": "all", "linger.ms": SETTINGS.limits.producer_linger_ms}))
    cpu0, t0 = b.cpu_s(), time.perf_counter()
    for i in range(records):
        while True:
            try:
                p.produce(topic, key=str(i % 64).encode(), value=value)
                break
            except BufferError:
                p.poll(0.01)
        if i % 1000 == 0:
            p.poll(0)
    p.flush(120)
    produce_s, cpu1 = time.perf_counter() - t0, b.cpu_s()
    c = Consumer(b.conf(**{"group.id": f"bench-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest",
                           "enable.auto.commit": False}))
    c.subscribe([topic])
    got, t1, deadline = 0, None, time.monotonic() + 120
    while got < records and time.monotonic() < deadline:
        for m in c.consume(1000, 0.5):
            if m.error() is None:
                t1 = t1 or time.perf_counter()
                got += 1
    consume_s = time.perf_counter() - (t1 or time.perf_counter())
    c.close()
    return {"produce_per_s": records / produce_s, "consume_per_s": got / consume_s if consume_s > 0 else float("nan"),
            "broker_cpu_us_per_record": (cpu1 - cpu0) / records * 1e6, "consumed": got}


def latency(b: PrivateBroker, topic: str, rate: float, seconds: float) -> dict[str, float]:
    """Produce -> consume at ``rate`` records/s: p50 and p99 in ms (the send time rides in the value)."""
    from confluent_kafka import Consumer, Producer

    c = Consumer(b.conf(**{"group.id": f"lat-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "latest",
                           "enable.auto.commit": False, "fetch.wait.max.ms": 5}))
    c.subscribe([topic])
    while not c.assignment():
        c.poll(0.2)
    lat: list[float] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for m in c.consume(100, 0.1):
                if m.error() is None:
                    lat.append((time.perf_counter_ns() - int(m.value())) / 1e6)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    p = Producer(b.conf(**{"enable.idempotence": True, "acks": "all", "linger.ms": SETTINGS.limits.producer_linger_ms}))
    n, t0 = int(rate * seconds), time.perf_counter()
    for i in range(n):
        wait = t0 + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        p.produce(topic, value=str(time.perf_counter_ns()).encode())
        p.poll(0)
    p.flush(30)
    deadline = time.monotonic() + 10
    while len(lat) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    reader.join(5)
    c.close()
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {"p50_ms": q[49], "p99_ms": q[98], "received": len(lat), "sent": n}


def run(records: int, size: int, rate: float, seconds: float, rounds: int, connects: int) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient, NewTopic

    root = Path(tempfile.mkdtemp(prefix="rscf-kafka-auth-bench-"))
    brokers = [PrivateBroker(m, root, 45_000 + 100 * i) for i, m in enumerate(MODES)]
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    try:
        for b in brokers:
            b.up()
        for r in range(rounds):
            for b in (brokers if r % 2 == 0 else brokers[::-1]):
                topic = f"bench.auth.{uuid.uuid4().hex[:8]}"
                admin = AdminClient(b.conf())  # kept until the answer: a dropped client cancels its futures
                for fut in admin.create_topics([NewTopic(topic, SETTINGS.topics.partitions, 1)]).values():
                    fut.result(30)
                row = {"connect_ms": connect_ms(b, connects), **throughput(b, topic, records, size),
                       **latency(b, topic, rate, seconds)}
                results[b.mode].append(row)
                print(f"round {r + 1} {b.mode}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), file=sys.stderr)
    finally:
        for b in brokers:
            b.down()
    med = {m: {k: statistics.median(row[k] for row in rows) for k in rows[0]} for m, rows in results.items()}
    ratio = {k: med["scram"][k] / med["none"][k] if med["none"][k] else float("nan") for k in med["none"]}
    return {"records": records, "record_bytes": size, "latency_rate_per_s": rate, "rounds": rounds,
            "median": med, "scram_over_none": ratio, "rounds_detail": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--size", type=int, default=200, help="value bytes")
    p.add_argument("--rate", type=float, default=500.0, help="records/s of the latency run")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    p.add_argument("--rounds", type=int, default=2, help="rounds per broker, interleaved")
    p.add_argument("--connects", type=int, default=20, help="new clients timed per round")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    out = run(a.records, a.size, a.rate, a.seconds, a.rounds, a.connects)
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{'figure':<26}{'none':>12}{'scram':>12}{'scram/none':>12}")
        for k, v in out["median"]["none"].items():
            print(f"{k:<26}{v:>12.1f}{out['median']['scram'][k]:>12.1f}{out['scram_over_none'][k]:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
