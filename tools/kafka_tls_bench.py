"""What TLS costs on Kafka: the same client work on one private broker's two client listeners,
SASL_PLAINTEXT (``RSCF_KAFKA_PORT``) and SASL_SSL (``RSCF_KAFKA_TLS_PORT``, verified against the stack's
CA), as the admin principal, rounds interleaved so that the machine's other load falls on both alike.

Per listener: the time a new client takes to get metadata (TCP + TLS + SCRAM handshakes), the producer's
and a consumer's throughput on one topic (idempotent, acks=all, the hot path's linger; tools/kafka_auth_bench),
the broker's CPU per record, and the round trip of one small record at a time (produce, wait for the
acks=all answer, read it back: p50/p99). The broker is started with the project's own
`rscf up --only kafka` in a data dir of its own, on free loopback ports, and stopped at the end.

    flock /tmp/rscf-load.lock .venv/bin/python -m tools.kafka_tls_bench --records 50000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rscf.kafka_clients import client_security
from rscf.settings import SETTINGS
from tools import harness
from tools.kafka_auth_bench import PrivateBroker, connect_ms, throughput

LISTENERS = ("sasl_plaintext", "sasl_ssl")


class Listener:
    """One client listener of the private broker: what tools/kafka_auth_bench's measures take."""

    def __init__(self, broker: PrivateBroker, name: str, bootstrap: str) -> None:
        self.broker, self.mode, self.bootstrap = broker, name, bootstrap

    def conf(self, **extra: Any) -> dict[str, Any]:
        tls = self.mode == "sasl_ssl"
        return {"bootstrap.servers": self.bootstrap, **client_security("admin", data=self.broker.data, tls=tls),
                **extra}

    def cpu_s(self) -> float:
        return self.broker.cpu_s()


def round_trips(listener: Listener, topic: str, n: int, size: int) -> dict[str, float]:
    """``n`` records one at a time: produce (linger 0), wait for the acks=all answer, read it back."""
    from confluent_kafka import Consumer, Producer

    c = Consumer(listener.conf(**{"group.id": f"rt-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "latest",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 1, "fetch.min.bytes": 1}))
    c.subscribe([topic])
    while not c.assignment():
        c.poll(0.2)
    p = Producer(listener.conf(**{"enable.idempotence": True, "acks": "all", "linger.ms": 0}))
    p.produce(topic, value=b"warm-up")
    p.flush(10)
    pad, times = b"x" * max(0, size - 32), []
    for i in range(n):
        marker = f"{i:032d}".encode()
        t0 = time.perf_counter()
        p.produce(topic, value=marker + pad)
        p.flush(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None and m.value()[:32] == marker:
                times.append((time.perf_counter() - t0) * 1000)
                break
    c.close()
    q = statistics.quantiles(times, n=100) if len(times) >= 2 else [float("nan")] * 99
    return {"rt_p50_ms": q[49], "rt_p99_ms": q[98], "rt_done": len(times)}


def run(records: int, size: int, trips: int, rounds: int, connects: int) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient, NewTopic

    root = Path(tempfile.mkdtemp(prefix="rscf-kafka-tls-bench-"))
    broker = PrivateBroker("scram", root, 42_000)
    plain_port = int(broker.bootstrap.rsplit(":", 1)[1])
    tls_port = harness.free_port_block(1, start=plain_port + 50, span=200)
    broker.env["RSCF_KAFKA_TLS_PORT"] = str(tls_port)
    listeners = [Listener(broker, "sasl_plaintext", broker.bootstrap),
                 Listener(broker, "sasl_ssl", f"127.0.0.1:{tls_port}")]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in LISTENERS}
    try:
        broker.up()
        for r in range(rounds):
            for li in (listeners if r % 2 == 0 else listeners[::-1]):
                topic, rt_topic = f"bench.tls.{uuid.uuid4().hex[:8]}", f"bench.tls.rt.{uuid.uuid4().hex[:8]}"
                admin = AdminClient(li.conf())  # kept until the answer: a dropped client cancels its futures
                for fut in admin.create_topics([NewTopic(topic, SETTINGS.topics.partitions, 1),
                                                NewTopic(rt_topic, 1, 1)]).values():
                    fut.result(30)
                row = {"connect_ms": connect_ms(li, connects), **throughput(li, topic, records, size),
                       **round_trips(li, rt_topic, trips, size)}
                results[li.mode].append(row)
                print(f"round {r + 1} {li.mode}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), file=sys.stderr)
    finally:
        broker.down()
    med = {m: {k: statistics.median(row[k] for row in rows) for k in rows[0]} for m, rows in results.items()}
    base, tls = med["sasl_plaintext"], med["sasl_ssl"]
    ratio = {k: tls[k] / base[k] if base[k] else float("nan") for k in base}
    return {"records": records, "record_bytes": size, "round_trips": trips, "rounds": rounds,
            "median": med, "ssl_over_plaintext": ratio, "rounds_detail": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--size", type=int, default=200, help="value bytes")
    p.add_argument("--trips", type=int, default=300, help="one-record round trips per round")
    p.add_argument("--rounds", type=int, default=2, help="rounds per listener, interleaved")
    p.add_argument("--connects", type=int, default=20, help="new clients timed per round")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    out = run(a.records, a.size, a.trips, a.rounds, a.connects)
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{'figure':<26}{'SASL_PLAINTEXT':>16}{'SASL_SSL':>12}{'ssl/plain':>11}")
        for k, v in out["median"]["sasl_plaintext"].items():
            print(f"{k:<26}{v:>16.1f}{out['median']['sasl_ssl'][k]:>12.1f}{out['ssl_over_plaintext'][k]:>11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
