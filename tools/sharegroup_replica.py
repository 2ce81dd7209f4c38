"""One replica of `rscf bench sharegroups`: the SAME echo-cost loop over a classic consumer group or a
Kafka share group (KIP-932), so the two differ only in how records reach replicas.

Per record: sleep the simulated model time (`--item-ms`, like burst_bench's echo pool), produce a
result {id, replica, delivery count}; after each poll's records the producer is flushed (results
acknowledged by the broker) and only then is the input committed (classic: offsets, synchronously)
or acknowledged (share: ACCEPT per record, commit_sync) — the workers' at-least-once order. Each record
handed to the loop is logged ("<id> <t>", line-buffered) so the bench can tell a SIGKILLed replica's
in-flight records.

Run as `python -m tools.sharegroup_replica MODE BOOTSTRAP TOPIC GROUP RESULTS NAME LOG [options]`.
"""

from __future__ import annotations

import argparse
import json
import signal
import time


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.sharegroup_replica")
    for name in ("mode", "bootstrap", "topic", "group", "results", "name", "log"):
        p.add_argument(name)
    p.add_argument("--item-ms", type=float, default=20.0)
    p.add_argument("--batch", type=int, default=1, help="records per poll (share: max.poll.records)")
    p.add_argument("--session-timeout-ms", type=int, default=6000, help="classic: the workers' default (settings)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from confluent_kafka import Consumer, KafkaException, Producer, ShareConsumer, TopicPartition

    ns = parse(argv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    producer = Producer({"bootstrap.servers": ns.bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5})
    if ns.mode == "share":
        consumer = ShareConsumer({"bootstrap.servers": ns.bootstrap, "group.id": ns.group,
                                  "share.acknowledgement.mode": "explicit", "max.poll.records": ns.batch})
    else:
        consumer = Consumer({"bootstrap.servers": ns.bootstrap, "group.id": ns.group, "enable.auto.commit": False,
                             "auto.offset.reset": "earliest", "session.timeout.ms": ns.session_timeout_ms,
                             "heartbeat.interval.ms": max(500, ns.session_timeout_ms // 3)})
    consumer.subscribe([ns.topic])
    log = open(ns.log, "a", buffering=1)
    log.write(f"subscribed {time.time():.3f}\n")
    cost = ns.item_ms / 1000.0
    while not stop:
        msgs = consumer.poll(0.2) if ns.mode == "share" else consumer.consume(ns.batch, 0.2)
        msgs = [m for m in (msgs or []) if m.error() is None]
        if not msgs:
            continue
        for m in msgs:
            rid = m.key().decode()
            log.write(f"{rid} {time.time():.3f}\n")
            time.sleep(cost)  # the simulated model
            dc = m.delivery_count() if ns.mode == "share" else None
            producer.produce(ns.results, key=m.key(), value=json.dumps({"id": rid, "replica": ns.name, "dc": dc}))
        producer.flush(30)
        try:
            if ns.mode == "share":
                for m in msgs:
                    consumer.acknowledge(m)
                consumer.commit_sync(10)
            else:
                last: dict[int, int] = {}
                for m in msgs:
                    last[m.partition()] = max(last.get(m.partition(), -1), m.offset())
                consumer.commit(offsets=[TopicPartition(ns.topic, p, o + 1) for p, o in last.items()],
                                asynchronous=False)
        except KafkaException as exc:  # a rebalance took the partition / the lock expired: redelivered
            log.write(f"commit-failed {time.time():.3f} {str(exc)[:120]}\n")
    consumer.close()
    producer.flush(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
